//! Exit status propagation, signals, graceful stop, stdin EOF, process
//! groups and parent death, tested against the real binary.

mod common;

use std::time::{Duration, Instant};

use common::{config, is_alive, kill_quietly, parse_pid, sh, wait_gone, Frame, Shepherd, TIMEOUT};
use synapse_shepherd::protocol::ExitKind;

#[test]
fn exit_code_is_propagated() {
    let mut shepherd = Shepherd::start(&sh("exit 3"));
    shepherd.expect_pid();
    let (frames, kind) = shepherd.finish();
    assert_eq!(kind, ExitKind::Code(3));
    assert!(frames.is_empty(), "{frames:?}");
}

#[test]
fn death_by_signal_is_reported_as_such() {
    let mut shepherd = Shepherd::start(&sh("kill -9 $$"));
    shepherd.expect_pid();
    let (_, kind) = shepherd.finish();
    assert_eq!(kind, ExitKind::Signal(9));
}

#[test]
fn the_reported_pid_is_the_worker_and_its_process_group() {
    let (mut shepherd, pid) = Shepherd::start_worker(&config(&["sleep", "1000"]));
    assert!(is_alive(pid));
    let raw = libc::pid_t::try_from(pid).unwrap();
    // SAFETY: getpgid has no preconditions.
    assert_eq!(unsafe { libc::getpgid(raw) }, raw);
    shepherd.send(b'K', &[9]);
    shepherd.finish();
}

#[test]
fn k_delivers_the_given_signal_to_the_group() {
    let (mut shepherd, pid) = Shepherd::start_worker(&config(&["sleep", "1000"]));
    shepherd.send(b'K', &[libc::SIGUSR1 as u8]);
    let (_, kind) = shepherd.finish();
    assert_eq!(kind, ExitKind::Signal(libc::SIGUSR1));
    assert!(wait_gone(pid, TIMEOUT));
}

#[test]
fn stop_sends_sigterm() {
    let (mut shepherd, pid) = Shepherd::start_worker(&config(&["sleep", "1000"]));
    shepherd.send(b'S', b"");
    let (_, kind) = shepherd.finish();
    assert_eq!(kind, ExitKind::Signal(libc::SIGTERM));
    assert!(wait_gone(pid, TIMEOUT));
}

#[test]
fn stdin_eof_stops_the_worker() {
    let (mut shepherd, pid) = Shepherd::start_worker(&config(&["sleep", "1000"]));
    shepherd.close_stdin();
    let (_, kind) = shepherd.finish();
    assert_eq!(kind, ExitKind::Signal(libc::SIGTERM));
    assert!(wait_gone(pid, TIMEOUT), "worker {pid} survived stdin EOF");
}

#[test]
fn a_worker_ignoring_sigterm_is_killed_after_the_grace_period() {
    let grace = Duration::from_millis(300);
    let mut cfg = sh(r#"trap "" TERM; sleep 1000 & echo $!; wait"#);
    cfg.grace = grace;
    let (mut shepherd, pid) = Shepherd::start_worker(&cfg);
    // The trap is set once the background sleep's pid is printed.
    let sleeper = parse_pid(&shepherd.expect_out());

    let stopped_at = Instant::now();
    shepherd.close_stdin();
    let (_, kind) = shepherd.finish();
    let elapsed = stopped_at.elapsed();

    assert_eq!(kind, ExitKind::Signal(libc::SIGKILL));
    assert!(elapsed >= grace, "SIGKILL came after only {elapsed:?}");
    assert!(elapsed < grace + Duration::from_secs(2), "took {elapsed:?}");
    assert!(wait_gone(pid, TIMEOUT));
    assert!(wait_gone(sleeper, TIMEOUT), "grandchild {sleeper} survived");
}

#[test]
fn grandchildren_die_with_the_group_on_stop() {
    let (mut shepherd, _pid) = Shepherd::start_worker(&sh("sleep 1000 & echo $!; wait"));
    let grandchild = parse_pid(&shepherd.expect_out());
    assert!(is_alive(grandchild));
    shepherd.send(b'S', b"");
    shepherd.finish();
    let gone = wait_gone(grandchild, TIMEOUT);
    kill_quietly(grandchild);
    assert!(gone, "grandchild {grandchild} survived the stop");
}

#[test]
fn grandchildren_are_killed_when_the_worker_exits_on_its_own() {
    // Nobody signals the grandchild, and it holds the output pipes open: it
    // only dies if the shepherd SIGKILLs the group once the worker is gone.
    let (mut shepherd, _pid) = Shepherd::start_worker(&sh("sleep 1000 & echo $!; exit 5"));
    let grandchild = parse_pid(&shepherd.expect_out());
    let (_, kind) = shepherd.finish();
    assert_eq!(kind, ExitKind::Code(5));
    let gone = wait_gone(grandchild, TIMEOUT);
    kill_quietly(grandchild);
    assert!(gone, "grandchild {grandchild} outlived the worker");
}

#[test]
fn a_descendant_that_left_the_group_is_killed_too() {
    // setsid takes the sleeper out of the group, out of reach of the group
    // kill; but once the worker exits it is the shepherd's (its subreaper's)
    // child, and killed as such. The worker waits for the sleeper's pid
    // file so that it has left the group before the worker exits.
    let dir = common::temp_dir("escaped");
    let mut cfg = config(&[
        "sh",
        "-c",
        r#"setsid sh -c 'echo $$ > "$1"; exec sleep 1000' sh "$1" &
           while [ ! -s "$1" ]; do sleep 0.01; done; cat "$1""#,
        "sh",
        common::path_str(&dir.join("pid")),
    ]);
    cfg.cleanup = Some(dir);
    let (mut shepherd, _pid) = Shepherd::start_worker(&cfg);
    let escaped = parse_pid(&shepherd.expect_out());
    let (_, kind) = shepherd.finish();
    let gone = wait_gone(escaped, TIMEOUT);
    kill_quietly(escaped);
    assert_eq!(kind, ExitKind::Code(0));
    assert!(gone, "the escaped process {escaped} outlived the worker");
}

#[test]
fn a_sigkilled_shepherd_takes_the_worker_down() {
    let (mut shepherd, pid) = Shepherd::start_worker(&config(&["sleep", "1000"]));
    shepherd.kill_shepherd();
    let gone = wait_gone(pid, TIMEOUT);
    kill_quietly(pid);
    assert!(gone, "worker {pid} survived its shepherd");
}

#[test]
fn sigterm_to_the_shepherd_stops_the_worker_gracefully() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        let (mut shepherd, pid) = Shepherd::start_worker(&config(&["sleep", "1000"]));
        shepherd.signal_shepherd(sig);
        let (_, kind) = shepherd.finish();
        assert_eq!(kind, ExitKind::Signal(libc::SIGTERM), "on signal {sig}");
        assert!(wait_gone(pid, TIMEOUT));
    }
}

#[cfg(target_os = "linux")]
#[test]
fn the_worker_starts_with_default_signal_dispositions() {
    // SigIgn / SigBlk in /proc/self/status are hex masks; all zero means
    // nothing ignored or blocked. The shepherd ignores SIGPIPE (Rust) and
    // handles SIGTERM; neither may leak into the worker.
    let mut shepherd = Shepherd::start(&sh("grep -E '^(SigIgn|SigBlk):' /proc/self/status"));
    shepherd.expect_pid();
    let (frames, kind) = shepherd.finish();
    assert_eq!(kind, ExitKind::Code(0));
    let lines: Vec<String> = common::outs(&frames)
        .into_iter()
        .map(|l| String::from_utf8(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in lines {
        let mask = line.split_whitespace().nth(1).unwrap();
        assert!(mask.chars().all(|c| c == '0'), "{line}");
    }
}

#[test]
fn the_worker_stdin_is_dev_null() {
    let mut shepherd = Shepherd::start(&sh("cat; echo done"));
    shepherd.expect_pid();
    let (frames, kind) = shepherd.finish();
    assert_eq!(kind, ExitKind::Code(0));
    assert_eq!(frames, vec![Frame::Out(b"done".to_vec())]);
}
