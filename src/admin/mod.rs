//! The management API answered inside the gateway (request_filter, after the admin check):
//! the usage and performance reports over the ledger (`stats.rs`) and virtual keys
//! (`keys.rs`). The larger management
//! surface of the local-backend work (models, logs, devices) is to run on axum.

pub mod keys;
pub mod stats;
