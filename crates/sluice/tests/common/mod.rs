//! What the binary's tests share: the add_sub model, free ports, child processes that die with
//! the test.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Child;
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
