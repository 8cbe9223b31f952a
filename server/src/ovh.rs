//! ovh: the OVH-compatible endpoints, `POST /dedicated/server/{serviceName}/install/start`
//! (the guide's body, verbatim) and `GET …/install/status` (OVH's `{elapsedTime, progress}`
//! shape, built from the agent's events). serviceName is the machine's name in byol.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use byol_spec::{EventStatus, InstallRequest, InstallState};
use serde_json::{Value, json};

use crate::http::{ApiError, ApiResult, Shared};
use crate::store::{Install, StoredEvent, now_ms};
use crate::views::iso;

pub async fn install_start(
    State(st): State<Shared>,
    Path(service): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let i = start(&st, &service, &body)?;
    Ok(Json(json!({
        "taskId": i.id,
        "function": "reinstallServer",
        "status": "init",
        "comment": format!("Start BYOLinux installation of {service}"),
        "startDate": iso(i.created_at),
        "lastUpdate": iso(i.updated_at),
        "doneDate": null,
    })))
}

/// Validates the OVH body and creates the pending install (shared with the native API).
pub fn start(st: &Shared, machine: &str, body: &[u8]) -> ApiResult<Install> {
    // The machine is checked first: a request for an unknown machine is wrong whatever it holds.
    let m = crate::http::db(|| st.store.machine(machine))?;
    let spec = InstallRequest::parse_and_validate(body)?;
    if !m.disk_hints.is_empty() && spec.disk_group_id != 1 {
        return Err(ApiError::bad_request(format!(
            "diskGroupId {} given, but machine `{machine}` has disk hints ({}) that choose its \
             disk: leave diskGroupId out, or clear the hints (byol machine disk {machine} --clear)",
            spec.disk_group_id,
            m.disk_hints.describe()
        )));
    }
    let i = crate::http::db(|| st.store.create_install(machine, &spec))?;
    st.metrics.install_started();
    tracing::info!(machine, install = %i.id, image = %byol_spec::request::redact_url(&spec.image_url),
        "install started");
    Ok(i)
}

pub async fn install_status(
    State(st): State<Shared>,
    Path(service): Path<String>,
) -> ApiResult<Json<Value>> {
    crate::http::db(|| st.store.machine(&service))?;
    let Some(i) = crate::http::db(|| st.store.latest_install(&service))? else {
        return Err(ApiError::not_found(
            "Server is not being installed or reinstalled at the moment",
        ));
    };
    let events = crate::http::db(|| st.store.events(&i.id, 0))?;
    Ok(Json(status_of(&i, &events)))
}

/// What an OVH client sees: one step per phase, in the order they started.
pub fn status_of(i: &Install, events: &[StoredEvent]) -> Value {
    let end = i.ended_at.unwrap_or_else(now_ms);
    let elapsed = ((end - i.created_at).max(0) / 1000) as u64;
    let mut steps: Vec<(String, &'static str, String, String)> = Vec::new(); // phase, status, comment, error
    for e in events.iter().filter(|e| !e.ignored) {
        let ev = &e.event;
        let status = match ev.status {
            EventStatus::Running => "doing",
            EventStatus::Ok | EventStatus::Done => "done",
            EventStatus::Failed => "error",
        };
        let error = if ev.status == EventStatus::Failed {
            ev.message.clone()
        } else {
            String::new()
        };
        let comment = phase_comment(&ev.phase);
        match steps.iter_mut().find(|s| s.0 == ev.phase) {
            Some(s) => {
                s.1 = status;
                s.3 = error;
            }
            None => steps.push((ev.phase.clone(), status, comment, error)),
        }
    }
    if i.state == InstallState::Pending && steps.is_empty() {
        steps.push((
            "boot".into(),
            "doing",
            "Waiting for the server to network-boot the installer".into(),
            String::new(),
        ));
    }
    if i.state == InstallState::Cancelled {
        steps.push((
            "cancel".into(),
            "error",
            "Installation cancelled".into(),
            "cancelled by the operator".into(),
        ));
    }
    if !i.state.is_active() {
        // a finished install has nothing left "doing"
        for s in steps.iter_mut().filter(|s| s.1 == "doing") {
            s.1 = if i.state == InstallState::Done {
                "done"
            } else {
                "error"
            };
        }
    }
    json!({
        "elapsedTime": elapsed,
        "progress": steps.into_iter().map(|(_, status, comment, error)| json!({
            "comment": comment, "status": status, "error": error,
        })).collect::<Vec<_>>(),
    })
}

/// OVH's words for a phase; a phase byol does not know (a newer agent's) shows as its name.
fn phase_comment(phase: &str) -> String {
    byol_spec::Phase::parse(phase).map_or_else(|| phase.to_string(), |p| p.ovh_comment().into())
}
