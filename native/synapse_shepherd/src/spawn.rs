//! Starting the worker and signalling its process group.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::protocol::Config;

/// glibc's `execvp` search path when `PATH` is unset; used when the given
/// environment has no `PATH`, so that a bare program name still behaves as
/// it would in a shell-less exec.
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// Highest signal number whose disposition is reset in the worker. Covers
/// the standard signals everywhere and the real-time ones on Linux.
const MAX_SIGNAL: libc::c_int = 64;

/// Why the worker could not be started; its `Display` is the "F" message.
#[derive(Debug)]
pub struct SpawnError(String);

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SpawnError {}

/// A started worker, and the read end of its log pipe if it has one.
#[derive(Debug)]
pub struct Spawned {
    pub child: Child,
    pub log: Option<File>,
}

/// Starts the worker described by `config`.
///
/// Must be called from the main thread: `PR_SET_PDEATHSIG` fires when the
/// *thread* that forked the child exits, and the main thread is the one that
/// lives until the shepherd exits.
pub fn spawn_worker(config: &Config) -> Result<Spawned, SpawnError> {
    // `Config::parse` guarantees a non-empty argv.
    let (program, args) = config
        .argv
        .split_first()
        .ok_or_else(|| SpawnError("empty argv".to_owned()))?;
    let program_display = program.to_string_lossy();

    if let Some(cwd) = &config.cwd {
        // std would report a bad cwd as a bare ENOENT, indistinguishable from
        // a missing program; check first so the message says which it is.
        match std::fs::metadata(cwd) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(SpawnError(format!(
                    "working directory {} is not a directory (program {program_display})",
                    cwd.display()
                )))
            }
            Err(err) => {
                return Err(SpawnError(format!(
                    "{err}: working directory {} (program {program_display})",
                    cwd.display()
                )))
            }
        }
    }

    let path = resolve_program(program, config)
        .map_err(|err| SpawnError(format!("{err}: {program_display}")))?;

    let mut cmd = Command::new(&path);
    cmd.arg0(program)
        .args(args)
        .env_clear()
        .envs(config.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own group, so that one kill(-pgid) reaches every descendant that
        // did not deliberately leave it.
        .process_group(0);
    if let Some(cwd) = &config.cwd {
        cmd.current_dir(cwd);
    }

    let log = match config.log_fd {
        0 => None,
        fd => Some((
            log_pipe().map_err(|err| SpawnError(format!("cannot create the log pipe: {err}")))?,
            // `Config::parse` guarantees it fits.
            libc::c_int::try_from(fd).unwrap_or(libc::c_int::MAX),
        )),
    };
    let log_target = log
        .as_ref()
        .map(|((_, write), fd)| (write.as_raw_fd(), *fd));

    let shepherd_pid = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe calls (prctl, getppid, _exit, rt_sigaction,
    // sigprocmask, dup2, fcntl); it allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(move || {
            child_setup(shepherd_pid);
            if let Some((write, fd)) = log_target {
                give_descriptor(write, fd)?;
            }
            Ok(())
        });
    }

    let child = cmd
        .spawn()
        .map_err(|err| SpawnError(format!("{err}: {program_display}")))?;
    // The worker has its copy of the write end; ours must go, or the reader
    // would never see end of file.
    Ok(Spawned {
        child,
        log: log.map(|((read, _write), _)| File::from(read)),
    })
}

/// A pipe whose both ends are closed on exec: only the descriptor the
/// worker gets (see [`give_descriptor`]) survives into it.
fn log_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Makes `from` available as descriptor `to` in the child, open across exec.
///
/// # Safety
/// Async-signal-safe; meant for the child between fork and exec.
unsafe fn give_descriptor(from: libc::c_int, to: libc::c_int) -> io::Result<()> {
    if from == to {
        // dup2 onto itself keeps close-on-exec: clear it instead.
        let flags = libc::fcntl(from, libc::F_GETFD);
        if flags < 0 || libc::fcntl(from, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
            return Err(io::Error::last_os_error());
        }
    } else if libc::dup2(from, to) < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs in the forked child, between fork and exec.
///
/// # Safety
/// Only async-signal-safe functions may be called here.
unsafe fn child_setup(shepherd_pid: u32) {
    #[cfg(target_os = "linux")]
    {
        // If the shepherd is SIGKILLed it cannot stop the worker; the kernel
        // does it instead.
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    // The shepherd may have died between fork and prctl, in which case the
    // death signal will never come: the child was already reparented.
    if u32::try_from(libc::getppid()).ok() != Some(shepherd_pid) {
        libc::_exit(127);
    }

    // Ignored dispositions survive exec (the BEAM ignores SIGCHLD, for
    // instance); the worker must start from a clean slate.
    for sig in 1..=MAX_SIGNAL {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            reset_disposition(sig);
        }
    }
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
}

/// Restores the default action of `sig`; fails harmlessly (EINVAL) for
/// numbers that are not signals.
///
/// On Linux this bypasses libc: glibc refuses to touch the real-time signals
/// it reserves for itself (32 and 33), yet they can arrive ignored from the
/// environment and would stay ignored in the worker.
///
/// # Safety
/// Async-signal-safe; meant for the child between fork and exec.
#[cfg(target_os = "linux")]
unsafe fn reset_disposition(sig: libc::c_int) {
    // Size of the kernel's sigset_t, which rt_sigaction insists on.
    const KERNEL_SIGSET_BYTES: usize = if cfg!(any(target_arch = "mips", target_arch = "mips64")) {
        16
    } else {
        8
    };
    // An all-zero kernel `struct sigaction` is SIG_DFL with no flags and an
    // empty mask in every architecture's layout; 64 bytes cover them all.
    let default_action = [0u64; 8];
    libc::syscall(
        libc::SYS_rt_sigaction,
        sig,
        default_action.as_ptr(),
        std::ptr::null_mut::<libc::c_void>(),
        KERNEL_SIGSET_BYTES,
    );
}

/// See the Linux variant; elsewhere libc has no reserved signals to skip.
#[cfg(not(target_os = "linux"))]
unsafe fn reset_disposition(sig: libc::c_int) {
    libc::signal(sig, libc::SIG_DFL);
}

/// Finds the executable for `program` the way `execvp` would, but with the
/// worker's `PATH` (not the shepherd's) and relative entries taken relative
/// to the worker's working directory.
fn resolve_program(program: &OsStr, config: &Config) -> io::Result<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        // Relative paths are resolved by exec after the chdir, i.e. against
        // the worker's cwd, like a shell would.
        return Ok(PathBuf::from(program));
    }
    if program.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    let search = config
        .env
        .iter()
        .rev() // the last duplicate wins, as for the environment itself
        .find(|(key, _)| key == "PATH")
        .map_or_else(|| OsString::from(DEFAULT_PATH), |(_, value)| value.clone());

    let mut denied = false;
    for dir in search.as_bytes().split(|&b| b == b':') {
        let dir = if dir.is_empty() {
            Path::new(".")
        } else {
            Path::new(OsStr::from_bytes(dir))
        };
        let candidate = dir.join(program);
        let probe = match (&config.cwd, dir.is_relative()) {
            (Some(cwd), true) => cwd.join(&candidate),
            _ => candidate.clone(),
        };
        match std::fs::metadata(&probe) {
            Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => {
                return Ok(probe);
            }
            Ok(meta) if meta.is_file() => denied = true,
            _ => {}
        }
    }
    Err(io::Error::from_raw_os_error(if denied {
        libc::EACCES
    } else {
        libc::ENOENT
    }))
}

/// Sends `signal` to the worker's process group.
///
/// Only called while the group leader is alive or an unreaped zombie: its pid
/// (the pgid) cannot have been reused yet, so the signal cannot hit a
/// stranger.
pub fn signal_group(pgid: u32, signal: libc::c_int) -> io::Result<()> {
    let pgid =
        libc::pid_t::try_from(pgid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(-pgid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(env: &[(&str, &str)], cwd: Option<&str>) -> Config {
        Config {
            argv: vec!["x".into()],
            env: env
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            cwd: cwd.map(PathBuf::from),
            grace: Duration::ZERO,
            cleanup: None,
            window: 1,
            log_fd: 0,
        }
    }

    #[test]
    fn programs_with_a_slash_are_used_as_is() {
        let cfg = config(&[], None);
        assert_eq!(
            resolve_program(OsStr::new("./run"), &cfg).unwrap(),
            PathBuf::from("./run")
        );
    }

    #[test]
    fn bare_names_are_searched_in_the_given_path_only() {
        let cfg = config(&[("PATH", "/nonexistent:/bin:/usr/bin")], None);
        let found = resolve_program(OsStr::new("sh"), &cfg).unwrap();
        assert!(found.ends_with("sh") && found.is_absolute(), "{found:?}");

        let cfg = config(&[("PATH", "/nonexistent")], None);
        let err = resolve_program(OsStr::new("sh"), &cfg).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn relative_path_entries_are_relative_to_the_worker_cwd() {
        let cfg = config(&[("PATH", "bin")], Some("/"));
        let found = resolve_program(OsStr::new("sh"), &cfg).unwrap();
        assert_eq!(found, PathBuf::from("/bin/sh"));
    }
}
