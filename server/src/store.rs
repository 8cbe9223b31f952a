//! store: byol's durable state in SQLite (`<data-dir>/byol.sqlite`, WAL, synchronous=FULL):
//! machines and their MACs, installs (with the validated spec, secrets included: the file is
//! 0600) and every agent event. Kill the server at any point and start it again: what was
//! committed is there. One connection behind a mutex: every query is short.

use std::path::Path;
use std::sync::Mutex;

use anyhow::Context as _;
use byol_spec::{AgentEvent, DiskHints, EventStatus, InstallSpec, InstallState};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

pub struct Store {
    conn: Mutex<Connection>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub name: String,
    pub macs: Vec<String>,
    pub created_at: i64,
    /// byol's own disk hints (empty: the disk comes from `diskGroupId`).
    pub disk_hints: DiskHints,
    /// The machine's limit for make_image_bootable.sh, in seconds (none: the server's).
    pub hook_timeout_seconds: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Install {
    pub id: String,
    pub machine: String,
    pub state: InstallState,
    pub spec: InstallSpec,
    pub created_at: i64,
    pub updated_at: i64,
    pub ended_at: Option<i64>,
    pub error: Option<String>,
    pub phase: Option<String>,
    pub bytes_done: Option<u64>,
    pub bytes_total: Option<u64>,
    pub token_hash: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StoredEvent {
    pub seq: i64,
    pub at_ms: i64,
    #[serde(flatten)]
    pub event: AgentEvent,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("store: {0:#}")]
    Internal(#[from] anyhow::Error),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Internal(e.into())
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS machines (
    name TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS machine_macs (
    mac TEXT PRIMARY KEY,
    machine TEXT NOT NULL REFERENCES machines(name) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS installs (
    id TEXT PRIMARY KEY,
    machine TEXT NOT NULL,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    ended_at INTEGER,
    error TEXT,
    phase TEXT,
    bytes_done INTEGER,
    bytes_total INTEGER,
    token_hash TEXT
);
CREATE INDEX IF NOT EXISTS installs_machine ON installs(machine, created_at);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    install_id TEXT NOT NULL REFERENCES installs(id) ON DELETE CASCADE,
    at_ms INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_install ON events(install_id, seq);
"#;

impl Store {
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        let existed = path.exists();
        let conn = Connection::open(path)
            .with_context(|| format!("opening the state database {}", path.display()))?;
        if !existed {
            set_private(path)?;
        }
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)
            .with_context(|| format!("creating the schema in {}", path.display()))?;
        migrate(&conn).with_context(|| format!("upgrading the schema in {}", path.display()))?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (each call is one
        // statement or one transaction), so a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- machines ----

    pub fn add_machine(
        &self,
        name: &str,
        macs: &[String],
        hints: &DiskHints,
        hook_timeout_seconds: Option<u64>,
    ) -> Result<Machine> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        let exists: Option<String> = tx
            .query_row("SELECT name FROM machines WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        if exists.is_some() {
            return Err(StoreError::Conflict(format!(
                "machine `{name}` already exists"
            )));
        }
        for mac in macs {
            let owner: Option<String> = tx
                .query_row(
                    "SELECT machine FROM machine_macs WHERE mac = ?1",
                    [mac],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(owner) = owner {
                return Err(StoreError::Conflict(format!(
                    "MAC {mac} already belongs to machine `{owner}`"
                )));
            }
        }
        let now = now_ms();
        tx.execute(
            "INSERT INTO machines(name, created_at, disk_hints, hook_timeout) VALUES (?1, ?2, ?3, ?4)",
            params![name, now, hints_json(hints), hook_timeout_seconds.map(|v| v as i64)],
        )?;
        for mac in macs {
            tx.execute(
                "INSERT INTO machine_macs(mac, machine) VALUES (?1, ?2)",
                params![mac, name],
            )?;
        }
        tx.commit()?;
        Ok(Machine {
            name: name.into(),
            macs: macs.to_vec(),
            created_at: now,
            disk_hints: hints.clone(),
            hook_timeout_seconds,
        })
    }

    /// Sets the machine's hook time limit (None: the server's). Takes effect at the next
    /// install's config fetch.
    pub fn set_hook_timeout(&self, name: &str, seconds: Option<u64>) -> Result<Machine> {
        let c = self.conn();
        let n = c.execute(
            "UPDATE machines SET hook_timeout = ?2 WHERE name = ?1",
            params![name, seconds.map(|v| v as i64)],
        )?;
        if n == 0 {
            return Err(unknown_machine(name));
        }
        drop(c);
        self.machine(name)
    }

    /// Replaces the machine's disk hints (empty hints: back to `diskGroupId`). Refused while an
    /// install is in progress: the agent may already have its config.
    pub fn set_disk_hints(&self, name: &str, hints: &DiskHints) -> Result<Machine> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        if let Some(id) = active_install_id(&tx, name)? {
            return Err(StoreError::Conflict(format!(
                "machine `{name}` has an install in progress ({id}): its disk hints change after it ends or is cancelled"
            )));
        }
        let n = tx.execute(
            "UPDATE machines SET disk_hints = ?2 WHERE name = ?1",
            params![name, hints_json(hints)],
        )?;
        if n == 0 {
            return Err(unknown_machine(name));
        }
        tx.commit()?;
        drop(c);
        self.machine(name)
    }

    pub fn machines(&self) -> Result<Vec<Machine>> {
        let c = self.conn();
        let mut st = c.prepare(
            "SELECT name, created_at, disk_hints, hook_timeout FROM machines ORDER BY name",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for (name, created_at, hints, hook) in rows {
            let macs = macs_of(&c, &name)?;
            out.push(Machine {
                disk_hints: hints_from(hints.as_deref(), &name)?,
                hook_timeout_seconds: hook.map(|v| v as u64),
                name,
                macs,
                created_at,
            });
        }
        Ok(out)
    }

    pub fn machine(&self, name: &str) -> Result<Machine> {
        let c = self.conn();
        let row: Option<(i64, Option<String>, Option<i64>)> = c
            .query_row(
                "SELECT created_at, disk_hints, hook_timeout FROM machines WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        match row {
            Some((created_at, hints, hook)) => Ok(Machine {
                name: name.into(),
                macs: macs_of(&c, name)?,
                created_at,
                disk_hints: hints_from(hints.as_deref(), name)?,
                hook_timeout_seconds: hook.map(|v| v as u64),
            }),
            None => Err(unknown_machine(name)),
        }
    }

    pub fn machine_by_mac(&self, mac: &str) -> Result<Option<String>> {
        let c = self.conn();
        Ok(c.query_row(
            "SELECT machine FROM machine_macs WHERE mac = ?1",
            [mac],
            |r| r.get(0),
        )
        .optional()?)
    }

    pub fn delete_machine(&self, name: &str) -> Result<()> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        if let Some(id) = active_install_id(&tx, name)? {
            return Err(StoreError::Conflict(format!(
                "machine `{name}` has an install in progress ({id}): cancel it first (byol install cancel {name})"
            )));
        }
        let n = tx.execute("DELETE FROM machines WHERE name = ?1", [name])?;
        if n == 0 {
            return Err(unknown_machine(name));
        }
        tx.execute(
            "DELETE FROM events WHERE install_id IN (SELECT id FROM installs WHERE machine = ?1)",
            [name],
        )?;
        tx.execute("DELETE FROM installs WHERE machine = ?1", [name])?;
        tx.commit()?;
        Ok(())
    }

    // ---- installs ----

    /// Creates a pending install; refuses when the machine already has an active one.
    pub fn create_install(&self, machine: &str, spec: &InstallSpec) -> Result<Install> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        let known: Option<i64> = tx
            .query_row("SELECT 1 FROM machines WHERE name = ?1", [machine], |r| {
                r.get(0)
            })
            .optional()?;
        if known.is_none() {
            return Err(unknown_machine(machine));
        }
        if let Some(id) = active_install_id(&tx, machine)? {
            return Err(StoreError::Conflict(format!(
                "machine `{machine}` already has an install in progress ({id}): wait for it or cancel it (byol install cancel {machine})"
            )));
        }
        let id = uuid::Uuid::new_v4().to_string();
        let now = now_ms();
        let spec_json = serde_json::to_string(spec).map_err(anyhow::Error::from)?;
        tx.execute(
            "INSERT INTO installs(id, machine, state, spec, created_at, updated_at) VALUES (?1, ?2, 'pending', ?3, ?4, ?4)",
            params![id, machine, spec_json, now],
        )?;
        tx.commit()?;
        drop(c);
        self.install(&id)
    }

    pub fn install(&self, id: &str) -> Result<Install> {
        let c = self.conn();
        c.query_row(
            &format!("{INSTALL_SELECT} WHERE id = ?1"),
            [id],
            install_row,
        )
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("no install with id `{id}`")))
    }

    /// The machine's most recent install, if any.
    pub fn latest_install(&self, machine: &str) -> Result<Option<Install>> {
        let c = self.conn();
        Ok(c.query_row(
            &format!(
                "{INSTALL_SELECT} WHERE machine = ?1 ORDER BY created_at DESC, rowid DESC LIMIT 1"
            ),
            [machine],
            install_row,
        )
        .optional()?)
    }

    pub fn installs_of(&self, machine: &str) -> Result<Vec<Install>> {
        let c = self.conn();
        let mut st = c.prepare(&format!(
            "{INSTALL_SELECT} WHERE machine = ?1 ORDER BY created_at DESC, rowid DESC"
        ))?;
        let v = st
            .query_map([machine], install_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(v)
    }

    pub fn count_installs_by_state(&self) -> Result<Vec<(String, i64)>> {
        let c = self.conn();
        let mut st = c.prepare("SELECT state, COUNT(*) FROM installs GROUP BY state")?;
        let v = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(v)
    }

    /// Stores the hash of a fresh agent token for an active install (the old one stops working).
    pub fn set_token_hash(&self, id: &str, hash: &str) -> Result<()> {
        let c = self.conn();
        let n = c.execute(
            "UPDATE installs SET token_hash = ?2 WHERE id = ?1 AND state IN ('pending','installing')",
            params![id, hash],
        )?;
        if n == 0 {
            return Err(StoreError::Conflict(format!(
                "install `{id}` is not active"
            )));
        }
        Ok(())
    }

    /// The active install whose agent token hashes to `hash`.
    pub fn install_by_token_hash(&self, hash: &str) -> Result<Option<Install>> {
        let c = self.conn();
        Ok(c.query_row(
            &format!(
                "{INSTALL_SELECT} WHERE token_hash = ?1 AND state IN ('pending','installing')"
            ),
            [hash],
            install_row,
        )
        .optional()?)
    }

    /// Records an agent event and moves the install's state; returns the new state.
    pub fn record_event(&self, id: &str, ev: &AgentEvent) -> Result<InstallState> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        let state: String = tx
            .query_row("SELECT state FROM installs WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?
            .ok_or_else(|| StoreError::NotFound(format!("no install with id `{id}`")))?;
        let state = parse_state(&state)?;
        if !state.is_active() {
            return Err(StoreError::Conflict(format!(
                "install `{id}` is {}: it takes no more events",
                state.as_str()
            )));
        }
        let now = now_ms();
        let body = serde_json::to_string(ev).map_err(anyhow::Error::from)?;
        tx.execute(
            "INSERT INTO events(install_id, at_ms, body) VALUES (?1, ?2, ?3)",
            params![id, now, body],
        )?;
        let next = state.after(ev.status).unwrap_or(state);
        let ended = (!next.is_active()).then_some(now);
        let error = (ev.status == EventStatus::Failed).then(|| ev.message.clone());
        tx.execute(
            "UPDATE installs SET state = ?2, updated_at = ?3, phase = ?4,
                 bytes_done = COALESCE(?5, bytes_done), bytes_total = COALESCE(?6, bytes_total),
                 ended_at = COALESCE(?7, ended_at), error = COALESCE(?8, error),
                 token_hash = CASE WHEN ?7 IS NULL THEN token_hash ELSE NULL END
             WHERE id = ?1",
            params![
                id,
                next.as_str(),
                now,
                ev.phase,
                ev.bytes_done.map(|b| b as i64),
                ev.bytes_total.map(|b| b as i64),
                ended,
                error
            ],
        )?;
        tx.commit()?;
        Ok(next)
    }

    /// Cancels an active install: its token stops working, the machine boots locally again.
    pub fn cancel_install(&self, id: &str) -> Result<Install> {
        {
            let c = self.conn();
            let now = now_ms();
            let n = c.execute(
                "UPDATE installs SET state = 'cancelled', updated_at = ?2, ended_at = ?2, token_hash = NULL,
                     error = 'cancelled by the operator'
                 WHERE id = ?1 AND state IN ('pending','installing')",
                params![id, now],
            )?;
            if n == 0 {
                drop(c);
                let i = self.install(id)?;
                return Err(StoreError::Conflict(format!(
                    "install `{id}` is already {}",
                    i.state.as_str()
                )));
            }
        }
        self.install(id)
    }

    pub fn events(&self, id: &str, after_seq: i64) -> Result<Vec<StoredEvent>> {
        let c = self.conn();
        let mut st = c.prepare(
            "SELECT seq, at_ms, body FROM events WHERE install_id = ?1 AND seq > ?2 ORDER BY seq",
        )?;
        let rows = st
            .query_map(params![id, after_seq], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(seq, at_ms, body)| {
                let event = serde_json::from_str(&body)
                    .with_context(|| format!("event {seq} of install {id} is unreadable"))?;
                Ok(StoredEvent { seq, at_ms, event })
            })
            .collect()
    }
}

const INSTALL_SELECT: &str = "SELECT id, machine, state, spec, created_at, updated_at, ended_at, error, phase, bytes_done, bytes_total, token_hash FROM installs";

fn install_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Install> {
    let state: String = r.get(2)?;
    let spec: String = r.get(3)?;
    let conv = |i: usize, e: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
    };
    Ok(Install {
        id: r.get(0)?,
        machine: r.get(1)?,
        state: InstallState::parse(&state).ok_or_else(|| conv(2, format!("bad state {state}")))?,
        spec: serde_json::from_str(&spec).map_err(|e| conv(3, e.to_string()))?,
        created_at: r.get(4)?,
        updated_at: r.get(5)?,
        ended_at: r.get(6)?,
        error: r.get(7)?,
        phase: r.get(8)?,
        bytes_done: r.get::<_, Option<i64>>(9)?.map(|v| v as u64),
        bytes_total: r.get::<_, Option<i64>>(10)?.map(|v| v as u64),
        token_hash: r.get(11)?,
    })
}

fn parse_state(s: &str) -> Result<InstallState> {
    InstallState::parse(s)
        .ok_or_else(|| StoreError::Internal(anyhow::anyhow!("bad state `{s}` in the store")))
}

/// Columns added after the first release, added to older databases.
fn migrate(c: &Connection) -> anyhow::Result<()> {
    let has_hints = c
        .prepare("SELECT 1 FROM pragma_table_info('machines') WHERE name = 'disk_hints'")?
        .exists([])?;
    if !has_hints {
        c.execute_batch("ALTER TABLE machines ADD COLUMN disk_hints TEXT")?;
    }
    let has_hook = c
        .prepare("SELECT 1 FROM pragma_table_info('machines') WHERE name = 'hook_timeout'")?
        .exists([])?;
    if !has_hook {
        c.execute_batch("ALTER TABLE machines ADD COLUMN hook_timeout INTEGER")?;
    }
    Ok(())
}

fn hints_json(h: &DiskHints) -> Option<String> {
    (!h.is_empty()).then(|| serde_json::to_string(h).unwrap_or_default())
}

fn hints_from(s: Option<&str>, machine: &str) -> Result<DiskHints> {
    match s {
        None | Some("") => Ok(DiskHints::default()),
        Some(s) => serde_json::from_str(s).map_err(|e| {
            StoreError::Internal(anyhow::anyhow!(
                "machine `{machine}`: stored disk hints are not readable: {e}"
            ))
        }),
    }
}

fn macs_of(c: &Connection, name: &str) -> Result<Vec<String>> {
    let mut st = c.prepare("SELECT mac FROM machine_macs WHERE machine = ?1 ORDER BY mac")?;
    let v = st
        .query_map([name], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(v)
}

fn active_install_id(c: &Connection, machine: &str) -> Result<Option<String>> {
    Ok(c.query_row(
        "SELECT id FROM installs WHERE machine = ?1 AND state IN ('pending','installing') LIMIT 1",
        [machine],
        |r| r.get(0),
    )
    .optional()?)
}

fn unknown_machine(name: &str) -> StoreError {
    StoreError::NotFound(format!(
        "unknown machine `{name}`: add it first (byol machine add {name} --mac MAC)"
    ))
}

/// Makes a file readable and writable by its owner only.
pub fn set_private(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} private (0600)", path.display()))
}
