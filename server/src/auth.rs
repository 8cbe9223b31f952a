//! auth: the two kinds of token. The admin token (operators, the CLI) is made on first start,
//! kept 0600 in `<data-dir>/admin-token` and printed once. Agent tokens are minted each time a
//! machine's install script is rendered (the previous one stops working), stored only as a
//! SHA-256 hash, and die with their install. Tokens are never logged.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use axum::http::HeaderMap;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

/// 32 random bytes, hex.
pub fn new_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Constant-time comparison of two byte strings (length may leak, content does not).
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `Authorization: Bearer <token>` from a request.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Reads the admin token, creating it (0600) on first start. Returns (token, created).
pub fn load_or_create_admin_token(data_dir: &Path) -> anyhow::Result<(String, bool)> {
    let path = data_dir.join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let t = s.trim().to_string();
            anyhow::ensure!(
                t.len() >= 32,
                "{} holds no usable token (shorter than 32 characters): delete it to get a new one",
                path.display()
            );
            Ok((t, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let t = new_token();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode_0600()
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            writeln!(f, "{t}").with_context(|| format!("writing {}", path.display()))?;
            f.sync_all()?;
            Ok((t, true))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}
impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt as _;
        self.mode(0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(hash_token(&a).len(), 64);
        assert_ne!(hash_token(&a), a);
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }

    #[test]
    fn admin_token_created_once_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let (t1, created) = load_or_create_admin_token(d.path()).unwrap();
        assert!(created);
        let (t2, created) = load_or_create_admin_token(d.path()).unwrap();
        assert!(!created);
        assert_eq!(t1, t2);
        let mode = std::fs::metadata(d.path().join("admin-token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
