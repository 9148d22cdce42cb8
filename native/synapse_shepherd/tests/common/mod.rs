//! Test harness: runs the real `synapse-shepherd` binary and speaks the port
//! protocol over its pipes, as the BEAM would.

#![allow(dead_code)] // each test binary uses a different subset

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use synapse_shepherd::protocol::{encode_frame, read_frame, Config, ExitKind, Inbound};

/// Generous bound for anything that should happen "promptly".
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// A frame received from the shepherd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Pid(u32),
    Out(Vec<u8>),
    Err(Vec<u8>),
    Log(Vec<u8>),
    Ready(Vec<u8>),
    Failed(String),
    Exit(ExitKind),
    Unknown(Vec<u8>),
}

impl Frame {
    /// Whether the BEAM acknowledges this frame (flow control).
    fn is_output(&self) -> bool {
        matches!(
            self,
            Self::Out(_) | Self::Err(_) | Self::Log(_) | Self::Ready(_)
        )
    }

    fn decode(payload: Vec<u8>) -> Self {
        match payload.split_first() {
            Some((b'P', [a, b, c, d])) => Self::Pid(u32::from_be_bytes([*a, *b, *c, *d])),
            Some((b'O', rest)) => Self::Out(rest.to_vec()),
            Some((b'E', rest)) => Self::Err(rest.to_vec()),
            Some((b'L', rest)) => Self::Log(rest.to_vec()),
            Some((b'R', rest)) => Self::Ready(rest.to_vec()),
            Some((b'F', rest)) => Self::Failed(String::from_utf8_lossy(rest).into_owned()),
            Some((b'X', _)) => match ExitKind::decode(&payload) {
                Some(kind) => Self::Exit(kind),
                None => Self::Unknown(payload),
            },
            _ => Self::Unknown(payload),
        }
    }
}

/// A config with a minimal environment and a short grace period.
pub fn config(argv: &[&str]) -> Config {
    Config {
        argv: argv.iter().map(OsString::from).collect(),
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        cwd: None,
        grace: Duration::from_millis(2000),
        cleanup: None,
        window: 64,
        log_fd: 0,
    }
}

/// `sh -c script`.
pub fn sh(script: &str) -> Config {
    config(&["sh", "-c", script])
}

pub struct Shepherd {
    child: Child,
    stdin: Arc<Mutex<Option<ChildStdin>>>,
    frames: Receiver<Frame>,
    worker: Option<u32>,
    /// Whether output frames are acknowledged as they arrive, as the BEAM
    /// does; off, the test acknowledges with `ack`.
    auto_ack: Arc<AtomicBool>,
}

impl Shepherd {
    /// Starts the shepherd without sending anything.
    pub fn spawn_raw() -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_synapse-shepherd"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start synapse-shepherd");
        let stdin = Arc::new(Mutex::new(child.stdin.take()));
        let auto_ack = Arc::new(AtomicBool::new(true));
        let mut stdout = child.stdout.take().expect("stdout pipe");
        let (tx, rx) = mpsc::channel();
        thread::spawn({
            let stdin = stdin.clone();
            let auto_ack = auto_ack.clone();
            move || {
                while let Ok(Inbound::Frame(payload)) = read_frame(&mut stdout) {
                    let frame = Frame::decode(payload);
                    if frame.is_output() && auto_ack.load(Ordering::SeqCst) {
                        write_ack(&stdin, 1);
                    }
                    if tx.send(frame).is_err() {
                        break;
                    }
                }
            }
        });
        Self {
            child,
            stdin,
            frames: rx,
            worker: None,
            auto_ack,
        }
    }

    /// Starts the shepherd with `config`; the test acknowledges output.
    pub fn start_manual_ack(config: &Config) -> Self {
        let mut shepherd = Self::spawn_raw();
        shepherd.auto_ack.store(false, Ordering::SeqCst);
        shepherd.send_payload(&config.encode());
        shepherd
    }

    /// Acknowledges `count` output frames.
    pub fn ack(&self, count: u32) {
        write_ack(&self.stdin, count);
    }

    /// Starts the shepherd and sends it `config`.
    pub fn start(config: &Config) -> Self {
        let mut shepherd = Self::spawn_raw();
        shepherd.send_payload(&config.encode());
        shepherd
    }

    /// Starts the shepherd and waits for the worker's pid.
    pub fn start_worker(config: &Config) -> (Self, u32) {
        let mut shepherd = Self::start(config);
        let pid = shepherd.expect_pid();
        (shepherd, pid)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a frame whose payload starts with its tag.
    pub fn send_payload(&mut self, payload: &[u8]) {
        let (tag, rest) = payload.split_first().expect("non-empty payload");
        self.send(*tag, rest);
    }

    pub fn send(&mut self, tag: u8, payload: &[u8]) {
        let mut guard = self.stdin.lock().unwrap();
        let stdin = guard.as_mut().expect("stdin still open");
        stdin
            .write_all(&encode_frame(tag, payload))
            .and_then(|()| stdin.flush())
            .expect("write to shepherd");
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        let mut guard = self.stdin.lock().unwrap();
        let stdin = guard.as_mut().expect("stdin still open");
        stdin.write_all(bytes).expect("write to shepherd");
    }

    pub fn close_stdin(&mut self) {
        *self.stdin.lock().unwrap() = None;
    }

    /// The next frame, or `None` if the shepherd closed its stdout.
    /// Panics if nothing arrives within `timeout`.
    pub fn next_within(&mut self, timeout: Duration) -> Option<Frame> {
        match self.frames.recv_timeout(timeout) {
            Ok(frame) => {
                if let Frame::Pid(pid) = frame {
                    self.worker = Some(pid);
                }
                Some(frame)
            }
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                panic!("no frame from the shepherd within {timeout:?}")
            }
        }
    }

    /// The next frame if one arrives within `timeout`, else `None`.
    pub fn next_if_within(&mut self, timeout: Duration) -> Option<Frame> {
        self.frames.recv_timeout(timeout).ok()
    }

    pub fn next(&mut self) -> Option<Frame> {
        self.next_within(TIMEOUT)
    }

    pub fn expect_pid(&mut self) -> u32 {
        match self.next() {
            Some(Frame::Pid(pid)) => pid,
            other => panic!("expected a P frame, got {other:?}"),
        }
    }

    /// Next stdout line, skipping nothing: anything else is a failure.
    pub fn expect_out(&mut self) -> Vec<u8> {
        match self.next() {
            Some(Frame::Out(line)) => line,
            other => panic!("expected an O frame, got {other:?}"),
        }
    }

    /// Collects frames up to and including "X", then checks that "X" was the
    /// last frame and that the shepherd exited with status 0.
    pub fn finish(&mut self) -> (Vec<Frame>, ExitKind) {
        let mut frames = Vec::new();
        let kind = loop {
            match self.next() {
                Some(Frame::Exit(kind)) => break kind,
                Some(frame) => frames.push(frame),
                None => panic!("shepherd closed stdout without an X frame; got {frames:?}"),
            }
        };
        assert_eq!(self.next(), None, "X must be the last frame");
        let status = self.wait_exit(TIMEOUT).expect("shepherd exits after X");
        assert!(status.success(), "shepherd exit status {status:?}");
        (frames, kind)
    }

    /// Waits for the shepherd process itself to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILLs the shepherd (not the worker) and reaps it.
    pub fn kill_shepherd(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal_shepherd(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: plain kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }
}

impl Drop for Shepherd {
    fn drop(&mut self) {
        // A failing test must not leave sleeping workers behind.
        if let Some(pid) = self.worker.and_then(|p| libc::pid_t::try_from(p).ok()) {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_ack(stdin: &Mutex<Option<ChildStdin>>, count: u32) {
    if let Some(stdin) = stdin.lock().unwrap().as_mut() {
        // The shepherd may be gone already; the test notices otherwise.
        let _ = stdin
            .write_all(&encode_frame(b'A', &count.to_be_bytes()))
            .and_then(|()| stdin.flush());
    }
}

/// Whether `pid` is a live process; zombies count as dead.
pub fn is_alive(pid: u32) -> bool {
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks for existence.
    if unsafe { libc::kill(raw, 0) } != 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself
        // contain spaces or parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => true,
    }
}

/// Polls until `pid` is gone; false if it is still alive at the deadline.
pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while is_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Kills a process the test started indirectly, in case an assertion failed.
pub fn kill_quietly(pid: u32) {
    if let Ok(raw) = libc::pid_t::try_from(pid) {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(raw, libc::SIGKILL) };
    }
}

/// A fresh, empty directory under the system temp dir.
pub fn temp_dir(label: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!(
        "synapse-shepherd-test-{}-{label}-{n}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir.canonicalize().expect("canonical temp dir")
}

pub fn parse_pid(line: &[u8]) -> u32 {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("not a pid: {line:?}"))
}

pub fn outs(frames: &[Frame]) -> Vec<Vec<u8>> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Out(line) => Some(line.clone()),
            _ => None,
        })
        .collect()
}

pub fn errs(frames: &[Frame]) -> Vec<Vec<u8>> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Err(line) => Some(line.clone()),
            _ => None,
        })
        .collect()
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}
