//! signals: Ctrl-C (SIGINT), SIGTERM and SIGHUP stop xtask cleanly: every process it started
//! (the server, QEMU, curl…) gets SIGTERM, then SIGKILL after a grace period, and xtask exits
//! with 128 + the signal. Children found from /proc (their parent is this process), so nothing
//! needs registering and a recycled pid is never hit. And [`die_with_parent`]: a child that
//! must not outlive xtask even when xtask is killed with SIGKILL (PR_SET_PDEATHSIG).

use std::os::unix::process::CommandExt as _;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// Set once a signal came: the signal thread is stopping the children and will exit.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Whether a signal is being handled. The main thread then must not exit on its own (with 0,
/// when the server it waited for stopped on the signal): [`wait_if_stopping`].
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

/// When a signal is being handled, waits for the signal thread to end the process with
/// 128 + the signal.
pub fn wait_if_stopping() {
    while stopping() {
        std::thread::sleep(Duration::from_millis(100));
    }
}

type OnStop = Box<dyn Fn() + Send>;

/// What must be stopped that is not a child of xtask (a libvirt domain's QEMU, which libvirtd
/// starts detached), by key.
static ON_STOP: std::sync::LazyLock<std::sync::Mutex<std::collections::BTreeMap<String, OnStop>>> =
    std::sync::LazyLock::new(Default::default);

/// Runs `f` when a signal stops xtask (before its children are stopped), until
/// [`forget_on_stop`] with the same key.
pub fn on_stop(key: &str, f: OnStop) {
    ON_STOP
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key.to_string(), f);
}

pub fn forget_on_stop(key: &str) {
    ON_STOP
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(key);
}

/// Starts the thread that handles the signals.
pub fn install() -> anyhow::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                STOPPING.store(true, Ordering::SeqCst);
                let name = match sig {
                    SIGINT => "SIGINT",
                    SIGTERM => "SIGTERM",
                    _ => "SIGHUP",
                };
                eprintln!("\nxtask: {name}: stopping what it started");
                for f in ON_STOP.lock().unwrap_or_else(|p| p.into_inner()).values() {
                    f();
                }
                let left = stop_children(Duration::from_secs(5));
                if left.is_empty() {
                    eprintln!("xtask: stopped, nothing left running");
                } else {
                    eprintln!("xtask: killed {left:?} after 5 s");
                }
                std::process::exit(128 + sig);
            }
        })?;
    Ok(())
}

/// The pids whose parent is this process (from /proc/<pid>/stat), with their names.
fn children() -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // "pid (comm) state ppid …": comm may hold spaces and parentheses
            let (head, rest) = stat.rsplit_once(") ")?;
            let comm = head.split_once(" (")?.1.to_string();
            let mut f = rest.split_whitespace();
            let state = f.next()?;
            let ppid: i32 = f.next()?.parse().ok()?;
            (ppid == me && state != "Z").then_some((pid, comm))
        })
        .collect()
}

/// SIGTERM to every child, SIGKILL to those still there after `grace`. Returns the names of
/// the ones that had to be killed.
pub fn stop_children(grace: Duration) -> Vec<String> {
    for (pid, _) in children() {
        // SAFETY: kill(2) on a pid that is our child (not yet reaped, so not recycled).
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let t0 = Instant::now();
    while t0.elapsed() < grace && !children().is_empty() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = children();
    for (pid, _) in &left {
        // SAFETY: as above.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    left.into_iter().map(|(_, n)| n).collect()
}

/// Makes the command's process get SIGKILL when xtask dies, however it dies.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}
