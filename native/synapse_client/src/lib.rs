//! The client side of Synapse's wire contract (`proto/synapse/v1`), with no
//! dependency on the BEAM: the generated types, worker addresses, calls to a
//! worker over gRPC or its local lane, and the classification of failures.
//!
//! The NIF (`synapse_native`) is built on it, and so are benchmarks that
//! call workers from plain Rust.

pub mod address;
pub mod error;
pub mod lane;
pub mod proto;
pub mod worker;

pub use address::{connect_lazy, Address, Tls};
pub use error::Error;
pub use worker::{Responses, Worker, WorkerOptions};
