//! Synapse's NIF: the hot path between the BEAM and Python agent workers.
//!
//! Every NIF here returns at once. Work that waits (calls to a worker, over
//! its lane or gRPC) runs on one shared tokio runtime and answers the
//! calling Erlang process by message, so no BEAM scheduler ever blocks on
//! the network; the answers of unary calls on a lane are read by an Erlang
//! process instead, through a Port (`lane_reader`). See
//! `SynapseCore.Native` for the Elixir side of each function.

mod agent;
mod approval;
mod atoms;
mod bridge;
mod call;
mod channel;
#[cfg(feature = "test-nifs")]
mod debug;
mod error;
mod event;
mod json;
mod json_nifs;
mod lane_reader;
mod messages;
mod probe;
mod prompt;
mod reply;
mod run;
mod runtime;
mod shepherd;
mod terms;

rustler::init!("Elixir.SynapseCore.Native");
