//! Finding and loading the ONNX Runtime shared library, once per process.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use ort::environment::Environment;
use sluice_types::ServeError;

/// The ONNX Runtime version the server is built and tested against.
pub const ORT_VERSION: &str = "1.32.0";

const LIB_NAME: &str = "libonnxruntime.so";

/// The library that was loaded and the environment built on it (or why that failed).
struct Runtime {
    lib: PathBuf,
    env: Result<Environment, String>,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// Finds `libonnxruntime.so`, looking in order at:
/// 1. `explicit` (`--onnxruntime-lib`), a file or a directory holding `libonnxruntime.so*`;
/// 2. the `ORT_DYLIB_PATH` environment variable (same forms);
/// 3. `$SLUICE_HOME/lib/libonnxruntime.so` (`SLUICE_HOME` defaults to `$HOME/.local/share/sluice`),
///    where `scripts/setup.sh` installs it;
/// 4. the `capi/` directory of the `onnxruntime` Python package that `python3` imports.
///
/// A path given explicitly (1 or 2) that holds no library is an error rather than skipped.
pub fn find_library(explicit: Option<&Path>) -> Result<PathBuf, ServeError> {
    if let Some(p) = explicit {
        return resolve(p).ok_or_else(|| {
            ServeError::Unavailable(format!(
                "--onnxruntime-lib {}: no ONNX Runtime library there (expected a {LIB_NAME}* file or a \
                 directory holding one)",
                p.display()
            ))
        });
    }
    if let Some(v) = env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(v);
        return resolve(&p).ok_or_else(|| {
            ServeError::Unavailable(format!(
                "ORT_DYLIB_PATH={}: no ONNX Runtime library there (expected a {LIB_NAME}* file or a \
                 directory holding one)",
                p.display()
            ))
        });
    }
    let mut looked = Vec::new();
    if let Some(home) = sluice_home() {
        let dir = home.join("lib");
        if let Some(found) = search_dir(&dir) {
            return Ok(found);
        }
        looked.push(dir.join(LIB_NAME).display().to_string());
    }
    match python_package_dir() {
        Some(pkg) => {
            let dir = pkg.join("capi");
            if let Some(found) = search_dir(&dir) {
                return Ok(found);
            }
            looked.push(format!("{}/{LIB_NAME}*", dir.display()));
        }
        None => looked.push("python3 -c 'import onnxruntime' (not importable)".to_string()),
    }
    Err(ServeError::Unavailable(format!(
        "ONNX Runtime library ({LIB_NAME}) not found; looked at --onnxruntime-lib, ORT_DYLIB_PATH, {}. \
         Install it with `scripts/setup.sh`, or `pip install onnxruntime=={ORT_VERSION}` and pass \
         --onnxruntime-lib <site-packages>/onnxruntime/capi/{LIB_NAME}.{ORT_VERSION} (or set ORT_DYLIB_PATH)",
        looked.join(", ")
    )))
}

/// Loads ONNX Runtime from `lib` and creates the process-wide environment. Idempotent: the first
/// call decides, later calls return its outcome (a later call naming another library is ignored
/// with a warning, as a process can hold only one ONNX Runtime).
pub fn init_runtime(lib: &Path) -> Result<(), ServeError> {
    let rt = RUNTIME.get_or_init(|| Runtime { lib: lib.to_path_buf(), env: create_environment(lib) });
    if rt.lib != lib && rt.env.is_ok() {
        tracing::warn!(
            requested = %lib.display(),
            loaded = %rt.lib.display(),
            "ONNX Runtime is already loaded from another library; keeping it"
        );
    }
    rt.env.as_ref().map(|_| ()).map_err(|e| ServeError::Unavailable(e.clone()))
}

/// The library ONNX Runtime was loaded from, once [`init_runtime`] succeeded.
pub fn runtime_library() -> Option<&'static Path> {
    RUNTIME.get().filter(|rt| rt.env.is_ok()).map(|rt| rt.lib.as_path())
}

/// The process environment, initializing the runtime from [`find_library(None)`] when nobody
/// called [`init_runtime`] yet. Every use of `ort` goes through this first: `ort` panics when
/// its API is touched without a loaded library.
pub(crate) fn environment() -> Result<&'static Environment, ServeError> {
    let rt = match RUNTIME.get() {
        Some(rt) => rt,
        None => {
            let lib = find_library(None)?;
            init_runtime(&lib)?;
            RUNTIME.get().ok_or_else(|| ServeError::Internal("ONNX Runtime initialization left no state".into()))?
        }
    };
    rt.env.as_ref().map_err(|e| ServeError::Unavailable(e.clone()))
}

fn create_environment(lib: &Path) -> Result<Environment, String> {
    let builder = ort::init_from(lib).map_err(|e| format!("cannot load ONNX Runtime: {e}"))?;
    let env = builder
        .with_name("sluice")
        .with_telemetry(false)
        .build()
        .map_err(|e| format!("cannot create the ONNX Runtime environment from {}: {e}", lib.display()))?;
    tracing::info!(lib = %lib.display(), "loaded ONNX Runtime");
    Ok(env)
}

fn sluice_home() -> Option<PathBuf> {
    match env::var_os("SLUICE_HOME").filter(|v| !v.is_empty()) {
        Some(h) => Some(PathBuf::from(h)),
        None => env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".local/share/sluice")),
    }
}

/// A file as is; a directory: the library inside it. Relative paths are made absolute (`ort`
/// would otherwise look next to the executable first).
fn resolve(p: &Path) -> Option<PathBuf> {
    let p = &std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    if p.is_dir() {
        search_dir(p)
    } else if p.is_file() {
        Some(p.to_path_buf())
    } else {
        None
    }
}

/// `libonnxruntime.so` in `dir`, else the highest-sorting `libonnxruntime.so.*`.
fn search_dir(dir: &Path) -> Option<PathBuf> {
    let exact = dir.join(LIB_NAME);
    if exact.is_file() {
        return Some(exact);
    }
    let prefix = format!("{LIB_NAME}.");
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)))
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

/// The directory of the `onnxruntime` Python package, if `python3` can import it.
fn python_package_dir() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8(out.stdout).ok()?;
    let dir = dir.trim();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_path_that_does_not_exist_is_an_error() {
        let e = find_library(Some(Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("--onnxruntime-lib /nonexistent/libonnxruntime.so"), "{msg}");
    }

    #[test]
    fn directory_search_prefers_exact_then_highest_version() {
        let dir = std::env::temp_dir().join(format!("sluice-ort-find-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(search_dir(&dir), None);
        std::fs::write(dir.join("libonnxruntime_providers_shared.so"), b"").unwrap();
        assert_eq!(search_dir(&dir), None);
        std::fs::write(dir.join("libonnxruntime.so.1.31.0"), b"").unwrap();
        std::fs::write(dir.join("libonnxruntime.so.1.32.0"), b"").unwrap();
        assert_eq!(search_dir(&dir), Some(dir.join("libonnxruntime.so.1.32.0")));
        assert_eq!(find_library(Some(&dir)).unwrap(), dir.join("libonnxruntime.so.1.32.0"));
        std::fs::write(dir.join("libonnxruntime.so"), b"").unwrap();
        assert_eq!(search_dir(&dir), Some(dir.join("libonnxruntime.so")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
