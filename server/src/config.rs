//! config: `byol serve` settings from flags, `BYOL_*` environment variables and an optional
//! TOML file (flags and environment win over the file, the file over the embedded defaults).
//! With nothing given: data in `./byol-data`, HTTP on 0.0.0.0:8080, TFTP on 0.0.0.0:69.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

pub const DEFAULT_DATA_DIR: &str = "byol-data";
pub const DEFAULT_HTTP: &str = "0.0.0.0:8080";
pub const DEFAULT_TFTP: &str = "0.0.0.0:69";

/// What `byol serve` accepts (all optional), as flags/env and as TOML keys.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys as the flags, e.g. `http = "0.0.0.0:8080"`).
    #[arg(long, env = "BYOL_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Where the state database, the admin token, assets and images live.
    #[arg(long, env = "BYOL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address.
    #[arg(long, env = "BYOL_HTTP")]
    pub http: Option<SocketAddr>,
    /// TFTP listen address (`off` to disable).
    #[arg(long, env = "BYOL_TFTP")]
    pub tftp: Option<String>,
    /// URL machines use to reach this server (e.g. http://10.0.0.1:8080). Default: the Host
    /// header iPXE sent, or for boot.ipxe over TFTP the DHCP next-server and the HTTP port.
    #[arg(long, env = "BYOL_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Folder served as /assets/ (vmlinuz, initramfs). Default: <data-dir>/assets.
    #[arg(long, env = "BYOL_ASSETS_DIR")]
    pub assets_dir: Option<PathBuf>,
    /// Installer kernel served as /assets/vmlinuz. Default: <assets-dir>/vmlinuz, else
    /// ./target/byol/vmlinuz (what `cargo xtask initramfs` builds).
    #[arg(long, env = "BYOL_KERNEL")]
    pub kernel: Option<PathBuf>,
    /// Installer initramfs served as /assets/initramfs. Default: <assets-dir>/initramfs, else
    /// ./target/byol/initramfs.cpio.zst.
    #[arg(long, env = "BYOL_INITRAMFS")]
    pub initramfs: Option<PathBuf>,
    /// Folder served as /images/ for small labs. Default: <data-dir>/images.
    #[arg(long, env = "BYOL_IMAGES_DIR")]
    pub images_dir: Option<PathBuf>,
    /// Folder holding the iPXE binaries served over TFTP. Default: /usr/lib/ipxe (Debian's `ipxe`).
    #[arg(long, env = "BYOL_IPXE_DIR")]
    pub ipxe_dir: Option<PathBuf>,
    /// Kernel consoles for the installer, comma-separated. Default: tty0,ttyS0,115200n8.
    #[arg(long, env = "BYOL_CONSOLE", value_delimiter = ',')]
    pub console: Option<Vec<String>>,
    /// Log format: text or json.
    #[arg(long, env = "BYOL_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// How long an image's make_image_bootable.sh may run before it is killed (`30m`, `2h`;
    /// 1m to 24h), unless the machine or the install sets its own. Default: 30m.
    #[arg(long, env = "BYOL_HOOK_TIMEOUT")]
    pub hook_timeout: Option<String>,
    /// A `pending` install whose machine has not booted the installer after this long becomes
    /// `failed` and the machine boots its disk (`24h`). Default: 24h.
    #[arg(long, env = "BYOL_PENDING_TTL")]
    pub pending_ttl: Option<String>,
    /// An `installing` install with no event for this long becomes `failed` (`30m`).
    /// Default: 30m.
    #[arg(long, env = "BYOL_STALL_TIMEOUT")]
    pub stall_timeout: Option<String>,
    /// An agent token opens its install's config this long after its boot script was served
    /// (`10m`). Default: 10m.
    #[arg(long, env = "BYOL_TOKEN_WINDOW")]
    pub token_window: Option<String>,
    /// A new boot of a machine takes a running install over once the boot that holds it has
    /// been silent this long (a power loss; `90s`). Default: 90s.
    #[arg(long, env = "BYOL_TAKEOVER_AFTER")]
    pub takeover_after: Option<String>,
    /// Serve the operators' API (and the web of later versions) on this address only, e.g. a
    /// management network's; the machines' routes stay on --http.
    #[arg(long, env = "BYOL_ADMIN_HTTP")]
    pub admin_http: Option<SocketAddr>,
    /// Serve /metrics on this address only.
    #[arg(long, env = "BYOL_METRICS_HTTP")]
    pub metrics_http: Option<SocketAddr>,
    /// TLS certificate chain (PEM) for the listener of the operators' API (--admin-http, else
    /// --http); with --tls-key.
    #[arg(long, env = "BYOL_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for --tls-cert.
    #[arg(long, env = "BYOL_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Open HTTP connections at most, all sources together. Default: 4096.
    #[arg(long, env = "BYOL_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Open HTTP connections at most from one address. Default: 64.
    #[arg(long, env = "BYOL_MAX_CONNECTIONS_PER_ADDRESS")]
    pub max_connections_per_address: Option<usize>,
    /// Boot-script requests (/boot.ipxe, /ipxe/…) a minute from one address, or `off`.
    /// Default: 60.
    #[arg(long, env = "BYOL_BOOT_RATE")]
    pub boot_rate: Option<String>,
    /// Agent API requests a minute from one address, or `off`. Default: 600.
    #[arg(long, env = "BYOL_AGENT_RATE")]
    pub agent_rate: Option<String>,
}

/// The settings in force.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub http: SocketAddr,
    pub tftp: Option<SocketAddr>,
    pub public_url: Option<String>,
    pub assets_dir: PathBuf,
    /// What /assets/vmlinuz and /assets/initramfs serve.
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub images_dir: PathBuf,
    pub ipxe_dir: PathBuf,
    pub console: Vec<String>,
    pub log_json: bool,
    /// The hook's time limit when neither the machine nor the install sets one.
    pub hook_timeout_seconds: u64,
    pub pending_ttl_seconds: u64,
    pub stall_timeout_seconds: u64,
    pub token_window_seconds: u64,
    pub takeover_after_seconds: u64,
    pub admin_http: Option<SocketAddr>,
    pub metrics_http: Option<SocketAddr>,
    /// (certificate chain, key), both PEM.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    /// Requests a minute per address (None: no limit).
    pub boot_rate: Option<u32>,
    pub agent_rate: Option<u32>,
}

/// A `--boot-rate`/`--agent-rate` value: a number of requests a minute, or `off`.
fn rate_option(flag: &str, v: Option<String>, default: u32) -> anyhow::Result<Option<u32>> {
    match v.as_deref().map(str::trim) {
        None => Ok(Some(default)),
        Some("off") => Ok(None),
        Some(n) => match n.parse::<u32>() {
            Ok(0) | Err(_) => anyhow::bail!(
                "{flag} `{n}`: give requests a minute from one address (e.g. {default}), or `off`"
            ),
            Ok(n) => Ok(Some(n)),
        },
    }
}

/// The default `--pending-ttl`, `--stall-timeout`, `--token-window` and `--takeover-after`.
pub const DEFAULT_PENDING_TTL: u64 = 24 * 3600;
pub const DEFAULT_STALL_TIMEOUT: u64 = 30 * 60;
pub const DEFAULT_TOKEN_WINDOW: u64 = 10 * 60;
pub const DEFAULT_TAKEOVER_AFTER: u64 = 90;

/// A duration option: `flag` names it in the error; zero is refused.
fn duration_option(flag: &str, v: Option<String>, default: u64) -> anyhow::Result<u64> {
    match v {
        None => Ok(default),
        Some(v) => match byol_spec::parse_duration(&v) {
            Ok(0) => {
                anyhow::bail!("{flag}: `{v}` is zero: give a duration like `90s`, `30m`, `24h`")
            }
            Ok(s) => Ok(s),
            Err(e) => anyhow::bail!("{flag}: {e}"),
        },
    }
}

impl ServeArgs {
    pub fn resolve(self) -> anyhow::Result<ServeConfig> {
        let file = match &self.config {
            Some(p) => read_file(p)?,
            None => ServeArgs::default(),
        };
        let data_dir = self
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let http = match self.http.or(file.http) {
            Some(a) => a,
            None => DEFAULT_HTTP.parse().context("default HTTP address")?,
        };
        let tftp = match self.tftp.or(file.tftp).as_deref() {
            Some("off") | Some("") => None,
            Some(a) => Some(a.parse().with_context(|| {
                format!("--tftp `{a}` is not ADDR:PORT (e.g. 0.0.0.0:69) or `off`")
            })?),
            None => Some(DEFAULT_TFTP.parse().context("default TFTP address")?),
        };
        let public_url = self.public_url.or(file.public_url);
        if let Some(u) = &public_url {
            byol_ipxe::BaseUrl::parse(u)
                .map_err(|e| anyhow::anyhow!("--public-url `{u}` cannot be used: {e}"))?;
        }
        let log_format = self
            .log_format
            .or(file.log_format)
            .unwrap_or_else(|| "text".into());
        anyhow::ensure!(
            log_format == "text" || log_format == "json",
            "--log-format `{log_format}`: use text or json"
        );
        let assets_dir = self
            .assets_dir
            .or(file.assets_dir)
            .unwrap_or_else(|| data_dir.join("assets"));
        let pick = |given: Option<PathBuf>, in_assets: &str, built: &str| {
            given.unwrap_or_else(|| {
                let p = assets_dir.join(in_assets);
                if p.exists() { p } else { PathBuf::from(built) }
            })
        };
        let kernel = pick(
            self.kernel.or(file.kernel),
            "vmlinuz",
            "target/byol/vmlinuz",
        );
        let initramfs = pick(
            self.initramfs.or(file.initramfs),
            "initramfs",
            "target/byol/initramfs.cpio.zst",
        );
        let hook_timeout_seconds = match self.hook_timeout.or(file.hook_timeout) {
            Some(v) => byol_spec::request::parse_hook_timeout(&v)
                .map_err(|e| anyhow::anyhow!("--hook-timeout: {e}"))?,
            None => byol_spec::DEFAULT_HOOK_TIMEOUT_SECONDS,
        };
        let tls = match (
            self.tls_cert.or(file.tls_cert),
            self.tls_key.or(file.tls_key),
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => anyhow::bail!("--tls-cert and --tls-key go together: give both, or neither"),
        };
        let max_connections = self
            .max_connections
            .or(file.max_connections)
            .unwrap_or(4096);
        let max_connections_per_address = self
            .max_connections_per_address
            .or(file.max_connections_per_address)
            .unwrap_or(64);
        anyhow::ensure!(
            max_connections >= 1 && max_connections_per_address >= 1,
            "--max-connections and --max-connections-per-address must be at least 1"
        );
        Ok(ServeConfig {
            boot_rate: rate_option("--boot-rate", self.boot_rate.or(file.boot_rate), 60)?,
            agent_rate: rate_option("--agent-rate", self.agent_rate.or(file.agent_rate), 600)?,
            admin_http: self.admin_http.or(file.admin_http),
            metrics_http: self.metrics_http.or(file.metrics_http),
            tls,
            max_connections,
            max_connections_per_address,
            hook_timeout_seconds,
            pending_ttl_seconds: duration_option(
                "--pending-ttl",
                self.pending_ttl.or(file.pending_ttl),
                DEFAULT_PENDING_TTL,
            )?,
            stall_timeout_seconds: duration_option(
                "--stall-timeout",
                self.stall_timeout.or(file.stall_timeout),
                DEFAULT_STALL_TIMEOUT,
            )?,
            token_window_seconds: duration_option(
                "--token-window",
                self.token_window.or(file.token_window),
                DEFAULT_TOKEN_WINDOW,
            )?,
            takeover_after_seconds: duration_option(
                "--takeover-after",
                self.takeover_after.or(file.takeover_after),
                DEFAULT_TAKEOVER_AFTER,
            )?,
            kernel,
            initramfs,
            assets_dir,
            images_dir: self
                .images_dir
                .or(file.images_dir)
                .unwrap_or_else(|| data_dir.join("images")),
            ipxe_dir: self
                .ipxe_dir
                .or(file.ipxe_dir)
                .unwrap_or_else(|| PathBuf::from(byol_ipxe::IPXE_BINARY_DIR)),
            console: self
                .console
                .or(file.console)
                .unwrap_or_else(|| vec!["tty0".into(), "ttyS0,115200n8".into()]),
            log_json: log_format == "json",
            data_dir,
            http,
            tftp,
            public_url,
        })
    }
}

fn read_file(p: &Path) -> anyhow::Result<ServeArgs> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    toml::from_str(&text).with_context(|| format!("{} is not a valid byol config", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_with_nothing_given() {
        let c = ServeArgs::default().resolve().unwrap();
        assert_eq!(c.data_dir, PathBuf::from("byol-data"));
        assert_eq!(c.http.to_string(), "0.0.0.0:8080");
        assert_eq!(c.tftp.unwrap().to_string(), "0.0.0.0:69");
        assert_eq!(c.assets_dir, PathBuf::from("byol-data/assets"));
        assert_eq!(c.hook_timeout_seconds, 1800);
        assert_eq!(c.pending_ttl_seconds, 86400);
        assert_eq!(c.stall_timeout_seconds, 1800);
        assert_eq!(c.token_window_seconds, 600);
        assert_eq!(c.takeover_after_seconds, 90);
    }

    #[test]
    fn hook_timeout_is_a_duration() {
        let c = ServeArgs {
            hook_timeout: Some("2h".into()),
            ..Default::default()
        };
        assert_eq!(c.resolve().unwrap().hook_timeout_seconds, 7200);
        for bad in ["30", "5s", "3d", "soon"] {
            let e = ServeArgs {
                hook_timeout: Some(bad.into()),
                ..Default::default()
            }
            .resolve()
            .unwrap_err();
            assert!(
                format!("{e:#}").starts_with("--hook-timeout: "),
                "{bad}: {e:#}"
            );
        }
    }

    #[test]
    fn lifecycle_durations() {
        let c = ServeArgs {
            pending_ttl: Some("2h".into()),
            stall_timeout: Some("6s".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!((c.pending_ttl_seconds, c.stall_timeout_seconds), (7200, 6));
        let e = ServeArgs {
            stall_timeout: Some("0s".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(
            format!("{e:#}").starts_with("--stall-timeout: `0s` is zero"),
            "{e:#}"
        );
        let e = ServeArgs {
            pending_ttl: Some("soon".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(
            format!("{e:#}").starts_with("--pending-ttl: `soon` is not a duration"),
            "{e:#}"
        );
    }

    #[test]
    fn file_then_flags() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("byol.toml");
        std::fs::write(
            &f,
            "data-dir = \"/srv/byol\"\nhttp = \"127.0.0.1:9000\"\ntftp = \"off\"\n",
        )
        .unwrap();
        let c = ServeArgs {
            config: Some(f.clone()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/byol"));
        assert_eq!(c.http.to_string(), "127.0.0.1:9000");
        assert!(c.tftp.is_none());
        let c = ServeArgs {
            config: Some(f),
            http: Some("127.0.0.1:9001".parse().unwrap()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.http.to_string(), "127.0.0.1:9001");
        std::fs::write(d.path().join("bad.toml"), "htp = 1\n").unwrap();
        let e = ServeArgs {
            config: Some(d.path().join("bad.toml")),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{e:#}").contains("unknown field `htp`"), "{e:#}");
    }
}
