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

use super::super::disks::{Disk, human_size};

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
            human_size(self.size_bytes)
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

/// Why no disk could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChooseError {
    #[error("no disk to install on: {0}")]
    NoDisk(String),
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
        human_size(disk.size_bytes),
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
