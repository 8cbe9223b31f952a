//! disks: the machine's disk inventory, read from sysfs (`/sys/block`): size, sector sizes,
//! model, serial, WWN, rotational, removable, read-only and transport (nvme, sata, sas, scsi,
//! virtio, virtio-scsi, usb, mmc), so that the operator sees what the machine has and the
//! install (issue "part 2") can pick its disk. Loop, RAM, zram, device-mapper, md RAID,
//! optical, floppy and network block devices are left out, and so are empty drives (size 0).
//! The sysfs root is a parameter so that tests can use a fake tree.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

/// One disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Disk {
    /// Kernel name (`vda`, `sda`, `nvme0n1`).
    pub name: String,
    /// Device node (`/dev/vda`).
    pub path: String,
    pub size_bytes: u64,
    pub logical_sector: u32,
    pub physical_sector: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wwn: Option<String>,
    pub rotational: bool,
    pub removable: bool,
    pub read_only: bool,
    /// `nvme`, `sata`, `sas`, `scsi`, `virtio`, `virtio-scsi`, `usb`, `mmc` or `unknown`.
    pub transport: String,
    /// The names udev gives the disk under `/dev/disk/by-path/` on the installed system (no udev
    /// runs here: computed from sysfs like udev's `path_id`), the current form first.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub by_path: Vec<String>,
}

/// Kernel names that are not disks to install on.
const SKIPPED: &[&str] = &[
    "loop", "ram", "zram", "dm-", "md", "sr", "fd", "nbd", "mtdblock",
];

fn skipped(name: &str) -> bool {
    SKIPPED.iter().any(|p| name.starts_with(p))
}

fn read_trim(p: &Path) -> Option<String> {
    let s = fs::read_to_string(p).ok()?;
    let s = s.trim().trim_matches('\0').trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// A vendor or model name: not the numeric ids some buses put in files of the same name
/// (a virtio device's `vendor` is `0x1af4`).
fn read_name(p: &Path) -> Option<String> {
    read_trim(p).filter(|s| !s.starts_with("0x"))
}

fn read_num(p: &Path) -> Option<u64> {
    read_trim(p)?.parse().ok()
}

/// The serial from SCSI VPD page 0x80 (unit serial number): 4-byte header, then ASCII.
fn vpd_serial(p: &Path) -> Option<String> {
    let b = fs::read(p).ok()?;
    if b.len() < 4 || b[1] != 0x80 {
        return None;
    }
    let len = (b[3] as usize).min(b.len() - 4);
    let s = String::from_utf8_lossy(&b[4..4 + len]);
    let s = s.trim().trim_matches('\0').trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// The transport, from where the disk sits in the device tree.
fn transport(name: &str, devpath: &str) -> &'static str {
    let has = |s: &str| devpath.contains(s);
    if name.starts_with("nvme") || has("/nvme") {
        "nvme"
    } else if has("/usb") {
        "usb"
    } else if has("/end_device-") || has("/sas_") || has("/port-") {
        "sas"
    } else if devpath.split('/').any(|c| {
        c.strip_prefix("ata")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }) {
        "sata"
    } else if has("/virtio") && has("/host") {
        "virtio-scsi"
    } else if has("/virtio") {
        "virtio"
    } else if has("/mmc") {
        "mmc"
    } else if has("/target") {
        "scsi"
    } else {
        "unknown"
    }
}

/// Reads one disk, or None when it is not one to list.
pub fn read_disk(sysfs: &Path, name: &str) -> Option<Disk> {
    if skipped(name) {
        return None;
    }
    let dir = sysfs.join("block").join(name);
    let sectors = read_num(&dir.join("size"))?;
    if sectors == 0 {
        return None;
    }
    let devpath: PathBuf = fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
    let devpath = devpath.to_string_lossy().into_owned();
    let dev = dir.join("device");
    let logical = read_num(&dir.join("queue/logical_block_size")).unwrap_or(512) as u32;
    let serial = read_trim(&dir.join("serial"))
        .or_else(|| read_trim(&dev.join("serial")))
        .or_else(|| vpd_serial(&dev.join("vpd_pg80")));
    let wwn = read_trim(&dir.join("wwid"))
        .or_else(|| read_trim(&dev.join("wwid")))
        .or_else(|| read_trim(&dev.join("wwn")));
    Some(Disk {
        name: name.to_string(),
        path: format!("/dev/{name}"),
        size_bytes: sectors * 512,
        logical_sector: logical,
        physical_sector: read_num(&dir.join("queue/physical_block_size"))
            .map(|n| n as u32)
            .unwrap_or(logical),
        vendor: read_name(&dev.join("vendor")),
        model: read_name(&dev.join("model")),
        serial,
        wwn,
        rotational: read_num(&dir.join("queue/rotational")) == Some(1),
        removable: read_num(&dir.join("removable")) == Some(1),
        read_only: read_num(&dir.join("ro")) == Some(1),
        transport: transport(name, &devpath).to_string(),
        by_path: by_path(&dir, &devpath),
    })
}

/// A PCI address as sysfs names devices: `0000:00:1f.2`.
fn is_pci_address(c: &str) -> bool {
    let b = c.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && c.chars()
            .enumerate()
            .all(|(i, ch)| [4, 7, 10].contains(&i) || ch.is_ascii_hexdigit())
}

/// `H:B:T:L` → the four numbers.
fn hctl(c: &str) -> Option<[u32; 4]> {
    let v: Vec<u32> = c
        .split(':')
        .map(|n| n.parse().ok())
        .collect::<Option<_>>()?;
    v.try_into().ok()
}

/// The `/dev/disk/by-path/` names of the disk whose sysfs directory is `dir` and canonical
/// path `devpath`, as systemd-udev's `path_id` builds them for the buses byol installs on:
/// the PCI device nearest the disk, then `nvme-<nsid>`, `ata-<port>.<target>` (and the older
/// `ata-<port>`), `sas-<address>-lun-<lun>`, `scsi-<host>:<bus>:<target>:<lun>`, or nothing
/// for virtio-blk (plus its `virtio-pci-…` name). Empty when the path is not one of those.
pub fn by_path(dir: &Path, devpath: &str) -> Vec<String> {
    let comps: Vec<&str> = devpath.split('/').collect();
    // a multipath NVMe namespace sits under the virtual nvme-subsystem device: udev names it
    // by its first controller's path (`multipath/nvme0c0n1`), with the namespace's nsid
    if comps.contains(&"nvme-subsystem") {
        let first = fs::read_dir(dir.join("multipath")).ok().and_then(|rd| {
            let mut v: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            v.sort();
            v.into_iter().next()
        });
        return match first.and_then(|p| fs::canonicalize(p).ok()) {
            Some(ctrl) if !ctrl.to_string_lossy().contains("nvme-subsystem") => {
                by_path(dir, &ctrl.to_string_lossy())
            }
            _ => Vec::new(),
        };
    }
    let Some(pci_at) = comps.iter().rposition(|c| is_pci_address(c)) else {
        return Vec::new();
    };
    let pci = format!("pci-{}", comps[pci_at]);
    let below = &comps[pci_at + 1..];
    // the devices directory up to component `i` of `below`
    let up_to = |i: usize| -> PathBuf { PathBuf::from(comps[..=pci_at + 1 + i].join("/")) };
    if below.first().is_some_and(|c| *c == "nvme") {
        return match read_num(&dir.join("nsid")) {
            Some(ns) => vec![format!("{pci}-nvme-{ns}")],
            None => Vec::new(),
        };
    }
    if below.first().is_some_and(|c| c.starts_with("virtio")) && below.get(1) == Some(&"block") {
        return vec![pci.clone(), format!("virtio-{pci}")];
    }
    if below.iter().any(|c| c.starts_with("usb")) {
        return Vec::new();
    }
    // SCSI disks: the H:B:T:L device is the component right before `block`.
    let Some(block_at) = below.iter().position(|c| *c == "block") else {
        return Vec::new();
    };
    let Some(dev_at) = block_at.checked_sub(1) else {
        return Vec::new();
    };
    let Some([host, bus, target, lun]) = hctl(below[dev_at]) else {
        return Vec::new();
    };
    if let Some(ata_at) = below.iter().position(|c| {
        c.strip_prefix("ata")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }) {
        let port = up_to(ata_at)
            .join("ata_port")
            .join(below[ata_at])
            .join("port_no");
        let Some(port) = read_trim(&port) else {
            return Vec::new();
        };
        return if bus != 0 {
            vec![format!("{pci}-ata-{port}.{bus}.0")]
        } else {
            vec![
                format!("{pci}-ata-{port}.{target}"),
                format!("{pci}-ata-{port}"),
            ]
        };
    }
    if let Some(end_at) = below.iter().position(|c| c.starts_with("end_device-")) {
        let addr = up_to(end_at)
            .join("sas_device")
            .join(below[end_at])
            .join("sas_address");
        return match read_trim(&addr) {
            Some(a) => vec![format!("{pci}-sas-{a}-lun-{lun}")],
            None => Vec::new(),
        };
    }
    // plain SCSI (virtio-scsi, HBAs): the host number counted from the first host of its parent
    let Some(host_at) = below.iter().position(|c| *c == format!("host{host}")) else {
        return Vec::new();
    };
    let parent = if host_at == 0 {
        PathBuf::from(comps[..=pci_at].join("/"))
    } else {
        up_to(host_at - 1)
    };
    let base = fs::read_dir(&parent)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix("host"))
                        .and_then(|n| n.parse::<u32>().ok())
                })
                .min()
                .unwrap_or(host)
        })
        .unwrap_or(host);
    vec![format!(
        "{pci}-scsi-{}:{bus}:{target}:{lun}",
        host.saturating_sub(base)
    )]
}

/// The disks under `<sysfs>/block`, by name.
pub fn inventory(sysfs: &Path) -> Vec<Disk> {
    let mut names: Vec<String> = fs::read_dir(sysfs.join("block"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.iter().filter_map(|n| read_disk(sysfs, n)).collect()
}

/// The inventory once it stopped changing for `quiet` (disks behind some controllers are
/// probed asynchronously after their driver loaded), or after `max`.
pub fn wait_stable(sysfs: &Path, quiet: Duration, max: Duration) -> Vec<Disk> {
    let start = Instant::now();
    let mut last = inventory(sysfs);
    let mut since = Instant::now();
    while since.elapsed() < quiet && start.elapsed() < max {
        std::thread::sleep(Duration::from_millis(200));
        let now = inventory(sysfs);
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    last
}

pub use byol_spec::text::human;

impl Disk {
    /// One line with everything: `vda: 20.0 GiB (21474836480 bytes), virtio, serial "x",
    /// SSD, fixed, sectors 512/512`.
    pub fn line(&self) -> String {
        let mut s = format!(
            "{}: {} ({} bytes), {}",
            self.name,
            human(self.size_bytes),
            self.size_bytes,
            self.transport
        );
        let model = match (&self.vendor, &self.model) {
            (Some(v), Some(m)) if v != "ATA" && !m.starts_with(v.as_str()) => {
                Some(format!("{v} {m}"))
            }
            (_, Some(m)) => Some(m.clone()),
            (Some(v), None) => Some(v.clone()),
            (None, None) => None,
        };
        if let Some(m) = model {
            s.push_str(&format!(", model \"{m}\""));
        }
        if let Some(x) = &self.serial {
            s.push_str(&format!(", serial \"{x}\""));
        }
        if let Some(x) = &self.wwn {
            s.push_str(&format!(", wwn {x}"));
        }
        if let Some(x) = self.by_path.first() {
            s.push_str(&format!(", by-path {x}"));
        }
        s.push_str(if self.rotational {
            ", rotational"
        } else {
            ", SSD"
        });
        s.push_str(if self.removable {
            ", removable"
        } else {
            ", fixed"
        });
        if self.read_only {
            s.push_str(", read-only");
        }
        s.push_str(&format!(
            ", sectors {}/{}",
            self.logical_sector, self.physical_sector
        ));
        s
    }
}

/// The human summary: `2 disks: vda 20.0 GiB virtio, nvme0n1 1.8 TiB nvme`.
pub fn summary(disks: &[Disk]) -> String {
    if disks.is_empty() {
        return "no disks found".to_string();
    }
    let parts: Vec<String> = disks
        .iter()
        .map(|d| format!("{} {} {}", d.name, human(d.size_bytes), d.transport))
        .collect();
    format!(
        "{} disk{}: {}",
        disks.len(),
        if disks.len() == 1 { "" } else { "s" },
        parts.join(", ")
    )
}
