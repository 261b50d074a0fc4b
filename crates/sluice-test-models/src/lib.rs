//! The one place tests, examples and benchmarks look for the real models (SmolLM2, the spam
//! classifiers, the SpamAssassin emails): `$SLUICE_MODELS`, else `$SLUICE_HOME/models`, else
//! `~/.local/share/sluice/models`. `scripts/setup.sh` fills that folder, linking a shared copy
//! when there is one and rebuilding everything from public packages otherwise.
//!
//! A missing model is a failure with the way to fix it, never a skipped test: a test that passes
//! without its model has checked nothing.

use std::path::PathBuf;

/// The models folder, whether or not it exists.
pub fn models_dir() -> PathBuf {
    resolve(|k| std::env::var_os(k))
}

fn resolve(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    let set = |k: &str| var(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set("SLUICE_MODELS") {
        return dir;
    }
    if let Some(home) = set("SLUICE_HOME") {
        return home.join("models");
    }
    set("HOME").unwrap_or_else(|| PathBuf::from("/")).join(".local/share/sluice/models")
}

/// `rel` inside the models folder, or why it is not there.
pub fn try_model_path(rel: &str) -> Result<PathBuf, String> {
    let path = models_dir().join(rel);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} does not exist: the real models are missing. Run `bash scripts/setup.sh` (it fills \
             $SLUICE_MODELS, default $SLUICE_HOME/models or ~/.local/share/sluice/models), or set \
             SLUICE_MODELS to a folder that holds them",
            path.display()
        ))
    }
}

/// `rel` inside the models folder; panics with how to get it when it is missing.
#[track_caller]
pub fn model_path(rel: &str) -> PathBuf {
    try_model_path(rel).unwrap_or_else(|e| panic!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(vars: &[(&str, &str)]) -> PathBuf {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        resolve(|k| m.get(k).map(Into::into))
    }

    #[test]
    fn sluice_models_wins_then_sluice_home_then_home() {
        let all = [("SLUICE_MODELS", "/m"), ("SLUICE_HOME", "/h"), ("HOME", "/u")];
        assert_eq!(with(&all), PathBuf::from("/m"));
        assert_eq!(with(&all[1..]), PathBuf::from("/h/models"));
        assert_eq!(with(&all[2..]), PathBuf::from("/u/.local/share/sluice/models"));
        // Set but empty counts as unset, as in the shell scripts (`${SLUICE_MODELS:-...}`).
        assert_eq!(with(&[("SLUICE_MODELS", ""), ("SLUICE_HOME", "/h")]), PathBuf::from("/h/models"));
    }

    #[test]
    fn a_missing_model_says_how_to_get_it() {
        let e = try_model_path("no-such-model-a1b2c3/model.onnx");
        // Only when the folder really lacks it (it does unless someone made that name).
        let e = e.expect_err("no such model");
        assert!(e.contains("no-such-model-a1b2c3/model.onnx") && e.contains("scripts/setup.sh"), "{e}");
    }
}
