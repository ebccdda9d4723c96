//! The library every zerofoot service links: what must be identical across
//! processes lives here and nowhere else.
//!
//! - [`names`]: every NATS subject, bucket, stream and service name, built from
//!   the cluster name. No other module formats a subject.
//! - [`protocol`]: the versioned (`"v": 1`) JSON types that cross NATS.
//! - [`assets`]: JetStream buckets and streams with their settings, created
//!   idempotently and checked for unsafe settings at start.
//! - [`config`]: command-line flags shared by every binary.
//! - [`context_store`]: typed load, create and compare-and-set of execution contexts.
//! - [`submit`]: handing a new sync operation to a node of its zone.
//! - [`batch`]: batches over many resources: plans, child ids, the next step.
//! - [`nats`]: connecting with credentials, TLS, retry and backoff.
//! - [`nats_auth`]: the NATS users of each service role and their permissions.
//! - [`bundle`]: checking, packing and safely unpacking module bundles.
//! - [`eventlog`]: the per-operation event log: entries and reading.
//! - [`oplog`]: per-operation driver log lines: what a line holds, and reading them.
//! - [`ordered_read`]: reading one subject of a stream in order, each message once.
//! - [`modules`]: the read side of the module index (list, resolve, get).
//! - [`selector`]: resource labels and the selectors that pick resources by them.
//! - [`sealing`]: resource secrets sealed at rest with the cluster key.
//! - [`signing`]: module signatures (repository) and their verification (nodes).
//! - [`health`], [`metrics`]: `/healthz` and Prometheus `/metrics` endpoints.
//! - [`telemetry`], [`shutdown`]: logging and graceful shutdown.

pub mod assets;
pub mod batch;
pub mod bundle;
pub mod config;
pub mod context_store;
pub mod eventlog;
pub mod health;
pub mod metrics;
pub mod modules;
pub mod names;
pub mod nats;
pub mod nats_auth;
pub mod oplog;
pub mod ordered_read;
pub mod protocol;
pub mod sealing;
pub mod selector;
pub mod shutdown;
pub mod signing;
pub mod submit;
pub mod telemetry;
pub mod time;

/// The version every zerofoot binary reports (heartbeats, micro service info).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
