//! Output relaying, readiness, environment, cwd, spawn failures and
//! protocol errors, tested against the real binary.

mod common;

use common::{config, errs, outs, path_str, sh, temp_dir, Frame, Shepherd};
use std::collections::BTreeSet;
use std::time::Duration;
use synapse_shepherd::protocol::{ExitKind, MAX_LINE_CHUNK};

#[test]
fn stdout_and_stderr_lines_are_tagged_in_order_before_exit() {
    let mut shepherd = Shepherd::start(&sh(
        r#"echo out1; echo err1 >&2; echo out2; printf 'crlf\r\n'; echo err2 >&2; printf 'tail'"#,
    ));
    shepherd.expect_pid();
    let (frames, kind) = shepherd.finish();
    assert_eq!(kind, ExitKind::Code(0));
    assert_eq!(
        outs(&frames),
        vec![
            b"out1".to_vec(),
            b"out2".to_vec(),
            b"crlf".to_vec(),
            b"tail".to_vec()
        ]
    );
    assert_eq!(errs(&frames), vec![b"err1".to_vec(), b"err2".to_vec()]);
    assert!(frames
        .iter()
        .all(|f| matches!(f, Frame::Out(_) | Frame::Err(_))));
}

#[test]
fn output_written_just_before_exit_is_not_lost() {
    let mut shepherd = Shepherd::start(&sh(
        "i=0; while [ $i -lt 500 ]; do echo line$i; i=$((i+1)); done; exit 4",
    ));
    shepherd.expect_pid();
    let (frames, kind) = shepherd.finish();
    assert_eq!(kind, ExitKind::Code(4));
    let expected: Vec<Vec<u8>> = (0..500).map(|i| format!("line{i}").into_bytes()).collect();
    assert_eq!(outs(&frames), expected);
}

#[test]
fn only_the_first_readiness_line_becomes_an_r_frame() {
    let mut shepherd = Shepherd::start(&sh(
        "echo before; echo 'SYNAPSE_READY unix:/tmp/x/worker.sock'; \
         echo 'SYNAPSE_READY tcp://again'; echo SYNAPSE_READYX",
    ));
    shepherd.expect_pid();
    let (frames, kind) = shepherd.finish();
    assert_eq!(kind, ExitKind::Code(0));
    assert_eq!(
        frames,
        vec![
            Frame::Out(b"before".to_vec()),
            Frame::Ready(b"unix:/tmp/x/worker.sock".to_vec()),
            Frame::Out(b"SYNAPSE_READY tcp://again".to_vec()),
            Frame::Out(b"SYNAPSE_READYX".to_vec()),
        ]
    );
}

#[test]
fn readiness_after_text_printed_without_a_line_break_is_recognised() {
    // As a bridged module's `print("loading", end="")` at import leaves it.
    let mut shepherd = Shepherd::start(&sh(
        "printf 'loading'; echo 'SYNAPSE_READY unix:/tmp/x/worker.sock'; \
         printf 'see SYNAPSE_READY docs\\n'",
    ));
    shepherd.expect_pid();
    let (frames, kind) = shepherd.finish();
    assert_eq!(kind, ExitKind::Code(0));
    assert_eq!(
        frames,
        vec![
            Frame::Out(b"loading".to_vec()),
            Frame::Ready(b"unix:/tmp/x/worker.sock".to_vec()),
            Frame::Out(b"see SYNAPSE_READY docs".to_vec()),
        ]
    );
}

#[test]
fn a_line_that_only_mentions_the_readiness_prefix_stays_a_line() {
    let mut shepherd = Shepherd::start(&sh(
        "echo 'see SYNAPSE_READY docs'; echo 'x SYNAPSE_READY unix:/a b'; \
         echo 'SYNAPSE_READY unix:/tmp/x/worker.sock'",
    ));
    shepherd.expect_pid();
    let (frames, _) = shepherd.finish();
    assert_eq!(
        frames,
        vec![
            Frame::Out(b"see SYNAPSE_READY docs".to_vec()),
            Frame::Out(b"x SYNAPSE_READY unix:/a b".to_vec()),
            Frame::Ready(b"unix:/tmp/x/worker.sock".to_vec()),
        ]
    );
}

#[test]
fn readiness_on_stderr_is_just_a_line() {
    let mut shepherd = Shepherd::start(&sh("echo 'SYNAPSE_READY unix:/x' >&2"));
    shepherd.expect_pid();
    let (frames, _) = shepherd.finish();
    assert_eq!(frames, vec![Frame::Err(b"SYNAPSE_READY unix:/x".to_vec())]);
}

#[test]
fn long_lines_are_split_into_64k_frames() {
    let mut shepherd = Shepherd::start(&sh(
        r"head -c 150000 /dev/zero | tr '\0' a; echo; echo next",
    ));
    shepherd.expect_pid();
    let (frames, kind) = shepherd.finish();
    assert_eq!(kind, ExitKind::Code(0));
    let lines = outs(&frames);
    let lens: Vec<usize> = lines.iter().map(Vec::len).collect();
    assert_eq!(
        lens,
        vec![
            MAX_LINE_CHUNK,
            MAX_LINE_CHUNK,
            150_000 - 2 * MAX_LINE_CHUNK,
            4
        ]
    );
    assert!(lines[..3].iter().flatten().all(|&b| b == b'a'));
    assert_eq!(lines[3], b"next");
}

#[test]
fn environment_is_exactly_the_given_list() {
    let mut cfg = config(&["env"]);
    cfg.env.push(("FOO".into(), "bar baz".into()));
    cfg.env.push(("EMPTY".into(), "".into()));
    cfg.env.push(("WITH_EQ".into(), "a=b".into()));
    let mut shepherd = Shepherd::start(&cfg);
    shepherd.expect_pid();
    let (frames, kind) = shepherd.finish();
    assert_eq!(kind, ExitKind::Code(0));
    let got: BTreeSet<String> = outs(&frames)
        .into_iter()
        .map(|l| String::from_utf8(l).unwrap())
        .collect();
    let want: BTreeSet<String> = ["PATH=/usr/bin:/bin", "FOO=bar baz", "EMPTY=", "WITH_EQ=a=b"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(got, want);
}

#[test]
fn argv_is_passed_through_verbatim() {
    let mut shepherd = Shepherd::start(&config(&[
        "sh",
        "-c",
        r#"printf '%s|' "$0" "$@"; echo"#,
        "zero",
        "a b",
        "",
        "*",
    ]));
    shepherd.expect_pid();
    let (frames, _) = shepherd.finish();
    assert_eq!(outs(&frames), vec![b"zero|a b||*|".to_vec()]);
}

#[test]
fn working_directory_is_honoured() {
    let dir = temp_dir("cwd");
    let mut cfg = sh("pwd -P");
    cfg.cwd = Some(dir.clone());
    let mut shepherd = Shepherd::start(&cfg);
    shepherd.expect_pid();
    let (frames, kind) = shepherd.finish();
    assert_eq!(kind, ExitKind::Code(0));
    assert_eq!(outs(&frames), vec![path_str(&dir).as_bytes().to_vec()]);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn cleanup_directory_is_removed_after_the_worker_exits() {
    let dir = temp_dir("cleanup");
    std::fs::create_dir_all(dir.join("nested")).unwrap();
    std::fs::write(dir.join("nested/worker.sock"), b"x").unwrap();
    let mut cfg = config(&[
        "sh",
        "-c",
        r#"test -f "$1/nested/worker.sock" && echo present"#,
        "sh",
        path_str(&dir),
    ]);
    cfg.cleanup = Some(dir.clone());
    let mut shepherd = Shepherd::start(&cfg);
    shepherd.expect_pid();
    let (frames, kind) = shepherd.finish();
    assert_eq!(kind, ExitKind::Code(0));
    assert_eq!(outs(&frames), vec![b"present".to_vec()]);
    assert!(!dir.exists(), "cleanup dir should be gone once X was sent");
}

#[test]
fn spawn_failure_reports_f_then_x_127_and_cleans_up() {
    let dir = temp_dir("cleanup-failed");
    let mut cfg = config(&["/nonexistent/python", "-m", "synapse_python.worker"]);
    cfg.cleanup = Some(dir.clone());
    let mut shepherd = Shepherd::start(&cfg);
    let (frames, kind) = shepherd.finish();
    assert_eq!(kind, ExitKind::Code(127));
    match frames.as_slice() {
        [Frame::Failed(message)] => {
            assert!(message.contains("/nonexistent/python"), "{message}");
            assert!(message.contains("No such file or directory"), "{message}");
        }
        other => panic!("expected exactly one F frame, got {other:?}"),
    }
    assert!(!dir.exists());
}

#[test]
fn bare_program_is_searched_in_the_given_path_not_the_shepherds() {
    let mut cfg = config(&["sh", "-c", "exit 0"]);
    cfg.env = vec![("PATH".into(), "/nonexistent-bin".into())];
    let mut shepherd = Shepherd::start(&cfg);
    let (frames, kind) = shepherd.finish();
    assert_eq!(kind, ExitKind::Code(127));
    assert!(
        matches!(frames.as_slice(), [Frame::Failed(m)] if m.contains("sh")),
        "{frames:?}"
    );
}

#[test]
fn missing_working_directory_is_a_spawn_failure_naming_it() {
    let mut cfg = sh("exit 0");
    cfg.cwd = Some("/nonexistent/workdir".into());
    let mut shepherd = Shepherd::start(&cfg);
    let (frames, kind) = shepherd.finish();
    assert_eq!(kind, ExitKind::Code(127));
    match frames.as_slice() {
        [Frame::Failed(message)] => {
            assert!(message.contains("/nonexistent/workdir"), "{message}");
            assert!(message.contains("sh"), "{message}");
        }
        other => panic!("expected exactly one F frame, got {other:?}"),
    }
}

#[test]
fn malformed_config_reports_f_then_x_127() {
    let mut shepherd = Shepherd::spawn_raw();
    shepherd.send(b'C', &[0, 0, 0, 1, 0, 0]);
    let (frames, kind) = shepherd.finish();
    assert_eq!(kind, ExitKind::Code(127));
    assert!(
        matches!(frames.as_slice(), [Frame::Failed(m)] if m.starts_with("synapse-shepherd: ")),
        "{frames:?}"
    );
}

#[test]
fn a_first_frame_other_than_config_is_rejected() {
    let mut shepherd = Shepherd::spawn_raw();
    shepherd.send(b'S', b"");
    let (frames, kind) = shepherd.finish();
    assert_eq!(kind, ExitKind::Code(127));
    assert!(
        matches!(frames.as_slice(), [Frame::Failed(_)]),
        "{frames:?}"
    );
}

#[test]
fn missing_config_reports_f_then_x_127() {
    let mut shepherd = Shepherd::spawn_raw();
    shepherd.close_stdin();
    let (frames, kind) = shepherd.finish();
    assert_eq!(kind, ExitKind::Code(127));
    assert!(
        matches!(frames.as_slice(), [Frame::Failed(_)]),
        "{frames:?}"
    );
}

#[test]
fn unknown_and_malformed_frames_are_reported_and_ignored() {
    let (mut shepherd, _pid) = Shepherd::start_worker(&config(&["sleep", "1000"]));
    for bad in [&b"Z"[..], b"K", b"K\x09\x09", b"Sx", b"Cagain"] {
        shepherd.send_bytes(&u32::try_from(bad.len()).unwrap().to_be_bytes());
        shepherd.send_bytes(bad);
    }
    shepherd.send_bytes(&[0, 0, 0, 0]); // empty frame
    for _ in 0..6 {
        match shepherd.next() {
            Some(Frame::Err(message)) => assert!(
                message.starts_with(b"synapse-shepherd: "),
                "{}",
                String::from_utf8_lossy(&message)
            ),
            other => panic!("expected a diagnostic E frame, got {other:?}"),
        }
    }
    // Still obeying commands afterwards.
    shepherd.send(b'S', b"");
    let (frames, kind) = shepherd.finish();
    assert_eq!(kind, ExitKind::Signal(libc::SIGTERM));
    assert!(frames.is_empty(), "{frames:?}");
}

#[test]
fn a_final_line_is_sent_even_when_the_worker_is_killed() {
    let (mut shepherd, _pid) =
        Shepherd::start_worker(&sh("printf partial; echo written >&2; exec sleep 1000"));
    // The stderr line proves the partial stdout line was already written.
    assert_eq!(shepherd.next(), Some(Frame::Err(b"written".to_vec())));
    shepherd.send(b'K', &[9]);
    let (frames, kind) = shepherd.finish();
    assert_eq!(kind, ExitKind::Signal(9));
    assert_eq!(frames, vec![Frame::Out(b"partial".to_vec())]);
}

#[test]
fn the_log_descriptor_relays_its_lines_as_l_frames() {
    let mut cfg = sh("echo 'first record' >&3; echo out; printf 'second\\nthird' >&3");
    cfg.log_fd = 3;
    let mut shepherd = Shepherd::start(&cfg);
    shepherd.expect_pid();
    let (frames, kind) = shepherd.finish();
    assert_eq!(kind, ExitKind::Code(0));
    let logs: Vec<&[u8]> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Log(line) => Some(line.as_slice()),
            _ => None,
        })
        .collect();
    assert_eq!(logs, vec![&b"first record"[..], b"second", b"third"]);
    assert_eq!(outs(&frames), vec![b"out".to_vec()]);
}

#[test]
fn without_a_log_descriptor_the_worker_has_none() {
    let mut shepherd = Shepherd::start(&sh("echo x >&3 || echo no fd 3"));
    shepherd.expect_pid();
    let (frames, _) = shepherd.finish();
    assert_eq!(outs(&frames), vec![b"no fd 3".to_vec()]);
}

#[test]
fn output_beyond_the_window_waits_for_acknowledgements() {
    // Far more than a pipe buffer holds: unacknowledged, the worker blocks
    // in write before it reaches the end and creates the marker file.
    let dir = temp_dir("flow");
    let marker = dir.join("done");
    let lines = 20_000;
    let mut cfg = sh(&format!(
        "i=0; while [ $i -lt {lines} ]; do echo line$i; i=$((i+1)); done; touch {}",
        path_str(&marker)
    ));
    cfg.window = 4;
    let mut shepherd = Shepherd::start_manual_ack(&cfg);
    shepherd.expect_pid();
    let mut received = Vec::new();
    for _ in 0..4 {
        received.push(shepherd.expect_out());
    }
    // The window is spent: nothing more comes, and the worker is stuck.
    assert!(
        shepherd
            .next_if_within(Duration::from_millis(300))
            .is_none(),
        "a fifth frame arrived without an acknowledgement"
    );
    assert!(!marker.exists(), "the worker was not slowed down");

    // Acknowledged one by one, everything arrives, in order.
    shepherd.ack(4);
    let kind = loop {
        match shepherd.next() {
            Some(Frame::Out(line)) => {
                received.push(line);
                shepherd.ack(1);
            }
            Some(Frame::Exit(kind)) => break kind,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(kind, ExitKind::Code(0));
    let expected: Vec<Vec<u8>> = (0..lines)
        .map(|i| format!("line{i}").into_bytes())
        .collect();
    assert_eq!(received.len(), expected.len(), "lines received");
    assert!(
        received == expected,
        "the lines arrived changed or out of order"
    );
    assert!(marker.exists());
}
