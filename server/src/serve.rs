//! serve: `byol serve`: opens the data dir and the store, makes the admin token on first
//! start, binds HTTP and TFTP (each bind error says which address and why), and runs until
//! SIGTERM or Ctrl-C, then stops accepting and lets requests in flight finish.

use std::sync::Arc;

use anyhow::Context as _;

use crate::config::ServeConfig;
use crate::http::AppState;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::tftp;

pub async fn run(cfg: ServeConfig) -> anyhow::Result<()> {
    create_private_dir(&cfg.data_dir)?;
    let store = Store::open(&cfg.data_dir.join("byol.sqlite"))?;
    let (admin_token, created) = crate::auth::load_or_create_admin_token(&cfg.data_dir)?;
    if created {
        // Printed once, on the terminal only (not through the log).
        println!(
            "byol: new admin token (kept in {}):\n{admin_token}",
            cfg.data_dir.join("admin-token").display()
        );
    }

    let listener = tokio::net::TcpListener::bind(cfg.http)
        .await
        .with_context(|| {
            format!(
                "cannot listen for HTTP on {}: is another server there? (--http ADDR:PORT)",
                cfg.http
            )
        })?;
    let http_addr = listener.local_addr()?;

    let tftp_task = match cfg.tftp {
        Some(addr) => {
            let files = tftp_files(&cfg, http_addr.port())?;
            let server = tftp::bind(&tftp::TftpConfig { bind: addr, ..Default::default() }, files)
                .await
                .with_context(|| {
                    format!("cannot serve TFTP on {addr} (port 69 needs root; --tftp ADDR:PORT, or --tftp off)")
                })?;
            tracing::info!(addr = %server.local_addr(), "TFTP listening");
            println!("byol: TFTP on udp {}", server.local_addr());
            Some(tokio::spawn(server.serve()))
        }
        None => None,
    };

    let state = Arc::new(AppState {
        store,
        admin_token,
        cfg: cfg.clone(),
        metrics: Metrics::default(),
        limiter: Default::default(),
        seal: crate::seal::SealKey::load_or_create(&cfg.data_dir)?,
    });
    tracing::info!(addr = %http_addr, data_dir = %cfg.data_dir.display(), "HTTP listening");
    // The test harness and scripts read this line to learn the port when --http uses port 0.
    let main_scheme = if cfg.tls.is_some() && cfg.admin_http.is_none() {
        "https"
    } else {
        "http"
    };
    println!("byol: listening on {main_scheme}://{http_addr}");

    let sweeper = tokio::spawn(expire_installs(state.clone()));
    raise_fd_limit();
    let limits = crate::listen::Limits {
        max_connections: cfg.max_connections,
        per_address: cfg.max_connections_per_address,
        ..Default::default()
    };
    let tls = match &cfg.tls {
        Some((c, k)) => Some(Arc::new(crate::listen::tls_config(c, k)?)),
        None => None,
    };
    let routers = crate::http::routers(state.clone());
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let stopped = |tx: &tokio::sync::broadcast::Sender<()>| {
        let mut rx = tx.subscribe();
        async move {
            let _ = rx.recv().await;
        }
    };
    let mut others = Vec::new();
    for (what, addr, router, tls) in [
        ("admin API", cfg.admin_http, routers.admin, tls.clone()),
        ("metrics", cfg.metrics_http, routers.metrics, None),
    ] {
        let (Some(addr), Some(router)) = (addr, router) else {
            continue;
        };
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for the {what} on {addr}"))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        println!("byol: {what} on {scheme}://{}", l.local_addr()?);
        others.push(tokio::spawn(crate::listen::serve(
            l,
            router,
            limits,
            tls,
            stopped(&stop_tx),
        )));
    }
    // TLS on the main listener only when it serves the operators' API
    let main_tls = if cfg.admin_http.is_none() { tls } else { None };
    let main = crate::listen::serve(listener, routers.main, limits, main_tls, async {
        shutdown_signal().await;
    });
    let res = main.await.context("HTTP server");
    let _ = stop_tx.send(());
    for t in others {
        let _ = t.await;
    }
    res?;
    sweeper.abort();
    if let Some(t) = tftp_task {
        t.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Every few seconds, installs past `--pending-ttl` or `--stall-timeout` become `failed`
/// (and their machines boot locally from then on).
async fn expire_installs(st: crate::http::Shared) {
    let ttl = st.cfg.pending_ttl_seconds as i64 * 1000;
    let stall = st.cfg.stall_timeout_seconds as i64 * 1000;
    let every = std::time::Duration::from_secs(
        (st.cfg.pending_ttl_seconds.min(st.cfg.stall_timeout_seconds) / 4).clamp(1, 30),
    );
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let store = st.clone();
        match crate::http::blocking(move || store.store.expire(ttl, stall)).await {
            Ok(list) => {
                for (id, machine, message) in list {
                    tracing::warn!(install = %id, %machine, %message, "install expired");
                }
            }
            Err(e) => tracing::error!(error = %e.message, "expiring installs"),
        }
    }
}

/// The files TFTP offers: Debian's iPXE binaries and boot.ipxe.
fn tftp_files(cfg: &ServeConfig, http_port: u16) -> anyhow::Result<tftp::TftpFiles> {
    let mut files = tftp::TftpFiles::new();
    for name in byol_ipxe::IPXE_BINARIES {
        let p = cfg.ipxe_dir.join(name);
        if p.is_file() {
            files.insert(name, tftp::TftpFile::Path(p));
        } else {
            tracing::warn!(file = %p.display(), "iPXE binary missing (apt-get install ipxe): not offered over TFTP");
        }
    }
    let base = match &cfg.public_url {
        Some(u) => {
            byol_ipxe::BaseUrl::parse(u).map_err(|e| anyhow::anyhow!("--public-url: {e}"))?
        }
        None => byol_ipxe::BaseUrl::NextServer { port: http_port },
    };
    files.insert(
        "boot.ipxe",
        tftp::TftpFile::Bytes(Arc::new(byol_ipxe::entry_script(&base).into_bytes())),
    );
    Ok(files)
}

/// Up to the hard limit on open files: each HTTP connection and TFTP session holds one.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn create_private_dir(p: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if !p.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(p)
            .with_context(|| format!("creating the data dir {}", p.display()))?;
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
}
