//! Answers to Erlang processes, sent from tokio threads.

use rustler::env::SavedTerm;
use rustler::{Encoder, Env, LocalPid, OwnedEnv, Term};

use crate::atoms;
use crate::error::{self, Error};

/// Where the one reply of a call goes: `{:synapse_reply, tag, payload}` to
/// `pid`, `tag` being the reference the caller made for this call.
pub struct Reply {
    env: OwnedEnv,
    pid: LocalPid,
    tag: SavedTerm,
}

impl Reply {
    /// Called in the NIF, on the caller's scheduler, to keep the tag.
    pub fn new(pid: LocalPid, tag: Term<'_>) -> Self {
        let env = OwnedEnv::new();
        let tag = env.save(tag);
        Self { env, pid, tag }
    }

    /// Sends `{:ok, value}` or `{:error, {kind, message, details}}`.
    ///
    /// Must run on a non-BEAM thread (a tokio worker). Building the value is
    /// guarded: if it panics, the caller still gets its one reply, an
    /// `:internal` error, instead of waiting forever.
    pub fn send<T, E>(mut self, result: Result<T, Error>, encode: E)
    where
        E: for<'a> FnOnce(Env<'a>, T) -> Result<Term<'a>, Error>,
    {
        let tag = &self.tag;
        let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.env.send_and_clear(&self.pid, |env| {
                let payload = match result {
                    Ok(value) => match encode(env, value) {
                        Ok(term) => (atoms::ok(), term).encode(env),
                        Err(e) => (atoms::error(), error::encode(env, &e)).encode(env),
                    },
                    Err(e) => (atoms::error(), error::encode(env, &e)).encode(env),
                };
                (atoms::synapse_reply(), tag.load(env), payload)
            })
        }));
        if built.is_err() {
            let failure = Error::Internal("building the reply panicked".into());
            let mut env = OwnedEnv::new();
            let _ = env.send_and_clear(&self.pid, |env| {
                (
                    atoms::synapse_reply(),
                    tag.load(env),
                    (atoms::error(), error::encode(env, &failure)).encode(env),
                )
            });
        }
        // A send to a process that has exited fails; nobody is waiting then.
    }
}
