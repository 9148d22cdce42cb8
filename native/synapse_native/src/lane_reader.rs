//! The BEAM's side of reading a lane (`SynapseCore.Channel.LaneReader`):
//! the connections of a local worker's unary calls are read by an Erlang
//! process through a Port on the pipe each comes on, so the schedulers
//! poll them as they poll any Port's, and each answer is built and sent to its caller
//! on the scheduler that read it: no thread of the NIF wakes between the
//! worker's answer and its caller.
//!
//! [`ProcessReader`] hands each new connection's [`Inbound`] to the
//! channel's reader process; the process gives what its Port reads to
//! [`lane_received`], reports the end of the stream with [`lane_ended`],
//! and lets go of the descriptor with [`lane_release`] once its Port is
//! closed (the Port never closes it: the descriptor must stay open for as
//! long as the VM polls it).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustler::{Atom, Binary, Encoder, Env, LocalPid, OwnedEnv, Resource, ResourceArc, Term};
use synapse_client::lane::{Inbound, Reader};

use crate::atoms;
use crate::reply;

/// How long one [`lane_received`] hands frames on before it lets its
/// process be scheduled out (it is then called again): half of a normal
/// scheduler's time slice.
const BUDGET: Duration = Duration::from_micros(500);

/// A connection's reading side, held by the reader process until it has
/// closed its Port.
pub struct InboundResource(Mutex<Option<Arc<Inbound>>>);

#[rustler::resource_impl]
impl Resource for InboundResource {}

impl InboundResource {
    fn get(&self) -> Option<Arc<Inbound>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Hands each new connection to the reader process `pid` as
/// `{:synapse_lane_inbound, inbound, fd}`.
pub struct ProcessReader {
    pub pid: LocalPid,
}

impl Reader for ProcessReader {
    fn adopt(&self, inbound: Arc<Inbound>) {
        // On a tokio thread (the connection's task), where OwnedEnv sends.
        let fd = inbound.fd();
        let resource = ResourceArc::new(InboundResource(Mutex::new(Some(inbound.clone()))));
        let sent = OwnedEnv::new().send_and_clear(&self.pid, |env| {
            (atoms::synapse_lane_inbound(), resource, fd).encode(env)
        });
        if sent.is_err() {
            inbound.ended("the lane's reader has exited".to_owned());
        }
    }
}

/// Hands the frames in `bytes` (what the Port read; empty to go on after
/// `:more`) to their calls: `:ok`, `:more` when the time budget ran out
/// with whole frames left, or `{:error, reason}` when the connection is
/// over (the worker broke the protocol, or the lane let go of it).
#[rustler::nif]
fn lane_received<'a>(
    env: Env<'a>,
    inbound: ResourceArc<InboundResource>,
    bytes: Binary<'a>,
) -> Term<'a> {
    let Some(inbound) = inbound.get() else {
        return (atoms::error(), "the connection was released").encode(env);
    };
    let started = Instant::now();
    let outcome = reply::from_process(env, || inbound.received(bytes.as_slice(), BUDGET));
    // A time slice is about a millisecond.
    let percent = started.elapsed().as_micros() / 10;
    rustler::schedule::consume_timeslice(env, i32::try_from(percent.clamp(1, 100)).unwrap_or(100));
    match outcome {
        Ok(false) => atoms::ok().encode(env),
        Ok(true) => atoms::more().encode(env),
        Err(reason) => (atoms::error(), reason).encode(env),
    }
}

/// The Port stopped reading, for `reason`: every call on the connection
/// fails, and the lane connects again for later ones.
#[rustler::nif]
fn lane_ended(env: Env<'_>, inbound: ResourceArc<InboundResource>, reason: String) -> Atom {
    if let Some(inbound) = inbound.get() {
        reply::from_process(env, || inbound.ended(reason));
    }
    atoms::ok()
}

/// Lets go of the connection's descriptor, once the Port reading it is
/// closed: it closes when the connection's task has let go of it too.
#[rustler::nif]
fn lane_release(inbound: ResourceArc<InboundResource>) -> Atom {
    inbound
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    atoms::ok()
}
