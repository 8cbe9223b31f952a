//! storage: a storage [`Plan`] made real on the machine's disks. Every disk of the group is
//! wiped at both ends, gets its table (GPT with gptman, or an MBR with mbrman) with the plan's
//! partitions, and the kernel is told; each new partition is wiped at both ends too (old md,
//! LVM and filesystem signatures at the same offsets, as `wipefs -a` would remove); then the md
//! arrays (mdadm, superblock 1.2), the LVM volume groups and logical volumes (lvm, without
//! udev), the filesystems and swap (mkfs.*, mkswap, labelled as OVH labels them), and on UEFI an
//! ESP (FAT32, `EFI_SYSPART`) on every disk. config-2 is left to the ConfigDrive step.

use std::path::{Path, PathBuf};

use byol_spec::storage::{Holds, PartRole, Plan, Table};
use gptman::{GPT, GPTPartitionEntry};
use mbrman::{MBR, MBRPartitionEntry};

use super::blockdev::{self, KernelPart};
use super::fat::{self, FatKind};
use super::ids::{fat_volume_id, parse_guid, random_guid, unique_bytes};
use super::tools;
use crate::disk::{Access, Disk};

const MIB: u64 = 1 << 20;

const RAID_TYPE: &str = "A19D880F-05FC-4D3B-A006-743F0F84911E";
const SWAP_TYPE: &str = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F";
const LVM_TYPE: &str = "E6D6D379-F507-44C2-A23C-238F2A3DF928";
const LINUX_TYPE: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// LVM without udev (the initramfs has none): it makes its device nodes itself.
const LVM_CONFIG: &str = "activation { udev_sync = 0 udev_rules = 0 } \
                          devices { obtain_device_list_from_udev = 0 }";

/// Where the devices are (the machine's `/sys` and `/dev` by default), and what is left
/// unformatted.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    pub sysfs: PathBuf,
    pub dev: PathBuf,
    /// The row that gets the image's own filesystem (streamed onto its device): no mkfs.
    pub image_row: Option<usize>,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            sysfs: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
            image_row: None,
        }
    }
}

/// What was made: for each row, the device(s) its filesystem is on (swap: one per disk).
#[derive(Debug, Clone, Default)]
pub struct Made {
    pub rows: Vec<Vec<PathBuf>>,
    /// The ESP of every disk (UEFI), in disk order.
    pub esps: Vec<PathBuf>,
    pub config_drive: Option<PathBuf>,
    pub arrays: Vec<PathBuf>,
    /// `vg/lv` for each LV row.
    pub volumes: Vec<String>,
    /// The FAT volume id every ESP shares (one fstab line mounts whichever disk is left).
    pub esp_id: u32,
    /// The member partitions of each array, in disk order.
    pub members: Vec<Vec<PathBuf>>,
}

/// Makes `plan` on `disks` (the plan's disks, in order).
pub fn create(plan: &Plan, disks: &[PathBuf], o: &StorageOptions) -> Result<Made, String> {
    if disks.len() != plan.disks.len() {
        return Err(format!(
            "the plan is for {} disk(s), {} given",
            plan.disks.len(),
            disks.len()
        ));
    }
    let mut made = Made {
        rows: vec![Vec::new(); plan.rows.len()],
        ..Made::default()
    };
    // partition nodes by disk, then by partition number
    let mut nodes: Vec<Vec<(u32, PathBuf)>> = Vec::new();
    for (d, path) in plan.disks.iter().zip(disks) {
        let disk = Disk::open(path, Access::ReadWrite).map_err(|e| e.to_string())?;
        disk.wipe_ends(MIB).map_err(|e| e.to_string())?;
        write_table(&disk, plan, d)?;
        disk.sync("the new partition table")
            .map_err(|e| e.to_string())?;
        drop(disk);
        let kparts: Vec<KernelPart> = d
            .parts
            .iter()
            .map(|p| KernelPart {
                number: p.number,
                start: p.start,
                len: p.size,
            })
            .collect();
        let devs = blockdev::expose_in(path, &kparts, &o.sysfs, &o.dev)?;
        for dev in &devs {
            let part = Disk::open(dev, Access::ReadWrite).map_err(|e| e.to_string())?;
            part.wipe_ends(MIB).map_err(|e| e.to_string())?;
        }
        nodes.push(d.parts.iter().map(|p| p.number).zip(devs).collect());
    }
    let node = |disk: usize, number: u32| -> Result<&Path, String> {
        nodes[disk]
            .iter()
            .find(|(n, _)| *n == number)
            .map(|(_, p)| p.as_path())
            .ok_or_else(|| {
                format!(
                    "partition {number} of {} has no device node after the kernel was told",
                    disks[disk].display()
                )
            })
    };
    let n = plan.disks.len();

    // md arrays
    let mut array_dev = Vec::new();
    for a in &plan.arrays {
        let dev = o.dev.join(&a.name);
        let members: Vec<String> = (0..n)
            .map(|d| node(d, a.part_number).map(|p| p.display().to_string()))
            .collect::<Result<_, _>>()?;
        create_array(&dev, a.level, &a.name, &members)?;
        array_dev.push(dev);
        made.members
            .push(members.iter().map(PathBuf::from).collect());
    }
    made.arrays = array_dev.clone();

    // volume groups and their LVs (the one that fills last)
    for (v, vg) in plan.vgs.iter().enumerate() {
        let name = vg.name.clone();
        let pvs: Vec<String> = match vg.array {
            Some(a) => vec![array_dev[a].display().to_string()],
            None => (0..n)
                .flat_map(|d| {
                    plan.disks[d]
                        .parts
                        .iter()
                        .filter(|p| p.role == PartRole::Pv(v))
                        .map(move |p| (d, p.number))
                })
                .map(|(d, num)| node(d, num).map(|p| p.display().to_string()))
                .collect::<Result<_, _>>()?,
        };
        let pv_refs: Vec<&str> = pvs.iter().map(String::as_str).collect();
        let mut args = vec!["pvcreate", "--config", LVM_CONFIG, "-ff", "-y"];
        args.extend(&pv_refs);
        lvm(&args)?;
        let mut args = vec!["vgcreate", "--config", LVM_CONFIG, &name];
        args.extend(&pv_refs);
        lvm(&args)?;
        let mut lvs = vg.rows.clone();
        lvs.sort_by_key(|&i| plan.rows[i].size_mib == 0);
        for i in lvs {
            let r = &plan.rows[i];
            let lv = r.lv.clone().unwrap_or_default();
            let size = format!("{}m", r.size_mib);
            let sized: [&str; 2] = if r.size_mib == 0 {
                ["-l", "100%FREE"]
            } else {
                ["-L", &size]
            };
            lvm(&[
                "lvcreate", "--config", LVM_CONFIG, "-y", "-W", "y", "-Z", "y", "-n", &lv,
                sized[0], sized[1], &name,
            ])?;
            made.rows[i].push(o.dev.join(&name).join(&lv));
            made.volumes.push(format!("{name}/{lv}"));
        }
    }

    // the rows' devices
    for (i, _) in plan.rows.iter().enumerate() {
        if let Some(a) = plan.arrays.iter().position(|a| a.holds == Holds::Row(i)) {
            made.rows[i].push(array_dev[a].clone());
        }
        for (d, dp) in plan.disks.iter().enumerate() {
            for p in &dp.parts {
                if matches!(p.role, PartRole::Plain(r) | PartRole::Swap(r) if r == i) {
                    made.rows[i].push(node(d, p.number)?.to_path_buf());
                }
            }
        }
    }
    for (d, dp) in plan.disks.iter().enumerate() {
        for p in &dp.parts {
            match p.role {
                PartRole::Esp => made.esps.push(node(d, p.number)?.to_path_buf()),
                PartRole::ConfigDrive => made.config_drive = Some(node(d, p.number)?.to_path_buf()),
                _ => {}
            }
        }
    }

    // filesystems and swap
    for (i, r) in plan.rows.iter().enumerate() {
        if o.image_row == Some(i) {
            continue;
        }
        for dev in &made.rows[i] {
            make_fs(r, dev)?;
        }
    }
    made.esp_id = fat_volume_id();
    for esp in &made.esps {
        let sector = Disk::open(esp, Access::Read)
            .map_err(|e| e.to_string())?
            .logical_sector();
        fat::format(esp, FatKind::Fat32, "EFI_SYSPART", made.esp_id, sector)?;
    }
    Ok(made)
}

/// `mdadm --create` of `dev` (superblock 1.2, named `name`) over `members` (`missing` for a
/// member to come later).
pub fn create_array(
    dev: &Path,
    level: byol_spec::storage::RaidLevel,
    name: &str,
    members: &[String],
) -> Result<(), String> {
    let level = level.number().to_string();
    let count = members.len().to_string();
    let dev_s = dev.display().to_string();
    let mut args = vec![
        "--create",
        &dev_s,
        "--run",
        "--quiet",
        "--metadata=1.2",
        // no host name in the array's name: the installed system assembles it as its own
        "--homehost=any",
        "--level",
        &level,
        "--raid-devices",
        &count,
        "--name",
        name,
    ];
    args.extend(members.iter().map(String::as_str));
    tools::run("mdadm", &args).map(|_| ())
}

/// The filesystem (or swap) of row `r` on `dev`, labelled as OVH labels it.
pub fn make_fs(r: &byol_spec::storage::Row, dev: &Path) -> Result<(), String> {
    let label = label(r.mount.as_str(), r.fs, dev);
    let dev_s = dev.display().to_string();
    match r.fs {
        byol_spec::storage::Fs::Ext4 => {
            tools::run("mkfs.ext4", &["-F", "-q", "-L", &label, &dev_s])
        }
        byol_spec::storage::Fs::Xfs => tools::run("mkfs.xfs", &["-f", "-q", "-L", &label, &dev_s]),
        byol_spec::storage::Fs::Btrfs => {
            tools::run("mkfs.btrfs", &["-f", "-q", "-L", &label, &dev_s])
        }
        byol_spec::storage::Fs::Swap => tools::run("mkswap", &["-L", &label, &dev_s]),
    }
    .map(|_| ())
}

fn lvm(args: &[&str]) -> Result<String, String> {
    tools::run_env("lvm", args, &[("LVM_SUPPRESS_FD_WARNINGS", "1")])
}

/// OVH's labels: `root` for `/`, `boot` for `/boot`, the last component otherwise, `swap-vda4`
/// for swap; cut to what the filesystem takes (xfs: 12, others: 16).
pub fn label(mount: &str, fs: byol_spec::storage::Fs, dev: &Path) -> String {
    let l = match mount {
        "/" => "root".to_string(),
        "swap" => format!(
            "swap-{}",
            dev.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ),
        m => m.rsplit('/').next().unwrap_or("data").to_string(),
    };
    let max = if fs == byol_spec::storage::Fs::Xfs {
        12
    } else {
        16
    };
    l.chars().take(max).collect()
}

fn write_table(disk: &Disk, plan: &Plan, d: &byol_spec::storage::DiskPlan) -> Result<(), String> {
    let name = disk.name();
    let ss = u64::from(disk.logical_sector());
    let mut f = disk.file();
    match plan.table {
        Table::Gpt => {
            let mut gpt = GPT::new_from(&mut f, ss, random_guid())
                .map_err(|e| format!("cannot make a GPT on {name}: {e}"))?;
            for p in &d.parts {
                let (ty, label) = match p.role {
                    PartRole::BiosBoot => (super::gpt::BIOS_BOOT_TYPE, "BIOS boot partition"),
                    PartRole::Esp => (super::gpt::ESP_TYPE, "EFI System Partition"),
                    PartRole::ConfigDrive => (super::gpt::BASIC_DATA_TYPE, "config-2"),
                    PartRole::Swap(_) => (SWAP_TYPE, "swap"),
                    PartRole::Plain(_) => (LINUX_TYPE, "data"),
                    PartRole::RaidMember(_) => (RAID_TYPE, "raid"),
                    PartRole::Pv(_) => (LVM_TYPE, "lvm"),
                };
                gpt[p.number] = GPTPartitionEntry {
                    partition_type_guid: parse_guid(ty).unwrap_or([0; 16]),
                    unique_partition_guid: random_guid(),
                    starting_lba: p.start / ss,
                    ending_lba: (p.start + p.size) / ss - 1,
                    attribute_bits: 0,
                    partition_name: label.into(),
                };
            }
            gpt.write_into(&mut f)
                .map_err(|e| format!("cannot write the GPT to {name}: {e}"))?;
            let pmbr = if plan.uefi {
                GPT::write_protective_mbr_into(&mut f, ss)
            } else {
                GPT::write_bootable_protective_mbr_into(&mut f, ss)
            };
            pmbr.map_err(|e| format!("cannot write the protective MBR to {name}: {e}"))
        }
        Table::Mbr => {
            let sector = disk.logical_sector();
            let mut mbr = MBR::new_from(&mut f, sector, unique_bytes::<4>())
                .map_err(|e| format!("cannot make an MBR on {name}: {e}"))?;
            for p in &d.parts {
                let sys = match p.role {
                    PartRole::Esp => super::mbr::ESP_TYPE,
                    PartRole::ConfigDrive => super::mbr::FAT16_LBA_TYPE,
                    PartRole::Swap(_) => 0x82,
                    PartRole::RaidMember(_) => 0xfd,
                    PartRole::Pv(_) => 0x8e,
                    PartRole::Plain(_) | PartRole::BiosBoot => 0x83,
                };
                let start = (p.start / ss) as u32;
                let sectors = (p.size / ss) as u32;
                let first = matches!(p.role, PartRole::Plain(_) | PartRole::RaidMember(_))
                    && !d.parts.iter().any(|q| {
                        q.number < p.number
                            && matches!(q.role, PartRole::Plain(_) | PartRole::RaidMember(_))
                    });
                mbr[p.number as usize] = MBRPartitionEntry {
                    boot: if first && !plan.uefi {
                        mbrman::BOOT_ACTIVE
                    } else {
                        mbrman::BOOT_INACTIVE
                    },
                    first_chs: super::mbr::chs(u64::from(start)),
                    sys,
                    last_chs: super::mbr::chs(u64::from(start) + u64::from(sectors) - 1),
                    starting_lba: start,
                    sectors,
                };
            }
            mbr.write_into(&mut f)
                .map_err(|e| format!("cannot write the MBR to {name}: {e}"))
        }
    }
}
