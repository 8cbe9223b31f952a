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
        Ok(ServeConfig {
            hook_timeout_seconds,
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
