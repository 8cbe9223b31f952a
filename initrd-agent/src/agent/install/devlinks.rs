//! devlinks: the `/dev/disk/by-id/` and `/dev/disk/by-path/` links udev makes on a booted
//! system, made by hand before the hook runs (no udev in the initramfs). OVHcloud's hooks
//! give GRUB its install devices by their by-id name (`find -L /dev/disk/by-id -samefile`).
//!
//! Names, as udev's `60-persistent-storage.rules`: `virtio-<serial>`, `ata-<model>_<serial>`
//! (SATA), `nvme-<model>_<serial>`, and `wwn-<wwn>` for SATA/SAS disks with one; by-path the
//! names [`super::super::disks`] computed like `path_id`. Partitions get `-part<N>`. Blanks
//! become `_` and characters udev would escape become `_` as well. A link already there is left
//! alone; nothing here stops the install.

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
fn partitions(sysfs: &Path, name: &str) -> Vec<(String, u32)> {
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
