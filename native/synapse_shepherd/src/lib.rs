//! `synapse-shepherd`: runs one Synapse worker process on behalf of the BEAM.
//!
//! The BEAM ignores SIGCHLD, so a worker it spawned directly would be reaped
//! by the kernel and its exit status lost; and a port program that dies must
//! not leave an orphaned Python interpreter behind. The shepherd sits between
//! the two: it is opened as an Erlang Port (`{:packet, 4}`), starts the
//! worker in its own process group, relays its output line by line, and
//! kills the whole group when told to or when the BEAM goes away. See
//! [`protocol`] for the frames exchanged.
//!
//! This library only exists so that the integration tests share the
//! protocol code with the binary; it is not a public API.

pub mod lines;
pub mod protocol;
pub mod spawn;
pub mod supervise;
