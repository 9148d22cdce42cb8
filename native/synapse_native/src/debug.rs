//! Failure injection for the test suite: proof that a panic in the NIF,
//! on a scheduler or on a tokio thread, becomes an error and never takes
//! the VM down.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rustler::{Atom, Env, ResourceArc, Term};

use crate::atoms;
use crate::call::{self, CallHandle};
use crate::error::Error;
use crate::reply::{Reply, Style};
use crate::runtime::RUNTIME;

/// `where` is `:nif` (panic in the NIF itself: rustler raises
/// `ErlangError`) or `:reply` (panic while building a reply on a tokio
/// thread: the caller gets `{:synapse_reply, tag, {:error, %SynapseCore.Error{kind: :internal}}}`).
#[rustler::nif]
fn debug_panic<'a>(env: Env<'a>, place: Atom, tag: Term<'a>) -> Atom {
    if place == atoms::nif() {
        panic!("debug_panic in the NIF");
    }
    let handle = call::handle(env, &[env.pid()], 0);
    let reply = Reply::new(env.pid(), tag, Style::Unary);
    RUNTIME.spawn(async move {
        let _keep = handle;
        reply.send(Ok::<(), Error>(()), |_env, ()| -> Result<Term<'_>, Error> {
            panic!("debug_panic while building a reply")
        });
    });
    atoms::ok()
}

/// The moment between the NIF's send of a call's answer and its note that
/// it answered (`run_answered`), made `ms` long: the note is unset now and
/// set again `ms` later, as a sending thread preempted in between sets it.
#[rustler::nif]
fn debug_answered_later(handle: ResourceArc<CallHandle>, ms: u64) -> Atom {
    handle.answered.store(false, Ordering::Release);
    RUNTIME.spawn(async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        handle.answered.store(true, Ordering::Release);
    });
    atoms::ok()
}
