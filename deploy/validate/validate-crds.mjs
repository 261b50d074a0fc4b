// Checks the custom resources of rendered manifests, which kubernetes-validate has no schema
// for, against the @kubernetes-models packages made from their CRDs:
//   1. the package's validator, compiled from the CRD's OpenAPI schema (types, enums, patterns,
//      required fields);
//   2. the package's TypeScript types, through the TypeScript compiler: a field the CRD does not
//      have is an error (CRD schemas allow unknown fields; the API server would drop them, or
//      refuse them with kubectl's strict field validation).
// A custom resource of a kind not listed below fails: add its package rather than skip it.
//
//   node validate-crds.mjs RENDERED.yaml...      (run by scripts/validate-deploy.sh)

import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";
import { parseAllDocuments } from "yaml";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

const KINDS = {
  "keda.sh/v1alpha1/ScaledObject": {
    model: ScaledObject,
    module: "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject",
    type: "IScaledObject",
  },
  "monitoring.coreos.com/v1/ServiceMonitor": {
    model: ServiceMonitor,
    module: "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor",
    type: "IServiceMonitor",
  },
};

// Kubernetes' own API groups: kubernetes-validate checks these.
const isBuiltIn = (apiVersion) => {
  const group = apiVersion.includes("/") ? apiVersion.split("/")[0] : "";
  return !group.includes(".") || group.endsWith(".k8s.io");
};

const here = dirname(fileURLToPath(import.meta.url));
const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node validate-crds.mjs RENDERED.yaml...");
  process.exit(2);
}

const errors = [];
const typed = []; // { where, kind, doc }
let checked = 0;
for (const file of files) {
  for (const parsed of parseAllDocuments(readFileSync(file, "utf8"))) {
    if (parsed.errors.length) {
      errors.push(`${file}: YAML: ${parsed.errors[0].message}`);
      continue;
    }
    const doc = parsed.toJS();
    if (!doc || typeof doc !== "object") continue;
    const apiVersion = String(doc.apiVersion ?? "");
    const key = `${apiVersion}/${doc.kind}`;
    const where = `${file}: ${doc.kind}/${doc.metadata?.name ?? "?"}`;
    if (isBuiltIn(apiVersion)) continue;
    const kind = KINDS[key];
    if (!kind) {
      errors.push(`${where}: no schema for ${key} (add its @kubernetes-models package to deploy/validate)`);
      continue;
    }
    checked++;
    try {
      new kind.model(doc).validate();
    } catch (e) {
      errors.push(`${where}: ${e.message}`);
    }
    typed.push({ where, kind, doc });
  }
}

// One typed constant per resource, one resource per line: a diagnostic's line names it.
if (typed.length) {
  const tmp = mkdtempSync(join(here, ".tmp-"));
  try {
    const imports = [...new Set(typed.map((t) => t.kind))].map(
      (k) => `import type { ${k.type} } from "${k.module}";`,
    );
    const lines = typed.map((t, i) => `export const r${i}: ${t.kind.type} = ${JSON.stringify(t.doc)};`);
    const source = join(tmp, "resources.ts");
    writeFileSync(source, [...imports, ...lines].join("\n") + "\n");
    const program = ts.createProgram([source], {
      strict: true,
      noEmit: true,
      skipLibCheck: true,
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
      types: [],
    });
    for (const d of ts.getPreEmitDiagnostics(program)) {
      const text = ts.flattenDiagnosticMessageText(d.messageText, " ");
      if (d.file && d.start !== undefined) {
        const { line } = d.file.getLineAndCharacterOfPosition(d.start);
        const t = typed[line - imports.length];
        errors.push(`${t ? t.where : d.file.fileName}: ${text}`);
      } else {
        errors.push(`TypeScript: ${text}`);
      }
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

for (const e of errors) console.error(`ERROR ${e}`);
console.log(`custom resources: ${checked} checked in ${files.length} file(s), ${errors.length} error(s)`);
process.exit(errors.length ? 1 : 0);
