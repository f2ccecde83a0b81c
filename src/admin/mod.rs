//! The management API answered inside the gateway (request_filter, after the admin check):
//! the usage and performance reports over the ledger (`stats.rs`). The larger management
//! surface of the local-backend work (models, logs, devices) is to run on axum.

pub mod stats;
