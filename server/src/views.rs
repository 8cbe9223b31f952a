//! views: the JSON shapes the API answers with. Secrets are never in them: the install's spec
//! is shown through `InstallSpec::redacted`, tokens only as "set"/"not set".

use serde_json::{Value, json};

use crate::store::{Install, Machine};

/// RFC 3339 UTC time from milliseconds since the epoch.
pub fn iso(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub fn install(i: &Install) -> Value {
    json!({
        "id": i.id,
        "machine": i.machine,
        "state": i.state.as_str(),
        "phase": i.phase,
        "bytesDone": i.bytes_done,
        "bytesTotal": i.bytes_total,
        "error": i.error,
        "createdAt": iso(i.created_at),
        "updatedAt": iso(i.updated_at),
        "endedAt": i.ended_at.map(iso),
        // an agent holds the install (it fetched the config) and may still report
        "agentToken": if i.state.is_active() && i.token_hash.is_some() { "issued" } else { "none" },
        "spec": i.spec.redacted(),
    })
}

pub fn machine(m: &Machine, latest: Option<&Install>) -> Value {
    json!({
        "name": m.name,
        "macs": m.macs,
        "createdAt": iso(m.created_at),
        "disk": m.disk_hints,
        "hookTimeout": m.hook_timeout_seconds.map(byol_spec::format_duration),
        "scheme": m.scheme,
        "install": latest.map(|i| json!({
            "id": i.id,
            "state": i.state.as_str(),
            "phase": i.phase,
            "createdAt": iso(i.created_at),
        })),
    })
}
