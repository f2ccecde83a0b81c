//! Test harness: the mock upstream, the gateway process, and a raw HTTP/1.1 client.

pub mod client;
pub mod gateway;
pub mod mock_upstream;
pub mod postgres;
pub mod redis;
