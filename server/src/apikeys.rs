//! apikeys: the endpoints around OVH-style keys. Open (no signature, as OVH's): `GET
//! /auth/time`, `POST /auth/credential` (an application asks for a consumer key with access
//! rules; it waits for an operator), `GET /auth/validate/{id}` (what the `validationUrl`
//! shows). Operators' (admin token or a signed request): `POST /api/v1/api-keys` (an
//! application and a validated consumer key for every call, secrets shown once),
//! `GET /api/v1/api-keys` (no secrets), `DELETE /api/v1/api-keys/{name}` (revoke),
//! `POST /api/v1/credentials/{id}/validate`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::{Value, json};

use crate::http::{ApiError, ApiResult, Shared, blocking};
use crate::ovhauth::{Refused, random_key};
use crate::store::{AccessRule, CredentialState};
use crate::views::iso;

/// The server's clock, seconds since 1970 (the clients correct their timestamps with it).
pub async fn time() -> Json<i64> {
    Json(crate::store::now_ms() / 1000)
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CredentialRequest {
    access_rules: Vec<AccessRule>,
    #[serde(default)]
    redirection: Option<String>,
    #[serde(default)]
    allowed_ips: Option<Value>,
}

const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];

/// Consumer keys of one application waiting for an operator, at most.
pub const MAX_PENDING: i64 = 20;

fn check_rules(rules: &[AccessRule]) -> Result<(), String> {
    if rules.is_empty() || rules.len() > 100 {
        return Err(format!(
            "accessRules holds {} rules: give 1 to 100, e.g. {{\"method\": \"GET\", \"path\": \"/*\"}}",
            rules.len()
        ));
    }
    for (i, r) in rules.iter().enumerate() {
        if !METHODS.contains(&r.method.as_str()) {
            return Err(format!(
                "accessRules[{i}].method `{}` is not one of GET, POST, PUT, DELETE",
                byol_spec::escape_control(&r.method)
            ));
        }
        if !r.path.starts_with('/') || r.path.len() > 512 || r.path.chars().any(char::is_control) {
            return Err(format!(
                "accessRules[{i}].path must start with `/` (at most 512 characters, `*` for any run)"
            ));
        }
    }
    Ok(())
}

/// `POST /auth/credential`: a pending consumer key for an application.
pub async fn request_credential(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match credential(&st, &headers, &body) {
        Ok(v) => Json(v).into_response(),
        Err(r) => r.into_response(),
    }
}

fn credential(st: &Shared, headers: &HeaderMap, body: &[u8]) -> Result<Value, Refused> {
    let app_key = headers
        .get("x-ovh-application")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let refused = |status, code, msg: String| Refused {
        status,
        code,
        message: msg,
    };
    let app = crate::http::db(|| st.store.app(app_key))
        .ok()
        .flatten()
        .filter(|a| a.revoked_at.is_none())
        .ok_or_else(|| {
            refused(
                StatusCode::FORBIDDEN,
                "INVALID_KEY",
                "Invalid application key: send X-Ovh-Application (byol api-key create NAME makes one)"
                    .into(),
            )
        })?;
    let req: CredentialRequest = serde_json::from_slice(body).map_err(|e| {
        refused(
            StatusCode::BAD_REQUEST,
            "INVALID_BODY",
            format!("request body is not valid: {e}"),
        )
    })?;
    let _ = (&req.redirection, &req.allowed_ips);
    check_rules(&req.access_rules)
        .map_err(|m| refused(StatusCode::BAD_REQUEST, "INVALID_BODY", m))?;
    // the endpoint is open: whoever holds an application key could fill the store
    let pending = crate::http::db(|| st.store.pending_credentials(&app.app_key)).unwrap_or(0);
    if pending >= MAX_PENDING {
        return Err(refused(
            StatusCode::TOO_MANY_REQUESTS,
            "TOO_MANY_PENDING",
            format!(
                "application {} has {pending} consumer keys waiting for an operator (at most \
                 {MAX_PENDING}): validate them (byol api-key validate ID) or revoke the key",
                app.name
            ),
        ));
    }
    let ck = random_key(32);
    let cred = crate::http::db(|| {
        st.store.add_credential(
            &app.app_key,
            &crate::auth::hash_token(&ck),
            &req.access_rules,
            CredentialState::PendingValidation,
        )
    })
    .map_err(|e| {
        tracing::error!(error = %e, "store failure while adding a credential");
        refused(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "internal error in the server's store: see the server log".into(),
        )
    })?;
    tracing::info!(app = %app.name, credential = cred.credential_id, "consumer key requested");
    let base = base_of(st, headers);
    Ok(json!({
        "validationUrl": format!("{base}/auth/validate/{}", cred.credential_id),
        "consumerKey": ck,
        "state": "pendingValidation",
    }))
}

/// Where the client reached us: `--public-url`, or the Host header.
fn base_of(st: &Shared, headers: &HeaderMap) -> String {
    if let Some(u) = &st.cfg.public_url {
        return u.trim_end_matches('/').to_string();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let scheme = if st.cfg.tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{host}")
}

/// `GET /auth/validate/{id}`: what a pending credential asks for, and how an operator grants it.
pub async fn validation_page(State(st): State<Shared>, Path(id): Path<i64>) -> Response {
    let Ok(cred) = crate::http::db(|| st.store.credential(id)) else {
        return (
            StatusCode::NOT_FOUND,
            Html("<!doctype html><title>byol</title><p>No such credential.</p>\n".to_string()),
        )
            .into_response();
    };
    let rules: Vec<String> = cred
        .rules
        .iter()
        .map(|r| format!("<li><code>{} {}</code></li>", esc(&r.method), esc(&r.path)))
        .collect();
    let state = match cred.state {
        CredentialState::PendingValidation => "waits for an operator",
        CredentialState::Validated => "is validated",
        CredentialState::Revoked => "is revoked",
    };
    Html(format!(
        "<!doctype html><html lang=en><meta charset=utf-8><title>byol: credential {id}</title>\
         <h1>Credential {id}</h1><p>This consumer key {state}. It asks for:</p><ul>{}</ul>\
         <p>An operator validates it with <code>byol api-key validate {id}</code>.</p></html>\n",
        rules.join("")
    ))
    .into_response()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    name: String,
}

/// `POST /api/v1/api-keys`: `{applicationKey, applicationSecret, consumerKey}`, shown once.
pub async fn create(State(st): State<Shared>, body: Bytes) -> ApiResult<(StatusCode, Json<Value>)> {
    let k: NewKey = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid: {e}")))?;
    let name = k.name.trim().to_string();
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(ApiError::bad_request(
            "an API key's name is 1 to 64 letters, digits, `-`, `_` or `.`",
        ));
    }
    let st2 = st.clone();
    let n = name.clone();
    let (ak, secret, ck) =
        blocking(move || crate::ovhauth::create_key(&st2, &n, &AccessRule::all())).await?;
    tracing::info!(name = %name, application_key = %ak, "API key created (secrets not logged)");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "name": name,
            "applicationKey": ak,
            "applicationSecret": secret,
            "consumerKey": ck,
        })),
    ))
}

/// `GET /api/v1/api-keys`: applications and their credentials, no secret.
pub async fn list(State(st): State<Shared>) -> ApiResult<Json<Value>> {
    let st2 = st.clone();
    let apps = blocking(move || st2.store.apps()).await?;
    Ok(Json(Value::Array(
        apps.into_iter()
            .map(|(a, creds)| {
                json!({
                    "name": a.name,
                    "applicationKey": a.app_key,
                    "createdAt": iso(a.created_at),
                    "revokedAt": a.revoked_at.map(iso),
                    "credentials": creds.iter().map(|c| json!({
                        "credentialId": c.credential_id,
                        "status": c.state,
                        "rules": c.rules,
                        "creation": iso(c.created_at),
                        "validatedAt": c.validated_at.map(iso),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )))
}

/// `DELETE /api/v1/api-keys/{name}`: the application and all its consumer keys stop working.
pub async fn revoke(State(st): State<Shared>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let st2 = st.clone();
    let a = blocking(move || st2.store.revoke_app(&name)).await?;
    tracing::info!(name = %a.name, application_key = %a.app_key, "API key revoked");
    Ok(Json(
        json!({"name": a.name, "applicationKey": a.app_key, "revokedAt": a.revoked_at.map(iso)}),
    ))
}

/// `POST /api/v1/credentials/{id}/validate`.
pub async fn validate(State(st): State<Shared>, Path(id): Path<i64>) -> ApiResult<Json<Value>> {
    let st2 = st.clone();
    let c = blocking(move || st2.store.validate_credential(id)).await?;
    tracing::info!(credential = id, "credential validated");
    Ok(Json(json!({
        "credentialId": c.credential_id,
        "status": c.state,
        "rules": c.rules,
    })))
}
