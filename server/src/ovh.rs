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
    let i = start_as(&st, &service, &body, true)?;
    // with a BMC, the machine is started now: network boot once, power on or reset
    crate::power::start_machine(&st, &service, &i.id);
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
    let i = create(&st, &service, &m, &spec, true)?;
    crate::power::start_machine(&st, &service, &i.id);
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
                | "efiBootloaderPath"
                | "hookTimeout" => md.push(meta(k, text(k, v)?)),
                "language" | "postInstallationScriptLink" | "postInstallationScriptReturn" => {}
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

/// OVH's task status of an install: `init` (waiting for the machine), `doing`, `done`,
/// `customerError` (the request's image, layout, user data or hook failed: the guide's
/// errors), `ovhError` (byol's own side failed: the machine's boot, drivers, network, the
/// agent, or no answer in time), `cancelled`.
pub fn task_status(i: &Install) -> &'static str {
    match i.state {
        InstallState::Pending => "init",
        InstallState::Installing => "doing",
        InstallState::Done => "done",
        InstallState::Cancelled => "cancelled",
        InstallState::Failed => {
            let customers = i
                .phase
                .as_deref()
                .and_then(byol_spec::Phase::parse)
                .is_some_and(byol_spec::Phase::is_customers);
            if customers {
                "customerError"
            } else {
                "ovhError"
            }
        }
    }
}

/// OVH's task object for an install.
pub fn task_of(i: &Install, service: &str) -> Value {
    let comment = match (i.state, &i.error) {
        (InstallState::Failed, Some(e)) => e.clone(),
        (InstallState::Cancelled, _) => "Installation cancelled".to_string(),
        (InstallState::Done, _) => format!("BYOLinux installation of {service} done"),
        _ => format!("Start BYOLinux installation of {service}"),
    };
    json!({
        "taskId": i.task_id,
        "function": "reinstallServer",
        "status": task_status(i),
        "comment": comment,
        "startDate": iso(i.created_at),
        "lastUpdate": iso(i.updated_at),
        "doneDate": i.ended_at.map(iso),
    })
}

#[derive(Debug, serde::Deserialize)]
pub struct TaskFilter {
    function: Option<String>,
    status: Option<String>,
}

/// `GET /dedicated/server/{sn}/task`: the task ids, newest first (filters `function`, `status`).
pub async fn tasks(
    State(st): State<Shared>,
    Path(service): Path<String>,
    axum::extract::Query(f): axum::extract::Query<TaskFilter>,
) -> ApiResult<Json<Value>> {
    crate::http::db(|| st.store.machine(&service))?;
    if let Some(s) = &f.status
        && !TASK_STATUSES.contains(&s.as_str())
    {
        return Err(ApiError::bad_request(format!(
            "Invalid value for status: `{}` is not one of {}",
            byol_spec::escape_control(s),
            TASK_STATUSES.join(", ")
        )));
    }
    let installs = crate::http::db(|| st.store.installs_of(&service))?;
    let ids: Vec<i64> = installs
        .iter()
        .filter(|_| f.function.as_deref().is_none_or(|x| x == "reinstallServer"))
        .filter(|i| f.status.as_deref().is_none_or(|x| x == task_status(i)))
        .map(|i| i.task_id)
        .collect();
    Ok(Json(json!(ids)))
}

const TASK_STATUSES: [&str; 6] = [
    "init",
    "doing",
    "done",
    "customerError",
    "ovhError",
    "cancelled",
];

/// `GET /dedicated/server/{sn}/task/{taskId}`.
pub async fn task(
    State(st): State<Shared>,
    Path((service, task_id)): Path<(String, i64)>,
) -> ApiResult<Json<Value>> {
    crate::http::db(|| st.store.machine(&service))?;
    let i = crate::http::db(|| st.store.install_by_task(&service, task_id))?;
    Ok(Json(task_of(&i, &service)))
}

/// `POST /dedicated/server/{sn}/task/{taskId}/cancel`: stops an install that has not ended
/// (the machine's agent learns it at its next event and stops without leaving a bootable
/// half-written disk).
pub async fn cancel_task(
    State(st): State<Shared>,
    Path((service, task_id)): Path<(String, i64)>,
) -> ApiResult<Json<Value>> {
    crate::http::db(|| st.store.machine(&service))?;
    let i = crate::http::db(|| st.store.install_by_task(&service, task_id))?;
    if !i.state.is_active() {
        return Err(ApiError::from(byol_spec::storage::OvhError::new(
            "Client::BadRequest::TaskNotCancellable",
            format!(
                "Task {task_id} of type reinstallServer with status {} cannot be cancelled",
                task_status(&i)
            ),
        )));
    }
    let i = crate::http::db(|| st.store.cancel_install(&i.id))?;
    tracing::info!(machine = %service, install = %i.id, task = task_id, "install cancelled (OVH task)");
    Ok(Json(Value::Null))
}

/// `GET /dedicated/server/{sn}/specifications/hardware`: OVH's hardware object from what the
/// machine's agent last found (`bootMode` null and no disk groups before its first boot).
pub async fn hardware(
    State(st): State<Shared>,
    Path(service): Path<String>,
) -> ApiResult<Json<Value>> {
    let inv = crate::http::db(|| st.store.inventory(&service))?;
    let (boot_mode, groups, at) = match &inv {
        Some((i, at)) => (
            Some(i.boot_mode.clone()),
            i.disk_groups.clone(),
            Some(iso(*at)),
        ),
        None => (None, Vec::new(), None),
    };
    let groups: Vec<Value> = groups
        .iter()
        .map(|g| {
            // OVH gives sizes in GB (10^9 bytes), whole
            let gb = g.disk_size_bytes / 1_000_000_000;
            json!({
                "diskGroupId": g.disk_group_id,
                "numberOfDisks": g.number_of_disks,
                "diskSize": {"unit": "GB", "value": gb},
                "diskType": g.disk_type,
                "raidController": null,
                "defaultHardwareRaidType": null,
                "defaultHardwareRaidSize": null,
                "description": format!("{} x {gb} GB {} ({})", g.number_of_disks, g.disk_type, g.transport),
            })
        })
        .collect();
    Ok(Json(json!({
        "bootMode": boot_mode,
        "defaultDiskGroupId": if groups.is_empty() { Value::Null } else { json!(1) },
        "diskGroups": groups,
        "inventoryDate": at,
    })))
}

/// `GET /dedicated/server/{sn}/install/compatibleTemplates`.
pub async fn compatible_templates(
    State(st): State<Shared>,
    Path(service): Path<String>,
) -> ApiResult<Json<Value>> {
    crate::http::db(|| st.store.machine(&service))?;
    Ok(Json(json!({
        "ovh": byol_spec::request::TEMPLATES,
        "personal": [],
    })))
}

/// `GET /dedicated/installationTemplate/{templateName}`: what the template takes.
pub async fn installation_template(Path(name): Path<String>) -> ApiResult<Json<Value>> {
    use byol_spec::request::{TEMPLATE_BYOI, TEMPLATE_NAME};
    let input = |name: &str, kind: &str, mandatory: bool, description: &str| {
        json!({"name": name, "type": kind, "mandatory": mandatory, "description": description,
               "default": null, "enum": []})
    };
    let mut inputs = vec![
        input(
            "imageURL",
            "string",
            true,
            "Your image's URL (http or https; qcow2 or raw)",
        ),
        input(
            "imageType",
            "enum",
            false,
            "qcow2 or raw (default: found from the image)",
        ),
        input("imageCheckSum", "string", false, "Your image's checksum"),
        input(
            "imageCheckSumType",
            "enum",
            false,
            "md5, sha1, sha256 or sha512",
        ),
        input(
            "httpHeaders",
            "keyValue",
            false,
            "HTTP headers sent with the image download",
        ),
        input(
            "configDriveUserData",
            "text",
            false,
            "cloud-init user data (#cloud-config or a script; base64 accepted)",
        ),
        input(
            "configDriveMetadata",
            "keyValue",
            false,
            "cloud-init metadata (meta_data.json `meta`)",
        ),
        input(
            "sshKey",
            "string",
            false,
            "An SSH public key for the config drive",
        ),
        input(
            "hostname",
            "string",
            false,
            "The installed system's host name",
        ),
        input(
            "efiBootloaderPath",
            "string",
            false,
            "The UEFI loader on the ESP the boot entry starts (e.g. \\efi\\debian\\grubx64.efi)",
        ),
    ];
    let (description, lvm, filesystems): (&str, bool, Vec<&str>) = match name.as_str() {
        TEMPLATE_NAME => (
            "Bring Your Own Linux: your image's files in a storage layout (software RAID, LVM)",
            true,
            vec!["btrfs", "ext4", "swap", "xfs"],
        ),
        TEMPLATE_BYOI => {
            inputs.retain(|i| i["name"] != "efiBootloaderPath");
            (
                "Bring Your Own Image: your image written to one disk",
                false,
                vec![],
            )
        }
        other => {
            return Err(ApiError::from(byol_spec::storage::OvhError::new(
                "Client::NotFound::OperatingSystem",
                format!(
                    "Operating system {} could not be found",
                    byol_spec::escape_control(&other.chars().take(64).collect::<String>())
                ),
            )));
        }
    };
    Ok(Json(json!({
        "templateName": name,
        "description": description,
        "family": "linux",
        "distribution": "byolinux",
        "bitFormat": 64,
        "category": "personal",
        "lvmReady": lvm,
        "softRaidOnlyMirroring": false,
        "filesystems": filesystems,
        "inputs": inputs,
        "hardRaidConfiguration": false,
        "noPartitioning": !lvm,
    })))
}

/// `GET /dedicated/server`: the machines' names.
pub async fn servers(State(st): State<Shared>) -> ApiResult<Json<Value>> {
    let ms = crate::http::db(|| st.store.machines())?;
    Ok(Json(json!(ms.iter().map(|m| &m.name).collect::<Vec<_>>())))
}

/// `GET /dedicated/server/{sn}`: OVH's server object, with what byol knows.
pub async fn server(
    State(st): State<Shared>,
    Path(service): Path<String>,
) -> ApiResult<Json<Value>> {
    let m = crate::http::db(|| st.store.machine(&service))?;
    let latest = crate::http::db(|| st.store.latest_install(&service))?;
    let last_done = crate::http::db(|| st.store.installs_of(&service))?
        .into_iter()
        .find(|i| i.state == InstallState::Done);
    let state = match latest.as_ref().map(|i| i.state) {
        Some(InstallState::Pending | InstallState::Installing) => "installing",
        Some(InstallState::Failed) => "error",
        _ => "ok",
    };
    Ok(Json(json!({
        "name": m.name,
        "serverId": m.created_at,
        "state": state,
        "os": latest.as_ref().map(|i| i.spec.template.clone()),
        // what the machine network-boots into now: its disk, or byol's installer
        "bootId": boot_of(latest.as_ref()).0,
        // what the last finished install set (OVH's server keeps the reinstall's value)
        "efiBootloaderPath": last_done.and_then(|i| i.spec.efi_bootloader_path),
        "macs": m.macs,
        "linkSpeed": null,
        "monitoring": false,
        "datacenter": "byol",
        "rack": null,
        "ip": null,
        "reverse": null,
        "professionalUse": false,
        "supportLevel": "byol",
    })))
}

/// OVH's netboots as byol has them: 1 the machine's own disk, 2 byol's installer.
const BOOTS: [(i64, &str, &str); 2] = [
    (1, "harddisk", "Boot from the server's disk"),
    (
        2,
        "internal",
        "byol installer (an install is pending or running)",
    ),
];

/// The boot a machine gets now (`bootId`, bootType): the installer while an install is active.
fn boot_of(latest: Option<&Install>) -> (i64, &'static str) {
    let b = match latest.map(|i| i.state) {
        Some(InstallState::Pending | InstallState::Installing) => BOOTS[1],
        _ => BOOTS[0],
    };
    (b.0, b.1)
}

/// `GET /dedicated/server/{sn}/boot`: the boot ids (`bootType` filter: harddisk, internal).
pub async fn boots(
    State(st): State<Shared>,
    Path(service): Path<String>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    crate::http::db(|| st.store.machine(&service))?;
    let ids: Vec<i64> = BOOTS
        .iter()
        .filter(|b| q.get("bootType").is_none_or(|t| t == b.1))
        .map(|b| b.0)
        .collect();
    Ok(Json(json!(ids)))
}

/// `GET /dedicated/server/{sn}/boot/{bootId}`.
pub async fn boot(
    State(st): State<Shared>,
    Path((service, id)): Path<(String, i64)>,
) -> ApiResult<Json<Value>> {
    crate::http::db(|| st.store.machine(&service))?;
    let Some(b) = BOOTS.iter().find(|b| b.0 == id) else {
        return Err(ApiError::from(byol_spec::storage::OvhError::new(
            "Client::NotFound",
            format!("The requested object (bootId = {id}) does not exist"),
        )));
    };
    Ok(Json(
        json!({"bootId": b.0, "bootType": b.1, "description": b.2, "kernel": if b.0 == 1 { "" } else { "byol" }}),
    ))
}

/// Validates the OVH body and creates the pending install (shared with the native API).
pub fn start(st: &Shared, machine: &str, body: &[u8]) -> ApiResult<Install> {
    start_as(st, machine, body, false)
}

fn start_as(st: &Shared, machine: &str, body: &[u8], ovh: bool) -> ApiResult<Install> {
    // The machine is checked first: a request for an unknown machine is wrong whatever it holds.
    let m = crate::http::db(|| st.store.machine(machine))?;
    let req: InstallRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::from(byol_spec::SpecError::BadJson(e.to_string())))?;
    let spec = validate(st, machine, &req)?;
    create(st, machine, &m, &spec, ovh)
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
        byol_spec::SpecError::UnknownTemplate(t) => {
            ApiError::from(byol_spec::storage::OvhError::new(
                "Client::NotFound::OperatingSystem",
                format!(
                    "Operating system {} could not be found: byol installs byolinux_64 (the \
                     image's files in a storage layout) and byoi_64 (the image written to one \
                     disk)",
                    byol_spec::escape_control(&t.chars().take(64).collect::<String>())
                ),
            ))
        }
        byol_spec::SpecError::BadHostname(h) => ApiError::from(hostname_error(&h)),
        e => e.into(),
    })
}

/// OVH's two hostname errors: too long as a whole, or a label that is not one.
fn hostname_error(h: &str) -> byol_spec::storage::OvhError {
    const LIMIT: usize = 253;
    let shown =
        |s: &str| byol_spec::escape_control(&s.chars().take(80).collect::<String>()).into_owned();
    if h.len() > LIMIT {
        return byol_spec::storage::OvhError::new(
            "Client::BadRequest::HostnameSizeExceeded",
            format!(
                "Hostname provided is {} length. It shall not be longer than {LIMIT} characters, \
                 see RFC 1035, section 2.3.4",
                h.len()
            ),
        );
    }
    let good = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let label = h.split('.').find(|l| !good(l)).unwrap_or(h);
    byol_spec::storage::OvhError::new(
        "Client::BadRequest::HostnameInvalidFormat",
        format!(
            "Invalid hostname {}; must contain no more than 63 characters, start with a letter, \
             end with a letter or a digit and contain only letters, digits and hyphens, see \
             RFC 1035, section 2.3.1",
            shown(label)
        ),
    )
}

/// Creates the install; `ovh`: a machine with one running answers OVH's
/// `TaskAlreadyExists` (the native API's answer is a 409).
fn create(
    st: &Shared,
    machine: &str,
    m: &crate::store::Machine,
    spec: &byol_spec::InstallSpec,
    ovh: bool,
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
    let i = match crate::http::db(|| st.store.create_install(machine, &spec)) {
        Ok(i) => i,
        Err(crate::store::StoreError::Busy { .. }) if ovh => {
            let running = crate::http::db(|| st.store.latest_install(machine))?;
            let (task, status) = running
                .as_ref()
                .map_or((0, "doing"), |r| (r.task_id, task_status(r)));
            return Err(ApiError::from(byol_spec::storage::OvhError::new(
                "Client::BadRequest::TaskAlreadyExists",
                format!(
                    "Task {task} of type reinstallServer with status {status} is already running \
                     on server {machine}"
                ),
            )));
        }
        Err(e) => return Err(e.into()),
    };
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
    if i.state == InstallState::Pending && steps.iter().all(|s| s.0 == "power") {
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
    match phase {
        // the server's own step: the BMC starts the machine
        "power" => "Rebooting the server on the installer (BMC: network boot, power)".into(),
        _ => byol_spec::Phase::parse(phase)
            .map_or_else(|| phase.to_string(), |p| p.ovh_comment().into()),
    }
}
