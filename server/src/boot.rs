//! boot: what booting machines fetch, without authentication (firmware cannot hold a secret):
//! `/boot.ipxe`, the generic entry script, and `/ipxe/{mac}`, which answers an install script
//! (kernel, initramfs, a fresh one-time agent token) when the machine has an install pending
//! or running, and a local-disk boot otherwise. Unknown, idle and finished MACs all get the
//! same local-boot script, which names no machine ([`LOCAL_MESSAGE`]); the log says which.
//! Each install script carries a fresh token for that boot; earlier boots' tokens keep
//! working (see [`crate::agent_api`] for what a token may do).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use byol_ipxe::{BaseUrl, InstallBoot, Platform};
use serde::Deserialize;

use crate::auth;
use crate::http::Shared;

/// What every machine that has nothing to install is told.
pub const LOCAL_MESSAGE: &str = "no install for this machine: booting the local disk";

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
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
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
    let machine = match crate::http::db(|| st.store.machine_by_mac(&mac)) {
        Ok(m) => m,
        Err(e) => return crate::http::ApiError::from(e).into_response(),
    };
    let Some(machine) = machine else {
        tracing::info!(%mac, ?platform, arch, decision = "local", "ipxe script: unknown MAC");
        st.metrics.script("local");
        return script(byol_ipxe::local_boot_script(platform, LOCAL_MESSAGE));
    };
    let active = match crate::http::db(|| st.store.latest_install(&machine)) {
        Ok(i) => i.filter(|i| i.state.is_active()),
        Err(e) => return crate::http::ApiError::from(e).into_response(),
    };
    let Some(install) = active else {
        tracing::info!(%mac, %machine, ?platform, arch, decision = "local", "ipxe script: no install pending");
        st.metrics.script("local");
        return script(byol_ipxe::local_boot_script(platform, LOCAL_MESSAGE));
    };
    let base = match base_url(&st, &headers) {
        Ok(b) => b,
        Err(e) => return refuse(e),
    };
    // A fresh token for each boot; the earlier boots' tokens keep working.
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
            let (store, id, hash) = (st.clone(), install.id.clone(), auth::hash_token(&token));
            let ip = crate::agent_api::peer_ip(&peer);
            let added = crate::http::blocking(move || store.store.add_boot(&id, &hash, Some(&ip)));
            let boot = match added.await {
                Ok(b) => b,
                Err(e) => return e.into_response(),
            };
            tracing::info!(%mac, %machine, install = %install.id, boot = boot.n, from = %peer.ip(),
                ?platform, arch, decision = "install", "ipxe script: install");
            st.metrics.script("install");
            script(s)
        }
        Err(e) => refuse(format!("cannot render the install script: {e}")),
    }
}
