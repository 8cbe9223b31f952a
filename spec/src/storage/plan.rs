//! plan: a checked [`Layout`] laid out on the machine's disks — what the agent then makes with
//! sgdisk-free GPT writing, mdadm, LVM and mkfs. Pure: the disks are given, nothing is touched.
//!
//! Every disk used gets the same partitions at the same places (RAID members must match): the
//! BIOS boot partition (legacy firmware on GPT, 1 MiB) or the ESP (UEFI, 511 MiB, label
//! `EFI_SYSPART`) first, then the rows in the layout's order, and on the first disk only,
//! `config-2` at the very end. The common area is sized on the smallest disk. OVH's automatic
//! fixes are applied and reported ([`Fix`]): a RAID level the disks are too few for is lowered
//! (6 → 10 → 5 → 1 → 0), and the first row that does not fit is shrunk; a second one, or one
//! when another row fills the disk, is an error with OVH's text.

use super::validate::{Fs, Layout, Mount, RaidLevel, Row};

const MIB: u64 = 1 << 20;
/// The ESP on every disk of a UEFI machine (OVH's size).
pub const ESP_BYTES: u64 = 511 * MIB;
/// The BIOS boot partition on every GPT disk of a legacy machine.
pub const BIOS_BOOT_BYTES: u64 = MIB;
/// config-2, at the end of the first disk.
pub const CONFIG_BYTES: u64 = 64 * MIB;
/// What an MBR can address.
pub const MBR_LIMIT: u64 = 2 << 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Gpt,
    Mbr,
}

/// A disk of the group, as the agent found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanDisk {
    pub name: String,
    pub size_bytes: u64,
}

/// What a partition is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartRole {
    BiosBoot,
    Esp,
    ConfigDrive,
    /// Row `usize`'s swap (one on every disk).
    Swap(usize),
    /// Row `usize`'s filesystem, straight on the partition (one disk, or RAID 0 of one).
    Plain(usize),
    /// A member of array `usize`.
    RaidMember(usize),
    /// A physical volume of volume group `usize` (RAID 0 or one disk: no md).
    Pv(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// 1-based, in the disk's order.
    pub number: u32,
    pub start: u64,
    pub size: u64,
    pub role: PartRole,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPlan {
    pub disk: String,
    pub parts: Vec<Part>,
}

/// What an md array holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holds {
    Row(usize),
    Vg(usize),
}

/// An md array (superblock 1.2), one member per disk, all with the same partition number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Array {
    /// `md<partition number>`, as OVH names them (`md2` for `/boot` on the second partition).
    pub name: String,
    pub level: RaidLevel,
    pub part_number: u32,
    pub member_bytes: u64,
    pub holds: Holds,
}

/// A volume group: its LVs (rows), on one md array or on plain partitions (RAID 0, one disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeGroup {
    pub name: String,
    pub level: RaidLevel,
    pub rows: Vec<usize>,
    /// The array its PV is, or None: the partitions of role `Pv` are its PVs.
    pub array: Option<usize>,
    pub bytes: u64,
}

/// An automatic fix, reported as an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fix(pub String);

/// An error only the machine could find, in OVH's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub table: Table,
    pub uefi: bool,
    /// The rows after the fixes (levels lowered, a size shrunk; a fill row's size is what it got).
    pub rows: Vec<Row>,
    pub disks: Vec<DiskPlan>,
    pub arrays: Vec<Array>,
    pub vgs: Vec<VolumeGroup>,
    pub fixes: Vec<Fix>,
}

/// One thing to place in the common area: a row, or a volume group (at its first LV's place).
#[derive(Debug, Clone, Copy)]
enum Slot {
    Row(usize),
    Vg(usize),
}

/// Lays `layout` out on `disks` (the group's disks, in order).
pub fn plan(
    layout: &Layout,
    disks: &[PlanDisk],
    uefi: bool,
    table: Table,
) -> Result<Plan, PlanError> {
    let avail = disks.len() as u32;
    let n = layout.disks.unwrap_or(avail);
    if avail == 0 {
        return Err(PlanError(format!(
            "disk group {} has no disk byol can install on",
            layout.disk_group_id
        )));
    }
    if n > avail {
        return Err(PlanError(format!(
            "Partitioning involving more disks ({n}) than the disk group {} has ({avail}) is not \
             possible on this server",
            layout.disk_group_id
        )));
    }
    let used = &disks[..n as usize];
    let mut fixes = Vec::new();
    let mut rows = layout.rows.clone();
    for r in rows.iter_mut().filter(|r| r.fs != Fs::Swap) {
        let asked = r.raid;
        while r.raid.min_disks() > n {
            match r.raid.lower() {
                Some(l) => r.raid = l,
                None => break,
            }
        }
        if r.raid != asked {
            fixes.push(Fix(format!(
                "raidLevel of {} lowered from {} to {}: disk group {} has {n} disk(s) for it",
                r.mount.as_str(),
                asked.number(),
                r.raid.number(),
                layout.disk_group_id
            )));
        }
    }

    // the common area, on the smallest disk
    let smallest = used.iter().map(|d| d.size_bytes).min().unwrap_or(0);
    let mut disk_end = smallest / MIB * MIB;
    if table == Table::Mbr {
        disk_end = disk_end.min(MBR_LIMIT);
    }
    // GPT's backup table at the end; config-2 before it
    let area_end = disk_end.saturating_sub(MIB).saturating_sub(CONFIG_BYTES);
    let mut at = MIB;
    let mut head = Vec::new();
    if uefi {
        head.push((ESP_BYTES, PartRole::Esp));
    } else if table == Table::Gpt {
        head.push((BIOS_BOOT_BYTES, PartRole::BiosBoot));
    }
    at += head.iter().map(|(s, _)| s).sum::<u64>();

    // volume groups: the LVs of one level together, at the place of the first
    let mut vgs: Vec<VolumeGroup> = Vec::new();
    let mut slots = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let level = if n == 1 { RaidLevel::R0 } else { r.raid };
        match &r.lv {
            None => slots.push(Slot::Row(i)),
            Some(_) => match vgs.iter_mut().position(|v| v.level == level) {
                Some(v) => vgs[v].rows.push(i),
                None => {
                    vgs.push(VolumeGroup {
                        name: String::new(),
                        level,
                        rows: vec![i],
                        array: None,
                        bytes: 0,
                    });
                    slots.push(Slot::Vg(vgs.len() - 1));
                }
            },
        }
    }
    let vg_count = vgs.len();
    for (k, v) in vgs.iter_mut().enumerate() {
        v.name = if vg_count == 1 {
            "vg".into()
        } else {
            format!("vg{}", k + 1)
        };
    }

    // bytes each slot takes on each disk; the fill slot (a size-0 row, the VG of a size-0 LV,
    // else the last VG) gets what is left
    let member = |level: RaidLevel, bytes: u64, fs: Fs| -> u64 {
        let b = if fs == Fs::Swap || n == 1 {
            bytes
        } else {
            level.member_bytes(bytes, n)
        };
        b.div_ceil(MIB).saturating_mul(MIB)
    };
    // a row of size 0 (or the VG of an LV of size 0) fills the rest; with none, the last VG
    // takes what is left ("VG disk fill")
    let explicit_fill = slots.iter().position(|s| match *s {
        Slot::Row(i) => rows[i].size_mib == 0,
        Slot::Vg(v) => vgs[v].rows.iter().any(|&i| rows[i].size_mib == 0),
    });
    let vg_fill = match explicit_fill {
        Some(_) => None,
        None => slots.iter().rposition(|s| matches!(s, Slot::Vg(_))),
    };
    let mut need: Vec<u64> = slots
        .iter()
        .enumerate()
        .map(|(k, s)| match *s {
            Slot::Row(_) if Some(k) == explicit_fill => 0,
            Slot::Row(i) => member(
                rows[i].raid,
                rows[i].size_mib.saturating_mul(MIB),
                rows[i].fs,
            ),
            Slot::Vg(v) => {
                let lvs = vgs[v].rows.iter().fold(0u64, |sum, &i| {
                    sum.saturating_add(rows[i].size_mib.saturating_mul(MIB))
                });
                // LVM's metadata area and extent rounding: 4 MiB per LV and one for the PV
                let lvs = lvs.saturating_add(4 * MIB * (vgs[v].rows.len() as u64 + 1));
                // on md, the space mdadm keeps before the data of a 1.2 member (up to
                // 128 MiB on large members) and its bitmap
                let md = if n > 1 && vgs[v].level != RaidLevel::R0 {
                    130 * MIB
                } else {
                    0
                };
                member(vgs[v].level, lvs, Fs::Ext4).saturating_add(md)
            }
        })
        .collect();
    let least = |k: usize| -> u64 {
        match slots[k] {
            Slot::Row(i) => rows[i].fs.min_mib() * MIB,
            Slot::Vg(_) => 64 * MIB,
        }
    };
    let slot_name = |s: Slot| -> String {
        match s {
            Slot::Row(i) => rows[i].mount.as_str().to_string(),
            Slot::Vg(v) => format!("volume group {}", vgs[v].name),
        }
    };
    let room = area_end.saturating_sub(at);
    let total: u64 = need.iter().fold(0u64, |a, b| a.saturating_add(*b));
    let fill_least = explicit_fill.map_or(0, |f| need[f].max(least(f)));
    let asked = (total - explicit_fill.map_or(0, |f| need[f])).saturating_add(fill_least);
    if asked > room {
        let does_not_fit = |k: usize| {
            PlanError(format!(
                "the layout needs {} MiB on each of {n} disk(s) but they have {} MiB for it. \
                 Please adjust partitions so that the {} partition fits on {n} disk(s)",
                asked / MIB,
                room / MIB,
                slot_name(slots[k])
            ))
        };
        // the first slot past the room is shrunk, unless another row fills the disk
        let mut cum = 0u64;
        let k = need
            .iter()
            .position(|b| {
                cum = cum.saturating_add(*b);
                cum > room
            })
            .unwrap_or(need.len() - 1);
        // nothing is shrunk when a row fills the disk, and a volume group is not shrunk (its
        // LVs have their sizes)
        if let Some(f) = explicit_fill {
            let fixed = total - need[f];
            return Err(does_not_fit(if fixed <= room { f } else { k }));
        }
        if matches!(slots[k], Slot::Vg(_)) {
            return Err(does_not_fit(k));
        }
        let left = room.saturating_sub(total - need[k]) / MIB * MIB;
        if left < least(k) {
            // the first is shrunk as far as it goes; the error names the next that cannot fit
            let before = need[..k].iter().fold(least(k), |a, b| a.saturating_add(*b));
            let mut cum = before;
            let j = (k + 1..need.len())
                .find(|&j| {
                    cum = cum.saturating_add(need[j]);
                    cum > room
                })
                .unwrap_or(k);
            return Err(does_not_fit(j));
        }
        need[k] = left;
        match slots[k] {
            Slot::Row(i) => {
                let got = if rows[i].fs == Fs::Swap || n == 1 {
                    left
                } else {
                    rows[i].raid.usable_bytes(left, n)
                };
                fixes.push(Fix(format!(
                    "{} shrunk from {} MiB to {} MiB to fit on {n} disk(s)",
                    rows[i].mount.as_str(),
                    rows[i].size_mib,
                    got / MIB
                )));
                rows[i].size_mib = got / MIB;
            }
            // volume groups were refused above
            Slot::Vg(_) => {}
        }
    }
    let used_bytes = need.iter().fold(0u64, |a, b| a.saturating_add(*b));
    let left = room.saturating_sub(used_bytes) / MIB * MIB;
    if let Some(f) = explicit_fill {
        need[f] += left;
        if let Slot::Row(i) = slots[f] {
            let got = if n == 1 {
                need[f]
            } else {
                rows[i].raid.usable_bytes(need[f], n)
            };
            rows[i].size_mib = got / MIB;
        }
    } else if let Some(v) = vg_fill {
        need[v] += left;
    }

    // lay the partitions out
    let mut parts = Vec::new();
    let mut number = 0u32;
    for (size, role) in head {
        number += 1;
        parts.push(Part {
            number,
            start: at - size,
            size,
            role,
        });
    }
    let mut cursor = at;
    let mut arrays = Vec::new();
    for (k, s) in slots.iter().enumerate() {
        number += 1;
        let role = match *s {
            Slot::Row(i) if rows[i].fs == Fs::Swap => PartRole::Swap(i),
            Slot::Row(i) if n == 1 => PartRole::Plain(i),
            Slot::Row(i) => {
                arrays.push(Array {
                    name: format!("md{number}"),
                    level: rows[i].raid,
                    part_number: number,
                    member_bytes: need[k],
                    holds: Holds::Row(i),
                });
                PartRole::RaidMember(arrays.len() - 1)
            }
            Slot::Vg(v) if n == 1 || vgs[v].level == RaidLevel::R0 => {
                vgs[v].bytes = need[k] * u64::from(n);
                PartRole::Pv(v)
            }
            Slot::Vg(v) => {
                arrays.push(Array {
                    name: format!("md{number}"),
                    level: vgs[v].level,
                    part_number: number,
                    member_bytes: need[k],
                    holds: Holds::Vg(v),
                });
                vgs[v].array = Some(arrays.len() - 1);
                vgs[v].bytes = vgs[v].level.usable_bytes(need[k], n);
                PartRole::RaidMember(arrays.len() - 1)
            }
        };
        parts.push(Part {
            number,
            start: cursor,
            size: need[k],
            role,
        });
        cursor += need[k];
    }
    let mut plans: Vec<DiskPlan> = used
        .iter()
        .map(|d| DiskPlan {
            disk: d.name.clone(),
            parts: parts.clone(),
        })
        .collect();
    let first_end = used[0].size_bytes / MIB * MIB;
    let first_end = if table == Table::Mbr {
        first_end.min(MBR_LIMIT)
    } else {
        // GPT's backup table
        first_end.saturating_sub(MIB)
    };
    let config_start = first_end.saturating_sub(CONFIG_BYTES);
    plans[0].parts.push(Part {
        number: number + 1,
        start: config_start,
        size: CONFIG_BYTES,
        role: PartRole::ConfigDrive,
    });
    if table == Table::Mbr {
        check_mbr(&plans[0], &rows)?;
    }
    Ok(Plan {
        table,
        uefi,
        rows,
        disks: plans,
        arrays,
        vgs,
        fixes,
    })
}

/// OVH's MBR rules, and byol's: four primary partitions at most.
fn check_mbr(d: &DiskPlan, rows: &[Row]) -> Result<(), PlanError> {
    if d.parts.len() > 4 {
        return Err(PlanError(format!(
            "Error with MBR partition table: this layout needs {} partitions on {} and byol \
             writes at most 4 on an MBR disk; use fewer rows, LVM, or a GPT",
            d.parts.len(),
            d.disk
        )));
    }
    let name = |p: &Part| match p.role {
        PartRole::Swap(i) | PartRole::Plain(i) => rows[i].mount.as_str().to_string(),
        other => format!("{other:?}"),
    };
    for p in &d.parts {
        if p.size > MBR_LIMIT {
            return Err(PlanError(format!(
                "Error with MBR partition table: Partition {} is larger than 2TiB and this server \
                 does not support GPT",
                name(p)
            )));
        }
        if p.role != PartRole::ConfigDrive && p.start + p.size > MBR_LIMIT - CONFIG_BYTES {
            return Err(PlanError(format!(
                "Error with MBR partition table: partition {} cannot end after 2 TiB ({}) and \
                 this server does not support GPT! OVHcloud also needs to add a {} MiB \
                 cloud-init partition at the very end of the disk. Therefore all customer \
                 partitions must end before (2TiB - {} MiB).",
                name(p),
                p.start + p.size,
                CONFIG_BYTES / MIB,
                CONFIG_BYTES / MIB
            )));
        }
    }
    Ok(())
}

impl Plan {
    /// One line per disk, array and volume group, for the console and the `partition` event:
    /// `vda: 1 ESP 511 MiB, 2 md2 1.0 GiB, 3 md3 18.4 GiB, 4 swap 512 MiB, 5 config-2 64 MiB`.
    pub fn summary(&self) -> Vec<String> {
        let human = crate::text::human;
        let mut out = Vec::new();
        for d in &self.disks {
            let parts: Vec<String> = d
                .parts
                .iter()
                .map(|p| {
                    let what = match p.role {
                        PartRole::BiosBoot => "BIOS boot".to_string(),
                        PartRole::Esp => "ESP".into(),
                        PartRole::ConfigDrive => "config-2".into(),
                        PartRole::Swap(_) => "swap".into(),
                        PartRole::Plain(i) => format!(
                            "{} {}",
                            self.rows[i].fs.as_str(),
                            self.rows[i].mount.as_str()
                        ),
                        PartRole::RaidMember(a) => self.arrays[a].name.clone(),
                        PartRole::Pv(v) => format!("PV of {}", self.vgs[v].name),
                    };
                    format!("{} {what} {}", p.number, human(p.size))
                })
                .collect();
            out.push(format!("{}: {}", d.disk, parts.join(", ")));
        }
        for a in &self.arrays {
            let what = match a.holds {
                Holds::Row(i) => format!(
                    "{} {}",
                    self.rows[i].fs.as_str(),
                    self.rows[i].mount.as_str()
                ),
                Holds::Vg(v) => format!("PV of {}", self.vgs[v].name),
            };
            out.push(format!(
                "{}: RAID {} of {} x {}, {what}",
                a.name,
                a.level.number(),
                self.disks.len(),
                human(a.member_bytes)
            ));
        }
        for v in &self.vgs {
            let lvs: Vec<String> = v
                .rows
                .iter()
                .map(|&i| {
                    let r = &self.rows[i];
                    let size = if r.size_mib == 0 {
                        "the rest".to_string()
                    } else {
                        human(r.size_mib * MIB)
                    };
                    format!(
                        "{} {} {} {size}",
                        r.lv.as_deref().unwrap_or(""),
                        r.fs.as_str(),
                        r.mount.as_str()
                    )
                })
                .collect();
            out.push(format!(
                "{}: {}, LVs {}",
                v.name,
                human(v.bytes),
                lvs.join(", ")
            ));
        }
        out
    }

    /// The row mounted at `/`.
    pub fn root(&self) -> Option<usize> {
        self.rows
            .iter()
            .position(|r| r.mount == Mount::Path("/".into()))
    }
}
