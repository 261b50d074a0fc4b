//! Where a rollout's state lives between restarts: a [`RolloutStore`] keyed by endpoint name.
//! [`FileStore`] is the embedded one, a JSON file per rollout in the server's state directory,
//! replaced atomically (write, fsync, rename) so that a crash leaves the old state or the new,
//! never half of one.
//!
//! The state is saved with the targets it was for: an `endpoint.yaml` edited to roll out another
//! candidate starts a new rollout rather than inheriting a finished one's phase.

use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::machine::RolloutState;

/// A rollout's state as stored, with what it was rolling out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    pub baseline: String,
    pub candidate: String,
    pub state: RolloutState,
}

/// Keeps rollout states by endpoint name.
pub trait RolloutStore: Send + Sync {
    fn load(&self, name: &str) -> Result<Option<Saved>, String>;
    fn save(&self, name: &str, saved: &Saved) -> Result<(), String>;
}

/// `<dir>/<name>.json`, one file per rollout.
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    pub fn new(dir: impl Into<PathBuf>) -> FileStore {
        FileStore { dir: dir.into() }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }
}

impl RolloutStore for FileStore {
    fn load(&self, name: &str) -> Result<Option<Saved>, String> {
        let path = self.path(name);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("{}: not a saved rollout state: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    fn save(&self, name: &str, saved: &Saved) -> Result<(), String> {
        let path = self.path(name);
        let tmp = self.dir.join(format!(".{name}.json.tmp"));
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(saved).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            // The rename is durable once the directory is.
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| format!("cannot save {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_state_reads_back_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("rollouts"));
        assert_eq!(store.load("r").unwrap(), None);
        let saved = Saved { baseline: "m:1".into(), candidate: "m:2".into(), state: RolloutState::default() };
        store.save("r", &saved).unwrap();
        assert_eq!(store.load("r").unwrap(), Some(saved.clone()));
        std::fs::write(store.path("r"), b"{").unwrap();
        assert!(store.load("r").unwrap_err().contains("not a saved rollout state"));
    }
}
