//! Storage layouts made real on loop devices (root only) with the real tools: the plan of a
//! layout, then the tables and filesystems (mkfs.ext4, mkfs.xfs, mkfs.btrfs, mkswap, the ESP's
//! FAT) made by the agent; checked with sfdisk, sgdisk, blkid and fsck. And the image's files
//! copied from one mounted ext4 to another with owners, modes, hard links, xattrs (capability,
//! ACL, user), holes, links, nodes and times, compared entry by entry. This machine's kernel
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

/// An ext4 filesystem on a loop device, mounted; unmounted and detached on drop.
struct Mounted {
    dir: PathBuf,
    _loop: Loop,
}

impl Mounted {
    fn new(t: &Path, name: &str) -> Mounted {
        let f = t.join(format!("{name}.img"));
        sparse(&f, 256 << 20);
        ok("mkfs.ext4", &["-q", "-F", f.to_str().unwrap()]);
        let l = Loop::attach(&f, 512);
        let dir = t.join(name);
        std::fs::create_dir(&dir).unwrap();
        ok("mount", &[l.dev.to_str().unwrap(), dir.to_str().unwrap()]);
        Mounted { dir, _loop: l }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = sh("umount", &[self.dir.to_str().unwrap()]);
    }
}

fn setxattr(p: &Path, name: &str, value: &[u8]) {
    byol_agent::agent::install::copytree::set_xattr(p, name.as_bytes(), value)
        .unwrap_or_else(|e| panic!("{name} on {}: {e}", p.display()));
}

/// Everything `ls -l --full-time`, `getfattr -d -m -` and a hash would show of a tree, by path,
/// plus which paths share an inode.
fn describe(root: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    use byol_agent::agent::install::copytree::{xattr, xattr_names};
    use std::os::unix::fs::MetadataExt as _;
    let mut lines = Vec::new();
    let mut inodes: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = root.join(&rel);
        let m = std::fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let mut x: Vec<String> = xattr_names(&p)
            .unwrap()
            .iter()
            .map(|n| format!("{}={:?}", String::from_utf8_lossy(n), xattr(&p, n).unwrap()))
            .collect();
        x.sort();
        let what = if ft.is_file() {
            format!("file {}", sha256(&p))
        } else if ft.is_symlink() {
            format!("link {}", std::fs::read_link(&p).unwrap().display())
        } else if ft.is_dir() {
            "dir".to_string()
        } else {
            format!("node {}", m.rdev())
        };
        // the roots' and lost+found's times are the filesystems' own; everything else matches
        let own = rel.as_os_str().is_empty() || rel.as_os_str() == "lost+found";
        let time = if own {
            String::new()
        } else {
            format!("{}.{:09}", m.mtime(), m.mtime_nsec())
        };
        lines.push(format!(
            "{} {:o} {}:{} {} {what} {time} [{}]",
            rel.display(),
            m.mode(),
            m.uid(),
            m.gid(),
            if ft.is_dir() { 0 } else { m.len() },
            x.join(" ")
        ));
        if ft.is_file() && m.nlink() > 1 {
            inodes
                .entry(m.ino())
                .or_default()
                .push(rel.display().to_string());
        }
        if ft.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
        }
    }
    lines.sort();
    let mut groups: Vec<Vec<String>> = inodes
        .into_values()
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    groups.sort();
    (lines, groups)
}

#[test]
fn image_files_are_copied_with_everything_a_system_needs() {
    use std::os::unix::fs::PermissionsExt as _;
    let _g = serial();
    let t = tempfile::tempdir().unwrap();
    let src = Mounted::new(t.path(), "src");
    let dst = Mounted::new(t.path(), "dst");
    let s = |p: &str| src.dir.join(p);
    for d in ["etc", "usr/bin", "home/u", "var", "tmp", "dev"] {
        std::fs::create_dir_all(s(d)).unwrap();
    }
    std::fs::write(s("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    std::fs::write(s("usr/bin/ping"), vec![0x7f; 5000]).unwrap();
    // cap_net_raw+ep (VFS_CAP_REVISION_2, effective)
    let cap = [
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    setxattr(&s("usr/bin/ping"), "security.capability", &cap);
    std::fs::write(s("usr/bin/su"), b"su").unwrap();
    std::fs::set_permissions(s("usr/bin/su"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::set_permissions(s("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::write(s("home/u/f"), b"mine").unwrap();
    std::os::unix::fs::chown(s("home/u/f"), Some(1000), Some(1000)).unwrap();
    std::os::unix::fs::chown(s("home/u"), Some(1000), Some(1000)).unwrap();
    setxattr(&s("home/u/f"), "user.note", b"kept");
    // an ACL: user::rwx, user:1000:r--, group::r-x, mask::r-x, other::r-x
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (1u16, 7u16, u32::MAX),
        (2, 4, 1000),
        (4, 5, u32::MAX),
        (0x10, 5, u32::MAX),
        (0x20, 5, u32::MAX),
    ] {
        acl.extend(tag.to_le_bytes());
        acl.extend(perm.to_le_bytes());
        acl.extend(id.to_le_bytes());
    }
    setxattr(&s("home/u"), "system.posix_acl_access", &acl);
    // a sparse file: 64 MiB of hole, then 4 KiB of data
    let sp = std::fs::File::create(s("var/sparse")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sp, &[9u8; 4096], 64 << 20).unwrap();
    drop(sp);
    std::fs::write(s("var/a"), b"linked").unwrap();
    std::fs::hard_link(s("var/a"), s("var/b")).unwrap();
    std::fs::hard_link(s("var/a"), s("etc/c")).unwrap();
    std::os::unix::fs::symlink("usr/lib", s("lib")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", s("etc/abs")).unwrap();
    ok("mkfifo", &[s("var/fifo").to_str().unwrap()]);
    ok("mknod", &[s("dev/null").to_str().unwrap(), "c", "1", "3"]);
    ok(
        "touch",
        &[
            "-h",
            "-d",
            "2021-03-04 05:06:07.123456789",
            s("etc/passwd").to_str().unwrap(),
        ],
    );
    ok(
        "touch",
        &[
            "-h",
            "-d",
            "2020-01-02 03:04:05.5",
            s("lib").to_str().unwrap(),
        ],
    );
    ok(
        "touch",
        &[
            "-d",
            "2019-05-06 07:08:09.25",
            s("home/u").to_str().unwrap(),
        ],
    );

    let copied = byol_agent::agent::install::copytree::copy_tree(&src.dir, &dst.dir).unwrap();
    assert_eq!(
        (copied.symlinks, copied.specials, copied.hard_links),
        (2, 2, 2),
        "{copied:?}"
    );
    let (want, want_links) = describe(&src.dir);
    let (got, got_links) = describe(&dst.dir);
    assert_eq!(got, want);
    assert_eq!(got_links, want_links);
    assert_eq!(want_links, vec![vec!["etc/c", "var/a", "var/b"]]);
    // the hole stayed a hole
    let blocks = std::os::unix::fs::MetadataExt::blocks(
        &std::fs::metadata(dst.dir.join("var/sparse")).unwrap(),
    );
    assert!(blocks * 512 < 1 << 20, "{blocks} blocks");
    // the image's absolute link was made, not followed
    assert_eq!(
        std::fs::read_link(dst.dir.join("etc/abs")).unwrap(),
        Path::new("/etc/passwd")
    );
}
