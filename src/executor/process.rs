//! Running one task command as a child process (DESIGN §10). The executor never runs a task's
//! argv itself: it runs its own binary as a shim, `triggerer task-shim --parent <pid> -- argv…`,
//! in a new process group whose id is the shim's pid, with the task log as stdout and stderr.
//! The shim ([`shim`]) runs the argv in that group and reports its exit status; when the
//! executor dies, the kernel tells the shim (its parent-death signal) and the shim kills the
//! whole group, so a task and everything it started die with the executor. On a timeout or a
//! cancel, [`run`] stops the group with [`kill_group`]: SIGTERM, then SIGKILL after
//! [`KILL_GRACE`].
//!
//! This module owns process groups, signals and exit statuses; it must not touch the database,
//! decide task states or retries, or interpret a task's output.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};
use thiserror::Error;
use tokio::process::Command;
use tokio::signal::unix::{signal, SignalKind};
use triggerer_sdk::CancellationToken;

/// How long a group has to exit after SIGTERM before it gets SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(5);
/// The shim's exit status when it ran nothing because its parent was already gone, or it could
/// not set itself up. Distinct from the shells' 126/127 and from 128+N.
pub const SHIM_FAILED: i32 = 125;
/// The shim's exit status when the program could not be found (as shells report it).
pub const NOT_FOUND: i32 = 127;
/// The shim's exit status when the program was found but could not be run.
pub const NOT_EXECUTABLE: i32 = 126;
/// How often [`kill_group`] looks whether the leader has exited during the grace period.
const EXIT_POLL: Duration = Duration::from_millis(20);

/// What to run.
#[derive(Debug)]
pub struct Launch<'a> {
    /// The task's argv (for a `shell` task the executor passes `["/bin/sh", "-c", script]`).
    pub argv: &'a [String],
    /// Added to the executor's own environment.
    pub env: &'a [(String, String)],
    /// Receives stdout and stderr.
    pub log: std::fs::File,
    /// The `triggerer` binary to run as the shim (`std::env::current_exe()` in production).
    pub shim: &'a Path,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessEnd {
    /// Exited with this status (0 is success). A signal-killed command shows as 128+N (the
    /// shim's report).
    Exited(i32),
    /// `execution_timeout` elapsed; the process group was killed.
    TimedOut,
    /// `cancel` fired; the process group was killed.
    Cancelled,
}

#[derive(Debug, Error)]
pub enum ProcessError {
    #[error("cannot give the task log to the task shim as its stderr: {0}")]
    Log(#[source] io::Error),
    #[error("cannot start the task shim `{}`: {source}", path.display())]
    Spawn {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot wait for the task shim `{}` (pid {pid}): {source}", path.display())]
    Wait {
        path: PathBuf,
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("cannot signal the task's process group {pgid}: {source}")]
    Kill {
        pgid: u32,
        #[source]
        source: io::Error,
    },
    #[error("refusing to kill process group {pgid}: it is not a task's group")]
    NotATaskGroup { pgid: u32 },
}

/// Spawns the shim; calls `started(pid)` right after spawning (the shim's pid, which is also
/// the id of the task's process group); waits for it to end, for `timeout`, or for `cancel`.
///
/// Must be called on a runtime worker thread, never from `spawn_blocking`: see [`shim`] on the
/// parent-death signal, which follows the thread that spawned.
pub async fn run(
    launch: Launch<'_>,
    timeout: Option<Duration>,
    cancel: &CancellationToken,
    started: impl FnOnce(u32),
) -> Result<ProcessEnd, ProcessError> {
    let stderr = launch.log.try_clone().map_err(ProcessError::Log)?;
    let mut command = Command::new(launch.shim);
    command
        .arg("task-shim")
        .arg("--parent")
        .arg(std::process::id().to_string())
        .arg("--")
        .args(launch.argv)
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(launch.log))
        .stderr(Stdio::from(stderr))
        .process_group(0)
        // The group is killed by [`kill_group`] or by the shim; dropping the handle (a
        // cancelled executor future) must not kill the shim alone and orphan its task.
        .kill_on_drop(false);
    let mut child = command.spawn().map_err(|source| ProcessError::Spawn {
        path: launch.shim.to_path_buf(),
        source,
    })?;
    let wait_error = |pid: u32, source: io::Error| ProcessError::Wait {
        path: launch.shim.to_path_buf(),
        pid,
        source,
    };
    let Some(pid) = child.id() else {
        // Only a reaped child has no id, and nothing has waited for this one yet.
        return Err(wait_error(
            0,
            io::Error::other("the shim has no pid right after it was spawned"),
        ));
    };
    started(pid);

    let deadline = async {
        match timeout {
            Some(timeout) => tokio::time::sleep(timeout).await,
            None => std::future::pending().await,
        }
    };
    let end = tokio::select! {
        // A command that finished as the deadline or the cancel came counts as finished.
        biased;
        status = child.wait() => {
            return status
                .map(|s| ProcessEnd::Exited(exit_code(s)))
                .map_err(|e| wait_error(pid, e));
        }
        () = cancel.cancelled() => ProcessEnd::Cancelled,
        () = deadline => ProcessEnd::TimedOut,
    };
    // The shim is not reaped before `kill_group` has sent its SIGKILL: an unreaped leader keeps
    // the group id from being given to an unrelated process in between.
    let killed = kill_group(pid).await;
    let reaped = child.wait().await.map_err(|e| wait_error(pid, e));
    killed?;
    reaped?;
    Ok(end)
}

/// Kills a process group politely: SIGTERM to the group, then SIGKILL to the group if the
/// leader has not exited within [`KILL_GRACE`]. The SIGKILL is sent in any case, for what
/// ignored SIGTERM or outlived the leader; a group that is already gone is not an error.
///
/// If the leader is this process's child it is not reaped here (the caller reaps it), which is
/// what keeps the group id from being reused before the SIGKILL. Refuses group 1 (to `kill`,
/// every process) and this process's own group.
pub async fn kill_group(pgid: u32) -> Result<(), ProcessError> {
    let leader = i32::try_from(pgid)
        .ok()
        .and_then(Pid::from_raw)
        .filter(|p| *p != Pid::INIT && *p != rustix::process::getpgrp())
        .ok_or(ProcessError::NotATaskGroup { pgid })?;
    signal_group(leader, Signal::TERM, pgid)?;
    let waited = tokio::time::timeout(KILL_GRACE, async {
        while !has_exited(leader) {
            tokio::time::sleep(EXIT_POLL).await;
        }
    })
    .await;
    if waited.is_err() {
        tracing::debug!(
            pgid,
            "task group did not exit within the grace period; killing"
        );
    }
    signal_group(leader, Signal::KILL, pgid)
}

fn signal_group(leader: Pid, signal: Signal, pgid: u32) -> Result<(), ProcessError> {
    match rustix::process::kill_process_group(leader, signal) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(ProcessError::Kill {
            pgid,
            source: e.into(),
        }),
    }
}

/// Whether `leader` has exited, without reaping it.
fn has_exited(leader: Pid) -> bool {
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    match rustix::process::waitid(WaitId::Pid(leader), options) {
        Ok(status) => status.is_some(),
        // Not our child: it has exited once it is gone (its own parent reaped it).
        Err(rustix::io::Errno::CHILD) => {
            rustix::process::test_kill_process(leader) == Err(rustix::io::Errno::SRCH)
        }
        Err(_) => false,
    }
}

/// A status as shells show it: the exit code, or 128+N for a process killed by signal N.
fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => SHIM_FAILED,
    }
}

/// The hidden `task-shim` subcommand: runs `argv` in the shim's process group and returns the
/// exit status to exit with (the command's, 128+N if a signal killed it, 127 or 126 if it
/// could not be run, [`SHIM_FAILED`] if the executor is already gone). Runs inside the
/// binary's runtime, before any database or logging is set up: its stderr is the task log.
///
/// The executor's death reaches the shim as SIGUSR2, its parent-death signal, on which it kills
/// its whole group (the command, all it started, and itself). PR_SET_PDEATHSIG fires when the
/// parent *thread* that forked the shim exits, not the parent process: the executor spawns
/// from runtime worker threads, which live as long as the runtime, so this is the executor's
/// death (the main thread running `block_on` lives as long, too). It must never spawn from
/// `spawn_blocking` threads, which exit when idle and would kill a healthy task, nor from a
/// worker that called `block_in_place`, which may end up as such a thread.
pub async fn shim(parent: u32, argv: &[String]) -> i32 {
    let Some((program, args)) = argv.split_first() else {
        eprintln!("task-shim: no command to run");
        return NOT_FOUND;
    };
    // Handlers first: a parent death right after the prctl must find SIGUSR2 handled (its
    // default action would kill the shim alone, leaving the command it is about to start).
    let (mut terms, mut orphaned) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::user_defined2()),
    ) {
        (Ok(terms), Ok(orphaned)) => (terms, orphaned),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("task-shim: cannot handle signals: {e}");
            return SHIM_FAILED;
        }
    };
    if let Err(e) = rustix::process::set_parent_process_death_signal(Some(Signal::USR2)) {
        eprintln!("task-shim: cannot set the parent-death signal: {e}");
        return SHIM_FAILED;
    }
    // After the prctl, so a parent that died before it is seen here instead: the shim was
    // reparented, and nothing would kill the command when the executor is gone.
    let current_parent = rustix::process::getppid().map(|p| p.as_raw_pid());
    if current_parent.and_then(|p| u32::try_from(p).ok()) != Some(parent) {
        eprintln!("task-shim: the executor (pid {parent}) is gone; not running `{program}`");
        return SHIM_FAILED;
    }
    // The executor starts the shim as its group's leader; started any other way (by hand, by a
    // script) it becomes one, so that killing "its group" cannot reach its starter's group.
    let me = rustix::process::getpid();
    if rustix::process::getpgrp() != me {
        if let Err(e) = rustix::process::setpgid(None, None) {
            eprintln!("task-shim: cannot lead a process group of its own: {e}");
            return SHIM_FAILED;
        }
    }

    // Same group, inherited stdio: the command writes to the task log directly.
    let mut child = match Command::new(program).args(args).kill_on_drop(false).spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("task-shim: cannot run `{program}`: {e}");
            return if e.kind() == io::ErrorKind::NotFound {
                NOT_FOUND
            } else {
                NOT_EXECUTABLE
            };
        }
    };
    loop {
        tokio::select! {
            status = child.wait() => {
                // What the command left running in the background (`server &` without `wait`)
                // would outlive its try, holding the log open. The group is still this shim's,
                // so its id cannot have been reused: SIGTERM to it reaches only those leftovers
                // (the shim handles SIGTERM and stays to report the command's status).
                let _ = rustix::process::kill_process_group(me, Signal::TERM);
                return match status {
                    Ok(status) => exit_code(status),
                    Err(e) => {
                        eprintln!("task-shim: cannot wait for `{program}`: {e}");
                        SHIM_FAILED
                    }
                };
            }
            // SIGTERM to the group reached the command too: the shim waits for it to end, so
            // that the executor learns how it ended (and SIGKILL follows if it does not).
            Some(()) = terms.recv() => {}
            Some(()) = orphaned.recv() => {
                eprintln!("task-shim: the executor (pid {parent}) died; killing the task");
                if let Err(e) = rustix::process::kill_process_group(me, Signal::KILL) {
                    eprintln!("task-shim: cannot kill the task's process group: {e}");
                    return SHIM_FAILED;
                }
            }
        }
    }
}
