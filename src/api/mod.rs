//! The client-facing API shapes: OpenAI request fields, SSE framing, stream chunks, models.

pub mod models;
pub mod openai;
pub mod sse;
pub mod stream;
pub mod toplevel;
