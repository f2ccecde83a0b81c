//! Switchyard: an OpenAI-compatible LLM gateway on Cloudflare Pingora.
//!
//! One listener serves the OpenAI API. Each LLM request runs as one exchange inside
//! Pingora's `request_filter` (`proxy::exchange`): the body is read and checked
//! (`api::openai`), the model resolved (`routing`), the request sent through Pingora's
//! pooled connector to a resolved endpoint (`upstream`), and the response streamed back
//! event by event (`api::sse`, `api::stream`) while usage is tallied (`accounting`). The
//! config (`config`) is one immutable snapshot per request (`state`). Metrics and the
//! access log are written in the `logging` phase (`metrics`, `proxy::logging`).

pub mod accounting;
pub mod admin;
pub mod api;
pub mod auth;
pub mod balance;
pub mod cli;
pub mod config;
pub mod error;
pub mod host;
pub mod housekeeping;
pub mod ledger;
pub mod limits;
pub mod metrics;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod upstream;
