//! `cargo xtask e2e`: the QEMU harness. Starts `byol serve` on loopback, registers a machine
//! with the VM's MAC, starts an install through the OVH endpoint, boots QEMU (TCG) with network
//! boot first — SeaBIOS with the virtio NIC's iPXE ROM, or OVMF (a writable copy of its VARS)
//! with efi-virtio — on user networking whose DHCP bootfile is the server's `/boot.ipxe`, keeps
//! the serial log under target/e2e/, and follows the install's events until the expected ones
//! have arrived. Last line: `e2e: PASS firmware=… seconds=…`, or FAIL with the reason and the
//! serial log's path.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::os::unix::fs::MetadataExt as _;

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

use crate::test_image::{self, Kind, Table};
use crate::{cargo, ensure_packages, root, run};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    Uefi,
}

#[derive(Debug, Clone)]
pub struct Case {
    pub firmware: Firmware,
    /// The test image's partition table.
    pub table: Table,
    pub memory_mib: u32,
    /// virtio, nvme or ahci.
    pub disk: String,
    /// Phases that must be reported `ok` for a pass.
    pub expect: Vec<&'static str>,
    pub timeout: Duration,
    pub mac: String,
    /// The machine's disk hints (byol's own, beyond diskGroupId): with them the VM gets a
    /// second, empty disk first on the bus, which the install must leave untouched.
    pub hints: Option<Value>,
    /// The fast test image (GRUB-only hook, no systemd at boot) instead of the Debian one.
    pub fast: bool,
    /// A fault injected during the run.
    pub fault: Option<Fault>,
    /// How many disks of the install's kind (virtio: several; the others: one).
    pub disks: u32,
    /// The storage layout sent through `POST …/reinstall` (`storage[0].partitioning`, e.g.
    /// `{"layout": [...]}` or `{"schemeName": "default"}`); none: the legacy `install/start`
    /// body, which installs the machine's default scheme.
    pub layout: Option<Value>,
    /// `byoi_64`: the image written to one disk as a block copy, instead of `byolinux_64`.
    pub byoi: bool,
    /// The machine is a libvirt domain with a real BMC (sushy-tools' Redfish or virtualbmc's
    /// IPMI), powered off: byol, given the BMC, must start it for the install by itself.
    pub power: Option<crate::bmclab::Power>,
    /// After the installed system printed its marker, boot it again with each disk removed in
    /// turn (RAID 1): it must print its marker both times.
    pub remove_disks: bool,
    /// What the installed system's marker line must hold besides the marker (its `md=` arrays
    /// and `mounts=` sources).
    pub storage: Vec<&'static str>,
    /// (phase, text) that phase's `ok` message must contain.
    pub messages: Vec<(&'static str, &'static str)>,
}

/// OVH's default scheme with `/` in xfs: the ext4 image is copied file by file (its copy on
/// the second disk's member of `/`'s RAID 1 is the scratch space).
pub const XFS_ROOT_LAYOUT: &str = r#"{"layout": [
    {"mountPoint": "/boot", "fileSystem": "ext4", "raidLevel": 1, "size": 1024},
    {"mountPoint": "/", "fileSystem": "xfs", "raidLevel": 1, "size": 0},
    {"mountPoint": "swap", "fileSystem": "swap", "size": 512}]}"#;

/// The suite's custom layout on three disks: `/boot` RAID 1, `/` and `/home` LVM on RAID 1,
/// swap on every disk, xfs `/data` RAID 5 filling the rest.
pub const CUSTOM_LAYOUT: &str = r#"{"layout": [
    {"mountPoint": "/boot", "fileSystem": "ext4", "raidLevel": 1, "size": 1024},
    {"mountPoint": "/", "fileSystem": "ext4", "raidLevel": 1, "size": 3072, "extras": {"lv": {"name": "root"}}},
    {"mountPoint": "/home", "fileSystem": "ext4", "raidLevel": 1, "size": 512, "extras": {"lv": {"name": "home"}}},
    {"mountPoint": "swap", "fileSystem": "swap", "size": 256},
    {"mountPoint": "/data", "fileSystem": "xfs", "raidLevel": 5, "size": 0}]}"#;

/// The faults `--fault` injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The server is killed when the agent starts the bootloader phase, and started again
    /// (same data, same port) once the agent says its `done` was not acknowledged: the
    /// install ends done, the disk written once.
    KillServerAtBootloader,
    /// The VM is powered off in the middle of the download and started again on the same
    /// disk: the disk was left unbootable, the next boot takes the install over and
    /// reinstalls cleanly.
    PowerOffInDownload,
    /// During the download, someone else fetches the machine's boot script from another
    /// address and tries its token: refused, the install carries on undisturbed.
    SecondIpxeFetch,
}

impl Fault {
    pub const ALL: [Fault; 3] = [
        Fault::KillServerAtBootloader,
        Fault::PowerOffInDownload,
        Fault::SecondIpxeFetch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Fault::KillServerAtBootloader => "kill-server-at-bootloader",
            Fault::PowerOffInDownload => "power-off-in-download",
            Fault::SecondIpxeFetch => "second-ipxe-fetch",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Fault> {
        Fault::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .with_context(|| {
                format!(
                    "--fault {s}: use one of {}",
                    Fault::ALL.map(Fault::as_str).join(", ")
                )
            })
    }
}

impl Case {
    pub fn name(&self) -> String {
        let fw = match self.firmware {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        };
        let mut n = format!("{fw}-{}-{}-{}m", self.table, self.disk, self.memory_mib);
        if self.fast {
            n.push_str("-fast");
        }
        if let Some(f) = self.fault {
            n.push('-');
            n.push_str(f.as_str());
        }
        if self.disks > 1 {
            n.push_str(&format!("-{}disks", self.disks));
        }
        if self.layout.is_some() {
            n.push_str("-layout");
        }
        if self.byoi {
            n.push_str("-byoi");
        }
        if let Some(p) = self.power {
            n.push('-');
            n.push_str(p.as_str());
        }
        n
    }

    pub fn image(&self) -> Kind {
        Kind {
            table: self.table,
            fast: self.fast,
        }
    }
}

/// What a passing run measured.
#[derive(Debug)]
pub struct Outcome {
    pub seconds: f64,
    /// (phase, seconds the agent reported for it)
    pub phases: Vec<(String, f64)>,
    /// (phase, message of its `ok` event)
    pub messages: Vec<(String, String)>,
}

impl Outcome {
    fn message(&self, phase: &str) -> &str {
        self.messages
            .iter()
            .find(|(p, _)| p == phase)
            .map_or("", |(_, m)| m.as_str())
    }
}

pub fn e2e_cmd(args: &[String]) -> anyhow::Result<()> {
    // the five cases `cargo xtask test` runs, alone (to look at the QEMU part by itself)
    if args.iter().any(|a| a == "--suite") {
        let (passed, failed) = suite()?;
        println!("e2e: suite {passed} passed, {failed} failed");
        if failed > 0 {
            bail!("{failed} QEMU end-to-end run(s) failed");
        }
        return Ok(());
    }
    let mut case = default_case(Firmware::Bios);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--firmware" => {
                case.firmware = match val()?.as_str() {
                    "bios" => Firmware::Bios,
                    "uefi" => Firmware::Uefi,
                    f => bail!("--firmware {f}: use bios or uefi"),
                }
            }
            "--memory" => case.memory_mib = val()?.parse().context("--memory MiB")?,
            "--disk" => case.disk = val()?,
            "--table" => case.table = Table::parse(&val()?)?,
            "--fast" => case.fast = true,
            "--fault" => case.fault = Some(Fault::parse(&val()?)?),
            "--disks" => case.disks = val()?.parse().context("--disks N")?,
            "--byoi" => case.byoi = true,
            "--power" => case.power = Some(crate::bmclab::Power::parse(&val()?)?),
            "--remove-disks" => case.remove_disks = true,
            "--layout" => {
                case.layout = Some(match val()?.as_str() {
                    "default" => serde_json::json!({"schemeName": "default"}),
                    "custom" => serde_json::from_str(CUSTOM_LAYOUT)?,
                    "xfs-root" => serde_json::from_str(XFS_ROOT_LAYOUT)?,
                    file => {
                        let text = std::fs::read_to_string(file)
                            .with_context(|| format!("--layout {file}"))?;
                        let v: Value = serde_json::from_str(&text)
                            .with_context(|| format!("--layout {file}: not JSON"))?;
                        match v {
                            Value::Array(_) => serde_json::json!({"layout": v}),
                            v => v,
                        }
                    }
                })
            }
            "--hints" => {
                case.hints = Some(match val()?.as_str() {
                    "by-path" => serde_json::json!({"byPath": AHCI_TARGET_BY_PATH}),
                    json => {
                        serde_json::from_str(json).context("--hints: by-path or a JSON object")?
                    }
                })
            }
            other => bail!(
                "unknown option {other} (--firmware bios|uefi --table mbr|gpt --memory MiB \
                 --disk virtio|nvme|ahci --disks N --layout FILE|default --byoi --remove-disks \
                 --hints by-path|JSON --fast --fault NAME --power redfish|ipmi, or --suite)"
            ),
        }
    }
    case.mac = mac_for(&case);
    prepare(&[case.image()])?;
    match run_case(&case) {
        Ok(o) => {
            report(&case, &o);
            Ok(())
        }
        Err(e) => {
            println!(
                "e2e: FAIL case={} reason={e:#} serial={}",
                case.name(),
                dir_of(&case).join("serial.log").display()
            );
            bail!("e2e failed")
        }
    }
}

pub fn default_case(firmware: Firmware) -> Case {
    Case {
        firmware,
        table: Table::Gpt,
        memory_mib: 512,
        disk: "virtio".into(),
        expect: byol_spec::Phase::INSTALL
            .map(byol_spec::Phase::as_str)
            .to_vec(),
        // the image's hook (apt, GRUB, update-initramfs) takes about 4 minutes under TCG
        timeout: Duration::from_secs(1200),
        mac: String::new(),
        hints: None,
        fast: false,
        fault: None,
        disks: 1,
        layout: None,
        byoi: false,
        power: None,
        remove_disks: false,
        storage: Vec::new(),
        messages: Vec::new(),
    }
    .with_mac()
}

impl Case {
    fn with_mac(mut self) -> Self {
        self.mac = mac_for(&self);
        self
    }
}

/// A MAC per firmware and disk kind, so cases can run side by side.
fn mac_for(c: &Case) -> String {
    let f = match c.firmware {
        Firmware::Bios => 1,
        Firmware::Uefi => 2,
    };
    let d = match c.disk.as_str() {
        "nvme" => 2,
        "ahci" => 3,
        _ => 1,
    };
    let t = match c.table {
        Table::Mbr => 1,
        Table::Gpt => 2,
    };
    format!(
        "52:54:00:e{t}:{f:02x}:{:02x}",
        d + 16 * (c.disks - 1).min(15)
    )
}

/// The runs `cargo xtask test` makes: both firmwares, plus an NVMe and an AHCI disk, two at a
/// time (one core each under TCG). Returns (passed, failed).
pub fn suite() -> anyhow::Result<(u64, u64)> {
    let case = |firmware, table, disk: &str| {
        let mut c = default_case(firmware);
        c.table = table;
        c.disk = disk.into();
        c.with_mac()
    };
    let fast = |c: Case, fault: Option<Fault>| Case {
        fast: true,
        fault,
        timeout: Duration::from_secs(900),
        ..c
    };
    // Two cases on the Debian image, whose hook does what OVHcloud's do (apt, GRUB,
    // update-initramfs: about 4 minutes under TCG) and whose installed system boots systemd:
    // BIOS + MBR + virtio, and UEFI + GPT with two AHCI disks where the install goes to the
    // second, chosen by its /dev/disk/by-path name. Three on the fast image (GRUB-only hook,
    // no systemd), each carrying one fault, so that between them every firmware, table and
    // disk kind is covered: BIOS + GPT + NVMe with a second boot-script fetch, UEFI + MBR +
    // virtio with the server killed at the bootloader, BIOS + MBR + virtio powered off in
    // the download. Two at a time (one core each under TCG), the longest first.
    let cases = [
        Case {
            hints: Some(serde_json::json!({"byPath": AHCI_TARGET_BY_PATH})),
            ..case(Firmware::Uefi, Table::Gpt, "ahci")
        },
        // OVH's default scheme on two disks with `/` in xfs, through the newer body: RAID 1,
        // the ext4 image's files copied (its copy on the second disk's member as scratch), the
        // Debian hook installing GRUB on both disks; booted again with each disk removed
        Case {
            disks: 2,
            layout: Some(serde_json::from_str(XFS_ROOT_LAYOUT).expect("the xfs layout")),
            remove_disks: true,
            storage: vec![
                "md2:raid1[UU]",
                "md3:raid1[UU]",
                "/boot:/dev/md2",
                "/:/dev/md3",
            ],
            messages: vec![(
                "image",
                "files copied from its copy on /dev/vdb3 into xfs /",
            )],
            ..case(Firmware::Bios, Table::Mbr, "virtio")
        }
        .with_mac(),
        // three disks, a custom layout through OVH's newer reinstall body: /boot RAID 1, LVM
        // / and /home on RAID 1, swap, xfs /data RAID 5
        Case {
            disks: 3,
            layout: Some(serde_json::from_str(CUSTOM_LAYOUT).expect("the custom layout")),
            storage: vec![
                "/boot:/dev/md2",
                "/:/dev/mapper/vg-root",
                "/data:/dev/md",
                "raid5",
            ],
            ..fast(case(Firmware::Uefi, Table::Gpt, "virtio"), None)
        }
        .with_mac(),
        // OVH's default scheme (RAID 1) on two disks through the legacy body (the machine's
        // default scheme), booted again with each disk removed
        Case {
            disks: 2,
            remove_disks: true,
            storage: vec!["md2:raid1[UU]", "md3:raid1[UU]"],
            ..fast(case(Firmware::Uefi, Table::Gpt, "virtio"), None)
        }
        .with_mac(),
        // byoi_64: the image's own table, block copy, on one disk
        Case {
            byoi: true,
            ..fast(
                case(Firmware::Uefi, Table::Mbr, "virtio"),
                Some(Fault::KillServerAtBootloader),
            )
        },
        fast(
            case(Firmware::Bios, Table::Gpt, "nvme"),
            Some(Fault::SecondIpxeFetch),
        ),
        fast(
            case(Firmware::Bios, Table::Mbr, "virtio"),
            Some(Fault::PowerOffInDownload),
        ),
        // power control: the machine a powered-off libvirt domain, its BMC a real one
        // (sushy-tools' Redfish over HTTPS, virtualbmc's IPMI); install start alone reinstalls
        // it, then byol's power commands agree with the BMC's own client and with libvirt
        Case {
            power: Some(crate::bmclab::Power::Redfish),
            ..fast(case(Firmware::Uefi, Table::Gpt, "virtio"), None)
        },
        Case {
            power: Some(crate::bmclab::Power::Ipmi),
            ..fast(case(Firmware::Bios, Table::Gpt, "virtio"), None)
        },
    ];
    let kinds: Vec<Kind> = cases.iter().map(Case::image).collect();
    prepare(&kinds)?;
    let (mut passed, mut failed) = (0, 0);
    // two workers take the cases in this order (the longest first), each the next one as
    // soon as it is free: no core waits for a slower partner
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(c) = cases.get(i) else { break };
                    let r = run_case(c);
                    let failure = match &r {
                        Ok(o) => {
                            report(c, o);
                            // md's resync fills every disk: a passed case's disks (up to
                            // 8 GiB each) go, its logs stay; a failed case keeps all
                            drop_disks(c);
                            None
                        }
                        Err(e) => {
                            let line = format!(
                                "e2e: FAIL case={} reason={e:#} serial={}",
                                c.name(),
                                dir_of(c).join("serial.log").display()
                            );
                            println!("{line}");
                            Some(line)
                        }
                    };
                    results
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((c, failure));
                }
            });
        }
    });
    for (c, failure) in results.into_inner().unwrap_or_else(|p| p.into_inner()) {
        let Some(line) = failure else {
            passed += 1;
            continue;
        };
        failed += 1;
        // again at the end, with the console's last lines, so that the tail of a CI log
        // (often all one gets) says which case failed and where it stood
        println!("{line}");
        for l in serial_tail(&dir_of(c).join("serial.log"), 25) {
            println!("e2e[{}] serial| {l}", c.name());
        }
    }
    Ok((passed, failed))
}

fn fw(c: &Case) -> &'static str {
    match c.firmware {
        Firmware::Bios => "bios",
        Firmware::Uefi => "uefi",
    }
}

pub fn report(case: &Case, o: &Outcome) {
    let phases: Vec<String> = o
        .phases
        .iter()
        .map(|(p, s)| format!("{p}={s:.1}s"))
        .collect();
    let image = if case.fast { "fast" } else { "debian" };
    let fault = case
        .fault
        .map(|f| format!(" fault={}", f.as_str()))
        .unwrap_or_default();
    println!(
        "e2e: phases firmware={} table={} disk={} image={image}{fault} {}",
        fw(case),
        case.table,
        case.disk,
        phases.join(" ")
    );
    println!(
        "e2e: PASS firmware={} table={} disk={} image={image}{fault} memory={} seconds={:.0}",
        fw(case),
        case.table,
        case.disk,
        case.memory_mib,
        o.seconds
    );
}

/// The last `n` non-empty lines of a serial log, control characters removed.
fn serial_tail(path: &Path, n: usize) -> Vec<String> {
    let Ok(bytes) = std::fs::read(path) else {
        return vec![format!("(no serial log at {})", path.display())];
    };
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<String> = text
        .split(['\n', '\r'])
        .map(|l| l.chars().filter(|c| !c.is_control()).collect::<String>())
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// Removes a case's disk files (`*.raw`).
fn drop_disks(case: &Case) {
    let Ok(entries) = std::fs::read_dir(dir_of(case)) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "raw") {
            let _ = std::fs::remove_file(&path);
        }
    }
}

fn dir_of(case: &Case) -> PathBuf {
    root().join("target/e2e").join(case.name())
}

/// Builds what the runs need: packages, the server, the kernel and initramfs, the images.
pub fn prepare(images: &[Kind]) -> anyhow::Result<()> {
    ensure_packages(crate::PACKAGES)?;
    run(cargo().args(["build", "--release", "-p", "byol-server"]))?;
    // incremental: rebuilt only when the agent or the kernel changed
    crate::initramfs::initramfs(&[])?;
    for k in images {
        test_image::ensure(*k)?;
    }
    Ok(())
}

pub struct Server {
    child: Child,
    pub port: u16,
    token: String,
    pub data: PathBuf,
    tftp: String,
    log: Option<PathBuf>,
    extra: Vec<String>,
}

impl Server {
    /// Waits for the server to stop (Ctrl-C).
    pub fn wait(&mut self) -> anyhow::Result<()> {
        self.child.wait()?;
        Ok(())
    }
}

impl Server {
    /// SIGKILL, as a crash or a power cut would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on its port, with its data as it was left.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let http = format!("127.0.0.1:{}", self.port);
        let again = spawn_server(&self.data, &http, &self.tftp, self.log.clone(), &self.extra)?;
        // the old one is dead and reaped: dropping it is harmless
        *self = again;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(dir: &Path, extra: &[String]) -> anyhow::Result<Server> {
    let data = dir.join("data");
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_file(dir.join("server.log"));
    spawn_server(
        &data,
        "127.0.0.1:0",
        "off",
        Some(dir.join("server.log")),
        extra,
    )
}

/// `byol serve` with the built kernel and initramfs, a fresh data dir in `dir`, its log to
/// `log` (or the terminal).
pub fn start_server_on(
    dir: &Path,
    http: &str,
    tftp: &str,
    log: Option<PathBuf>,
) -> anyhow::Result<Server> {
    let data = dir.join("data");
    let _ = std::fs::remove_dir_all(&data);
    spawn_server(&data, http, tftp, log, &[])
}

/// `byol serve` on `data` as it is; its log appended to `log` (or the terminal).
fn spawn_server(
    data: &Path,
    http: &str,
    tftp: &str,
    log: Option<PathBuf>,
    extra: &[String],
) -> anyhow::Result<Server> {
    let byol = root().join("target/byol");
    let err = match &log {
        Some(p) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        ),
        None => Stdio::inherit(),
    };
    let mut child =
        crate::signals::die_with_parent(&mut Command::new(crate::release_dir().join("byol")))
            .args(["serve", "--http", http, "--tftp", tftp, "--data-dir"])
            .arg(data)
            .arg("--kernel")
            .arg(byol.join("vmlinuz"))
            .arg("--initramfs")
            .arg(byol.join("initramfs.cpio.zst"))
            .arg("--images-dir")
            .arg(root().join("target/test-image"))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .context("starting byol serve")?;
    let out = child.stdout.take().context("server stdout")?;
    let mut lines = std::io::BufReader::new(out).lines();
    let mut port = None;
    for line in lines.by_ref() {
        let line = line?;
        if let Some(addr) = line.strip_prefix("byol: listening on http://") {
            port = addr.rsplit(':').next().and_then(|p| p.parse().ok());
            break;
        }
    }
    // keep draining stdout so the server never writes to a closed pipe
    std::thread::spawn(move || lines.for_each(drop));
    let port = port.context("the server did not start (see its log)")?;
    let token = std::fs::read_to_string(data.join("admin-token"))?
        .trim()
        .to_string();
    Ok(Server {
        child,
        port,
        token,
        data: data.to_path_buf(),
        tftp: tftp.to_string(),
        log,
        extra: extra.to_vec(),
    })
}

fn api(s: &Server, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<Value> {
    let mut c = Command::new("curl");
    c.args([
        "-sS",
        "-X",
        method,
        "-H",
        &format!("Authorization: Bearer {}", s.token),
    ]);
    if let Some(b) = body {
        c.args(["-H", "content-type: application/json", "--data-binary", b]);
    }
    c.arg(format!("http://127.0.0.1:{}{path}", s.port));
    let out = c.output().context("curl")?;
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{method} {path}: not JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// An OVH install body for the test machine (the image is used from issue 5 on).
pub fn install_body(image_url: &str, extra: &[(&str, &str)]) -> String {
    let mut md = vec![serde_json::json!({"key": "imageURL", "value": image_url})];
    for (k, v) in extra {
        md.push(serde_json::json!({"key": k, "value": v}));
    }
    serde_json::json!({"templateName": "byolinux_64", "partitionSchemeName": "default",
        "details": {"customHostname": "e2e-vm"}, "userMetadata": md})
    .to_string()
}

/// The size of each test disk (sparse files).
const DISK_BYTES: u64 = 8 << 30;

/// With hints, the AHCI controller sits at this PCI address and the install disk on its second
/// port (the first holds the decoy): udev's name for it.
const AHCI_TARGET_BY_PATH: &str = "pci-0000:00:05.0-ata-2.0";

/// QEMU for the case: `fresh` makes new disks (and UEFI variables); else the machine is
/// powered on again as it was left.
fn qemu(case: &Case, dir: &Path, port: u16, fresh: bool) -> anyhow::Result<Child> {
    let all: Vec<u32> = (0..case.disks).collect();
    qemu_with(case, dir, port, fresh, &all, "serial.log", true)
}

/// The file of disk `i` (`disk.raw` for the first).
fn disk_file(dir: &Path, i: u32) -> PathBuf {
    match i {
        0 => dir.join("disk.raw"),
        i => dir.join(format!("disk{i}.raw")),
    }
}

/// The case's disks, new and empty (sparse: room for the default layout's `/` to take the
/// 2 GiB image whole).
fn make_disks(case: &Case, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    (0..case.disks)
        .map(|i| {
            let p = disk_file(dir, i);
            std::fs::File::create(&p)?.set_len(DISK_BYTES)?;
            Ok(p)
        })
        .collect()
}

/// [`qemu`] with only the disks `present` attached, the console to `serial`, and the NIC
/// only with `net` (a machine booting its disks: OVMF's network attempts take minutes).
fn qemu_with(
    case: &Case,
    dir: &Path,
    port: u16,
    fresh: bool,
    present: &[u32],
    serial: &str,
    net: bool,
) -> anyhow::Result<Child> {
    let disk = disk_file(dir, 0);
    let decoy = dir.join("decoy.raw");
    ensure!(
        case.disks == 1 || case.disk == "virtio",
        "--disks {} is tested with --disk virtio",
        case.disks
    );
    if fresh {
        make_disks(case, dir)?;
        let _ = std::fs::remove_file(&decoy);
    }
    if fresh && case.hints.is_some() {
        ensure!(
            case.disk == "ahci",
            "disk hints are tested with --disk ahci"
        );
        std::fs::File::create(&decoy)?.set_len(4 << 30)?;
    }
    let mut c = Command::new("qemu-system-x86_64");
    match case.firmware {
        Firmware::Bios => {
            c.args(["-machine", "pc,accel=tcg"]);
        }
        Firmware::Uefi => {
            let vars = dir.join("OVMF_VARS.fd");
            if fresh {
                std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)?;
            }
            c.args(["-machine", "q35,accel=tcg"]);
            c.args([
                "-drive",
                "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
            ]);
            c.arg("-drive").arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ));
        }
    }
    c.args([
        "-m",
        &case.memory_mib.to_string(),
        "-smp",
        "1",
        "-nodefaults",
        "-display",
        "none",
    ]);
    // appended to when the machine is powered on again
    let serial = dir.join(serial);
    if fresh {
        let _ = std::fs::remove_file(&serial);
    }
    let chardev = format!("file,id=s0,path={},append=on", serial.display());
    c.args(["-chardev", &chardev, "-serial", "chardev:s0"]);
    if net {
        c.args([
            "-netdev",
            &format!("user,id=n0,bootfile=http://10.0.2.2:{port}/boot.ipxe"),
        ]);
        c.args([
            "-device",
            &format!("virtio-net-pci,netdev=n0,mac={},bootindex=1", case.mac),
        ]);
    }
    // an entropy source, as QEMU labs should give their VMs: the agent's RNG is seeded at once
    c.args(["-device", "virtio-rng-pci"]);
    if case.disk != "virtio" {
        c.arg("-drive")
            .arg(format!("file={},if=none,id=d0,format=raw", disk.display()));
    }
    match case.disk.as_str() {
        "virtio" => {
            for &i in present {
                c.arg("-drive").arg(format!(
                    "file={},if=none,id=d{i},format=raw",
                    disk_file(dir, i).display()
                ));
                c.arg("-device").arg(format!(
                    "virtio-blk-pci,drive=d{i},bootindex={},serial=BYOL-E2E-{i}",
                    2 + i
                ));
            }
            &mut c
        }
        "nvme" => c.args(["-device", "nvme,drive=d0,serial=BYOLNVME0,bootindex=2"]),
        "ahci" if case.hints.is_some() => {
            // the decoy first, on port 1 and first in the boot order; the install disk on port 2
            c.arg("-drive")
                .arg(format!("file={},if=none,id=d1,format=raw", decoy.display()));
            c.args([
                "-device",
                "ahci,id=ahci0,addr=0x5",
                "-device",
                "ide-hd,drive=d1,bus=ahci0.0,bootindex=2,serial=BYOL-DECOY",
                "-device",
                "ide-hd,drive=d0,bus=ahci0.1,bootindex=3,serial=BYOL-TARGET",
            ])
        }
        "ahci" => c.args([
            "-device",
            "ahci,id=ahci0",
            "-device",
            "ide-hd,drive=d0,bus=ahci0.0,bootindex=2",
        ]),
        other => bail!("--disk {other}: use virtio, nvme or ahci"),
    };
    c.stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("qemu.stderr"))?);
    crate::signals::die_with_parent(&mut c);
    c.spawn().context("starting qemu-system-x86_64")
}

/// The machine under test: a QEMU process of the harness's own, or a libvirt domain that a
/// BMC powers on and off.
pub enum Vm {
    Qemu(Child),
    Domain(crate::bmclab::Lab),
}

impl Vm {
    /// Why the machine has stopped for good, once it has.
    fn exited(&mut self) -> anyhow::Result<Option<String>> {
        match self {
            Vm::Qemu(c) => Ok(c.try_wait()?.map(|st| format!("QEMU exited ({st})"))),
            Vm::Domain(lab) => lab.stopped(),
        }
    }

    fn stop(&mut self) {
        match self {
            Vm::Qemu(c) => {
                let _ = c.kill();
                let _ = c.wait();
            }
            Vm::Domain(lab) => lab.destroy(),
        }
    }
}

/// One VM run: PASS when every expected phase was reported ok.
pub fn run_case(case: &Case) -> anyhow::Result<Outcome> {
    let dir = dir_of(case);
    std::fs::create_dir_all(&dir)?;
    // a machine that lost power is taken over by its next boot after this much silence
    let extra: Vec<String> = match case.fault {
        Some(Fault::PowerOffInDownload) => vec!["--takeover-after".into(), "20s".into()],
        _ => Vec::new(),
    };
    let mut server = start_server(&dir, &extra)?;
    run_case_on(case, &mut server, &dir)
}

/// One VM run against a running server.
pub fn run_case_on(case: &Case, server: &mut Server, dir: &Path) -> anyhow::Result<Outcome> {
    let v = api(
        server,
        "POST",
        "/api/v1/machines",
        Some(
            &serde_json::json!({"name": "e2e", "macs": [case.mac], "disk": case.hints.clone().unwrap_or(serde_json::json!({}))})
                .to_string(),
        ),
    )?;
    if v.get("name").is_none() {
        bail!("machine add: {v}");
    }
    // the test image, through the OVH endpoint with checksum, headers and user-data
    let img = test_image::ensure(case.image())?;
    let name = img
        .qcow2
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_string();
    let marker = format!("m-{}", case.name());
    let user_data = format!("#cloud-config\nbyol_marker: {marker}\n");
    // the fast image's hook installs GRUB as EFI/debian/grubx64.efi: asked for in another
    // case than FAT's, it must be found and be what the machine boots
    let efi_loader: &[(&str, &str)] = if case.fast && case.firmware == Firmware::Uefi {
        &[("efiBootloaderPath", "\\efi\\DEBIAN\\grubx64.efi")]
    } else {
        &[]
    };
    let body = install_body(
        &format!("http://10.0.2.2:{}/images/{name}", server.port),
        &[
            efi_loader,
            &[("imageCheckSum", &img.sha512)],
            &[
                ("imageCheckSumType", "sha512"),
                ("httpHeaders0Key", "X-Byol-E2e"),
                ("httpHeaders0Value", "secret-e2e-header"),
                ("configDriveUserData", &b64(user_data.as_bytes())),
                (
                    "sshKey",
                    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl e2e@byol",
                ),
            ],
        ]
        .concat(),
    );
    let (path, body) = match &case.layout {
        // OVH's newer body, with the layout
        Some(partitioning) => {
            let legacy: Value = serde_json::from_str(&body)?;
            let mut custom = serde_json::Map::new();
            custom.insert("hostname".into(), "e2e-vm".into());
            for m in legacy["userMetadata"].as_array().into_iter().flatten() {
                let (k, v) = (m["key"].as_str().unwrap_or(""), m["value"].clone());
                match k.strip_prefix("httpHeaders") {
                    Some(rest) if rest.ends_with("Key") => {}
                    Some(_) => {
                        custom.insert("httpHeaders".into(), serde_json::json!({"X-Byol-E2e": v}));
                    }
                    None => {
                        custom.insert(k.into(), v);
                    }
                }
            }
            let b = serde_json::json!({
                "operatingSystem": if case.byoi { "byoi_64" } else { "byolinux_64" },
                "customizations": custom,
                "storage": [{"diskGroupId": 1, "partitioning": partitioning}],
            });
            ("/dedicated/server/e2e/reinstall", b.to_string())
        }
        None if case.byoi => (
            "/dedicated/server/e2e/install/start",
            body.replace("\"byolinux_64\"", "\"byoi_64\""),
        ),
        None => ("/dedicated/server/e2e/install/start", body),
    };
    // a BMC case: the machine is a powered-off libvirt domain, and byol gets its BMC
    let lab = match case.power {
        Some(kind) => Some(power_lab(case, server, dir, kind)?),
        None => None,
    };
    let v = api(server, "POST", path, Some(&body))?;
    v["taskId"]
        .as_i64()
        .with_context(|| format!("install start: {v}"))?;
    let l = api(server, "GET", "/api/v1/machines/e2e/installs", None)?;
    let id = l["installs"][0]["id"]
        .as_str()
        .with_context(|| format!("the install just started: {l}"))?
        .to_string();
    let t0 = Instant::now();
    let (mut vm, bmc) = match lab {
        // install start alone: byol's BMC calls power the domain on
        Some((lab, access)) => (Vm::Domain(lab), Some(access)),
        None => (Vm::Qemu(qemu(case, dir, server.port, true)?), None),
    };
    let mut res = follow(case, server, &id, t0, &mut vm, dir);
    if res.is_ok() {
        res = check_fault(case, server, &id, dir).and(res);
    }
    if let Ok(o) = &res {
        // the VM reboots, the server answers local boot, the installed system prints its marker
        let want = format!(" hostname=e2e-vm marker={marker}");
        let installed_at = o.seconds;
        res = wait_marker(case, &dir.join("serial.log"), &want, t0, &mut vm).and_then(|m| {
            check_boot(case, o, &m.line)?;
            for s in &case.storage {
                ensure!(
                    m.line.contains(s),
                    "the installed system's marker line lacks `{s}`: {}",
                    m.line
                );
            }
            for (phase, text) in &case.messages {
                ensure!(
                    o.message(phase).contains(text),
                    "the {phase} event does not say `{text}`: {}",
                    o.message(phase)
                );
            }
            Ok(Outcome {
                seconds: m.seconds,
                phases: {
                    let mut p = o.phases.clone();
                    p.push(("rebooted-to-marker".into(), m.seconds - installed_at));
                    p
                },
                messages: o.messages.clone(),
            })
        });
    }
    if let (Ok(o), Vm::Domain(lab), Some(access)) = (&res, &mut vm, &bmc) {
        res = check_power(case, server, o, lab, access, dir).and(res);
    }
    vm.stop();
    if res.is_ok() && case.remove_disks {
        // RAID 1: the installed system boots from any one disk
        let want = format!(" hostname=e2e-vm marker={marker}");
        for gone in 0..case.disks {
            let left: Vec<u32> = (0..case.disks).filter(|&i| i != gone).collect();
            let log = format!("serial-without-disk{gone}.log");
            let t = Instant::now();
            let _ = std::fs::remove_file(dir.join(&log));
            let mut vm = Vm::Qemu(qemu_with(
                case,
                dir,
                server.port,
                false,
                &left,
                &log,
                false,
            )?);
            let m = wait_marker(case, &dir.join(&log), &want, t, &mut vm);
            vm.stop();
            let m = m.with_context(|| format!("booting with disk {gone} removed"))?;
            ensure!(
                m.line.contains("md=") && !m.line.contains("md=none"),
                "booted with disk {gone} removed, but no md array: {}",
                m.line
            );
            eprintln!(
                "e2e[{}] booted with disk {gone} removed in {:.1}s",
                case.name(),
                m.seconds
            );
        }
    }
    if res.is_ok() {
        // with virtio-rng and its driver in the initramfs, the agent never waits for entropy
        let log = String::from_utf8_lossy(&std::fs::read(dir.join("serial.log"))?).into_owned();
        ensure!(
            !log.contains("random number generator is not seeded"),
            "the agent found the kernel's RNG unseeded despite virtio-rng"
        );
    }
    if res.is_ok() && case.hints.is_some() {
        // the decoy disk was never written: not one block allocated in its file
        let blocks = std::fs::metadata(dir.join("decoy.raw"))?.blocks();
        if blocks != 0 {
            bail!("the decoy disk was written ({blocks} blocks): the hints chose the wrong disk");
        }
        let chose = res.as_ref().map(|o| o.message("disk")).unwrap_or("");
        // the kernel names the two AHCI disks in either order (sda or sdb): the disk is the
        // one with the target's serial, on port 2
        ensure!(
            chose.starts_with("installing on /dev/sd")
                && chose.contains("match it alone")
                && chose.contains("serial \"BYOL-TARGET\"")
                && chose.contains(&format!("by-path {AHCI_TARGET_BY_PATH}")),
            "the disk event does not say the hints chose the BYOL-TARGET disk: {chose}"
        );
    }
    res
}

/// The BMC case's lab: a libvirt daemon, the machine as a powered-off domain (the case's disks,
/// MAC and console), the BMC emulator, and the BMC given to byol with `byol machine bmc`.
fn power_lab(
    case: &Case,
    server: &Server,
    dir: &Path,
    kind: crate::bmclab::Power,
) -> anyhow::Result<(crate::bmclab::Lab, crate::bmclab::BmcAccess)> {
    ensure!(
        case.disk == "virtio" && case.hints.is_none() && case.fault.is_none(),
        "--power is tested with --disk virtio, no hints and no fault"
    );
    let disks = make_disks(case, dir)?;
    let serial = dir.join("serial.log");
    let _ = std::fs::remove_file(&serial);
    let nvram = dir.join("OVMF_VARS.fd");
    if case.firmware == Firmware::Uefi {
        std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &nvram)?;
    }
    let mut lab = crate::bmclab::Lab::start(&dir.join("lab"))?;
    let name = format!("byol-{}", case.name());
    lab.define(&crate::bmclab::DomainSpec {
        name: &name,
        uefi: case.firmware == Firmware::Uefi,
        memory_mib: case.memory_mib,
        mac: &case.mac,
        disks: &disks,
        serial: &serial,
        nvram: &nvram,
        bootfile: &format!("http://10.0.2.2:{}/boot.ipxe", server.port),
    })?;
    let access = lab.start_bmc(kind)?;
    ensure!(
        lab.state()? == "shut off",
        "the domain is not powered off before the install"
    );
    let pw = dir.join("bmc-password");
    std::fs::write(&pw, format!("{}\n", access.password))?;
    let mut args: Vec<String> = vec!["machine".into(), "bmc".into(), "e2e".into()];
    match kind {
        crate::bmclab::Power::Redfish => {
            let ca = dir.join("bmc-ca.pem");
            std::fs::write(&ca, access.ca_pem.as_deref().unwrap_or(""))?;
            args.extend([
                "--redfish".into(),
                access.address.clone(),
                "--ca-file".into(),
                ca.display().to_string(),
            ]);
        }
        crate::bmclab::Power::Ipmi => args.extend(["--ipmi".into(), access.address.clone()]),
    }
    args.extend([
        "--user".into(),
        access.user.clone(),
        "--password-file".into(),
        pw.display().to_string(),
    ]);
    let said = byol_cli(server, &args)?;
    eprintln!("e2e[{}] byol {}: {said}", case.name(), args.join(" "));
    Ok((lab, access))
}

/// `byol ARGS` as the operator runs it, against the case's server.
fn byol_cli(server: &Server, args: &[String]) -> anyhow::Result<String> {
    output_of(
        Command::new(crate::release_dir().join("byol"))
            .args(args)
            .args(["--server", &format!("http://127.0.0.1:{}", server.port)])
            .env("BYOL_TOKEN", &server.token),
    )
}

/// After a BMC case's install: byol powered the machine on from off, the BMC has the network
/// first, and byol's power commands agree with the BMC's own client (ipmitool, curl) and with
/// libvirt, on and then off.
fn check_power(
    case: &Case,
    server: &Server,
    o: &Outcome,
    lab: &mut crate::bmclab::Lab,
    access: &crate::bmclab::BmcAccess,
    dir: &Path,
) -> anyhow::Result<()> {
    use crate::bmclab::Power;
    let kind = access.kind;
    let started = o.message("power");
    let on = match kind {
        Power::Redfish => "ResetType On",
        Power::Ipmi => "chassis power on",
    };
    ensure!(
        started.contains("the machine was off") && started.contains(on),
        "the power event does not say byol powered the machine on: {started}"
    );
    let order = lab.boot_order()?;
    ensure!(
        order.first().map(String::as_str) == Some("network"),
        "the BMC left the domain's boot order {order:?}: the network must be first"
    );
    // what the BMC's own client says
    let reference = || -> anyhow::Result<String> {
        Ok(match kind {
            Power::Ipmi => {
                let st = crate::bmclab::ipmitool(access, &["chassis", "power", "status"])?;
                st.trim_start_matches("Chassis Power is ").to_string()
            }
            Power::Redfish => {
                let get = |path: &str| -> anyhow::Result<Value> {
                    Ok(serde_json::from_str(&output_of(
                        Command::new("curl")
                            .args(["-sSf", "--cacert"])
                            .arg(dir.join("bmc-ca.pem"))
                            .args(["-u", &format!("{}:{}", access.user, access.password)])
                            .arg(format!("{}{path}", access.address)),
                    )?)?)
                };
                let v = get("/redfish/v1/Systems")?;
                let sys = v["Members"][0]["@odata.id"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                get(&sys)?["PowerState"]
                    .as_str()
                    .unwrap_or("?")
                    .to_lowercase()
            }
        })
    };
    if kind == Power::Ipmi {
        let flags = crate::bmclab::ipmitool(access, &["chassis", "bootparam", "get", "5"])?;
        ensure!(
            flags.contains("Force PXE"),
            "ipmitool reads the boot flags as: {flags}"
        );
    }
    let byol = |action: &str| -> anyhow::Result<String> {
        let out = byol_cli(
            server,
            &[
                "machine".into(),
                "power".into(),
                "e2e".into(),
                action.into(),
            ],
        )?;
        eprintln!(
            "e2e[{}] byol machine power e2e {action}: {out}",
            case.name()
        );
        Ok(out)
    };
    // the fast image's installed system powers off after its marker: off, then on, then off,
    // each time byol, the BMC's own client and libvirt agreeing
    let t0 = Instant::now();
    while lab.state()? != "shut off" && t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_secs(1));
    }
    for (action, want, domstate) in [
        ("status", "off", "shut off"),
        ("on", "on", "running"),
        ("off", "off", "shut off"),
    ] {
        let said = byol(action)?;
        let t0 = Instant::now();
        while lab.state()? != domstate && t0.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(500));
        }
        let seen = reference()?;
        let state = lab.state()?;
        ensure!(
            said.contains(&format!("power is {want}")) && seen == want && state == domstate,
            "byol machine power e2e {action}: byol says `{said}`, the BMC's client `{seen}`, \
             libvirt `{state}`; all should say {want}"
        );
    }
    Ok(())
}

/// What the installed system says about how it booted (`efi=<BootCurrent>/<BootOrder>` in
/// its marker line) against what the agent set up: on UEFI, the firmware started the boot
/// entry the agent made, and network boot is still first in BootOrder.
fn check_boot(case: &Case, o: &Outcome, line: &str) -> anyhow::Result<()> {
    let efi = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("efi="))
        .with_context(|| format!("no efi= in the marker line `{line}`"))?;
    if case.firmware == Firmware::Bios {
        ensure!(efi == "none", "a BIOS machine reports efi={efi}");
        return Ok(());
    }
    let msg = o.message("bootloader");
    let entry = msg
        .split_once("boot entry Boot")
        .map(|(_, r)| r.chars().take(4).collect::<String>())
        .with_context(|| format!("the bootloader event names no boot entry: {msg}"))?;
    let (current, order) = efi
        .split_once('/')
        .with_context(|| format!("efi={efi} is not BootCurrent/BootOrder"))?;
    let order: Vec<&str> = order.split(',').collect();
    ensure!(
        current == entry,
        "the installed system booted from Boot{current}, not from the entry the agent made (Boot{entry}); BootOrder {order:?}"
    );
    ensure!(
        order.first() != Some(&entry.as_str()) && order.contains(&entry.as_str()),
        "BootOrder {order:?}: the agent's Boot{entry} must be in it, after network boot"
    );
    Ok(())
}

/// The installed system's marker line and when it came.
struct Marker {
    seconds: f64,
    line: String,
}

fn wait_marker(
    case: &Case,
    serial: &Path,
    want: &str,
    t0: Instant,
    vm: &mut Vm,
) -> anyhow::Result<Marker> {
    loop {
        let log = std::fs::read(serial).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        if let Some(line) = log.lines().find(|l| l.contains("BYOL-E2E-MARKER")) {
            let line = line.trim();
            if line.ends_with(want) {
                eprintln!(
                    "e2e[{}] {:>6.1}s {line}",
                    case.name(),
                    t0.elapsed().as_secs_f64()
                );
                return Ok(Marker {
                    seconds: t0.elapsed().as_secs_f64(),
                    line: line.to_string(),
                });
            }
            bail!("the installed system printed `{line}`, expected it to end with `{want}`");
        }
        if t0.elapsed() > case.timeout {
            bail!("timeout: the installed system never printed its marker");
        }
        if let Some(why) = vm.exited()? {
            bail!("{why} before the installed system printed its marker");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Standard base64 (for configDriveUserData).
fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// What a fault did during [`follow`], for [`check_fault`].
#[derive(Debug, Default)]
struct Injected {
    done: bool,
    /// Kill-server: the server is down, waiting for the agent's failed `done`.
    server_down: bool,
    /// Second-fetch: what the stray token's config fetch got.
    stray_answer: Option<String>,
}

fn follow(
    case: &Case,
    s: &mut Server,
    id: &str,
    t0: Instant,
    vm: &mut Vm,
    dir: &Path,
) -> anyhow::Result<Outcome> {
    let mut after = 0i64;
    let mut ok: Vec<(String, f64)> = Vec::new();
    let mut messages: Vec<(String, String)> = Vec::new();
    let mut f = Injected::default();
    loop {
        if t0.elapsed() > case.timeout {
            bail!(
                "timeout after {:.0} s; phases seen: {:?}",
                t0.elapsed().as_secs_f64(),
                ok
            );
        }
        if let Some(why) = vm.exited()? {
            bail!("{why} after {:.0} s", t0.elapsed().as_secs_f64());
        }
        if f.server_down {
            // the agent keeps its done until the server has it: start the server again
            // once the agent says the server did not acknowledge it
            let log = String::from_utf8_lossy(&std::fs::read(dir.join("serial.log"))?).into_owned();
            if log.contains("the server has not acknowledged the last report yet") {
                eprintln!(
                    "e2e[{}] {:>6.1}s fault: the agent's done was not acknowledged: starting the server again",
                    case.name(),
                    t0.elapsed().as_secs_f64()
                );
                s.restart()?;
                f.server_down = false;
            }
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        let v = api(
            s,
            "GET",
            &format!("/api/v1/installs/{id}/events?after={after}"),
            None,
        )?;
        for e in v["events"].as_array().into_iter().flatten() {
            after = e["seq"].as_i64().unwrap_or(after);
            let phase = e["phase"].as_str().unwrap_or("?").to_string();
            let status = e["status"].as_str().unwrap_or("?");
            eprintln!(
                "e2e[{}] {:>6.1}s {phase:<12} {status:<8} {}",
                case.name(),
                t0.elapsed().as_secs_f64(),
                e["message"].as_str().unwrap_or("")
            );
            for l in e["logs"].as_array().into_iter().flatten() {
                eprintln!(
                    "e2e[{}]         | {}",
                    case.name(),
                    l.as_str().unwrap_or("")
                );
            }
            if status == "failed" {
                bail!("the agent reported {phase} failed: {}", e["message"]);
            }
            if status == "ok" || status == "done" {
                messages.push((phase.clone(), e["message"].as_str().unwrap_or("").into()));
                ok.push((phase.clone(), e["seconds"].as_f64().unwrap_or(0.0)));
            }
            if !f.done {
                inject(case, s, e, &mut f, vm, dir, t0)?;
            }
        }
        if case.expect.iter().all(|p| ok.iter().any(|(q, _)| q == p)) {
            ensure!(
                case.fault.is_none() || f.done,
                "the fault {} was never injected",
                case.fault.map_or("", Fault::as_str)
            );
            if let Some(answer) = f.stray_answer {
                messages.push(("stray-config".into(), answer));
            }
            return Ok(Outcome {
                seconds: t0.elapsed().as_secs_f64(),
                phases: ok,
                messages,
            });
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The case's fault, at the event that triggers it.
fn inject(
    case: &Case,
    s: &mut Server,
    e: &Value,
    f: &mut Injected,
    vm: &mut Vm,
    dir: &Path,
    t0: Instant,
) -> anyhow::Result<()> {
    let phase = e["phase"].as_str().unwrap_or("");
    let say = |what: &str| {
        eprintln!(
            "e2e[{}] {:>6.1}s fault: {what}",
            case.name(),
            t0.elapsed().as_secs_f64()
        )
    };
    let share = match (e["bytes_done"].as_u64(), e["bytes_total"].as_u64()) {
        (Some(d), Some(t)) if t > 0 => d as f64 / t as f64,
        _ => 0.0,
    };
    match case.fault {
        Some(Fault::KillServerAtBootloader) if phase == "bootloader" => {
            say("killing the server (SIGKILL) at the bootloader phase");
            s.kill();
            f.server_down = true;
            f.done = true;
        }
        Some(Fault::PowerOffInDownload) if phase == "download" && share >= 0.3 => {
            say(&format!(
                "powering the VM off at {:.0}% of the download",
                share * 100.0
            ));
            vm.stop();
            // never a bootable half-written disk: the image's first MiB is not there yet
            let mut head = vec![0u8; 1 << 20];
            std::io::Read::read_exact(&mut std::fs::File::open(dir.join("disk.raw"))?, &mut head)?;
            ensure!(
                head.iter().all(|&b| b == 0),
                "the disk's first MiB is not zero after a power cut in the download"
            );
            say("the disk's first MiB is zero: nothing boots from it; powering the VM on again");
            *vm = Vm::Qemu(qemu(case, dir, s.port, false)?);
            f.done = true;
        }
        Some(Fault::SecondIpxeFetch) if phase == "download" => {
            say("fetching the machine's boot script from 127.0.0.2 and trying its token");
            let url = format!("http://127.0.0.1:{}", s.port);
            let script = output_of(Command::new("curl").args([
                "-sS",
                "--interface",
                "127.0.0.2",
                &format!("{url}/ipxe/{}", case.mac),
            ]))?;
            let token = script
                .split("byol.token=")
                .nth(1)
                .map(|t| {
                    t.chars()
                        .take_while(char::is_ascii_hexdigit)
                        .collect::<String>()
                })
                .filter(|t| t.len() == 64)
                .with_context(|| format!("no token in the second boot script: {script}"))?;
            let answer = output_of(Command::new("curl").args([
                "-sS",
                "--interface",
                "127.0.0.2",
                "-w",
                " HTTP %{http_code}",
                "-H",
                &format!("Authorization: Bearer {token}"),
                &format!("{url}/agent/v1/config"),
            ]))?;
            say(&format!("the stray token's config fetch: {answer}"));
            ensure!(
                answer.ends_with(" HTTP 409") && answer.contains("\"state\":\"busy\""),
                "a second boot script's token got past the running install: {answer}"
            );
            f.stray_answer = Some(answer);
            f.done = true;
        }
        _ => {}
    }
    Ok(())
}

/// After a passing run with a fault: what must hold in the install's history.
fn check_fault(case: &Case, s: &Server, id: &str, dir: &Path) -> anyhow::Result<()> {
    let Some(fault) = case.fault else {
        return Ok(());
    };
    let v = api(s, "GET", &format!("/api/v1/installs/{id}/events"), None)?;
    let events: Vec<&Value> = v["events"].as_array().into_iter().flatten().collect();
    let count = |phase: &str, status: &str| {
        events
            .iter()
            .filter(|e| e["phase"] == phase && e["status"] == status)
            .count()
    };
    let inst = api(s, "GET", &format!("/api/v1/installs/{id}"), None)?;
    ensure!(
        inst["state"] == "done",
        "the install is {}, not done",
        inst["state"]
    );
    let serial = String::from_utf8_lossy(&std::fs::read(dir.join("serial.log"))?).into_owned();
    match fault {
        Fault::KillServerAtBootloader => {
            ensure!(
                count("download", "ok") == 1,
                "the disk was written {} times",
                count("download", "ok")
            );
            ensure!(
                count("done", "done") == 1,
                "done recorded {} times",
                count("done", "done")
            );
            ensure!(
                serial.contains("the server has acknowledged the install"),
                "the agent never said the server acknowledged its done"
            );
        }
        Fault::PowerOffInDownload => {
            let boots: std::collections::BTreeSet<i64> =
                events.iter().filter_map(|e| e["boot"].as_i64()).collect();
            ensure!(
                boots.len() >= 2,
                "the install saw boots {boots:?}, not a second one"
            );
            let took = events.iter().any(|e| {
                e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("took over the install from boot 1"))
            });
            ensure!(
                took,
                "no takeover by the second boot in the install's history"
            );
            ensure!(
                count("download", "ok") == 1,
                "download ok {} times",
                count("download", "ok")
            );
        }
        Fault::SecondIpxeFetch => {
            ensure!(
                events
                    .iter()
                    .all(|e| e["boot"].as_i64().is_none_or(|b| b == 1)),
                "events from another boot than the machine's"
            );
            ensure!(
                count("download", "ok") == 1,
                "download ok {} times",
                count("download", "ok")
            );
        }
    }
    Ok(())
}

fn output_of(c: &mut Command) -> anyhow::Result<String> {
    let out = c.output().with_context(|| format!("running {c:?}"))?;
    ensure!(
        out.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
