//! init: the duties of PID 1 that have nothing to do with installing: the early mounts
//! (proc, sys, devtmpfs, run, tmp; efivarfs when the machine booted with UEFI), `/dev` as a
//! booted system has it (devpts on `/dev/pts`, tmpfs on `/dev/shm`, the `/dev/fd`,
//! `/dev/stdin|stdout|stderr` and `/dev/ptmx` links that udev and systemd make: the image's
//! hook runs in a chroot that binds this `/dev`, and bash's `>(…)` needs `/dev/fd`), reaping the
//! orphans the kernel hands to init, never panicking (a panic hook shows the error and ends
//! the machine like any fatal error), and the end itself: the install's [`FailureAction`]
//! (default: show the error for 5 minutes, then power off), done with reboot(2).
//!
//! PID 1 must never exit (the kernel panics when it does): [`end`] never returns, and sleeps
//! forever when reboot(2) itself fails.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use byol_spec::FailureAction;
use nix::errno::Errno;
use nix::mount::{MsFlags, mount};
use nix::sys::reboot::{RebootMode, reboot};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

use super::console::{say, say_urgent};

/// One early mount: what, where, type, flags, options.
struct Mount {
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: &'static str,
}

const EARLY: &[Mount] = &[
    Mount {
        target: "/proc",
        fstype: "proc",
        flags: MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        data: "",
    },
    Mount {
        target: "/sys",
        fstype: "sysfs",
        flags: MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        data: "",
    },
    Mount {
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755",
    },
    Mount {
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "gid=5,mode=0620,ptmxmode=0666",
    },
    Mount {
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
    },
    Mount {
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=0755",
    },
    Mount {
        target: "/tmp",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
    },
];

/// The links a booted system's `/dev` has (made by systemd-tmpfiles / udev): name → target.
pub const DEV_LINKS: &[(&str, &str)] = &[
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("core", "/proc/kcore"),
];

/// Mounts proc, sys, devtmpfs on /dev (with devpts and shm), tmpfs on /run and /tmp, and
/// makes [`DEV_LINKS`] and `/dev/ptmx` → `pts/ptmx`. A mount that is already there (EBUSY)
/// is fine; any other failure is said on the console (stderr, as the consoles are not open
/// yet) and the agent goes on: what needs the mount will fail with its own message.
pub fn mount_early() {
    for m in EARLY {
        if let Err(e) = mount_one(m.target, m.fstype, m.flags, m.data) {
            say(format!("cannot mount {} on {}: {e}", m.fstype, m.target));
        }
    }
    for e in dev_links(Path::new("/dev")) {
        say(e);
    }
}

/// Makes [`DEV_LINKS`] in `dev` (and `ptmx` → `pts/ptmx` when devpts has one), leaving what
/// is already there. Returns what could not be made.
pub fn dev_links(dev: &Path) -> Vec<String> {
    let mut errors = Vec::new();
    let mut links: Vec<(&str, &str)> = DEV_LINKS.to_vec();
    // devtmpfs has a ptmx node of its own that opens the initial devpts instance; the link
    // makes the mounted one's serve, as on systemd machines
    if dev.join("pts/ptmx").exists() && !dev.join("ptmx").exists() {
        links.push(("ptmx", "pts/ptmx"));
    }
    for (name, target) in links {
        let p = dev.join(name);
        if fs::symlink_metadata(&p).is_ok() {
            continue;
        }
        if let Err(e) = std::os::unix::fs::symlink(target, &p) {
            errors.push(format!(
                "cannot make the link {} → {target}: {e}",
                p.display()
            ));
        }
    }
    errors
}

fn mount_one(target: &str, fstype: &str, flags: MsFlags, data: &str) -> Result<(), Errno> {
    let _ = fs::create_dir_all(target);
    match mount(Some(fstype), target, Some(fstype), flags, Some(data)) {
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether the machine booted with UEFI (the kernel shows `/sys/firmware/efi` then).
pub fn booted_efi() -> bool {
    Path::new("/sys/firmware/efi").is_dir()
}

/// Mounts efivarfs on /sys/firmware/efi/efivars when the machine booted with UEFI (call after
/// the `efivarfs` module is loaded, if it is a module). Ok(false) on a BIOS machine.
pub fn mount_efivarfs() -> Result<bool, String> {
    if !booted_efi() {
        return Ok(false);
    }
    let target = "/sys/firmware/efi/efivars";
    mount_one(
        target,
        "efivarfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        "",
    )
    .map(|()| true)
    .map_err(|e| format!("cannot mount efivarfs on {target}: {e}"))
}

// ---- reaping -------------------------------------------------------------------------------

/// Exit statuses the reaper collected: pid → status (exit code, or 128 + signal).
struct Reaped {
    statuses: Mutex<HashMap<i32, i32>>,
    changed: Condvar,
}

/// Statuses kept for [`wait_child`]; older ones (orphans nobody waits for) are dropped.
const REAPED_KEPT: usize = 256;

fn reaped() -> &'static Reaped {
    static R: OnceLock<Reaped> = OnceLock::new();
    R.get_or_init(|| Reaped {
        statuses: Mutex::new(HashMap::new()),
        changed: Condvar::new(),
    })
}

fn statuses() -> MutexGuard<'static, HashMap<i32, i32>> {
    reaped().statuses.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the reaper thread: it waits for any child (its own or an orphan handed to PID 1)
/// and keeps its status for [`wait_child`].
///
/// Contract for code that runs programs (the install hook of issue 5): in PID 1 the reaper
/// may collect a child before `std::process::Child::wait` does (which then fails with
/// ECHILD), so wait for children with [`wait_child`] (`child.id()`), not `Child::wait`.
pub fn start_reaper() {
    let spawn = std::thread::Builder::new()
        .name("reaper".into())
        .stack_size(64 << 10)
        .spawn(|| {
            loop {
                match waitpid(Pid::from_raw(-1), None) {
                    Ok(status) => {
                        let (pid, code) = match status {
                            WaitStatus::Exited(p, c) => (p, c),
                            WaitStatus::Signaled(p, s, _) => (p, 128 + s as i32),
                            _ => continue,
                        };
                        let mut map = statuses();
                        if map.len() >= REAPED_KEPT {
                            map.clear();
                        }
                        map.insert(pid.as_raw(), code);
                        reaped().changed.notify_all();
                    }
                    Err(Errno::EINTR) => {}
                    // No child at all: look again later.
                    Err(_) => std::thread::sleep(Duration::from_millis(250)),
                }
            }
        });
    if let Err(e) = spawn {
        say(format!("cannot start the reaper thread: {e}"));
    }
}

/// The exit status of child `pid` (exit code, or 128 + signal number) once the reaper has
/// collected it; None after `timeout`.
pub fn wait_child(pid: u32, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    let mut map = statuses();
    loop {
        if let Some(code) = map.remove(&(pid as i32)) {
            return Some(code);
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        map = reaped()
            .changed
            .wait_timeout(map, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

// ---- the end -------------------------------------------------------------------------------

type FatalReporter = Box<dyn Fn(&str) + Send + Sync>;

struct EndState {
    action: FailureAction,
    reporter: Option<FatalReporter>,
}

fn end_state() -> MutexGuard<'static, EndState> {
    static S: Mutex<EndState> = Mutex::new(EndState {
        action: FailureAction::Poweroff { seconds: 300 },
        reporter: None,
    });
    S.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a fatal error does from now on (the config's `on_failure`, once it is known).
pub fn set_failure_action(action: FailureAction) {
    end_state().action = action;
}

pub fn failure_action() -> FailureAction {
    end_state().action
}

/// How a panic is reported to the server once the network is up (a `failed` event).
pub fn set_fatal_reporter(f: impl Fn(&str) + Send + Sync + 'static) {
    end_state().reporter = Some(Box::new(f));
}

/// Makes every panic a fatal error: shown on the consoles, reported to the server when it can
/// be reached, then the failure action. Never lets the panic unwind out of PID 1.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let where_ = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        let msg = format!("internal error: {what} (thread {thread}{where_})");
        say_urgent(&format!("FATAL: {msg}"));
        // Report from a fresh thread, bounded: the panicking thread may be inside the HTTP
        // client's runtime, where a blocking request is not allowed.
        let reporter = end_state().reporter.take();
        if let Some(r) = reporter {
            let m = msg.clone();
            let (tx, rx) = std::sync::mpsc::channel();
            let _ = std::thread::Builder::new().spawn(move || {
                r(&m);
                let _ = tx.send(());
            });
            let _ = rx.recv_timeout(Duration::from_secs(20));
        }
        end(failure_action(), &format!("FATAL: {msg}"));
    }));
}

/// The end of the agent: shows `headline` and does `action`. Poweroff/reboot: the headline
/// again every minute with the time left, then sync and reboot(2). Halt: the headline every
/// 5 minutes, forever. Never returns. Its lines go through [`say_urgent`]: it may run from the
/// panic hook of a thread that holds the console.
pub fn end(action: FailureAction, headline: &str) -> ! {
    let (seconds, what, mode) = match action {
        FailureAction::Poweroff { seconds } => (seconds, "powering off", RebootMode::RB_POWER_OFF),
        FailureAction::Reboot { seconds } => (seconds, "rebooting", RebootMode::RB_AUTOBOOT),
        FailureAction::Halt => {
            say_urgent(headline);
            say_urgent("halted: the machine stays up showing this; power it off by hand");
            loop {
                std::thread::sleep(Duration::from_secs(300));
                say_urgent(headline);
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let left = deadline.saturating_duration_since(Instant::now()).as_secs();
        if left == 0 {
            break;
        }
        say_urgent(&format!("{headline}\n{what} in {left} s"));
        std::thread::sleep(Duration::from_secs(left.min(60)));
    }
    say_urgent(&format!("{what} now"));
    nix::unistd::sync();
    let err = match reboot(mode) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    say_urgent(&format!("reboot(2) failed: {err}; staying up"));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Whether the kernel's random number generator is seeded (getrandom(2) would not block).
/// Until it is, TLS (ring) waits: in a VM without RDRAND or virtio-rng that can be minutes.
pub fn crng_ready() -> bool {
    let mut b = [0u8; 1];
    // SAFETY: getrandom writes at most 1 byte into the valid buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 1, libc::GRND_NONBLOCK) };
    n == 1
}

// ---- memory ----------------------------------------------------------------------------------

/// A `Vm…:`/`Mem…:` line of a /proc status file, in KiB.
fn kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The agent's peak resident memory (VmHWM of /proc/self/status), KiB.
pub fn peak_rss_kib() -> Option<u64> {
    kib_field(&fs::read_to_string("/proc/self/status").ok()?, "VmHWM")
}

/// The machine's memory (MemTotal of /proc/meminfo), KiB.
pub fn mem_total_kib() -> Option<u64> {
    kib_field(&fs::read_to_string("/proc/meminfo").ok()?, "MemTotal")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_links_as_a_booted_system_has_them() {
        let t = tempfile::tempdir().unwrap();
        let dev = t.path();
        fs::create_dir_all(dev.join("pts")).unwrap();
        fs::write(dev.join("pts/ptmx"), "").unwrap();
        // already there: left alone
        std::os::unix::fs::symlink("/elsewhere", dev.join("stderr")).unwrap();
        assert!(dev_links(dev).is_empty());
        let link = |n: &str| fs::read_link(dev.join(n)).unwrap();
        assert_eq!(link("fd"), Path::new("/proc/self/fd"));
        assert_eq!(link("stdin"), Path::new("/proc/self/fd/0"));
        assert_eq!(link("stdout"), Path::new("/proc/self/fd/1"));
        assert_eq!(link("stderr"), Path::new("/elsewhere"));
        assert_eq!(link("ptmx"), Path::new("pts/ptmx"));
        assert!(dev_links(dev).is_empty());
    }

    #[test]
    fn status_fields() {
        let s = "Name:\tbyol\nVmPeak:\t  12000 kB\nVmHWM:\t    5120 kB\nVmRSS:\t 4000 kB\n";
        assert_eq!(kib_field(s, "VmHWM"), Some(5120));
        assert_eq!(kib_field(s, "VmSwap"), None);
        assert!(peak_rss_kib().unwrap() > 0);
        assert!(mem_total_kib().unwrap() > 0);
    }
}
