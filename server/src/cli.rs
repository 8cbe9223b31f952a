//! cli: the client subcommands (`byol machine …`, `byol install …`). They talk to the server's
//! API (`--server`, default http://127.0.0.1:8080) with the admin token from `BYOL_TOKEN` or
//! `<data-dir>/admin-token`. Human output by default, `--json` for scripts.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use serde_json::{Value, json};

mod apikey;
mod power;
mod scheme;
pub use apikey::{ApiKeyCmd, api_key};
pub use power::{BmcArgs, PowerArg};
pub use scheme::{SchemeCmd, scheme};

/// The client's settings in force (see [`ClientFlags::resolve`]).
#[derive(Debug, Clone)]
pub struct ClientArgs {
    pub server: String,
    pub token: Option<String>,
    pub data_dir: PathBuf,
    pub json: bool,
}

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// The client flags, accepted before the subcommand (`byol --server URL machine list`) and
/// after it (`byol machine list --server URL`); the later one wins, then `BYOL_SERVER`,
/// `BYOL_TOKEN`, `BYOL_DATA_DIR`, then the defaults.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientFlags {
    /// byol server to talk to [env: BYOL_SERVER] [default: http://127.0.0.1:8080].
    #[arg(long, global = true)]
    pub server: Option<String>,
    /// Admin token [env: BYOL_TOKEN] (default: read from <data-dir>/admin-token).
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// Data dir of a local server, to read its admin token [env: BYOL_DATA_DIR]
    /// [default: byol-data].
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

impl ClientFlags {
    /// `after` (flags after the subcommand) over `before` (flags before it), over the
    /// environment, over the defaults.
    pub fn resolve(before: &ClientFlags, after: &ClientFlags) -> ClientArgs {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        ClientArgs {
            server: after
                .server
                .clone()
                .or_else(|| before.server.clone())
                .or_else(|| env("BYOL_SERVER"))
                .unwrap_or_else(|| DEFAULT_SERVER.to_string()),
            token: after
                .token
                .clone()
                .or_else(|| before.token.clone())
                .or_else(|| env("BYOL_TOKEN")),
            data_dir: after
                .data_dir
                .clone()
                .or_else(|| before.data_dir.clone())
                .or_else(|| env("BYOL_DATA_DIR").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_DATA_DIR)),
            json: after.json || before.json,
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum MachineCmd {
    /// Register a machine by name with the MAC(s) it network-boots from.
    Add {
        name: String,
        #[arg(long = "mac", required = true)]
        macs: Vec<String>,
        #[command(flatten)]
        disk: DiskArgs,
        /// How long the image's make_image_bootable.sh may run on this machine (`45m`, `2h`;
        /// default: the server's --hook-timeout).
        #[arg(long)]
        hook_timeout: Option<String>,
    },
    /// Set how long make_image_bootable.sh may run on a machine (`45m`, `2h`), or `default`
    /// for the server's --hook-timeout.
    HookTimeout { name: String, timeout: String },
    /// Set the disk hints of a machine (they replace the ones it had), or clear them.
    Disk {
        name: String,
        #[command(flatten)]
        disk: DiskArgs,
        /// Remove every hint: the disk comes from diskGroupId again.
        #[arg(long)]
        clear: bool,
    },
    /// Set the storage scheme a machine installs when a request names none (`default`:
    /// OVH's default layout).
    Scheme { name: String, scheme: String },
    /// List machines and their latest install.
    List,
    /// Show one machine.
    Show { name: String },
    /// Forget a machine (refused while an install is in progress).
    Delete { name: String },
    /// Set the machine's BMC (Redfish or IPMI), show it (no settings), or forget it (--clear).
    /// With a BMC, an install starts the machine itself: network boot once, power on or reset.
    Bmc(BmcArgs),
    /// Power the machine on, off, cycle it (off: on), or ask its state, through its BMC.
    Power { name: String, action: PowerArg },
}

/// byol's own disk hints: the install disk must match every one given, and exactly one disk must
/// match (otherwise the install fails and lists the disks).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DiskArgs {
    /// Disk serial number (exact).
    #[arg(long = "disk-serial")]
    pub disk_serial: Option<String>,
    /// Disk World Wide Name (0x5000c500…, naa.…, eui.…).
    #[arg(long = "disk-wwn")]
    pub disk_wwn: Option<String>,
    /// Part of the disk's vendor and model (case ignored).
    #[arg(long = "disk-model")]
    pub disk_model: Option<String>,
    /// Smallest size: 480G, 2TB, 1.5TiB or bytes.
    #[arg(long = "disk-min-size")]
    pub disk_min_size: Option<String>,
    /// Largest size.
    #[arg(long = "disk-max-size")]
    pub disk_max_size: Option<String>,
    /// The disk's /dev/disk/by-path name (pci-0000:00:1f.2-ata-1.0).
    #[arg(long = "disk-by-path")]
    pub disk_by_path: Option<String>,
    /// The kernel name (sda, nvme0n1): only on machines where it is stable.
    #[arg(long = "disk-name")]
    pub disk_name: Option<String>,
    /// nvme, sata, sas, scsi, virtio, virtio-scsi, mmc or usb.
    #[arg(long = "disk-transport")]
    pub disk_transport: Option<String>,
    /// Only spinning disks (true) or only SSDs (false).
    #[arg(long = "disk-rotational")]
    pub disk_rotational: Option<bool>,
    /// Allow the hints to pick a removable or USB disk.
    #[arg(long = "disk-allow-removable")]
    pub disk_allow_removable: bool,
}

impl DiskArgs {
    fn hints(&self) -> anyhow::Result<byol_spec::DiskHints> {
        let size = |flag: &str, v: &Option<String>| -> anyhow::Result<Option<u64>> {
            v.as_deref()
                .map(|s| byol_spec::disk::parse_size(s).map_err(|e| anyhow::anyhow!("{flag}: {e}")))
                .transpose()
        };
        Ok(byol_spec::DiskHints {
            serial: self.disk_serial.clone(),
            wwn: self.disk_wwn.clone(),
            model: self.disk_model.clone(),
            min_size: size("--disk-min-size", &self.disk_min_size)?,
            max_size: size("--disk-max-size", &self.disk_max_size)?,
            by_path: self.disk_by_path.clone(),
            name: self.disk_name.clone(),
            transport: self.disk_transport.clone(),
            rotational: self.disk_rotational,
            allow_removable: self.disk_allow_removable,
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// Machine name (OVH's serviceName).
    pub name: String,
    /// OVH install body (JSON) from FILE, or `-` for stdin. Exclusive with the flags below.
    #[arg(long, conflicts_with_all = ["image_url"])]
    pub body: Option<String>,
    #[arg(long)]
    pub image_url: Option<String>,
    /// qcow2 (default) or raw.
    #[arg(long)]
    pub image_type: Option<String>,
    #[arg(long)]
    pub checksum: Option<String>,
    /// md5, sha1, sha256 or sha512.
    #[arg(long)]
    pub checksum_type: Option<String>,
    /// Extra HTTP header for the image download, 'Name: value' (repeatable).
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// cloud-init user data file (#cloud-config or a script); sent base64-encoded.
    #[arg(long)]
    pub user_data: Option<PathBuf>,
    /// JSON object for meta_data.json's `meta`.
    #[arg(long)]
    pub metadata: Option<String>,
    #[arg(long)]
    pub hostname: Option<String>,
    /// SSH public key, or @FILE to read it from a file.
    #[arg(long)]
    pub ssh_key: Option<String>,
    #[arg(long)]
    pub disk_group: Option<u32>,
    /// How long make_image_bootable.sh may run for this install (`45m`, `2h`; byol's
    /// `hookTimeout` key).
    #[arg(long)]
    pub hook_timeout: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum InstallCmd {
    /// Start an install (OVH body with --body, or flags).
    Start(Box<StartArgs>),
    /// Show the machine's latest install; --follow prints events until it ends.
    Status {
        name: String,
        #[arg(long, short)]
        follow: bool,
    },
    /// Cancel the machine's install in progress.
    Cancel { name: String },
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    fn new(a: &ClientArgs) -> anyhow::Result<Client> {
        let token = match &a.token {
            Some(t) => t.clone(),
            None => {
                let p = a.data_dir.join("admin-token");
                std::fs::read_to_string(&p)
                    .with_context(|| {
                        format!("no admin token: set BYOL_TOKEN or --token, or point --data-dir at the server's data dir ({} is not readable)", p.display())
                    })?
                    .trim()
                    .to_string()
            }
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("HTTP client")?;
        Ok(Client {
            http,
            base: a.server.trim_end_matches('/').to_string(),
            token,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let res = req
            .send()
            .await
            .with_context(|| format!("cannot reach the byol server at {}", self.base))?;
        let status = res.status();
        let bytes = res.bytes().await.context("reading the answer")?;
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        let v: Value = serde_json::from_slice(&bytes).with_context(|| {
            format!("the server answered {status} with something that is not JSON")
        })?;
        if !status.is_success() {
            let msg = v
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("(no message)");
            bail!("{msg} (HTTP {})", status.as_u16());
        }
        Ok(v)
    }
    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }
    async fn post(&self, path: &str, body: Vec<u8>) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        // text from the machine: no terminal escapes, no forged lines
        Value::String(s) => byol_spec::escape_control(s).into_owned(),
        other => other.to_string(),
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub async fn machine(a: &ClientArgs, cmd: MachineCmd) -> anyhow::Result<()> {
    let c = Client::new(a)?;
    match cmd {
        MachineCmd::Add {
            name,
            macs,
            disk,
            hook_timeout,
        } => {
            let hints = disk.hints()?;
            let mut body = json!({"name": name, "macs": macs, "disk": hints});
            if let Some(t) = hook_timeout {
                body["hookTimeout"] = json!(t);
            }
            let v = c
                .post("/api/v1/machines", serde_json::to_vec(&body)?)
                .await?;
            if a.json {
                print_json(&v)
            } else {
                println!(
                    "machine {} added (MACs: {}){}",
                    s(&v["name"]),
                    v["macs"]
                        .as_array()
                        .map(|m| m.iter().map(s).collect::<Vec<_>>().join(", "))
                        .unwrap_or_default(),
                    if hints.is_empty() {
                        String::new()
                    } else {
                        format!("; disk hints: {}", hints.describe())
                    }
                );
            }
        }
        MachineCmd::Disk { name, disk, clear } => {
            let hints = disk.hints()?;
            if clear != hints.is_empty() {
                bail!(
                    "give either --clear or at least one --disk-… hint (--disk-serial, --disk-wwn, \
                     --disk-model, --disk-min-size, --disk-max-size, --disk-by-path, --disk-name, \
                     --disk-transport, --disk-rotational)"
                );
            }
            let v = c
                .call(
                    reqwest::Method::PUT,
                    &format!("/api/v1/machines/{}/disk", enc(&name)),
                    Some(serde_json::to_vec(&hints)?),
                )
                .await?;
            if a.json {
                print_json(&v)
            } else if hints.is_empty() {
                println!("machine {name}: disk hints cleared, the disk comes from diskGroupId");
            } else {
                println!("machine {name}: disk hints {}", hints.describe());
            }
        }
        MachineCmd::List => {
            let v = c.get("/api/v1/machines").await?;
            if a.json {
                print_json(&v);
            } else {
                println!("{:<24} {:<40} {:<12} PHASE", "NAME", "MACS", "INSTALL");
                for m in v["machines"].as_array().into_iter().flatten() {
                    let macs = m["macs"]
                        .as_array()
                        .map(|m| m.iter().map(s).collect::<Vec<_>>().join(","))
                        .unwrap_or_default();
                    println!(
                        "{:<24} {:<40} {:<12} {}",
                        s(&m["name"]),
                        macs,
                        s(&m["install"]["state"]),
                        s(&m["install"]["phase"])
                    );
                }
            }
        }
        MachineCmd::HookTimeout { name, timeout } => {
            let value = match timeout.as_str() {
                "default" => Value::Null,
                t => json!(t),
            };
            let v = c
                .call(
                    reqwest::Method::PUT,
                    &format!("/api/v1/machines/{}/hook-timeout", enc(&name)),
                    Some(serde_json::to_vec(&json!({ "hookTimeout": value }))?),
                )
                .await?;
            if a.json {
                print_json(&v)
            } else if v["hookTimeout"].is_null() {
                println!("machine {name}: make_image_bootable.sh gets the server's time limit");
            } else {
                println!(
                    "machine {name}: make_image_bootable.sh may run for {}",
                    s(&v["hookTimeout"])
                );
            }
        }
        MachineCmd::Scheme { name, scheme } => {
            let v = c
                .call(
                    reqwest::Method::PUT,
                    &format!("/api/v1/machines/{}/scheme", enc(&name)),
                    Some(serde_json::to_vec(&json!({ "scheme": scheme }))?),
                )
                .await?;
            if a.json {
                print_json(&v)
            } else {
                println!("machine {name}: storage scheme {}", s(&v["scheme"]));
            }
        }
        MachineCmd::Show { name } => {
            let v = c.get(&format!("/api/v1/machines/{}", enc(&name))).await?;
            print_json(&v);
        }
        MachineCmd::Delete { name } => {
            c.call(
                reqwest::Method::DELETE,
                &format!("/api/v1/machines/{}", enc(&name)),
                None,
            )
            .await?;
            if !a.json {
                println!("machine {name} deleted");
            }
        }
        MachineCmd::Bmc(b) => power::bmc(a, b).await?,
        MachineCmd::Power { name, action } => power::power(a, &name, action).await?,
    }
    Ok(())
}

/// Builds the OVH body from `install start` flags.
pub fn body_from_flags(f: &StartArgs) -> anyhow::Result<Vec<u8>> {
    let mut md: Vec<Value> = Vec::new();
    let mut kv = |k: &str, v: String| md.push(json!({"key": k, "value": v}));
    let url = f
        .image_url
        .clone()
        .context("give --image-url URL (or a whole OVH body with --body FILE)")?;
    kv("imageURL", url);
    if let Some(t) = &f.image_type {
        kv("imageType", t.clone());
    }
    if let Some(c) = &f.checksum {
        kv("imageCheckSum", c.clone());
    }
    if let Some(t) = &f.checksum_type {
        kv("imageCheckSumType", t.clone());
    }
    for (n, h) in f.headers.iter().enumerate() {
        let (name, value) = h.split_once(':').with_context(|| {
            format!(
                "--header `{}` is not 'Name: value'",
                h.split(':').next().unwrap_or_default()
            )
        })?;
        kv(&format!("httpHeaders{n}Key"), name.trim().to_string());
        kv(&format!("httpHeaders{n}Value"), value.trim().to_string());
    }
    if let Some(p) = &f.user_data {
        let data =
            std::fs::read(p).with_context(|| format!("reading --user-data {}", p.display()))?;
        kv(
            "configDriveUserData",
            base64::engine::general_purpose::STANDARD.encode(data),
        );
    }
    if let Some(m) = &f.metadata {
        kv("configDriveMetadata", m.clone());
    }
    if let Some(k) = &f.ssh_key {
        let key = match k.strip_prefix('@') {
            Some(p) => {
                std::fs::read_to_string(p).with_context(|| format!("reading --ssh-key @{p}"))?
            }
            None => k.clone(),
        };
        kv("sshKey", key.trim().to_string());
    }
    if let Some(g) = f.disk_group {
        kv("diskGroupId", g.to_string());
    }
    if let Some(t) = &f.hook_timeout {
        kv("hookTimeout", t.clone());
    }
    let mut body = json!({"templateName": "byolinux_64", "partitionSchemeName": "default", "userMetadata": md});
    if let Some(h) = &f.hostname {
        body["details"] = json!({"customHostname": h});
    }
    Ok(serde_json::to_vec(&body)?)
}

pub async fn install(a: &ClientArgs, cmd: InstallCmd) -> anyhow::Result<()> {
    let c = Client::new(a)?;
    match cmd {
        InstallCmd::Start(f) => {
            let body = match &f.body {
                Some(p) if p == "-" => {
                    let mut b = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
                        .context("reading the body from stdin")?;
                    b
                }
                Some(p) => std::fs::read(p).with_context(|| format!("reading --body {p}"))?,
                None => body_from_flags(&f)?,
            };
            let v = c
                .post(&format!("/api/v1/machines/{}/installs", enc(&f.name)), body)
                .await?;
            if a.json {
                print_json(&v);
            } else {
                println!(
                    "install {} started for {}: waiting for the machine to network-boot",
                    s(&v["id"]),
                    f.name
                );
                // with a BMC, the server starts the machine itself
                if let Some(next) = v["next"].as_str().filter(|n| n.starts_with("byol starts")) {
                    println!("{}", byol_spec::escape_control(next));
                }
            }
        }
        InstallCmd::Status { name, follow } => {
            let m = c.get(&format!("/api/v1/machines/{}", enc(&name))).await?;
            let Some(id) = m["install"]["id"].as_str().map(str::to_string) else {
                bail!("machine {name} has no install");
            };
            if !follow {
                let v = c.get(&format!("/api/v1/installs/{id}")).await?;
                if a.json {
                    print_json(&v);
                } else {
                    println!("install {id} of {name}: {}", s(&v["state"]));
                    println!(
                        "  phase: {}   bytes: {} / {}",
                        s(&v["phase"]),
                        s(&v["bytesDone"]),
                        s(&v["bytesTotal"])
                    );
                    if !v["error"].is_null() {
                        println!("  error: {}", s(&v["error"]));
                    }
                }
                return Ok(());
            }
            let mut after = 0i64;
            loop {
                let v = c
                    .get(&format!("/api/v1/installs/{id}/events?after={after}"))
                    .await?;
                for e in v["events"].as_array().into_iter().flatten() {
                    after = e["seq"].as_i64().unwrap_or(after);
                    if a.json {
                        println!("{e}");
                    } else {
                        let bytes = match (e["bytes_done"].as_u64(), e["bytes_total"].as_u64()) {
                            (Some(d), Some(t)) if t > 0 => {
                                format!(" [{} / {} MiB, {}%]", d >> 20, t >> 20, d * 100 / t)
                            }
                            _ => String::new(),
                        };
                        println!(
                            "{:<12} {:<8} {}{}",
                            s(&e["phase"]),
                            s(&e["status"]),
                            s(&e["message"]),
                            bytes
                        );
                        for l in e["logs"].as_array().into_iter().flatten() {
                            println!("    | {}", s(l));
                        }
                    }
                }
                let state = v["state"].as_str().unwrap_or("");
                if !matches!(state, "pending" | "installing") {
                    if !a.json {
                        println!("install {id}: {state}");
                    }
                    if state != "done" {
                        std::process::exit(1);
                    }
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        InstallCmd::Cancel { name } => {
            let m = c.get(&format!("/api/v1/machines/{}", enc(&name))).await?;
            let Some(id) = m["install"]["id"].as_str() else {
                bail!("machine {name} has no install to cancel");
            };
            let v = c
                .post(&format!("/api/v1/installs/{id}/cancel"), Vec::new())
                .await?;
            if a.json {
                print_json(&v);
            } else {
                println!(
                    "install {id} of {name} cancelled: the machine boots its local disk from now on"
                );
            }
        }
    }
    Ok(())
}

/// Machine names are checked by the server; escape what a path cannot hold anyway.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
