//! progress: what the engine reports while it streams: bytes read of the file, bytes written
//! to the disk, rate and ETA. The engine calls a [`Progress`] at most a few times a second;
//! [`ConsoleProgress`] prints plain lines (console, CLI stderr), the agent sends events.

use std::time::{Duration, Instant};

/// One progress report.
#[derive(Debug, Clone, Copy, Default)]
pub struct Report {
    /// Bytes of the file read so far (the ordered pass).
    pub read: u64,
    /// Size of the file as served, when known.
    pub total: Option<u64>,
    /// Bytes written to the target so far (data, not zeroes).
    pub written: u64,
    /// Seconds since the download started.
    pub elapsed: f64,
    /// Reconnections so far.
    pub resumes: u32,
}

impl Report {
    /// Bytes per second read.
    pub fn rate(&self) -> f64 {
        if self.elapsed > 0.0 {
            self.read as f64 / self.elapsed
        } else {
            0.0
        }
    }
    /// Seconds left at the current rate, when the total is known.
    pub fn eta(&self) -> Option<f64> {
        let total = self.total?;
        let rate = self.rate();
        (rate > 0.0).then(|| total.saturating_sub(self.read) as f64 / rate)
    }
    /// "412 MiB / 1.0 GiB (40%), 380 MiB/s, ETA 2 s"
    pub fn line(&self) -> String {
        let mut s = human(self.read);
        if let Some(t) = self.total {
            let pct = (self.read * 100).checked_div(t).unwrap_or(100);
            s += &format!(" / {} ({pct}%)", human(t));
        }
        s += &format!(", {}/s", human(self.rate() as u64));
        if let Some(eta) = self.eta() {
            s += &format!(", ETA {:.0} s", eta);
        }
        s += &format!(", {} written", human(self.written));
        if self.resumes > 0 {
            s += &format!(", {} resumes", self.resumes);
        }
        s
    }
}

/// Receives progress reports.
pub trait Progress: Send {
    fn report(&mut self, r: &Report);
    /// A one-off message (a step started, a decision the engine made).
    fn note(&mut self, _msg: &str) {}
}

/// Prints a line to stderr at most every `every`.
pub struct ConsoleProgress {
    every: Duration,
    last: Option<Instant>,
}

impl ConsoleProgress {
    pub fn new(every: Duration) -> Self {
        ConsoleProgress { every, last: None }
    }
}

impl Progress for ConsoleProgress {
    fn report(&mut self, r: &Report) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < self.every)
        {
            return;
        }
        self.last = Some(now);
        eprintln!("byol-agent: {}", r.line());
    }
    fn note(&mut self, msg: &str) {
        eprintln!("byol-agent: {msg}");
    }
}

/// Reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {
    fn report(&mut self, _r: &Report) {}
}

pub use byol_spec::text::human;

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn report_line() {
        let r = Report {
            read: 512 << 20,
            total: Some(1 << 30),
            written: 256 << 20,
            elapsed: 2.0,
            resumes: 1,
        };
        assert_eq!(
            r.line(),
            "512.0 MiB / 1.0 GiB (50%), 256.0 MiB/s, ETA 2 s, 256.0 MiB written, 1 resumes"
        );
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(10), "10 B");
    }
}
