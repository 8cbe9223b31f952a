//! console: what the operator watching the machine sees. Every line is written, with the time
//! since the kernel started (`[   12.345] byol: …`, like the kernel's own lines), to every
//! device named by a `console=` parameter (serial ports included), so a serial log and a
//! screen show the same story. Before [`open`] (and in the host CLI) lines go to stderr.
//!
//! The lines logged since the last [`take_lines`] are also kept (bounded), so that each phase's
//! event carries its own log lines to the server.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Lines kept for the next event (the server takes 500 per event).
const KEPT_LINES: usize = 400;
/// Longest line kept for an event (the server refuses lines over 4096 bytes).
const KEPT_LINE_LEN: usize = 1000;

struct State {
    /// Open console devices; empty = stderr.
    sinks: Vec<(String, File)>,
    kept: Vec<String>,
    dropped: usize,
}

static STATE: Mutex<State> = Mutex::new(State {
    sinks: Vec::new(),
    kept: Vec::new(),
    dropped: 0,
});

fn state() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Seconds since the kernel started (CLOCK_BOOTTIME: counts from boot, like dmesg).
pub fn uptime() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid pointer given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Opens the console devices (`ttyS0`, `tty0`… under `dev_dir`, normally `/dev`); falls back
/// to `console` when none of them opens or none is named. Returns the devices in use.
pub fn open(devices: &[String], dev_dir: &Path) -> Vec<String> {
    let mut sinks = Vec::new();
    let mut failed = Vec::new();
    for d in devices {
        match open_tty(&dev_dir.join(d)) {
            Ok(f) => sinks.push((d.clone(), f)),
            Err(e) => failed.push(format!("{d} ({e})")),
        }
    }
    if sinks.is_empty()
        && let Ok(f) = open_tty(&dev_dir.join("console"))
    {
        sinks.push(("console".to_string(), f));
    }
    let names: Vec<String> = sinks.iter().map(|(n, _)| n.clone()).collect();
    state().sinks = sinks;
    if !failed.is_empty() {
        say(format!("cannot open console {}", failed.join(", ")));
    }
    names
}

fn open_tty(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
}

/// Writes one message (each of its lines) to every console, timestamped, and keeps it for
/// the next event.
pub fn say(msg: impl AsRef<str>) {
    let now = uptime();
    let mut st = state();
    write_lines(&mut st, now, msg.as_ref());
}

fn write_lines(st: &mut State, now: f64, msg: &str) {
    let mut text = String::new();
    for line in msg.lines() {
        text.push_str(&format!("[{now:>9.3}] byol: {line}\n"));
        if st.kept.len() < KEPT_LINES {
            let mut l = line.to_string();
            if l.len() > KEPT_LINE_LEN {
                let mut cut = KEPT_LINE_LEN;
                while !l.is_char_boundary(cut) {
                    cut -= 1;
                }
                l.truncate(cut);
                l.push('…');
            }
            st.kept.push(l);
        } else {
            st.dropped += 1;
        }
    }
    if st.sinks.is_empty() {
        let _ = std::io::stderr().write_all(text.as_bytes());
        return;
    }
    for (_, f) in st.sinks.iter_mut() {
        let _ = f.write_all(text.as_bytes());
    }
}

/// Writes a message even when the console lock is held (a panic while logging): waits a
/// little for the lock, then writes to stderr.
pub fn say_urgent(msg: &str) {
    let now = uptime();
    for _ in 0..50 {
        match STATE.try_lock() {
            Ok(mut st) => return write_lines(&mut st, now, msg),
            Err(std::sync::TryLockError::Poisoned(p)) => {
                return write_lines(&mut p.into_inner(), now, msg);
            }
            Err(std::sync::TryLockError::WouldBlock) => {
                std::thread::sleep(Duration::from_millis(20))
            }
        }
    }
    let _ = writeln!(std::io::stderr(), "[{now:>9.3}] byol: {msg}");
}

/// The lines said since the last call (at most 400, then a line saying how many were left
/// out), for an event's `logs`.
pub fn take_lines() -> Vec<String> {
    let mut st = state();
    let mut lines = std::mem::take(&mut st.kept);
    if st.dropped > 0 {
        lines.push(format!("({} more lines on the console)", st.dropped));
        st.dropped = 0;
    }
    lines
}
