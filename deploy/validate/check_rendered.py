"""What the schemas cannot see in the rendered manifests (run by scripts/validate-deploy.sh):

- drain: each server pod's terminationGracePeriodSeconds is above its preStop sleep plus
  --drain-delay-secs plus --grace-period-secs, and each worker's above its --grace-period-secs;
- probes: startup and readiness on /v2/health/ready, liveness on /v2/health/live;
- autoscaling: the prometheus-adapter rule (when rendered) is valid YAML and serves the metric the
  HPA asks for, from nv_inference_queue_duration_us over nv_inference_request_success;
- with --sluice-bin BIN: the binary accepts every server and worker container's arguments
  (`BIN <args> --help` parses them all and exits 0; an unknown flag exits 2).

    python check_rendered.py [--sluice-bin BIN] RENDERED.yaml...
"""

import argparse
import math
import subprocess
import sys

import yaml


def flag(args, name):
    if name in args:
        return float(args[args.index(name) + 1])
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sluice-bin")
    ap.add_argument("files", nargs="+")
    opts = ap.parse_args()
    errors, notes = [], []
    for path in opts.files:
        docs = [d for d in yaml.safe_load_all(open(path)) if d]
        hpa_metrics = set()
        rule_metrics = set()
        for d in docs:
            kind, name = d["kind"], d["metadata"]["name"]
            where = f"{path}: {kind}/{name}"
            if kind == "HorizontalPodAutoscaler":
                for m in d["spec"]["metrics"]:
                    if m["type"] == "Pods":
                        hpa_metrics.add(m["pods"]["metric"]["name"])
            if kind == "ConfigMap" and name.endswith("-prometheus-adapter-rules"):
                try:
                    rules = yaml.safe_load(d["data"]["config.yaml"])["rules"]
                except Exception as e:  # noqa: BLE001 - report any parse failure
                    errors.append(f"{where}: config.yaml: {e}")
                    continue
                for r in rules:
                    q = r.get("metricsQuery", "")
                    for needed in ("nv_inference_queue_duration_us", "nv_inference_request_success",
                                   "<<.LabelMatchers>>", "<<.GroupBy>>"):
                        if needed not in q:
                            errors.append(f"{where}: metricsQuery lacks {needed}")
                    if set(r.get("resources", {}).get("overrides", {})) != {"namespace", "pod"}:
                        errors.append(f"{where}: the rule must map the namespace and pod labels")
                    rule_metrics.add(r["name"]["as"])
            if kind not in ("Deployment", "StatefulSet"):
                continue
            spec = d["spec"]["template"]["spec"]
            c = spec["containers"][0]
            args = c.get("args", [])
            if not args or args[0] not in ("serve", "worker"):
                continue
            tgp = spec.get("terminationGracePeriodSeconds", 30)
            grace = flag(args, "--grace-period-secs") or 30
            if args[0] == "serve":
                drain = flag(args, "--drain-delay-secs")
                drain = 5 if drain is None else drain
                pre = c.get("lifecycle", {}).get("preStop", {})
                sleep = pre.get("sleep", {}).get("seconds") or (
                    int(pre["exec"]["command"][1]) if "exec" in pre else 0)
                if tgp <= sleep + math.ceil(drain) + grace:
                    errors.append(f"{where}: terminationGracePeriodSeconds {tgp} <= preStop {sleep} "
                                  f"+ drain delay {drain} + grace period {grace}")
                probes = {p: c.get(p, {}).get("httpGet", {}).get("path")
                          for p in ("startupProbe", "readinessProbe", "livenessProbe")}
                want = {"startupProbe": "/v2/health/ready", "readinessProbe": "/v2/health/ready",
                        "livenessProbe": "/v2/health/live"}
                if probes != want:
                    errors.append(f"{where}: probes {probes}, expected {want}")
                s = c["startupProbe"]
                notes.append(f"{where}: startup budget {s['periodSeconds'] * s['failureThreshold']} s, "
                             f"shutdown {sleep} + {drain:g} + {grace:g} < {tgp} s")
            elif tgp <= grace:
                errors.append(f"{where}: terminationGracePeriodSeconds {tgp} <= grace period {grace}")
            if opts.sluice_bin:
                r = subprocess.run([opts.sluice_bin, *args, "--help"], capture_output=True, text=True)
                if r.returncode != 0:
                    why = r.stderr.strip().splitlines()[0] if r.stderr.strip() else f"exit {r.returncode}"
                    errors.append(f"{where}: `{opts.sluice_bin} {args[0]} ...` refuses the container's "
                                  f"arguments: {why}")
        if hpa_metrics and rule_metrics and not hpa_metrics <= rule_metrics:
            errors.append(f"{path}: the HPA asks for {sorted(hpa_metrics)}, the adapter rule serves "
                          f"{sorted(rule_metrics)}")
    for n in notes:
        print(n)
    for e in errors:
        print(f"ERROR {e}", file=sys.stderr)
    print(f"rendered manifests: {len(opts.files)} file(s), {len(errors)} error(s)"
          + ("" if opts.sluice_bin else " (no sluice binary: arguments not checked)"))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
