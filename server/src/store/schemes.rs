//! schemes: named storage layouts (OVH's `partitionSchemeName`), stored as the rows the
//! operator gave (checked before they are stored), and a machine's default scheme.

use byol_spec::storage::PartitionSpec;
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Result, Store, StoreError, now_ms, unknown_machine};

/// The built-in scheme's name: OVH's default layout, never stored.
pub const DEFAULT_SCHEME: &str = "default";

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Scheme {
    pub name: String,
    pub layout: Vec<PartitionSpec>,
    pub created_at: i64,
    pub updated_at: i64,
}

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS schemes (
    name TEXT PRIMARY KEY,
    layout TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);";

fn unknown_scheme(name: &str) -> StoreError {
    StoreError::NotFound(format!(
        "Partition scheme {name} not found for operating system {}",
        byol_spec::TEMPLATE_NAME
    ))
}

fn layout_from(name: &str, s: &str) -> Result<Vec<PartitionSpec>> {
    serde_json::from_str(s).map_err(|e| {
        StoreError::Internal(anyhow::anyhow!(
            "scheme `{name}`: stored layout is not readable: {e}"
        ))
    })
}

impl Store {
    /// Stores (or replaces) scheme `name`; true when it is new. The caller checked the rows.
    pub fn put_scheme(&self, name: &str, layout: &[PartitionSpec]) -> Result<(Scheme, bool)> {
        if name == DEFAULT_SCHEME {
            return Err(StoreError::Conflict(format!(
                "`{DEFAULT_SCHEME}` is byol's built-in scheme (OVH's default layout) and cannot \
                 be replaced: give yours another name"
            )));
        }
        let json = serde_json::to_string(layout).map_err(|e| StoreError::Internal(e.into()))?;
        let now = now_ms();
        let c = self.conn();
        let existed: Option<i64> = c
            .query_row(
                "SELECT created_at FROM schemes WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?;
        c.execute(
            "INSERT INTO schemes (name, layout, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT(name) DO UPDATE SET layout = excluded.layout,
             updated_at = excluded.updated_at",
            params![name, json, now],
        )?;
        Ok((
            Scheme {
                name: name.into(),
                layout: layout.to_vec(),
                created_at: existed.unwrap_or(now),
                updated_at: now,
            },
            existed.is_none(),
        ))
    }

    pub fn scheme(&self, name: &str) -> Result<Scheme> {
        let c = self.conn();
        let row: Option<(String, i64, i64)> = c
            .query_row(
                "SELECT layout, created_at, updated_at FROM schemes WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let (layout, created_at, updated_at) = row.ok_or_else(|| unknown_scheme(name))?;
        Ok(Scheme {
            name: name.into(),
            layout: layout_from(name, &layout)?,
            created_at,
            updated_at,
        })
    }

    pub fn schemes(&self) -> Result<Vec<Scheme>> {
        let c = self.conn();
        let mut st =
            c.prepare("SELECT name, layout, created_at, updated_at FROM schemes ORDER BY name")?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<rusqlite::Result<Vec<(String, String, i64, i64)>>>()?;
        rows.into_iter()
            .map(|(name, layout, created_at, updated_at)| {
                Ok(Scheme {
                    layout: layout_from(&name, &layout)?,
                    name,
                    created_at,
                    updated_at,
                })
            })
            .collect()
    }

    /// Deletes scheme `name`; refused while a machine has it as its default.
    pub fn delete_scheme(&self, name: &str) -> Result<()> {
        let c = self.conn();
        let users: Vec<String> = c
            .prepare("SELECT name FROM machines WHERE scheme = ?1 ORDER BY name")?
            .query_map([name], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if !users.is_empty() {
            return Err(StoreError::Conflict(format!(
                "scheme `{name}` is the default of {}: give them another first (byol machine \
                 scheme MACHINE default)",
                users.join(", ")
            )));
        }
        if c.execute("DELETE FROM schemes WHERE name = ?1", [name])? == 0 {
            return Err(unknown_scheme(name));
        }
        Ok(())
    }

    /// Sets the scheme a machine installs when a request names none (`default`: OVH's).
    pub fn set_machine_scheme(&self, machine: &str, scheme: &str) -> Result<()> {
        if scheme != DEFAULT_SCHEME {
            self.scheme(scheme)?;
        }
        let stored = (scheme != DEFAULT_SCHEME).then_some(scheme);
        let n = self.conn().execute(
            "UPDATE machines SET scheme = ?2 WHERE name = ?1",
            params![machine, stored],
        )?;
        if n == 0 {
            return Err(unknown_machine(machine));
        }
        Ok(())
    }

    /// The machine's default scheme (`default` when it has none of its own).
    pub fn machine_scheme(&self, machine: &str) -> Result<String> {
        let s: Option<Option<String>> = self
            .conn()
            .query_row(
                "SELECT scheme FROM machines WHERE name = ?1",
                [machine],
                |r| r.get(0),
            )
            .optional()?;
        match s {
            None => Err(unknown_machine(machine)),
            Some(s) => Ok(s.unwrap_or_else(|| DEFAULT_SCHEME.into())),
        }
    }
}
