//! download: the image streamed to the disk by the image engine
//! ([`crate::image::engine::write_image`]), with the install's URL, type, checksum and HTTP
//! headers, its progress sent as `download` events every ~2 s (and said on the console every
//! 10 s). The engine's errors keep the guide's wording; its first MiB is written only after
//! the checksum is verified and the image checked ([`super::image::inspect`] on the disk as it
//! will read: the held first MiB over what was written), so a refused image never reaches the
//! disk's first MiB.

use std::path::Path;
use std::time::{Duration, Instant};

use byol_spec::{AgentEvent, EventStatus, InstallSpec, Phase};

use super::super::console::say;
use super::Events;
use super::image;
use crate::image::engine::{self, BeforeCommit, EngineError, WriteOptions};
use crate::image::progress::{Progress, Report, human};

/// A `download` event at most this often.
pub const EVENT_EVERY: Duration = Duration::from_secs(2);
/// A progress line on the console at most this often.
pub const SAY_EVERY: Duration = Duration::from_secs(10);

/// Progress as events and console lines.
struct EventProgress<'a> {
    events: &'a mut dyn Events,
    last_event: Option<Instant>,
    last_say: Option<Instant>,
}

impl Progress for EventProgress<'_> {
    fn report(&mut self, r: &Report) {
        let now = Instant::now();
        if self
            .last_say
            .is_none_or(|l| now.duration_since(l) >= SAY_EVERY)
        {
            self.last_say = Some(now);
            say(format!("download: {}", r.line()));
        }
        if self
            .last_event
            .is_none_or(|l| now.duration_since(l) >= EVENT_EVERY)
        {
            self.last_event = Some(now);
            self.events.send(event_of(r));
        }
    }
    fn note(&mut self, msg: &str) {
        say(msg);
    }
}

/// A progress report as the server's `download` event (status running).
pub fn event_of(r: &Report) -> AgentEvent {
    AgentEvent {
        bytes_done: Some(r.read),
        bytes_total: r.total,
        seconds: Some(r.elapsed),
        ..AgentEvent::new(Phase::Download, EventStatus::Running, r.line())
    }
}

/// Why [`write`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// Download, checksum, conversion or disk error (the guide's wording).
    Download(String),
    /// The image arrived whole and verified but is not one byol can install: it has not
    /// one partition with a root filesystem, or not for the disk's sector size.
    Image(String),
}

/// Writes the install's image to `disk`. Ok: the line for the `download` ok event.
pub fn write(
    spec: &InstallSpec,
    disk: &Path,
    events: &mut dyn Events,
) -> Result<String, WriteError> {
    let mut o = WriteOptions::new(spec.image_url.clone(), disk);
    o.expected = Some(spec.image_type);
    o.checksum = spec.checksum.clone();
    o.source_opts.headers = spec
        .http_headers
        .iter()
        .map(|h| (h.name.clone(), h.value.clone()))
        .collect();
    o.source_opts.stop = events.stop();
    o.before_commit = Some(BeforeCommit(std::sync::Arc::new(|v| {
        image::inspect(v).map(|_| ())
    })));
    let mut p = EventProgress {
        events,
        last_event: None,
        last_say: None,
    };
    let s = engine::write_image(&o, &mut p).map_err(|e| match e {
        EngineError::Refused(m) => WriteError::Image(m),
        e => WriteError::Download(e.to_string()),
    })?;
    let rate = if s.seconds > 0.0 {
        format!(", {}/s", human((s.bytes_read as f64 / s.seconds) as u64))
    } else {
        String::new()
    };
    let check = match (&s.checksum_type, &s.checksum) {
        (Some(t), Some(_)) => format!(", {t} verified"),
        _ => ", no checksum given".to_string(),
    };
    let resumes = if s.resumes > 0 {
        format!(", {} resumes", s.resumes)
    } else {
        String::new()
    };
    Ok(format!(
        "{} image ({} mode) written to {}: {} read, {} virtual size, in {:.1} s{rate}{check}{resumes}",
        s.format,
        s.mode,
        disk.display(),
        human(s.bytes_read),
        human(s.virtual_size),
        s.seconds
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_as_an_event() {
        let r = Report {
            read: 10,
            total: Some(100),
            written: 5,
            elapsed: 1.0,
            resumes: 0,
        };
        let e = event_of(&r);
        assert_eq!(e.phase, "download");
        assert_eq!((e.bytes_done, e.bytes_total), (Some(10), Some(100)));
        assert!(e.check().is_ok());
        assert!(e.message.starts_with("10 B / 100 B (10%)"), "{}", e.message);
    }
}
