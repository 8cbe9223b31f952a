//! Storage layouts made real on loop devices (root only) with the real tools: the plan of a
//! layout, then the tables and filesystems (mkfs.ext4, mkfs.xfs, mkfs.btrfs, mkswap, the ESP's
//! FAT) made by the agent; checked with sfdisk, sgdisk, blkid and fsck. This machine's kernel
//! has neither md nor device-mapper (and no modules to load): the md arrays and LVM of
//! several-disk layouts are proven in QEMU, under the Debian kernel.
//!
//! Needs: util-linux (losetup, sfdisk, blkid), gdisk, e2fsprogs, xfsprogs, btrfs-progs,
//! dosfstools.

use std::path::{Path, PathBuf};

use byol_agent::agent::install::storage::{self, StorageOptions};
use byol_spec::storage::{
    Layout, PartitionSpec, PlanDisk, Table, default_layout, plan, validate_layout,
};

mod install_support;
use install_support::*;

const GIB: u64 = 1 << 30;
fn loops(dir: &Path, n: usize, size: u64) -> Vec<Loop> {
    (0..n)
        .map(|i| {
            let f = dir.join(format!("disk{i}"));
            sparse(&f, size);
            Loop::attach(&f, 512)
        })
        .collect()
}

fn plan_disks(l: &[Loop], size: u64) -> Vec<PlanDisk> {
    l.iter()
        .map(|l| PlanDisk {
            name: l.dev.display().to_string(),
            size_bytes: size,
        })
        .collect()
}

fn opts() -> StorageOptions {
    StorageOptions::default()
}

#[test]
fn default_scheme_on_one_uefi_disk_has_no_md() {
    let _g = serial();
    let t = tempfile::tempdir().unwrap();
    let size = 3 * GIB;
    let l = loops(t.path(), 1, size);
    let layout = Layout {
        disk_group_id: 1,
        disks: None,
        rows: default_layout(),
    };
    let p = plan(&layout, &plan_disks(&l, size), true, Table::Gpt).unwrap();
    let disks: Vec<PathBuf> = l.iter().map(|l| l.dev.clone()).collect();
    let made = storage::create(&p, &disks, &opts()).unwrap();
    assert!(made.arrays.is_empty());
    let d = &disks[0];
    let j = sfdisk_json(d);
    let parts = j["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 5, "{j}");
    assert_eq!(j["label"], "gpt");
    assert!(ok("sgdisk", &["-v", d.to_str().unwrap()]).contains("No problems found"));
    let dev = |n| l[0].part(n);
    assert_eq!(blkid(&dev(1), "LABEL"), "EFI_SYSPART");
    ok("fsck.vfat", &["-n", dev(1).to_str().unwrap()]);
    for (n, label) in [(2, "boot"), (3, "root")] {
        assert_eq!(blkid(&dev(n), "TYPE"), "ext4");
        assert_eq!(blkid(&dev(n), "LABEL"), label);
        ok("e2fsck", &["-fn", dev(n).to_str().unwrap()]);
    }
    assert_eq!(blkid(&dev(4), "TYPE"), "swap");
    assert_eq!(made.esps, vec![dev(1)]);
    assert_eq!(made.config_drive, Some(dev(5)));
    assert_eq!(made.rows, vec![vec![dev(2)], vec![dev(3)], vec![dev(4)]]);
}

#[test]
fn xfs_btrfs_and_swap_on_one_bios_disk() {
    let _g = serial();
    let t = tempfile::tempdir().unwrap();
    let size = 3 * GIB;
    let l = loops(t.path(), 1, size);
    let spec: Vec<PartitionSpec> = serde_json::from_value(serde_json::json!([
        {"mountPoint": "/", "fileSystem": "xfs", "size": 1024},
        {"mountPoint": "swap", "fileSystem": "swap", "size": 64},
        {"mountPoint": "/var/lib/containers", "fileSystem": "btrfs", "size": 0}
    ]))
    .unwrap();
    let layout = Layout {
        disk_group_id: 1,
        disks: None,
        rows: validate_layout(&spec, 1).unwrap(),
    };
    let p = plan(&layout, &plan_disks(&l, size), false, Table::Gpt).unwrap();
    let disks: Vec<PathBuf> = l.iter().map(|l| l.dev.clone()).collect();
    let made = storage::create(&p, &disks, &opts()).unwrap();
    let j = sfdisk_json(&disks[0]);
    let first = &j["partitions"][0];
    assert_eq!(first["type"], "21686148-6449-6E6F-744E-656564454649", "{j}");
    let dev = |n| l[0].part(n);
    assert_eq!(
        (blkid(&dev(2), "TYPE"), blkid(&dev(2), "LABEL")),
        ("xfs".into(), "root".into())
    );
    assert_eq!(blkid(&dev(3), "TYPE"), "swap");
    // btrfs: the label is the last component, 16 characters at most
    assert_eq!(
        (blkid(&dev(4), "TYPE"), blkid(&dev(4), "LABEL")),
        ("btrfs".into(), "containers".into())
    );
    assert!(made.esps.is_empty());
    // the fill row got the rest of the disk, before config-2
    let parts = j["partitions"].as_array().unwrap();
    let end = |p: &serde_json::Value| p["start"].as_u64().unwrap() + p["size"].as_u64().unwrap();
    assert_eq!(end(&parts[3]), parts[4]["start"].as_u64().unwrap());
}
