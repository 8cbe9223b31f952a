//! byol-agent: the installer's PID 1 (issues "machine side") and, on a host, the image engine's
//! command line: `byol-agent image write --source URL|PATH --target PATH …`, with progress on
//! stderr and a one-line JSON summary on stdout. On failure the message is the OVH guide's
//! wording and the exit status is 1.

use std::path::PathBuf;
use std::time::Duration;

use byol_agent::image::engine::{self, WriteOptions};
use byol_agent::image::progress::ConsoleProgress;
use byol_spec::{Checksum, ChecksumType, ImageType, Secret};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "byol-agent",
    version,
    about = "byol's installer agent and image engine"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The image engine.
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
    },
    /// BYOLinux on this host's disks: the storage layout made, the image's filesystem streamed
    /// into it (what the installer does, without the network and the server).
    Layout {
        #[command(subcommand)]
        cmd: LayoutCmd,
    },
    /// List this machine's disks as the agent reports them (JSON on stdout).
    Disks {
        /// sysfs root.
        #[arg(long, default_value = "/sys")]
        sysfs: PathBuf,
    },
    /// Test hook: get a DHCP lease on an interface with the agent's own client, print it as
    /// JSON (the interface is not configured).
    #[command(hide = true)]
    Dhcp {
        #[arg(long)]
        iface: String,
        /// Overall timeout, seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Test hook: run the agent's network phase for a kernel command line (find the interface
    /// by byol.mac, address from byol.ip or DHCP, route, resolv.conf), print the result as JSON.
    #[command(hide = true)]
    Netup {
        /// The `byol.*` parameters, as on the kernel command line.
        #[arg(long)]
        cmdline: String,
        /// Where to write resolv.conf.
        #[arg(long)]
        resolv_conf: PathBuf,
        /// DHCP timeout, seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Stream an image (qcow2 or raw, plain or zstd/xz/gzip) to a disk or file, verified.
    Write(WriteArgs),
}

#[derive(Subcommand)]
enum LayoutCmd {
    /// Partition `--disk`s with `--layout`, stream the image onto `/`, mount everything under
    /// `--root`, write fstab, mdadm.conf and config-2, run the image's hook (unless
    /// `--no-hook`), unmount. Every byte on the disks is lost.
    Install(LayoutArgs),
}

#[derive(clap::Args)]
struct LayoutArgs {
    /// http(s) URL or local path of the image.
    #[arg(long)]
    source: String,
    /// A whole disk of the layout, in order (repeat for each).
    #[arg(long = "disk", required = true)]
    disks: Vec<PathBuf>,
    /// The layout: OVH's rows as JSON (`[{"mountPoint": "/", "fileSystem": "ext4", "size": 0}, …]`
    /// or `{"layout": […]}`); `default`: OVH's default scheme.
    #[arg(long, default_value = "default")]
    layout: String,
    /// The firmware the disks will boot with: bios or uefi.
    #[arg(long, default_value = "bios")]
    firmware: String,
    /// Expected checksum (hex).
    #[arg(long, requires = "checksum_type")]
    checksum: Option<String>,
    /// md5, sha1, sha256 or sha512.
    #[arg(long, requires = "checksum")]
    checksum_type: Option<String>,
    /// Where the layout is mounted while it is filled.
    #[arg(long, default_value = "/mnt/byol-root")]
    root: PathBuf,
    /// Do not run the image's make_image_bootable.sh.
    #[arg(long)]
    no_hook: bool,
}

#[derive(clap::Args)]
struct WriteArgs {
    /// http(s) URL or local path of the image.
    #[arg(long)]
    source: String,
    /// Block device or file to write (a file is created when missing).
    #[arg(long)]
    target: PathBuf,
    /// What the image must be: qcow2 or raw (checked against its magic bytes).
    #[arg(long)]
    format: Option<String>,
    /// Expected checksum (hex).
    #[arg(long, requires = "checksum_type")]
    checksum: Option<String>,
    /// md5, sha1, sha256 or sha512.
    #[arg(long, requires = "checksum")]
    checksum_type: Option<String>,
    /// Extra request header, 'Name: value' (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Memory for qcow2 data that cannot be placed yet, MiB.
    #[arg(long, default_value_t = 16)]
    memory_budget: u64,
    /// Do not use Range requests for the qcow2 tables (stream in order only).
    #[arg(long)]
    no_range: bool,
}

fn main() {
    // The initramfs's /init: the installer itself. Never returns.
    if byol_agent::agent::running_as_init() {
        byol_agent::agent::run_pid1();
    }
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Disks { sysfs } => print_json(&byol_agent::agent::disks::inventory(&sysfs)),
        Cmd::Dhcp { iface, timeout } => dhcp(&iface, timeout),
        Cmd::Netup {
            cmdline,
            resolv_conf,
            timeout,
        } => netup(&cmdline, resolv_conf, timeout),
        Cmd::Layout {
            cmd: LayoutCmd::Install(a),
        } => match layout_install(a) {
            Ok(()) => 0,
            Err(msg) => {
                eprintln!("byol-agent: {msg}");
                1
            }
        },
        Cmd::Image {
            cmd: ImageCmd::Write(a),
        } => match write(a) {
            Ok(()) => 0,
            Err(msg) => {
                eprintln!("byol-agent: {msg}");
                1
            }
        },
    };
    std::process::exit(code);
}

fn print_json(v: &impl serde::Serialize) -> i32 {
    match serde_json::to_string(v) {
        Ok(s) => {
            println!("{s}");
            0
        }
        Err(e) => {
            eprintln!("byol-agent: {e}");
            1
        }
    }
}

fn dhcp(iface: &str, timeout: u64) -> i32 {
    use byol_agent::agent::{dhcp, net};
    let Some(mac) = net::interface_mac(std::path::Path::new("/sys"), iface) else {
        eprintln!("byol-agent: no interface {iface} (or no MAC) in /sys/class/net");
        return 1;
    };
    if let Err(e) = net::set_up(iface) {
        eprintln!("byol-agent: cannot set {iface} up: {e}");
        return 1;
    }
    let o = dhcp::DhcpOptions {
        timeout: Duration::from_secs(timeout),
        ..Default::default()
    };
    match dhcp::lease(iface, mac, &o) {
        Ok(l) => print_json(&l),
        Err(e) => {
            eprintln!("byol-agent: {e}");
            1
        }
    }
}

fn netup(cmdline: &str, resolv_conf: PathBuf, timeout: u64) -> i32 {
    use byol_agent::agent::{cmdline::BootParams, cmdline::Cmdline, dhcp, net};
    let p = BootParams::from_cmdline(&Cmdline::parse(cmdline));
    let o = net::NetOptions {
        resolv_conf,
        iface_timeout: Duration::from_secs(5),
        carrier_timeout: Duration::from_secs(5),
        dhcp: dhcp::DhcpOptions {
            timeout: Duration::from_secs(timeout),
            ..Default::default()
        },
        ..Default::default()
    };
    match net::bring_up(&p, &o) {
        Ok(c) => print_json(&c),
        Err(e) => {
            eprintln!("byol-agent: {e}");
            1
        }
    }
}

/// Events of a host run: each printed on stderr as it comes.
struct PrintEvents;

impl byol_agent::agent::install::Events for PrintEvents {
    fn send(&mut self, e: byol_spec::AgentEvent) {
        eprintln!("{} {:?}: {}", e.phase, e.status, e.message);
    }
}

fn layout_install(a: LayoutArgs) -> Result<(), String> {
    use byol_agent::agent::install::{self, Boot, BootloaderOptions, Firmware};
    use byol_spec::storage::{PartitionSpec, default_layout};
    let rows: Vec<PartitionSpec> = if a.layout == "default" {
        default_layout()
            .iter()
            .map(byol_spec::request::row_spec)
            .collect()
    } else {
        let text =
            std::fs::read_to_string(&a.layout).or_else(|_| Ok::<_, String>(a.layout.clone()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("--layout: not JSON: {e}"))?;
        let v = match v {
            serde_json::Value::Object(mut o) => o.remove("layout").unwrap_or_default(),
            v => v,
        };
        serde_json::from_value(v).map_err(|e| format!("--layout: {e}"))?
    };
    let storage = byol_spec::StorageSpec {
        scheme: "custom".into(),
        disk_group_id: 1,
        disks: None,
        layout: rows,
    };
    storage.checked().map_err(|e| e.message)?;
    let checksum = match (&a.checksum, &a.checksum_type) {
        (Some(sum), Some(kind)) => Some(Checksum {
            kind: ChecksumType::parse(kind).ok_or_else(|| {
                format!("unknown --checksum-type `{kind}`: use md5, sha1, sha256 or sha512")
            })?,
            hex: sum.trim().to_ascii_lowercase(),
        }),
        _ => None,
    };
    let firmware = match a.firmware.as_str() {
        "bios" => Firmware::Bios,
        "uefi" => Firmware::Uefi,
        f => return Err(format!("--firmware {f}: use bios or uefi")),
    };
    let mut disks = Vec::new();
    for d in &a.disks {
        let name = d
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| format!("--disk {}: not a device path", d.display()))?;
        let size = byol_agent::disk::Disk::open(d, byol_agent::disk::Access::Read)
            .and_then(|x| x.size())
            .map_err(|e| e.to_string())?;
        disks.push(byol_agent::agent::disks::Disk {
            path: d.display().to_string(),
            name,
            size_bytes: size,
            ..Default::default()
        });
    }
    let cfg = byol_spec::AgentConfig {
        install_id: "host".into(),
        machine: "host".into(),
        macs: Vec::new(),
        install: byol_spec::InstallSpec {
            template: byol_spec::TEMPLATE_NAME.into(),
            partition_scheme: "custom".into(),
            hostname: None,
            image_url: a.source.clone(),
            image_type: ImageType::Qcow2,
            checksum,
            http_headers: Vec::new(),
            user_data: None,
            metadata: None,
            ssh_key: None,
            disk_group_id: 1,
            hook_timeout_seconds: None,
            storage: Some(storage),
            efi_bootloader_path: None,
        },
        on_failure: Default::default(),
        disk_hints: Default::default(),
        hook_timeout_seconds: byol_spec::DEFAULT_HOOK_TIMEOUT_SECONDS,
    };
    let o = BootloaderOptions {
        root_mount: a.root.clone(),
        run_hook: !a.no_hook,
        ..BootloaderOptions::default()
    };
    let boot = Boot {
        firmware,
        net: None,
    };
    let t0 = std::time::Instant::now();
    let done = install::byolinux::install(&cfg, &boot, &disks, &o, &mut PrintEvents)
        .map_err(|e| format!("{} failed: {e}", e.phase))?;
    println!(
        "{}",
        serde_json::json!({
            "disks": done.disks,
            "seconds": t0.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}

fn write(a: WriteArgs) -> Result<(), String> {
    let mut o = WriteOptions::new(a.source, a.target);
    o.create_target = true;
    o.use_range = !a.no_range;
    o.memory_budget = a.memory_budget << 20;
    o.expected = match a.format.as_deref() {
        None => None,
        Some("qcow2") => Some(ImageType::Qcow2),
        Some("raw") => Some(ImageType::Raw),
        Some(f) => return Err(format!("--format `{f}`: use qcow2 or raw")),
    };
    if let (Some(sum), Some(kind)) = (&a.checksum, &a.checksum_type) {
        let kind = ChecksumType::parse(kind).ok_or_else(|| {
            format!("unknown --checksum-type `{kind}`: use md5, sha1, sha256 or sha512")
        })?;
        let hex = sum.trim().to_ascii_lowercase();
        if hex.len() != kind.hex_len() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "--checksum is not a valid `{}` checksum: expected {} hexadecimal characters",
                kind.as_str(),
                kind.hex_len()
            ));
        }
        o.checksum = Some(Checksum { kind, hex });
    }
    for h in &a.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| "--header must be 'Name: value'".to_string())?;
        o.source_opts
            .headers
            .push((k.trim().to_string(), Secret::new(v.trim())));
    }
    let mut progress = ConsoleProgress::new(Duration::from_secs(1));
    let summary = engine::write_image(&o, &mut progress).map_err(|e| e.to_string())?;
    println!(
        "{}",
        serde_json::to_string(&summary).map_err(|e| e.to_string())?
    );
    Ok(())
}
