//! The install's disk steps on real block devices (loop devices over sparse files; root only):
//! small GPT and MBR images made with sfdisk (or gptman for 4096-byte sectors) and mke2fs,
//! written by the image engine, checked, their table fixed for UEFI or legacy BIOS, the kernel
//! told, the ESP and config-2 formatted and the ConfigDrive written; then checked with the
//! usual tools (`sgdisk -v`, `sfdisk --json`, `blkid`, `fsck.vfat -n`, `e2fsck -fn`) and read
//! back. And the refusals: two partitions, no table, sector size mismatch, a disk too small,
//! MBR past 2 TiB, each leaving the disk's first and last MiB zeroed.
//!
//! Needs: util-linux (losetup, sfdisk, blkid), e2fsprogs, gdisk (sgdisk), dosfstools
//! (fsck.vfat).

use std::os::unix::fs::FileExt;
use std::path::Path;

use byol_agent::agent::install::layout::{CONFIG_SIZE, ESP_SIZE, Role};
use byol_agent::agent::install::{
    self, Boot, BootloaderOptions, Firmware, Prepared, configdrive, image, mbr,
};
use byol_spec::{AgentConfig, AgentEvent, Checksum, ChecksumType, EventStatus};
use serde_json::Value;

mod install_support;
use install_support::*;

/// Download + prepare, as the install does them.
fn write_and_prepare(
    c: &AgentConfig,
    b: &Boot,
    dev: &Path,
) -> (Result<Prepared, install::InstallError>, Vec<AgentEvent>) {
    let mut ev: Vec<AgentEvent> = Vec::new();
    let msg = install::download::write(&c.install, dev, &mut ev)
        .unwrap_or_else(|e| panic!("the engine writes the image: {e:?}"));
    ev.push(AgentEvent {
        phase: "download".into(),
        status: EventStatus::Ok,
        message: msg,
        bytes_done: None,
        bytes_total: None,
        logs: Vec::new(),
        seconds: None,
        seq: None,
        inventory: None,
    });
    let r = install::prepare_disk(c, b, dev, &mut ev);
    (r, ev)
}

/// Checks shared by every successful layout: the root filesystem intact, config-2 last with
/// its label and files, the ESP (if any) FAT32 with the UUID fstab will name.
fn check_common(l: &Loop, p: &Prepared, ss: u64) {
    assert_eq!(p.devices.len(), p.layout.parts.len());
    for (d, part) in p.devices.iter().zip(&p.layout.parts) {
        assert_eq!(*d, l.part(part.number));
    }
    let root = p.device(Role::Root).unwrap();
    ok("e2fsck", &["-fn", root.to_str().unwrap()]);
    assert_eq!(blkid(root, "LABEL"), "byolroot");
    let cd = p.device(Role::ConfigDrive).unwrap();
    assert_eq!(blkid(cd, "LABEL"), "config-2");
    assert_eq!(blkid(cd, "TYPE"), "vfat");
    ok("fsck.vfat", &["-n", cd.to_str().unwrap()]);
    let meta: Value =
        serde_json::from_slice(&read_drive(cd, "openstack/latest/meta_data.json")).unwrap();
    assert_eq!(meta["uuid"], "inst-7");
    assert_eq!(meta["hostname"], "vm1.example");
    assert_eq!(meta["public_keys"]["default"], "ssh-ed25519 AAAA key");
    let nd: Value = serde_json::from_slice(&read_drive(
        cd,
        &format!("openstack/{}/network_data.json", configdrive::DATED),
    ))
    .unwrap();
    assert_eq!(nd["links"][0]["ethernet_mac_address"], "52:54:00:12:34:56");
    assert_eq!(nd["networks"][0]["ip_address"], "10.0.2.15");
    // config-2 is last, 64 MiB, ends on a MiB boundary.
    let last = p.layout.parts.last().unwrap();
    assert_eq!(last.role, Role::ConfigDrive);
    assert_eq!(last.sectors * ss, CONFIG_SIZE);
    assert_eq!((last.start + last.sectors) * ss % MIB, 0);
    // Partitions follow each other.
    for w in p.layout.parts.windows(2) {
        assert_eq!(
            w[0].start + w[0].sectors,
            w[1].start,
            "{:?}",
            p.layout.parts
        );
    }
    if let Some(esp) = p.device(Role::Esp) {
        assert_eq!(blkid(esp, "TYPE"), "vfat");
        assert_eq!(blkid(esp, "VERSION"), "FAT32");
        assert_eq!(Some(blkid(esp, "UUID")), p.esp_uuid);
        ok("fsck.vfat", &["-n", esp.to_str().unwrap()]);
        assert_eq!(p.layout.part(Role::Esp).unwrap().sectors * ss, ESP_SIZE);
    }
}

fn sgdisk_ok(dev: &Path) {
    let text = ok("sgdisk", &["-v", dev.to_str().unwrap()]);
    assert!(text.contains("No problems found"), "{text}");
}

fn phases(ev: &[AgentEvent]) -> Vec<(String, EventStatus)> {
    ev.iter()
        .filter(|e| e.status != EventStatus::Running)
        .map(|e| (e.phase.clone(), e.status))
        .collect()
}

#[test]
fn gpt_image_for_uefi() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let img = gpt_image(tmp.path());
    let disk = tmp.path().join("disk");
    sparse(&disk, 1024 * MIB);
    let l = Loop::attach(&disk, 512);
    let c = cfg(&img);
    let (r, ev) = write_and_prepare(&c, &boot(Firmware::Uefi), &l.dev);
    let p = r.unwrap();
    assert_eq!(
        phases(&ev),
        [
            ("download".to_string(), EventStatus::Ok),
            ("image".into(), EventStatus::Ok),
            ("partition".into(), EventStatus::Ok),
            ("configdrive".into(), EventStatus::Ok),
        ]
    );
    assert!(ev.iter().all(|e| e.check().is_ok()));
    let msg = |phase: &str| {
        ev.iter()
            .find(|e| e.phase == phase && e.status == EventStatus::Ok)
            .unwrap()
            .message
            .clone()
    };
    assert!(
        msg("download").starts_with(&format!(
            "raw image (stream mode) written to {}",
            l.dev.display()
        )) && msg("download").contains("sha256 verified"),
        "{}",
        msg("download")
    );
    assert_eq!(
        msg("image"),
        "GPT, 512-byte sectors, one partition: 1 Linux filesystem, ext4, 60.0 MiB"
    );
    let d = l.dev.display();
    assert_eq!(
        msg("partition"),
        format!(
            "GPT on 1.0 GiB: {d}p1 root 698.0 MiB (grown from 60.0 MiB), {d}p2 ESP 260.0 MiB \
             FAT32, {d}p3 config-2 64.0 MiB; backup GPT header at the disk's end"
        )
    );
    assert_eq!(
        msg("configdrive"),
        format!(
            "config-2 on {d}p3: openstack/{{latest,2018-08-27}}/ meta_data.json ({} bytes), \
             network_data.json ({} bytes)",
            configdrive::files(&c, boot(Firmware::Uefi).net.as_ref())[0]
                .data
                .len(),
            configdrive::files(&c, boot(Firmware::Uefi).net.as_ref())[1]
                .data
                .len()
        )
    );
    sgdisk_ok(&l.dev);
    let t = sfdisk_json(&l.dev);
    assert_eq!(t["label"], "gpt");
    let parts = t["partitions"].as_array().unwrap();
    let types: Vec<&str> = parts.iter().map(|p| p["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            LINUX_FS,
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
        ]
    );
    let names: Vec<&str> = parts
        .iter()
        .map(|p| p["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["", "EFI System Partition", "config-2"]);
    assert_eq!(parts[0]["start"], 2048);
    assert_eq!(
        parts[2]["start"].as_u64().unwrap() + parts[2]["size"].as_u64().unwrap(),
        (1024 * MIB - MIB) / 512
    );
    // The backup header is in the disk's last sector and says so; the image's old one is gone.
    let size = disk_size(&l.dev);
    let last = read_at(&l.dev, size - 512, 512);
    assert_eq!(&last[..8], b"EFI PART");
    assert_eq!(
        u64::from_le_bytes(last[24..32].try_into().unwrap()),
        size / 512 - 1
    );
    assert_ne!(&read_at(&l.dev, 64 * MIB - 512, 8)[..], b"EFI PART");
    // The protective MBR covers the disk.
    let mbr = read_at(&l.dev, 0, 512);
    assert_eq!(mbr[450], 0xee);
    assert_eq!(mbr[446], 0, "not active on UEFI");
    assert_eq!(
        u32::from_le_bytes(mbr[458..462].try_into().unwrap()) as u64,
        size / 512 - 1
    );
    check_common(&l, &p, 512);
}

#[test]
fn gpt_image_for_legacy_bios() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let img = gpt_image(tmp.path());
    let disk = tmp.path().join("disk");
    sparse(&disk, 512 * MIB);
    let l = Loop::attach(&disk, 512);
    let (r, _) = write_and_prepare(&cfg(&img), &boot(Firmware::Bios), &l.dev);
    let p = r.unwrap();
    sgdisk_ok(&l.dev);
    let parts = sfdisk_json(&l.dev)["partitions"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[1]["type"], "21686148-6449-6E6F-744E-656564454649");
    assert_eq!(parts[1]["size"], 2048);
    assert_eq!(p.layout.part(Role::BiosBoot).unwrap().number, 2);
    let mbr = read_at(&l.dev, 0, 512);
    assert_eq!(
        (mbr[446], mbr[450]),
        (0x80, 0xee),
        "active protective MBR on legacy BIOS"
    );
    assert!(p.esp_uuid.is_none());
    check_common(&l, &p, 512);
}

#[test]
fn mbr_image_for_uefi_and_bios() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let img = mbr_image(tmp.path());
    let label_id = sfdisk_json(&img)["id"].clone();
    for fw in [Firmware::Uefi, Firmware::Bios] {
        let disk = tmp.path().join("disk");
        sparse(&disk, 1024 * MIB);
        let l = Loop::attach(&disk, 512);
        let (r, ev) = write_and_prepare(&cfg(&img), &boot(fw), &l.dev);
        let p = r.unwrap();
        let t = sfdisk_json(&l.dev);
        assert_eq!(t["label"], "dos");
        assert_eq!(t["id"], label_id, "the disk signature (PARTUUIDs) is kept");
        let parts = t["partitions"].as_array().unwrap();
        let types: Vec<&str> = parts.iter().map(|p| p["type"].as_str().unwrap()).collect();
        match fw {
            Firmware::Uefi => {
                assert_eq!(types, ["83", "ef", "e"]);
                assert!(parts[0].get("bootable").is_none());
            }
            Firmware::Bios => {
                assert_eq!(types, ["83", "e"]);
                assert_eq!(parts[0]["bootable"], true);
            }
        }
        assert_eq!(parts[0]["start"], 2048);
        let end = parts.last().unwrap();
        assert_eq!(
            end["start"].as_u64().unwrap() + end["size"].as_u64().unwrap(),
            1024 * MIB / 512
        );
        assert!(ev.iter().any(|e| {
            e.phase == "image"
                && e.message
                    .starts_with("MBR, 512-byte sectors, one partition: 1 0x83 Linux, ext4")
        }));
        check_common(&l, &p, 512);
        drop(l);
        std::fs::remove_file(&disk).unwrap();
    }
}

#[test]
fn gpt_image_for_4k_sectors() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let img = gpt4k_image(tmp.path());
    let disk = tmp.path().join("disk");
    sparse(&disk, 1024 * MIB);
    let l = Loop::attach(&disk, 4096);
    let (r, ev) = write_and_prepare(&cfg(&img), &boot(Firmware::Uefi), &l.dev);
    let p = r.unwrap();
    assert!(
        ev.iter().any(|e| e.phase == "image"
            && e.message
                == "GPT, 4096-byte sectors, one partition: 1 Linux filesystem, ext4, 60.0 MiB"),
        "{ev:?}"
    );
    sgdisk_ok(&l.dev);
    assert_eq!(p.layout.sector_size, 4096);
    let size = disk_size(&l.dev);
    assert_eq!(&read_at(&l.dev, size - 4096, 8)[..], b"EFI PART");
    check_common(&l, &p, 4096);
}

/// The whole install on the loop device, expected to fail in `phase`.
fn refused(img: &Path, disk_len: u64, sector: u32, fw: Firmware, phase: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk");
    dirty_disk(&disk, disk_len);
    let l = Loop::attach(&disk, sector);
    let mut ev: Vec<AgentEvent> = Vec::new();
    let e = install::install_on(
        &cfg(img),
        &boot(fw),
        &l.dev,
        &BootloaderOptions::default(),
        &mut ev,
    )
    .unwrap_err();
    assert_eq!(e.phase, phase, "{e:?}");
    assert!(ends_are_zero(&l.dev), "the disk is left unbootable");
    if phase == "image" {
        // refused before the engine's commit: the image's first MiB never went to the disk
        let last = ev.last().unwrap();
        assert_eq!(
            (last.phase.as_str(), last.message.as_str()),
            (
                "download",
                "image written and verified, but refused by the checks"
            )
        );
    }
    e.message
}

#[test]
fn an_image_with_two_partitions_is_refused_and_wiped() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let img = image(
        tmp.path(),
        "two.img",
        "gpt",
        &[
            &format!("start=2048, size=61440, type={LINUX_FS}"),
            "start=63488, size=59392, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
        ],
        30 * MIB,
    );
    assert_eq!(
        refused(&img, 512 * MIB, 512, Firmware::Uefi, "image"),
        "the image must hold exactly one partition, with the root filesystem (byol adds the ESP, \
         BIOS boot and config-2 partitions itself), but its GPT has 2: 1: Linux filesystem, 30.0 \
         MiB; 2: Linux swap, 29.0 MiB"
    );
    let img = image(
        tmp.path(),
        "two-mbr.img",
        "dos",
        &[
            "start=2048, size=61440, type=83",
            "start=63488, size=59392, type=82",
        ],
        30 * MIB,
    );
    assert_eq!(
        refused(&img, 512 * MIB, 512, Firmware::Bios, "image"),
        "the image must hold exactly one partition, with the root filesystem (byol adds the ESP, \
         BIOS boot and config-2 partitions itself), but its MBR has 2: 1: 0x83 Linux, 30.0 MiB; \
         2: 0x82 Linux swap, 29.0 MiB"
    );
}

#[test]
fn a_bare_filesystem_is_not_a_disk_image() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("bare.img");
    sparse(&img, 64 * MIB);
    ext4_at(&img, 0, 64 * MIB);
    assert_eq!(
        refused(&img, 512 * MIB, 512, Firmware::Bios, "image"),
        "the image has no partition table: it is a bare ext4 filesystem; byol needs a disk image \
         whose partition table (MBR or GPT) holds one partition with the root filesystem"
    );
}

#[test]
fn sector_size_mismatch_is_refused() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let img = gpt_image(tmp.path());
    let msg = refused(&img, 1024 * MIB, 4096, Firmware::Uefi, "image");
    assert!(
        msg.starts_with("the image's GPT is laid out for 512-byte sectors (its header is at byte 512) but /dev/loop")
            && msg.ends_with(
                "has 4096-byte logical sectors: neither the firmware nor the kernel would find \
                 its partitions; use an image built for 4096-byte sectors"
            ),
        "{msg}"
    );
    let img = gpt4k_image(tmp.path());
    let msg = refused(&img, 1024 * MIB, 512, Firmware::Uefi, "image");
    assert!(
        msg.starts_with("the image's GPT is laid out for 4096-byte sectors"),
        "{msg}"
    );
    // An MBR does not say its sector size: the filesystem's place does.
    let img = mbr_image(tmp.path());
    let msg = refused(&img, 1024 * MIB, 4096, Firmware::Bios, "image");
    assert!(
        msg.starts_with("the image's MBR partition starts at sector 2048: with /dev/loop")
            && msg.ends_with(
                "4096-byte logical sectors that holds no filesystem, with 512-byte sectors it \
                 holds ext4: the image is laid out for 512-byte sectors; use an image built for \
                 4096-byte sectors"
            ),
        "{msg}"
    );
}

#[test]
fn a_disk_too_small_for_the_added_partitions_is_refused() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let img = gpt_image(tmp.path());
    let msg = refused(&img, 200 * MIB, 512, Firmware::Uefi, "partition");
    assert!(
        msg.starts_with("/dev/loop")
            && msg.ends_with(
                "is too small: the image's partition ends at 61.0 MiB and byol adds 324.0 MiB \
                 after it (ESP 260.0 MiB, config-2 64.0 MiB), but the disk ends at 200.0 MiB"
            ),
        "{msg}"
    );
}

#[test]
fn a_download_that_fails_leaves_an_untouched_disk_alone() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk");
    dirty_disk(&disk, 256 * MIB);
    let l = Loop::attach(&disk, 512);
    let c = cfg(&tmp.path().join("missing.img"));
    let mut ev: Vec<AgentEvent> = Vec::new();
    let e = install::install_on(
        &c,
        &boot(Firmware::Bios),
        &l.dev,
        &BootloaderOptions::default(),
        &mut ev,
    )
    .unwrap_err();
    assert_eq!(e.phase, "download");
    assert_eq!(read_at(&l.dev, 0, 4), [0xaa; 4]);
    assert_eq!(read_at(&l.dev, 256 * MIB - 4, 4), [0xaa; 4]);
}

#[test]
fn a_checksum_mismatch_leaves_nothing_bootable() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let img = gpt_image(tmp.path());
    let disk = tmp.path().join("disk");
    dirty_disk(&disk, 512 * MIB);
    let l = Loop::attach(&disk, 512);
    let mut c = cfg(&img);
    c.install.checksum = Some(Checksum {
        kind: ChecksumType::Sha256,
        hex: "0".repeat(64),
    });
    let mut ev: Vec<AgentEvent> = Vec::new();
    let e = install::install_on(
        &c,
        &boot(Firmware::Bios),
        &l.dev,
        &BootloaderOptions::default(),
        &mut ev,
    )
    .unwrap_err();
    assert_eq!(e.phase, "download");
    assert!(
        e.message
            .starts_with("Bad `sha256` for downloaded file, got : `"),
        "{}",
        e.message
    );
    assert!(ends_are_zero(&l.dev));
}

#[test]
fn mbr_past_2_tib_uses_the_first_2_tib_and_says_so() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let img = mbr_image(tmp.path());
    let disk = tmp.path().join("disk");
    sparse(&disk, 3 << 40);
    let l = Loop::attach(&disk, 512);
    let (r, ev) = write_and_prepare(&cfg(&img), &boot(Firmware::Bios), &l.dev);
    let p = r.unwrap();
    let w = "an MBR addresses only the first 2.0 TiB of this 3.0 TiB disk: the rest stays unused \
             (a GPT image would use it all)";
    assert_eq!(p.layout.warnings, [w]);
    assert!(
        ev.iter()
            .any(|e| e.phase == "partition" && e.message.ends_with(&format!("; warning: {w}")))
    );
    let parts = sfdisk_json(&l.dev)["partitions"]
        .as_array()
        .unwrap()
        .clone();
    let end = &parts[1];
    assert_eq!(
        end["start"].as_u64().unwrap() + end["size"].as_u64().unwrap(),
        1 << 32
    );
    check_common(&l, &p, 512);
}

#[test]
fn mbr_that_cannot_fit_below_2_tib_is_a_clear_error() {
    // The table logic alone, on a sparse file: a partition ending 1 MiB short of 2 TiB.
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk");
    sparse(&disk, 3 << 40);
    let mut head = [0u8; 512];
    let start: u32 = 2048;
    let sectors: u32 = u32::MAX - 2048 - 2048;
    head[446 + 4] = 0x83;
    head[446 + 8..446 + 12].copy_from_slice(&start.to_le_bytes());
    head[446 + 12..446 + 16].copy_from_slice(&sectors.to_le_bytes());
    head[510] = 0x55;
    head[511] = 0xaa;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)
        .unwrap();
    f.write_all_at(&head, 0).unwrap();
    let img = image::ImageInfo {
        table: image::TableKind::Mbr,
        sector_size: 512,
        number: 1,
        start: 2048,
        end: u64::from(start) + u64::from(sectors) - 1,
        type_name: "0x83 Linux".into(),
        fs: image::FsKind::Ext4,
    };
    let d = byol_agent::disk::Disk::from_file(f, "/dev/sdz".into()).unwrap();
    let e = mbr::apply(&d, 3 << 40, &img, Firmware::Bios).unwrap_err();
    assert_eq!(
        e,
        "/dev/sdz is too small: the image's partition ends at 2.0 TiB and byol adds 64.0 MiB \
         after it (config-2 64.0 MiB), but an MBR can only address the first 2.0 TiB of the \
         disk"
    );
}

#[test]
fn a_hostile_gpt_header_is_refused_before_any_library_reads_it() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let patched = |name: &str, at: u64, value: u32| {
        let img = image(
            tmp.path(),
            name,
            "gpt",
            &[&format!("start=2048, size=61440, type={LINUX_FS}")],
            30 * MIB,
        );
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &value.to_le_bytes(), 512 + at).unwrap();
        img
    };
    // 2^32 - 1 entries: gptman would try to allocate them
    let img = patched("many.img", 80, u32::MAX);
    assert_eq!(
        refused(&img, 512 * MIB, 512, Firmware::Uefi, "image"),
        "the image's GPT announces 4294967295 partition entries: byol reads 1 to 4096 (tools \
         write 128)"
    );
    // 256-byte entries: gptman asserts on them (a panic in PID 1)
    let img = patched("wide.img", 84, 256);
    assert_eq!(
        refused(&img, 512 * MIB, 512, Firmware::Uefi, "image"),
        "the image's GPT has 256-byte partition entries: byol reads only the 128-byte entries \
         every partitioning tool writes"
    );
    // a damaged primary (header CRC, then entries CRC): gptman would read the backup header
    // at the disk's end, which nothing checked, so the image is refused
    let img = patched("crc.img", 56, 0x1234_5678);
    assert_eq!(
        refused(&img, 512 * MIB, 512, Firmware::Uefi, "image"),
        "the image's primary GPT header is damaged (its CRC32 does not match): byol does not \
         fall back to the backup header; repair the image's table (sgdisk -v, then gdisk's \
         recovery menu)"
    );
    let img = patched("entries.img", 512 + 200, 0x1234_5678);
    assert_eq!(
        refused(&img, 512 * MIB, 512, Firmware::Uefi, "image"),
        "the image's primary GPT header is damaged (the CRC32 of its partition entries does not \
         match): byol does not fall back to the backup header; repair the image's table \
         (sgdisk -v, then gdisk's recovery menu)"
    );
    // entries at an LBA whose byte offset does not fit in 64 bits: gptman's seek would wrap
    let img = patched("far.img", 76, 0x4000_0000);
    assert_eq!(
        refused(&img, 512 * MIB, 512, Firmware::Uefi, "image"),
        "the image's GPT says its partition entries start at LBA 4611686018427387906: they \
         follow the header (LBA 2 on every tool's table); the table is damaged"
    );
}
