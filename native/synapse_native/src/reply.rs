//! Messages to Erlang processes, sent from tokio threads, or from the
//! scheduler of a process that answers calls ([`from_process`]).
//!
//! A call answers exactly once, with its [`Reply`]; a streaming call may
//! first send any number of events through its [`Events`].
//!
//! * unary calls: `{:synapse_reply, tag, {:ok, value} | {:error, %SynapseCore.Error{}}}`
//! * streams: `{:synapse_event, tag, event}` for each event, then
//!   `{:synapse_event, tag, {:result, value} | {:error, %SynapseCore.Error{}}}`
//! * runs with tools executed in Elixir: `{:synapse_tool_request, tag,
//!   request}` to the tool runner for each call, and `{:synapse_run_done,
//!   tag, {:ok, summary} | {:error, %SynapseCore.Error{}}}` as the call
//!   answers (the summary of its value: see [`Reply::with_runner`])
//! * runs with inline approvals: `{:synapse_approval_request, tag, request}`
//!   to the tool runner for each call that needs approval

use std::any::Any;
use std::cell::Cell;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rustler::sys::ErlNifEnv;
use rustler::{Atom, Encoder, Env, LocalPid, OwnedEnv, Term};

use crate::atoms;
use crate::error::{self, Error};

/// How the final answer is tagged.
#[derive(Clone, Copy)]
pub enum Style {
    Unary,
    Stream,
}

/// Where the one final answer of a call goes.
pub struct Reply {
    target: Target,
    style: Style,
    /// Told `{:synapse_run_done, tag, outcome}` as the call answers: the
    /// process that executes the run's tools, so it stops with the run
    /// (and reports it, for a receiver that Synapse does not see).
    runner: Option<(Target, Summary)>,
    /// Set once the answer is in its receiver's mailbox.
    answered: Option<Arc<AtomicBool>>,
}

/// What the runner is told of a call's value (a run's usage): the value is
/// the call's own, as [`Reply::send`] gets it.
pub type Summary = for<'a> fn(Env<'a>, &dyn Any) -> Term<'a>;

/// Where a run's tool requests go: `{:synapse_tool_request, tag, request}`.
pub struct Runner {
    target: Target,
}

/// Where the events of a stream go, ahead of its final answer.
pub struct Events {
    target: Target,
}

/// A receiver of a call's messages. Every target of a call shares one
/// scratch env (all of a call's messages are sent from its one task),
/// made when the first message is sent from a tokio thread (a call answered
/// from a process's scheduler needs none), and the tag travels as its
/// external term format, decoded into each message: at most one env per
/// call, however many messages it sends.
struct Target {
    env: Arc<Mutex<Option<OwnedEnv>>>,
    pid: LocalPid,
    tag: Arc<[u8]>,
}

impl Target {
    fn new(pid: LocalPid, tag: Term<'_>) -> Self {
        Self {
            env: Arc::new(Mutex::new(None)),
            pid,
            tag: tag.to_binary().as_slice().into(),
        }
    }

    /// The same call's messages, to another process.
    fn to(&self, pid: LocalPid) -> Self {
        Self {
            env: self.env.clone(),
            pid,
            tag: self.tag.clone(),
        }
    }

    /// Sends `{kind, tag, payload}`. Building the payload is guarded: if it
    /// panics, `fallback` is sent instead, so the receiver is never left
    /// waiting. Returns false when the receiver has exited.
    fn send<F>(
        &mut self,
        kind: Atom,
        build: F,
        fallback: impl for<'a> Fn(Env<'a>) -> Term<'a>,
    ) -> bool
    where
        F: for<'a> FnOnce(Env<'a>) -> Term<'a>,
    {
        let tag = &self.tag;
        let pid = self.pid;
        let raw = PROCESS_ENV.with(Cell::get);
        if !raw.is_null() {
            let marker = ();
            // SAFETY: `raw` is the env of the NIF running `from_process` on
            // this thread, valid until it returns, which it has not: this
            // runs within it.
            let env = unsafe { Env::new(&marker, raw) };
            let sent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                env.send(&pid, (kind, load_tag(env, tag), build(env)))
            }));
            return match sent {
                Ok(result) => result.is_ok(),
                Err(_) => env
                    .send(&pid, (kind, load_tag(env, tag), fallback(env)))
                    .is_ok(),
            };
        }
        let mut slot = self.env.lock().unwrap_or_else(PoisonError::into_inner);
        let env = slot.get_or_insert_with(OwnedEnv::new);
        let sent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            env.send_and_clear(&pid, |env| (kind, load_tag(env, tag), build(env)))
        }));
        match sent {
            Ok(result) => result.is_ok(),
            Err(_) => {
                // The scratch env may hold a half-built message: start afresh.
                *env = OwnedEnv::new();
                env.send_and_clear(&pid, |env| (kind, load_tag(env, tag), fallback(env)))
                    .is_ok()
            }
        }
    }
}

thread_local! {
    /// The env of the process whose NIF runs [`from_process`] on this
    /// thread (a scheduler), or null.
    static PROCESS_ENV: Cell<*mut ErlNifEnv> = const { Cell::new(ptr::null_mut()) };
}

/// Runs `f`, in a NIF called by a process that answers calls (the lane's
/// reader), so that the messages `f` sends are built in that process's env
/// and sent from it: on a scheduler, where an `OwnedEnv` cannot send.
pub fn from_process<R>(env: Env<'_>, f: impl FnOnce() -> R) -> R {
    struct Restore(*mut ErlNifEnv);
    impl Drop for Restore {
        fn drop(&mut self) {
            PROCESS_ENV.with(|current| current.set(self.0));
        }
    }
    let _restore = Restore(PROCESS_ENV.with(|current| current.replace(env.as_c_arg())));
    f()
}

fn load_tag<'a>(env: Env<'a>, tag: &[u8]) -> Term<'a> {
    env.binary_to_term(tag)
        .map(|(term, _)| term)
        // The bytes come from term_to_binary in this very call.
        .unwrap_or_else(|| atoms::nil().encode(env))
}

fn panicked<'a>(env: Env<'a>) -> Term<'a> {
    let failure = Error::Internal("building the message panicked".into());
    (atoms::error(), error::encode(env, &failure)).encode(env)
}

impl Reply {
    /// Called in the NIF, on the caller's scheduler, to keep the tag.
    pub fn new(pid: LocalPid, tag: Term<'_>, style: Style) -> Self {
        Self {
            target: Target::new(pid, tag),
            style,
            runner: None,
            answered: None,
        }
    }

    /// Also sets `answered` once the answer is sent (in its receiver's
    /// mailbox: a local process's, where a send lands at once).
    pub fn noting(mut self, answered: &Arc<AtomicBool>) -> Self {
        self.answered = Some(answered.clone());
        self
    }

    /// Also tells `runner` when the call is over, with `summary` of its
    /// value; returns the sender of its tool requests.
    pub fn with_runner(&mut self, runner: LocalPid, summary: Summary) -> Runner {
        self.runner = Some((self.target.to(runner), summary));
        Runner {
            target: self.target.to(runner),
        }
    }

    /// The matching event sender, for streams.
    pub fn events(&self) -> Events {
        Events {
            target: self.target.to(self.target.pid),
        }
    }

    /// Sends the final answer. Must run on a non-BEAM thread (a tokio
    /// worker), where `OwnedEnv` sends, or within [`from_process`].
    pub fn send<T: 'static, E>(mut self, result: Result<T, Error>, encode: E)
    where
        E: for<'a> FnOnce(Env<'a>, T) -> Result<Term<'a>, Error>,
    {
        // The runner first: the answer takes the value.
        if let Some((mut runner, summary)) = self.runner.take() {
            runner.send(
                atoms::synapse_run_done(),
                |env| match &result {
                    Ok(value) => (atoms::ok(), summary(env, value)).encode(env),
                    Err(e) => (atoms::error(), error::encode(env, e)).encode(env),
                },
                panicked,
            );
        }
        let (kind, ok) = match self.style {
            Style::Unary => (atoms::synapse_reply(), atoms::ok()),
            Style::Stream => (atoms::synapse_event(), atoms::result()),
        };
        self.target.send(
            kind,
            |env| match result.and_then(|value| encode(env, value)) {
                Ok(term) => (ok, term).encode(env),
                Err(e) => (atoms::error(), error::encode(env, &e)).encode(env),
            },
            panicked,
        );
        // After the send, never before: a cancel that reads `answered`
        // then finds the answer in the mailbox (it may not yet see the note
        // when the receiver already holds the answer, for a moment).
        if let Some(answered) = &self.answered {
            answered.store(true, Ordering::Release);
        }
    }
}

impl Runner {
    /// Sends `{:synapse_tool_request, tag, request}`; false when the runner
    /// has exited.
    pub fn send<F>(&mut self, build: F) -> bool
    where
        F: for<'a> FnOnce(Env<'a>) -> Term<'a>,
    {
        self.target
            .send(atoms::synapse_tool_request(), build, panicked)
    }

    /// Sends `{:synapse_approval_request, tag, request}`; false when the
    /// runner has exited.
    pub fn send_approval<F>(&mut self, build: F) -> bool
    where
        F: for<'a> FnOnce(Env<'a>) -> Term<'a>,
    {
        self.target
            .send(atoms::synapse_approval_request(), build, panicked)
    }
}

impl Events {
    /// Sends `{:synapse_event, tag, event}`; false when the receiver has exited.
    pub fn send<F>(&mut self, build: F) -> bool
    where
        F: for<'a> FnOnce(Env<'a>) -> Term<'a>,
    {
        self.target.send(atoms::synapse_event(), build, panicked)
    }
}
