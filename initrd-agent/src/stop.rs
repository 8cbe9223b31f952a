//! stop: the server's "stop" passed from the agent's event reporter to whatever runs: set once
//! (the server answered that the install was cancelled, failed, or taken over by a newer boot of
//! the machine), seen by the image download at its next read and by the hook's watcher, which
//! kills the hook. Cloning shares the flag.

use std::sync::{Arc, OnceLock};

#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<OnceLock<String>>);

impl Stop {
    pub fn new() -> Stop {
        Stop::default()
    }

    /// Asks everything holding this flag to stop, saying why (the first reason stays).
    pub fn stop(&self, why: impl Into<String>) {
        let _ = self.0.set(why.into());
    }

    /// Why a stop was asked, if it was.
    pub fn reason(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_and_first_reason_kept() {
        let a = Stop::new();
        let b = a.clone();
        assert_eq!(b.reason(), None);
        a.stop("cancelled by the operator");
        a.stop("later");
        assert_eq!(b.reason(), Some("cancelled by the operator"));
    }
}
