//! The client side of Synapse's wire contract (`proto/synapse/v1`), with no
//! dependency on the BEAM: the generated types, worker addresses and
//! connections, and the classification of failures.
//!
//! The NIF (`synapse_native`) is built on it, and so are benchmarks that
//! call workers from plain Rust.

pub mod address;
pub mod error;
pub mod proto;
pub mod session;

pub use address::{agent_client, connect_lazy, Address, ConnectOptions, Tls};
pub use error::Error;
