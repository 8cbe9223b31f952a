//! step: one phase being timed and reported, the one builder of the agent's events: `== name`
//! on the console when it starts, then its `running`, `ok` or `failed` events with the seconds
//! since the start and the console lines said since the last event.

use std::time::Instant;

use byol_spec::{AgentEvent, EventStatus, Phase};

use super::console::{say, take_lines};
use super::install::InstallError;

pub struct Step {
    pub phase: Phase,
    start: Instant,
}

impl Step {
    /// Starts `phase`: says `== phase`.
    pub fn start(phase: Phase) -> Step {
        say(format!("== {phase}"));
        Step::since(phase, Instant::now())
    }

    /// `phase`, counted from `start`, without a console line (the first phase, whose start is
    /// the agent's own).
    pub fn since(phase: Phase, start: Instant) -> Step {
        Step { phase, start }
    }

    fn seconds(&self) -> f64 {
        (self.start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0
    }

    /// The step's event with `status` and `message` (not said on the console).
    pub fn event(&self, status: EventStatus, message: impl Into<String>) -> AgentEvent {
        AgentEvent {
            logs: take_lines(),
            seconds: Some(self.seconds()),
            ..AgentEvent::new(
                self.phase,
                status,
                clip(&message.into(), AgentEvent::MAX_MESSAGE),
            )
        }
    }

    /// The step's `ok` event; the message is said on the console first.
    pub fn ok(&self, message: impl Into<String>) -> AgentEvent {
        let message = message.into();
        say(&message);
        self.event(EventStatus::Ok, message)
    }

    /// A `running` event of this step (progress, output lines).
    pub fn running(&self, message: impl Into<String>, logs: Vec<String>) -> AgentEvent {
        AgentEvent {
            logs,
            seconds: Some(self.seconds()),
            ..AgentEvent::new(
                self.phase,
                EventStatus::Running,
                clip(&message.into(), AgentEvent::MAX_MESSAGE),
            )
        }
    }

    pub fn fail(&self, message: impl Into<String>) -> InstallError {
        InstallError {
            phase: self.phase,
            message: clip(&message.into(), AgentEvent::MAX_MESSAGE),
        }
    }
}

/// `s` cut to at most `max` bytes (on a character boundary, with `…`).
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut cut = max.saturating_sub(3);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &s[..cut])
}
