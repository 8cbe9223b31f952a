//! choose: which disk the image goes to, from the install's `diskGroupId` (1 by default).
//!
//! How byol forms disk groups:
//! - candidates are the disks of the inventory ([`super::super::disks`]) that are neither
//!   removable, nor on USB, nor read-only: those are never installed on;
//! - a group is the candidates of the same kind (transport: `nvme`, `sata`, `sas`, `scsi`,
//!   `virtio`, `virtio-scsi`, `mmc`, `unknown`) and the same size in bytes: identical disks;
//! - groups are numbered from 1, smallest disks first; groups of equal size are ordered by the
//!   name of their first disk (`nvme0n1` before `sda`);
//! - the image goes to the group's first disk by kernel name; the group's other disks are left
//!   as they are (byol does not build RAID).
//!
//! So a machine with two 480 GB SATA SSDs and two 4 TB SAS disks has group 1 = the SSDs and
//! group 2 = the SAS disks. No candidate at all, or a group number past the last group, is an
//! error that lists what the machine has: never a guess.
//!
//! When the machine has disk hints ([`DiskHints`]: serial, WWN, model, size range, by-path,
//! kernel name, transport, rotational), they choose instead ([`choose_by_hints`]): the disk must
//! match every hint, and exactly one disk may match; removable and USB disks only with
//! `allowRemovable`, read-only disks never.

use byol_spec::DiskHints;
use byol_spec::disk::normalize_wwn;

use super::super::disks::Disk;
use byol_spec::text::human;

/// One group of identical disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// 1, 2, …
    pub number: u32,
    pub transport: String,
    pub size_bytes: u64,
    /// By kernel name.
    pub disks: Vec<Disk>,
}

impl Group {
    /// `1 = vda, vdb (virtio, 10.0 GiB)`.
    pub fn line(&self) -> String {
        let names: Vec<&str> = self.disks.iter().map(|d| d.name.as_str()).collect();
        format!(
            "{} = {} ({}, {})",
            self.number,
            names.join(", "),
            self.transport,
            human(self.size_bytes)
        )
    }
}

/// The choice and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub disk: Disk,
    pub group: u32,
    pub groups: Vec<Group>,
    /// For the `disk` event.
    pub message: String,
}

/// Why a disk is never a candidate, or None when it is one.
pub fn excluded(d: &Disk) -> Option<&'static str> {
    if d.transport == "usb" {
        Some("usb")
    } else if d.removable {
        Some("removable")
    } else if d.read_only {
        Some("read-only")
    } else {
        None
    }
}

/// The groups of the candidates among `disks`.
pub fn groups(disks: &[Disk]) -> Vec<Group> {
    let mut cands: Vec<&Disk> = disks.iter().filter(|d| excluded(d).is_none()).collect();
    cands.sort_by(|a, b| a.name.cmp(&b.name));
    let mut groups: Vec<Group> = Vec::new();
    for d in cands {
        match groups
            .iter_mut()
            .find(|g| g.transport == d.transport && g.size_bytes == d.size_bytes)
        {
            Some(g) => g.disks.push(d.clone()),
            None => groups.push(Group {
                number: 0,
                transport: d.transport.clone(),
                size_bytes: d.size_bytes,
                disks: vec![d.clone()],
            }),
        }
    }
    groups.sort_by(|a, b| {
        a.size_bytes
            .cmp(&b.size_bytes)
            .then_with(|| a.disks[0].name.cmp(&b.disks[0].name))
    });
    for (i, g) in groups.iter_mut().enumerate() {
        g.number = i as u32 + 1;
    }
    groups
}

/// Why `d` does not match `h` (the first hint it fails), or None when it matches them all.
pub fn mismatch(d: &Disk, h: &DiskHints) -> Option<String> {
    let norm = |s: &str| s.trim().to_ascii_lowercase();
    if let Some(want) = &h.serial
        && d.serial.as_deref().map(norm) != Some(norm(want))
    {
        return Some(format!(
            "serial {}",
            d.serial
                .as_deref()
                .map_or("unknown".into(), |s| format!("{s:?}"))
        ));
    }
    if let Some(want) = &h.wwn
        && d.wwn.as_deref().map(normalize_wwn) != Some(normalize_wwn(want))
    {
        return Some(format!("wwn {}", d.wwn.as_deref().unwrap_or("unknown")));
    }
    if let Some(want) = &h.model {
        let have = format!(
            "{} {}",
            d.vendor.as_deref().unwrap_or(""),
            d.model.as_deref().unwrap_or("")
        );
        if !norm(&have).contains(&norm(want)) {
            return Some(format!("model {:?}", have.trim()));
        }
    }
    if let Some(min) = h.min_size
        && d.size_bytes < min
    {
        return Some(format!("{} bytes < minSize", d.size_bytes));
    }
    if let Some(max) = h.max_size
        && d.size_bytes > max
    {
        return Some(format!("{} bytes > maxSize", d.size_bytes));
    }
    if let Some(want) = &h.by_path {
        let want = want.trim();
        let want = want.strip_prefix("/dev/disk/by-path/").unwrap_or(want);
        if !d.by_path.iter().any(|p| p == want) {
            return Some(format!(
                "by-path {}",
                if d.by_path.is_empty() {
                    "unknown".into()
                } else {
                    d.by_path.join(" or ")
                }
            ));
        }
    }
    if let Some(want) = &h.name {
        let want = want.trim();
        if want.strip_prefix("/dev/").unwrap_or(want) != d.name {
            return Some("name".into());
        }
    }
    if let Some(want) = &h.transport
        && *want != d.transport
    {
        return Some(format!("transport {}", d.transport));
    }
    if let Some(want) = h.rotational
        && want != d.rotational
    {
        return Some(if d.rotational { "rotational" } else { "SSD" }.into());
    }
    if d.read_only {
        return Some("read-only".into());
    }
    if !h.allow_removable
        && let Some(why) = excluded(d)
    {
        return Some(format!("{why} (allowRemovable not set)"));
    }
    None
}

/// The one disk of `disks` that matches the machine's hints `h`.
pub fn choose_by_hints(disks: &[Disk], h: &DiskHints, group: u32) -> Result<Choice, ChooseError> {
    let hints = h.describe();
    if disks.is_empty() {
        return Err(ChooseError::NoDisk(
            "the machine shows no disk (is its controller's driver in the initramfs?)".into(),
        ));
    }
    let (hit, miss): (Vec<&Disk>, Vec<&Disk>) =
        disks.iter().partition(|d| mismatch(d, h).is_none());
    match hit.as_slice() {
        [] => Err(ChooseError::NoMatch {
            hints,
            disks: miss
                .iter()
                .map(|d| format!("{} ({})", d.name, mismatch(d, h).unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(", "),
        }),
        [d] => {
            let mut message = format!(
                "installing on {}: {} {} (the machine's disk hints {hints} match it alone",
                d.path,
                d.transport,
                human(d.size_bytes)
            );
            if group != 1 {
                message.push_str(&format!("; diskGroupId {group} not used"));
            }
            message.push_str(&format!("): {}", d.line()));
            Ok(Choice {
                disk: (*d).clone(),
                group: 0,
                groups: groups(disks),
                message,
            })
        }
        many => Err(ChooseError::Ambiguous {
            hints,
            disks: many.iter().map(|d| d.line()).collect::<Vec<_>>().join("; "),
        }),
    }
}

/// The disk for the install: by the machine's hints when it has some, else by `group`.
pub fn pick(disks: &[Disk], group: u32, hints: &DiskHints) -> Result<Choice, ChooseError> {
    if hints.is_empty() {
        choose(disks, group)
    } else {
        choose_by_hints(disks, hints, group)
    }
}

/// Why no disk could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChooseError {
    #[error("no disk to install on: {0}")]
    NoDisk(String),
    #[error(
        "no disk matches the machine's disk hints ({hints}): {disks}; fix the hints (byol machine disk …) or clear them"
    )]
    NoMatch { hints: String, disks: String },
    #[error(
        "the machine's disk hints ({hints}) match more than one disk: {disks}; add a hint that tells them apart (serial, wwn or byPath)"
    )]
    Ambiguous { hints: String, disks: String },
    #[error("diskGroupId {wanted} does not exist: this machine has {count} disk group{s}: {list}", s = if *.count == 1 { "" } else { "s" })]
    NoSuchGroup {
        wanted: u32,
        count: usize,
        list: String,
    },
}

/// The disk for `group` (diskGroupId, 1-based).
pub fn choose(disks: &[Disk], group: u32) -> Result<Choice, ChooseError> {
    let skipped: Vec<String> = disks
        .iter()
        .filter_map(|d| excluded(d).map(|why| format!("{} ({why})", d.name)))
        .collect();
    let gs = groups(disks);
    if gs.is_empty() {
        return Err(ChooseError::NoDisk(if disks.is_empty() {
            "the machine shows no disk (is its controller's driver in the initramfs?)".into()
        } else {
            format!(
                "every disk is left out: {} (byol never installs on removable, USB or read-only \
                 disks)",
                skipped.join(", ")
            )
        }));
    }
    let list = gs.iter().map(Group::line).collect::<Vec<_>>().join("; ");
    let Some(g) = gs.iter().find(|g| g.number == group).filter(|_| group >= 1) else {
        return Err(ChooseError::NoSuchGroup {
            wanted: group,
            count: gs.len(),
            list,
        });
    };
    let disk = g.disks[0].clone();
    let mut message = format!(
        "installing on {}: {} {} (diskGroupId {group}: group {} of {}",
        disk.path,
        disk.transport,
        human(disk.size_bytes),
        g.number,
        gs.len()
    );
    if g.disks.len() > 1 {
        let others: Vec<&str> = g.disks[1..].iter().map(|d| d.name.as_str()).collect();
        message.push_str(&format!(
            ", {} identical disks: the first by name; {} left as they are",
            g.disks.len(),
            others.join(", ")
        ));
    }
    message.push_str(&format!("); groups: {list}"));
    if !skipped.is_empty() {
        message.push_str(&format!("; left out: {}", skipped.join(", ")));
    }
    Ok(Choice {
        disk,
        group: g.number,
        groups: gs,
        message,
    })
}
