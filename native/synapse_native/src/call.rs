//! What every call to a worker has in common: its deadline, its cancel
//! token, the channel it runs on, and exactly one reply; and the two shapes
//! most calls take ([`unary`], [`server_stream`]), set up once.

use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use prost::bytes::Bytes;
use rustler::{Atom, Encoder, Env, LocalPid, Monitor, NifResult, Resource, ResourceArc, Term};
use synapse_client::error::{is_transport_failure, tls_failure};
use synapse_client::lane::{self, Answerer, Lane, Outcome, Ticket};
use synapse_client::proto::{run_input, Cancel, RunInput};
use synapse_client::worker::Requests;
use synapse_client::Error;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::atoms;
use crate::channel::ChannelResource;
use crate::error::NifError;
use crate::reply::{Reply, Style};
use crate::runtime::RUNTIME;

/// How long a call that lost its connection waits to learn whether the
/// worker exited (the shepherd reports it within milliseconds) before
/// calling it plain unavailability.
const EXIT_CONFIRMATION: Duration = Duration::from_secs(2);

/// The largest response a unary call on the lane turns into a term on the
/// lane's reader (the scheduler of `SynapseCore.Channel.LaneReader`, see
/// [`crate::lane_reader`], or a tokio thread): larger ones are converted in
/// a task of their own, so that one large answer neither holds a scheduler
/// long nor holds back the other calls on the connection.
const INLINE_ANSWER_BYTES: usize = 16 * 1024;

/// How long a run asked to stop (`CallHandle::stop`) has to answer with
/// what it did before it is cancelled outright.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// What a NIF that starts a call answers: the call's handle, or an error
/// that stopped it before it was sent.
pub type Started = NifResult<Result<ResourceArc<CallHandle>, NifError>>;

/// The handle of one in-flight call, held by the caller. The call is
/// cancelled when the handle is cancelled and when a process it monitors
/// (the caller, a stream's receiver, a run's tool runner) exits; never
/// because the caller dropped it: the call's own task holds the handle
/// until the call answers (see [`spawn`]), so garbage collection neither
/// cancels the call nor removes the monitors that end it.
pub struct CallHandle {
    cancel: CancellationToken,
    /// Asked to stop: the call waits a moment for the worker's answer.
    stop: CancellationToken,
    /// Events a stream may still send before the receiver acknowledges
    /// some: see `run_ack`.
    pub credit: Arc<Semaphore>,
    /// How often, and how long, the stream waited for credit.
    pub waits: Arc<Waits>,
    /// The request side of a streaming run, for tool results (serialized
    /// `RunInput`s); set as the run starts (see [`CallHandle::set_inputs`]).
    /// Asserted unwind safe, as a NIF's resource must be: over gRPC it is a
    /// `futures_channel` sender, whose queue no panic can leave half
    /// written, but which does not say so.
    inputs: OnceLock<AssertUnwindSafe<Requests>>,
    /// The largest message the call may send.
    pub max_message_bytes: usize,
    /// A unary call on the lane, which no task of its own waits for: its
    /// cancel goes to the lane.
    lane: OnceLock<Ticket>,
    /// Set once the call's final answer was sent (see [`Reply::noting`]):
    /// a cancel then has nothing to wait for.
    pub answered: Arc<AtomicBool>,
}

#[rustler::resource_impl]
impl Resource for CallHandle {
    const IMPLEMENTS_DOWN: bool = true;

    fn down<'a>(&'a self, _env: Env<'a>, _pid: LocalPid, _monitor: Monitor) {
        self.cancel();
    }
}

impl Drop for CallHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl CallHandle {
    /// Sends `input` to a run on the `Run` stream: false when the call has
    /// no input (not a stream) or is over (then nobody waits for it).
    pub fn send_input(&self, input: run_input::Input) -> bool {
        self.inputs.get().is_some_and(|inputs| {
            inputs.send(prost::Message::encode_to_vec(&RunInput {
                input: Some(input),
            }))
        })
    }

    /// Gives a streaming run its request side: what [`send_input`] sends
    /// on. Set once, by the NIF that starts the run, before the caller has
    /// the handle.
    ///
    /// [`send_input`]: CallHandle::send_input
    pub fn set_inputs(&self, inputs: Requests) {
        let _ = self.inputs.set(AssertUnwindSafe(inputs));
    }

    pub fn cancel(&self) {
        self.cancel.cancel();
        if let Some(ticket) = self.lane.get() {
            ticket.cancel();
        }
    }

    /// Cancelled once the call is asked to stop (see [`CallHandle::stop`]).
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Asks the call to stop. A run on the `Run` stream is sent a `cancel`
    /// and answers, within [`STOP_GRACE`], with what it did (a `cancelled`
    /// failure carrying its messages and usage) or its result if it
    /// finished first; any other call is cancelled at once.
    pub fn stop(&self) {
        if self.send_input(run_input::Input::Cancel(Cancel {})) {
            self.stop.cancel();
            // A run handled on the lane has no task to keep the grace.
            if let Some(ticket) = self.lane.get().cloned() {
                RUNTIME.spawn(async move {
                    tokio::time::sleep(STOP_GRACE).await;
                    ticket.cancel();
                });
            }
        } else {
            self.cancel();
        }
    }
}

/// A call's deadline as given from Elixir: milliseconds or `:infinity`.
pub fn decode_timeout(term: Term<'_>) -> NifResult<Option<Duration>> {
    if let Ok(atom) = term.decode::<Atom>() {
        if atom == atoms::infinity() {
            return Ok(None);
        }
    }
    let ms: u64 = term.decode()?;
    Ok(Some(Duration::from_millis(ms)))
}

/// How many events a stream may send ahead of its receiver's
/// acknowledgements, as given from Elixir: a count or `:infinity`.
pub fn decode_window(term: Term<'_>) -> NifResult<usize> {
    if let Ok(atom) = term.decode::<Atom>() {
        if atom == atoms::infinity() {
            return Ok(usize::MAX);
        }
    }
    term.decode()
}

/// The back-pressure a stream met: how many times it had no credit left,
/// and how long it waited for its receiver's acknowledgements in all.
#[derive(Default)]
pub struct Waits {
    count: AtomicU64,
    nanoseconds: AtomicU64,
}

impl Waits {
    /// `(count, nanoseconds)` so far.
    pub fn get(&self) -> (u64, u64) {
        (
            self.count.load(Ordering::Relaxed),
            self.nanoseconds.load(Ordering::Relaxed),
        )
    }

    fn add(&self, waited: Duration) {
        let nanoseconds = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.nanoseconds.fetch_add(nanoseconds, Ordering::Relaxed);
    }
}

/// Waits until the receiver has room for one more event; `run_ack` gives
/// the credit back. A wait is counted in `waits`.
pub async fn take_credit(credit: &Semaphore, waits: &Waits) -> Result<(), CallError> {
    if let Ok(permit) = credit.try_acquire() {
        permit.forget();
        return Ok(());
    }
    let since = Instant::now();
    credit
        .acquire()
        .await
        .map_err(|_| Error::Internal("the credit semaphore was closed".into()))?
        .forget();
    waits.add(since.elapsed());
    Ok(())
}

/// `message` if it fits in `max_message_bytes` once encoded.
pub fn fits<M: prost::Message>(message: M, max_message_bytes: usize) -> Result<M, Error> {
    within(message.encoded_len(), max_message_bytes).map(|()| message)
}

/// `input` if the `RunInput` carrying it on a run's stream (that one field,
/// and so as long as it) fits in `max_message_bytes`.
pub fn fits_input(
    input: run_input::Input,
    max_message_bytes: usize,
) -> Result<run_input::Input, Error> {
    within(input.encoded_len(), max_message_bytes).map(|()| input)
}

fn within(size: usize, max_message_bytes: usize) -> Result<(), Error> {
    if size > max_message_bytes {
        Err(Error::LimitExceeded(format!(
            "the request is {size} bytes, over the maximum message size of \
             {max_message_bytes} bytes (the :max_message_bytes option)"
        )))
    } else {
        Ok(())
    }
}

/// A new handle whose call is cancelled if any of `owners` exits.
pub fn handle(env: Env<'_>, owners: &[LocalPid], credit: usize) -> ResourceArc<CallHandle> {
    with_limit(env, owners, credit, usize::MAX)
}

/// The most credit a stream holds (`window: :infinity`): half the
/// semaphore's maximum, so that a permit handed back while an ack adds
/// more never overflows it (tokio panics past its maximum).
pub const MAX_CREDIT: usize = Semaphore::MAX_PERMITS / 2;

/// [`handle`] for a call that sends more messages after its start (tool
/// results), each at most `max_message_bytes`.
pub fn with_limit(
    env: Env<'_>,
    owners: &[LocalPid],
    credit: usize,
    max_message_bytes: usize,
) -> ResourceArc<CallHandle> {
    let handle = ResourceArc::new(CallHandle {
        cancel: CancellationToken::new(),
        stop: CancellationToken::new(),
        credit: Arc::new(Semaphore::new(credit.min(MAX_CREDIT))),
        waits: Arc::default(),
        inputs: OnceLock::new(),
        max_message_bytes,
        lane: OnceLock::new(),
        answered: Arc::default(),
    });
    for owner in owners {
        // A process that is already gone fails the monitor; its call is
        // pointless, so cancel it right away.
        if env.monitor(&handle, owner).is_none() {
            handle.cancel();
        }
    }
    handle
}

/// Counts a call in its channel's in-flight calls for as long as it lives,
/// whichever way the call ends.
struct InFlight(ResourceArc<ChannelResource>);

impl InFlight {
    fn enter(channel: ResourceArc<ChannelResource>) -> Self {
        channel.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(channel)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why an RPC future failed: a status from gRPC (classified in [`run`]),
/// or an error already classified (e.g. a stream that broke the protocol).
pub enum CallError {
    Status(Status),
    Other(Error),
}

impl From<Status> for CallError {
    fn from(status: Status) -> Self {
        Self::Status(status)
    }
}

impl From<Error> for CallError {
    fn from(error: Error) -> Self {
        Self::Other(error)
    }
}

/// Starts a call of `method` with one answer, sent to the calling process
/// as `{:synapse_reply, tag, {:ok, term} | {:error, %SynapseCore.Error{}}}`:
/// `decode` reads the response and `encode` turns it into `term`, off the
/// caller's process. `timeout` is the call's, as [`decode_timeout`] reads it.
///
/// On the lane, the request is written here, on the connection of the
/// calls `answerer` answers in the worker, and the lane's reader answers
/// the caller ([`LaneAnswer`]): no task is spawned, nor woken, per call.
/// The reader is the channel's reader process, when it has one: then
/// `decode` and `encode` run on its scheduler, for answers of at most
/// [`INLINE_ANSWER_BYTES`]. Over gRPC the call runs in a task ([`spawn`]),
/// and `answerer` means nothing.
#[allow(clippy::too_many_arguments)]
pub fn unary<T, D, E>(
    env: Env<'_>,
    channel: ResourceArc<ChannelResource>,
    tag: Term<'_>,
    timeout: Option<Duration>,
    method: String,
    request: Vec<u8>,
    answerer: Answerer,
    decode: D,
    encode: E,
) -> Started
where
    T: Send + 'static,
    D: FnOnce(Bytes) -> Result<T, Error> + Send + 'static,
    E: for<'a> FnOnce(Env<'a>, T) -> Result<Term<'a>, Error> + Send + 'static,
{
    let caller = env.pid();
    let handle = self::handle(env, &[caller], 0);
    let reply = Reply::new(caller, tag, Style::Unary).noting(&handle.answered);
    if let Some(lane) = channel.worker.lane() {
        on_lane(
            channel.clone(),
            lane,
            &handle,
            reply,
            timeout,
            (method, request),
            answerer,
            decode,
            encode,
        );
    } else {
        let target = channel.clone();
        spawn(
            channel,
            &handle,
            reply,
            timeout,
            move |deadline| {
                let response = target.worker.unary(&method, request, deadline);
                async move { Ok(decode(response.await?)?) }
            },
            encode,
        );
    }
    Ok(Ok(handle))
}

/// [`unary`] for a method whose request and response are the messages
/// `request` and `R`.
pub fn unary_method<R, E>(
    env: Env<'_>,
    channel: ResourceArc<ChannelResource>,
    tag: Term<'_>,
    timeout: Term<'_>,
    method: &'static str,
    request: impl prost::Message + 'static,
    encode: E,
) -> Started
where
    R: prost::Message + Default + Send + 'static,
    E: for<'a> FnOnce(Env<'a>, R) -> Result<Term<'a>, Error> + Send + 'static,
{
    unary(
        env,
        channel,
        tag,
        decode_timeout(timeout)?,
        method.to_owned(),
        request.encode_to_vec(),
        Answerer::Loop,
        decode::<R>,
        encode,
    )
}

/// A unary call on the lane: sent now, on the connection of the calls
/// `answerer` answers, answered by the lane.
#[allow(clippy::too_many_arguments)]
fn on_lane<T, D, E>(
    channel: ResourceArc<ChannelResource>,
    lane: &Lane,
    handle: &ResourceArc<CallHandle>,
    reply: Reply,
    timeout: Option<Duration>,
    (method, request): (String, Vec<u8>),
    answerer: Answerer,
    decode: D,
    encode: E,
) where
    T: Send + 'static,
    D: FnOnce(Bytes) -> Result<T, Error> + Send + 'static,
    E: for<'a> FnOnce(Env<'a>, T) -> Result<Term<'a>, Error> + Send + 'static,
{
    let Some(finish) = Finish::open(&channel, handle, reply, encode) else {
        return;
    };
    // The lane connects on first use, within the runtime.
    let _runtime = RUNTIME.enter();
    match lane.call(
        &method,
        request,
        timeout,
        answerer,
        Box::new(LaneAnswer { decode, finish }),
    ) {
        // Set before the handle reaches the caller, who alone can cancel it.
        Ok(ticket) => {
            let _ = handle.lane.set(ticket);
        }
        // The connection broke: answered from a task, as this is a scheduler.
        Err((status, answer)) => {
            RUNTIME.spawn(async move { answer.answer(Outcome::Failed(status)) });
        }
    }
}

/// What answers the caller of a unary call on the lane ([`on_lane`]).
struct LaneAnswer<T, D, E> {
    decode: D,
    finish: Finish<T, E>,
}

/// The reply of a unary call on the lane, and what it holds until then.
struct Finish<T, E> {
    channel: ResourceArc<ChannelResource>,
    handle: ResourceArc<CallHandle>,
    reply: Reply,
    encode: E,
    in_flight: InFlight,
    value: PhantomData<fn() -> T>,
}

impl<T, E> Finish<T, E>
where
    T: Send + 'static,
    E: for<'a> FnOnce(Env<'a>, T) -> Result<Term<'a>, Error> + Send + 'static,
{
    /// What a call on the lane holds until it answers, counted in flight;
    /// `None` when the worker is known to have exited (the caller is then
    /// answered so, from a task).
    fn open(
        channel: &ResourceArc<ChannelResource>,
        handle: &ResourceArc<CallHandle>,
        reply: Reply,
        encode: E,
    ) -> Option<Self> {
        let finish = Self {
            in_flight: InFlight::enter(channel.clone()),
            channel: channel.clone(),
            // Kept until the call answers, as in `spawn`.
            handle: handle.clone(),
            reply,
            encode,
            value: PhantomData,
        };
        if channel.closed.is_cancelled() {
            finish.later(Err(Error::WorkerExited));
            return None;
        }
        Some(finish)
    }

    /// Answers now: on a runtime thread, or within
    /// [`crate::reply::from_process`] (see [`Reply::send`]).
    fn now(self, result: Result<T, Error>) {
        let Self {
            reply,
            encode,
            in_flight,
            handle,
            ..
        } = self;
        drop(in_flight);
        reply.send(result, encode);
        drop(handle);
    }

    /// Answers from a task: for a caller that may be a scheduler.
    fn later(self, result: Result<T, Error>) {
        RUNTIME.spawn(async move { self.now(result) });
    }

    /// Answers as a call on the lane that `outcome` ended without its
    /// value (see [`lane::Answer`] for which thread that is).
    fn ended(self, outcome: Outcome) {
        match outcome {
            Outcome::Response(_) | Outcome::Finished => self.now(Err(Error::Protocol(
                "the worker ended the call without its answer".into(),
            ))),
            Outcome::Failed(status) if !is_transport_failure(&status) => {
                self.now(Err(Error::from_status(&status)));
            }
            Outcome::Failed(status) => {
                RUNTIME.spawn(async move {
                    let cancel = self.handle.cancel.clone();
                    let error = confirm_exit(&self.channel, &cancel, &status).await;
                    self.now(Err(error));
                });
            }
            Outcome::Expired => self.now(Err(Error::Timeout)),
            // From the caller's side, which may be a scheduler.
            Outcome::Cancelled => self.later(Err(Error::Cancelled)),
            Outcome::Abandoned => self.later(Err(Error::WorkerExited)),
        }
    }
}

impl<T, D, E> lane::Answer for LaneAnswer<T, D, E>
where
    T: Send + 'static,
    D: FnOnce(Bytes) -> Result<T, Error> + Send + 'static,
    E: for<'a> FnOnce(Env<'a>, T) -> Result<Term<'a>, Error> + Send + 'static,
{
    fn answer(self: Box<Self>, outcome: Outcome) {
        let LaneAnswer { decode, finish } = *self;
        match outcome {
            // From the lane's reader (a process's NIF, or a task) or its
            // deadline timer's task.
            Outcome::Response(bytes) if bytes.len() <= INLINE_ANSWER_BYTES => {
                finish.now(decode(bytes));
            }
            Outcome::Response(bytes) => {
                RUNTIME.spawn(async move { finish.now(decode(bytes)) });
            }
            other => finish.ended(other),
        }
    }
}

/// What a call made with [`stream_on_lane`] makes of each response, on
/// the lane's reader.
pub trait Consume<T>: Send + 'static {
    /// Takes the next response: `Some` with the call's value or failure
    /// when it was the call's last. `requests` sends the call more
    /// requests.
    fn response(&mut self, response: Bytes, requests: &Requests) -> Option<Result<T, Error>>;
}

/// Starts a call of `method` whose requests and responses stream on the
/// lane, with `first` as its first request, answered once like a unary
/// call ([`unary`]: `reply`, `encode`): each response goes to `consume` on
/// the lane's reader as it is read (the scheduler of the channel's reader
/// process, when it has one), until one is the last. No task runs the
/// call, and none wakes for its responses: its deadline is the
/// connection's, a cancel withdraws it ([`CallHandle::cancel`]), and the
/// grace of a stop is a timer of its own ([`CallHandle::stop`]). Returns
/// the call's requests, for the handle's inputs; `None` when the call
/// could not be sent (then `reply` has its failure).
#[allow(clippy::too_many_arguments)]
pub fn stream_on_lane<T, C, E>(
    channel: ResourceArc<ChannelResource>,
    lane: &Lane,
    handle: &ResourceArc<CallHandle>,
    reply: Reply,
    timeout: Option<Duration>,
    (method, first): (&str, Vec<u8>),
    consume: C,
    encode: E,
) -> Option<Requests>
where
    T: Send + 'static,
    C: Consume<T>,
    E: for<'a> FnOnce(Env<'a>, T) -> Result<Term<'a>, Error> + Send + 'static,
{
    let finish = Finish::open(&channel, handle, reply, encode)?;
    let state = Arc::new(Mutex::new(Handled {
        call: Some(HandledCall {
            consume,
            finish,
            requests: Requests::Refused,
            ticket: None,
        }),
        backlog: None,
        ended: None,
    }));
    let handler = Arc::new(StreamOnLane(state.clone()));
    // Held while the call is sent: its first response, which the reader
    // may read at once, waits for the call's requests and ticket.
    let mut sending = lock(&state);
    let _runtime = RUNTIME.enter();
    match lane.handled(method, first, timeout, handler) {
        Ok((requests, ticket, held)) => {
            let _ = handle.lane.set(ticket.clone());
            if let Some(call) = &mut sending.call {
                call.ticket = Some(ticket);
                call.requests = Requests::Lane(requests.clone());
            }
            // The connection last, after the call's lock: closed meanwhile,
            // its drop ends this call too, which takes that lock.
            drop(sending);
            drop(held);
            // An owner that exited while the call was being sent (a runner
            // killed) cancelled its token only: the call had no ticket yet.
            if handle.cancel.is_cancelled() {
                handle.cancel();
            }
            Some(Requests::Lane(requests))
        }
        // The connection broke: answered from a task, as this is a scheduler.
        Err(status) => {
            if let Some(call) = sending.call.take() {
                RUNTIME.spawn(async move { call.finish.ended(Outcome::Failed(status)) });
            }
            None
        }
    }
}

/// A call of [`stream_on_lane`], as the lane's [`lane::Handler`].
struct StreamOnLane<T, C, E>(Arc<Mutex<Handled<T, C, E>>>);

struct Handled<T, C, E> {
    /// Until the call has answered, or its responses were handed to a task.
    call: Option<HandledCall<T, C, E>>,
    /// Set once a response was too large to be consumed on the reader
    /// ([`INLINE_ANSWER_BYTES`]): that response, and every step after it,
    /// goes to the task that took the call over, in order. The task holds
    /// no lock of the reader's while it decodes and answers.
    backlog: Option<tokio::sync::mpsc::UnboundedSender<Step>>,
    /// How the call ended while the reader was consuming a response
    /// outside the lock: the call is answered so once that is done.
    ended: Option<Outcome>,
}

/// What answers a call of [`stream_on_lane`], and what it needs until then.
struct HandledCall<T, C, E> {
    consume: C,
    finish: Finish<T, E>,
    /// The call's requests, for `consume`.
    requests: Requests,
    /// To withdraw the call when a response ended it before its status.
    ticket: Option<Ticket>,
}

enum Step {
    Response(Bytes),
    End(Outcome),
}

fn lock<T>(state: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<T, C, E> HandledCall<T, C, E>
where
    T: Send + 'static,
    C: Consume<T>,
    E: for<'a> FnOnce(Env<'a>, T) -> Result<Term<'a>, Error> + Send + 'static,
{
    /// Consumes a response: the call back while it waits for more.
    fn take(mut self, response: Bytes) -> Option<Self> {
        let Some(result) = self.consume.response(response, &self.requests) else {
            return Some(self);
        };
        let failed = result.is_err();
        self.finish.now(result);
        // The worker's run may go on after a response that failed the call.
        if let (true, Some(ticket)) = (failed, self.ticket) {
            ticket.cancel();
        }
        None
    }
}

impl<T, C, E> lane::Handler for StreamOnLane<T, C, E>
where
    T: Send + 'static,
    C: Consume<T>,
    E: for<'a> FnOnce(Env<'a>, T) -> Result<Term<'a>, Error> + Send + 'static,
{
    fn message(&self, message: Bytes) {
        let call = {
            let mut state = lock(&self.0);
            if let Some(backlog) = &state.backlog {
                let _ = backlog.send(Step::Response(message));
                return;
            }
            let Some(call) = state.call.take() else {
                return;
            };
            if message.len() > INLINE_ANSWER_BYTES {
                let (backlog, steps) = tokio::sync::mpsc::unbounded_channel();
                let _ = backlog.send(Step::Response(message));
                state.backlog = Some(backlog);
                RUNTIME.spawn(consume_backlog(call, steps));
                return;
            }
            // Consumed outside the lock, so that a cancel from another
            // thread never waits for it (see `ended`); the reader's next
            // response comes on this same thread, after it.
            drop(state);
            call.take(message)
        };
        if let Some(call) = call {
            let mut state = lock(&self.0);
            match state.ended.take() {
                None => state.call = Some(call),
                // Ended meanwhile (a cancel, the deadline, from another
                // thread): answered that way now.
                Some(outcome) => {
                    drop(state);
                    call.finish.ended(outcome);
                }
            }
        }
    }

    fn end(&self, outcome: Outcome) {
        let call = {
            let mut state = lock(&self.0);
            if let Some(backlog) = &state.backlog {
                // After the responses before it.
                let _ = backlog.send(Step::End(outcome));
                return;
            }
            match state.call.take() {
                Some(call) => call,
                // Being consumed by the reader (or already answered).
                None => {
                    state.ended = Some(outcome);
                    return;
                }
            }
        };
        call.finish.ended(outcome);
    }
}

/// Consumes the responses of a call of [`stream_on_lane`] handed to a task,
/// in order, until the call has answered.
async fn consume_backlog<T, C, E>(
    call: HandledCall<T, C, E>,
    mut steps: tokio::sync::mpsc::UnboundedReceiver<Step>,
) where
    T: Send + 'static,
    C: Consume<T>,
    E: for<'a> FnOnce(Env<'a>, T) -> Result<Term<'a>, Error> + Send + 'static,
{
    let mut call = Some(call);
    while let Some(step) = steps.recv().await {
        let Some(waiting) = call.take() else {
            return;
        };
        match step {
            Step::Response(response) => call = waiting.take(response),
            Step::End(outcome) => waiting.finish.ended(outcome),
        }
        if call.is_none() {
            return;
        }
    }
}

/// A method with one request and streamed responses, and how each
/// response becomes a term.
pub struct ServerStream<R, D, T> {
    /// The method's path.
    pub method: String,
    /// Serializes the request (on the tokio thread).
    pub request: R,
    /// Reads a response.
    pub decode: D,
    /// A response's term.
    pub to_term: T,
}

/// Starts a [`ServerStream`] call. The calling process gets
/// `{:synapse_event, tag, {:message, term}}` for each response, at most
/// `window` ahead of its acknowledgements (`run_ack`), then
/// `{:synapse_event, tag, {:result, nil} | {:error, %SynapseCore.Error{}}}`.
pub fn server_stream<R, M, D, T>(
    env: Env<'_>,
    channel: ResourceArc<ChannelResource>,
    tag: Term<'_>,
    (timeout, window): (Term<'_>, Term<'_>),
    call: ServerStream<R, D, T>,
) -> Started
where
    R: FnOnce() -> Vec<u8> + Send + 'static,
    M: Send + 'static,
    D: Fn(Bytes) -> Result<M, Error> + Send + 'static,
    T: for<'a> Fn(Env<'a>, &M) -> Term<'a> + Send + 'static,
{
    let timeout = decode_timeout(timeout)?;
    let caller = env.pid();
    let handle = self::handle(env, &[caller], decode_window(window)?);
    let reply = Reply::new(caller, tag, Style::Stream).noting(&handle.answered);
    let mut events = reply.events();
    let credit = handle.credit.clone();
    let waits = handle.waits.clone();
    let target = channel.clone();
    let ServerStream {
        method,
        request,
        decode,
        to_term,
    } = call;
    spawn(
        channel,
        &handle,
        reply,
        timeout,
        move |deadline| async move {
            let mut responses = target
                .worker
                .server_streaming(&method, request(), deadline)
                .await?;
            loop {
                take_credit(&credit, &waits).await?;
                match responses.message().await? {
                    Some(response) => {
                        let message = decode(response)?;
                        events.send(|env| (atoms::message(), to_term(env, &message)).encode(env));
                    }
                    None => return Ok::<(), CallError>(()),
                }
            }
        },
        |env, ()| Ok(atoms::nil().encode(env)),
    );
    Ok(Ok(handle))
}

/// A worker's response, as the message it must be.
pub fn decode<R: prost::Message + Default>(bytes: Bytes) -> Result<R, Error> {
    R::decode(bytes)
        .map_err(|e| Error::Protocol(format!("the worker sent a malformed message: {e}")))
}

/// Makes the call with `rpc` and answers `reply` once, whatever happens:
/// the worker's answer, the deadline, a cancel, the worker exiting, or a
/// panic. `rpc` gets the deadline to put on the request (so the worker sees
/// the same one) and `encode` turns the answer into a term on the tokio
/// thread, off the schedulers.
pub fn spawn<T, Fut, E>(
    channel: ResourceArc<ChannelResource>,
    handle: &ResourceArc<CallHandle>,
    reply: Reply,
    timeout: Option<Duration>,
    rpc: impl FnOnce(Option<Duration>) -> Fut + Send + 'static,
    encode: E,
) where
    T: Send + 'static,
    Fut: Future<Output = Result<T, CallError>> + Send + 'static,
    E: for<'a> FnOnce(Env<'a>, T) -> Result<Term<'a>, Error> + Send + 'static,
{
    let cancel = handle.cancel.clone();
    let stop = handle.stop.clone();
    let in_flight = InFlight::enter(channel.clone());
    // Kept until the call answers: a caller that keeps only the call's tag
    // (a receiver of `{:synapse_event, tag, _}`) must not lose the call to
    // garbage collection, nor the monitors on its owners with it.
    let held = handle.clone();
    // `rpc` runs here, on the caller's thread, so that a call that can be
    // sent at once (a unary call on the lane) is on its way before any
    // task is scheduled; the rest (waiting, deadline, cancel) runs on the
    // runtime. The task lives as long as the call, so it is kept small:
    // the call's future is boxed (held by value, each layer that moves it
    // along kept a copy of it: a streamed run's task was 7.1 KB), and
    // `run` and `wait` hold no room for the call's result across their
    // waits (0.9 KB, and a streamed run's box 0.6 KB; `-Zprint-type-sizes`).
    let started = if channel.closed.is_cancelled() {
        Err(Error::WorkerExited)
    } else {
        let _runtime = RUNTIME.enter();
        std::panic::catch_unwind(AssertUnwindSafe(|| Box::pin(rpc(timeout))))
            .map_err(|_| Error::Internal("starting the call panicked".into()))
    };
    RUNTIME.spawn(async move {
        let outcome = match started {
            Ok(call) => run(&channel, &cancel, &stop, timeout, call).await,
            Err(error) => Err(error),
        };
        drop(in_flight);
        reply.send(outcome, encode);
        drop(held);
    });
}

/// The call's outcome, its deadline, cancel and stop applied. Only a
/// [`Status`] lives on after the call's own future is done (the task holds
/// this future for the whole call, sized by its largest state).
async fn run<T, Fut>(
    channel: &ChannelResource,
    cancel: &CancellationToken,
    stop: &CancellationToken,
    timeout: Option<Duration>,
    call: Fut,
) -> Result<T, Error>
where
    Fut: Future<Output = Result<T, CallError>>,
{
    let status = match wait(channel, cancel, stop, timeout, call).await {
        Ok(outcome) => return outcome,
        Err(status) => status,
    };
    if !is_transport_failure(&status) {
        return Err(Error::from_status(&status));
    }
    // The handshake refused the worker: not a worker that exited.
    if let Some(error) = tls_failure(&status, &channel.address) {
        return Err(error);
    }
    // Boxed: rare, and its timer would otherwise take room in every call's task.
    Err(Box::pin(confirm_exit(channel, cancel, &status)).await)
}

/// Waits for the call: its outcome, or the status it failed with, left for
/// [`run`] to tell a broken connection from the worker's answer.
async fn wait<T, Fut>(
    channel: &ChannelResource,
    cancel: &CancellationToken,
    stop: &CancellationToken,
    timeout: Option<Duration>,
    call: Fut,
) -> Result<Result<T, Error>, Status>
where
    Fut: Future<Output = Result<T, CallError>>,
{
    let call = async move {
        let guarded = futures_util::FutureExt::catch_unwind(AssertUnwindSafe(call));
        match timeout {
            Some(limit) => tokio::time::timeout(limit, guarded)
                .await
                .unwrap_or(Ok(Err(CallError::Other(Error::Timeout)))),
            None => guarded.await,
        }
    };
    // Asked to stop, the call has `STOP_GRACE` more to answer. One select:
    // a second one in the stop's branch made the task hold room for the
    // first one's output, the call's result, for the whole call.
    let stopped = async {
        stop.cancelled().await;
        tokio::time::sleep(STOP_GRACE).await;
    };
    tokio::pin!(call, stopped);
    let result = tokio::select! {
        biased;
        () = cancel.cancelled() => return Ok(Err(Error::Cancelled)),
        () = channel.closed.cancelled() => return Ok(Err(Error::WorkerExited)),
        () = &mut stopped => return Ok(Err(Error::Cancelled)),
        result = &mut call => result,
    };
    match result {
        Ok(Ok(value)) => Ok(Ok(value)),
        Ok(Err(CallError::Other(error))) => Ok(Err(error)),
        Ok(Err(CallError::Status(status))) => Err(status),
        Err(_) => Ok(Err(Error::Internal("the gRPC call panicked".into()))),
    }
}

/// The error of a call whose connection broke. If the worker died, its
/// Worker closes the channel as soon as the shepherd reports the exit: wait
/// for that, so the caller learns the real cause.
async fn confirm_exit(
    channel: &ChannelResource,
    cancel: &CancellationToken,
    status: &Status,
) -> Error {
    tokio::select! {
        () = channel.closed.cancelled() => Error::WorkerExited,
        () = cancel.cancelled() => Error::Cancelled,
        () = tokio::time::sleep(EXIT_CONFIRMATION) => Error::Unavailable(format!(
            "the worker at {} cannot be reached: {}",
            channel.address,
            status.message()
        )),
    }
}
