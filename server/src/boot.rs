//! boot: what booting machines fetch, without authentication (firmware cannot hold a secret):
//! `/boot.ipxe`, the generic entry script, and `/ipxe/{mac}`, which answers an install script
//! (kernel, initramfs, a fresh one-time agent token) when the machine has an install pending
//! or running, and a local-disk boot otherwise.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use byol_ipxe::{BaseUrl, InstallBoot, Platform};
use serde::Deserialize;

use crate::auth;
use crate::http::Shared;

fn script(body: String) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn refuse(msg: String) -> Response {
    tracing::warn!(%msg, "boot request refused");
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg + "\n",
    )
        .into_response()
}

/// The URL machines reach us at: --public-url, or the Host header the firmware sent.
fn base_url(st: &Shared, headers: &HeaderMap) -> Result<BaseUrl, String> {
    if let Some(u) = &st.cfg.public_url {
        return BaseUrl::parse(u).map_err(|e| e.to_string());
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .ok_or("no Host header: set --public-url")?;
    BaseUrl::from_host_header(host).map_err(|e| format!("Host header refused: {e}"))
}

pub async fn entry(State(st): State<Shared>, headers: HeaderMap) -> Response {
    match base_url(&st, &headers) {
        Ok(base) => {
            st.metrics.script("entry");
            script(byol_ipxe::entry_script(&base))
        }
        Err(e) => refuse(e),
    }
}

#[derive(Deserialize)]
pub struct BootQuery {
    #[serde(default)]
    platform: Option<String>,
    #[serde(default)]
    buildarch: Option<String>,
}

pub async fn per_mac(
    State(st): State<Shared>,
    Path(raw_mac): Path<String>,
    Query(q): Query<BootQuery>,
    headers: HeaderMap,
) -> Response {
    let platform = q
        .platform
        .as_deref()
        .and_then(Platform::from_ipxe)
        .unwrap_or(Platform::Pcbios);
    let Some(mac) = byol_ipxe::normalize_mac(&raw_mac) else {
        return refuse(format!(
            "`{}` is not a MAC address",
            raw_mac.chars().take(40).collect::<String>()
        ));
    };
    let arch = q.buildarch.as_deref().unwrap_or("?");
    let machine = match st.store.machine_by_mac(&mac) {
        Ok(m) => m,
        Err(e) => return crate::http::ApiError::from(e).into_response(),
    };
    let Some(machine) = machine else {
        tracing::info!(%mac, ?platform, arch, decision = "local", "ipxe script: unknown MAC");
        st.metrics.script("local");
        return script(byol_ipxe::local_boot_script(
            platform,
            &format!("{mac} is not a known machine, booting the local disk"),
        ));
    };
    let active = match st.store.latest_install(&machine) {
        Ok(i) => i.filter(|i| i.state.is_active()),
        Err(e) => return crate::http::ApiError::from(e).into_response(),
    };
    let Some(install) = active else {
        tracing::info!(%mac, %machine, ?platform, arch, decision = "local", "ipxe script: no install pending");
        st.metrics.script("local");
        return script(byol_ipxe::local_boot_script(
            platform,
            &format!("no install pending for {machine}, booting the local disk"),
        ));
    };
    let base = match base_url(&st, &headers) {
        Ok(b) => b,
        Err(e) => return refuse(e),
    };
    // A fresh token each time the script is served: the previous boot's token stops working.
    let token = auth::new_token();
    let rendered = byol_ipxe::install_script(&InstallBoot {
        base: &base,
        install_id: &install.id,
        token: &token,
        platform,
        console: &st.cfg.console,
        extra_args: &[],
    });
    match rendered {
        Ok(s) => {
            if let Err(e) = st
                .store
                .set_token_hash(&install.id, &auth::hash_token(&token))
            {
                return crate::http::ApiError::from(e).into_response();
            }
            tracing::info!(%mac, %machine, install = %install.id, ?platform, arch, decision = "install",
                "ipxe script: install");
            st.metrics.script("install");
            script(s)
        }
        Err(e) => refuse(format!("cannot render the install script: {e}")),
    }
}
