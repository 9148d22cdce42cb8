//! The client side of the local lane (`proto/synapse/v1/lane.proto`): a
//! worker's gRPC methods, called over one connection to its second Unix
//! socket with one frame each way per unary call.
//!
//! A [`Lane`] connects on first use and again after its connection broke.
//! A call writes its frame to the socket itself when nothing is waiting to
//! be written (one non-blocking write, no task woken, made outside any
//! lock); otherwise the frame joins the others waiting, which the call
//! writing meanwhile, or else the connection's writer, sends together.
//! The connection's reader hands each frame from the worker to its call by
//! id. Calls answer as tonic does: `Ok` with the response
//! bytes, or a [`Status`] — the worker's status with its `ErrorDetail` in
//! the same trailing-metadata entry the gRPC path uses, so that
//! [`Error::from_status`](crate::Error::from_status) classifies both alike;
//! or, when the connection broke, a status whose source is the I/O error,
//! which [`is_transport_failure`](crate::error::is_transport_failure)
//! recognizes.
//!
//! A call dropped before its end (its caller gave up, its deadline passed)
//! sends `cancel`, which cancels the handler's task in the worker.
//!
//! What a connection holds back, waiting to be written, is bounded for new
//! calls ([`backlog_limit`]): a worker that stops reading its socket (its
//! event loop blocked) would otherwise have every later call's request
//! kept in memory here, long after the call itself has ended. Past the
//! limit a new call fails at once with [`Code::Unavailable`]; the frames of
//! calls already made (their cancels, further requests, credit) are always
//! taken, so that none of them loses its cancel or its answer.
//!
//! A unary call may also be made with [`Lane::call`], for callers that
//! should not need a task of their own per call: its [`Answer`] is handed
//! its [`Outcome`] by whichever side ends the call (the connection's reader
//! for a response or a failure, its deadline timer, or the caller's
//! [`Ticket::cancel`] and [`Lane::abandon`]), exactly once.
//!
//! A lane given a [`Reader`] ([`Lane::with_reader`]) makes those calls on a
//! connection of their own, which that reader reads instead of a tokio task:
//! the NIF hands it to the BEAM, whose schedulers poll it as they poll a
//! Port's, so that an answer reaches its caller with no thread of ours in
//! between (see [`Inbound`]). So do calls made with [`Lane::handled`],
//! whose requests and responses stream but whose responses are taken by a
//! [`Handler`] where they are read, and which end as those calls do. Other
//! streamed calls keep a connection read by a task, where their responses
//! are consumed.
//!
//! A lane made [`Lane::with_pipes`] carries each of its connections on two
//! pipes rather than on the socket: the connection's `hello` asks for them
//! on the socket, and the worker hands over its two ends ([`pipes`]); the
//! socket then carries
//! nothing but stays open, the connection's life (shut down, it ends the
//! connection for the worker as a socket connection's end does). The same
//! frames cost each side less on a pipe than on a Unix socket.
//!
//! A call made with [`Lane::call`] for [`Answerer::Threads`] (a sync Bridge
//! function's, not `on_loop`) takes a third connection, whose `hello` (its
//! first frame, sent whether or not the worker requires a token) says
//! `threads`: the worker's threads read and answer its calls themselves,
//! without its event loop. It is read as the other connection of
//! [`Lane::call`]'s calls is: by the lane's [`Reader`] when it has one,
//! else by a task. A worker that does not know of `threads` answers its
//! calls from its loop, as it answers the others'.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use futures_core::Stream;
use prost::bytes::{Bytes, BytesMut};
use prost::Message;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, Interest};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{oneshot, Notify};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

use crate::error::DETAIL_KEY;
use crate::proto::{lane_frame, LaneFrame, LaneHello, LaneStart, LaneStatus, Limit};

/// Room for a frame's own fields around a message of the maximum size (as
/// the worker allows).
const FRAME_SLACK: usize = 64 * 1024;
/// Responses a streamed call may have on their way before its reader takes
/// them: it gives credit back as it reads.
const WINDOW: u32 = 32;

/// How many bytes may wait to be written on a connection (what the socket
/// did not take: its worker does not read them yet) before the connection
/// takes no new call: the larger of the maximum message size and the
/// contract's [`Limit::LaneBacklogFloorBytes`] (16 MiB).
///
/// Why so much: a worker that reads but is busy for a moment (its loop runs
/// other calls between two reads) falls behind a burst of calls, and a call
/// refused then is one that gRPC's flow control would only have delayed;
/// a caller who raised the maximum message size sends bursts of messages
/// that large. Why no more: this is what a worker that does not read at
/// all costs the BEAM, per connection: the limit, plus the last call taken
/// under it (one message, at most the maximum), plus the frames of the
/// calls already made, which are always taken (a cancel, a tool result,
/// credit: each of a call in flight, none of a new one).
pub fn backlog_limit(max_message_bytes: usize) -> usize {
    let floor = usize::try_from(Limit::LaneBacklogFloorBytes as i32).unwrap_or(usize::MAX);
    max_message_bytes.max(floor)
}

/// How many times a call that writes its frame at once writes, in one
/// write each, the frames other calls left while it wrote, before it
/// leaves them to the connection's writer (see [`Output::write`]).
const DIRECT_ROUNDS: usize = 8;

/// Where a lane keeps a connection: none until the first call.
type Slot = Mutex<Option<Arc<Connection>>>;

/// A worker's lane: a connection made on first use, and made again when it
/// broke.
pub struct Lane {
    path: PathBuf,
    /// `Bearer <token>`, sent in each connection's `hello`.
    authorization: Option<String>,
    max_message_bytes: usize,
    connection: Slot,
    /// Set by [`Lane::with_reader`]: what reads the connections of the
    /// calls made with [`Lane::call`] and [`Lane::handled`], and the
    /// connection of those the worker's loop answers.
    answers: Option<(Arc<dyn Reader>, Slot)>,
    /// The connection of the calls made with [`Lane::call`] for
    /// [`Answerer::Threads`]: read by the reader of `answers` if there is
    /// one, else by a task.
    threads: Slot,
    /// Set by [`Lane::with_pipes`]: every connection goes on pipes.
    pipes: bool,
}

/// Who, in the worker, reads and answers a call made with [`Lane::call`]:
/// each has a connection of the lane of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answerer {
    /// The worker's event loop, which answers every call but those below.
    Loop,
    /// The worker's threads, for the calls of the Bridge's sync functions
    /// that are not `on_loop`: their connection's `hello` says `threads`,
    /// and a thread that reads a call runs it and writes its answer, with
    /// no wake-up of the loop in between.
    Threads,
}

impl Lane {
    /// A lane to the socket at `path`. Connects on first use (within a
    /// tokio runtime), so this never waits.
    pub fn new(path: PathBuf, authorization: Option<String>, max_message_bytes: usize) -> Self {
        Self {
            path,
            authorization,
            max_message_bytes,
            connection: Mutex::new(None),
            answers: None,
            threads: Mutex::new(None),
            pipes: false,
        }
    }

    /// The same lane, whose connections carry their frames on two pipes
    /// each, which the worker hands over (see [`pipes`]).
    #[must_use]
    pub fn with_pipes(mut self) -> Self {
        self.pipes = true;
        self
    }

    /// The same lane, whose calls made with [`Lane::call`] (unary calls
    /// answered without a task) take connections of their own that
    /// `reader` reads.
    #[must_use]
    pub fn with_reader(mut self, reader: Arc<dyn Reader>) -> Self {
        self.answers = Some((reader, Mutex::new(None)));
        self
    }

    /// Calls a method with one request and one response.
    pub async fn unary(
        &self,
        method: &str,
        request: Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<Bytes, Status> {
        self.start_unary(method, request, timeout)?.answer().await
    }

    /// Sends the call of a method with one request and one response now,
    /// on the calling thread (within a tokio runtime's context); its answer
    /// comes later ([`Unary::answer`]). The frame goes out at once when the
    /// socket is free: the call waits for no task to be scheduled.
    pub fn start_unary(
        &self,
        method: &str,
        request: Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<Unary, Status> {
        let (reply, answer) = oneshot::channel();
        let ticket = self
            .call(
                method,
                request,
                timeout,
                Answerer::Loop,
                Box::new(Replier(reply)),
            )
            .map_err(|(status, _)| status)?;
        Ok(Unary { ticket, answer })
    }

    /// Sends the call of a method with one request and one response now,
    /// on the calling thread (within a tokio runtime's context), on the
    /// connection of the calls that `answerer` answers, and hands its
    /// outcome to `answer` when it ends: no task waits for it. The
    /// deadline is kept by the connection. When the lane cannot take the
    /// call (its connection broke), the failure and `answer` come back.
    pub fn call(
        &self,
        method: &str,
        request: Vec<u8>,
        timeout: Option<Duration>,
        answerer: Answerer,
        answer: Box<dyn Answer>,
    ) -> Result<Ticket, (Status, Box<dyn Answer>)> {
        let connection = self.answered_by(answerer);
        let deadline = timeout.map(|t| Instant::now() + t);
        let id = connection
            .register_waiting(Route::Answer(answer, deadline), deadline)
            .map_err(|(status, route)| match route {
                Route::Answer(answer, _) => (status, answer),
                _ => unreachable!("the route given back is the one registered"),
            })?;
        if let Err(status) = connection.send_start([(id, start(method, request, timeout, 0))]) {
            match connection.lock().take_waiting(id) {
                Some(Waiting::Answer(answer)) => return Err((status, answer)),
                Some(Waiting::Handled(_)) => unreachable!("the call registered is answered"),
                // Ended meanwhile (its deadline, `Lane::abandon`, the
                // connection's end), its answer told: nothing left to refuse.
                None => {}
            }
        }
        Ok(Ticket {
            connection: Arc::downgrade(&connection),
            id,
        })
    }

    /// Opens a call whose requests and responses both stream, now, on the
    /// calling thread (within a tokio runtime's context), whose responses
    /// go to `handler` as they are read, on the thread that reads them: the
    /// connection of [`Lane::call`]'s calls, so that with a [`Reader`] no
    /// task wakes for them either. The `start` frame and the `first`
    /// request go out in one write; later requests are sent with the
    /// returned [`Requests`]. The call ends like one made with
    /// [`Lane::call`] (its deadline kept by the connection, cancelled with
    /// the returned [`Ticket`], ended by [`Lane::abandon`]), and `handler`
    /// is told how, exactly once ([`Handler::end`]). Credit goes back to
    /// the worker as responses are handed on: the handler takes each at
    /// once.
    pub fn handled(
        &self,
        method: &str,
        first: Vec<u8>,
        timeout: Option<Duration>,
        handler: Arc<dyn Handler>,
    ) -> Result<(Requests, Ticket, Held), Status> {
        let connection = self.answered_by(Answerer::Loop);
        let deadline = timeout.map(|t| Instant::now() + t);
        let route = Route::Handled {
            handler,
            deadline,
            taken: 0,
        };
        let id = connection
            .register_waiting(route, deadline)
            .map_err(|(status, _)| status)?;
        if let Err(status) = connection.send_start([
            (id, start(method, Vec::new(), timeout, WINDOW)),
            (id, lane_frame::Body::Message(first)),
        ]) {
            // Withdrawn untold: the caller has the failure. Ended meanwhile
            // (as in `Lane::call`), its handler was told how.
            if connection.lock().take_waiting(id).is_some() {
                return Err(status);
            }
        }
        let requests = Requests(Arc::new(Writer {
            connection: Arc::downgrade(&connection),
            id,
        }));
        let ticket = Ticket {
            connection: Arc::downgrade(&connection),
            id,
        };
        Ok((
            requests,
            ticket,
            Held {
                _connection: connection,
            },
        ))
    }

    /// Ends every call made with [`Lane::call`] or [`Lane::handled`] that
    /// is still waiting for its end: each is told `cancel` and ended
    /// [`Outcome::Abandoned`] (on the calling thread).
    pub fn abandon(&self) {
        for slot in self.slots() {
            let connection = slot.lock().unwrap_or_else(PoisonError::into_inner).clone();
            if let Some(connection) = connection {
                connection.abandon();
            }
        }
    }

    /// Where the lane keeps its connections.
    fn slots(&self) -> impl Iterator<Item = &Slot> {
        [&self.connection, &self.threads]
            .into_iter()
            .chain(self.answers.as_ref().map(|(_, slot)| slot))
    }

    /// Calls a method with one request and streamed responses.
    pub fn server_streaming(
        &self,
        method: &str,
        request: Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<Responses, Status> {
        let (events, receiver) = futures_channel::mpsc::unbounded();
        let call = self.open(method, request, None, timeout, Route::Stream(events))?;
        Ok(Responses::new(call, receiver))
    }

    /// Calls a method whose requests and responses both stream, now, on
    /// the calling thread (within a tokio runtime's context): the `start`
    /// frame and the `first` request go out in one write. Later requests
    /// are sent with the returned [`Requests`], from any thread; the call
    /// is half-closed when the last of its clones is dropped.
    pub fn streaming(
        &self,
        method: &str,
        first: Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<(Requests, Responses), Status> {
        let (events, receiver) = futures_channel::mpsc::unbounded();
        let call = self.open(
            method,
            Vec::new(),
            Some(first),
            timeout,
            Route::Stream(events),
        )?;
        let requests = Requests(Arc::new(Writer {
            connection: Arc::downgrade(&call.connection),
            id: call.id,
        }));
        Ok((requests, Responses::new(call, receiver)))
    }

    /// Opens a call with streamed responses: its `start` frame (carrying
    /// `message`, the request of a method with one) and, for a method whose
    /// requests stream, its `first` request, in one write.
    fn open(
        &self,
        method: &str,
        message: Vec<u8>,
        first: Option<Vec<u8>>,
        timeout: Option<Duration>,
        route: Route,
    ) -> Result<Open, Status> {
        let connection = self.connection();
        let id = connection.register(route)?;
        let start = (id, start(method, message, timeout, WINDOW));
        let first = first.map(|request| (id, lane_frame::Body::Message(request)));
        if let Err(status) = connection.send_start(std::iter::once(start).chain(first)) {
            connection.lock().remove(id);
            return Err(status);
        }
        Ok(Open {
            connection,
            id,
            done: false,
        })
    }

    /// Lets go of the current connections: each closes once the calls on
    /// it have ended.
    pub fn close(&self) {
        for slot in self.slots() {
            slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        }
    }

    /// The current connection read by a task, or a new one when there is
    /// none or it broke.
    fn connection(&self) -> Arc<Connection> {
        self.connect(&self.connection, None, Answerer::Loop)
    }

    /// The connection of the calls made with [`Lane::call`] and
    /// [`Lane::handled`] that `answerer` answers: read by the lane's
    /// [`Reader`] if it has one. Without one, the loop's calls share the
    /// connection of streams, read by a task.
    fn answered_by(&self, answerer: Answerer) -> Arc<Connection> {
        match (answerer, &self.answers) {
            (Answerer::Loop, Some((reader, slot))) => {
                self.connect(slot, Some(reader), Answerer::Loop)
            }
            (Answerer::Loop, None) => self.connection(),
            (Answerer::Threads, answers) => {
                let reader = answers.as_ref().map(|(reader, _)| reader);
                self.connect(&self.threads, reader, Answerer::Threads)
            }
        }
    }

    /// The connection in `slot`, or a new one (read by `reader`, or by a
    /// task; whose calls `answerer` answers) when there is none or it
    /// broke.
    fn connect(
        &self,
        slot: &Slot,
        reader: Option<&Arc<dyn Reader>>,
        answerer: Answerer,
    ) -> Arc<Connection> {
        let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
        match slot.as_ref() {
            Some(connection) if !connection.is_broken() => connection.clone(),
            _ => {
                let opening = if self.pipes {
                    Opening::Pipes(LaneHello {
                        authorization: self.authorization.clone().unwrap_or_default(),
                        threads: answerer == Answerer::Threads,
                        pipes: true,
                    })
                } else {
                    Opening::Socket(self.hello(answerer))
                };
                let connection = Connection::start(
                    self.path.clone(),
                    opening,
                    self.max_message_bytes,
                    reader.cloned(),
                );
                *slot = Some(connection.clone());
                connection
            }
        }
    }

    /// The `hello` of a connection whose calls `answerer` answers: none
    /// for the loop's when the worker requires no token (what a worker
    /// reads first on a connection without one is its first call).
    fn hello(&self, answerer: Answerer) -> Option<LaneHello> {
        let threads = answerer == Answerer::Threads;
        (threads || self.authorization.is_some()).then(|| LaneHello {
            authorization: self.authorization.clone().unwrap_or_default(),
            threads,
            pipes: false,
        })
    }
}

/// How a new connection begins.
enum Opening {
    /// With its `hello`, if it has one, as the first frame on the socket,
    /// which carries the rest.
    Socket(Option<LaneHello>),
    /// With a `hello` asking for pipes, on the socket, and then the pipes
    /// (see [`pipes`]), which carry the rest.
    Pipes(LaneHello),
}

/// A call's `start` frame.
fn start(
    method: &str,
    message: Vec<u8>,
    timeout: Option<Duration>,
    credit: u32,
) -> lane_frame::Body {
    let timeout_us = timeout.map_or(0, |t| u64::try_from(t.as_micros()).unwrap_or(u64::MAX));
    lane_frame::Body::Start(LaneStart {
        method: method.to_owned(),
        // 0 means none: a deadline of 0 µs is 1 µs.
        timeout_us: if timeout.is_some() {
            timeout_us.max(1)
        } else {
            0
        },
        message,
        credit,
    })
}

/// How a call made with [`Lane::call`] ended.
pub enum Outcome {
    /// The worker's response.
    Response(Bytes),
    /// The worker's status, or the connection's failure (see
    /// [`is_transport_failure`](crate::error::is_transport_failure)).
    Failed(Status),
    /// The call's deadline passed first; the worker was told `cancel`.
    Expired,
    /// [`Ticket::cancel`] ended it; the worker was told `cancel`.
    Cancelled,
    /// [`Lane::abandon`] ended it; the worker was told `cancel`.
    Abandoned,
    /// The worker ended a call made with [`Lane::handled`] with an OK
    /// status (never the outcome of a unary call).
    Finished,
}

/// Takes the outcome of a call made with [`Lane::call`]. It is called
/// exactly once, on the thread that ended the call: a runtime thread for a
/// response, a failure or the deadline; the caller's own for
/// [`Ticket::cancel`] and [`Lane::abandon`].
pub trait Answer: Send + 'static {
    fn answer(self: Box<Self>, outcome: Outcome);
}

/// Takes the responses of a call made with [`Lane::handled`], in order,
/// on the thread that reads them (a [`Reader`]'s, or the connection's
/// task), then its end.
pub trait Handler: Send + Sync + 'static {
    /// A response of the call. An end from another thread (a cancel, the
    /// deadline) may come before a response the reader was handing on:
    /// what comes after its end, the handler ignores.
    fn message(&self, message: Bytes);
    /// How the call ended, told exactly once, on the thread that ended it
    /// (as [`Answer::answer`] is): [`Outcome::Finished`] or
    /// [`Outcome::Failed`] from the reader, [`Outcome::Expired`] from the
    /// deadline timer, the caller's own for [`Outcome::Cancelled`] and
    /// [`Outcome::Abandoned`].
    fn end(&self, outcome: Outcome);
}

/// The connection a [`Lane::handled`] call was made on, for its caller to
/// let go of once it holds none of its own locks: were it the connection's
/// last holder (the lane closed meanwhile), dropping it ends the calls still
/// on it, that call's handler included, on the dropping thread.
#[must_use = "dropped at once, it may end the call's handler on this thread"]
pub struct Held {
    _connection: Arc<Connection>,
}

/// A call made with [`Lane::call`] or [`Lane::handled`], to cancel it.
#[derive(Clone)]
pub struct Ticket {
    connection: Weak<Connection>,
    id: u64,
}

impl Ticket {
    /// Ends the call if it is still waiting: the worker is told `cancel`,
    /// and its answer [`Outcome::Cancelled`], on this thread.
    pub fn cancel(&self) {
        if let Some(connection) = self.connection.upgrade() {
            connection.withdraw(self.id, || Outcome::Cancelled);
        }
    }
}

/// Reads the connections of a lane's unary calls in place of a task (see
/// [`Lane::with_reader`]).
pub trait Reader: Send + Sync + 'static {
    /// Starts reading a new connection: the reader polls
    /// [`Inbound::fd`] and hands what it reads to [`Inbound::received`]
    /// until [`Inbound::received`] fails or the stream ends
    /// ([`Inbound::ended`]). Called on a tokio thread, once connected.
    fn adopt(&self, inbound: Arc<Inbound>);
}

/// The reading side of a connection read by a [`Reader`]. It owns a
/// descriptor of its own for the socket, closed when the last holder lets
/// go of it: the reader must hold it for as long as it polls the
/// descriptor.
pub struct Inbound {
    fd: OwnedFd,
    /// Bytes read that do not make a whole frame yet.
    buffer: Mutex<BytesMut>,
    max_frame: usize,
    connection: Weak<Connection>,
    /// Why reading ended, for the connection's task (see [`run`]).
    end: Mutex<Option<String>>,
    ended: Notify,
}

impl Inbound {
    /// The descriptor to poll and read.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Hands the frames in `bytes` (read from [`Inbound::fd`]; empty to
    /// go on after `Ok(true)`) to their calls, in order. Returns once
    /// every whole frame is handed on, or once `budget` has passed with
    /// whole frames left (`Ok(true)`: call again); `Err` when the worker
    /// broke the protocol, or nobody holds the connection any more: the
    /// connection is then over, and the reader stops.
    pub fn received(&self, bytes: &[u8], budget: Duration) -> Result<bool, String> {
        let started = Instant::now();
        let mut buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        buffer.extend_from_slice(bytes);
        loop {
            let frame = match take_frame(&mut buffer, self.max_frame) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(false),
                Err(reason) => return Err(self.fail(reason)),
            };
            let Some(connection) = self.connection.upgrade() else {
                return Err(self.fail("the lane was closed".to_owned()));
            };
            if let Err(reason) = connection.route(frame) {
                return Err(self.fail(reason));
            }
            if started.elapsed() >= budget {
                return Ok(whole_frame(&buffer).is_some());
            }
        }
    }

    /// The reader stopped reading, for `reason` (the worker closed the
    /// connection, reading failed, the reader is stopping): every call on
    /// the connection fails, and the lane connects again for later ones.
    pub fn ended(&self, reason: String) {
        self.fail(reason);
    }

    fn fail(&self, reason: String) -> String {
        if let Some(connection) = self.connection.upgrade() {
            connection.break_off(reason.clone());
        }
        let mut end = self.end.lock().unwrap_or_else(PoisonError::into_inner);
        if end.is_none() {
            *end = Some(reason.clone());
            self.ended.notify_one();
        }
        reason
    }

    /// Waits until reading ended; why.
    async fn wait(&self) -> String {
        loop {
            if let Some(reason) = self
                .end
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
            {
                return reason;
            }
            self.ended.notified().await;
        }
    }
}

/// Where a call's frames go.
enum Route {
    Stream(futures_channel::mpsc::UnboundedSender<Event>),
    /// A call made with [`Lane::call`], and its deadline.
    Answer(Box<dyn Answer>, Option<Instant>),
    /// A call made with [`Lane::handled`], its deadline, and the responses
    /// handed on since credit was last given back.
    Handled {
        handler: Arc<dyn Handler>,
        deadline: Option<Instant>,
        taken: u32,
    },
}

impl Route {
    fn deadline(&self) -> Option<Instant> {
        match self {
            Self::Stream(_) => None,
            Self::Answer(_, deadline) | Self::Handled { deadline, .. } => *deadline,
        }
    }
}

/// A call that ends with one outcome, taken out of the table by whoever
/// ends it.
enum Waiting {
    Answer(Box<dyn Answer>),
    Handled(Arc<dyn Handler>),
}

impl Waiting {
    fn finish(self, outcome: Outcome) {
        match self {
            Self::Answer(answer) => answer.answer(outcome),
            Self::Handled(handler) => handler.end(outcome),
        }
    }
}

enum Event {
    Message(Bytes),
    End(Result<(), Status>),
}

struct Calls {
    next_id: u64,
    routes: HashMap<u64, Route>,
    /// Why the connection broke; no call is registered after that.
    broken: Option<String>,
    /// The deadlines of the calls in `routes` made with [`Lane::call`].
    deadlines: BTreeSet<(Instant, u64)>,
    /// When the deadline timer wakes next, if it waits for one. It is only
    /// moved earlier: a call that ends leaves it be, so that calls made one
    /// after another with the same timeout do not wake the timer.
    armed: Option<Instant>,
}

impl Calls {
    /// Takes the route of call `id`, and its deadline with it.
    fn remove(&mut self, id: u64) -> Option<Route> {
        let route = self.routes.remove(&id);
        if let Some(at) = route.as_ref().and_then(Route::deadline) {
            self.deadlines.remove(&(at, id));
        }
        route
    }

    /// Takes the route of call `id` if it is one made with [`Lane::call`]
    /// or [`Lane::handled`].
    fn take_waiting(&mut self, id: u64) -> Option<Waiting> {
        match self.remove(id) {
            Some(Route::Answer(answer, _)) => Some(Waiting::Answer(answer)),
            Some(Route::Handled { handler, .. }) => Some(Waiting::Handled(handler)),
            Some(other) => {
                self.routes.insert(id, other);
                None
            }
            None => None,
        }
    }
}

struct Connection {
    calls: Mutex<Calls>,
    output: Arc<Output>,
    /// [`backlog_limit`]: past it, new calls are refused.
    backlog: usize,
    /// Wakes the deadline timer: a deadline earlier than the one it waits
    /// for.
    timer: Arc<Notify>,
}

/// The writing side, shared by the calls and the connection's writer.
struct Output {
    /// The socket, once connected.
    socket: OnceLock<Socket>,
    pending: Mutex<Pending>,
    /// Wakes the writer: frames are waiting, or the connection is gone.
    wake: Notify,
    /// Nobody holds the connection any more.
    closed: AtomicBool,
}

struct Pending {
    /// Frames waiting to be written, in order.
    bytes: Vec<u8>,
    /// What the socket has not taken yet of the frames the writer (or a
    /// call writing those others left, see `direct`) took out of `bytes`
    /// to write: they wait too.
    writing: usize,
    /// The writer is writing: calls leave their frames to it.
    flushing: bool,
    /// A call is writing, outside the lock (see [`Output::write`]): the
    /// others leave their frames to it, and so does the writer.
    direct: bool,
}

impl Pending {
    /// The bytes waiting to be written.
    fn waiting(&self) -> usize {
        self.bytes.len() + self.writing
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.output.closed.store(true, Ordering::Release);
        self.output.wake.notify_one();
        // Calls made with `Lane::call` do not hold the connection: one let go
        // of with calls still waiting (`Lane::close` without
        // `Lane::abandon`) fails them, as a broken one would.
        let calls = self.calls.get_mut().unwrap_or_else(PoisonError::into_inner);
        for (_, route) in calls.routes.drain() {
            let failure = || Outcome::Failed(transport_failure("the lane was closed"));
            match route {
                Route::Answer(answer, _) => answer.answer(failure()),
                Route::Handled { handler, .. } => handler.end(failure()),
                Route::Stream(_) => {}
            }
        }
    }
}

/// The writing side of a connection: its socket, or the pipe the worker
/// reads.
enum Socket {
    /// A connection read by a task, which has the reading half.
    Task(OwnedWriteHalf),
    /// A connection read by a [`Reader`], which has a descriptor of its
    /// own. Not registered with tokio but while the writer waits for room
    /// (see [`Socket::writable`]): a registration would wake a tokio thread
    /// each time the worker reads, for nothing.
    External(std::os::unix::net::UnixStream),
    /// A connection on pipes (see [`pipes`]), read by a [`Reader`] or by
    /// the connection's task on the other pipe: the pipe the worker reads
    /// (non-blocking, not registered with tokio but while the writer
    /// waits, as above), and the socket, which is the connection's life.
    Pipe {
        to_worker: OwnedFd,
        socket: std::os::unix::net::UnixStream,
    },
}

impl Socket {
    fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Self::Task(socket) => socket.try_write(bytes),
            Self::External(socket) => send(socket, bytes),
            Self::Pipe { to_worker, .. } => write_pipe(to_worker, bytes),
        }
    }

    async fn writable(&self) -> io::Result<()> {
        match self {
            Self::Task(socket) => socket.writable().await,
            Self::External(socket) => {
                // A descriptor of its own, registered for this wait only.
                let waiting = socket.try_clone()?;
                // SAFETY: the stream owns its descriptor, and the `AsyncFd`
                // owns the stream, until it is dropped below.
                let waiting =
                    unsafe { AsyncFd::register_with_interest(waiting, Interest::WRITABLE) }
                        .map_err(io::Error::from)?;
                let _ready = waiting.writable().await?;
                Ok(())
            }
            Self::Pipe { to_worker, .. } => {
                // As above: a descriptor of its own, for this wait only.
                // SAFETY: the `AsyncFd` owns the duplicate until it is dropped below.
                let waiting = unsafe {
                    AsyncFd::register_with_interest(to_worker.try_clone()?, Interest::WRITABLE)
                }
                .map_err(io::Error::from)?;
                let _ready = waiting.writable().await?;
                Ok(())
            }
        }
    }

    /// Ends the connection both ways, for its reader too: on pipes, the
    /// worker closes the pipe the reader reads once its socket is shut down.
    fn shutdown(&self) {
        match self {
            Self::External(socket) | Self::Pipe { socket, .. } => {
                let _ = socket.shutdown(std::net::Shutdown::Both);
            }
            Self::Task(_) => {}
        }
    }
}

/// Writes what the socket takes now. Never waits, whatever the mode of
/// the socket: the reader's polling (a Port's) may set it blocking when it
/// stops; and a closed peer is an error, not a signal.
fn send(socket: &std::os::unix::net::UnixStream, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: the buffer is valid for its length; the descriptor is open
    // for as long as `socket` is.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    usize::try_from(sent).map_err(|_| io::Error::last_os_error())
}

/// Writes what the pipe `to_worker` (non-blocking) takes now. The BEAM
/// ignores `SIGPIPE`, as Rust programs do: a closed reader is an error
/// (`EPIPE`), not a signal.
fn write_pipe(to_worker: &OwnedFd, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: the buffer is valid for its length; the descriptor is open
    // for as long as `to_worker` is.
    let written = unsafe { libc::write(to_worker.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
    usize::try_from(written).map_err(|_| io::Error::last_os_error())
}

/// Asks the worker, on the connection's socket `stream`, for the pipes its
/// frames then go on, with `hello` (its `pipes` set): the socket, the pipe
/// the worker reads and the pipe it writes. Fails when the worker closes
/// the socket instead (it refused the hello's token) or hands over
/// anything but two descriptors.
async fn pipes(
    mut stream: UnixStream,
    hello: LaneHello,
) -> io::Result<(UnixStream, OwnedFd, OwnedFd)> {
    use tokio::io::AsyncWriteExt;

    stream
        .write_all(&encode([(0, lane_frame::Body::Hello(hello))]))
        .await?;
    let descriptors = loop {
        stream.readable().await?;
        match stream.try_io(Interest::READABLE, || {
            receive_descriptors(stream.as_raw_fd())
        }) {
            Ok((0, _)) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the worker closed the lane",
                ))
            }
            Ok((_, descriptors)) => break descriptors,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    };
    let [to_worker, from_worker]: [OwnedFd; 2] = descriptors.try_into().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the worker did not hand the lane's two pipes over",
        )
    })?;
    // Both, as the socket was: the reader reads until a read would block.
    set_nonblocking(&to_worker)?;
    set_nonblocking(&from_worker)?;
    Ok((stream, to_worker, from_worker))
}

/// Reads one byte and the descriptors sent with it (SCM_RIGHTS) from the
/// socket `fd`, without waiting: how many bytes were read (0 at the end of
/// the stream), and the descriptors, close-on-exec (the VM's children, its
/// Ports' programs, must not hold a pipe's end: the other side would not
/// see it close).
fn receive_descriptors(fd: RawFd) -> io::Result<(usize, Vec<OwnedFd>)> {
    /// Room for more than the two expected, to close any extra ones.
    const ROOM: usize = 4;
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: byte.len(),
    };
    #[allow(clippy::cast_possible_truncation)] // a few descriptors' bytes
    let fds_len = (ROOM * std::mem::size_of::<RawFd>()) as u32;
    // SAFETY: a pure computation of a size.
    let space = unsafe { libc::CMSG_SPACE(fds_len) } as usize;
    // u64s: a control buffer aligned as `cmsghdr` is.
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: a `msghdr` of zeros is a valid empty one.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = space as _;
    // Close-on-exec as they arrive where the system can; else just after
    // (below), which a fork on another thread in between could miss.
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    let flags = libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT;
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    let flags = libc::MSG_DONTWAIT;
    // SAFETY: `message` points at buffers that outlive the call.
    let read = unsafe { libc::recvmsg(fd, &mut message, flags) };
    let read = usize::try_from(read).map_err(|_| io::Error::last_os_error())?;
    let mut descriptors = Vec::new();
    // SAFETY: the headers are walked as the kernel wrote them, within
    // `msg_controllen`; each descriptor is new and ours to own.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&message);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(header).cast::<RawFd>();
                let bytes = (*header).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    let raw = std::ptr::read_unaligned(data.add(i));
                    descriptors.push(std::os::fd::FromRawFd::from_raw_fd(raw));
                }
            }
            header = libc::CMSG_NXTHDR(&message, header);
        }
    }
    if message.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the worker handed more descriptors over than the lane's two pipes",
        ));
    }
    for descriptor in &descriptors {
        set_flag(descriptor, libc::F_GETFD, libc::F_SETFD, libc::FD_CLOEXEC)?;
    }
    Ok((read, descriptors))
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    set_flag(fd, libc::F_GETFL, libc::F_SETFL, libc::O_NONBLOCK)
}

/// Adds `flag` to the flags of `fd` that `get` reads and `set` writes.
fn set_flag(fd: &OwnedFd, get: libc::c_int, set: libc::c_int, flag: libc::c_int) -> io::Result<()> {
    // SAFETY: fcntl with integer arguments on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), get) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd.as_raw_fd(), set, flags | flag) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Connection {
    /// A connection to the lane at `path`, begun as `opening` says, read
    /// by `reader` or else by a task.
    fn start(
        path: PathBuf,
        opening: Opening,
        max_message_bytes: usize,
        reader: Option<Arc<dyn Reader>>,
    ) -> Arc<Self> {
        let output = Arc::new(Output {
            socket: OnceLock::new(),
            pending: Mutex::new(Pending {
                bytes: Vec::new(),
                writing: 0,
                flushing: false,
                direct: false,
            }),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
        });
        let connection = Arc::new(Self {
            calls: Mutex::new(Calls {
                next_id: 0,
                routes: HashMap::new(),
                broken: None,
                deadlines: BTreeSet::new(),
                armed: None,
            }),
            output: output.clone(),
            backlog: backlog_limit(max_message_bytes),
            timer: Arc::new(Notify::new()),
        });
        let piped = match opening {
            Opening::Socket(hello) => {
                if let Some(hello) = hello {
                    connection.send(0, lane_frame::Body::Hello(hello));
                }
                None
            }
            Opening::Pipes(hello) => Some(hello),
        };
        tokio::spawn(run(
            Arc::downgrade(&connection),
            output,
            connection.timer.clone(),
            path,
            max_message_bytes + FRAME_SLACK,
            reader,
            piped,
        ));
        connection
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_broken(&self) -> bool {
        self.lock().broken.is_some()
    }

    fn register(&self, route: Route) -> Result<u64, Status> {
        let mut calls = self.lock();
        if let Some(reason) = &calls.broken {
            return Err(transport_failure(reason));
        }
        calls.next_id += 1;
        let id = calls.next_id;
        calls.routes.insert(id, route);
        Ok(id)
    }

    /// Registers a call made with [`Lane::call`] or [`Lane::handled`]
    /// (`route`), whose deadline the connection keeps.
    fn register_waiting(
        &self,
        route: Route,
        deadline: Option<Instant>,
    ) -> Result<u64, (Status, Route)> {
        let mut calls = self.lock();
        if let Some(reason) = &calls.broken {
            return Err((transport_failure(reason), route));
        }
        calls.next_id += 1;
        let id = calls.next_id;
        calls.routes.insert(id, route);
        if let Some(at) = deadline {
            calls.deadlines.insert((at, id));
            if calls.armed.is_none_or(|armed| at < armed) {
                calls.armed = Some(at);
                self.timer.notify_one();
            }
        }
        Ok(id)
    }

    /// Ends call `id`, made with [`Lane::call`] or [`Lane::handled`], with
    /// `outcome` if it is still waiting, and tells the worker `cancel`.
    fn withdraw(&self, id: u64, outcome: fn() -> Outcome) {
        let waiting = self.lock().take_waiting(id);
        self.end(waiting.map(|waiting| (id, waiting)), outcome);
    }

    /// Ends calls taken out of the table (outside its lock): the worker is
    /// told `cancel`, and each call `outcome`.
    fn end(&self, ended: impl IntoIterator<Item = (u64, Waiting)>, outcome: fn() -> Outcome) {
        for (id, waiting) in ended {
            self.send(id, lane_frame::Body::Cancel(true));
            waiting.finish(outcome());
        }
    }

    /// [`Lane::abandon`].
    fn abandon(&self) {
        let waiting: Vec<(u64, Waiting)> = {
            let mut calls = self.lock();
            let ids: Vec<u64> = calls
                .routes
                .iter()
                .filter(|(_, route)| !matches!(route, Route::Stream(_)))
                .map(|(&id, _)| id)
                .collect();
            ids.into_iter()
                .filter_map(|id| calls.take_waiting(id).map(|waiting| (id, waiting)))
                .collect()
        };
        self.end(waiting, || Outcome::Abandoned);
    }

    /// Ends the calls whose deadline has passed; returns when the timer
    /// should wake next.
    fn expire(&self) -> Option<Instant> {
        let now = Instant::now();
        let (expired, next) = {
            let mut calls = self.lock();
            let mut expired = Vec::new();
            while let Some(&(at, id)) = calls.deadlines.first() {
                if at > now {
                    break;
                }
                if let Some(waiting) = calls.take_waiting(id) {
                    expired.push((id, waiting));
                }
            }
            calls.armed = calls.deadlines.first().map(|&(at, _)| at);
            (expired, calls.armed)
        };
        self.end(expired, || Outcome::Expired);
        next
    }

    /// Writes a frame: at once when the socket is free, else after the
    /// frames waiting before it. A write that fails breaks the connection,
    /// which the reader reports to every call.
    fn send(&self, call: u64, body: lane_frame::Body) {
        self.send_frames([(call, body)]);
    }

    /// Writes frames of calls already on the connection, in order, as one
    /// write, however many bytes wait before them.
    fn send_frames(&self, frames: impl IntoIterator<Item = (u64, lane_frame::Body)>) {
        self.output.send(&encode(frames));
    }

    /// Writes the frames that start a call, in order, as one write; or,
    /// when [`backlog_limit`] bytes or more wait to be written already
    /// (the worker is not reading), writes nothing and fails the call
    /// [`Code::Unavailable`]. Not a failure of the connection: the calls on
    /// it go on.
    fn send_start(
        &self,
        frames: impl IntoIterator<Item = (u64, lane_frame::Body)>,
    ) -> Result<(), Status> {
        self.output
            .send_within(&encode(frames), self.backlog)
            .map_err(|waiting| {
                Status::unavailable(format!(
                    "the worker is not reading its requests: {waiting} bytes of earlier \
                     calls wait to be written to its lane, and no new call is sent while \
                     {limit} or more wait (is its event loop blocked?)",
                    limit = self.backlog
                ))
            })
    }

    /// Writes a frame of call `id` if the call is still on: false when it
    /// ended (its frame would reach nobody).
    fn send_if_on(&self, id: u64, body: lane_frame::Body) -> bool {
        let on = self.lock().routes.contains_key(&id);
        if on {
            self.send(id, body);
        }
        on
    }

    /// The call is over on this side: forget it, and tell the worker.
    fn cancel(&self, id: u64) {
        if self.lock().routes.remove(&id).is_some() {
            self.send(id, lane_frame::Body::Cancel(true));
        }
    }

    /// The failure of a call whose route was dropped with the connection.
    fn failure(&self) -> Status {
        transport_failure(self.lock().broken.as_deref().unwrap_or("the lane closed"))
    }

    fn route(&self, frame: LaneFrame) -> Result<(), String> {
        let id = frame.call;
        let body = frame
            .body
            .ok_or_else(|| format!("the worker sent a frame with no body for call {id}"))?;
        let mut handled = None;
        let ended = {
            let mut calls = self.lock();
            match body {
                lane_frame::Body::Message(message) => match calls.routes.get_mut(&id) {
                    Some(Route::Stream(events)) => {
                        let _ = events.unbounded_send(Event::Message(Bytes::from(message)));
                        None
                    }
                    Some(Route::Answer(..)) => calls
                        .take_waiting(id)
                        .map(|answer| (answer, Outcome::Response(Bytes::from(message)))),
                    Some(Route::Handled { handler, taken, .. }) => {
                        *taken += 1;
                        let credit = (*taken >= WINDOW / 2).then(|| std::mem::take(taken));
                        handled = Some((handler.clone(), Bytes::from(message), credit));
                        None
                    }
                    // Cancelled meanwhile.
                    None => None,
                },
                lane_frame::Body::Status(status) => {
                    let status = status_from(status);
                    match calls.remove(id) {
                        Some(Route::Stream(events)) => {
                            let end = if status.code() == Code::Ok {
                                Ok(())
                            } else {
                                Err(status)
                            };
                            let _ = events.unbounded_send(Event::End(end));
                            None
                        }
                        Some(Route::Answer(answer, _)) => {
                            // A unary call must end with its response.
                            let failure = if status.code() == Code::Ok {
                                Status::internal("the worker ended a unary call without a response")
                            } else {
                                status
                            };
                            Some((Waiting::Answer(answer), Outcome::Failed(failure)))
                        }
                        Some(Route::Handled { handler, .. }) => {
                            let outcome = if status.code() == Code::Ok {
                                Outcome::Finished
                            } else {
                                Outcome::Failed(status)
                            };
                            Some((Waiting::Handled(handler), outcome))
                        }
                        None => None,
                    }
                }
                other => return Err(format!("the worker sent a client's frame: {other:?}")),
            }
        };
        // Outside the lock: answering builds and sends the caller's reply,
        // and a handler may send requests of its call.
        if let Some((handler, message, credit)) = handled {
            if let Some(count) = credit {
                self.send(id, lane_frame::Body::Credit(count));
            }
            handler.message(message);
        }
        if let Some((waiting, outcome)) = ended {
            waiting.finish(outcome);
        }
        Ok(())
    }

    /// The connection is gone: every call on it fails, and so does every
    /// later one (the lane then makes a new connection).
    fn break_off(&self, reason: String) {
        let routes = {
            let mut calls = self.lock();
            if calls.broken.is_none() {
                calls.broken = Some(reason.clone());
            }
            calls.deadlines.clear();
            std::mem::take(&mut calls.routes)
        };
        for (_, route) in routes {
            match route {
                Route::Answer(answer, _) => {
                    answer.answer(Outcome::Failed(transport_failure(&reason)))
                }
                Route::Handled { handler, .. } => {
                    handler.end(Outcome::Failed(transport_failure(&reason)))
                }
                Route::Stream(events) => {
                    let _ = events.unbounded_send(Event::End(Err(transport_failure(&reason))));
                }
            }
        }
    }
}

/// Frames, in order, as the bytes of one write.
fn encode(frames: impl IntoIterator<Item = (u64, lane_frame::Body)>) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (call, body) in frames {
        let frame = LaneFrame {
            call,
            body: Some(body),
        };
        let length = frame.encoded_len();
        bytes.reserve(4 + length);
        // Frames are bounded by the maximum message size, far below 4 GiB.
        bytes.extend_from_slice(&u32::try_from(length).unwrap_or(u32::MAX).to_be_bytes());
        frame.encode_raw(&mut bytes);
    }
    bytes
}

impl Output {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `frame`, whatever waits before it.
    fn send(&self, frame: &[u8]) {
        self.write(self.lock(), frame);
    }

    /// Writes `frame` unless `limit` bytes or more wait to be written
    /// already: then how many do. Checked under the lock the frame is
    /// queued under, so that calls racing each other never take more.
    fn send_within(&self, frame: &[u8], limit: usize) -> Result<(), usize> {
        let pending = self.lock();
        let waiting = pending.waiting();
        if waiting >= limit {
            return Err(waiting);
        }
        self.write(pending, frame);
        Ok(())
    }

    /// Writes `frame` at once, on the calling thread, when nothing waits
    /// before it and nobody else is writing; else leaves it to whoever
    /// writes. The system call is made outside the lock: callers on the
    /// BEAM's other schedulers never wait for it (a scheduler blocked on
    /// the lock stops every process it runs). Frames left meanwhile are
    /// written next by the same thread, in one write, for a few rounds;
    /// what the socket does not take, and what is left after those
    /// rounds, goes to the writer.
    fn write(&self, mut pending: MutexGuard<'_, Pending>, frame: &[u8]) {
        let socket = match self.socket.get() {
            Some(socket) if !pending.flushing && !pending.direct => socket,
            _ => {
                pending.bytes.extend_from_slice(frame);
                if !pending.flushing && !pending.direct {
                    pending.flushing = true;
                    self.wake.notify_one();
                }
                return;
            }
        };
        pending.direct = true;
        drop(pending);
        let mut batch = Cow::Borrowed(frame);
        let mut rounds = 0;
        loop {
            let outcome = socket.try_write(&batch);
            rounds += 1;
            let mut pending = self.lock();
            pending.writing = 0;
            let (written, failed) = match outcome {
                Ok(n) => (n, false),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => (0, false),
                // The writer meets the error too, and ends the connection:
                // its reader then fails every call on it.
                Err(_) => (0, true),
            };
            if written < batch.len() {
                // What is left of this write goes before what others left.
                let mut rest = batch[written..].to_vec();
                rest.extend_from_slice(&pending.bytes);
                pending.bytes = rest;
            }
            if pending.bytes.is_empty() {
                pending.direct = false;
                return;
            }
            if failed || written < batch.len() || rounds >= DIRECT_ROUNDS {
                pending.direct = false;
                pending.flushing = true;
                self.wake.notify_one();
                return;
            }
            let next = std::mem::take(&mut pending.bytes);
            pending.writing = next.len();
            batch = Cow::Owned(next);
        }
    }
}

/// A call registered on a connection: cancelled if dropped before its end.
struct Open {
    connection: Arc<Connection>,
    id: u64,
    done: bool,
}

impl Drop for Open {
    fn drop(&mut self) {
        if !self.done {
            self.connection.cancel(self.id);
        }
    }
}

/// A unary call sent, waiting for its answer; dropping it before the
/// answer cancels the call.
pub struct Unary {
    ticket: Ticket,
    answer: oneshot::Receiver<Result<Bytes, Status>>,
}

impl Unary {
    /// The response, or the call's failure.
    pub async fn answer(mut self) -> Result<Bytes, Status> {
        (&mut self.answer)
            .await
            // Every route is answered; a lost one reads as the lane closing.
            .unwrap_or_else(|_| Err(transport_failure("the lane closed")))
    }
}

impl Drop for Unary {
    fn drop(&mut self) {
        // Nothing to do once the call has answered.
        self.ticket.cancel();
    }
}

/// Answers a [`Unary`] as tonic would.
struct Replier(oneshot::Sender<Result<Bytes, Status>>);

impl Answer for Replier {
    fn answer(self: Box<Self>, outcome: Outcome) {
        let _ = self.0.send(match outcome {
            Outcome::Response(response) => Ok(response),
            Outcome::Failed(status) => Err(status),
            Outcome::Expired => Err(Status::deadline_exceeded("Deadline Exceeded")),
            Outcome::Cancelled | Outcome::Abandoned => {
                Err(Status::cancelled("the call was cancelled"))
            }
            Outcome::Finished => Err(Status::internal(
                "the worker ended a unary call without a response",
            )),
        });
    }
}

/// The responses of a streamed call, read with [`Responses::message`];
/// dropping it before the end cancels the call.
pub struct Responses {
    call: Open,
    /// futures' channel rather than tokio's: a stream's channel is open for
    /// the whole call, and tokio's holds 1.9 KB from its first message on
    /// (its state padded to cache lines, and a block of 32 events).
    events: futures_channel::mpsc::UnboundedReceiver<Event>,
    /// Responses read since credit was last given back.
    taken: u32,
}

impl Responses {
    fn new(call: Open, events: futures_channel::mpsc::UnboundedReceiver<Event>) -> Self {
        Self {
            call,
            events,
            taken: 0,
        }
    }

    /// The next response, `None` at the end, or the call's failure.
    pub async fn message(&mut self) -> Result<Option<Bytes>, Status> {
        if self.call.done {
            return Ok(None);
        }
        let events = &mut self.events;
        match std::future::poll_fn(|cx| Pin::new(&mut *events).poll_next(cx)).await {
            Some(Event::Message(message)) => {
                self.taken += 1;
                if self.taken >= WINDOW / 2 {
                    self.call
                        .connection
                        .send(self.call.id, lane_frame::Body::Credit(self.taken));
                    self.taken = 0;
                }
                Ok(Some(message))
            }
            Some(Event::End(end)) => {
                self.call.done = true;
                end.map(|()| None)
            }
            None => {
                self.call.done = true;
                Err(self.call.connection.failure())
            }
        }
    }
}

/// The requests of a call whose requests stream ([`Lane::streaming`]):
/// each is written by the thread that sends it, with no task in between.
/// Dropping the last clone half-closes the call.
#[derive(Clone)]
pub struct Requests(Arc<Writer>);

impl Requests {
    /// Sends a request; false when the call is over (nobody would read it).
    pub fn send(&self, message: Vec<u8>) -> bool {
        self.0.send(lane_frame::Body::Message(message))
    }
}

struct Writer {
    /// Weak: a `Requests` kept after its call ended (by a caller that holds
    /// on to it) does not keep a connection the lane let go of open.
    connection: Weak<Connection>,
    id: u64,
}

impl Writer {
    fn send(&self, body: lane_frame::Body) -> bool {
        self.connection
            .upgrade()
            .is_some_and(|connection| connection.send_if_on(self.id, body))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.send(lane_frame::Body::HalfClose(true));
    }
}

/// The connection's life: connect (and, given a `piped` hello, take the
/// pipes it asks for), then write and read until either side fails or
/// nobody holds the connection any more (the lane replaced it and its last
/// call ended).
async fn run(
    connection: Weak<Connection>,
    output: Arc<Output>,
    timer: Arc<Notify>,
    path: PathBuf,
    max_frame: usize,
    reader: Option<Arc<dyn Reader>>,
    piped: Option<LaneHello>,
) {
    let reason = match (UnixStream::connect(&path).await, reader, piped) {
        (Ok(stream), None, None) => {
            let (reader, writer) = stream.into_split();
            // Set once, here; frames sent meanwhile wait for the writer.
            let _ = output.socket.set(Socket::Task(writer));
            let reading = read(&connection, reader, max_frame);
            until_ended(&connection, &output, &timer, reading).await
        }
        (Ok(stream), None, Some(hello)) => {
            match handed_over(
                &connection,
                &timer,
                &path,
                piped_for_task(&output, stream, hello),
            )
            .await
            {
                Ok(receiver) => {
                    let reading = read(&connection, receiver, max_frame);
                    until_ended(&connection, &output, &timer, reading).await
                }
                Err(reason) => reason,
            }
        }
        (Ok(stream), Some(reader), piped) => {
            let opening = external(&connection, &output, stream, piped, max_frame);
            match handed_over(&connection, &timer, &path, opening).await {
                Ok(inbound) => {
                    reader.adopt(inbound.clone());
                    until_ended(&connection, &output, &timer, inbound.wait()).await
                }
                Err(reason) => reason,
            }
        }
        (Err(e), _, _) => format!("cannot connect to the lane at {}: {e}", path.display()),
    };
    if let Some(connection) = connection.upgrade() {
        connection.break_off(reason);
    }
}

/// What `opening` sets up (a connection's pipes, or its reader's
/// descriptor), or why it could not be. Calls wait for the pipes' handover
/// (the worker's loop answers it): their deadlines pass meanwhile, as on a
/// connected socket.
async fn handed_over<T>(
    connection: &Weak<Connection>,
    timer: &Notify,
    path: &std::path::Path,
    opening: impl std::future::Future<Output = io::Result<T>>,
) -> Result<T, String> {
    tokio::select! {
        opened = opening => {
            opened.map_err(|e| format!("cannot read the lane at {}: {e}", path.display()))
        }
        reason = expire(connection, timer) => Err(reason),
    }
}

/// Writes, keeps the deadlines and lets `reading` read until one of them
/// ends the connection; then shuts its socket down, so that the worker
/// closes its pipes (and a reader sees the end of its stream).
async fn until_ended(
    connection: &Weak<Connection>,
    output: &Output,
    timer: &Notify,
    reading: impl std::future::Future<Output = String>,
) -> String {
    let reason = tokio::select! {
        reason = write(output) => reason,
        reason = reading => reason,
        reason = expire(connection, timer) => reason,
    };
    if let Some(socket) = output.socket.get() {
        socket.shutdown();
    }
    reason
}

/// Sets a connection on pipes up for its task (see [`pipes`]): the task
/// writes the one and reads the other.
async fn piped_for_task(
    output: &Output,
    stream: UnixStream,
    hello: LaneHello,
) -> io::Result<tokio::net::unix::pipe::Receiver> {
    let (stream, to_worker, from_worker) = pipes(stream, hello).await?;
    let receiver = tokio::net::unix::pipe::Receiver::from_owned_fd(from_worker)?;
    let socket = stream.into_std()?;
    // Set once, here; frames sent meanwhile wait for the writer.
    let _ = output.socket.set(Socket::Pipe { to_worker, socket });
    Ok(receiver)
}

/// Sets a connection up for a [`Reader`]: the connection's task keeps the
/// socket for writing, the reader gets a descriptor of its own. Given a
/// `piped` hello, the worker's pipes take the socket's place (see [`pipes`]):
/// the task writes one, the reader reads the other.
async fn external(
    connection: &Weak<Connection>,
    output: &Output,
    stream: UnixStream,
    piped: Option<LaneHello>,
    max_frame: usize,
) -> io::Result<Arc<Inbound>> {
    let (socket, read) = match piped {
        None => {
            // Leaves tokio's registration (reads would wake it), nonblocking still.
            let stream = stream.into_std()?;
            let read = OwnedFd::from(stream.try_clone()?);
            (Socket::External(stream), read)
        }
        Some(hello) => {
            let (stream, to_worker, from_worker) = pipes(stream, hello).await?;
            let socket = stream.into_std()?;
            (Socket::Pipe { to_worker, socket }, from_worker)
        }
    };
    let inbound = Arc::new(Inbound {
        fd: read,
        buffer: Mutex::new(BytesMut::new()),
        max_frame,
        connection: connection.clone(),
        end: Mutex::new(None),
        ended: Notify::new(),
    });
    // Set once, here; frames sent meanwhile wait for the writer.
    let _ = output.socket.set(socket);
    Ok(inbound)
}

/// Ends the calls made with [`Lane::call`] whose deadline passed.
async fn expire(connection: &Weak<Connection>, timer: &Notify) -> String {
    let mut next = None;
    loop {
        match next {
            Some(at) => tokio::select! {
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                () = timer.notified() => {}
            },
            None => timer.notified().await,
        }
        let Some(connection) = connection.upgrade() else {
            return "the lane was closed".to_owned();
        };
        next = connection.expire();
    }
}

/// Writes the frames calls could not write themselves, all that are
/// waiting in one write.
async fn write(output: &Output) -> String {
    let Some(socket) = output.socket.get() else {
        return "the lane is not connected".to_owned();
    };
    loop {
        let batch = {
            let mut pending = output.lock();
            // A call writing leaves what it does not write to the writer,
            // and wakes it: the two never write at once.
            if pending.bytes.is_empty() || pending.direct {
                pending.flushing = false;
                None
            } else {
                pending.flushing = true;
                let batch = std::mem::take(&mut pending.bytes);
                pending.writing = batch.len();
                Some(batch)
            }
        };
        match batch {
            Some(batch) => {
                if let Err(e) = write_all(output, socket, &batch).await {
                    return format!("the lane connection failed: {e}");
                }
            }
            None => {
                if output.closed.load(Ordering::Acquire) {
                    return "the lane was closed".to_owned();
                }
                output.wake.notified().await;
            }
        }
    }
}

/// Writes a batch the writer took, counting down what of it waits.
async fn write_all(output: &Output, socket: &Socket, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        socket.writable().await?;
        match socket.try_write(bytes) {
            Ok(n) => {
                bytes = &bytes[n..];
                output.lock().writing = bytes.len();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn read(
    connection: &Weak<Connection>,
    mut socket: impl AsyncRead + Unpin,
    max_frame: usize,
) -> String {
    let mut buffer = BytesMut::with_capacity(64 * 1024);
    loop {
        let frame = match next_frame(&mut socket, &mut buffer, max_frame).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return "the worker closed the lane".to_owned(),
            Err(reason) => return reason,
        };
        let Some(connection) = connection.upgrade() else {
            return "the lane was closed".to_owned();
        };
        if let Err(reason) = connection.route(frame) {
            return reason;
        }
    }
}

/// Reads the next frame; `None` at a clean end of the stream.
async fn next_frame(
    socket: &mut (impl AsyncRead + Unpin),
    buffer: &mut BytesMut,
    max_frame: usize,
) -> Result<Option<LaneFrame>, String> {
    loop {
        if let Some(frame) = take_frame(buffer, max_frame)? {
            return Ok(Some(frame));
        }
        match socket.read_buf(buffer).await {
            Ok(0) if buffer.is_empty() => return Ok(None),
            Ok(0) => return Err("the worker closed the lane in the middle of a frame".to_owned()),
            Ok(_) => {}
            Err(e) => return Err(format!("reading from the lane failed: {e}")),
        }
    }
}

/// The length of the frame at the start of `buffer`, once it is all there.
fn whole_frame(buffer: &[u8]) -> Option<usize> {
    let header: [u8; 4] = buffer.get(..4)?.try_into().ok()?;
    let length = u32::from_be_bytes(header) as usize;
    (buffer.len() >= 4 + length).then_some(length)
}

/// Takes the frame at the start of `buffer` if it is all there (making
/// room for the rest otherwise); fails on a frame over `max_frame` bytes
/// (as soon as its length is known) or a malformed one.
fn take_frame(buffer: &mut BytesMut, max_frame: usize) -> Result<Option<LaneFrame>, String> {
    if buffer.len() < 4 {
        return Ok(None);
    }
    let length = u32::from_be_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]) as usize;
    if length > max_frame {
        return Err(format!(
            "the worker sent a frame of {length} bytes, over the maximum of {max_frame}"
        ));
    }
    if buffer.len() < 4 + length {
        buffer.reserve(4 + length - buffer.len());
        return Ok(None);
    }
    let _ = buffer.split_to(4);
    let frame = buffer.split_to(length).freeze();
    LaneFrame::decode(frame)
        .map(Some)
        .map_err(|e| format!("the worker sent a malformed frame: {e}"))
}

/// The worker's status as tonic would give it, `ErrorDetail` included.
fn status_from(status: LaneStatus) -> Status {
    let mut metadata = MetadataMap::new();
    if !status.detail.is_empty() {
        metadata.insert_bin(DETAIL_KEY, MetadataValue::from_bytes(&status.detail));
    }
    Status::with_metadata(Code::from(status.code), status.message, metadata)
}

/// A failure of the connection rather than a status from the worker.
fn transport_failure(reason: &str) -> Status {
    Status::from_error(Box::new(io::Error::new(
        io::ErrorKind::BrokenPipe,
        reason.to_owned(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{is_transport_failure, Error};
    use crate::proto::ErrorDetail;
    use tokio::io::AsyncWriteExt;
    use tokio::net::UnixListener;
    use tokio::sync::mpsc;

    /// A worker's side of the lane, scripted by each test.
    struct Peer {
        socket: UnixStream,
        buffer: BytesMut,
    }

    impl Peer {
        async fn next(&mut self) -> LaneFrame {
            let (mut reader, _) = self.socket.split();
            next_frame(&mut reader, &mut self.buffer).await
        }

        async fn send(&mut self, call: u64, body: lane_frame::Body) {
            self.socket.write_all(&framed(call, body)).await.unwrap();
        }
    }

    /// The next frame from `reader`, `buffer` holding what was read past it.
    async fn next_frame(
        reader: &mut (impl tokio::io::AsyncRead + Unpin),
        buffer: &mut BytesMut,
    ) -> LaneFrame {
        let frame = loop {
            if buffer.len() >= 4 {
                let n = u32::from_be_bytes(buffer[..4].try_into().unwrap()) as usize;
                if buffer.len() >= 4 + n {
                    let _ = buffer.split_to(4);
                    break buffer.split_to(n).freeze();
                }
            }
            assert!(reader.read_buf(buffer).await.unwrap() > 0, "closed");
        };
        LaneFrame::decode(frame).unwrap()
    }

    /// The bytes of the frame of `call` with `body`, its length ahead.
    fn framed(call: u64, body: lane_frame::Body) -> Vec<u8> {
        let frame = LaneFrame {
            call,
            body: Some(body),
        }
        .encode_to_vec();
        let mut bytes = (frame.len() as u32).to_be_bytes().to_vec();
        bytes.extend(frame);
        bytes
    }

    /// A worker's side of a connection on pipes: the socket it took the
    /// hello on, and its ends of the two pipes it handed over.
    struct PipedPeer {
        socket: UnixStream,
        reads: tokio::net::unix::pipe::Receiver,
        writes: tokio::net::unix::pipe::Sender,
        buffer: BytesMut,
    }

    impl PipedPeer {
        async fn next(&mut self) -> LaneFrame {
            next_frame(&mut self.reads, &mut self.buffer).await
        }

        async fn send(&mut self, call: u64, body: lane_frame::Body) {
            self.writes.write_all(&framed(call, body)).await.unwrap();
        }
    }

    /// Accepts a connection, takes its first frame (which must be a hello
    /// asking for pipes) and hands the client its ends of two pipes, as
    /// the worker does: the peer, and the hello.
    async fn accept_piped(listener: &UnixListener) -> (PipedPeer, LaneHello) {
        let mut peer = accept(listener).await;
        let hello = match peer.next().await.body {
            Some(lane_frame::Body::Hello(hello)) if hello.pipes => hello,
            other => panic!("expected a hello asking for pipes, got {other:?}"),
        };
        let (reads, to_worker) = pipe();
        let (from_worker, writes) = pipe();
        send_descriptors(
            &peer.socket,
            &[to_worker.as_raw_fd(), from_worker.as_raw_fd()],
        );
        let piped = PipedPeer {
            socket: peer.socket,
            reads: tokio::net::unix::pipe::Receiver::from_owned_fd(reads).unwrap(),
            writes: tokio::net::unix::pipe::Sender::from_owned_fd(writes).unwrap(),
            buffer: peer.buffer,
        };
        (piped, hello)
    }

    /// A pipe: its read end, its write end.
    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors, which are ours.
        unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            (
                std::os::fd::FromRawFd::from_raw_fd(fds[0]),
                std::os::fd::FromRawFd::from_raw_fd(fds[1]),
            )
        }
    }

    /// Sends one byte on `socket` with `fds` (SCM_RIGHTS).
    fn send_descriptors(socket: &UnixStream, fds: &[RawFd]) {
        let byte = [0u8];
        let mut iov = libc::iovec {
            iov_base: byte.as_ptr() as *mut libc::c_void,
            iov_len: 1,
        };
        let len = u32::try_from(std::mem::size_of_val(fds)).unwrap();
        // SAFETY: a control buffer of the size the macros give, filled in
        // as they lay it out; the descriptors are open for the call.
        unsafe {
            let space = libc::CMSG_SPACE(len) as usize;
            let mut control = vec![0u64; space.div_ceil(8)];
            let mut message: libc::msghdr = std::mem::zeroed();
            message.msg_iov = &mut iov;
            message.msg_iovlen = 1;
            message.msg_control = control.as_mut_ptr().cast();
            message.msg_controllen = space as _;
            let header = libc::CMSG_FIRSTHDR(&message);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(len) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(header).cast::<RawFd>(),
                fds.len(),
            );
            assert_eq!(libc::sendmsg(socket.as_raw_fd(), &message, 0), 1);
        }
    }

    async fn lane(authorization: Option<&str>) -> (Lane, UnixListener, PathBuf) {
        // Tests run in parallel threads: a clock's reading may repeat, a count does not.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "synapse-lane-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lane.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let lane = Lane::new(path, authorization.map(str::to_owned), 1024);
        (lane, listener, dir)
    }

    async fn accept(listener: &UnixListener) -> Peer {
        Peer {
            socket: listener.accept().await.unwrap().0,
            buffer: BytesMut::new(),
        }
    }

    /// A call's end, with no error.
    fn ok_status() -> lane_frame::Body {
        lane_frame::Body::Status(LaneStatus {
            code: 0,
            ..Default::default()
        })
    }

    fn start_of(frame: &LaneFrame) -> &LaneStart {
        match &frame.body {
            Some(lane_frame::Body::Start(start)) => start,
            other => panic!("expected a start, got {other:?}"),
        }
    }

    /// A [`Reader`] as the NIF's works: something outside the lane's tasks
    /// reads the adopted descriptor and hands the bytes on. Here, a task
    /// polling a descriptor of its own; it says what it adopted.
    struct PollingReader(mpsc::UnboundedSender<Arc<Inbound>>);

    impl Reader for PollingReader {
        fn adopt(&self, inbound: Arc<Inbound>) {
            let _ = self.0.send(inbound.clone());
            tokio::spawn(async move {
                // A descriptor of the reader's own, as the NIF's Port has;
                // the inbound's stays open as long as the inbound.
                let fd = inbound.fd.try_clone().unwrap();
                // SAFETY: the `AsyncFd` owns the descriptor until dropped.
                let socket = unsafe { AsyncFd::register(fd) }.unwrap();
                let mut chunk = vec![0; 7];
                loop {
                    let mut ready = socket.readable().await.unwrap();
                    match ready.try_io(|fd| {
                        let read = unsafe {
                            libc::read(fd.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len())
                        };
                        usize::try_from(read).map_err(|_| io::Error::last_os_error())
                    }) {
                        Ok(Ok(0)) => {
                            inbound.ended("the worker closed the lane".into());
                            return;
                        }
                        Ok(Ok(n)) => {
                            // A tiny budget, to go through `Ok(true)`.
                            let mut more = inbound.received(&chunk[..n], Duration::ZERO);
                            while let Ok(true) = more {
                                more = inbound.received(&[], Duration::ZERO);
                            }
                            if more.is_err() {
                                return;
                            }
                        }
                        Ok(Err(e)) => {
                            inbound.ended(format!("reading failed: {e}"));
                            return;
                        }
                        Err(_would_block) => {}
                    }
                }
            });
        }
    }

    /// The next connection the reader adopted, if one comes within seconds.
    async fn adopted(inbounds: &mut mpsc::UnboundedReceiver<Arc<Inbound>>) -> Arc<Inbound> {
        tokio::time::timeout(Duration::from_secs(5), inbounds.recv())
            .await
            .expect("no connection adopted")
            .unwrap()
    }

    async fn lane_with_reader() -> (
        Lane,
        UnixListener,
        PathBuf,
        mpsc::UnboundedReceiver<Arc<Inbound>>,
    ) {
        lane_with_reader_and_token(None).await
    }

    async fn lane_with_reader_and_token(
        authorization: Option<&str>,
    ) -> (
        Lane,
        UnixListener,
        PathBuf,
        mpsc::UnboundedReceiver<Arc<Inbound>>,
    ) {
        let (lane, listener, dir) = lane(authorization).await;
        let (adopted, inbounds) = mpsc::unbounded_channel();
        let lane = lane.with_reader(Arc::new(PollingReader(adopted)));
        (lane, listener, dir, inbounds)
    }

    /// The first two responses of a stream of "/p.S/S", which the worker
    /// is to answer with one message, "m", and its end.
    type StreamOfOne =
        tokio::task::JoinHandle<(Result<Option<Bytes>, Status>, Result<Option<Bytes>, Status>)>;

    fn stream_of_one(lane: &Arc<Lane>) -> StreamOfOne {
        let lane = lane.clone();
        tokio::spawn(async move {
            let mut responses = lane.server_streaming("/p.S/S", vec![], None).unwrap();
            let first = responses.message().await;
            (first, responses.message().await)
        })
    }

    /// The worker's side of [`stream_of_one`], on a socket or on pipes.
    trait Answers {
        async fn next(&mut self) -> LaneFrame;
        async fn send(&mut self, call: u64, body: lane_frame::Body);
    }

    impl Answers for Peer {
        async fn next(&mut self) -> LaneFrame {
            Peer::next(self).await
        }

        async fn send(&mut self, call: u64, body: lane_frame::Body) {
            Peer::send(self, call, body).await;
        }
    }

    impl Answers for PipedPeer {
        async fn next(&mut self) -> LaneFrame {
            PipedPeer::next(self).await
        }

        async fn send(&mut self, call: u64, body: lane_frame::Body) {
            PipedPeer::send(self, call, body).await;
        }
    }

    async fn answer_stream_of_one(peer: &mut impl Answers) {
        let frame = peer.next().await;
        assert_eq!(start_of(&frame).method, "/p.S/S");
        peer.send(frame.call, lane_frame::Body::Message(b"m".to_vec()))
            .await;
        peer.send(frame.call, ok_status()).await;
    }

    async fn assert_streamed_one(streamed: StreamOfOne) {
        let (first, end) = streamed.await.unwrap();
        assert_eq!(first.unwrap(), Some(Bytes::from_static(b"m")));
        assert_eq!(end.unwrap(), None);
    }

    /// Whether `fd` is a pipe.
    fn is_pipe(fd: RawFd) -> bool {
        // SAFETY: `stat` is written by fstat before it is read.
        unsafe {
            let mut stat: libc::stat = std::mem::zeroed();
            assert_eq!(libc::fstat(fd, &mut stat), 0);
            stat.st_mode & libc::S_IFMT == libc::S_IFIFO
        }
    }

    #[tokio::test]
    async fn a_lane_with_pipes_carries_each_connection_on_the_pipes_it_asks_for() {
        for token in [None, Some("Bearer secret")] {
            let (lane, listener, dir, mut inbounds) = lane_with_reader_and_token(token).await;
            let lane = Arc::new(lane.with_pipes());
            // Each connection's hello, on the socket, asks for pipes, with
            // the token if any.
            let hello_of = |threads| LaneHello {
                authorization: token.unwrap_or_default().into(),
                threads,
                pipes: true,
            };
            let call = {
                let lane = lane.clone();
                tokio::spawn(async move { lane.unary("/p.S/M", b"request".to_vec(), None).await })
            };
            let (mut peer, hello) = accept_piped(&listener).await;
            assert_eq!(hello, hello_of(false));
            // The call comes on the pipe, its answer goes back on the other,
            // which the reader reads.
            let frame = peer.next().await;
            assert_eq!(start_of(&frame).message, b"request");
            let inbound = adopted(&mut inbounds).await;
            assert!(is_pipe(inbound.fd()));
            // Close-on-exec: no program the process starts holds it.
            // SAFETY: fcntl with integer arguments.
            let flags = unsafe { libc::fcntl(inbound.fd(), libc::F_GETFD) };
            assert_ne!(flags & libc::FD_CLOEXEC, 0);
            peer.send(frame.call, lane_frame::Body::Message(b"response".to_vec()))
                .await;
            assert_eq!(
                call.await.unwrap().unwrap(),
                Bytes::from_static(b"response")
            );
            // Nothing more came on the socket.
            let mut byte = [0u8; 1];
            assert_eq!(
                peer.socket.try_read(&mut byte).unwrap_err().kind(),
                io::ErrorKind::WouldBlock
            );
            // A threads call takes a connection of its own, on pipes too,
            // which the reader reads as well.
            let (answer, mut outcome) = told();
            let _ticket = lane
                .call("/p.S/T", vec![], None, Answerer::Threads, answer)
                .ok()
                .unwrap();
            let (mut threads, hello) = accept_piped(&listener).await;
            assert_eq!(hello, hello_of(true));
            let frame = threads.next().await;
            assert_eq!(start_of(&frame).method, "/p.S/T");
            assert!(is_pipe(adopted(&mut inbounds).await.fd()));
            threads
                .send(frame.call, lane_frame::Body::Message(b"ok".to_vec()))
                .await;
            assert_eq!(outcome.recv().await, Some("response"));
            // A stream takes a connection of its own, on pipes too, which
            // its task reads.
            let streamed = stream_of_one(&lane);
            let (mut streams, hello) = accept_piped(&listener).await;
            assert_eq!(hello, hello_of(false));
            answer_stream_of_one(&mut streams).await;
            assert_streamed_one(streamed).await;
            assert!(inbounds.try_recv().is_err());
            // The lane let go of, every connection ends for the worker:
            // their sockets are shut down, and the pipes they read end.
            lane.close();
            drop(lane);
            for peer in [&mut peer, &mut threads, &mut streams] {
                let mut rest = Vec::new();
                assert_eq!(peer.socket.read_to_end(&mut rest).await.unwrap(), 0);
                assert_eq!(peer.reads.read_to_end(&mut rest).await.unwrap(), 0);
            }
            std::fs::remove_dir_all(dir).unwrap();
        }
    }

    #[tokio::test]
    async fn a_calls_deadline_passes_while_the_worker_has_not_handed_its_pipes_over() {
        // On a connection a reader reads, and on one its task reads.
        for with_reader in [true, false] {
            let (lane, listener, dir) = lane(None).await;
            let (adopted, _inbounds) = mpsc::unbounded_channel();
            let lane = if with_reader {
                lane.with_reader(Arc::new(PollingReader(adopted)))
            } else {
                lane
            };
            let lane = Arc::new(lane.with_pipes());
            let call = {
                let lane = lane.clone();
                tokio::spawn(async move {
                    lane.unary("/p.S/M", vec![], Some(Duration::from_millis(200)))
                        .await
                })
            };
            // The worker reads the hello, and hands nothing over (its loop is busy).
            let mut busy = accept(&listener).await;
            assert!(matches!(
                busy.next().await.body,
                Some(lane_frame::Body::Hello(LaneHello { pipes: true, .. }))
            ));
            let status = tokio::time::timeout(Duration::from_secs(5), call)
                .await
                .expect("the deadline did not end the call")
                .unwrap()
                .unwrap_err();
            assert_eq!(status.code(), Code::DeadlineExceeded, "{status}");
            drop(busy);
            std::fs::remove_dir_all(dir).unwrap();
        }
    }

    #[tokio::test]
    async fn a_worker_that_hands_no_pipes_over_fails_the_calls_and_the_next_call_connects_again() {
        let (lane, listener, dir, mut inbounds) = lane_with_reader().await;
        let lane = Arc::new(lane.with_pipes());
        let call = {
            let lane = lane.clone();
            tokio::spawn(async move { lane.unary("/p.S/M", vec![], None).await })
        };
        // The worker closes the socket instead (as for a wrong token).
        let mut refusing = accept(&listener).await;
        assert!(matches!(
            refusing.next().await.body,
            Some(lane_frame::Body::Hello(LaneHello { pipes: true, .. }))
        ));
        drop(refusing);
        let status = call.await.unwrap().unwrap_err();
        assert!(is_transport_failure(&status), "{status}");
        assert!(
            status.to_string().contains("the worker closed the lane"),
            "{status}"
        );
        // The next call connects again.
        let again = {
            let lane = lane.clone();
            tokio::spawn(async move { lane.unary("/p.S/M", vec![], None).await })
        };
        let (mut peer, _) = accept_piped(&listener).await;
        let frame = peer.next().await;
        let _ = adopted(&mut inbounds).await;
        peer.send(frame.call, lane_frame::Body::Message(b"ok".to_vec()))
            .await;
        assert_eq!(again.await.unwrap().unwrap(), Bytes::from_static(b"ok"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn unary_calls_with_a_reader_take_its_connection_and_streams_a_task_read_one() {
        let (lane, listener, dir, mut inbounds) = lane_with_reader().await;
        let lane = Arc::new(lane);
        let unary = {
            let lane = lane.clone();
            tokio::spawn(async move { lane.unary("/p.S/M", b"one".to_vec(), None).await })
        };
        let mut answers = accept(&listener).await;
        let frame = answers.next().await;
        assert_eq!(start_of(&frame).message, b"one");
        // Split in chunks smaller than a frame by the reader.
        answers
            .send(
                frame.call,
                lane_frame::Body::Message(b"a longer response".to_vec()),
            )
            .await;
        assert_eq!(
            unary.await.unwrap().unwrap(),
            Bytes::from_static(b"a longer response")
        );
        adopted(&mut inbounds).await;

        let streamed = stream_of_one(&lane);
        answer_stream_of_one(&mut accept(&listener).await).await;
        assert_streamed_one(streamed).await;
        // The stream took no connection of the reader's.
        assert!(inbounds.try_recv().is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_reader_connection_that_ends_fails_its_calls_and_the_next_call_connects_again() {
        let (lane, listener, dir, mut inbounds) = lane_with_reader().await;
        let lane = Arc::new(lane);
        let (told, mut outcomes) = told();
        let _ticket = lane
            .call("/p.S/M", vec![], None, Answerer::Loop, told)
            .unwrap_or_else(|_| panic!("not taken"));
        let mut peer = accept(&listener).await;
        let _ = peer.next().await;
        drop(peer);
        assert_eq!(outcomes.recv().await, Some("broken"));
        let first = adopted(&mut inbounds).await;
        assert!(first.connection.upgrade().is_none_or(|c| c.is_broken()));

        let again = {
            let lane = lane.clone();
            tokio::spawn(async move { lane.unary("/p.S/M", vec![], None).await })
        };
        let mut peer = accept(&listener).await;
        let frame = peer.next().await;
        peer.send(frame.call, lane_frame::Body::Message(b"ok".to_vec()))
            .await;
        assert_eq!(again.await.unwrap().unwrap(), Bytes::from_static(b"ok"));
        assert!(!Arc::ptr_eq(&first, &adopted(&mut inbounds).await));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_frame_over_the_maximum_from_a_reader_fails_the_call_and_ends_the_connection() {
        let (lane, listener, dir, mut inbounds) = lane_with_reader().await;
        let call = tokio::spawn(async move { lane.unary("/p.S/M", vec![], None).await });
        let mut peer = accept(&listener).await;
        let _ = peer.next().await;
        peer.socket
            .write_all(&(1024 + FRAME_SLACK as u32 + 1).to_be_bytes())
            .await
            .unwrap();
        let status = call.await.unwrap().unwrap_err();
        assert!(is_transport_failure(&status));
        assert!(status.to_string().contains("over the maximum"), "{status}");
        // The connection's task ends it: the worker sees its end.
        let mut rest = Vec::new();
        assert_eq!(peer.socket.read_to_end(&mut rest).await.unwrap(), 0);
        let inbound = adopted(&mut inbounds).await;
        assert!(inbound.received(&[], Duration::ZERO).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_unary_call_is_one_frame_each_way() {
        let (lane, listener, dir) = lane(Some("Bearer secret")).await;
        let call = tokio::spawn(async move {
            lane.unary(
                "/p.S/M",
                b"request".to_vec(),
                Some(Duration::from_millis(1500)),
            )
            .await
        });
        let mut peer = accept(&listener).await;
        let hello = peer.next().await;
        assert_eq!(
            hello.body,
            Some(lane_frame::Body::Hello(LaneHello {
                authorization: "Bearer secret".into(),
                threads: false,
                pipes: false,
            }))
        );
        let frame = peer.next().await;
        let start = start_of(&frame);
        assert_eq!(start.method, "/p.S/M");
        assert_eq!(start.message, b"request");
        assert_eq!(start.timeout_us, 1_500_000);
        peer.send(frame.call, lane_frame::Body::Message(b"response".to_vec()))
            .await;
        assert_eq!(
            call.await.unwrap().unwrap(),
            Bytes::from_static(b"response")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_status_is_classified_as_the_grpc_path_would() {
        let (lane, listener, dir) = lane(None).await;
        let call = tokio::spawn(async move { lane.unary("/p.S/M", vec![], None).await });
        let mut peer = accept(&listener).await;
        let frame = peer.next().await;
        assert_eq!(start_of(&frame).timeout_us, 0);
        let detail = ErrorDetail {
            // Not the kind the code implies: the detail's kind must win.
            kind: crate::proto::ErrorKind::LoadFailed.into(),
            message: "no agent".into(),
            ..Default::default()
        };
        peer.send(
            frame.call,
            lane_frame::Body::Status(LaneStatus {
                code: Code::NotFound as i32,
                message: "status message".into(),
                detail: detail.encode_to_vec(),
            }),
        )
        .await;
        let status = call.await.unwrap().unwrap_err();
        assert!(!is_transport_failure(&status));
        let error = Error::from_status(&status);
        assert_eq!(error.kind_name(), "load_failed");
        assert_eq!(error.to_string(), "no agent");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_broken_connection_fails_every_call_as_a_transport_failure() {
        let (lane, listener, dir) = lane(None).await;
        let lane = Arc::new(lane);
        let calls: Vec<_> = (0..3)
            .map(|_| {
                let lane = lane.clone();
                tokio::spawn(async move { lane.unary("/p.S/M", vec![], None).await })
            })
            .collect();
        let mut peer = accept(&listener).await;
        for _ in 0..3 {
            peer.next().await;
        }
        drop(peer);
        for call in calls {
            let status = call.await.unwrap().unwrap_err();
            assert!(is_transport_failure(&status), "{status:?}");
        }
        // The next call connects again.
        let again = tokio::spawn(async move { lane.unary("/p.S/M", vec![], None).await });
        let mut peer = accept(&listener).await;
        let frame = peer.next().await;
        peer.send(frame.call, lane_frame::Body::Message(b"ok".to_vec()))
            .await;
        assert_eq!(again.await.unwrap().unwrap(), Bytes::from_static(b"ok"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_call_dropped_before_its_answer_is_cancelled() {
        let (lane, listener, dir) = lane(None).await;
        let lane = Arc::new(lane);
        let first = lane.clone();
        let call = tokio::spawn(async move { first.unary("/p.S/M", vec![], None).await });
        let mut peer = accept(&listener).await;
        let frame = peer.next().await;
        call.abort();
        let cancel = peer.next().await;
        assert_eq!(cancel.call, frame.call);
        assert_eq!(cancel.body, Some(lane_frame::Body::Cancel(true)));
        // A late answer for it is dropped; the connection goes on.
        peer.send(frame.call, lane_frame::Body::Message(b"late".to_vec()))
            .await;
        let next = tokio::spawn(async move { lane.unary("/p.S/M", vec![], None).await });
        let frame = peer.next().await;
        assert_ne!(frame.call, cancel.call);
        peer.send(frame.call, lane_frame::Body::Message(b"fresh".to_vec()))
            .await;
        assert_eq!(next.await.unwrap().unwrap(), Bytes::from_static(b"fresh"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// An [`Answer`] that reports its outcome on a channel.
    struct Told(mpsc::UnboundedSender<&'static str>);

    impl Answer for Told {
        fn answer(self: Box<Self>, outcome: Outcome) {
            let _ = self.0.send(match outcome {
                Outcome::Response(_) => "response",
                Outcome::Failed(status) if is_transport_failure(&status) => "broken",
                Outcome::Failed(_) => "status",
                Outcome::Expired => "expired",
                Outcome::Cancelled => "cancelled",
                Outcome::Abandoned => "abandoned",
                Outcome::Finished => "finished",
            });
        }
    }

    /// A [`Handler`] that reports what it is handed on a channel: each
    /// response as it is, and its end as [`Told`] words it.
    struct Handled(mpsc::UnboundedSender<Vec<u8>>);

    impl Handler for Handled {
        fn message(&self, message: Bytes) {
            let _ = self.0.send(message.to_vec());
        }

        fn end(&self, outcome: Outcome) {
            let (told, mut word) = told();
            told.answer(outcome);
            let word = word.try_recv().unwrap();
            let _ = self.0.send(format!("end: {word}").into_bytes());
        }
    }

    fn handled() -> (Arc<Handled>, mpsc::UnboundedReceiver<Vec<u8>>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (Arc::new(Handled(sender)), receiver)
    }

    #[tokio::test]
    async fn a_handled_call_takes_the_readers_connection_and_hands_on_its_responses_in_order() {
        let (lane, listener, dir, mut inbounds) = lane_with_reader().await;
        let (handler, mut handed) = handled();
        let (requests, _ticket, _held) = lane
            .handled("/p.S/Bidi", b"one".to_vec(), None, handler)
            .unwrap();
        let mut peer = accept(&listener).await;
        adopted(&mut inbounds).await;
        // The start and the first request, with the window's credit.
        let frame = peer.next().await;
        let id = frame.call;
        assert_eq!(start_of(&frame).credit, WINDOW);
        assert_eq!(
            peer.next().await.body,
            Some(lane_frame::Body::Message(b"one".to_vec()))
        );
        assert!(requests.send(b"two".to_vec()));
        assert_eq!(
            peer.next().await.body,
            Some(lane_frame::Body::Message(b"two".to_vec()))
        );
        // Handed on as they are read, credit back every half window.
        for n in 0..WINDOW {
            peer.send(id, lane_frame::Body::Message(vec![n as u8]))
                .await;
        }
        for n in 0..WINDOW {
            assert_eq!(handed.recv().await, Some(vec![n as u8]));
        }
        for _ in 0..2 {
            assert_eq!(
                peer.next().await.body,
                Some(lane_frame::Body::Credit(WINDOW / 2))
            );
        }
        peer.send(id, ok_status()).await;
        assert_eq!(handed.recv().await, Some(b"end: finished".to_vec()));
        // Over: a late response reaches nobody, a request goes nowhere.
        peer.send(id, lane_frame::Body::Message(b"late".to_vec()))
            .await;
        assert!(!requests.send(b"three".to_vec()));
        drop(requests);
        drop(lane);
        assert_eq!(handed.recv().await, None);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_handled_call_is_told_its_end_once_whatever_ends_it() {
        let (lane, listener, dir) = lane(None).await;
        let call = |timeout| {
            let (handler, handed) = handled();
            let (requests, ticket, _held) =
                lane.handled("/p.S/Bidi", vec![], timeout, handler).unwrap();
            (requests, ticket, handed)
        };
        let opened = async |peer: &mut Peer| {
            let frame = peer.next().await;
            let _first = peer.next().await;
            frame.call
        };
        // The worker's status.
        let (_requests, _ticket, mut handed) = call(None);
        let mut peer = accept(&listener).await;
        let id = opened(&mut peer).await;
        let status = LaneStatus {
            code: Code::NotFound as i32,
            ..Default::default()
        };
        peer.send(id, lane_frame::Body::Status(status)).await;
        assert_eq!(handed.recv().await, Some(b"end: status".to_vec()));
        // The caller's cancel: the worker is told; a later response is dropped.
        let (_requests, ticket, mut handed) = call(None);
        let id = opened(&mut peer).await;
        ticket.cancel();
        assert_eq!(handed.recv().await, Some(b"end: cancelled".to_vec()));
        expect_cancel(&mut peer, id).await;
        peer.send(id, lane_frame::Body::Message(b"late".to_vec()))
            .await;
        // The deadline, kept by the connection.
        let (_requests, _ticket, mut short) = call(Some(Duration::from_millis(30)));
        let id = opened(&mut peer).await;
        assert_eq!(short.recv().await, Some(b"end: expired".to_vec()));
        expect_cancel(&mut peer, id).await;
        // Abandoned by its owner.
        let (_requests, _ticket, mut abandoned) = call(None);
        let id = opened(&mut peer).await;
        lane.abandon();
        assert_eq!(abandoned.recv().await, Some(b"end: abandoned".to_vec()));
        expect_cancel(&mut peer, id).await;
        // The connection breaking.
        let (_requests, _ticket, mut broken) = call(None);
        let _ = opened(&mut peer).await;
        drop(peer);
        assert_eq!(broken.recv().await, Some(b"end: broken".to_vec()));
        // Each was told once.
        drop(lane);
        for mut told in [handed, short, abandoned, broken] {
            assert_eq!(told.recv().await, None);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn told() -> (Box<Told>, mpsc::UnboundedReceiver<&'static str>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (Box::new(Told(sender)), receiver)
    }

    async fn expect_cancel(peer: &mut Peer, call: u64) {
        let frame = peer.next().await;
        assert_eq!(frame.call, call);
        assert_eq!(frame.body, Some(lane_frame::Body::Cancel(true)));
    }

    #[tokio::test]
    async fn calls_made_on_many_threads_at_once_reach_the_worker_whole_and_in_order() {
        // Each call writes its own frame outside the lock, or leaves it to
        // the call writing meanwhile, or to the writer once the socket is
        // full (the worker below reads only after every call is made): no
        // frame may be torn or interleaved, and each thread's calls must
        // arrive in the order it made them.
        const THREADS: usize = 8;
        const CALLS: usize = 200;
        const ROUNDS: usize = 10;
        let (lane, listener, dir) = lane(None).await;
        let (answers, mut outcomes) = mpsc::unbounded_channel();
        // Connected first: the calls below write to the socket themselves.
        let first = Box::new(Told(answers.clone()));
        let _ticket = lane.call("/p.S/M", vec![], None, Answerer::Loop, first);
        let mut peer = accept(&listener).await;
        let frame = peer.next().await;
        peer.send(frame.call, lane_frame::Body::Message(vec![]))
            .await;
        assert_eq!(outcomes.recv().await, Some("response"));
        let runtime = tokio::runtime::Handle::current();
        for _round in 0..ROUNDS {
            std::thread::scope(|scope| {
                for thread in 0..THREADS {
                    let (lane, runtime, answers) = (&lane, runtime.clone(), answers.clone());
                    scope.spawn(move || {
                        let _within = runtime.enter();
                        for call in 0..CALLS {
                            // Sizes that vary, so that writes end mid-frame.
                            let mut request = vec![thread as u8; 100 + (call * 37) % 800];
                            request[..2].copy_from_slice(&(call as u16).to_be_bytes());
                            let answer = Box::new(Told(answers.clone()));
                            lane.call("/p.S/M", request, None, Answerer::Loop, answer)
                                .ok()
                                .unwrap();
                        }
                    });
                }
            });
            let mut next = [0u16; THREADS];
            for _ in 0..THREADS * CALLS {
                let frame = peer.next().await;
                let message = &start_of(&frame).message;
                let thread = usize::from(message[2]);
                let call = u16::from_be_bytes([message[0], message[1]]);
                assert_eq!(call, next[thread], "thread {thread}'s calls out of order");
                assert!(message[2..].iter().all(|&byte| usize::from(byte) == thread));
                next[thread] += 1;
                peer.send(frame.call, lane_frame::Body::Message(vec![]))
                    .await;
            }
            for _ in 0..THREADS * CALLS {
                assert_eq!(outcomes.recv().await, Some("response"));
            }
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn an_answered_call_is_told_its_outcome_once_whatever_ends_it() {
        let (lane, listener, dir) = lane(None).await;
        let call = |timeout| {
            let (answer, outcome) = told();
            let ticket = lane
                .call("/p.S/M", vec![], timeout, Answerer::Loop, answer)
                .ok()
                .unwrap();
            (ticket, outcome)
        };
        // A response.
        let (ticket, mut outcome) = call(None);
        let mut peer = accept(&listener).await;
        let frame = peer.next().await;
        peer.send(frame.call, lane_frame::Body::Message(b"ok".to_vec()))
            .await;
        assert_eq!(outcome.recv().await, Some("response"));
        // Too late: nothing is sent, nothing told.
        ticket.cancel();
        // The worker's status.
        let (_ticket, mut outcome) = call(None);
        let frame = peer.next().await;
        let status = LaneStatus {
            code: Code::NotFound as i32,
            ..Default::default()
        };
        peer.send(frame.call, lane_frame::Body::Status(status))
            .await;
        assert_eq!(outcome.recv().await, Some("status"));
        // The caller's cancel: the worker is told.
        let (ticket, mut outcome) = call(None);
        let frame = peer.next().await;
        ticket.cancel();
        assert_eq!(outcome.recv().await, Some("cancelled"));
        expect_cancel(&mut peer, frame.call).await;
        // The deadline, kept by the lane itself: a later call with a longer
        // timeout does not delay an earlier one's.
        let (_ticket, mut short) = call(Some(Duration::from_millis(30)));
        let first = peer.next().await;
        let (_ticket, mut long) = call(Some(Duration::from_secs(60)));
        let second = peer.next().await;
        assert_eq!(short.recv().await, Some("expired"));
        expect_cancel(&mut peer, first.call).await;
        // Abandoned by its owner.
        lane.abandon();
        assert_eq!(long.recv().await, Some("abandoned"));
        expect_cancel(&mut peer, second.call).await;
        // A late answer to any of them is dropped, and each was told once.
        for id in [first.call, second.call] {
            peer.send(id, lane_frame::Body::Message(b"late".to_vec()))
                .await;
        }
        // The connection breaking.
        let (_ticket, mut outcome) = call(Some(Duration::from_secs(60)));
        let _ = peer.next().await;
        drop(peer);
        assert_eq!(outcome.recv().await, Some("broken"));
        for mut told in [short, long, outcome] {
            assert_eq!(told.recv().await, None);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_call_waiting_on_a_connection_let_go_of_is_answered() {
        let (lane, listener, dir) = lane(None).await;
        let (answer, mut outcome) = told();
        let _ticket = lane
            .call("/p.S/M", vec![], None, Answerer::Loop, answer)
            .ok()
            .unwrap();
        let mut peer = accept(&listener).await;
        let _ = peer.next().await;
        lane.close();
        assert_eq!(outcome.recv().await, Some("broken"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The first frame of a connection whose calls the worker's threads
    /// answer.
    fn threads_hello(authorization: &str) -> LaneFrame {
        LaneFrame {
            call: 0,
            body: Some(lane_frame::Body::Hello(LaneHello {
                authorization: authorization.into(),
                threads: true,
                pipes: false,
            })),
        }
    }

    #[tokio::test]
    async fn a_threads_call_takes_a_connection_of_its_own_that_says_threads_in_its_hello() {
        for token in [None, Some("Bearer secret")] {
            let (lane, listener, dir) = lane(token).await;
            let call = |method: &str, answerer| {
                let (answer, outcome) = told();
                let ticket = lane
                    .call(method, b"request".to_vec(), None, answerer, answer)
                    .ok()
                    .unwrap();
                (ticket, outcome)
            };
            // The loop's call: a hello for the token only, never `threads`.
            let (_ticket, mut on_loop) = call("/p.S/Loop", Answerer::Loop);
            let mut loop_peer = accept(&listener).await;
            if let Some(token) = token {
                assert_eq!(
                    loop_peer.next().await.body,
                    Some(lane_frame::Body::Hello(LaneHello {
                        authorization: token.into(),
                        threads: false,
                        pipes: false,
                    }))
                );
            }
            let loop_call = loop_peer.next().await;
            assert_eq!(start_of(&loop_call).method, "/p.S/Loop");
            // The threads' call: a connection of its own, whose first frame
            // is the hello with `threads`, token or not.
            let (_ticket, mut in_threads) = call("/p.S/Sync", Answerer::Threads);
            let mut threads_peer = accept(&listener).await;
            assert_eq!(
                threads_peer.next().await,
                threads_hello(token.unwrap_or_default())
            );
            let threads_call = threads_peer.next().await;
            assert_eq!(start_of(&threads_call).method, "/p.S/Sync");
            assert_eq!(start_of(&threads_call).message, b"request");
            // Later calls take the same connections, with no hello again.
            let (_ticket, in_threads_again) = call("/p.S/Sync2", Answerer::Threads);
            let again = threads_peer.next().await;
            assert_eq!(start_of(&again).method, "/p.S/Sync2");
            let (_ticket, on_loop_again) = call("/p.S/Loop2", Answerer::Loop);
            assert_eq!(start_of(&loop_peer.next().await).method, "/p.S/Loop2");
            // Each connection numbers its calls: an answer reaches the call
            // of its own connection only.
            assert_eq!(threads_call.call, loop_call.call);
            threads_peer
                .send(threads_call.call, lane_frame::Body::Message(b"ok".to_vec()))
                .await;
            assert_eq!(in_threads.recv().await, Some("response"));
            assert!(on_loop.try_recv().is_err());
            loop_peer
                .send(loop_call.call, lane_frame::Body::Message(b"ok".to_vec()))
                .await;
            assert_eq!(on_loop.recv().await, Some("response"));
            // Streams keep the loop's connection (no reader: the same one).
            let responses = lane.server_streaming("/p.S/S", vec![], None).unwrap();
            assert_eq!(start_of(&loop_peer.next().await).method, "/p.S/S");
            // Let go of, both connections end their calls.
            drop(responses);
            drop(lane);
            for mut told in [in_threads_again, on_loop_again] {
                assert_eq!(told.recv().await, Some("broken"));
            }
            std::fs::remove_dir_all(dir).unwrap();
        }
    }

    #[tokio::test]
    async fn a_threads_call_with_a_reader_takes_a_connection_the_reader_reads_too() {
        let (lane, listener, dir, mut inbounds) = lane_with_reader().await;
        let (answer, mut on_loop) = told();
        let _ticket = lane
            .call("/p.S/Loop", vec![], None, Answerer::Loop, answer)
            .ok()
            .unwrap();
        let mut loop_peer = accept(&listener).await;
        let loop_call = loop_peer.next().await;
        assert_eq!(start_of(&loop_call).method, "/p.S/Loop");
        let loop_inbound = adopted(&mut inbounds).await;

        let (answer, mut in_threads) = told();
        let _ticket = lane
            .call("/p.S/Sync", vec![], None, Answerer::Threads, answer)
            .ok()
            .unwrap();
        let mut threads_peer = accept(&listener).await;
        assert_eq!(threads_peer.next().await, threads_hello(""));
        let threads_call = threads_peer.next().await;
        assert_eq!(start_of(&threads_call).method, "/p.S/Sync");
        // A connection of the reader's, not the loop's.
        assert!(!Arc::ptr_eq(&loop_inbound, &adopted(&mut inbounds).await));
        threads_peer
            .send(threads_call.call, lane_frame::Body::Message(b"ok".to_vec()))
            .await;
        assert_eq!(in_threads.recv().await, Some("response"));
        loop_peer
            .send(loop_call.call, lane_frame::Body::Message(b"ok".to_vec()))
            .await;
        assert_eq!(on_loop.recv().await, Some("response"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn abandon_and_close_end_the_threads_calls_too() {
        let (lane, listener, dir) = lane(None).await;
        let call = |answerer| {
            let (answer, outcome) = told();
            let ticket = lane
                .call("/p.S/M", vec![], None, answerer, answer)
                .ok()
                .unwrap();
            (ticket, outcome)
        };
        let (_ticket, mut on_loop) = call(Answerer::Loop);
        let mut loop_peer = accept(&listener).await;
        let loop_id = loop_peer.next().await.call;
        let (_ticket, mut in_threads) = call(Answerer::Threads);
        let mut threads_peer = accept(&listener).await;
        let _hello = threads_peer.next().await;
        let threads_id = threads_peer.next().await.call;
        lane.abandon();
        assert_eq!(on_loop.recv().await, Some("abandoned"));
        assert_eq!(in_threads.recv().await, Some("abandoned"));
        expect_cancel(&mut loop_peer, loop_id).await;
        expect_cancel(&mut threads_peer, threads_id).await;
        // The connection goes on; let go of, its calls end.
        let (_ticket, mut in_threads) = call(Answerer::Threads);
        let _next = threads_peer.next().await;
        lane.close();
        assert_eq!(in_threads.recv().await, Some("broken"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn streamed_responses_give_credit_back_as_they_are_read() {
        let (lane, listener, dir) = lane(None).await;
        let (requests, mut responses) = lane.streaming("/p.S/Bidi", b"one".to_vec(), None).unwrap();
        let call = tokio::spawn(async move {
            let mut got = vec![];
            while let Some(message) = responses.message().await? {
                got.push(message);
            }
            Ok::<_, Status>(got)
        });
        let mut peer = accept(&listener).await;
        let frame = peer.next().await;
        let id = frame.call;
        assert_eq!(start_of(&frame).credit, WINDOW);
        assert!(start_of(&frame).message.is_empty());
        assert_eq!(
            peer.next().await.body,
            Some(lane_frame::Body::Message(b"one".to_vec()))
        );
        assert!(requests.clone().send(b"two".to_vec()));
        assert_eq!(
            peer.next().await.body,
            Some(lane_frame::Body::Message(b"two".to_vec()))
        );
        // The last clone gone, the requests end.
        drop(requests);
        assert_eq!(
            peer.next().await.body,
            Some(lane_frame::Body::HalfClose(true))
        );
        for n in 0..WINDOW {
            peer.send(id, lane_frame::Body::Message(vec![n as u8]))
                .await;
        }
        // Read as they arrive: credit comes back every half window.
        for _ in 0..2 {
            assert_eq!(
                peer.next().await.body,
                Some(lane_frame::Body::Credit(WINDOW / 2))
            );
        }
        peer.send(id, ok_status()).await;
        assert_eq!(call.await.unwrap().unwrap().len(), WINDOW as usize);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_request_sent_after_its_call_ended_goes_nowhere() {
        let (lane, listener, dir) = lane(None).await;
        let (requests, mut responses) = lane.streaming("/p.S/Bidi", b"one".to_vec(), None).unwrap();
        let mut peer = accept(&listener).await;
        let id = peer.next().await.call;
        let _first = peer.next().await;
        peer.send(id, ok_status()).await;
        assert!(responses.message().await.unwrap().is_none());
        assert!(!requests.send(b"late".to_vec()));
        // Nor is the end of its requests told: the next frame is the next call's.
        drop(requests);
        let _next = lane.streaming("/p.S/Other", b"two".to_vec(), None).unwrap();
        let frame = peer.next().await;
        assert_eq!(start_of(&frame).method, "/p.S/Other");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_frame_over_the_maximum_breaks_the_connection() {
        let (lane, listener, dir) = lane(None).await;
        let call = tokio::spawn(async move { lane.unary("/p.S/M", vec![], None).await });
        let mut peer = accept(&listener).await;
        let frame = peer.next().await;
        peer.send(
            frame.call,
            lane_frame::Body::Message(vec![0; 1024 + FRAME_SLACK + 1]),
        )
        .await;
        let status = call.await.unwrap().unwrap_err();
        assert!(is_transport_failure(&status));
        assert!(status.message().contains("over the maximum"), "{status:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A worker that stops reading (its event loop blocked): the requests of
    /// later calls must not pile up in the client without bound. Past
    /// [`backlog_limit`], each new call is refused at once, by whichever
    /// method it is made; the calls already made still send their cancels,
    /// requests and credit, and get their answers; once the worker reads
    /// again, new calls go out.
    #[tokio::test]
    async fn a_worker_that_does_not_read_gets_no_new_calls_past_the_backlog_limit() {
        let (lane, listener, dir) = lane(None).await;
        let limit = backlog_limit(1024);
        // In flight before the worker stops reading: a call, a handled call.
        let (answer, mut cancelled) = told();
        let ticket = lane
            .call("/p.S/M", vec![], None, Answerer::Loop, answer)
            .ok()
            .unwrap();
        let (handler, mut handed) = handled();
        let (requests, _handled, _held) = lane
            .handled("/p.S/Bidi", b"first".to_vec(), None, handler)
            .unwrap();
        let mut peer = accept(&listener).await;
        let cancelled_id = peer.next().await.call;
        let handled_id = peer.next().await.call;
        let _first = peer.next().await;
        // It reads nothing more: the socket fills, then the backlog.
        let request = vec![7; 1024 * 1024];
        let mut admitted = Vec::new();
        let refused = loop {
            assert!(
                admitted.len() < 2 * limit / request.len(),
                "{} calls of {} bytes taken, none refused",
                admitted.len(),
                request.len()
            );
            let (answer, outcome) = told();
            match lane.call("/p.S/Big", request.clone(), None, Answerer::Loop, answer) {
                Ok(ticket) => admitted.push((ticket, outcome)),
                Err((status, _answer)) => {
                    // Handed back untold.
                    assert!(outcome.is_empty());
                    break status;
                }
            }
        };
        assert!(admitted.len() * request.len() >= limit - 1024 * 1024);
        // Refused, not broken: the connection and its calls go on.
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert!(!is_transport_failure(&refused));
        assert!(
            refused
                .message()
                .contains("the worker is not reading its requests"),
            "{refused:?}"
        );
        assert_eq!(Error::from_status(&refused).kind_name(), "unavailable");
        // Every way of making a call.
        let (other, _) = handled();
        let handled_refusal = lane
            .handled("/p.S/Refused", vec![], None, other)
            .err()
            .unwrap();
        let streaming_refusal = lane.streaming("/p.S/Refused", vec![], None).err().unwrap();
        let server_streaming_refusal = lane
            .server_streaming("/p.S/Refused", vec![], None)
            .err()
            .unwrap();
        let unary_refusal = lane.unary("/p.S/Refused", vec![], None).await.unwrap_err();
        for status in [
            handled_refusal,
            streaming_refusal,
            server_streaming_refusal,
            unary_refusal,
        ] {
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        }
        // The calls already made still send what they have to: a request,
        // a cancel, credit for the responses taken.
        assert!(requests.send(b"tool result".to_vec()));
        ticket.cancel();
        assert_eq!(cancelled.recv().await, Some("cancelled"));
        let (big_ticket, mut big_outcome) = admitted.remove(0);
        big_ticket.cancel();
        assert_eq!(big_outcome.recv().await, Some("cancelled"));
        for n in 0..WINDOW / 2 {
            peer.send(handled_id, lane_frame::Body::Message(vec![n as u8]))
                .await;
            assert_eq!(handed.recv().await, Some(vec![n as u8]));
        }
        // The worker reads again: all of it arrives, none of the refused.
        let mut expected = vec![
            (
                handled_id,
                lane_frame::Body::Message(b"tool result".to_vec()),
            ),
            (cancelled_id, lane_frame::Body::Cancel(true)),
            (big_ticket.id, lane_frame::Body::Cancel(true)),
            (handled_id, lane_frame::Body::Credit(WINDOW / 2)),
        ];
        let mut started = 0;
        while !expected.is_empty() {
            let frame = peer.next().await;
            let body = frame.body.clone().unwrap();
            if let lane_frame::Body::Start(start) = &body {
                assert_eq!(start.method, "/p.S/Big");
                started += 1;
                continue;
            }
            assert_eq!((frame.call, body), expected.remove(0));
        }
        // Every call taken was sent; the calls in flight are answered.
        assert_eq!(started, admitted.len() + 1);
        let (ticket, mut outcome) = admitted.pop().unwrap();
        peer.send(ticket.id, lane_frame::Body::Message(b"ok".to_vec()))
            .await;
        assert_eq!(outcome.recv().await, Some("response"));
        // And a new call goes out.
        let (answer, mut outcome) = told();
        let _ticket = lane
            .call("/p.S/After", vec![], None, Answerer::Loop, answer)
            .ok()
            .unwrap();
        let frame = peer.next().await;
        assert_eq!(start_of(&frame).method, "/p.S/After");
        peer.send(frame.call, lane_frame::Body::Message(b"ok".to_vec()))
            .await;
        assert_eq!(outcome.recv().await, Some("response"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// `call::stream_on_lane` (synapse_native) holds its call's lock across
    /// `Lane::handled`, and its handler's `end` takes that lock. A
    /// `Lane::close` racing the call may leave the caller's hold on the
    /// connection the last one, whose drop ends the calls on it: that must
    /// not happen inside `handled`, but where the caller lets go of [`Held`].
    #[test]
    fn a_handled_call_is_never_ended_inside_handled_on_its_callers_thread() {
        thread_local! {
            static INSIDE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        }
        struct Reentered(Arc<AtomicBool>);
        impl Handler for Reentered {
            fn message(&self, _message: Bytes) {}
            fn end(&self, _outcome: Outcome) {
                if INSIDE.with(std::cell::Cell::get) {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
        }
        // Never driven: no connection's task runs, so none breaks.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _entered = runtime.enter();
        let dir = std::env::temp_dir().join(format!("synapse-lane-held-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lane.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let lane = Arc::new(Lane::new(path, None, 1024));
        let stop = Arc::new(AtomicBool::new(false));
        let closer = {
            let (lane, stop) = (lane.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    lane.close();
                }
            })
        };
        let reentered = Arc::new(AtomicBool::new(false));
        let mut calls = 0;
        while !reentered.load(Ordering::SeqCst) && calls < 20_000 {
            let handler = Arc::new(Reentered(reentered.clone()));
            INSIDE.with(|inside| inside.set(true));
            let call = lane.handled("/p.S/Bidi", vec![], None, handler);
            INSIDE.with(|inside| inside.set(false));
            drop(call);
            calls += 1;
        }
        stop.store(true, Ordering::Relaxed);
        closer.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            !reentered.load(Ordering::SeqCst),
            "a call was ended inside Lane::handled, after {calls} calls"
        );
    }
}
