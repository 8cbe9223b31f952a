//! seal: secrets the server must read back (API application secrets, BMC passwords) are kept
//! in the store sealed with ChaCha20-Poly1305 under a key of their own, `<data-dir>/seal-key`
//! (32 random bytes, 0600, made on first start). A copy of the database alone (a backup, a
//! dump) gives none of them; the key file goes with the server. Secrets the server only has to
//! recognise (admin token, agent tokens, consumer keys) are hashed instead, never sealed.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use rand::RngCore as _;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

/// The key secrets are sealed with.
pub struct SealKey(LessSafeKey);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(…)")
    }
}

/// Why a sealed value could not be opened.
#[derive(Debug, thiserror::Error)]
#[error(
    "a sealed secret in the store does not open with {0}: the store and the seal key do not \
     belong together (restore the seal-key file that was made with this database)"
)]
pub struct Unseal(&'static str);

impl SealKey {
    /// Reads `<data-dir>/seal-key`, making it (0600) on first start.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<SealKey> {
        let path = data_dir.join("seal-key");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rng().fill_bytes(&mut key);
                use std::os::unix::fs::OpenOptionsExt as _;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
                f.write_all(&key)
                    .and_then(|()| f.sync_all())
                    .with_context(|| format!("writing {}", path.display()))?;
                key.to_vec()
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        anyhow::ensure!(
            bytes.len() == 32,
            "{} is {} bytes, not 32: it is not a seal key (restore it from a backup; \
             deleting it makes every sealed secret in the store unreadable)",
            path.display(),
            bytes.len()
        );
        Self::from_bytes(&bytes)
    }

    pub fn from_bytes(key: &[u8]) -> anyhow::Result<SealKey> {
        let k = UnboundKey::new(&CHACHA20_POLY1305, key)
            .map_err(|_| anyhow::anyhow!("a seal key is 32 bytes"))?;
        Ok(SealKey(LessSafeKey::new(k)))
    }

    /// `nonce ‖ ciphertext ‖ tag`; `context` (what the secret is, e.g. `api-app:KEY`) is bound
    /// in, so a sealed value moved to another row does not open.
    pub fn seal(&self, context: &str, secret: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let mut buf = secret.to_vec();
        // only fails for inputs beyond ChaCha20's 256 GiB limit
        let _ = self.0.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(context.as_bytes()),
            &mut buf,
        );
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        out
    }

    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, Unseal> {
        if sealed.len() < NONCE_LEN + CHACHA20_POLY1305.tag_len() {
            return Err(Unseal("the server's seal key (too short)"));
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| Unseal("the server's seal key"))?;
        let mut buf = body.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .map_err(|_| Unseal("the server's seal key"))?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_context() {
        let d = tempfile::tempdir().unwrap();
        let k = SealKey::load_or_create(d.path()).unwrap();
        let s = k.seal("api-app:A", b"secret");
        assert!(!s.windows(6).any(|w| w == b"secret"));
        assert_eq!(k.open("api-app:A", &s).unwrap(), b"secret");
        assert!(k.open("api-app:B", &s).is_err(), "context is bound in");
        let again = SealKey::load_or_create(d.path()).unwrap();
        assert_eq!(again.open("api-app:A", &s).unwrap(), b"secret");
        let other = SealKey::from_bytes(&[7u8; 32]).unwrap();
        let err = other.open("api-app:A", &s).unwrap_err().to_string();
        assert!(err.contains("seal-key"), "{err}");
        assert!(k.open("api-app:A", &s[..10]).is_err());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(d.path().join("seal-key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(d.path().join("seal-key"), b"short").unwrap();
        assert!(SealKey::load_or_create(d.path()).is_err());
    }
}
