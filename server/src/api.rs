//! api: byol's native JSON API under `/api/v1/` (admin token): machines (add, list, get,
//! delete), installs (start, get, cancel) and their events. Secrets never appear in answers.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use byol_spec::DiskHints;

use crate::http::{ApiError, ApiResult, Shared};
use crate::views;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMachine {
    name: String,
    #[serde(default)]
    macs: Vec<String>,
    #[serde(default)]
    mac: Option<String>,
    /// byol's own disk hints (serial, wwn, model, minSize, maxSize, byPath…); null or
    /// absent: none.
    #[serde(default)]
    disk: Option<DiskHints>,
    /// How long make_image_bootable.sh may run on this machine (`45m`); null or absent:
    /// the server's `--hook-timeout`.
    #[serde(default, rename = "hookTimeout")]
    hook_timeout: Option<String>,
}

fn check_hook_timeout(v: Option<&str>) -> ApiResult<Option<u64>> {
    v.map(|s| {
        byol_spec::request::parse_hook_timeout(s).map_err(|e| {
            ApiError::bad_request(format!(
                "hookTimeout: {e} (how long make_image_bootable.sh may run, from 1m to 24h, e.g. `45m`)"
            ))
        })
    })
    .transpose()
}

fn check_hints(h: &DiskHints) -> ApiResult<()> {
    h.validate().map_err(ApiError::bad_request)
}

/// Machine names are OVH service names: letters, digits, '.', '_', '-'.
pub fn check_machine_name(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !name.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "machine name `{}` is not valid: use 1-64 letters, digits, '.', '_' or '-'",
            name.chars().take(80).collect::<String>()
        )))
    }
}

pub async fn add_machine(
    State(st): State<Shared>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let req: NewMachine = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "machine body must be {{\"name\": \"...\", \"macs\": [\"52:54:00:12:34:56\"]}}: {e}"
        ))
    })?;
    check_machine_name(&req.name)?;
    let mut macs = Vec::new();
    for raw in req.macs.iter().chain(req.mac.iter()) {
        let mac = byol_ipxe::normalize_mac(raw).ok_or_else(|| {
            ApiError::bad_request(format!(
                "`{}` is not a MAC address (e.g. 52:54:00:12:34:56)",
                raw.chars().take(40).collect::<String>()
            ))
        })?;
        if !macs.contains(&mac) {
            macs.push(mac);
        }
    }
    if macs.is_empty() {
        return Err(ApiError::bad_request(
            "a machine needs at least one MAC address: the one its firmware network-boots from",
        ));
    }
    let hints = req.disk.unwrap_or_default();
    check_hints(&hints)?;
    let hook = check_hook_timeout(req.hook_timeout.as_deref())?;
    let m = crate::http::db(|| st.store.add_machine(&req.name, &macs, &hints, hook))?;
    tracing::info!(machine = %m.name, macs = ?m.macs, disk = %m.disk_hints.describe(), "machine added");
    Ok((StatusCode::CREATED, Json(views::machine(&m, None))))
}

pub async fn list_machines(State(st): State<Shared>) -> ApiResult<Json<Value>> {
    let mut out = Vec::new();
    for m in crate::http::db(|| st.store.machines())? {
        let latest = crate::http::db(|| st.store.latest_install(&m.name))?;
        out.push(views::machine(&m, latest.as_ref()));
    }
    Ok(Json(json!({ "machines": out })))
}

pub async fn get_machine(
    State(st): State<Shared>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let m = crate::http::db(|| st.store.machine(&name))?;
    let latest = crate::http::db(|| st.store.latest_install(&name))?;
    Ok(Json(views::machine(&m, latest.as_ref())))
}

/// `PUT /api/v1/machines/{name}/disk`: the machine's disk hints replaced by the body (`{}`
/// clears them: the disk comes from `diskGroupId` again).
pub async fn set_disk_hints(
    State(st): State<Shared>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let hints: DiskHints = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "disk hints must be a JSON object with serial, wwn, model, minSize, maxSize, byPath, \
             name, transport, rotational, allowRemovable: {e}"
        ))
    })?;
    check_hints(&hints)?;
    let m = crate::http::db(|| st.store.set_disk_hints(&name, &hints))?;
    tracing::info!(machine = %name, disk = %m.disk_hints.describe(), "disk hints set");
    let latest = crate::http::db(|| st.store.latest_install(&name))?;
    Ok(Json(views::machine(&m, latest.as_ref())))
}

/// `PUT /api/v1/machines/{name}/hook-timeout` with `{"hookTimeout": "45m"}` (null: back to
/// the server's).
pub async fn set_hook_timeout(
    State(st): State<Shared>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[serde(rename = "hookTimeout")]
        hook_timeout: Option<String>,
    }
    let b: Body = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "body must be {{\"hookTimeout\": \"45m\"}} (or null for the server's): {e}"
        ))
    })?;
    let secs = check_hook_timeout(b.hook_timeout.as_deref())?;
    let m = crate::http::db(|| st.store.set_hook_timeout(&name, secs))?;
    tracing::info!(machine = %name, hook_timeout = ?secs, "hook timeout set");
    let latest = crate::http::db(|| st.store.latest_install(&name))?;
    Ok(Json(views::machine(&m, latest.as_ref())))
}

pub async fn delete_machine(
    State(st): State<Shared>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    crate::http::db(|| st.store.delete_machine(&name))?;
    tracing::info!(machine = %name, "machine deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Body: the OVH install body, exactly as for `/dedicated/server/{name}/install/start`.
pub async fn start_install(
    State(st): State<Shared>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let i = crate::ovh::start(&st, &name, &body)?;
    // with a BMC, the machine is started now: network boot once, power on or reset
    let next = crate::power::start_machine(&st, &name, &i.id);
    let mut v = views::install(&i);
    v["next"] = json!(next);
    Ok((StatusCode::CREATED, Json(v)))
}

pub async fn machine_installs(
    State(st): State<Shared>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    crate::http::db(|| st.store.machine(&name))?;
    let v: Vec<_> = st
        .store
        .installs_of(&name)?
        .iter()
        .map(views::install)
        .collect();
    Ok(Json(json!({ "installs": v })))
}

pub async fn get_install(
    State(st): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(views::install(&crate::http::db(|| {
        st.store.install(&id)
    })?)))
}

pub async fn cancel_install(
    State(st): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let i = crate::http::db(|| st.store.cancel_install(&id))?;
    tracing::info!(install = %id, machine = %i.machine, "install cancelled");
    Ok(Json(views::install(&i)))
}

#[derive(Deserialize)]
pub struct After {
    #[serde(default)]
    after: i64,
}

pub async fn install_events(
    State(st): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<After>,
) -> ApiResult<Json<Value>> {
    let i = crate::http::db(|| st.store.install(&id))?;
    let events = crate::http::db(|| st.store.events(&id, q.after))?;
    Ok(Json(json!({ "state": i.state.as_str(), "events": events })))
}
