//! Router tests over a real `EnginePipeline` on a tiny deterministic model (see `common`).
//!
//! Most go through `Router::oneshot`; the client-disconnect and shutdown tests use a real socket
//! on 127.0.0.1, because only a real connection can go away.

mod common;

mod chat;
mod errors;
mod limits;
mod livepeer;
mod ops;
