//! bmcs: a machine's BMC (Redfish or IPMI): where it answers, the user, the password sealed
//! (see `crate::seal`; never stored or shown in clear) and how its TLS certificate is checked.
//! One BMC per machine; it goes with the machine.

use rusqlite::{OptionalExtension, params};

use super::{Result, Store, now_ms, unknown_machine};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS machine_bmcs (
    machine TEXT PRIMARY KEY REFERENCES machines(name) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    address TEXT NOT NULL,
    username TEXT NOT NULL,
    password BLOB NOT NULL,
    ca_pem TEXT,
    insecure INTEGER NOT NULL DEFAULT 0,
    set_at INTEGER NOT NULL
);";

/// A machine's BMC as stored: the password still sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BmcRecord {
    pub machine: String,
    /// `redfish` or `ipmi`.
    pub kind: String,
    /// Redfish: the URL as given (`https://HOST[/redfish/v1/Systems/ID]`); IPMI: `HOST:PORT`.
    pub address: String,
    pub username: String,
    /// Sealed with the context [`BmcRecord::seal_context`].
    pub sealed_password: Vec<u8>,
    /// PEM certificates the BMC's TLS certificate must chain to (Redfish), instead of the
    /// public roots.
    pub ca_pem: Option<String>,
    /// TLS certificate not checked / plain HTTP allowed (Redfish).
    pub insecure: bool,
    pub set_at: i64,
}

impl BmcRecord {
    /// What a machine's BMC password is sealed with: moved to another machine's row, it does
    /// not open.
    pub fn seal_context(machine: &str) -> String {
        format!("bmc:{machine}")
    }
}

impl Store {
    /// Sets (or replaces) the BMC of `r.machine`.
    pub fn set_bmc(&self, r: &BmcRecord) -> Result<()> {
        let c = self.conn();
        let known: Option<i64> = c
            .query_row(
                "SELECT 1 FROM machines WHERE name = ?1",
                [&r.machine],
                |x| x.get(0),
            )
            .optional()?;
        if known.is_none() {
            return Err(unknown_machine(&r.machine));
        }
        c.execute(
            "INSERT INTO machine_bmcs(machine, kind, address, username, password, ca_pem, insecure, set_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT(machine) DO UPDATE SET kind = ?2, address = ?3, username = ?4,
                 password = ?5, ca_pem = ?6, insecure = ?7, set_at = ?8",
            params![
                r.machine,
                r.kind,
                r.address,
                r.username,
                r.sealed_password,
                r.ca_pem,
                r.insecure,
                now_ms()
            ],
        )?;
        Ok(())
    }

    /// The machine's BMC, if it has one.
    pub fn bmc(&self, machine: &str) -> Result<Option<BmcRecord>> {
        let c = self.conn();
        Ok(c.query_row(
            "SELECT machine, kind, address, username, password, ca_pem, insecure, set_at
             FROM machine_bmcs WHERE machine = ?1",
            [machine],
            |r| {
                Ok(BmcRecord {
                    machine: r.get(0)?,
                    kind: r.get(1)?,
                    address: r.get(2)?,
                    username: r.get(3)?,
                    sealed_password: r.get(4)?,
                    ca_pem: r.get(5)?,
                    insecure: r.get(6)?,
                    set_at: r.get(7)?,
                })
            },
        )
        .optional()?)
    }

    /// Forgets the machine's BMC; false when it had none.
    pub fn clear_bmc(&self, machine: &str) -> Result<bool> {
        self.machine(machine)?;
        let c = self.conn();
        Ok(c.execute("DELETE FROM machine_bmcs WHERE machine = ?1", [machine])? > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bmc_is_set_replaced_and_goes_with_its_machine() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("s.sqlite")).unwrap();
        let mut r = BmcRecord {
            machine: "ns1".into(),
            kind: "ipmi".into(),
            address: "127.0.0.1:623".into(),
            username: "admin".into(),
            sealed_password: b"sealed".to_vec(),
            ca_pem: None,
            insecure: false,
            set_at: 0,
        };
        assert!(s.set_bmc(&r).is_err(), "no machine ns1 yet");
        s.add_machine(
            "ns1",
            &["52:54:00:00:00:01".into()],
            &Default::default(),
            None,
        )
        .unwrap();
        s.set_bmc(&r).unwrap();
        assert_eq!(s.bmc("ns1").unwrap().unwrap().address, "127.0.0.1:623");
        r.kind = "redfish".into();
        r.address = "https://127.0.0.1:8000".into();
        s.set_bmc(&r).unwrap();
        let got = s.bmc("ns1").unwrap().unwrap();
        assert_eq!(
            (got.kind.as_str(), got.sealed_password.as_slice()),
            ("redfish", &b"sealed"[..])
        );
        s.delete_machine("ns1").unwrap();
        assert_eq!(s.bmc("ns1").unwrap(), None);
        assert!(s.clear_bmc("ns1").is_err(), "unknown machine");
    }
}
