//! power: a machine's BMC, and what byol asks of it. `byol machine bmc` stores a Redfish or
//! IPMI BMC (password sealed, never shown); `byol machine power NAME on|off|cycle|status` drives
//! it; and an install started for a machine with a BMC sets the next boot to the network, once,
//! then powers the machine on (or resets it when it runs), so that `install/start` alone
//! reinstalls it, as at OVH. What was asked and what the BMC answered go into the install's
//! history as `power` events; a BMC that refuses fails the install before anything is written.
//!
//! Redfish is HTTPS and JSON (reqwest, [`redfish`]); IPMI v2.0 (RMCP+) goes through Debian's
//! `ipmitool` ([`ipmi`]; the README says why).

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use byol_spec::{EventStatus, Secret};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::{ApiError, ApiResult, Shared};
use crate::store::BmcRecord;

pub mod ipmi;
pub mod redfish;

/// How long one BMC request may take (a BMC is slow, not that slow).
pub const BMC_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a BMC request failed: says what was asked, what came back and what to check.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct BmcError(pub String);

/// What `byol machine power` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerAction {
    On,
    Off,
    Cycle,
    Status,
}

/// A machine's power as its BMC tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PowerState {
    On,
    Off,
    /// Anything else the BMC said (`PoweringOn`…), as it said it.
    Other(String),
}

impl PowerState {
    pub fn as_str(&self) -> &str {
        match self {
            PowerState::On => "on",
            PowerState::Off => "off",
            PowerState::Other(s) => s,
        }
    }
}

/// A BMC ready to be asked: the stored record with its password opened.
pub enum Bmc {
    Redfish(redfish::Redfish),
    Ipmi(ipmi::Ipmi),
}

impl Bmc {
    /// The record's BMC; `password` is the opened secret.
    pub fn new(r: &BmcRecord, password: Secret, boot_mode: Option<&str>) -> Result<Bmc, BmcError> {
        match r.kind.as_str() {
            "redfish" => Ok(Bmc::Redfish(redfish::Redfish::new(
                &r.address,
                &r.username,
                password,
                r.ca_pem.as_deref(),
                r.insecure,
            )?)),
            "ipmi" => Ok(Bmc::Ipmi(ipmi::Ipmi::new(
                &r.address,
                &r.username,
                password,
                boot_mode == Some("uefi"),
            )?)),
            k => Err(BmcError(format!(
                "the stored BMC is of an unknown kind `{k}`: set it again (byol machine bmc …)"
            ))),
        }
    }

    /// `redfish https://…` / `ipmi HOST:PORT`, for messages.
    pub fn describe(&self) -> String {
        match self {
            Bmc::Redfish(r) => format!("Redfish {}", r.describe()),
            Bmc::Ipmi(i) => format!("IPMI {}", i.describe()),
        }
    }

    pub async fn status(&self) -> Result<PowerState, BmcError> {
        match self {
            Bmc::Redfish(r) => r.status().await,
            Bmc::Ipmi(i) => i.status().await,
        }
    }

    /// Powers on, off, or cycles (a machine that is off is powered on); returns what the BMC
    /// answered, for people.
    pub async fn power(&self, action: PowerAction) -> Result<String, BmcError> {
        let state = self.status().await?;
        let action = match (action, &state) {
            (PowerAction::Cycle, PowerState::Off) => PowerAction::On,
            (a, _) => a,
        };
        match self {
            Bmc::Redfish(r) => r.power(action).await,
            Bmc::Ipmi(i) => i.power(action).await,
        }
    }

    /// The next boot from the network, once; returns what the BMC answered.
    pub async fn boot_network_once(&self) -> Result<String, BmcError> {
        match self {
            Bmc::Redfish(r) => r.boot_network_once().await,
            Bmc::Ipmi(i) => i.boot_network_once().await,
        }
    }
}

/// `PUT /api/v1/machines/{name}/bmc`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BmcBody {
    /// `redfish` or `ipmi`.
    pub kind: String,
    pub address: String,
    pub username: String,
    pub password: Secret,
    #[serde(default)]
    pub ca_pem: Option<String>,
    #[serde(default)]
    pub insecure: bool,
}

/// A BMC's settings checked: an answer that says what was wrong and what to do.
fn check(name: &str, b: &BmcBody) -> ApiResult<(String, String)> {
    let bad = |m: String| Err(ApiError::bad_request(m));
    let user = b.username.as_str();
    if user.is_empty() || user.len() > 64 || user.chars().any(char::is_control) {
        return bad(
            "the BMC user must be 1 to 64 characters, with no control characters".to_string(),
        );
    }
    let pw = b.password.expose();
    if pw.is_empty() || pw.len() > 256 || pw.contains('\0') {
        return bad("the BMC password must be 1 to 256 bytes, with no NUL byte (give it in a file: --password-file FILE)".into());
    }
    match b.kind.as_str() {
        "redfish" => {
            if b.ca_pem.is_some() && b.insecure {
                return bad("give --ca-file or --insecure, not both".into());
            }
            if let Some(pem) = &b.ca_pem {
                redfish::certificates(pem).map_err(|e| ApiError::bad_request(e.0))?;
            }
            let address = redfish::check_url(&b.address, b.insecure)
                .map_err(|e| ApiError::bad_request(e.0))?;
            Ok(("redfish".into(), address))
        }
        "ipmi" => {
            if b.ca_pem.is_some() || b.insecure {
                return bad(
                    "--ca-file and --insecure are for Redfish BMCs: IPMI has no TLS".into(),
                );
            }
            // IPMI v2.0: user names of at most 16 bytes, passwords of at most 20
            if user.len() > 16 {
                return bad(format!(
                    "IPMI user names are at most 16 bytes; `{}` is {}",
                    byol_spec::escape_control(user),
                    user.len()
                ));
            }
            if pw.len() > 20 {
                return bad(format!(
                    "IPMI passwords are at most 20 bytes; the one given is {}",
                    pw.len()
                ));
            }
            let address =
                ipmi::check_address(&b.address).map_err(|e| ApiError::bad_request(e.0))?;
            Ok(("ipmi".into(), address))
        }
        k => bad(format!(
            "BMC kind `{}` for machine {name}: use redfish or ipmi",
            byol_spec::escape_control(k)
        )),
    }
}

/// What is shown of a BMC: never its password.
fn view(r: &BmcRecord) -> Value {
    json!({
        "kind": r.kind,
        "address": r.address,
        "username": r.username,
        // whether a CA file was given (its certificates are not secret, but long)
        "caPemSet": r.ca_pem.is_some(),
        "insecure": r.insecure,
        "setAt": crate::views::iso(r.set_at),
    })
}

/// A JSON body, or an answer saying what is wrong with it (serde's words name the field; a
/// password's value never shows in them).
fn body<T: serde::de::DeserializeOwned>(b: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(b)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid: {e}")))
}

pub async fn set_bmc(
    State(st): State<Shared>,
    Path(name): Path<String>,
    raw: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    crate::http::db(|| st.store.machine(&name))?;
    let b: BmcBody = body(&raw)?;
    let (kind, address) = check(&name, &b)?;
    let r = BmcRecord {
        machine: name.clone(),
        kind,
        address,
        username: b.username.clone(),
        sealed_password: st.seal.seal(
            &BmcRecord::seal_context(&name),
            b.password.expose().as_bytes(),
        ),
        ca_pem: b.ca_pem.clone(),
        insecure: b.insecure,
        set_at: 0,
    };
    crate::http::db(|| st.store.set_bmc(&r))?;
    tracing::info!(machine = %name, kind = %r.kind, address = %r.address, "BMC set");
    let r = crate::http::db(|| st.store.bmc(&name))?
        .ok_or_else(|| ApiError::internal("the BMC just stored is gone"))?;
    Ok(Json(view(&r)))
}

pub async fn get_bmc(State(st): State<Shared>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    crate::http::db(|| st.store.machine(&name))?;
    match crate::http::db(|| st.store.bmc(&name))? {
        Some(r) => Ok(Json(view(&r))),
        None => Err(ApiError::not_found(format!(
            "machine `{name}` has no BMC: set one (byol machine bmc {name} --redfish URL|--ipmi HOST --user U --password-file F)"
        ))),
    }
}

pub async fn clear_bmc(
    State(st): State<Shared>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let had = crate::http::db(|| st.store.clear_bmc(&name))?;
    tracing::info!(machine = %name, had, "BMC cleared");
    Ok(Json(json!({"cleared": had})))
}

/// The machine's BMC, opened; None when it has none.
pub fn bmc_of(st: &Shared, machine: &str) -> Result<Option<Bmc>, BmcError> {
    let store = |e: crate::store::StoreError| BmcError(format!("reading the BMC: {e}"));
    let Some(r) = st.store.bmc(machine).map_err(store)? else {
        return Ok(None);
    };
    let pw = st
        .seal
        .open(&BmcRecord::seal_context(machine), &r.sealed_password)
        .map_err(|e| BmcError(e.to_string()))?;
    let pw = String::from_utf8(pw)
        .map_err(|_| BmcError("the stored BMC password is not UTF-8: set it again".into()))?;
    let mode = st
        .store
        .inventory(machine)
        .ok()
        .flatten()
        .map(|(inv, _)| inv.boot_mode.clone());
    Bmc::new(&r, Secret::new(pw), mode.as_deref()).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerBody {
    pub action: PowerAction,
}

/// `POST /api/v1/machines/{name}/power` `{"action": "on|off|cycle|status"}`.
pub async fn power(
    State(st): State<Shared>,
    Path(name): Path<String>,
    raw: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    crate::http::db(|| st.store.machine(&name))?;
    let b: PowerBody = body(&raw)?;
    let Some(bmc) = bmc_of(&st, &name).map_err(|e| ApiError::internal(e.0))? else {
        return Err(ApiError::bad_request(format!(
            "machine `{name}` has no BMC: set one first (byol machine bmc {name} --redfish URL|--ipmi HOST --user U --password-file F)"
        )));
    };
    let failed = |e: BmcError| ApiError::new(axum::http::StatusCode::BAD_GATEWAY, e.0);
    let answer = match b.action {
        PowerAction::Status => None,
        a => Some(bmc.power(a).await.map_err(failed)?),
    };
    // what the machine is now (a BMC may take a moment to say so)
    let state = bmc.status().await.map_err(failed)?;
    tracing::info!(machine = %name, action = ?b.action, state = state.as_str(), "power");
    Ok(Json(json!({
        "machine": name,
        "bmc": bmc.describe(),
        "powerState": state.as_str(),
        "answer": answer,
    })))
}

/// After an install is created: with a BMC, the next boot from the network and power on (or
/// reset), in the background (the API answers at once), what was done going into the install's
/// history as `power` events. Returns what happens next, for people.
pub fn start_machine(st: &Shared, machine: &str, install: &str) -> String {
    let bmc = match bmc_of(st, machine) {
        Ok(Some(b)) => b,
        Ok(None) => {
            return format!(
                "machine {machine} has no BMC: the install waits for its next network boot \
                 (power it on or reset it; with `byol machine bmc {machine} …` byol does it)"
            );
        }
        Err(e) => {
            fail(st, install, machine, &e);
            return format!("machine {machine}'s BMC cannot be used: {e}");
        }
    };
    let what = bmc.describe();
    let next = format!(
        "byol starts machine {machine} through its BMC ({what}): next boot from the network, once; then power on or reset"
    );
    let (st, machine, install) = (st.clone(), machine.to_string(), install.to_string());
    tokio::spawn(async move {
        let event = |status, message: String| {
            if let Err(e) = st.store.server_event(&install, "power", status, message) {
                tracing::warn!(install = %install, error = %e, "recording a power event");
            }
        };
        event(
            EventStatus::Running,
            format!("{what}: next boot from the network, once; then power on or reset"),
        );
        let run = async {
            let boot = bmc.boot_network_once().await?;
            let before = bmc.status().await?;
            let action = if before == PowerState::Off {
                PowerAction::On
            } else {
                PowerAction::Cycle
            };
            let power = bmc.power(action).await?;
            Ok::<_, BmcError>(format!(
                "{what}: next boot from the network, once ({boot}); the machine was {}: {power}",
                before.as_str()
            ))
        };
        match run.await {
            Ok(m) => {
                tracing::info!(machine = %machine, install = %install, "{m}");
                event(EventStatus::Ok, m);
            }
            Err(e) => fail(&st, &install, &machine, &e),
        }
    });
    next
}

/// A BMC failure fails the install (nothing was written), unless the machine booted for it
/// meanwhile.
fn fail(st: &Shared, install: &str, machine: &str, e: &BmcError) {
    let message = format!(
        "could not start machine {machine} through its BMC: {e}; the disks were not touched: fix \
         the BMC settings (byol machine bmc {machine} …), check with `byol machine power \
         {machine} status`, and start the install again"
    );
    tracing::warn!(machine, install, "{message}");
    match st.store.fail_unclaimed(install, "power", &message) {
        Ok(true) => {}
        Ok(false) => {
            let _ = st
                .store
                .server_event(install, "power", EventStatus::Running, message);
        }
        Err(e) => tracing::warn!(install, error = %e, "failing the install"),
    }
}

/// BMC text for messages: control characters escaped, at most 300 characters.
pub fn shown(s: &str) -> String {
    let s = s.trim();
    let cut: String = s.chars().take(300).collect();
    let more = if cut.len() < s.len() { "…" } else { "" };
    format!("{}{more}", byol_spec::escape_control(&cut))
}
