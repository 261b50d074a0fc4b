//! Model repositories: where models live (local directories), their configs (Triton's
//! `config.pbtxt`, or the same fields as YAML/JSON), version policies, auto-complete through the
//! backend, and the load/reload/unload lifecycle that publishes what is served.

pub mod config;
pub mod manager;
pub mod pbtxt;
pub mod remote;
pub mod warmup;

pub use manager::{
    endpoint_file, scan_endpoints, scan_model_names, ControlMode, LoadOverride, ModelRecord, ModelRepository,
    RepositoryOptions, ServedVersion, ENDPOINT_FILE,
};
pub use remote::{RemoteRepository, SyncReport};
