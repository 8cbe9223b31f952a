//! secret: a value that must never appear in a log line, a `Debug` dump or an API listing
//! (HTTP header values, user-data, tokens). It still serialises to its real value, because the
//! store and the agent's config need it: API views build their own redacted shapes.

use serde::{Deserialize, Serialize};

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The real value: call this only where the value is used, never to print it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<redacted {} bytes>", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn debug_hides_value() {
        let s = Secret::new("Basic bG9naW46cGFzc3dvcmQ=");
        let d = format!("{s:?}");
        assert!(!d.contains("bG9n"), "{d}");
        assert_eq!(d, "<redacted 26 bytes>");
        assert_eq!(s.expose(), "Basic bG9naW46cGFzc3dvcmQ=");
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            "\"Basic bG9naW46cGFzc3dvcmQ=\""
        );
    }
}
