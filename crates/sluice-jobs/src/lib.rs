//! Asynchronous inference: jobs submitted now and run by workers later, results kept for a TTL,
//! signed webhooks when they end. Owns the [`JobStore`] trait and its embedded durable store
//! (`redb`), the worker loop over the endpoints a [`sluice_types::Resolver`] finds, webhook signing and
//! delivery, and the job metrics. Nothing here knows HTTP routes or gRPC.

pub mod embedded;
pub mod metrics;
pub mod record;
pub mod redis_store;
pub mod store;
pub mod webhook;
pub mod worker;

pub use embedded::EmbeddedStore;
pub use record::{JobRecord, JobStatus, NewJob, DEFAULT_PRIORITY};
pub use redis_store::RedisStore;
pub use store::{JobStore, ListFilter};
pub use webhook::{Signer, WebhookConfig};
pub use worker::{Jobs, JobsConfig};
