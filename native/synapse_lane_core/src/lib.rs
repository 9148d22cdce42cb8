//! `synapse_python._lane_core`: the bookkeeping of a worker's lane connection
//! of sync calls (`synapse_python._lane_threads`), in native code.
//!
//! The worker's threads still read the connection, run the functions and
//! write the answers, in Python; what each call costs besides (its frame
//! parsed, its entry waiting then running, its deadline, its answer framed,
//! and what the watcher thread looks at every tick) is kept here under one
//! mutex, taken without the GIL's help and never held while Python runs.
//! Every status a call can end with is still made in Python, from what this
//! module answers: the same words as the connection the event loop reads.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prost::Message as _;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

mod proto {
    #![allow(clippy::all, clippy::pedantic)]
    include!(concat!(env!("OUT_DIR"), "/synapse.v1.rs"));
}

use proto::lane_frame::Body;
use proto::LaneFrame;

/// A frame's length, ahead of it (big-endian, as `_lane_frames.HEADER`).
const HEADER_BYTES: usize = 4;

/// A call read from the connection, waiting for a thread.
struct Waiting {
    method: usize,
    message: Vec<u8>,
    deadline: Option<Instant>,
}

/// A call a thread runs.
struct Running {
    method: usize,
    deadline: Option<Instant>,
    started: Instant,
    /// Ended while its function ran: its thread is stuck until it returns.
    abandoned: bool,
}

#[derive(Default)]
struct State {
    /// What the reading thread has of a frame.
    buffer: Vec<u8>,
    /// The waiting calls' ids in the order read; a cancelled one stays
    /// here, gone from `waiting`, until it comes up.
    order: VecDeque<u64>,
    waiting: HashMap<u64, Waiting>,
    running: HashMap<u64, Running>,
    /// Frames that end calls, handed out to be written and not yet written.
    ending: usize,
    reading: bool,
    threads: usize,
    idle: usize,
    /// Calls started so far, for the watcher to see them come.
    started: u64,
    watcher_sleeps: bool,
    /// The watcher's: ticks with nothing to see, and `started` when it looked.
    quiet: u32,
    seen: u64,
    drain_wanted: bool,
    closed: bool,
    released: bool,
    stopping: bool,
}

/// What a call of this module changed that Python has to hear about, once
/// the mutex is let go: the pool's count of stuck threads, and `drained`.
#[derive(Default)]
struct Effects {
    stuck: isize,
    drained: bool,
}

impl State {
    fn has_calls(&self) -> bool {
        !self.waiting.is_empty()
            || self.ending > 0
            || self.running.values().any(|call| !call.abandoned)
    }

    fn settle_drained(&mut self, effects: &mut Effects) {
        if self.drain_wanted && !self.has_calls() {
            self.drain_wanted = false;
            effects.drained = true;
        }
    }

    fn count_written(&mut self, effects: &mut Effects) {
        self.ending = self.ending.saturating_sub(1);
        self.settle_drained(effects);
    }

    /// Every running call not ended yet is abandoned: its thread is stuck.
    fn abandon_running(&mut self, effects: &mut Effects) -> Vec<(u64, usize)> {
        let mut abandoned = Vec::new();
        for (id, call) in &mut self.running {
            if !call.abandoned {
                call.abandoned = true;
                effects.stuck += 1;
                abandoned.push((*id, call.method));
            }
        }
        abandoned
    }

    /// The waiting calls, in the order read, taken out.
    fn take_waiting(&mut self) -> Vec<(u64, usize)> {
        let mut taken = Vec::with_capacity(self.waiting.len());
        for id in self.order.drain(..) {
            if let Some(call) = self.waiting.remove(&id) {
                taken.push((id, call.method));
            }
        }
        taken
    }
}

/// What a thread is to do next.
enum Next {
    Call(u64, usize, Vec<u8>),
    Read,
    End,
}

/// Why a call is refused as it is read, for Python to say in grpc's words.
enum Refusal {
    NotThreaded,
    Unknown,
    Stopping,
    TooLarge(usize),
}

impl Refusal {
    fn kind(&self) -> &'static str {
        match self {
            Refusal::NotThreaded => "not_threaded",
            Refusal::Unknown => "unknown",
            Refusal::Stopping => "stopping",
            Refusal::TooLarge(_) => "too_large",
        }
    }
}

/// Calls ended here, by id, with their method's name (for Python to write
/// their statuses and log them).
type Ended = Vec<(u64, Py<PyString>)>;

/// A break of the lane protocol, for Python's `protocol_error(kind, detail)`.
struct Broken(&'static str, String);

/// The bookkeeping of one connection (see the module doc). Made by the
/// connection's Python object, whose threads call it.
#[pyclass(frozen, module = "synapse_python._lane_core")]
struct Core {
    state: Mutex<State>,
    /// The number of running calls, kept with `State::running` for
    /// `busy`, which the event loop asks before each of its polls.
    running: AtomicUsize,
    /// Idle threads wait here for a call to run or their turn to read.
    work: Condvar,
    /// The watcher waits here while no call comes.
    calls_come: Condvar,
    /// The methods answered here, by name, and their names as Python strings.
    threaded: HashMap<String, usize>,
    names: Vec<Py<PyString>>,
    /// Every method of the worker, to say why one not answered here is refused.
    known: HashSet<String>,
    max_message_bytes: usize,
    max_frame: usize,
    max_threads: usize,
    tick: Duration,
    quiet_ticks: u32,
    idle_timeout: Duration,
    /// `count_stuck(change)`, `settle_drained()`, `protocol_error(kind, detail)`.
    count_stuck: PyObject,
    settle_drained: PyObject,
    protocol_error: PyObject,
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while it was held left nothing half done that matters
        // more than answering the calls left.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn apply(&self, py: Python<'_>, effects: Effects) -> PyResult<()> {
        if effects.stuck != 0 {
            self.count_stuck.call1(py, (effects.stuck,))?;
        }
        if effects.drained {
            self.settle_drained.call0(py)?;
        }
        Ok(())
    }

    fn broken(&self, py: Python<'_>, broken: Broken) -> PyErr {
        match self.protocol_error.call1(py, (broken.0, broken.1)) {
            Ok(error) => PyErr::from_value(error.into_bound(py)),
            Err(error) => error,
        }
    }

    fn name(&self, py: Python<'_>, method: usize) -> Py<PyString> {
        self.names[method].clone_ref(py)
    }

    /// The next thing to do, if there is one now (never waits).
    fn take_next(&self, state: &mut State) -> Option<Next> {
        if state.closed {
            state.threads = state.threads.saturating_sub(1);
            return Some(Next::End);
        }
        while let Some(id) = state.order.pop_front() {
            let Some(call) = state.waiting.remove(&id) else {
                continue; // cancelled, or its deadline passed, while it waited
            };
            state.running.insert(
                id,
                Running {
                    method: call.method,
                    deadline: call.deadline,
                    started: Instant::now(),
                    abandoned: false,
                },
            );
            state.started += 1;
            self.running.store(state.running.len(), Ordering::Relaxed);
            if state.watcher_sleeps {
                state.watcher_sleeps = false;
                self.calls_come.notify_one();
            }
            return Some(Next::Call(id, call.method, call.message));
        }
        if !state.reading {
            state.reading = true;
            return Some(Next::Read);
        }
        None
    }

    /// The next thing to do, waited for (without the GIL).
    fn wait_next(&self) -> Next {
        let mut state = self.lock();
        loop {
            if let Some(next) = self.take_next(&mut state) {
                return next;
            }
            state.idle += 1;
            let (guard, waited) = self
                .work
                .wait_timeout(state, self.idle_timeout)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            state = guard;
            state.idle -= 1;
            if waited.timed_out() && state.waiting.is_empty() && state.reading {
                // Another thread reads: this one is not needed.
                state.threads = state.threads.saturating_sub(1);
                return Next::End;
            }
        }
    }

    /// The whole frames of the buffer, after `data` (the rest waits for more).
    fn frames(&self, state: &mut State, data: &[u8]) -> Result<Vec<LaneFrame>, Broken> {
        state.buffer.extend_from_slice(data);
        let buffer = &state.buffer;
        let mut frames = Vec::new();
        let mut offset = 0;
        while buffer.len() - offset >= HEADER_BYTES {
            let mut length = [0u8; HEADER_BYTES];
            length.copy_from_slice(&buffer[offset..offset + HEADER_BYTES]);
            let length = u32::from_be_bytes(length) as usize;
            if length > self.max_frame {
                return Err(Broken("too_long", length.to_string()));
            }
            let end = offset + HEADER_BYTES + length;
            if end > buffer.len() {
                break;
            }
            let frame = LaneFrame::decode(&buffer[offset + HEADER_BYTES..end])
                .map_err(|error| Broken("unparsable", error.to_string()))?;
            frames.push(frame);
            offset = end;
        }
        state.buffer.drain(..offset);
        Ok(frames)
    }

    /// A call started (read at `now`) left waiting, or why it is refused.
    fn admit(
        &self,
        state: &mut State,
        call: u64,
        start: proto::LaneStart,
        now: Instant,
    ) -> Result<Option<(Refusal, String)>, Broken> {
        if state.waiting.contains_key(&call) || state.running.contains_key(&call) {
            return Err(Broken("started_twice", call.to_string()));
        }
        let Some(&method) = self.threaded.get(&start.method) else {
            let refusal = if self.known.contains(&start.method) {
                Refusal::NotThreaded
            } else {
                Refusal::Unknown
            };
            return Ok(Some((refusal, start.method)));
        };
        if state.stopping {
            return Ok(Some((Refusal::Stopping, start.method)));
        }
        if start.message.len() > self.max_message_bytes {
            return Ok(Some((Refusal::TooLarge(start.message.len()), start.method)));
        }
        let deadline = (start.timeout_us > 0)
            .then(|| now.checked_add(Duration::from_micros(start.timeout_us)))
            .flatten();
        state.order.push_back(call);
        state.waiting.insert(
            call,
            Waiting {
                method,
                message: start.message,
                deadline,
            },
        );
        Ok(None)
    }

    /// The client cancelled `call`: it expects nothing more. Its method's
    /// name when it had not ended, for the log.
    fn cancel(&self, state: &mut State, call: u64, effects: &mut Effects) -> Option<usize> {
        let method = if let Some(waiting) = state.waiting.remove(&call) {
            waiting.method
        } else {
            let running = state.running.get_mut(&call)?;
            if running.abandoned {
                return None; // ended already
            }
            running.abandoned = true;
            effects.stuck += 1;
            running.method
        };
        state.settle_drained(effects);
        Some(method)
    }
}

#[pymethods]
impl Core {
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (
        threaded, known, *, max_message_bytes, max_frame, max_threads, tick, quiet_ticks,
        idle_timeout, count_stuck, settle_drained, protocol_error
    ))]
    fn new(
        py: Python<'_>,
        threaded: Vec<String>,
        known: Vec<String>,
        max_message_bytes: usize,
        max_frame: usize,
        max_threads: usize,
        tick: f64,
        quiet_ticks: u32,
        idle_timeout: f64,
        count_stuck: PyObject,
        settle_drained: PyObject,
        protocol_error: PyObject,
    ) -> PyResult<Self> {
        let seconds = |value: f64| {
            Duration::try_from_secs_f64(value)
                .map_err(|error| pyo3::exceptions::PyValueError::new_err(error.to_string()))
        };
        let names = threaded
            .iter()
            .map(|name| PyString::intern(py, name).unbind())
            .collect();
        Ok(Self {
            state: Mutex::new(State::default()),
            running: AtomicUsize::new(0),
            work: Condvar::new(),
            calls_come: Condvar::new(),
            threaded: threaded
                .into_iter()
                .enumerate()
                .map(|(i, m)| (m, i))
                .collect(),
            names,
            known: known.into_iter().collect(),
            max_message_bytes,
            max_frame,
            max_threads,
            tick: seconds(tick)?,
            quiet_ticks,
            idle_timeout: seconds(idle_timeout)?,
            count_stuck,
            settle_drained,
            protocol_error,
        })
    }

    /// Threads running a call, abandoned ones included (a moment's view).
    #[getter]
    fn busy(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Threads serving the connection, reserved ones included (a moment's view).
    #[getter]
    fn threads(&self) -> usize {
        self.lock().threads
    }

    /// No more frames are taken; the threads end.
    #[getter]
    fn closed(&self) -> bool {
        self.lock().closed
    }

    /// A thread's next thing to do, waited for while there is none:
    /// `(call, method, message)` to run, `True` to read the connection,
    /// `None` to end. `written`: the thread wrote a frame that ends a call
    /// since it last asked (counted here, with this taking of the mutex).
    fn next(&self, py: Python<'_>, written: bool) -> PyResult<PyObject> {
        let mut effects = Effects::default();
        let next = {
            let mut state = self.lock();
            if written {
                state.count_written(&mut effects);
            }
            self.take_next(&mut state)
        };
        let next = match next {
            Some(next) => next,
            None => py.allow_threads(|| self.wait_next()),
        };
        self.apply(py, effects)?;
        Ok(match next {
            Next::Call(id, method, message) => {
                let call = (id, self.name(py, method), PyBytes::new(py, &message));
                call.into_pyobject(py)?.into_any().unbind()
            }
            Next::Read => true.into_pyobject(py)?.to_owned().into_any().unbind(),
            Next::End => py.None(),
        })
    }

    /// Takes what the reading thread read (not empty): the calls its frames
    /// start wait for a thread, their cancels end them. Answers None, or
    /// `(refused, cancelled)`: `(call, reason, method, size)` of each call
    /// refused as it came (the frame that ends it, counted as one, is the
    /// caller's to write, then `written`), and the method of each call
    /// cancelled. Raises the protocol's error when the client broke it.
    fn take(&self, py: Python<'_>, data: &[u8]) -> PyResult<PyObject> {
        let mut effects = Effects::default();
        let mut refused = Vec::new();
        let mut cancelled = Vec::new();
        let outcome = {
            let mut state = self.lock();
            state.reading = false;
            if state.closed {
                Ok(())
            } else {
                self.frames(&mut state, data).and_then(|frames| {
                    // The calls of one read came together.
                    let now = Instant::now();
                    for frame in frames {
                        match frame.body {
                            Some(Body::Start(start)) => {
                                let call = frame.call;
                                if let Some(refusal) = self.admit(&mut state, call, start, now)? {
                                    refused.push((call, refusal));
                                }
                            }
                            Some(Body::Cancel(_)) => {
                                cancelled.extend(self.cancel(&mut state, frame.call, &mut effects))
                            }
                            // A unary call has its request; a second hello changes nothing.
                            Some(
                                Body::Message(_)
                                | Body::HalfClose(_)
                                | Body::Credit(_)
                                | Body::Hello(_),
                            ) => {}
                            Some(Body::Status(_)) => {
                                return Err(Broken("no_known_body", "status".to_owned()))
                            }
                            None => return Err(Broken("no_known_body", "None".to_owned())),
                        }
                    }
                    if !refused.is_empty() {
                        state.ending += 1;
                    }
                    Ok(())
                })
            }
        };
        self.apply(py, effects)?;
        outcome.map_err(|broken| self.broken(py, broken))?;
        if refused.is_empty() && cancelled.is_empty() {
            return Ok(py.None());
        }
        let refused: Vec<_> = refused
            .into_iter()
            .map(|(call, (refusal, method))| {
                let size = match refusal {
                    Refusal::TooLarge(size) => size,
                    _ => 0,
                };
                (call, refusal.kind(), method, size)
            })
            .collect();
        let cancelled: Vec<_> = cancelled.into_iter().map(|m| self.name(py, m)).collect();
        Ok((refused, cancelled).into_pyobject(py)?.into_any().unbind())
    }

    /// The reading thread read nothing (the connection ended).
    fn read_nothing(&self) {
        self.lock().reading = false;
    }

    /// A thread ran `call`: the frame that ends it, counted as one to be
    /// written (then `next(True)` or `written()`), or None when it was
    /// abandoned meanwhile. `data` is its response message, or with
    /// `status` the whole frame of the status it ends with.
    fn finish(
        &self,
        py: Python<'_>,
        call: u64,
        data: &[u8],
        status: bool,
    ) -> PyResult<Option<Py<PyBytes>>> {
        let mut effects = Effects::default();
        let ended = {
            let mut state = self.lock();
            // Whoever takes the call out of `running` ends it, exactly once.
            let running = state.running.remove(&call);
            self.running.store(state.running.len(), Ordering::Relaxed);
            match running {
                Some(running) if running.abandoned => {
                    effects.stuck -= 1;
                    state.settle_drained(&mut effects);
                    false
                }
                Some(_) => {
                    state.ending += 1;
                    true
                }
                None => false,
            }
        };
        self.apply(py, effects)?;
        if !ended {
            return Ok(None);
        }
        if status {
            return Ok(Some(PyBytes::new(py, data).unbind()));
        }
        let frame = LaneFrame {
            call,
            body: Some(Body::Message(data.to_vec())),
        };
        let length = frame.encoded_len();
        let framed = PyBytes::new_with(py, HEADER_BYTES + length, |out| {
            out[..HEADER_BYTES].copy_from_slice(&(length as u32).to_be_bytes());
            let mut body = &mut out[HEADER_BYTES..];
            frame
                .encode(&mut body)
                .map_err(|error| pyo3::exceptions::PyRuntimeError::new_err(error.to_string()))
        })?;
        Ok(Some(framed.unbind()))
    }

    /// A frame counted as ending calls (refusals, deadlines) was written.
    fn written(&self, py: Python<'_>) -> PyResult<()> {
        let mut effects = Effects::default();
        self.lock().count_written(&mut effects);
        self.apply(py, effects)
    }

    /// Reserves a thread to start, unless there are `max_threads` or the
    /// connection closed; `thread_failed` if it could not be started.
    fn reserve_thread(&self) -> bool {
        let mut state = self.lock();
        if state.threads >= self.max_threads || state.closed {
            return false;
        }
        state.threads += 1;
        true
    }

    /// A thread reserved, or serving, is gone: it could not start, or
    /// failed (`reading`: while its turn to read; `written`: with a frame
    /// written and not yet counted).
    #[pyo3(signature = (reading=false, written=false))]
    fn thread_failed(&self, py: Python<'_>, reading: bool, written: bool) -> PyResult<()> {
        let mut effects = Effects::default();
        {
            let mut state = self.lock();
            state.threads = state.threads.saturating_sub(1);
            if reading {
                state.reading = false;
            }
            if written {
                state.count_written(&mut effects);
            }
        }
        self.apply(py, effects)
    }

    /// The watcher's wait before a tick: at once while calls come, else,
    /// after `quiet_ticks` with none, until one starts. False once closed.
    fn watch(&self, py: Python<'_>) -> bool {
        py.allow_threads(|| {
            let mut state = self.lock();
            loop {
                if state.closed {
                    return false;
                }
                if !state.running.is_empty()
                    || !state.waiting.is_empty()
                    || state.started != state.seen
                {
                    state.quiet = 0;
                    state.seen = state.started;
                } else {
                    state.quiet += 1;
                }
                if state.quiet < self.quiet_ticks {
                    return true;
                }
                state.watcher_sleeps = true;
                while state.watcher_sleeps && !state.closed {
                    state = self
                        .calls_come
                        .wait(state)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                state.quiet = 0;
            }
        })
    }

    /// The watcher's tick: the calls whose deadline passed end (`(call,
    /// method)` of each, in one frame counted as one to be written, then
    /// `written`); when every thread is held up by a call that has run for
    /// a tick while there is something to do, idle threads are woken and
    /// the number of threads to start more is answered (reserved already).
    fn check(&self, py: Python<'_>) -> PyResult<(Ended, usize)> {
        let mut effects = Effects::default();
        let (expired, more) = {
            let mut state = self.lock();
            let now = Instant::now();
            let passed = |deadline: Option<Instant>| deadline.is_some_and(|at| at <= now);
            let mut expired = Vec::new();
            let late: Vec<u64> = state
                .order
                .iter()
                .filter(|id| {
                    state
                        .waiting
                        .get(id)
                        .is_some_and(|call| passed(call.deadline))
                })
                .copied()
                .collect();
            for id in late {
                if let Some(call) = state.waiting.remove(&id) {
                    expired.push((id, call.method));
                }
            }
            for (id, call) in &mut state.running {
                if !call.abandoned && passed(call.deadline) {
                    call.abandoned = true;
                    effects.stuck += 1;
                    expired.push((*id, call.method));
                }
            }
            if !expired.is_empty() {
                state.ending += 1;
            }
            let mut more = 0;
            let to_do = state.waiting.len() + usize::from(!state.reading);
            if to_do > 0 {
                // A thread neither idle, reading nor running a call is on its
                // way to the next thing to do: nothing is held up while one is.
                let on_their_way = state.threads as isize
                    - state.idle as isize
                    - state.running.len() as isize
                    - isize::from(state.reading);
                let held_up = state
                    .running
                    .values()
                    .all(|call| now.duration_since(call.started) >= self.tick);
                if on_their_way == 0 && held_up {
                    let woken = to_do.min(state.idle);
                    for _ in 0..woken {
                        self.work.notify_one();
                    }
                    while more < to_do - woken && state.threads < self.max_threads && !state.closed
                    {
                        state.threads += 1;
                        more += 1;
                    }
                }
            }
            (expired, more)
        };
        self.apply(py, effects)?;
        let expired = expired
            .into_iter()
            .map(|(id, method)| (id, self.name(py, method)))
            .collect();
        Ok((expired, more))
    }

    /// No call read from now on is run: it is refused UNAVAILABLE.
    fn refuse_new(&self) {
        self.lock().stopping = true;
    }

    /// Ends every call: `(call, method)` of those not ended yet, waiting
    /// ones first (the caller writes their statuses), the running ones
    /// abandoned.
    fn stop(&self, py: Python<'_>) -> PyResult<Ended> {
        let mut effects = Effects::default();
        let ended = {
            let mut state = self.lock();
            let mut ended = state.take_waiting();
            ended.extend(state.abandon_running(&mut effects));
            ended
        };
        self.apply(py, effects)?;
        Ok(ended
            .into_iter()
            .map(|(id, method)| (id, self.name(py, method)))
            .collect())
    }

    /// Takes no more frames: calls still waiting are dropped, those running
    /// abandoned, every thread woken. Answers `(first, release)`: whether
    /// this closed it, and whether the caller is to let the descriptors go
    /// now (once, and never while a thread reads them).
    fn close(&self, py: Python<'_>) -> PyResult<(bool, bool)> {
        let mut effects = Effects::default();
        let answer = {
            let mut state = self.lock();
            let first = !state.closed;
            if first {
                state.closed = true;
                state.take_waiting();
                state.abandon_running(&mut effects);
                state.settle_drained(&mut effects);
                self.work.notify_all();
                self.calls_come.notify_all();
            }
            let release = !state.reading && !state.released;
            state.released = state.released || release;
            (first, release)
        };
        self.apply(py, effects)?;
        Ok(answer)
    }

    /// Whether a call read has not ended; when one has not, `settle_drained`
    /// is called once none is left.
    fn want_drained(&self) -> bool {
        let mut state = self.lock();
        let left = state.has_calls();
        state.drain_wanted = state.drain_wanted || left;
        left
    }
}

#[pymodule]
fn _lane_core(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Core>()
}
