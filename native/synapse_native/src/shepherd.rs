//! Signals from the BEAM side of a worker (`SynapseCore.Shepherd`): when a
//! shepherd does not confirm that its worker ended (it was killed, or is
//! stopped), the BEAM ends the worker's process group, and the shepherd,
//! itself. A direct `kill(2)`: no shell, no fork, never blocks.

use rustler::Atom;

use crate::atoms;

/// Sends SIGKILL to the process `pid`, or with `group` to its process group
/// (the worker is its group's leader, so its pid is the group's id).
/// Answers `:ok`, or `:not_found` when no such process (group) exists.
#[rustler::nif]
fn shepherd_kill(pid: u32, group: bool) -> Atom {
    // Only positive pids: 0 and negative values would signal the BEAM's own
    // group or every process it may signal.
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return atoms::not_found();
    };
    if pid <= 1 {
        return atoms::not_found();
    }
    let target = if group { -pid } else { pid };
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(target, libc::SIGKILL) } == 0 {
        atoms::ok()
    } else {
        atoms::not_found()
    }
}
