//! Failure injection for the test suite: proof that a panic in the NIF,
//! on a scheduler or on a tokio thread, becomes an error and never takes
//! the VM down.

use rustler::{Atom, Env, Term};

use crate::atoms;
use crate::call;
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
