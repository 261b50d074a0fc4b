//! The client subcommands (`infer`, `jobs`, `generate`): the built binary against a real server
//! running in this test process, checked by what it prints and how it exits.

mod common;

use std::path::Path;

use common::*;
use serde_json::{json, Value};
use sluice_server::{EngineOptions, JobsOptions, RunningServer, ServerConfig};

/// add_sub (FP32 [-1,16] x2), iris (FP32 [-1,4]), identity_bytes (BYTES [-1]).
fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    add_sub(dir.path(), ADD_SUB_CONFIG);
    example_model(dir.path(), "iris");
    example_model(dir.path(), "identity_bytes");
    dir
}

/// A server with the job API; `workers: 0` accepts jobs and never runs them.
async fn server(repo: &Path, state: &Path, workers: usize) -> RunningServer {
    let opts =
        EngineOptions { model_repositories: vec![repo.to_path_buf()], intra_op_threads: 1, ..Default::default() };
    let engine = sluice_server::build_engine(&opts).await.expect("engine starts");
    let cfg = ServerConfig {
        host: "127.0.0.1".into(),
        http_port: 0,
        grpc_port: 0,
        metrics_port: 0,
        jobs: Some(JobsOptions { workers, ..JobsOptions::new(state.to_path_buf()) }),
        ..Default::default()
    };
    sluice_server::start(engine, &cfg).await.expect("server starts")
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

const IOTA: &str = "[[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15]]";
const ONES: &str = "[[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]]";

/// `-i` values for add_sub: INPUT0 0..16, INPUT1 all ones.
fn add_sub_inputs() -> [String; 2] {
    [format!("INPUT0={IOTA}"), format!("INPUT1={ONES}")]
}

/// A server on [`repo`] with one job worker; the folders live as long as the struct.
struct Running {
    server: RunningServer,
    url: String,
    repo: tempfile::TempDir,
    state: tempfile::TempDir,
}

async fn running() -> Running {
    let (repo, state) = (repo(), tempfile::tempdir().unwrap());
    let server = server(repo.path(), state.path(), 1).await;
    let url = format!("http://{}", server.http_addr);
    Running { server, url, repo, state }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_prints_tables_json_and_clear_errors() {
    let Running { server: s, url, repo: _repo, state } = running().await;
    let [in0, in1] = add_sub_inputs();

    // A table: name, datatype, shape, and the data with its middle left out.
    let table = ok(&sluice_client(&url, &["infer", "add_sub", "-i", &in0, "--input", &in1]).await);
    assert!(table.starts_with("NAME"), "{table}");
    assert_eq!(row(&table, "OUTPUT0")[..3], ["OUTPUT0", "FP32", "[1,16]"], "{table}");
    assert!(table.contains("[[1, 2, 3, …, 14, 15, 16]]"), "{table}");
    assert!(table.contains("[[-1, 0, 1, …, 12, 13, 14]]"), "{table}");

    // --json: the server's answer as it came, with our id and every value.
    let out = ok(&sluice_client(&url, &["infer", "add_sub", "-i", &in0, "-i", &in1, "--json", "--id", "req-7"]).await);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["model_name"].as_str(), v["id"].as_str()), (Some("add_sub"), Some("req-7")), "{v}");
    let out0 = v["outputs"].as_array().unwrap().iter().find(|o| o["name"] == "OUTPUT0").unwrap();
    assert_eq!(out0["data"], json!((1..=16).map(|i| i as f64).collect::<Vec<_>>()));
    assert_eq!(out0["shape"], json!([1, 16]));

    // .npy inputs: float32 as it is, float64 (numpy's default) narrowed to the model's FP32;
    // flat arrays get the batch dimension. --output picks one output.
    let in0_npy = state.path().join("in0.npy");
    let in1_npy = state.path().join("in1.npy");
    write_npy(&in0_npy, "<f4", &[16], &f32_bytes(&[0.5; 16]));
    let twos: Vec<u8> = [2.0f64; 16].iter().flat_map(|x| x.to_le_bytes()).collect();
    write_npy(&in1_npy, "<f8", &[1, 16], &twos);
    let a0 = format!("INPUT0=@{}", in0_npy.display());
    let a1 = format!("INPUT1=@{}", in1_npy.display());
    let out =
        ok(&sluice_client(&url, &["infer", "add_sub", "-i", &a0, "-i", &a1, "--output", "OUTPUT1", "--json"]).await);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["outputs"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["outputs"][0]["name"], "OUTPUT1");
    assert_eq!(v["outputs"][0]["data"], json!(vec![-1.5; 16]));

    // One input: a bare value; the data is small enough to show whole.
    let table = ok(&sluice_client(&url, &["infer", "iris", "[[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]"]).await);
    assert_eq!(row(&table, "label"), ["label", "INT64", "[2,1]", "[[0],", "[2]]"], "{table}");
    assert_eq!(row(&table, "probabilities")[..3], ["probabilities", "FP32", "[2,3]"], "{table}");
    let table = ok(&sluice_client(
        &url,
        &["infer", "iris", "[5.1, 3.5, 1.4, 0.2]", "-o", "probabilities", "--classification", "1"],
    )
    .await);
    let cls = row(&table, "probabilities");
    assert_eq!(cls[1..3], ["BYTES", "[1,1]"], "{table}");
    assert!(cls[3].starts_with("[[\"0.9") && cls[3].ends_with(":0\"]]"), "top class is 0 (setosa): {table}");

    // Text for a BYTES model, as --text and as a named input.
    let table = ok(&sluice_client(&url, &["infer", "identity_bytes", "--text", "hello, world"]).await);
    assert_eq!(row(&table, "OUTPUT0")[..3], ["OUTPUT0", "BYTES", "[1]"], "{table}");
    assert!(table.contains(r#"["hello, world"]"#), "{table}");
    let out = ok(&sluice_client(&url, &["infer", "identity_bytes", "-i", "INPUT0=a=b", "--json"]).await);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["outputs"][0]["data"], json!(["a=b"]));

    // The server's refusal: its message, exit 1.
    let e = exits(&sluice_client(&url, &["infer", "add_sub", "-i", "INPUT0=[1,2,3]", "-i", &in1]).await, 1);
    assert!(e.contains("INPUT0") && e.contains("[-1,16]") && e.contains("HTTP 400"), "{e}");
    let e = exits(&sluice_client(&url, &["infer", "nope", "[1]"]).await, 1);
    assert!(e.contains("nope") && e.contains("HTTP 404"), "{e}");
    // Mistakes found before sending: exit 2, as clap's own usage errors.
    let e = exits(&sluice_client(&url, &["infer", "add_sub", "-i", "INPUT0=[[1,2]", "-i", &in1]).await, 2);
    assert!(e.contains("input 'INPUT0'") && e.contains("not valid JSON"), "{e}");
    let e = exits(&sluice_client(&url, &["infer", "add_sub", "-i", "INPUT9=[1]"]).await, 2);
    assert!(e.contains("no input 'INPUT9'") && e.contains("INPUT0 (FP32), INPUT1 (FP32)"), "{e}");
    let e = exits(&sluice_client(&url, &["infer", "add_sub", "--text", "hi"]).await, 2);
    assert!(e.contains("only input is BYTES"), "{e}");
    let e = exits(&sluice_client(&url, &["infer", "add_sub", "-i", "INPUT0=@/no/such.npy", "-i", &in1]).await, 2);
    assert!(e.contains("cannot read /no/such.npy"), "{e}");
    exits(&sluice_client(&url, &["infer"]).await, 2);
    s.shutdown().await;

    // Nobody listening: its own exit code.
    let e = exits(&sluice_client(&url, &["infer", "iris", "[1,2,3,4]"]).await, 3);
    assert!(e.contains("cannot reach the server"), "{e}");
    let e = exits(&sluice_client(&url, &["models", "list"]).await, 3);
    assert!(e.contains("cannot reach the server"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_submit_wait_status_cancel_list() {
    let Running { server: s, url, repo: dir, state: _state } = running().await;
    let [in0, in1] = add_sub_inputs();

    // submit prints the id alone; wait prints the result as infer does.
    let id = ok(&sluice_client(&url, &["jobs", "submit", "add_sub", "-i", &in0, "-i", &in1, "--priority", "2"]).await);
    let id = id.trim().to_string();
    assert!(!id.is_empty() && !id.contains(char::is_whitespace), "{id}");
    let table = ok(&sluice_client(&url, &["jobs", "wait", &id]).await);
    assert_eq!(row(&table, "OUTPUT0")[..3], ["OUTPUT0", "FP32", "[1,16]"], "{table}");
    assert!(table.contains("[[1, 2, 3, …, 14, 15, 16]]"), "{table}");
    let status = ok(&sluice_client(&url, &["jobs", "status", &id]).await);
    for part in [format!("job:      {id}"), "status:   completed".into(), "priority: 2".into(), "result:".into()] {
        assert!(status.contains(&part), "'{part}' not in\n{status}");
    }
    let v: Value = serde_json::from_str(&ok(&sluice_client(&url, &["jobs", "status", &id, "--json"]).await)).unwrap();
    assert_eq!((v["status"].as_str(), v["priority"].as_u64()), (Some("completed"), Some(2)), "{v}");
    let waited = ok(&sluice_client(&url, &["jobs", "wait", &id, "--json"]).await);
    assert_eq!(serde_json::from_str::<Value>(&waited).unwrap()["model_name"], "add_sub", "{waited}");

    // --wait in one go; an idempotency key answers the first job again.
    let table = ok(&sluice_client(&url, &["jobs", "submit", "iris", "[5.1, 3.5, 1.4, 0.2]", "--wait"]).await);
    assert_eq!(row(&table, "label")[..4], ["label", "INT64", "[1,1]", "[[0]]"], "{table}");
    let args =
        ["jobs", "submit", "iris", "[5.1, 3.5, 1.4, 0.2]", "--idempotency-key", "order-17", "--ttl-seconds", "60"];
    let first = ok(&sluice_client(&url, &args).await);
    assert_eq!(ok(&sluice_client(&url, &args).await), first);

    // Cancelling a job that already ended is the server's 409; an unknown job its 404.
    let e = exits(&sluice_client(&url, &["jobs", "cancel", &id]).await, 1);
    assert!(e.contains("HTTP 409"), "{e}");
    let e = exits(&sluice_client(&url, &["jobs", "status", "no-such-job"]).await, 1);
    assert!(e.contains("HTTP 404"), "{e}");
    // A bad request is refused at submit time.
    let e = exits(&sluice_client(&url, &["jobs", "submit", "add_sub", "-i", "INPUT0=[1,2,3]", "-i", &in1]).await, 1);
    assert!(e.contains("INPUT0") && e.contains("HTTP 400"), "{e}");

    let list = ok(&sluice_client(&url, &["jobs", "list", "--model", "add_sub"]).await);
    assert!(list.starts_with("JOB"), "{list}");
    assert_eq!(row(&list, &id)[1..5], ["add_sub", "-", "completed", "2"], "{list}");
    assert_eq!(list.lines().count(), 2, "only add_sub's job: {list}");
    assert_eq!(ok(&sluice_client(&url, &["jobs", "list", "--limit", "1"]).await).lines().count(), 2);
    let e = exits(&sluice_client(&url, &["jobs", "list", "--status", "done"]).await, 1);
    assert!(e.contains("status must be one of"), "{e}");
    s.shutdown().await;

    // A server without workers keeps jobs queued: wait runs out (5); cancelled, wait says so (4).
    let state = tempfile::tempdir().unwrap();
    let s = server(dir.path(), state.path(), 0).await;
    let url = format!("http://{}", s.http_addr);
    let id = ok(&sluice_client(&url, &["jobs", "submit", "iris", "[5.1, 3.5, 1.4, 0.2]"]).await).trim().to_string();
    let e = exits(&sluice_client(&url, &["jobs", "wait", &id, "--timeout", "0.3"]).await, 5);
    assert!(e.contains("still queued"), "{e}");
    assert_eq!(ok(&sluice_client(&url, &["jobs", "cancel", &id]).await).trim(), format!("cancelled {id}"));
    let e = exits(&sluice_client(&url, &["jobs", "wait", &id]).await, 4);
    assert!(e.contains(&format!("job {id} cancelled")), "{e}");
    let list = ok(&sluice_client(&url, &["jobs", "list", "--status", "cancelled", "--json"]).await);
    let v: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(v["jobs"][0]["job_id"].as_str(), Some(id.as_str()), "{v}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_streams_the_real_model() {
    let m = real_model("smollm2-135m-instruct");
    let dir = repo();
    std::fs::create_dir_all(dir.path().join("smollm/1")).unwrap();
    std::os::unix::fs::symlink(m.join("model.gguf"), dir.path().join("smollm/1/model.gguf")).unwrap();
    std::os::unix::fs::symlink(m.join("tokenizer.json"), dir.path().join("smollm/tokenizer.json")).unwrap();
    let state = tempfile::tempdir().unwrap();
    let s = server(dir.path(), state.path(), 1).await;
    let url = format!("http://{}", s.http_addr);

    // --chat: the model's chat template (with SmolLM's system prompt) wraps the prompt.
    let out = ok(&sluice_client(
        &url,
        &[
            "generate",
            "smollm",
            "--chat",
            "What is the capital of Germany?",
            "--temperature",
            "0",
            "--max-tokens",
            "30",
        ],
    )
    .await);
    assert_eq!(out, "The capital of Germany is Berlin.\n");
    // Without: the prompt goes as it is (here, a template written by hand, with no system prompt).
    let prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let out =
        ok(&sluice_client(&url, &["generate", "smollm", prompt, "--temperature", "0", "--max-tokens", "30"]).await);
    assert_eq!(out, "The capital of France is Paris.\n");
    // Cut short by --max-tokens: said on stderr, the text still ends with a newline.
    let out = sluice_client(&url, &["generate", "smollm", "--chat", "Tell me a story.", "--max-tokens", "3"]).await;
    assert!(ok(&out).ends_with('\n') && !ok(&out).trim().is_empty(), "{}", ok(&out));
    assert!(text(&out.stderr).contains("stopped at --max-tokens 3"), "{}", text(&out.stderr));

    // Refusals before the stream starts: the server's message, exit 1.
    let e = exits(&sluice_client(&url, &["generate", "smollm", "hi", "--max-tokens", "100000"]).await, 1);
    assert!(e.contains("context") && e.contains("HTTP 400"), "{e}");
    let e = exits(&sluice_client(&url, &["generate", "add_sub", "hi"]).await, 1);
    assert!(e.contains("add_sub") && e.contains("HTTP 400"), "{e}");
    let e = exits(&sluice_client(&url, &["generate", "add_sub", "--chat", "hi"]).await, 1);
    assert!(e.contains("add_sub"), "{e}");
    s.shutdown().await;
}
