//! Model repositories: where models live (local directories), their configs (Triton's
//! `config.pbtxt`, or the same fields as YAML/JSON), version policies, auto-complete through the
//! backend, and the load/reload/unload lifecycle that publishes what is served. It depends on
//! the backend crate only: the server says how a version is assembled ([`Assemble`]), and the
//! repository holds versions of whatever type that makes.

pub mod config;
pub mod manager;
pub mod pbtxt;
pub mod remote;

pub use manager::{
    endpoint_file, scan_endpoints, scan_model_names, Assemble, ControlMode, LoadOverride, ModelRecord, ModelRepository,
    RepositoryOptions, Version, ENDPOINT_FILE,
};
pub use remote::{RemoteRepository, SyncReport};
