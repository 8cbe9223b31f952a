//! devlinks: the `/dev/disk/by-id/` and `/dev/disk/by-path/` links udev makes on a booted
//! system, made by hand before the hook runs (no udev in the initramfs). OVHcloud's hooks
//! give GRUB its install devices by their by-id name (`find -L /dev/disk/by-id -samefile`).
//!
//! Names, as udev's `60-persistent-storage.rules`: `virtio-<serial>`, `ata-<model>_<serial>`
//! (SATA), `nvme-<model>_<serial>`, and `wwn-<wwn>` for SATA/SAS disks with one; by-path the
//! names [`super::super::disks`] computed like `path_id`. Partitions get `-part<N>`. Blanks
//! become `_` and characters udev would escape become `_` as well. Filesystems on the
//! partitions get `by-uuid/<uuid>` and `by-label/<label>` (ext2/3/4, xfs, btrfs, vfat, read from
//! their superblocks as blkid does): `update-grub` writes `root=UUID=…` only when
//! `/dev/disk/by-uuid/<uuid>` exists, and a `root=/dev/sdb1` would depend on the order the
//! kernel happens to name disks in. A link already there is left alone; nothing here stops
//! the install.

use std::fs;
use std::path::Path;

use super::super::disks::Disk;

/// udev's by-id names of `d` (none when it has no serial or is of another transport).
pub fn by_id(d: &Disk) -> Vec<String> {
    let mut v = Vec::new();
    let serial = d.serial.as_deref().map(clean).filter(|s| !s.is_empty());
    let model = d.model.as_deref().map(clean).filter(|s| !s.is_empty());
    match (d.transport.as_str(), serial, model) {
        ("virtio", Some(s), _) => v.push(format!("virtio-{s}")),
        ("sata", Some(s), Some(m)) => v.push(format!("ata-{m}_{s}")),
        ("nvme", Some(s), Some(m)) => v.push(format!("nvme-{m}_{s}")),
        _ => {}
    }
    if matches!(d.transport.as_str(), "sata" | "sas")
        && let Some(w) = d.wwn.as_deref().map(clean).filter(|w| !w.is_empty())
    {
        let w = w
            .strip_prefix("naa.")
            .map(|h| format!("0x{h}"))
            .unwrap_or(w);
        v.push(format!("wwn-{w}"));
    }
    v
}

/// Whitespace runs to one `_`, leading and trailing ones dropped, other characters that are
/// not safe in a file name to `_`.
fn clean(s: &str) -> String {
    let words: Vec<&str> = s.split_whitespace().collect();
    words
        .join("_")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "#+-.:=@_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The partitions of disk `name` in `sysfs`: (kernel name, number).
pub fn partitions(sysfs: &Path, name: &str) -> Vec<(String, u32)> {
    let Ok(rd) = fs::read_dir(sysfs.join("block").join(name)) else {
        return Vec::new();
    };
    let mut v: Vec<(String, u32)> = rd
        .filter_map(Result::ok)
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let num = fs::read_to_string(e.path().join("partition")).ok()?;
            Some((n, num.trim().parse().ok()?))
        })
        .collect();
    v.sort();
    v
}

/// A filesystem's UUID and label as blkid shows them, from its superblock.
pub fn fs_ids(part: &Path) -> Option<(String, Option<String>)> {
    use std::os::unix::fs::FileExt as _;
    let f = fs::File::open(part).ok()?;
    // through the end of btrfs's superblock (64 KiB in, 4 KiB long: its label ends at
    // 0x1022B; 0x10200 was short of it, and every btrfs went unrecognised)
    let mut b = vec![0u8; 0x11000];
    let n = f.read_at(&mut b, 0).ok()?;
    b.truncate(n);
    let at = |o: usize, len: usize| b.get(o..o + len);
    let uuid = |u: &[u8]| {
        let h = hex(u);
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    };
    let label = |l: &[u8]| {
        let end = l.iter().position(|&c| c == 0).unwrap_or(l.len());
        let t = String::from_utf8_lossy(&l[..end]).trim_end().to_string();
        (!t.is_empty()).then_some(t)
    };
    // ext2/3/4: the superblock at 1024, magic 0xEF53 at its byte 56
    if at(1024 + 56, 2) == Some(&[0x53, 0xEF]) {
        return Some((uuid(at(1024 + 0x68, 16)?), label(at(1024 + 0x78, 16)?)));
    }
    // swap: the signature at the end of the first 4 KiB page, UUID and label in its header
    if at(4096 - 10, 10) == Some(b"SWAPSPACE2") {
        return Some((uuid(at(1024 + 12, 16)?), label(at(1024 + 28, 16)?)));
    }
    if at(0, 4) == Some(b"XFSB") {
        return Some((uuid(at(32, 16)?), label(at(108, 12)?)));
    }
    if at(0x10040, 8) == Some(b"_BHRfS_M") {
        return Some((uuid(at(0x10020, 16)?), label(at(0x1012B, 256)?)));
    }
    if at(510, 2) == Some(&[0x55, 0xAA]) {
        let (id, lab) = if at(82, 5) == Some(b"FAT32") {
            (at(67, 4)?, at(71, 11)?)
        } else if at(54, 3) == Some(b"FAT") {
            (at(39, 4)?, at(43, 11)?)
        } else {
            return None;
        };
        let v = u32::from_le_bytes([id[0], id[1], id[2], id[3]]);
        let lab = label(lab).filter(|l| l != "NO NAME");
        return Some((super::fat::volume_uuid(v), lab));
    }
    None
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A label as udev names its link: safe characters kept, others as `\xNN`.
fn label_name(l: &str) -> String {
    l.bytes()
        .map(|c| {
            if c.is_ascii_alphanumeric() || b"#+-.:=@_".contains(&c) {
                (c as char).to_string()
            } else {
                format!("\\x{c:02x}")
            }
        })
        .collect()
}

/// Makes `dev/disk/<kind>/<link>` → `../../<target>` unless a link is there already; what
/// was made or failed goes to `made` / `errors`.
fn link(
    dev: &Path,
    kind: &str,
    link: &str,
    target: &str,
    made: &mut Vec<String>,
    errors: &mut Vec<String>,
) {
    let dir = dev.join("disk").join(kind);
    let path = dir.join(link);
    if fs::symlink_metadata(&path).is_ok() {
        return;
    }
    match fs::create_dir_all(&dir)
        .and_then(|()| std::os::unix::fs::symlink(format!("../../{target}"), &path))
    {
        Ok(()) => made.push(format!("disk/{kind}/{link}")),
        Err(e) => errors.push(format!("cannot make {}: {e}", path.display())),
    }
}

/// The by-uuid and by-label links of the filesystem on `target` (`dev/<target>`) from its
/// superblock.
fn fs_links(
    dev: &Path,
    node: &Path,
    target: &str,
    made: &mut Vec<String>,
    errors: &mut Vec<String>,
) {
    let Some((uuid, label)) = fs_ids(node) else {
        return;
    };
    link(dev, "by-uuid", &uuid, target, made, errors);
    if let Some(l) = label {
        link(dev, "by-label", &label_name(&l), target, made, errors);
    }
}

/// Makes the by-id and by-path links of `disks` and their partitions under `dev/disk/`.
/// Returns the links made (relative to `dev`) and what could not be made.
pub fn make(dev: &Path, sysfs: &Path, disks: &[Disk]) -> (Vec<String>, Vec<String>) {
    let (mut made, mut errors) = (Vec::new(), Vec::new());
    for d in disks {
        let parts = partitions(sysfs, &d.name);
        for (kind, names) in [("by-id", by_id(d)), ("by-path", d.by_path.clone())] {
            let dir = dev.join("disk").join(kind);
            if names.is_empty() {
                continue;
            }
            if let Err(e) = fs::create_dir_all(&dir) {
                errors.push(format!("cannot make {}: {e}", dir.display()));
                continue;
            }
            for n in &names {
                let mut links = vec![(n.clone(), d.name.clone())];
                links.extend(
                    parts
                        .iter()
                        .map(|(p, num)| (format!("{n}-part{num}"), p.clone())),
                );
                for (link, target) in links {
                    let p = dir.join(&link);
                    if fs::symlink_metadata(&p).is_ok() {
                        continue;
                    }
                    match std::os::unix::fs::symlink(format!("../../{target}"), &p) {
                        Ok(()) => made.push(format!("disk/{kind}/{link}")),
                        Err(e) => errors.push(format!("cannot make {}: {e}", p.display())),
                    }
                }
            }
        }
        // GPT partitions by their unique GUID, as udev's by-partuuid
        for (guid, p) in part_uuids(dev, &d.name, &parts) {
            link(dev, "by-partuuid", &guid, &p, &mut made, &mut errors);
        }
        // the filesystems on its partitions, by UUID and label
        for (p, _) in &parts {
            fs_links(dev, &dev.join(p), p, &mut made, &mut errors);
        }
    }
    (made, errors)
}

/// The unique GUIDs of disk `name`'s GPT partitions (lowercase, as udev writes them) with
/// the partitions' kernel names; nothing for an MBR disk or an unreadable table.
fn part_uuids(dev: &Path, name: &str, parts: &[(String, u32)]) -> Vec<(String, String)> {
    let Ok(d) = crate::disk::Disk::open(&dev.join(name), crate::disk::Access::Read) else {
        return Vec::new();
    };
    let sector = u64::from(d.logical_sector());
    let mut f = d.file();
    // any disk of the machine may hold anything: the header is checked before gptman reads it
    if super::image::check_gpt_header(&mut f, sector).is_err() {
        return Vec::new();
    }
    let Ok(gpt) = gptman::GPT::read_from(&mut f, sector) else {
        return Vec::new();
    };
    parts
        .iter()
        .filter(|(_, n)| *n >= 1 && *n <= gpt.header.number_of_partition_entries)
        .filter(|(_, n)| gpt[*n].is_used())
        .map(|(p, n)| {
            (
                super::ids::format_guid(&gpt[*n].unique_partition_guid).to_lowercase(),
                p.clone(),
            )
        })
        .collect()
}

/// Makes the by-uuid and by-label links of the filesystems on `volumes` (md arrays, LVs:
/// `/dev/md2`, `/dev/vg/root`) under `dev/disk/`, pointing at their kernel device (`md2`,
/// `dm-0`) as udev does. Returns the links made and what could not be made.
pub fn make_for_volumes(dev: &Path, volumes: &[std::path::PathBuf]) -> (Vec<String>, Vec<String>) {
    let (mut made, mut errors) = (Vec::new(), Vec::new());
    for v in volumes {
        let target = match fs::canonicalize(v) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("cannot resolve {}: {e}", v.display()));
                continue;
            }
        };
        let Some(name) = target.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        fs_links(dev, v, &name, &mut made, &mut errors);
    }
    (made, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str, transport: &str, model: Option<&str>, serial: Option<&str>) -> Disk {
        Disk {
            name: name.into(),
            path: format!("/dev/{name}"),
            size_bytes: 1 << 30,
            logical_sector: 512,
            physical_sector: 512,
            vendor: None,
            model: model.map(Into::into),
            serial: serial.map(Into::into),
            wwn: None,
            rotational: false,
            removable: false,
            read_only: false,
            transport: transport.into(),
            by_path: vec!["pci-0000:00:04.0".into()],
        }
    }

    #[test]
    fn filesystem_ids_as_blkid_shows_them() {
        let t = tempfile::tempdir().unwrap();
        let run = |cmd: &str, args: &[&str]| {
            let st = std::process::Command::new(cmd)
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
            st.is_ok_and(|s| s.success())
        };
        let blkid = |p: &Path, tag: &str| {
            let o = std::process::Command::new("blkid")
                .args(["-o", "value", "-s", tag])
                .arg(p)
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        };
        let ext = t.path().join("ext");
        fs::File::create(&ext).unwrap().set_len(16 << 20).unwrap();
        assert!(run(
            "mkfs.ext4",
            &["-q", "-F", "-L", "my root", ext.to_str().unwrap()]
        ));
        let (u, l) = fs_ids(&ext).unwrap();
        assert_eq!(u, blkid(&ext, "UUID"));
        assert_eq!(l.as_deref(), Some("my root"));
        assert_eq!(label_name("my root"), "my\\x20root");
        let vfat = t.path().join("vfat");
        fs::File::create(&vfat).unwrap().set_len(40 << 20).unwrap();
        assert!(run(
            "mkfs.vfat",
            &["-F", "32", "-n", "EFI", vfat.to_str().unwrap()]
        ));
        let (u, l) = fs_ids(&vfat).unwrap();
        assert_eq!(u, blkid(&vfat, "UUID"));
        assert_eq!(l.as_deref(), Some("EFI"));
        let swap = t.path().join("swap");
        fs::File::create(&swap).unwrap().set_len(16 << 20).unwrap();
        assert!(run("mkswap", &["-L", "swap-vda4", swap.to_str().unwrap()]));
        let (u, l) = fs_ids(&swap).unwrap();
        assert_eq!(u, blkid(&swap, "UUID"));
        assert_eq!(l.as_deref(), Some("swap-vda4"));
        // btrfs and xfs, as their mkfs writes them (btrfs's label lies past 64.5 KiB)
        for (fs, size, label) in [
            ("btrfs", 128u64 << 20, "containers"),
            ("xfs", 320 << 20, "data"),
        ] {
            let p = t.path().join(fs);
            fs::File::create(&p).unwrap().set_len(size).unwrap();
            assert!(run(
                &format!("mkfs.{fs}"),
                &["-q", "-f", "-L", label, p.to_str().unwrap()]
            ));
            let (u, l) = fs_ids(&p).unwrap_or_else(|| panic!("{fs} not recognised"));
            assert_eq!(u, blkid(&p, "UUID"), "{fs}");
            assert_eq!(l.as_deref(), Some(label), "{fs}");
        }
        let none = t.path().join("none");
        fs::write(&none, vec![0u8; 1 << 20]).unwrap();
        assert_eq!(fs_ids(&none), None);
    }

    #[test]
    fn names_follow_udev() {
        let v = disk("vda", "virtio", None, Some("byol-disk-1"));
        assert_eq!(by_id(&v), ["virtio-byol-disk-1"]);
        let mut s = disk("sda", "sata", Some("QEMU HARDDISK"), Some("QM00005"));
        s.wwn = Some("naa.5000c500a1b2c3d4".into());
        assert_eq!(
            by_id(&s),
            ["ata-QEMU_HARDDISK_QM00005", "wwn-0x5000c500a1b2c3d4"]
        );
        let n = disk(
            "nvme0n1",
            "nvme",
            Some("  Samsung SSD 980  "),
            Some("S1 23"),
        );
        assert_eq!(by_id(&n), ["nvme-Samsung_SSD_980_S1_23"]);
        assert!(by_id(&disk("vdb", "virtio", None, None)).is_empty());
        assert_eq!(clean("a/b c"), "a_b_c");
    }

    #[test]
    fn links_for_disks_and_partitions() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path().join("sys");
        let dev = t.path().join("dev");
        for (p, n) in [("vda1", "1"), ("vda2", "2")] {
            fs::create_dir_all(sys.join("block/vda").join(p)).unwrap();
            fs::write(
                sys.join("block/vda").join(p).join("partition"),
                format!("{n}\n"),
            )
            .unwrap();
        }
        fs::create_dir_all(sys.join("block/vda/queue")).unwrap();
        let d = disk("vda", "virtio", None, Some("s1"));
        let (made, errors) = make(&dev, &sys, std::slice::from_ref(&d));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            made,
            [
                "disk/by-id/virtio-s1",
                "disk/by-id/virtio-s1-part1",
                "disk/by-id/virtio-s1-part2",
                "disk/by-path/pci-0000:00:04.0",
                "disk/by-path/pci-0000:00:04.0-part1",
                "disk/by-path/pci-0000:00:04.0-part2",
            ]
        );
        assert_eq!(
            fs::read_link(dev.join("disk/by-id/virtio-s1-part2")).unwrap(),
            Path::new("../../vda2")
        );
        // again: nothing new, no error
        assert_eq!(make(&dev, &sys, &[d]), (vec![], vec![]));
    }
}
