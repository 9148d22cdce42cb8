//! The wire protocol between the BEAM and the shepherd.
//!
//! Everything here is pure (no processes, no signals) so that it can be unit
//! tested exhaustively; the Elixir side (`{:packet, 4}` port) is written
//! against exactly these encodings.
//!
//! Frames are a 4-byte big-endian length followed by the payload; the first
//! payload byte is a tag.

use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::Duration;

/// Tag of the configuration frame (BEAM -> shepherd).
pub const TAG_CONFIG: u8 = b'C';
/// Tag of the "send this signal to the group" frame (BEAM -> shepherd).
pub const TAG_KILL: u8 = b'K';
/// Tag of the graceful stop frame (BEAM -> shepherd).
pub const TAG_STOP: u8 = b'S';
/// Tag of the acknowledgement of output frames (BEAM -> shepherd): a
/// big-endian `u32` count of "O", "E", "L" and "R" frames handled.
pub const TAG_ACK: u8 = b'A';

/// Tag of the "worker spawned" frame (shepherd -> BEAM).
pub const TAG_PID: u8 = b'P';
/// Tag of a worker stdout line (shepherd -> BEAM).
pub const TAG_STDOUT: u8 = b'O';
/// Tag of a worker stderr line, also used for the shepherd's own diagnostics.
pub const TAG_STDERR: u8 = b'E';
/// Tag of a line the worker wrote on its log descriptor (shepherd -> BEAM):
/// one structured log record per line.
pub const TAG_LOG: u8 = b'L';
/// Tag of the readiness announcement (shepherd -> BEAM).
pub const TAG_READY: u8 = b'R';
/// Tag of the spawn failure report (shepherd -> BEAM).
pub const TAG_FAILED: u8 = b'F';
/// Tag of the exit status, always the last frame (shepherd -> BEAM).
pub const TAG_EXIT: u8 = b'X';

/// Prefix of the stdout line by which a worker announces its address.
pub const READY_PREFIX: &[u8] = b"SYNAPSE_READY ";

/// Largest line chunk sent in one "O"/"E" frame; longer lines are split so
/// that a runaway worker cannot make the BEAM allocate unbounded binaries.
pub const MAX_LINE_CHUNK: usize = 65536;

/// Largest inbound frame accepted. The config (argv + env) is the only large
/// one; anything bigger is a protocol error, and refusing it keeps a corrupt
/// length prefix from making us allocate gigabytes.
pub const MAX_INBOUND_FRAME: u32 = 64 * 1024 * 1024;

/// Exit code reported when the worker could not be started at all, as a
/// shell does for "command not found".
pub const SPAWN_FAILED_CODE: i32 = 127;

/// Encodes one frame (length prefix + tag + payload) into a buffer so that it
/// can be written with a single `write_all`.
pub fn encode_frame(tag: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() + 1;
    let mut buf = Vec::with_capacity(len + 4);
    // Outbound payloads are bounded (lines are chunked to 64 KiB, messages
    // are short), so the length always fits; saturate rather than panic.
    buf.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    buf.push(tag);
    buf.extend_from_slice(payload);
    buf
}

/// Writes one frame and flushes, so the BEAM sees it immediately.
pub fn write_frame<W: Write>(w: &mut W, tag: u8, payload: &[u8]) -> io::Result<()> {
    w.write_all(&encode_frame(tag, payload))?;
    w.flush()
}

/// Result of reading one inbound frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A complete frame payload (tag included).
    Frame(Vec<u8>),
    /// A frame longer than [`MAX_INBOUND_FRAME`]; its bytes were skipped.
    TooLarge(u32),
    /// End of input at a frame boundary.
    Eof,
    /// End of input in the middle of a frame.
    Truncated,
}

/// Reads one length-prefixed frame.
pub fn read_frame<R: Read>(r: &mut R) -> io::Result<Inbound> {
    let mut header = [0u8; 4];
    match read_full(r, &mut header)? {
        0 => return Ok(Inbound::Eof),
        4 => {}
        _ => return Ok(Inbound::Truncated),
    }
    let len = u32::from_be_bytes(header);
    if len > MAX_INBOUND_FRAME {
        let skipped = io::copy(&mut r.take(u64::from(len)), &mut io::sink())?;
        if skipped < u64::from(len) {
            return Ok(Inbound::Truncated);
        }
        return Ok(Inbound::TooLarge(len));
    }
    // `len` is bounded above, so this cast cannot truncate.
    let mut payload = vec![0u8; len as usize];
    if read_full(r, &mut payload)? < payload.len() {
        return Ok(Inbound::Truncated);
    }
    Ok(Inbound::Frame(payload))
}

/// Like `read_exact`, but reports how much was read before EOF instead of
/// failing, so that "clean EOF" and "truncated frame" can be told apart.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// A command received from the BEAM after the config frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Send this signal number to the worker's process group.
    Kill(u8),
    /// SIGTERM the group, SIGKILL it after the grace period.
    Stop,
    /// The BEAM handled this many output frames: as many more may be sent.
    Ack(u32),
    /// Anything else; the message explains what was wrong, and is reported
    /// to the BEAM but otherwise ignored.
    Invalid(String),
}

/// Decodes a post-config frame payload (tag included).
pub fn decode_command(payload: &[u8]) -> Command {
    match payload {
        [] => Command::Invalid("empty frame ignored".to_owned()),
        [TAG_KILL, sig] => Command::Kill(*sig),
        [TAG_KILL, rest @ ..] => Command::Invalid(format!(
            "malformed K frame ignored: expected 1 signal byte, got {}",
            rest.len()
        )),
        [TAG_STOP] => Command::Stop,
        [TAG_ACK, a, b, c, d] => Command::Ack(u32::from_be_bytes([*a, *b, *c, *d])),
        [TAG_ACK, rest @ ..] => Command::Invalid(format!(
            "malformed A frame ignored: expected a 4-byte count, got {} bytes",
            rest.len()
        )),
        [TAG_STOP, rest @ ..] => Command::Invalid(format!(
            "malformed S frame ignored: expected no payload, got {} bytes",
            rest.len()
        )),
        [TAG_CONFIG, ..] => Command::Invalid("duplicate config frame ignored".to_owned()),
        [tag, ..] => Command::Invalid(format!("unknown frame tag 0x{tag:02x} ignored")),
    }
}

/// How the worker is to be run, as sent in the "C" frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `argv[0]` is the program; never empty.
    pub argv: Vec<OsString>,
    /// The worker's complete environment, as (key, value) pairs.
    pub env: Vec<(OsString, OsString)>,
    /// Working directory; `None` inherits the shepherd's.
    pub cwd: Option<PathBuf>,
    /// Time between SIGTERM and SIGKILL on a graceful stop.
    pub grace: Duration,
    /// Directory removed recursively once the worker is gone.
    pub cleanup: Option<PathBuf>,
    /// Output frames ("O", "E", "L", "R") that may be sent before the BEAM
    /// acknowledges them; past it, the worker's pipes are no longer read,
    /// and a worker that writes more blocks until the BEAM catches up.
    pub window: u32,
    /// The descriptor number (3 or more) on which the worker finds the write
    /// end of its log pipe, whose lines become "L" frames; 0 for none.
    pub log_fd: u32,
}

/// Why a config frame was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// There was no frame at all before EOF.
    Missing,
    /// The first frame was not a "C" frame.
    WrongTag(Option<u8>),
    /// The first frame exceeded [`MAX_INBOUND_FRAME`].
    TooLarge(u32),
    /// The payload ended before `what` could be read.
    Truncated(&'static str),
    /// Bytes were left over after the last field.
    TrailingBytes(usize),
    /// `argc` was zero, so there is no program to run.
    NoProgram,
    /// An environment entry had no `=` or an empty key.
    BadEnv(String),
    /// The window was zero: no output could ever be sent.
    NoWindow,
    /// The log descriptor would replace the worker's stdin, stdout or stderr.
    BadLogFd(u32),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => write!(f, "no config frame received before end of input"),
            Self::WrongTag(Some(tag)) => {
                write!(f, "first frame must be a config frame, got tag 0x{tag:02x}")
            }
            Self::WrongTag(None) => {
                write!(f, "first frame must be a config frame, got an empty frame")
            }
            Self::TooLarge(len) => write!(
                f,
                "config frame of {len} bytes exceeds the limit of {MAX_INBOUND_FRAME}"
            ),
            Self::Truncated(what) => write!(f, "config frame truncated while reading {what}"),
            Self::TrailingBytes(n) => write!(f, "config frame has {n} unexpected trailing bytes"),
            Self::NoProgram => write!(f, "config frame has an empty argv"),
            Self::BadEnv(entry) => {
                write!(
                    f,
                    "environment entry {entry:?} is not of the form KEY=VALUE"
                )
            }
            Self::NoWindow => write!(f, "config frame has a window of 0 frames"),
            Self::BadLogFd(fd) => write!(
                f,
                "config frame asks for log descriptor {fd}; it must be 0 (none) or 3 or more"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Cursor over a config payload; every read is bounds checked because the
/// bytes come from outside.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn u32(&mut self, what: &'static str) -> Result<u32, ConfigError> {
        let (head, rest) = self
            .rest
            .split_first_chunk::<4>()
            .ok_or(ConfigError::Truncated(what))?;
        self.rest = rest;
        Ok(u32::from_be_bytes(*head))
    }

    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], ConfigError> {
        let len = usize::try_from(self.u32(what)?).map_err(|_| ConfigError::Truncated(what))?;
        if len > self.rest.len() {
            return Err(ConfigError::Truncated(what));
        }
        let (head, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(head)
    }

    fn string_list(&mut self, what: &'static str) -> Result<Vec<&'a [u8]>, ConfigError> {
        let count = self.u32(what)?;
        // No preallocation from the untrusted count: each item costs at least
        // its 4-byte length, so a lying count fails fast on truncation.
        (0..count).map(|_| self.bytes(what)).collect()
    }
}

impl Config {
    /// Parses a config frame payload, tag included.
    pub fn parse(payload: &[u8]) -> Result<Self, ConfigError> {
        let body = match payload.split_first() {
            Some((&TAG_CONFIG, body)) => body,
            Some((&tag, _)) => return Err(ConfigError::WrongTag(Some(tag))),
            None => return Err(ConfigError::WrongTag(None)),
        };
        let mut cur = Cursor { rest: body };

        let argv: Vec<OsString> = cur
            .string_list("argv")?
            .into_iter()
            .map(|a| OsString::from_vec(a.to_vec()))
            .collect();
        if argv.is_empty() {
            return Err(ConfigError::NoProgram);
        }

        let env = cur
            .string_list("env")?
            .into_iter()
            .map(split_env_entry)
            .collect::<Result<Vec<_>, _>>()?;

        let cwd = non_empty_path(cur.bytes("cwd")?);
        let grace = Duration::from_millis(u64::from(cur.u32("grace_ms")?));
        let cleanup = non_empty_path(cur.bytes("cleanup")?);
        let window = cur.u32("window")?;
        let log_fd = cur.u32("log_fd")?;

        if !cur.rest.is_empty() {
            return Err(ConfigError::TrailingBytes(cur.rest.len()));
        }
        if window == 0 {
            return Err(ConfigError::NoWindow);
        }
        if matches!(log_fd, 1..=2) || i32::try_from(log_fd).is_err() {
            return Err(ConfigError::BadLogFd(log_fd));
        }
        Ok(Self {
            argv,
            env,
            cwd,
            grace,
            cleanup,
            window,
            log_fd,
        })
    }

    /// Encodes the config as a "C" frame payload (tag included). The BEAM
    /// side does this in Elixir; this Rust version serves the tests.
    pub fn encode(&self) -> Vec<u8> {
        fn put_u32(buf: &mut Vec<u8>, n: usize) {
            buf.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
        }
        fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
            put_u32(buf, bytes.len());
            buf.extend_from_slice(bytes);
        }
        use std::os::unix::ffi::OsStrExt;

        let mut buf = vec![TAG_CONFIG];
        put_u32(&mut buf, self.argv.len());
        for arg in &self.argv {
            put_bytes(&mut buf, arg.as_bytes());
        }
        put_u32(&mut buf, self.env.len());
        for (key, value) in &self.env {
            let mut entry = key.as_bytes().to_vec();
            entry.push(b'=');
            entry.extend_from_slice(value.as_bytes());
            put_bytes(&mut buf, &entry);
        }
        put_bytes(
            &mut buf,
            self.cwd
                .as_deref()
                .map_or(&[][..], |p| p.as_os_str().as_bytes()),
        );
        let grace_ms = u32::try_from(self.grace.as_millis()).unwrap_or(u32::MAX);
        put_u32(&mut buf, grace_ms as usize);
        put_bytes(
            &mut buf,
            self.cleanup
                .as_deref()
                .map_or(&[][..], |p| p.as_os_str().as_bytes()),
        );
        buf.extend_from_slice(&self.window.to_be_bytes());
        buf.extend_from_slice(&self.log_fd.to_be_bytes());
        buf
    }
}

fn split_env_entry(entry: &[u8]) -> Result<(OsString, OsString), ConfigError> {
    match entry.iter().position(|&b| b == b'=') {
        Some(eq) if eq > 0 => Ok((
            OsString::from_vec(entry[..eq].to_vec()),
            OsString::from_vec(entry[eq + 1..].to_vec()),
        )),
        _ => Err(ConfigError::BadEnv(
            String::from_utf8_lossy(entry).into_owned(),
        )),
    }
}

fn non_empty_path(bytes: &[u8]) -> Option<PathBuf> {
    (!bytes.is_empty()).then(|| PathBuf::from(OsString::from_vec(bytes.to_vec())))
}

/// How the worker ended, as carried by the "X" frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// Exited normally with this code.
    Code(i32),
    /// Terminated by this signal.
    Signal(i32),
}

impl ExitKind {
    /// The "X" frame payload, tag included.
    pub fn encode(self) -> Vec<u8> {
        let (kind, value) = match self {
            Self::Code(code) => (0u8, code),
            Self::Signal(sig) => (1u8, sig),
        };
        let mut buf = vec![TAG_EXIT, kind];
        buf.extend_from_slice(&value.to_be_bytes());
        buf
    }

    /// Parses an "X" frame payload (tag included); used by the tests.
    pub fn decode(payload: &[u8]) -> Option<Self> {
        match payload {
            [TAG_EXIT, kind, a, b, c, d] => {
                let value = i32::from_be_bytes([*a, *b, *c, *d]);
                match kind {
                    0 => Some(Self::Code(value)),
                    1 => Some(Self::Signal(value)),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Config {
        Config {
            argv: vec!["python".into(), "-m".into(), "synapse_python.worker".into()],
            env: vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("EMPTY".into(), "".into()),
                ("WITH_EQ".into(), "a=b=c".into()),
            ],
            cwd: Some("/tmp/work".into()),
            grace: Duration::from_millis(5000),
            cleanup: Some("/tmp/rt".into()),
            window: 64,
            log_fd: 3,
        }
    }

    #[test]
    fn frame_encoding_prefixes_big_endian_length_including_tag() {
        assert_eq!(
            encode_frame(b'O', b"hi"),
            vec![0, 0, 0, 3, b'O', b'h', b'i']
        );
        assert_eq!(encode_frame(b'S', b""), vec![0, 0, 0, 1, b'S']);
        let pid = 0x0102_0304u32.to_be_bytes();
        assert_eq!(
            encode_frame(TAG_PID, &pid),
            vec![0, 0, 0, 5, b'P', 1, 2, 3, 4]
        );
    }

    #[test]
    fn exit_frames_encode_kind_and_signed_value() {
        assert_eq!(ExitKind::Code(3).encode(), vec![b'X', 0, 0, 0, 0, 3]);
        assert_eq!(ExitKind::Signal(9).encode(), vec![b'X', 1, 0, 0, 0, 9]);
        assert_eq!(
            ExitKind::Code(-1).encode(),
            vec![b'X', 0, 0xff, 0xff, 0xff, 0xff]
        );
        for kind in [
            ExitKind::Code(127),
            ExitKind::Signal(15),
            ExitKind::Code(-7),
        ] {
            assert_eq!(ExitKind::decode(&kind.encode()), Some(kind));
        }
        assert_eq!(ExitKind::decode(&[b'X', 2, 0, 0, 0, 0]), None);
        assert_eq!(ExitKind::decode(&[b'X', 0, 0]), None);
    }

    #[test]
    fn read_frame_round_trips_and_detects_eof_and_truncation() {
        let mut input = encode_frame(b'K', &[9]);
        input.extend(encode_frame(b'S', b""));
        let mut r = &input[..];
        assert_eq!(read_frame(&mut r).unwrap(), Inbound::Frame(vec![b'K', 9]));
        assert_eq!(read_frame(&mut r).unwrap(), Inbound::Frame(vec![b'S']));
        assert_eq!(read_frame(&mut r).unwrap(), Inbound::Eof);

        let mut r = &[0u8, 0][..];
        assert_eq!(read_frame(&mut r).unwrap(), Inbound::Truncated);
        let mut r = &[0u8, 0, 0, 5, b'K'][..];
        assert_eq!(read_frame(&mut r).unwrap(), Inbound::Truncated);
    }

    #[test]
    fn read_frame_skips_oversized_frames_and_stays_in_sync() {
        let len = MAX_INBOUND_FRAME + 1;
        let mut input = len.to_be_bytes().to_vec();
        input.resize(4 + len as usize, 0);
        input.extend(encode_frame(b'S', b""));
        let mut r = &input[..];
        assert_eq!(read_frame(&mut r).unwrap(), Inbound::TooLarge(len));
        assert_eq!(read_frame(&mut r).unwrap(), Inbound::Frame(vec![b'S']));
    }

    #[test]
    fn commands_decode() {
        assert_eq!(decode_command(&[b'K', 15]), Command::Kill(15));
        assert_eq!(decode_command(b"S"), Command::Stop);
        assert_eq!(decode_command(&[b'A', 0, 0, 1, 2]), Command::Ack(258));
        for bad in [
            &b""[..],
            b"K",
            b"K12",
            b"Sx",
            b"Cabc",
            b"Z",
            b"A",
            b"A12345",
        ] {
            assert!(
                matches!(decode_command(bad), Command::Invalid(_)),
                "{bad:?} should be invalid"
            );
        }
    }

    #[test]
    fn config_round_trips() {
        let config = sample();
        assert_eq!(Config::parse(&config.encode()), Ok(config));
    }

    #[test]
    fn config_empty_strings_mean_none_and_bytes_need_not_be_utf8() {
        let config = Config {
            argv: vec![OsString::from_vec(vec![b'/', 0xff, b'x'])],
            env: vec![],
            cwd: None,
            grace: Duration::ZERO,
            cleanup: None,
            window: 1,
            log_fd: 0,
        };
        let parsed = Config::parse(&config.encode()).unwrap();
        assert_eq!(parsed, config);
    }

    #[test]
    fn config_parses_hand_built_bytes() {
        let mut p = vec![b'C'];
        p.extend(1u32.to_be_bytes());
        p.extend(2u32.to_be_bytes());
        p.extend(b"sh");
        p.extend(1u32.to_be_bytes());
        p.extend(5u32.to_be_bytes());
        p.extend(b"A=1=2");
        p.extend(0u32.to_be_bytes());
        p.extend(250u32.to_be_bytes());
        p.extend(0u32.to_be_bytes());
        p.extend(16u32.to_be_bytes());
        p.extend(0u32.to_be_bytes());
        let config = Config::parse(&p).unwrap();
        assert_eq!(config.argv, vec![OsString::from("sh")]);
        assert_eq!(config.env, vec![("A".into(), "1=2".into())]);
        assert_eq!(config.cwd, None);
        assert_eq!(config.grace, Duration::from_millis(250));
        assert_eq!(config.cleanup, None);
        assert_eq!(config.window, 16);
        assert_eq!(config.log_fd, 0);
    }

    #[test]
    fn malformed_configs_are_rejected_with_a_reason() {
        assert_eq!(Config::parse(b""), Err(ConfigError::WrongTag(None)));
        assert_eq!(Config::parse(b"S"), Err(ConfigError::WrongTag(Some(b'S'))));
        assert_eq!(Config::parse(b"C"), Err(ConfigError::Truncated("argv")));

        let good = sample().encode();
        // Every strict prefix is truncated somewhere.
        for cut in 1..good.len() {
            assert!(
                matches!(Config::parse(&good[..cut]), Err(ConfigError::Truncated(_))),
                "prefix of {cut} bytes"
            );
        }

        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(Config::parse(&trailing), Err(ConfigError::TrailingBytes(1)));

        let no_argv = Config {
            argv: vec![],
            ..sample()
        };
        assert_eq!(
            Config::parse(&no_argv.encode()),
            Err(ConfigError::NoProgram)
        );

        let no_window = Config {
            window: 0,
            ..sample()
        };
        assert_eq!(
            Config::parse(&no_window.encode()),
            Err(ConfigError::NoWindow)
        );
        for log_fd in [1, 2, u32::MAX] {
            let stdio = Config { log_fd, ..sample() };
            assert_eq!(
                Config::parse(&stdio.encode()),
                Err(ConfigError::BadLogFd(log_fd))
            );
        }

        // A huge count must fail on truncation, not allocate.
        let mut huge = vec![b'C'];
        huge.extend(u32::MAX.to_be_bytes());
        assert_eq!(Config::parse(&huge), Err(ConfigError::Truncated("argv")));
    }

    #[test]
    fn env_entries_need_a_key_and_an_equals_sign() {
        for bad in ["NOEQUALS", "=value"] {
            let mut p = vec![b'C'];
            p.extend(1u32.to_be_bytes());
            p.extend(2u32.to_be_bytes());
            p.extend(b"sh");
            p.extend(1u32.to_be_bytes());
            p.extend(u32::try_from(bad.len()).unwrap().to_be_bytes());
            p.extend(bad.as_bytes());
            p.extend(0u32.to_be_bytes());
            p.extend(0u32.to_be_bytes());
            p.extend(0u32.to_be_bytes());
            p.extend(1u32.to_be_bytes());
            p.extend(0u32.to_be_bytes());
            assert_eq!(Config::parse(&p), Err(ConfigError::BadEnv(bad.to_owned())));
        }
    }

    #[test]
    fn config_errors_are_human_readable() {
        assert!(ConfigError::Missing.to_string().contains("no config frame"));
        assert!(ConfigError::Truncated("env").to_string().contains("env"));
    }
}
