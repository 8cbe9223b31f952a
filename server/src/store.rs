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

mod bmcs;
mod keys;
mod schemes;
pub use bmcs::BmcRecord;
pub use keys::{AccessRule, App, Credential, CredentialState};
pub use schemes::{DEFAULT_SCHEME, Scheme};

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
    /// The storage scheme installed when a request names none (`default`: OVH's layout).
    pub scheme: String,
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
    /// OVH's task number for it (`taskId`: 1, 2, … over the server's life).
    pub task_id: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StoredEvent {
    pub seq: i64,
    pub at_ms: i64,
    /// Which boot of the machine sent it (1, 2, …); none for the server's own events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot: Option<i64>,
    /// Sent by a boot that did not hold the install while another one did, or a `done` or
    /// `failed` from a boot that never fetched the config: kept for the record, it changed
    /// nothing.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ignored: bool,
    #[serde(flatten)]
    pub event: AgentEvent,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    /// The machine has an install in progress.
    #[error(
        "machine `{machine}` already has an install in progress ({install}): wait for it or \
         cancel it (byol install cancel {machine})"
    )]
    Busy { machine: String, install: String },
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
CREATE TABLE IF NOT EXISTS boots (
    token_hash TEXT PRIMARY KEY,
    install_id TEXT NOT NULL REFERENCES installs(id) ON DELETE CASCADE,
    n INTEGER NOT NULL,
    ip TEXT,
    issued_at INTEGER NOT NULL,
    config_at INTEGER,
    last_seen INTEGER,
    superseded_at INTEGER
);
CREATE INDEX IF NOT EXISTS boots_install ON boots(install_id, n);
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
            .and_then(|()| conn.execute_batch(schemes::SCHEMA))
            .and_then(|()| conn.execute_batch(keys::SCHEMA))
            .and_then(|()| conn.execute_batch(bmcs::SCHEMA))
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
            scheme: DEFAULT_SCHEME.into(),
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
            "SELECT name, created_at, disk_hints, hook_timeout, scheme FROM machines ORDER BY name",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for (name, created_at, hints, hook, scheme) in rows {
            let macs = macs_of(&c, &name)?;
            out.push(Machine {
                disk_hints: hints_from(hints.as_deref(), &name)?,
                hook_timeout_seconds: hook.map(|v| v as u64),
                scheme: scheme.unwrap_or_else(|| DEFAULT_SCHEME.into()),
                name,
                macs,
                created_at,
            });
        }
        Ok(out)
    }

    pub fn machine(&self, name: &str) -> Result<Machine> {
        let c = self.conn();
        type Row = (i64, Option<String>, Option<i64>, Option<String>);
        let row: Option<Row> = c
            .query_row(
                "SELECT created_at, disk_hints, hook_timeout, scheme FROM machines WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        match row {
            Some((created_at, hints, hook, scheme)) => Ok(Machine {
                scheme: scheme.unwrap_or_else(|| DEFAULT_SCHEME.into()),
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
            return Err(StoreError::Busy {
                machine: machine.to_string(),
                install: id,
            });
        }
        let id = uuid::Uuid::new_v4().to_string();
        let now = now_ms();
        let spec_json = serde_json::to_string(spec).map_err(anyhow::Error::from)?;
        tx.execute(
            "INSERT INTO installs(id, machine, state, spec, created_at, updated_at, task_id) \
             VALUES (?1, ?2, 'pending', ?3, ?4, ?4, (SELECT COALESCE(MAX(task_id), 0) + 1 FROM installs))",
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

    /// What the machine's agent last found (none before its first boot), and when.
    pub fn inventory(&self, machine: &str) -> Result<Option<(byol_spec::Inventory, i64)>> {
        let c = self.conn();
        let row: Option<(Option<String>, Option<i64>)> = c
            .query_row(
                "SELECT inventory, inventory_at FROM machines WHERE name = ?1",
                [machine],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((inv, at)) = row else {
            return Err(unknown_machine(machine));
        };
        match (inv, at) {
            (Some(j), Some(at)) => Ok(Some((
                serde_json::from_str(&j).map_err(|e| {
                    StoreError::Internal(anyhow::anyhow!(
                        "machine `{machine}`: stored inventory is not readable: {e}"
                    ))
                })?,
                at,
            ))),
            _ => Ok(None),
        }
    }

    /// The install of OVH task `task_id` on `machine`.
    pub fn install_by_task(&self, machine: &str, task_id: i64) -> Result<Install> {
        let c = self.conn();
        c.query_row(
            &format!("{INSTALL_SELECT} WHERE machine = ?1 AND task_id = ?2"),
            params![machine, task_id],
            install_row,
        )
        .optional()?
        .ok_or_else(|| {
            StoreError::NotFound(format!("Task {task_id} not found on server {machine}"))
        })
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

    /// Records a boot of an active install: the hash of the fresh agent token its script
    /// carries and the address that fetched the script. Earlier boots' tokens keep working
    /// (a stray fetch never takes over a running agent); boots that never fetched their config
    /// beyond the newest [`MAX_UNUSED_BOOTS`] are forgotten.
    pub fn add_boot(&self, install_id: &str, token_hash: &str, ip: Option<&str>) -> Result<Boot> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        let state: Option<String> = tx
            .query_row(
                "SELECT state FROM installs WHERE id = ?1",
                [install_id],
                |r| r.get(0),
            )
            .optional()?;
        match state.as_deref().map(parse_state).transpose()? {
            Some(s) if s.is_active() => {}
            _ => {
                return Err(StoreError::Conflict(format!(
                    "install `{install_id}` is not active"
                )));
            }
        }
        let n: i64 = tx.query_row(
            "SELECT COALESCE(MAX(n), 0) + 1 FROM boots WHERE install_id = ?1",
            [install_id],
            |r| r.get(0),
        )?;
        let now = now_ms();
        tx.execute(
            "INSERT INTO boots(token_hash, install_id, n, ip, issued_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![token_hash, install_id, n, ip, now],
        )?;
        tx.execute(
            "DELETE FROM boots WHERE install_id = ?1 AND config_at IS NULL AND n <= ?2 - ?3",
            params![install_id, n, MAX_UNUSED_BOOTS],
        )?;
        tx.commit()?;
        Ok(Boot {
            token_hash: token_hash.into(),
            install_id: install_id.into(),
            n,
            ip: ip.map(str::to_string),
            issued_at: now,
            config_at: None,
            last_seen: None,
            superseded_at: None,
        })
    }

    /// The boot whose agent token hashes to `hash`, with its install (in any state).
    pub fn boot_by_token_hash(&self, hash: &str) -> Result<Option<(Boot, Install)>> {
        let c = self.conn();
        let boot = c
            .query_row(
                &format!("{BOOT_SELECT} WHERE token_hash = ?1"),
                [hash],
                boot_row,
            )
            .optional()?;
        let Some(boot) = boot else { return Ok(None) };
        let install = c
            .query_row(
                &format!("{INSTALL_SELECT} WHERE id = ?1"),
                [&boot.install_id],
                install_row,
            )
            .optional()?;
        Ok(install.map(|i| (boot, i)))
    }

    /// The config fetch of a boot, under the token rules: the install active, the boot not
    /// replaced, its first fetch, from the address that fetched its script, within the window;
    /// and no other boot of the install alive (heard from within `rules.takeover_after_ms`).
    /// Granted: this boot holds the install (earlier holders are superseded), a pending install
    /// becomes installing.
    pub fn claim_config(&self, hash: &str, ip: Option<&str>, rules: &TokenRules) -> Result<Claim> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        let Some(boot) = tx
            .query_row(
                &format!("{BOOT_SELECT} WHERE token_hash = ?1"),
                [hash],
                boot_row,
            )
            .optional()?
        else {
            return Ok(Claim::Refused(Refusal::UnknownToken));
        };
        let install = tx.query_row(
            &format!("{INSTALL_SELECT} WHERE id = ?1"),
            [&boot.install_id],
            install_row,
        )?;
        let now = now_ms();
        if !install.state.is_active() {
            return Ok(Claim::Refused(Refusal::Ended(install.state)));
        }
        if boot.superseded_at.is_some() {
            return Ok(Claim::Refused(Refusal::Superseded));
        }
        if let Some(at) = boot.config_at {
            return Ok(Claim::Refused(Refusal::AlreadyFetched { at_ms: at }));
        }
        if let (Some(issued), Some(from)) = (boot.ip.as_deref(), ip)
            && issued != from
        {
            return Ok(Claim::Refused(Refusal::WrongAddress {
                issued_to: issued.to_string(),
                from: from.to_string(),
            }));
        }
        if now - boot.issued_at > rules.window_ms {
            return Ok(Claim::Refused(Refusal::Expired {
                window_ms: rules.window_ms,
            }));
        }
        let mut took_over = None;
        if let Some(holder) = install.token_hash.as_deref().filter(|h| *h != hash) {
            let h = tx
                .query_row(
                    &format!("{BOOT_SELECT} WHERE token_hash = ?1"),
                    [holder],
                    boot_row,
                )
                .optional()?;
            if let Some(h) = h {
                let silent = now - h.last_seen.unwrap_or(h.issued_at);
                if silent < rules.takeover_after_ms {
                    return Ok(Claim::Refused(Refusal::Busy {
                        holder: h.n,
                        silent_ms: silent,
                        takeover_after_ms: rules.takeover_after_ms,
                    }));
                }
                tx.execute(
                    "UPDATE boots SET superseded_at = ?2 WHERE token_hash = ?1",
                    params![holder, now],
                )?;
                took_over = Some((h.n, silent));
            }
        }
        tx.execute(
            "UPDATE boots SET config_at = ?2, last_seen = ?2 WHERE token_hash = ?1",
            params![hash, now],
        )?;
        tx.execute(
            "UPDATE installs SET token_hash = ?2, updated_at = ?3,
                 state = CASE WHEN state = 'pending' THEN 'installing' ELSE state END
             WHERE id = ?1",
            params![install.id, hash, now],
        )?;
        if let Some((n, silent)) = took_over {
            let ev = server_event(
                "config",
                EventStatus::Running,
                format!(
                    "boot {} of the machine took over the install from boot {n}, silent for {}",
                    boot.n,
                    byol_spec::format_duration((silent / 1000) as u64)
                ),
            );
            insert_event(&tx, &install.id, Some(boot.n), None, now, &ev, false)?;
        }
        tx.commit()?;
        drop(c);
        Ok(Claim::Granted {
            install: Box::new(self.install(&install.id)?),
            boot: Boot {
                config_at: Some(now),
                last_seen: Some(now),
                ..boot
            },
            took_over_from: took_over.map(|(n, _)| n),
        })
    }

    /// Records a boot's events (a batch, in order) and moves the install's state. Events whose
    /// number this boot already sent are skipped. A boot that does not hold the install (it
    /// has not fetched the config) has its events kept in the log, but they change nothing:
    /// a stray token cannot fail or finish an install. An install that ended answers its state:
    /// `done` again for a `done` sent twice.
    pub fn record_events(&self, hash: &str, events: &[AgentEvent]) -> Result<Recorded> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        let Some(boot) = tx
            .query_row(
                &format!("{BOOT_SELECT} WHERE token_hash = ?1"),
                [hash],
                boot_row,
            )
            .optional()?
        else {
            return Err(StoreError::NotFound("unknown agent token".into()));
        };
        let install = tx.query_row(
            &format!("{INSTALL_SELECT} WHERE id = ?1"),
            [&boot.install_id],
            install_row,
        )?;
        let mut out = Recorded {
            install: install.id.clone(),
            boot: boot.n,
            state: install.state,
            recorded: 0,
            duplicates: 0,
            superseded: boot.superseded_at.is_some(),
            ended: !install.state.is_active(),
            error: install.error.clone(),
        };
        if out.ended || out.superseded {
            return Ok(out);
        }
        let holder = install.token_hash.as_deref() == Some(hash);
        let now = now_ms();
        let mut state = install.state;
        for ev in events {
            if let Some(seq) = ev.seq {
                let seen: Option<i64> = tx
                    .query_row(
                        "SELECT 1 FROM events WHERE install_id = ?1 AND boot = ?2 AND agent_seq = ?3",
                        params![install.id, boot.n, seq as i64],
                        |r| r.get(0),
                    )
                    .optional()?;
                if seen.is_some() {
                    out.duplicates += 1;
                    continue;
                }
            }
            // a boot that does not hold the install reports progress before its config (kept,
            // shown); its events count for nothing once another boot holds the install, and
            // its done or failed never
            let terminal = matches!(ev.status, EventStatus::Done | EventStatus::Failed);
            let ignored = !holder && (install.token_hash.is_some() || terminal);
            insert_event(&tx, &install.id, Some(boot.n), ev.seq, now, ev, ignored)?;
            out.recorded += 1;
            if !holder {
                continue;
            }
            let next = state.after(ev.status).unwrap_or(state);
            let ended = (!next.is_active()).then_some(now);
            let error = (ev.status == EventStatus::Failed).then(|| ev.message.clone());
            tx.execute(
                "UPDATE installs SET state = ?2, updated_at = ?3, phase = ?4,
                     bytes_done = COALESCE(?5, bytes_done), bytes_total = COALESCE(?6, bytes_total),
                     ended_at = COALESCE(?7, ended_at), error = COALESCE(?8, error)
                 WHERE id = ?1",
                params![
                    install.id,
                    next.as_str(),
                    now,
                    ev.phase,
                    ev.bytes_done.map(|b| b as i64),
                    ev.bytes_total.map(|b| b as i64),
                    ended,
                    error
                ],
            )?;
            state = next;
            if !state.is_active() {
                out.ended = true;
                out.error = error;
                break;
            }
        }
        tx.execute(
            "UPDATE boots SET last_seen = ?2 WHERE token_hash = ?1",
            params![hash, now],
        )?;
        fold_events(&tx, &install.id)?;
        tx.commit()?;
        out.state = state;
        Ok(out)
    }

    /// Installs that waited or ran too long become `failed`: `pending` ones the machine did
    /// not boot within `pending_ttl_ms`, `installing` ones with nothing heard for `stall_ms`.
    /// Returns (install, machine, message) for each.
    pub fn expire(
        &self,
        pending_ttl_ms: i64,
        stall_ms: i64,
    ) -> Result<Vec<(String, String, String)>> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        let now = now_ms();
        let mut out = Vec::new();
        {
            let mut st = tx.prepare(
                "SELECT id, machine, state FROM installs
                 WHERE (state = 'pending' AND created_at < ?1) OR (state = 'installing' AND updated_at < ?2)",
            )?;
            let rows = st
                .query_map(params![now - pending_ttl_ms, now - stall_ms], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for (id, machine, state) in rows {
                let message = if state == "pending" {
                    format!(
                        "the machine did not boot the installer within {} of the install's start (--pending-ttl): the install is failed and the machine boots its local disk; start a new one to try again",
                        byol_spec::format_duration((pending_ttl_ms / 1000) as u64)
                    )
                } else {
                    format!(
                        "nothing heard from the machine's installer for {} (--stall-timeout): the install is failed and the machine boots its local disk; start a new one to try again",
                        byol_spec::format_duration((stall_ms / 1000) as u64)
                    )
                };
                out.push((id, machine, message));
            }
        }
        for (id, _, message) in &out {
            tx.execute(
                "UPDATE installs SET state = 'failed', updated_at = ?2, ended_at = ?2, error = ?3
                 WHERE id = ?1",
                params![id, now, message],
            )?;
            let ev = server_event("expired", EventStatus::Failed, message.clone());
            insert_event(&tx, id, None, None, now, &ev, false)?;
        }
        tx.commit()?;
        Ok(out)
    }

    /// Adds an event of the server's own (`power`: what the BMC was asked and answered) to an
    /// install's history.
    pub fn server_event(
        &self,
        id: &str,
        phase: &str,
        status: EventStatus,
        message: String,
    ) -> Result<()> {
        let c = self.conn();
        let ev = server_event(phase, status, message);
        insert_event(&c, id, None, None, now_ms(), &ev, false)?;
        c.execute(
            "UPDATE installs SET updated_at = ?2 WHERE id = ?1 AND state IN ('pending','installing')",
            params![id, now_ms()],
        )?;
        Ok(())
    }

    /// Fails a `pending` install that no boot of the machine has claimed yet (the server could
    /// not start the machine); true when it did. An install a machine already booted for is
    /// left to that machine.
    pub fn fail_unclaimed(&self, id: &str, phase: &str, message: &str) -> Result<bool> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        let now = now_ms();
        let n = tx.execute(
            "UPDATE installs SET state = 'failed', updated_at = ?2, ended_at = ?2, error = ?3
             WHERE id = ?1 AND state = 'pending'
               AND NOT EXISTS (SELECT 1 FROM boots WHERE install_id = ?1 AND config_at IS NOT NULL)",
            params![id, now, message],
        )?;
        if n > 0 {
            let ev = server_event(phase, EventStatus::Failed, message.to_string());
            insert_event(&tx, id, None, None, now, &ev, false)?;
        }
        tx.commit()?;
        Ok(n > 0)
    }

    /// Cancels an active install: its token stops working, the machine boots locally again.
    pub fn cancel_install(&self, id: &str) -> Result<Install> {
        {
            let c = self.conn();
            let now = now_ms();
            let n = c.execute(
                "UPDATE installs SET state = 'cancelled', updated_at = ?2, ended_at = ?2,
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
            "SELECT seq, at_ms, body, boot, ignored FROM events WHERE install_id = ?1 AND seq > ?2 ORDER BY seq",
        )?;
        let rows = st
            .query_map(params![id, after_seq], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, i64>(4)? != 0,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(seq, at_ms, body, boot, ignored)| {
                let event = serde_json::from_str(&body)
                    .with_context(|| format!("event {seq} of install {id} is unreadable"))?;
                Ok(StoredEvent {
                    seq,
                    at_ms,
                    boot,
                    ignored,
                    event,
                })
            })
            .collect()
    }
}

/// Boots of one install that never fetched their config, kept (older ones are forgotten).
pub const MAX_UNUSED_BOOTS: i64 = 16;
/// Events kept per install: beyond, the oldest progress events are folded into one.
pub const MAX_EVENTS: i64 = 2000;
/// Bytes of events kept per install (hook output is the bulk): beyond, folded as well.
pub const MAX_EVENT_BYTES: i64 = 32 << 20;
/// Events folded at a time.
const FOLD: i64 = 200;

/// One network boot of an install's machine: the agent token its script carried.
#[derive(Debug, Clone)]
pub struct Boot {
    pub token_hash: String,
    pub install_id: String,
    /// 1 for the install's first boot, 2 for the next…
    pub n: i64,
    /// The address that fetched the boot script.
    pub ip: Option<String>,
    pub issued_at: i64,
    pub config_at: Option<i64>,
    pub last_seen: Option<i64>,
    pub superseded_at: Option<i64>,
}

/// What a token may do, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct TokenRules {
    /// The config can be fetched this long after the script was served.
    pub window_ms: i64,
    /// Another boot may take the install over once its holder was silent this long.
    pub takeover_after_ms: i64,
}

/// The answer to a config fetch.
#[derive(Debug)]
pub enum Claim {
    Granted {
        install: Box<Install>,
        boot: Boot,
        took_over_from: Option<i64>,
    },
    Refused(Refusal),
}

/// Why a config fetch was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    UnknownToken,
    Ended(InstallState),
    Superseded,
    AlreadyFetched {
        at_ms: i64,
    },
    WrongAddress {
        issued_to: String,
        from: String,
    },
    Expired {
        window_ms: i64,
    },
    Busy {
        holder: i64,
        silent_ms: i64,
        takeover_after_ms: i64,
    },
}

/// What [`Store::record_events`] did.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub install: String,
    pub boot: i64,
    pub state: InstallState,
    pub recorded: usize,
    pub duplicates: usize,
    /// Another boot took the install over: this one must stop.
    pub superseded: bool,
    /// The install has ended (now or before).
    pub ended: bool,
    pub error: Option<String>,
}

/// An event the server itself records in an install's history (expiry, takeover).
fn server_event(phase: &str, status: EventStatus, message: String) -> AgentEvent {
    AgentEvent {
        phase: phase.into(),
        status,
        message,
        bytes_done: None,
        bytes_total: None,
        logs: Vec::new(),
        seconds: None,
        seq: None,
        inventory: None,
    }
}

#[allow(clippy::too_many_arguments)]
fn insert_event(
    c: &Connection,
    id: &str,
    boot: Option<i64>,
    seq: Option<u64>,
    at: i64,
    ev: &AgentEvent,
    ignored: bool,
) -> Result<()> {
    // the agent's number is kept in its own column (the log has its own `seq`)
    // (the inventory goes to the machine, not into the history)
    let body = serde_json::to_string(&AgentEvent {
        seq: None,
        inventory: None,
        ..ev.clone()
    })
    .map_err(anyhow::Error::from)?;
    c.execute(
        "INSERT INTO events(install_id, at_ms, body, boot, agent_seq, ignored) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![id, at, body, boot, seq.map(|s| s as i64), ignored],
    )?;
    if let (false, Some(inv)) = (ignored, &ev.inventory) {
        let json = serde_json::to_string(inv).map_err(anyhow::Error::from)?;
        c.execute(
            "UPDATE machines SET inventory = ?1, inventory_at = ?2 \
             WHERE name = (SELECT machine FROM installs WHERE id = ?3)",
            params![json, at, id],
        )?;
    }
    Ok(())
}

/// Keeps an install's history under [`MAX_EVENTS`]: the oldest `running` and `ok` events are
/// folded into one line that says how many went; `done` and `failed` events are always kept.
fn fold_events(c: &Connection, id: &str) -> Result<()> {
    let (count, bytes): (i64, i64) = c.query_row(
        "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM events WHERE install_id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    if count <= MAX_EVENTS && bytes <= MAX_EVENT_BYTES {
        return Ok(());
    }
    let victims: Vec<(i64, String)> = {
        let mut st = c.prepare(
            "SELECT seq, body FROM events WHERE install_id = ?1
               AND json_extract(body, '$.status') IN ('running', 'ok') ORDER BY seq LIMIT ?2",
        )?;
        st.query_map(params![id, FOLD], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?
    };
    let Some((first, body)) = victims.first() else {
        return Ok(());
    };
    let folded_before: u64 = serde_json::from_str::<AgentEvent>(body)
        .ok()
        .filter(|e| e.phase == "folded")
        .and_then(|e| e.bytes_done)
        .unwrap_or(1);
    let total = folded_before + victims.len() as u64 - 1;
    let mut ev = server_event(
        "folded",
        EventStatus::Running,
        format!(
            "{total} earlier progress events folded: an install keeps its last {MAX_EVENTS} events (at most {} MiB), and always its done or failed event",
            MAX_EVENT_BYTES >> 20
        ),
    );
    // the count rides in bytes_done so that the next fold can add to it
    ev.bytes_done = Some(total);
    let body = serde_json::to_string(&ev).map_err(anyhow::Error::from)?;
    c.execute(
        "UPDATE events SET body = ?2 WHERE seq = ?1",
        params![first, body],
    )?;
    for (seq, _) in &victims[1..] {
        c.execute("DELETE FROM events WHERE seq = ?1", [seq])?;
    }
    Ok(())
}

const BOOT_SELECT: &str = "SELECT token_hash, install_id, n, ip, issued_at, config_at, last_seen, superseded_at FROM boots";

fn boot_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Boot> {
    Ok(Boot {
        token_hash: r.get(0)?,
        install_id: r.get(1)?,
        n: r.get(2)?,
        ip: r.get(3)?,
        issued_at: r.get(4)?,
        config_at: r.get(5)?,
        last_seen: r.get(6)?,
        superseded_at: r.get(7)?,
    })
}

const INSTALL_SELECT: &str = "SELECT id, machine, state, spec, created_at, updated_at, ended_at, error, phase, bytes_done, bytes_total, token_hash, task_id FROM installs";

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
        task_id: r.get::<_, Option<i64>>(12)?.unwrap_or(0),
    })
}

fn parse_state(s: &str) -> Result<InstallState> {
    InstallState::parse(s)
        .ok_or_else(|| StoreError::Internal(anyhow::anyhow!("bad state `{s}` in the store")))
}

/// Whether `table` has `column` (an older database may not).
fn has_column(c: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    c.prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?
        .exists(params![table, column])
}

/// Columns added after the first release, added to older databases.
fn migrate(c: &Connection) -> anyhow::Result<()> {
    let has_hints = has_column(c, "machines", "disk_hints")?;
    if !has_hints {
        c.execute_batch("ALTER TABLE machines ADD COLUMN disk_hints TEXT")?;
    }
    let has_hook = has_column(c, "machines", "hook_timeout")?;
    if !has_hook {
        c.execute_batch("ALTER TABLE machines ADD COLUMN hook_timeout INTEGER")?;
    }
    let has_boot = has_column(c, "events", "boot")?;
    if !has_boot {
        c.execute_batch(
            "ALTER TABLE events ADD COLUMN boot INTEGER; ALTER TABLE events ADD COLUMN agent_seq INTEGER;
             ALTER TABLE events ADD COLUMN ignored INTEGER NOT NULL DEFAULT 0;",
        )?;
    }
    let has_scheme = has_column(c, "machines", "scheme")?;
    if !has_scheme {
        c.execute_batch("ALTER TABLE machines ADD COLUMN scheme TEXT")?;
    }
    let has_inventory = has_column(c, "machines", "inventory")?;
    if !has_inventory {
        c.execute_batch(
            "ALTER TABLE machines ADD COLUMN inventory TEXT;
             ALTER TABLE machines ADD COLUMN inventory_at INTEGER;",
        )?;
    }
    let has_task = has_column(c, "installs", "task_id")?;
    if !has_task {
        // older installs get their numbers in the order they were made
        c.execute_batch(
            "ALTER TABLE installs ADD COLUMN task_id INTEGER;
             UPDATE installs SET task_id = (SELECT COUNT(*) FROM installs AS o
                 WHERE o.created_at < installs.created_at
                    OR (o.created_at = installs.created_at AND o.rowid <= installs.rowid));",
        )?;
    }
    c.execute_batch("CREATE UNIQUE INDEX IF NOT EXISTS installs_task_id ON installs(task_id);")?;
    c.execute_batch(
        "CREATE UNIQUE INDEX IF NOT EXISTS events_agent_seq ON events(install_id, boot, agent_seq)
             WHERE agent_seq IS NOT NULL;",
    )?;
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
