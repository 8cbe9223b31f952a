//! hook: runs the image's `/root/.ovh/make_image_bootable.sh` in a chroot of the image (fork,
//! chroot, chdir `/`, exec: by hand, as std's spawn waits for a child whose exec failed, which
//! PID 1's reaper may have collected first), in its own process group, with a clean environment (`PATH`,
//! `HOME`, `LANG`, and the install's `BOOT_MODE`, `TARGET_DISK`, `ESP_DEVICE`), stdout and
//! stderr merged into one pipe and handed over line by line in batches (one a second, or
//! sooner when many lines come), with a timeout after which the whole group is killed.
//! Missing, not executable, failing (non-zero exit, killed) or timed out: an error with the
//! script's last lines. Leftover background processes of the script are killed when it ends,
//! so that nothing keeps the image busy.
//!
//! In PID 1 the agent's reaper thread collects every child, so the exit status is taken from it
//! ([`crate::agent::init::wait_child`]); elsewhere (tests) from the child itself.

use std::ffi::CString;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::super::init;

/// The hook the guide's images carry.
pub const HOOK_PATH: &str = "/root/.ovh/make_image_bootable.sh";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(byol_spec::DEFAULT_HOOK_TIMEOUT_SECONDS);
/// A script that runs long says it is alive this often (a line in its output).
pub const HEARTBEAT: Duration = Duration::from_secs(30);
/// Lines kept for the error message.
pub const LAST_LINES: usize = 20;
/// A batch is handed over when it has this many lines, even before its second is up.
const BATCH_MAX: usize = 200;
/// Longest line passed on (the server takes 4096 bytes).
const LINE_MAX: usize = 1000;
/// How long the output may go on after the script itself exited (its leftover children).
const DRAIN: Duration = Duration::from_secs(2);

/// What to run.
#[derive(Debug, Clone)]
pub struct HookSpec {
    /// The chroot (the image's root mounted).
    pub root: PathBuf,
    /// The script's path inside the chroot.
    pub script: String,
    /// Set besides PATH, HOME and LANG.
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
    /// How often lines are handed over.
    pub batch: Duration,
    /// How often a `still running` line is added to the output (see [`HEARTBEAT`]).
    pub heartbeat: Duration,
    /// Set when the install must stop (the server cancelled it): the hook is killed.
    pub stop: crate::stop::Stop,
}

/// The line added to the output every [`HookSpec::heartbeat`] while the script runs.
pub fn heartbeat_line(script: &str, elapsed: Duration, limit: Duration) -> String {
    format!(
        "byol: {script} still running, {} so far (time limit {})",
        byol_spec::format_duration(elapsed.as_secs()),
        byol_spec::format_duration(limit.as_secs())
    )
}

/// A hook that ran and exited 0.
#[derive(Debug, Clone, PartialEq)]
pub struct HookDone {
    pub seconds: f64,
    pub lines: usize,
    pub last: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HookError {
    #[error(
        "the image has no {script}: the guide's images must carry it to make the disk bootable"
    )]
    Missing { script: String },
    #[error(
        "{script} in the image is not executable (mode {mode:o}): make it executable (chmod +x)"
    )]
    NotExecutable { script: String, mode: u32 },
    #[error("cannot run {script} in the image: {cause}")]
    Spawn { script: String, cause: String },
    #[error("{script} failed with exit code {code}{}", last_lines(.last))]
    Failed {
        script: String,
        code: i32,
        last: Vec<String>,
    },
    #[error("{script} was killed by signal {signal}{}", last_lines(.last))]
    Killed {
        script: String,
        signal: i32,
        last: Vec<String>,
    },
    #[error(
        "{script} did not finish within {} and was killed (raise the limit: the install's \
         hookTimeout, `byol machine hook-timeout`, or `byol serve --hook-timeout`){}",
        byol_spec::format_duration(*.seconds),
        last_lines(.last)
    )]
    Timeout {
        script: String,
        seconds: u64,
        last: Vec<String>,
    },
    #[error("{script} was killed: {reason}")]
    Stopped { script: String, reason: String },
}

fn last_lines(last: &[String]) -> String {
    if last.is_empty() {
        return " (it printed nothing)".to_string();
    }
    let lines: Vec<String> = last.iter().map(|l| super::clip(l, 180)).collect();
    format!("; its last lines:\n{}", lines.join("\n"))
}

/// Runs the hook; `on_batch` gets its output lines as they come. Ok when it exited 0.
pub fn run(spec: &HookSpec, on_batch: &mut dyn FnMut(Vec<String>)) -> Result<HookDone, HookError> {
    let script = spec.script.clone();
    let host_path = spec.root.join(spec.script.trim_start_matches('/'));
    // A symlink may point anywhere in the image (not on the host): exec will tell.
    let is_link = std::fs::symlink_metadata(&host_path).is_ok_and(|m| m.file_type().is_symlink());
    match std::fs::metadata(&host_path) {
        _ if is_link => {}
        Err(_) => return Err(HookError::Missing { script }),
        Ok(m) if !m.is_file() => return Err(HookError::Missing { script }),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => {
            return Err(HookError::NotExecutable {
                script,
                mode: m.permissions().mode() & 0o7777,
            });
        }
        Ok(_) => {}
    }
    let start = Instant::now();
    let (pid, reader) = spawn_in_chroot(spec).map_err(|cause| HookError::Spawn {
        script: spec.script.clone(),
        cause,
    })?;
    let (tx, rx) = mpsc::channel::<String>();
    let _ = std::thread::Builder::new()
        .name("hook-output".into())
        .stack_size(64 << 10)
        .spawn(move || {
            let mut r = BufReader::new(reader);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let l = String::from_utf8_lossy(&buf);
                        let l = l.trim_end_matches(['\n', '\r']);
                        if tx.send(super::clip(l, LINE_MAX)).is_err() {
                            break;
                        }
                    }
                }
            }
        });

    let mut waiter = Waiter::new();
    let mut exec_errno: Option<i32> = None;
    let mut batch: Vec<String> = Vec::new();
    let mut last: Vec<String> = Vec::new();
    let mut lines = 0usize;
    let mut batch_start = Instant::now();
    let mut exit: Option<i32> = None;
    let mut exited_at: Option<Instant> = None;
    let mut timed_out = false;
    let mut stopped: Option<(String, Instant)> = None;
    let mut eof = false;
    let mut next_beat = spec.heartbeat;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(l) if l.starts_with(EXEC_FAILED) => {
                exec_errno = l[EXEC_FAILED.len()..].trim().parse().ok();
            }
            Ok(l) => {
                lines += 1;
                if last.len() == LAST_LINES {
                    last.remove(0);
                }
                last.push(l.clone());
                batch.push(l);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => eof = true,
        }
        if exit.is_none() && !spec.heartbeat.is_zero() && start.elapsed() >= next_beat {
            batch.push(heartbeat_line(&spec.script, next_beat, spec.timeout));
            next_beat += spec.heartbeat;
        }
        if !batch.is_empty() && (batch.len() >= BATCH_MAX || batch_start.elapsed() >= spec.batch) {
            on_batch(std::mem::take(&mut batch));
            batch_start = Instant::now();
        } else if batch.is_empty() {
            batch_start = Instant::now();
        }
        if exit.is_none() {
            exit = waiter.poll(pid);
            if exit.is_some() {
                exited_at = Some(Instant::now());
                // Its leftover background processes must not hold the image.
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
        if let Some(at) = exited_at
            && (eof || at.elapsed() >= DRAIN)
        {
            break;
        }
        if exit.is_none() && !timed_out && start.elapsed() >= spec.timeout {
            timed_out = true;
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        if exit.is_none()
            && stopped.is_none()
            && let Some(why) = spec.stop.reason()
        {
            stopped = Some((why.to_string(), Instant::now()));
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let killed_long_ago = (timed_out
            && start.elapsed() >= spec.timeout + Duration::from_secs(10))
            || stopped
                .as_ref()
                .is_some_and(|(_, at)| at.elapsed() >= Duration::from_secs(10));
        if killed_long_ago && exit.is_none() {
            // Not even SIGKILL ended it (a process stuck in the kernel): give up waiting.
            break;
        }
    }
    // Whatever is still there after the script ended is dropped (a child that escaped the
    // process group and still holds the pipe).
    while let Ok(l) = rx.try_recv() {
        if let Some(n) = l.strip_prefix(EXEC_FAILED) {
            exec_errno = n.trim().parse().ok();
            continue;
        }
        lines += 1;
        if last.len() == LAST_LINES {
            last.remove(0);
        }
        last.push(l.clone());
        batch.push(l);
    }
    if !batch.is_empty() {
        on_batch(batch);
    }
    let seconds = start.elapsed().as_secs_f64();
    if let Some(errno) = exec_errno {
        let e = std::io::Error::from_raw_os_error(errno);
        let hint = if errno == libc::ENOENT {
            " (is the interpreter of its #! line in the image?)"
        } else {
            ""
        };
        return Err(HookError::Spawn {
            script,
            cause: format!("{e}{hint}"),
        });
    }
    if let Some((reason, _)) = stopped {
        return Err(HookError::Stopped { script, reason });
    }
    if timed_out {
        return Err(HookError::Timeout {
            script,
            seconds: spec.timeout.as_secs(),
            last,
        });
    }
    match exit {
        Some(0) => Ok(HookDone {
            seconds,
            lines,
            last,
        }),
        Some(code) if code > 128 => Err(HookError::Killed {
            script,
            signal: code - 128,
            last,
        }),
        Some(code) => Err(HookError::Failed { script, code, last }),
        None => Err(HookError::Timeout {
            script,
            seconds: spec.timeout.as_secs(),
            last,
        }),
    }
}

/// The line the child writes when exec fails, before the errno.
const EXEC_FAILED: &str = "\u{1}byol-exec-failed ";

/// Forks a child that makes `spec.root` its root, `/` its directory, a new process group its
/// own, the pipe its stdout and stderr, /dev/null its stdin, the default signal dispositions
/// and an empty signal mask its own, and execs the script with the hook's environment. Only
/// async-signal-safe calls run between fork and exec, on memory prepared before the fork (the
/// agent has threads). When exec fails the child writes [`EXEC_FAILED`] and the errno to the
/// pipe and exits 127. Ok: the child's pid and the pipe's read side.
fn spawn_in_chroot(spec: &HookSpec) -> Result<(u32, std::io::PipeReader), String> {
    let cstr = |s: &[u8]| CString::new(s).map_err(|_| "a NUL byte in an argument".to_string());
    let root = cstr(spec.root.as_os_str().as_bytes())?;
    let script = cstr(spec.script.as_bytes())?;
    let mut env: Vec<CString> = vec![
        cstr(b"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")?,
        cstr(b"HOME=/root")?,
        cstr(b"LANG=C.UTF-8")?,
        cstr(b"DEBIAN_FRONTEND=noninteractive")?,
    ];
    for (k, v) in &spec.env {
        env.push(cstr(format!("{k}={v}").as_bytes())?);
    }
    let argv: [*const libc::c_char; 2] = [script.as_ptr(), std::ptr::null()];
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let devnull = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
    let (reader, writer) = std::io::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (null_fd, w_fd) = (devnull.as_raw_fd(), writer.as_raw_fd());
    let mut marker = [0u8; 64];
    let head = EXEC_FAILED.as_bytes();
    marker[..head.len()].copy_from_slice(head);

    // SAFETY: fork in a threaded process; the child only makes async-signal-safe system calls
    // (sigprocmask, signal, dup2, setpgid, unshare, fork, waitpid, chroot, chdir, execve,
    // write, _exit) on memory that was allocated before the fork, and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: see above: the child.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            for sig in [
                libc::SIGPIPE,
                libc::SIGINT,
                libc::SIGTERM,
                libc::SIGHUP,
                libc::SIGCHLD,
            ] {
                libc::signal(sig, libc::SIG_DFL);
            }
            libc::dup2(null_fd, 0);
            libc::dup2(w_fd, 1);
            libc::dup2(w_fd, 2);
            libc::setpgid(0, 0);
            // The script runs in a PID namespace of its own: when it ends or is killed, the
            // kernel kills everything left in it, daemons that left the process group
            // included. This process stays outside and exits as the script did; its child is
            // the namespace's init, which reaps orphans until the script (its child) ends.
            // (Without the namespace, when unshare or fork fails, the script runs here.)
            if libc::unshare(libc::CLONE_NEWPID) == 0 {
                let init = libc::fork();
                if init > 0 {
                    libc::_exit(wait_for(init));
                }
                if init == 0 {
                    let script_pid = libc::fork();
                    if script_pid > 0 {
                        libc::_exit(wait_for(script_pid));
                    }
                }
            }
            if libc::chroot(root.as_ptr()) == 0 && libc::chdir(c"/".as_ptr()) == 0 {
                libc::execve(script.as_ptr(), argv.as_ptr(), envp.as_ptr());
            }
            let errno = *libc::__errno_location();
            // "<marker><errno>\n" without allocating.
            let mut n = head.len();
            let mut digits = [0u8; 12];
            let mut d = 0;
            let mut v = errno.unsigned_abs();
            loop {
                digits[d] = b'0' + (v % 10) as u8;
                d += 1;
                v /= 10;
                if v == 0 {
                    break;
                }
            }
            while d > 0 {
                d -= 1;
                marker[n] = digits[d];
                n += 1;
            }
            marker[n] = b'\n';
            libc::write(2, marker.as_ptr().cast(), n + 1);
            libc::_exit(127);
        }
    }
    drop(writer);
    drop(devnull);
    Ok((pid as u32, reader))
}

/// In a forked child: waits for `pid`, reaping any other child meanwhile (an init's orphans),
/// and gives its exit code (128 + signal when killed). Async-signal-safe.
unsafe fn wait_for(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    loop {
        // SAFETY: waitpid on the caller's children, with a valid status pointer.
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r == pid {
            break;
        }
        // SAFETY: errno of this thread.
        if r < 0 && unsafe { *libc::__errno_location() } != libc::EINTR {
            return 255;
        }
    }
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}

/// Gets the child's exit status: from PID 1's reaper, or with waitpid.
struct Waiter {
    reaper: bool,
}

impl Waiter {
    fn new() -> Waiter {
        Waiter {
            reaper: super::super::running_as_init(),
        }
    }

    /// The exit code (128 + signal when killed), once the child has exited.
    fn poll(&mut self, pid: u32) -> Option<i32> {
        if self.reaper {
            return init::wait_child(pid, Duration::ZERO);
        }
        match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => Some(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => Some(128 + sig as i32),
            Ok(_) => None,
            // Someone else reaped it: say it failed rather than wait forever.
            Err(_) => Some(255),
        }
    }
}
