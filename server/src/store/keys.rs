//! OVH-style API keys: applications (application key + sealed secret), their consumer keys
//! (credentials: stored as SHA-256 hashes, with their access rules and state), and the
//! signatures already used (a signed request is good once).

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{Result, Store, StoreError, now_ms};

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS api_apps (
    app_key TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    secret BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE TABLE IF NOT EXISTS api_credentials (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ck_hash TEXT NOT NULL UNIQUE,
    app_key TEXT NOT NULL REFERENCES api_apps(app_key) ON DELETE CASCADE,
    state TEXT NOT NULL,
    rules TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    validated_at INTEGER
);
CREATE TABLE IF NOT EXISTS api_signatures (
    signature TEXT PRIMARY KEY,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS api_signatures_at ON api_signatures(at);
"#;

/// One access rule of a consumer key, as OVH writes them: `{"method": "GET", "path": "/*"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    pub method: String,
    pub path: String,
}

impl AccessRule {
    /// Every method on every path.
    pub fn all() -> Vec<AccessRule> {
        ["GET", "POST", "PUT", "DELETE"]
            .iter()
            .map(|m| AccessRule {
                method: (*m).into(),
                path: "/*".into(),
            })
            .collect()
    }

    /// Whether the rule grants `method` on `path` (`*` matches any run of characters, `/`
    /// included, as OVH's rules do).
    pub fn grants(&self, method: &str, path: &str) -> bool {
        self.method.eq_ignore_ascii_case(method) && glob(self.path.as_bytes(), path.as_bytes())
    }
}

/// `*`-only glob, iterative (no backtracking blow-up).
fn glob(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pat.len() && pat[p] == b'*' {
            star = Some((p, i));
            p += 1;
        } else if p < pat.len() && pat[p] == s[i] {
            p += 1;
            i += 1;
        } else if let Some((sp, si)) = star {
            p = sp + 1;
            i = si + 1;
            star = Some((sp, si + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

#[derive(Debug, Clone)]
pub struct App {
    pub app_key: String,
    pub name: String,
    /// The application secret, sealed (see `crate::seal`).
    pub sealed_secret: Vec<u8>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// A consumer key's state, OVH's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum CredentialState {
    PendingValidation,
    Validated,
    Revoked,
}

impl CredentialState {
    fn as_str(self) -> &'static str {
        match self {
            CredentialState::PendingValidation => "pendingValidation",
            CredentialState::Validated => "validated",
            CredentialState::Revoked => "revoked",
        }
    }
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "pendingValidation" => CredentialState::PendingValidation,
            "validated" => CredentialState::Validated,
            "revoked" => CredentialState::Revoked,
            s => {
                return Err(StoreError::Internal(anyhow::anyhow!(
                    "bad credential state `{s}` in the store"
                )));
            }
        })
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Credential {
    pub credential_id: i64,
    #[serde(skip)]
    pub app_key: String,
    pub state: CredentialState,
    pub rules: Vec<AccessRule>,
    pub created_at: i64,
    pub validated_at: Option<i64>,
}

/// How long a used signature is remembered: the timestamp window (±5 min) and some.
pub const SIGNATURE_MEMORY_MS: i64 = 11 * 60 * 1000;

impl Store {
    /// A new application; its name must be new.
    pub fn add_app(&self, name: &str, app_key: &str, sealed_secret: &[u8]) -> Result<App> {
        let c = self.conn();
        let now = now_ms();
        let exists = c
            .query_row("SELECT 1 FROM api_apps WHERE name = ?1", [name], |_| Ok(()))
            .optional()?
            .is_some();
        if exists {
            return Err(StoreError::Conflict(format!(
                "an API key named `{name}` exists: choose another name, or revoke it first \
                 (byol api-key revoke {name})"
            )));
        }
        c.execute(
            "INSERT INTO api_apps (app_key, name, secret, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![app_key, name, sealed_secret, now],
        )?;
        Ok(App {
            app_key: app_key.into(),
            name: name.into(),
            sealed_secret: sealed_secret.to_vec(),
            created_at: now,
            revoked_at: None,
        })
    }

    pub fn app(&self, app_key: &str) -> Result<Option<App>> {
        let c = self.conn();
        Ok(c.query_row(
            "SELECT app_key, name, secret, created_at, revoked_at FROM api_apps WHERE app_key = ?1",
            [app_key],
            app_row,
        )
        .optional()?)
    }

    /// Every application with its credentials, oldest first.
    pub fn apps(&self) -> Result<Vec<(App, Vec<Credential>)>> {
        let c = self.conn();
        let apps = c
            .prepare(
                "SELECT app_key, name, secret, created_at, revoked_at FROM api_apps \
                 ORDER BY created_at, name",
            )?
            .query_map([], app_row)?
            .collect::<rusqlite::Result<Vec<App>>>()?;
        let mut out = Vec::new();
        for a in apps {
            let creds = c
                .prepare(&format!(
                    "SELECT {CRED_COLS} FROM api_credentials WHERE app_key = ?1 ORDER BY id"
                ))?
                .query_map([&a.app_key], cred_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?
                .into_iter()
                .collect::<Result<Vec<_>>>()?;
            out.push((a, creds));
        }
        Ok(out)
    }

    /// Revokes an application (by name or application key) and every consumer key of it.
    pub fn revoke_app(&self, name_or_key: &str) -> Result<App> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        let app = tx
            .query_row(
                "SELECT app_key, name, secret, created_at, revoked_at FROM api_apps \
                 WHERE name = ?1 OR app_key = ?1",
                [name_or_key],
                app_row,
            )
            .optional()?
            .ok_or_else(|| {
                StoreError::NotFound(format!(
                    "no API key named `{name_or_key}` (byol api-key list shows them)"
                ))
            })?;
        let now = now_ms();
        tx.execute(
            "UPDATE api_apps SET revoked_at = COALESCE(revoked_at, ?2) WHERE app_key = ?1",
            params![app.app_key, now],
        )?;
        tx.execute(
            "UPDATE api_credentials SET state = 'revoked' WHERE app_key = ?1",
            [&app.app_key],
        )?;
        tx.commit()?;
        Ok(App {
            revoked_at: app.revoked_at.or(Some(now)),
            ..app
        })
    }

    pub fn add_credential(
        &self,
        app_key: &str,
        ck_hash: &str,
        rules: &[AccessRule],
        state: CredentialState,
    ) -> Result<Credential> {
        let c = self.conn();
        let now = now_ms();
        let validated_at = (state == CredentialState::Validated).then_some(now);
        let rules_json = serde_json::to_string(rules).map_err(anyhow::Error::from)?;
        c.execute(
            "INSERT INTO api_credentials (ck_hash, app_key, state, rules, created_at, validated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![ck_hash, app_key, state.as_str(), rules_json, now, validated_at],
        )?;
        Ok(Credential {
            credential_id: c.last_insert_rowid(),
            app_key: app_key.into(),
            state,
            rules: rules.to_vec(),
            created_at: now,
            validated_at,
        })
    }

    /// How many consumer keys of the application wait for an operator.
    pub fn pending_credentials(&self, app_key: &str) -> Result<i64> {
        let c = self.conn();
        Ok(c.query_row(
            "SELECT COUNT(*) FROM api_credentials WHERE app_key = ?1 AND state = 'pendingValidation'",
            [app_key],
            |r| r.get(0),
        )?)
    }

    pub fn credential_by_hash(&self, ck_hash: &str) -> Result<Option<Credential>> {
        let c = self.conn();
        c.query_row(
            &format!("SELECT {CRED_COLS} FROM api_credentials WHERE ck_hash = ?1"),
            [ck_hash],
            cred_row,
        )
        .optional()?
        .transpose()
    }

    pub fn credential(&self, id: i64) -> Result<Credential> {
        let c = self.conn();
        c.query_row(
            &format!("SELECT {CRED_COLS} FROM api_credentials WHERE id = ?1"),
            [id],
            cred_row,
        )
        .optional()?
        .ok_or_else(|| no_credential(id))?
    }

    /// A pending consumer key becomes usable; a revoked one stays revoked.
    pub fn validate_credential(&self, id: i64) -> Result<Credential> {
        let cred = self.credential(id)?;
        match cred.state {
            CredentialState::Validated => return Ok(cred),
            CredentialState::Revoked => {
                return Err(StoreError::Conflict(format!(
                    "credential {id} is revoked: ask for a new consumer key"
                )));
            }
            CredentialState::PendingValidation => {}
        }
        let c = self.conn();
        c.execute(
            "UPDATE api_credentials SET state = 'validated', validated_at = ?2 WHERE id = ?1",
            params![id, now_ms()],
        )?;
        drop(c);
        self.credential(id)
    }

    /// Records a signature as used; false when it already was (a replay). Forgets signatures
    /// older than [`SIGNATURE_MEMORY_MS`].
    pub fn use_signature(&self, signature: &str) -> Result<bool> {
        let c = self.conn();
        let now = now_ms();
        c.execute(
            "DELETE FROM api_signatures WHERE at < ?1",
            [now - SIGNATURE_MEMORY_MS],
        )?;
        let n = c.execute(
            "INSERT OR IGNORE INTO api_signatures (signature, at) VALUES (?1, ?2)",
            params![signature, now],
        )?;
        Ok(n == 1)
    }
}

const CRED_COLS: &str = "id, app_key, state, rules, created_at, validated_at";

fn app_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<App> {
    Ok(App {
        app_key: r.get(0)?,
        name: r.get(1)?,
        sealed_secret: r.get(2)?,
        created_at: r.get(3)?,
        revoked_at: r.get(4)?,
    })
}

fn cred_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Credential>> {
    let state: String = r.get(2)?;
    let rules: String = r.get(3)?;
    let id: i64 = r.get(0)?;
    let app_key: String = r.get(1)?;
    let created_at: i64 = r.get(4)?;
    let validated_at: Option<i64> = r.get(5)?;
    Ok((|| {
        Ok(Credential {
            credential_id: id,
            app_key,
            state: CredentialState::parse(&state)?,
            rules: serde_json::from_str(&rules).map_err(|e| {
                StoreError::Internal(anyhow::anyhow!(
                    "credential {id}: stored rules are not readable: {e}"
                ))
            })?,
            created_at,
            validated_at,
        })
    })())
}

fn no_credential(id: i64) -> StoreError {
    StoreError::NotFound(format!(
        "no credential {id} (byol api-key list shows every credential)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_like_ovh() {
        let r = |m: &str, p: &str| AccessRule {
            method: m.into(),
            path: p.into(),
        };
        assert!(r("GET", "/*").grants("GET", "/dedicated/server/a/task/1"));
        assert!(!r("GET", "/*").grants("POST", "/dedicated/server"));
        assert!(
            r("POST", "/dedicated/server/*/reinstall")
                .grants("POST", "/dedicated/server/a/reinstall")
        );
        assert!(
            !r("POST", "/dedicated/server/*/reinstall")
                .grants("POST", "/dedicated/server/a/install/start")
        );
        assert!(r("GET", "/auth/time").grants("GET", "/auth/time"));
        assert!(!r("GET", "/auth/time").grants("GET", "/auth/time/x"));
        assert!(r("GET", "/a*b*c").grants("GET", "/aXbYbZc"));
        assert!(!glob(b"*a*a*a*a*a*b", &[b'a'; 64]));
    }

    #[test]
    fn keys_credentials_and_signatures() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("s.sqlite")).unwrap();
        let a = s.add_app("ci", "AK", b"sealed").unwrap();
        assert!(matches!(
            s.add_app("ci", "AK2", b"x"),
            Err(StoreError::Conflict(_))
        ));
        let c = s
            .add_credential(
                &a.app_key,
                "h1",
                &AccessRule::all(),
                CredentialState::PendingValidation,
            )
            .unwrap();
        assert_eq!(
            s.credential_by_hash("h1").unwrap().unwrap().state,
            CredentialState::PendingValidation
        );
        let v = s.validate_credential(c.credential_id).unwrap();
        assert_eq!(v.state, CredentialState::Validated);
        assert!(v.validated_at.is_some());
        assert!(s.use_signature("$1$abc").unwrap());
        assert!(!s.use_signature("$1$abc").unwrap(), "a replay");
        let r = s.revoke_app("ci").unwrap();
        assert!(r.revoked_at.is_some());
        assert_eq!(
            s.credential_by_hash("h1").unwrap().unwrap().state,
            CredentialState::Revoked
        );
        assert!(matches!(
            s.validate_credential(c.credential_id),
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(s.revoke_app("nope"), Err(StoreError::NotFound(_))));
        assert_eq!(s.apps().unwrap().len(), 1);
    }
}
