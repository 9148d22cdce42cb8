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
use std::thread;
use std::time::{Duration, Instant};

use crate::lines::{LineSplitter, Piece};
use crate::protocol::{
    self, decode_command, read_frame, Command, Config, ConfigError, ExitKind, Inbound,
    READY_PREFIX, SPAWN_FAILED_CODE, TAG_EXIT, TAG_FAILED, TAG_PID, TAG_READY, TAG_STDERR,
    TAG_STDOUT,
};
use crate::spawn::{signal_group, spawn_worker};

/// How long output is still drained after the worker exited: a descendant
/// that escaped the process group could hold the pipes open forever.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Upper bound on how long the main loop sleeps, so that a termination
/// signal received by the shepherd is acted upon promptly.
const TICK: Duration = Duration::from_millis(100);

/// How often the parent pid is compared with the original one, as a fallback
/// for platforms without `PR_SET_PDEATHSIG` and for a stdin that never
/// reports EOF.
const PARENT_POLL: Duration = Duration::from_secs(1);

/// Signal (SIGTERM/SIGINT/SIGHUP) received by the shepherd, or 0.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(sig: libc::c_int) {
    // An atomic store is async-signal-safe; the main loop does the work.
    STOP_SIGNAL.store(sig, Ordering::SeqCst);
}

/// Which of the worker's output pipes a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn tag(self) -> u8 {
        match self {
            Self::Stdout => TAG_STDOUT,
            Self::Stderr => TAG_STDERR,
        }
    }
}

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
}

impl Port {
    fn new() -> Self {
        Self {
            out: io::stdout(),
            broken: false,
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

    let child = match spawn_worker(&config) {
        Ok(child) => child,
        Err(err) => {
            port.send(TAG_FAILED, err.to_string().as_bytes());
            remove_cleanup_dir(&mut port, config.cleanup.as_deref());
            port.exit(ExitKind::Code(SPAWN_FAILED_CODE));
            return;
        }
    };

    let mut supervisor = Supervisor::start(child, &config, port, original_ppid);
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
}

impl Supervisor {
    fn start(
        mut child: Child,
        config: &Config,
        mut port: Port,
        original_ppid: libc::pid_t,
    ) -> Self {
        let pid = child.id();
        port.send(TAG_PID, &pid.to_be_bytes());

        let (tx, rx) = mpsc::channel();
        let mut open_streams = 0;
        if let Some(out) = child.stdout.take() {
            spawn_helper(&mut port, "stdout reader", {
                let tx = tx.clone();
                move || relay_output(out, Stream::Stdout, &tx)
            });
            open_streams += 1;
        }
        if let Some(err) = child.stderr.take() {
            spawn_helper(&mut port, "stderr reader", {
                let tx = tx.clone();
                move || relay_output(err, Stream::Stderr, &tx)
            });
            open_streams += 1;
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

        let drain_until = Instant::now() + DRAIN_TIMEOUT;
        while self.open_streams > 0 {
            let left = drain_until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.events.recv_timeout(left) {
                // Commands can no longer apply: the group is gone.
                Ok(event @ (Event::Output(..) | Event::OutputClosed)) => self.handle(event),
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
            Event::Command(Command::Invalid(message)) => self.port.diag(&message),
            Event::Output(stream, piece) => self.forward(stream, piece),
            Event::OutputClosed => self.open_streams = self.open_streams.saturating_sub(1),
            Event::WorkerExited => {}
        }
    }

    fn forward(&mut self, stream: Stream, piece: Piece) {
        if stream == Stream::Stdout && !self.ready_sent && piece.line_start {
            if let Some(address) = piece.bytes.strip_prefix(READY_PREFIX) {
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
        }
    }

    /// Kills what is left of the group, then collects the leader's status.
    fn reap(&mut self) -> ExitKind {
        // The leader is a zombie here, so the pgid is still ours; no
        // descendant may outlive the worker.
        let _ = signal_group(self.pid, libc::SIGKILL);
        match self.child.wait() {
            Ok(status) => exit_kind(status),
            Err(err) => {
                self.port
                    .diag(&format!("cannot collect the worker's exit status: {err}"));
                ExitKind::Code(SPAWN_FAILED_CODE)
            }
        }
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

fn relay_output<R: Read>(mut pipe: R, stream: Stream, tx: &Sender<Event>) {
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
            if tx.send(Event::Output(stream, piece)).is_err() {
                return;
            }
        }
    }
    for piece in splitter.finish() {
        let _ = tx.send(Event::Output(stream, piece));
    }
    let _ = tx.send(Event::OutputClosed);
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
