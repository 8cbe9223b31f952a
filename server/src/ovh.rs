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
    Ok(Json(task_of(&i, &service)))
}

/// `POST /dedicated/server/{serviceName}/reinstall`: OVH's newer body (`operatingSystem`,
/// `customizations`, `storage`, `properties`), answered like `install/start`.
pub async fn reinstall(
    State(st): State<Shared>,
    Path(service): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let m = crate::http::db(|| st.store.machine(&service))?;
    let r: Reinstall = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid: {e}")))?;
    let legacy = r.legacy()?;
    let mut spec = validate(&st, &service, &legacy)?;
    if spec.storage.is_some() && !r.storage.is_empty() {
        let lookup = |name: &str| st.store.scheme(name).ok().map(|s| s.layout);
        if let Some(l) = byol_spec::storage::validate(&r.storage, lookup)? {
            let scheme = r.storage[0]
                .partitioning
                .as_ref()
                .and_then(|p| match (&p.layout, &p.scheme_name) {
                    (Some(_), _) => Some("custom".to_string()),
                    (None, n) => n.clone(),
                })
                .unwrap_or_else(|| "default".into());
            spec.disk_group_id = l.disk_group_id;
            spec.partition_scheme = scheme.clone();
            spec.storage = Some(byol_spec::request::StorageSpec {
                scheme,
                disk_group_id: l.disk_group_id,
                disks: l.disks,
                layout: l.rows.iter().map(byol_spec::request::row_spec).collect(),
            });
        }
    }
    let i = create(&st, &service, &m, &spec)?;
    Ok(Json(task_of(&i, &service)))
}

/// OVH's `reinstall` body.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Reinstall {
    operating_system: String,
    #[serde(default)]
    customizations: serde_json::Map<String, Value>,
    #[serde(default)]
    storage: Vec<byol_spec::storage::Storage>,
    #[serde(default)]
    properties: serde_json::Map<String, Value>,
}

impl Reinstall {
    /// The same install in the legacy body's words (one set of checks for both).
    fn legacy(&self) -> ApiResult<InstallRequest> {
        let mut md = Vec::new();
        let text = |k: &str, v: &Value| -> ApiResult<String> {
            match v {
                Value::String(s) => Ok(s.clone()),
                Value::Object(_) if k == "configDriveMetadata" => Ok(v.to_string()),
                Value::Number(n) => Ok(n.to_string()),
                _ => Err(ApiError::bad_request(format!(
                    "customizations.{k} must be a string"
                ))),
            }
        };
        let mut hostname = None;
        for (k, v) in &self.customizations {
            match k.as_str() {
                "hostname" => hostname = Some(text(k, v)?),
                "httpHeaders" => {
                    let Value::Object(h) = v else {
                        return Err(ApiError::bad_request(
                            "customizations.httpHeaders is an object of header names to values",
                        ));
                    };
                    for (n, (name, value)) in h.iter().enumerate() {
                        md.push(meta(&format!("httpHeaders{n}Key"), name.clone()));
                        md.push(meta(&format!("httpHeaders{n}Value"), text(name, value)?));
                    }
                }
                "imageURL"
                | "imageType"
                | "imageCheckSum"
                | "imageCheckSumType"
                | "configDriveUserData"
                | "configDriveMetadata"
                | "sshKey"
                | "hookTimeout" => md.push(meta(k, text(k, v)?)),
                "efiBootloaderPath"
                | "language"
                | "postInstallationScriptLink"
                | "postInstallationScriptReturn" => {}
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown customizations key `{}`",
                        byol_spec::escape_control(&other.chars().take(64).collect::<String>())
                    )));
                }
            }
        }
        if !self.properties.is_empty() && !md.iter().any(|m| m.key == "configDriveMetadata") {
            md.push(meta(
                "configDriveMetadata",
                Value::Object(self.properties.clone()).to_string(),
            ));
        }
        let scheme = self
            .storage
            .first()
            .and_then(|s| s.partitioning.as_ref())
            .and_then(|p| p.layout.is_none().then(|| p.scheme_name.clone()).flatten());
        Ok(InstallRequest {
            template_name: self.operating_system.clone(),
            partition_scheme_name: scheme,
            details: byol_spec::request::Details {
                custom_hostname: hostname,
                disk_group_id: self
                    .storage
                    .first()
                    .and_then(|s| s.disk_group_id)
                    .map(Value::from),
            },
            user_metadata: md,
        })
    }
}

fn meta(key: &str, value: String) -> byol_spec::MetadataEntry {
    byol_spec::MetadataEntry {
        key: key.to_string(),
        value,
    }
}

/// OVH's task object for a started install.
fn task_of(i: &Install, service: &str) -> Value {
    json!({
        "taskId": i.id,
        "function": "reinstallServer",
        "status": "init",
        "comment": format!("Start BYOLinux installation of {service}"),
        "startDate": iso(i.created_at),
        "lastUpdate": iso(i.updated_at),
        "doneDate": null,
    })
}

/// Validates the OVH body and creates the pending install (shared with the native API).
pub fn start(st: &Shared, machine: &str, body: &[u8]) -> ApiResult<Install> {
    // The machine is checked first: a request for an unknown machine is wrong whatever it holds.
    let m = crate::http::db(|| st.store.machine(machine))?;
    let req: InstallRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::from(byol_spec::SpecError::BadJson(e.to_string())))?;
    let spec = validate(st, machine, &req)?;
    create(st, machine, &m, &spec)
}

/// The legacy body checked, its `partitionSchemeName` (else the machine's default scheme)
/// found among the stored schemes.
fn validate(st: &Shared, machine: &str, req: &InstallRequest) -> ApiResult<byol_spec::InstallSpec> {
    let mut req = req.clone();
    if req.partition_scheme_name.is_none() {
        req.partition_scheme_name = Some(crate::http::db(|| st.store.machine_scheme(machine))?);
    }
    let lookup = |name: &str| st.store.scheme(name).ok().map(|s| s.layout);
    req.validate_with(&lookup).map_err(|e| match e {
        byol_spec::SpecError::UnknownPartitionScheme(name) => {
            ApiError::from(byol_spec::storage::OvhError::new(
                "Client::NotFound::SchemeName",
                format!(
                    "Partition scheme {name} not found for operating system {}",
                    req.template_name
                ),
            ))
        }
        e => e.into(),
    })
}

fn create(
    st: &Shared,
    machine: &str,
    m: &crate::store::Machine,
    spec: &byol_spec::InstallSpec,
) -> ApiResult<Install> {
    let spec = spec.clone();
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
