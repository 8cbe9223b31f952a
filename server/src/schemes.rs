//! schemes: named storage layouts under `/api/v1/schemes` (admin token) — add or replace
//! (`PUT`, the rows checked with OVH's classes and messages first), list, show, delete — and a
//! machine's default scheme (`PUT /api/v1/machines/{name}/scheme`). `default` is byol's built-in
//! scheme, OVH's default layout: listed and shown, never stored or replaced.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use byol_spec::storage::{PartitionSpec, default_layout, validate_layout};

use crate::http::{ApiError, ApiResult, Shared, db};
use crate::store::{DEFAULT_SCHEME, Scheme};

/// Scheme names: like machine names, 1-64 of letters, digits, '.', '_', '-'.
fn check_name(name: &str) -> ApiResult<()> {
    crate::api::check_machine_name(name).map_err(|_| {
        ApiError::bad_request(format!(
            "scheme name `{}` is not valid: use 1-64 letters, digits, '.', '_' or '-'",
            byol_spec::escape_control(&name.chars().take(80).collect::<String>())
        ))
    })
}

pub use byol_spec::request::row_spec;

fn view(s: &Scheme) -> Value {
    json!({
        "name": s.name,
        "builtIn": false,
        "layout": s.layout,
        "createdAt": s.created_at,
        "updatedAt": s.updated_at,
    })
}

fn builtin() -> Value {
    let layout: Vec<PartitionSpec> = default_layout().iter().map(row_spec).collect();
    json!({"name": DEFAULT_SCHEME, "builtIn": true, "layout": layout})
}

/// The rows of a body: `{"layout": [...]}` (OVH's `partitioning` object) or the bare array.
fn rows_of(body: &[u8]) -> ApiResult<Vec<PartitionSpec>> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "a scheme is {{\"layout\": [{{\"mountPoint\": \"/\", \"fileSystem\": \"ext4\", \
             \"size\": 0}}, …]}}: {e}"
        ))
    })?;
    let rows = match v {
        Value::Object(mut o) => o.remove("layout").unwrap_or(Value::Null),
        other => other,
    };
    serde_json::from_value(rows).map_err(|e| {
        ApiError::bad_request(format!(
            "a scheme's layout is an array of rows with mountPoint, fileSystem, size (MiB, 0 \
             fills the rest), raidLevel and extras.lv.name: {e}"
        ))
    })
}

pub async fn put_scheme(
    State(st): State<Shared>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    check_name(&name)?;
    let rows = rows_of(&body)?;
    validate_layout(&rows, 1)?;
    let (s, created) = db(|| st.store.put_scheme(&name, &rows))?;
    tracing::info!(scheme = %name, rows = rows.len(), created, "scheme stored");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view(&s))))
}

pub async fn list_schemes(State(st): State<Shared>) -> ApiResult<Json<Value>> {
    let stored = db(|| st.store.schemes())?;
    let mut all = vec![builtin()];
    all.extend(stored.iter().map(view));
    Ok(Json(json!({ "schemes": all })))
}

pub async fn get_scheme(
    State(st): State<Shared>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    if name == DEFAULT_SCHEME {
        return Ok(Json(builtin()));
    }
    Ok(Json(view(&db(|| st.store.scheme(&name))?)))
}

pub async fn delete_scheme(
    State(st): State<Shared>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    if name == DEFAULT_SCHEME {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "`default` is byol's built-in scheme (OVH's default layout) and cannot be deleted",
        ));
    }
    db(|| st.store.delete_scheme(&name))?;
    tracing::info!(scheme = %name, "scheme deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `{"scheme": "NAME"}`: the scheme the machine installs when a request names none.
pub async fn set_machine_scheme(
    State(st): State<Shared>,
    Path(machine): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let v: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("body must be {{\"scheme\": \"NAME\"}}: {e}"))
    })?;
    let Some(scheme) = v["scheme"].as_str() else {
        return Err(ApiError::bad_request(
            "body must be {\"scheme\": \"NAME\"} (`default` for OVH's default layout)",
        ));
    };
    db(|| st.store.set_machine_scheme(&machine, scheme))?;
    Ok(Json(json!({"machine": machine, "scheme": scheme})))
}
