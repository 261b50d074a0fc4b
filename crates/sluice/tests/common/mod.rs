//! What the binary's tests share: the add_sub model, free ports, child processes that die with
//! the test.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const ADD_SUB_CONFIG: &str = r#"
name: "add_sub"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
        { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
         { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
"#;

/// `crates/` of this workspace.
pub fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Writes `<dir>/add_sub` (the backend's test model) with `config`.
pub fn add_sub(dir: &Path, config: &str) {
    std::fs::create_dir_all(dir.join("add_sub/1")).unwrap();
    std::fs::copy(crates_dir().join("sluice-backend/tests/data/add_sub.onnx"), dir.join("add_sub/1/model.onnx"))
        .unwrap();
    std::fs::write(dir.join("add_sub/config.pbtxt"), config).unwrap();
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process killed (SIGKILL) when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `url` answers 200.
pub fn wait_http(url: &str) {
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        if reqwest::blocking::get(url).is_ok_and(|r| r.status() == 200) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{url} never answered 200");
}

/// The folder of the real models: `SLUICE_MODELS`, else `$SLUICE_HOME/models`, else
/// `~/.local/share/sluice/models`.
pub fn models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SLUICE_MODELS").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(h) = std::env::var_os("SLUICE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(h).join("models");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    home.join(".local/share/sluice/models")
}

/// `<models_dir>/<name>`; a test that needs a real model fails, never skips, without it.
pub fn real_model(name: &str) -> PathBuf {
    let dir = models_dir().join(name);
    assert!(
        dir.is_dir(),
        "{} is missing: run scripts/setup.sh to fetch the real models, or set SLUICE_MODELS to the folder that \
         holds {name}",
        dir.display()
    );
    dir
}

/// `examples/models/<name>` copied into `dir`.
pub fn example_model(dir: &Path, name: &str) {
    let src = crates_dir().join("../examples/models").join(name);
    copy_dir(&src, &dir.join(name));
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), to).unwrap();
        }
    }
}

/// A `.npy` file as `np.save` writes it (format 1.0): `descr` such as `<f4`, C order.
pub fn write_npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    std::fs::write(path, out).unwrap();
}

/// Runs the `sluice` binary as a client of `url` (SLUICE_URL from the environment left out).
pub async fn sluice_client(url: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .args(["--url", url])
        .env_remove("SLUICE_URL")
        .output()
        .await
        .unwrap()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts success and returns stdout.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Asserts exit code `code` and returns stderr.
pub fn exits(out: &Output, code: i32) -> String {
    assert_eq!(out.status.code(), Some(code), "stdout: {}\nstderr: {}", text(&out.stdout), text(&out.stderr));
    text(&out.stderr)
}

/// The words of the table row whose first word is `name`.
pub fn row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    let line = table.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap_or_else(|| panic!("{table}"));
    line.split_whitespace().collect()
}

/// A `redis-server` of the test's own on `port` (append-only file in `dir`), killed when dropped.
pub fn redis(dir: &Path, port: u16) -> Proc {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
        .args(["--appendfsync", "always", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server on the PATH");
    wait_port(port, || "redis-server did not start".into());
    Proc(child)
}

/// Waits up to 10 s for something to listen on `port` of 127.0.0.1; else fails with `why()`.
pub fn wait_port(port: u16, why: impl Fn() -> String) {
    let end = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "{}", why());
        std::thread::sleep(Duration::from_millis(20));
    }
}
