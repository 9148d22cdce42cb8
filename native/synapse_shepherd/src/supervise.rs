//! The shepherd's life: read the config, start the worker, relay its output
//! and the BEAM's commands, and report how it ended.
//!
//! Blocking reads happen on helper threads (the BEAM's stdin, the worker's
//! stdout and stderr, and a waiter); they all feed one channel read by the
//! main thread, which is the only writer of frames and the only one that
//! signals the worker. The main thread also forked the worker and must stay
//! alive until the end for `PR_SET_PDEATHSIG` to mean "the shepherd died".

use std::io::{self, Read};
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::lines::{LineSplitter, Piece};
use crate::protocol::{
    self, decode_command, read_frame, Command, Config, ConfigError, ExitKind, Inbound,
    READY_PREFIX, SPAWN_FAILED_CODE, TAG_EXIT, TAG_FAILED, TAG_LOG, TAG_PID, TAG_READY, TAG_STDERR,
    TAG_STDOUT,
};
use crate::spawn::{signal_group, spawn_worker, Spawned};

/// How long output is still drained after the worker exited without any
/// coming (a descendant that escaped could hold the pipes open forever),
/// and in all: the output already written is relayed as fast as the BEAM
/// acknowledges it, but not forever.
const DRAIN_IDLE: Duration = Duration::from_secs(1);
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// Upper bound on how long the main loop sleeps, so that a termination
/// signal received by the shepherd is acted upon promptly.
const TICK: Duration = Duration::from_millis(100);

/// How often the parent pid is compared with the original one, as a fallback
/// for platforms without `PR_SET_PDEATHSIG` and for a stdin that never
/// reports EOF; and how often adopted descendants that exited are reaped.
const PARENT_POLL: Duration = Duration::from_secs(1);

/// Signal (SIGTERM/SIGINT/SIGHUP) received by the shepherd, or 0.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(sig: libc::c_int) {
    // An atomic store is async-signal-safe; the main loop does the work.
    STOP_SIGNAL.store(sig, Ordering::SeqCst);
}

/// How long descendants the worker left behind (adopted by the shepherd,
/// its subreaper) are hunted after the worker exited.
const ORPHAN_HUNT: Duration = Duration::from_secs(1);

/// Which of the worker's output pipes a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
    Log,
}

impl Stream {
    fn tag(self) -> u8 {
        match self {
            Self::Stdout => TAG_STDOUT,
            Self::Stderr => TAG_STDERR,
            Self::Log => TAG_LOG,
        }
    }
}

/// Output frames the shepherd may still send before the BEAM acknowledges
/// some: the flow control between the worker's pipes and the BEAM's
/// mailbox. Readers take one unit before relaying a piece and wait while
/// there is none, so a worker that writes faster than the BEAM handles its
/// output blocks in `write`, and the BEAM's memory stays bounded.
struct Credit {
    units: Mutex<i64>,
    available: Condvar,
}

impl Credit {
    fn new(window: u32) -> Self {
        Self {
            units: Mutex::new(i64::from(window)),
            available: Condvar::new(),
        }
    }

    /// Waits for a unit and takes it.
    fn take(&self) {
        let mut units = self.units.lock().unwrap_or_else(PoisonError::into_inner);
        while *units <= 0 {
            units = self
                .available
                .wait(units)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *units -= 1;
    }

    /// Takes a unit without waiting, for the shepherd's own diagnostics: the
    /// BEAM acknowledges them like any output frame.
    fn charge(&self) {
        *self.units.lock().unwrap_or_else(PoisonError::into_inner) -= 1;
    }

    fn give(&self, count: u32) {
        *self.units.lock().unwrap_or_else(PoisonError::into_inner) += i64::from(count);
        self.available.notify_all();
    }
}

/// One of the worker's output pipes, read on its own thread.
type Pipe = Box<dyn Read + Send>;

/// Everything the main thread reacts to.
enum Event {
    Command(Command),
    StdinClosed,
    Output(Stream, Piece),
    OutputClosed,
    /// The worker terminated; it is still an unreaped zombie, so its pgid
    /// stays reserved until the main thread reaps it.
    WorkerExited,
}

/// The frame writer towards the BEAM. Write errors mean the BEAM is gone;
/// they are remembered and further output is dropped, never a panic.
struct Port {
    out: io::Stdout,
    broken: bool,
    /// Set once the worker runs: diagnostics then count against it.
    credit: Option<Arc<Credit>>,
}

impl Port {
    fn new() -> Self {
        Self {
            out: io::stdout(),
            broken: false,
            credit: None,
        }
    }

    fn send(&mut self, tag: u8, payload: &[u8]) {
        if !self.broken && protocol::write_frame(&mut self.out, tag, payload).is_err() {
            self.broken = true;
        }
    }

    /// Reports a problem of the shepherd itself, on the worker's stderr
    /// channel so that it lands in the same log.
    fn diag(&mut self, message: &str) {
        if let Some(credit) = &self.credit {
            credit.charge();
        }
        self.send(
            TAG_STDERR,
            format!("synapse-shepherd: {message}").as_bytes(),
        );
    }

    fn exit(&mut self, kind: ExitKind) {
        let payload = kind.encode();
        self.send(TAG_EXIT, &payload[1..]);
    }
}

/// Runs the shepherd to completion. Returns once the final "X" frame has
/// been sent; the caller exits the process, which also ends the helper
/// threads still blocked in reads.
pub fn run() {
    // Before any thread exists, so that every thread inherits the mask.
    prepare_signals();
    become_subreaper();
    let original_ppid = parent_pid();
    let mut port = Port::new();

    let config = match read_config(&mut io::stdin()) {
        Ok(config) => config,
        Err(err) => {
            port.send(TAG_FAILED, format!("synapse-shepherd: {err}").as_bytes());
            port.exit(ExitKind::Code(SPAWN_FAILED_CODE));
            return;
        }
    };

    let spawned = match spawn_worker(&config) {
        Ok(spawned) => spawned,
        Err(err) => {
            port.send(TAG_FAILED, err.to_string().as_bytes());
            remove_cleanup_dir(&mut port, config.cleanup.as_deref());
            port.exit(ExitKind::Code(SPAWN_FAILED_CODE));
            return;
        }
    };

    let mut supervisor = Supervisor::start(spawned, &config, port, original_ppid);
    let kind = supervisor.run();
    remove_cleanup_dir(&mut supervisor.port, config.cleanup.as_deref());
    supervisor.port.exit(kind);
}

fn read_config<R: Read>(input: &mut R) -> Result<Config, ConfigError> {
    match read_frame(input) {
        Ok(Inbound::Frame(payload)) => Config::parse(&payload),
        Ok(Inbound::TooLarge(len)) => Err(ConfigError::TooLarge(len)),
        Ok(Inbound::Eof) | Err(_) => Err(ConfigError::Missing),
        Ok(Inbound::Truncated) => Err(ConfigError::Truncated("the frame")),
    }
}

/// Makes the shepherd's own signal state sane whatever it inherited, and
/// routes termination requests to the main loop.
fn prepare_signals() {
    // SAFETY: plain libc calls on locally owned, initialised structures,
    // made before any other thread exists.
    unsafe {
        // With SIGCHLD ignored (as the BEAM has it, and ignored dispositions
        // are inherited) children are reaped by the kernel and their exit
        // status is lost.
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);

        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());

        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as usize;
            // Restart interrupted reads: the helper threads should not see
            // spurious EINTR errors.
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// Makes the shepherd the parent of every process the worker leaves
/// behind: a subprocess whose parent exits is adopted by the shepherd rather
/// than by init, so that none outlives the worker, even one that left the
/// worker's process group (see [`Supervisor::reap`]).
fn become_subreaper() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}

fn parent_pid() -> libc::pid_t {
    // SAFETY: getppid cannot fail and has no preconditions.
    unsafe { libc::getppid() }
}

fn remove_cleanup_dir(port: &mut Port, dir: Option<&Path>) {
    let Some(dir) = dir else { return };
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => port.diag(&format!("cannot remove {}: {err}", dir.display())),
    }
}

/// State of a running worker.
struct Supervisor {
    child: Child,
    pid: u32,
    grace: Duration,
    port: Port,
    events: Receiver<Event>,
    /// Keeps the channel connected even once every helper thread is done,
    /// so that `recv_timeout` only ever times out.
    _keepalive: Sender<Event>,
    original_ppid: libc::pid_t,
    next_parent_poll: Instant,
    /// Set once a stop was requested (SIGTERM sent).
    stopping: bool,
    /// When SIGKILL is due, while a stop is in progress.
    kill_at: Option<Instant>,
    ready_sent: bool,
    open_streams: usize,
    credit: Arc<Credit>,
}

impl Supervisor {
    fn start(
        spawned: Spawned,
        config: &Config,
        mut port: Port,
        original_ppid: libc::pid_t,
    ) -> Self {
        let Spawned { mut child, log } = spawned;
        let pid = child.id();
        port.send(TAG_PID, &pid.to_be_bytes());
        let credit = Arc::new(Credit::new(config.window));
        port.credit = Some(credit.clone());

        let (tx, rx) = mpsc::channel();
        let mut open_streams = 0;
        let pipes: [(Option<Pipe>, Stream, &str); 3] = [
            (
                child.stdout.take().map(|p| Box::new(p) as _),
                Stream::Stdout,
                "stdout reader",
            ),
            (
                child.stderr.take().map(|p| Box::new(p) as _),
                Stream::Stderr,
                "stderr reader",
            ),
            (log.map(|p| Box::new(p) as _), Stream::Log, "log reader"),
        ];
        for (pipe, stream, name) in pipes {
            if let Some(pipe) = pipe {
                spawn_helper(&mut port, name, {
                    let tx = tx.clone();
                    let credit = credit.clone();
                    move || relay_output(pipe, stream, &tx, &credit)
                });
                open_streams += 1;
            }
        }
        spawn_helper(&mut port, "waiter", {
            let tx = tx.clone();
            move || {
                wait_for_exit(pid);
                let _ = tx.send(Event::WorkerExited);
            }
        });
        spawn_helper(&mut port, "stdin reader", {
            let tx = tx.clone();
            move || relay_commands(&mut io::stdin(), &tx)
        });

        Self {
            child,
            pid,
            grace: config.grace,
            port,
            events: rx,
            _keepalive: tx,
            original_ppid,
            next_parent_poll: Instant::now() + PARENT_POLL,
            stopping: false,
            kill_at: None,
            ready_sent: false,
            open_streams,
            credit,
        }
    }

    /// Relays events until the worker is gone and its output drained.
    fn run(&mut self) -> ExitKind {
        let status = loop {
            let timeout = self.kill_at.map_or(TICK, |at| {
                at.saturating_duration_since(Instant::now()).min(TICK)
            });
            match self.events.recv_timeout(timeout) {
                Ok(Event::WorkerExited) => break self.reap(),
                Ok(event) => self.handle(event),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
            }
            self.check_stop_triggers();
        };

        let limit = Instant::now() + DRAIN_LIMIT;
        let mut idle_until = Instant::now() + DRAIN_IDLE;
        while self.open_streams > 0 {
            let left = idle_until
                .min(limit)
                .saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.events.recv_timeout(left) {
                // Commands can no longer apply, the group is gone; but
                // acknowledgements still let the output through.
                Ok(event @ (Event::Output(..) | Event::OutputClosed)) => {
                    idle_until = Instant::now() + DRAIN_IDLE;
                    self.handle(event);
                }
                Ok(event @ Event::Command(Command::Ack(_))) => self.handle(event),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        status
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Command(Command::Kill(sig)) => self.signal(libc::c_int::from(sig)),
            Event::Command(Command::Stop) | Event::StdinClosed => self.stop(),
            Event::Command(Command::Ack(count)) => self.credit.give(count),
            Event::Command(Command::Invalid(message)) => self.port.diag(&message),
            Event::Output(stream, piece) => self.forward(stream, piece),
            Event::OutputClosed => self.open_streams = self.open_streams.saturating_sub(1),
            Event::WorkerExited => {}
        }
    }

    fn forward(&mut self, stream: Stream, piece: Piece) {
        if stream == Stream::Stdout && !self.ready_sent {
            if let Some((before, address)) = readiness(&piece) {
                // The worker's line may follow text its code printed with
                // no line break (`print("loading", end="")` while a bridged
                // module is imported): that text goes on as a line of its own.
                if !before.is_empty() {
                    self.port.send(stream.tag(), before);
                }
                self.ready_sent = true;
                self.port.send(TAG_READY, address);
                return;
            }
        }
        self.port.send(stream.tag(), &piece.bytes);
    }

    /// Starts the graceful stop; idempotent.
    fn stop(&mut self) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.signal(libc::SIGTERM);
        self.kill_at = Some(Instant::now() + self.grace);
    }

    fn signal(&mut self, sig: libc::c_int) {
        if let Err(err) = signal_group(self.pid, sig) {
            self.port.diag(&format!(
                "cannot send signal {sig} to process group {}: {err}",
                self.pid
            ));
        }
    }

    /// Acts on the conditions that are polled rather than delivered as
    /// events: the grace deadline, signals to the shepherd, a new parent.
    fn check_stop_triggers(&mut self) {
        let now = Instant::now();
        if self.kill_at.is_some_and(|at| now >= at) {
            self.kill_at = None;
            self.signal(libc::SIGKILL);
        }
        if STOP_SIGNAL.load(Ordering::SeqCst) != 0 {
            self.stop();
        }
        if now >= self.next_parent_poll {
            self.next_parent_poll = now + PARENT_POLL;
            if parent_pid() != self.original_ppid {
                self.stop();
            }
            reap_adopted(self.pid);
        }
    }

    /// Kills what is left of the group and every descendant the shepherd
    /// adopted, then collects the leader's status.
    fn reap(&mut self) -> ExitKind {
        // The leader is a zombie here, so the pgid is still ours; no
        // descendant may outlive the worker.
        let _ = signal_group(self.pid, libc::SIGKILL);
        let status = match self.child.wait() {
            Ok(status) => exit_kind(status),
            Err(err) => {
                self.port
                    .diag(&format!("cannot collect the worker's exit status: {err}"));
                ExitKind::Code(SPAWN_FAILED_CODE)
            }
        };
        kill_adopted(Instant::now() + ORPHAN_HUNT);
        status
    }
}

fn exit_kind(status: ExitStatus) -> ExitKind {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitKind::Code(code),
        (None, Some(sig)) => ExitKind::Signal(sig),
        // `wait` only returns for terminated children; keep a sane value.
        (None, None) => ExitKind::Code(-1),
    }
}

fn spawn_helper<F>(port: &mut Port, name: &str, body: F)
where
    F: FnOnce() + Send + 'static,
{
    if let Err(err) = thread::Builder::new().name(name.to_owned()).spawn(body) {
        // Without the thread some events never arrive, but the stop paths
        // (signals, parent polling) still work; say so rather than die.
        port.diag(&format!("cannot start {name} thread: {err}"));
    }
}

/// Blocks until the worker terminates, without reaping it.
fn wait_for_exit(pid: u32) {
    let id = libc::id_t::from(pid);
    loop {
        // SAFETY: `info` is a valid, writable siginfo_t.
        let rc = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(libc::P_PID, id, &mut info, libc::WEXITED | libc::WNOWAIT)
        };
        if rc == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// Relays one pipe, a piece at a time and only with credit: while the BEAM
/// is behind, the pipe is not read and the worker's writes block.
fn relay_output<R: Read>(mut pipe: R, stream: Stream, tx: &Sender<Event>, credit: &Credit) {
    let mut splitter = LineSplitter::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let pieces = match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => splitter.push(&buf[..n]),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        for piece in pieces {
            credit.take();
            if tx.send(Event::Output(stream, piece)).is_err() {
                return;
            }
        }
    }
    for piece in splitter.finish() {
        credit.take();
        let _ = tx.send(Event::Output(stream, piece));
    }
    let _ = tx.send(Event::OutputClosed);
}

/// Reaps the descendants the shepherd adopted that already exited, so that
/// they do not linger as zombies while the worker runs. Leaves the worker
/// itself to the waiter.
fn reap_adopted(worker: u32) {
    loop {
        // SAFETY: `info` is a valid, writable siginfo_t; WNOWAIT only looks.
        let pid = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let rc = libc::waitid(
                libc::P_ALL,
                0,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            if rc != 0 {
                return;
            }
            info.si_pid()
        };
        if pid <= 0 || u32::try_from(pid).ok() == Some(worker) {
            return;
        }
        // SAFETY: reaps a child known to have exited.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
    }
}

/// Kills and reaps every child the shepherd still has once the worker is
/// gone: descendants the worker left behind, adopted because the shepherd
/// is their subreaper, including those that left its process group. Each
/// is the shepherd's own unreaped child, so its pid cannot belong to a
/// stranger. Killing one may orphan its own children onto the shepherd,
/// hence the loop, bounded by `deadline`.
fn kill_adopted(deadline: Instant) {
    loop {
        let children = own_children();
        if children.is_empty() || Instant::now() >= deadline {
            return;
        }
        for pid in &children {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        for pid in children {
            // SAFETY: waitpid on our own child; blocking is bounded since
            // it was just sent SIGKILL.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        }
    }
}

/// The pids of the shepherd's children, from /proc; empty where there is
/// no /proc (elsewhere than Linux the shepherd is no subreaper either).
fn own_children() -> Vec<libc::pid_t> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            entry
                .ok()?
                .file_name()
                .to_str()?
                .parse::<libc::pid_t>()
                .ok()
        })
        .filter(|pid| parent_of(*pid) == Some(me))
        .collect()
}

/// The parent pid of `pid`, from `/proc/PID/stat` (the fourth field, after
/// the parenthesised command name, which may contain anything).
fn parent_of(pid: libc::pid_t) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn relay_commands<R: Read>(input: &mut R, tx: &Sender<Event>) {
    loop {
        let command = match read_frame(input) {
            Ok(Inbound::Frame(payload)) => decode_command(&payload),
            Ok(Inbound::TooLarge(len)) => {
                Command::Invalid(format!("oversized frame of {len} bytes ignored"))
            }
            Ok(Inbound::Eof) => break,
            Ok(Inbound::Truncated) => {
                let _ = tx.send(Event::Command(Command::Invalid(
                    "input ended in the middle of a frame".to_owned(),
                )));
                break;
            }
            Err(err) => {
                let _ = tx.send(Event::Command(Command::Invalid(format!(
                    "reading commands failed: {err}"
                ))));
                break;
            }
        };
        if tx.send(Event::Command(command)).is_err() {
            return;
        }
    }
    let _ = tx.send(Event::StdinClosed);
}

/// The readiness line in `piece`, a line of the worker's stdout: the text
/// before it (empty when the line is only that) and the address. The line
/// is `SYNAPSE_READY <address>`, or ends with it after what the worker
/// printed without a line break; then the address must be one a worker
/// announces (`unix:...`, `tcp://...`, no space), so that a line that only
/// mentions the prefix stays a line.
fn readiness(piece: &Piece) -> Option<(&[u8], &[u8])> {
    let bytes = &piece.bytes[..];
    if piece.line_start && bytes.starts_with(READY_PREFIX) {
        return Some((&[], &bytes[READY_PREFIX.len()..]));
    }
    let at = bytes
        .windows(READY_PREFIX.len())
        .rposition(|window| window == READY_PREFIX)?;
    let address = &bytes[at + READY_PREFIX.len()..];
    let announced = (address.starts_with(b"unix:") || address.starts_with(b"tcp://"))
        && !address.contains(&b' ');
    announced.then(|| (&bytes[..at], address))
}
