//! The whole install on a loop device, bootloader step included (root only): an image whose
//! root filesystem holds a tiny system (the host's dash, mkdir and cat with their libraries)
//! and a `make_image_bootable.sh` that reports what it sees and plays GRUB's part on the ESP.
//! The root and the ESP are really mounted, /dev, /proc, /sys and /run bound, the hook run in
//! the chroot, everything unmounted; then the image is read back without mounting (debugfs,
//! fatfs). And the hook's failures: the disk wiped, nothing left mounted.

mod install_support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use byol_agent::agent::install::{self, BootloaderOptions, Firmware, efiboot};
use byol_spec::{AgentEvent, EventStatus};
use install_support::*;

const LINUX_FS: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// Copies `bin` (resolved) to `<stage>/bin/<name>` with the libraries ldd names.
fn stage_binary(stage: &Path, bin: &str, name: &str) {
    let real = std::fs::canonicalize(bin).unwrap();
    std::fs::create_dir_all(stage.join("bin")).unwrap();
    std::fs::copy(&real, stage.join("bin").join(name)).unwrap();
    let ldd = ok("ldd", &[real.to_str().unwrap()]);
    for line in ldd.lines() {
        let lib = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        let Some(lib) = lib else { continue };
        let dest = stage.join(lib.strip_prefix("/").unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&lib, &dest).unwrap();
    }
}

/// A GPT image whose ext4 root holds a tiny system and `hook` as the guide's script (none
/// when `hook` is None).
fn system_image(dir: &Path, hook: Option<&str>) -> PathBuf {
    system_image_with(dir, hook, |_| {})
}

/// [`system_image`] with `tweak` run on the staged tree before it becomes the filesystem.
fn system_image_with(dir: &Path, hook: Option<&str>, tweak: impl Fn(&Path)) -> PathBuf {
    let stage = dir.join("stage");
    let _ = std::fs::remove_dir_all(&stage);
    stage_binary(&stage, "/bin/sh", "sh");
    stage_binary(&stage, "/bin/mkdir", "mkdir");
    stage_binary(&stage, "/bin/cat", "cat");
    for d in [
        "etc",
        "boot",
        "dev",
        "proc",
        "sys",
        "run",
        "root/.ovh",
        "tmp",
    ] {
        std::fs::create_dir_all(stage.join(d)).unwrap();
    }
    std::fs::write(
        stage.join("etc/fstab"),
        "LABEL=byolroot / ext4 errors=remount-ro 0 1\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "../run/systemd/resolve/stub-resolv.conf",
        stage.join("etc/resolv.conf"),
    )
    .unwrap();
    if let Some(h) = hook {
        let p = stage.join("root/.ovh/make_image_bootable.sh");
        std::fs::write(&p, h).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    tweak(&stage);
    let p = dir.join("system.img");
    sparse(&p, 64 * MIB);
    let script = format!("label: gpt\nstart=2048, size=122880, type={LINUX_FS}\n");
    let mut child = Command::new("sfdisk")
        .args(["-q", p.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    ext4_with(&p, MIB, 60 * MIB, Some(&stage));
    p
}

const HOOK: &str = r#"#!/bin/sh
echo "mode=$BOOT_MODE disk=$TARGET_DISK esp=$ESP_DEVICE"
echo "resolv: $(cat /etc/resolv.conf)"
cat /etc/fstab
[ -b "$TARGET_DISK" ] && echo "dev ok"
[ -e /dev/pts/ptmx ] && [ -d /dev/shm ] && [ -e /dev/fd/1 ] && echo "pts ok"
[ -r /proc/self/mountinfo ] && echo "proc ok"
echo "cmdline: $(cat /proc/cmdline)"
[ -d /sys/block ] && echo "sys ok"
if [ "$BOOT_MODE" = uefi ]; then
  mkdir -p /boot/efi/EFI/debian
  echo grub > /boot/efi/EFI/debian/grubx64.efi
  echo 'search --fs-uuid' > /boot/efi/EFI/debian/grub.cfg
fi
echo ran > /root/hook-ran
echo "to stderr" >&2
"#;

/// Where the test mounts the image, and no mount left under it.
fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&d))
        .map(str::to_string)
        .collect()
}

fn options(tmp: &Path) -> BootloaderOptions {
    let resolv = tmp.join("agent-resolv.conf");
    std::fs::write(&resolv, "nameserver 10.0.2.3\n").unwrap();
    // a fake efivarfs: the firmware boots the network first (never the host's variables)
    let vars = efiboot::Vars {
        dir: tmp.join("efivars"),
    };
    std::fs::create_dir_all(&vars.dir).unwrap();
    let mut pxe = vec![3, 11, 37, 0];
    pxe.extend_from_slice(&[0; 33]);
    pxe.extend_from_slice(&[0x7f, 0xff, 4, 0]);
    let net = efiboot::LoadOption {
        attributes: 1,
        description: "UEFI PXEv4".into(),
        device_path: pxe,
        optional_data: Vec::new(),
    };
    vars.write("Boot0003", &net.encode()).unwrap();
    vars.write("BootOrder", &[3, 0]).unwrap();
    BootloaderOptions {
        root_mount: tmp.join("mnt/root"),
        resolv_conf: resolv,
        hook_timeout: Duration::from_secs(60),
        efivars: Some(vars),
        hook_cmdline_file: tmp.join("hook-cmdline"),
        ..BootloaderOptions::default()
    }
}

fn debugfs_cat(dev: &Path, path: &str) -> String {
    ok(
        "debugfs",
        &["-R", &format!("cat {path}"), dev.to_str().unwrap()],
    )
    .lines()
    .filter(|l| !l.starts_with("debugfs "))
    .collect::<Vec<_>>()
    .join("\n")
}

/// Whether this kernel mounts vfat (the sandbox's may not: the UEFI test then says so and
/// stops; the QEMU end-to-end runs cover it).
fn vfat_available() -> bool {
    std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| s.contains("vfat"))
}

#[test]
fn legacy_install_runs_the_hook_in_the_image() {
    install_runs_the_hook(Firmware::Bios);
}

#[test]
fn uefi_install_runs_the_hook_in_the_image() {
    if !vfat_available() {
        eprintln!("this kernel has no vfat: the UEFI bootloader step is left to the QEMU e2e");
        return;
    }
    install_runs_the_hook(Firmware::Uefi);
}

fn install_runs_the_hook(fw: Firmware) {
    let uefi = fw == Firmware::Uefi;
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let img = system_image(tmp.path(), Some(HOOK));
    let disk = tmp.path().join("disk");
    sparse(&disk, 1024 * MIB);
    let l = Loop::attach(&disk, 512);
    let o = options(tmp.path());
    let mut ev: Vec<AgentEvent> = Vec::new();
    let host_cmdline_before = std::fs::read_to_string("/proc/cmdline").unwrap();
    let r = install::install_on(&cfg(&img), &boot(fw), &l.dev, &o, &mut ev);
    assert_eq!(mounts_under(tmp.path()), Vec::<String>::new());
    r.unwrap();
    assert_eq!(
        std::fs::read_to_string("/proc/cmdline").unwrap(),
        host_cmdline_before,
        "the host's /proc/cmdline changed"
    );
    let done: Vec<(&str, EventStatus)> = ev
        .iter()
        .filter(|e| e.status != EventStatus::Running)
        .map(|e| (e.phase.as_str(), e.status))
        .collect();
    assert_eq!(
        done,
        [
            ("download", EventStatus::Ok),
            ("image", EventStatus::Ok),
            ("partition", EventStatus::Ok),
            ("configdrive", EventStatus::Ok),
            ("bootloader", EventStatus::Ok),
        ]
    );
    assert!(ev.iter().all(|e| e.check().is_ok()));
    let d = l.dev.display();
    let esp_uuid = if uefi {
        blkid(&l.part(2), "UUID")
    } else {
        String::new()
    };
    let hook_lines: Vec<String> = ev
        .iter()
        .filter(|e| e.phase == "bootloader" && e.status == EventStatus::Running)
        .flat_map(|e| e.logs.clone())
        .filter(|l| l.starts_with("hook: "))
        .collect();
    let mut want = vec![
        if uefi {
            format!("hook: mode=uefi disk={d} esp={d}p2")
        } else {
            format!("hook: mode=legacy disk={d} esp=")
        },
        "hook: resolv: nameserver 10.0.2.3".into(),
        "hook: LABEL=byolroot / ext4 errors=remount-ro 0 1".into(),
    ];
    if uefi {
        want.push(format!(
            "hook: UUID={esp_uuid} /boot/efi vfat umask=0077 0 1"
        ));
    }
    want.extend(
        ["dev ok", "pts ok", "proc ok"]
            .iter()
            .map(|l| format!("hook: {l}")),
    );
    // the command line without byol's parameters, bound over the chroot's /proc/cmdline only
    let host_cmdline = std::fs::read_to_string("/proc/cmdline").unwrap();
    want.push(format!(
        "hook: cmdline: {}",
        byol_agent::agent::install::mounts::hook_cmdline(&host_cmdline)
    ));
    want.extend(["sys ok", "to stderr"].iter().map(|l| format!("hook: {l}")));
    assert_eq!(hook_lines, want);
    let ok_msg = &ev.last().unwrap().message;
    assert!(
        ok_msg.starts_with("/root/.ovh/make_image_bootable.sh ran in "),
        "{ok_msg}"
    );
    if uefi {
        assert!(
            ok_msg.ends_with(
                " s (uefi firmware); removable-path fallback: EFI/debian/grubx64.efi copied to \
                 EFI/BOOT/BOOTX64.EFI (with grub.cfg, grubx64.efi from EFI/debian); boot entry \
                 Boot0000 \"debian (byol)\" → \\EFI\\debian\\grubx64.efi; BootOrder 0003,0000 \
                 (network boot first)"
            ),
            "{ok_msg}"
        );
    } else {
        assert!(ok_msg.ends_with(" s (legacy firmware)"), "{ok_msg}");
    }
    // The disk records that install inst-7 is done, on config-2, where a later boot for the
    // same install finds it.
    let name = l.dev.file_name().unwrap().to_str().unwrap().to_string();
    let disk = byol_agent::agent::disks::Disk {
        path: l.dev.display().to_string(),
        name,
        ..Default::default()
    };
    let (sys, dev) = (Path::new("/sys"), Path::new("/dev"));
    let found = install::record::find_done(sys, dev, std::slice::from_ref(&disk), "inst-7");
    let (on, part, rec) = found.expect("the done record on config-2");
    assert_eq!(on, l.dev.display().to_string());
    assert_eq!(blkid(&part, "LABEL"), "config-2");
    assert_eq!(
        (rec.install_id.as_str(), rec.state.as_str()),
        ("inst-7", "done")
    );
    assert!(install::record::find_done(sys, dev, &[disk], "inst-8").is_none());
    // Read back without mounting: the hook ran in the image, fstab has the ESP, the image's
    // resolv.conf link is back, the ESP has the fallback loader.
    let root = l.part(1);
    assert_eq!(debugfs_cat(&root, "/root/hook-ran"), "ran");
    let fstab = if uefi {
        format!(
            "LABEL=byolroot / ext4 errors=remount-ro 0 1\nUUID={esp_uuid} /boot/efi vfat \
             umask=0077 0 1"
        )
    } else {
        "LABEL=byolroot / ext4 errors=remount-ro 0 1".to_string()
    };
    assert_eq!(debugfs_cat(&root, "/etc/fstab"), fstab);
    let stat = ok(
        "debugfs",
        &["-R", "stat /etc/resolv.conf", root.to_str().unwrap()],
    );
    assert!(
        stat.contains("Type: symlink") && stat.contains("../run/systemd/resolve/stub-resolv.conf"),
        "{stat}"
    );
    ok("e2fsck", &["-fn", root.to_str().unwrap()]);
    if !uefi {
        return;
    }
    let esp = l.part(2);
    // the boot entry names the ESP by its GPT GUID, number, start and size
    let entry = o.efivars.as_ref().unwrap().option(0).unwrap();
    assert_eq!(entry.description, "debian (byol)");
    let hd = &entry.device_path[..42];
    assert_eq!(u32::from_le_bytes(hd[4..8].try_into().unwrap()), 2);
    let partuuid = blkid(&esp, "PARTUUID");
    let guid = &hd[24..40];
    let text = format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{}",
        guid[3],
        guid[2],
        guid[1],
        guid[0],
        guid[5],
        guid[4],
        guid[7],
        guid[6],
        guid[8],
        guid[9],
        guid[10..]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    assert_eq!(text, partuuid);
    let start = ok(
        "cat",
        &[&format!(
            "/sys/class/block/{}/start",
            esp.file_name().unwrap().to_str().unwrap()
        )],
    );
    assert_eq!(
        u64::from_le_bytes(hd[8..16].try_into().unwrap()),
        start.trim().parse::<u64>().unwrap()
    );
    ok("fsck.vfat", &["-n", esp.to_str().unwrap()]);
    let fs = fatfs::FileSystem::new(std::fs::File::open(&esp).unwrap(), fatfs::FsOptions::new())
        .unwrap();
    let mut f = fs.root_dir().open_file("EFI/BOOT/BOOTX64.EFI").unwrap();
    let mut s = String::new();
    std::io::Read::read_to_string(&mut f, &mut s).unwrap();
    assert_eq!(s, "grub\n");
}

/// The whole BIOS install of an image whose hook is `hook` (None: no hook), expected to fail:
/// nothing left mounted, the disk's ends zeroed. The error.
fn failed_install(hook: Option<&str>) -> install::InstallError {
    failed_install_with(hook, |_| {})
}

/// [`failed_install`] of an image whose staged tree `tweak` changed.
fn failed_install_with(hook: Option<&str>, tweak: impl Fn(&Path)) -> install::InstallError {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let img = system_image_with(tmp.path(), hook, tweak);
    let disk = tmp.path().join("disk");
    dirty_disk(&disk, 512 * MIB);
    let l = Loop::attach(&disk, 512);
    let mut ev: Vec<AgentEvent> = Vec::new();
    let e = install::install_on(
        &cfg(&img),
        &boot(Firmware::Bios),
        &l.dev,
        &options(tmp.path()),
        &mut ev,
    )
    .unwrap_err();
    assert_eq!(mounts_under(tmp.path()), Vec::<String>::new());
    assert!(ends_are_zero(&l.dev));
    e
}

#[test]
fn a_failing_hook_fails_the_install_and_wipes_the_disk() {
    let e = failed_install(Some(
        "#!/bin/sh\necho installing grub\necho 'grub-install: error: no such disk' >&2\nexit 1\n",
    ));
    assert_eq!(e.phase, "bootloader");
    assert_eq!(
        e.message,
        "/root/.ovh/make_image_bootable.sh failed with exit code 1; its last lines:\ninstalling \
         grub\ngrub-install: error: no such disk"
    );
}

#[test]
fn an_image_without_the_hook_is_refused_and_wiped() {
    let e = failed_install(None);
    assert_eq!(e.phase, "bootloader");
    assert_eq!(
        e.message,
        "the image has no /root/.ovh/make_image_bootable.sh: the guide's images must carry it \
         to make the disk bootable"
    );
}

#[test]
fn an_image_whose_etc_leads_out_of_it_never_writes_outside() {
    // the image's /etc is a symlink to a directory of the installer's own tree
    let host = tempfile::tempdir().unwrap();
    let target = host.path().to_path_buf();
    let e = failed_install_with(Some(HOOK), move |stage| {
        std::fs::remove_dir_all(stage.join("etc")).unwrap();
        std::os::unix::fs::symlink(&target, stage.join("etc")).unwrap();
    });
    assert_eq!(e.phase, "bootloader", "{e:?}");
    assert!(
        e.message.starts_with("cannot open etc in the image"),
        "{e:?}"
    );
    assert_eq!(
        std::fs::read_dir(host.path()).unwrap().count(),
        0,
        "the agent wrote into the host's directory"
    );
}

/// `byolinux_64` on one loop disk (the host has no md or device-mapper: arrays and LVM are
/// proven in QEMU): the layout made, the image's ext4 streamed onto `/`'s partition, moved
/// to its start and grown, the image's `/boot` moved into the layout's `/boot`, fstab by UUID
/// with swap, the hook run with everything mounted, config-2 on the disk.
#[test]
fn layout_install_moves_boot_into_its_filesystem() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let hook = "#!/bin/sh\ncat /boot/grub/link\necho /boot/*\necho ran > /root/hook-ran\n";
    let img = system_image_with(tmp.path(), Some(hook), |stage| {
        std::fs::write(stage.join("boot/kernel-file"), "a kernel\n").unwrap();
        std::fs::create_dir_all(stage.join("boot/grub")).unwrap();
        std::fs::hard_link(stage.join("boot/kernel-file"), stage.join("boot/grub/link")).unwrap();
    });
    let o = options(tmp.path());
    let (l, ev, done) = install_layout(
        tmp.path(),
        &img,
        1024,
        &[
            ("/boot", "ext4", 100),
            ("/", "ext4", 0),
            ("swap", "swap", 32),
        ],
        &o,
    );
    let done = done.unwrap_or_else(|e| panic!("{e}: {ev:#?}"));
    let phases: Vec<(&str, EventStatus)> = ev
        .iter()
        .filter(|e| e.status != EventStatus::Running)
        .map(|e| (e.phase.as_str(), e.status))
        .collect();
    assert_eq!(
        phases,
        [
            ("partition", EventStatus::Ok),
            ("download", EventStatus::Ok),
            ("image", EventStatus::Ok),
            ("configdrive", EventStatus::Ok),
            ("bootloader", EventStatus::Ok),
        ]
    );
    let hook_lines: Vec<String> = ev
        .iter()
        .flat_map(|e| e.logs.clone())
        .filter(|l| l.starts_with("hook: "))
        .collect();
    // the hook saw /boot's files on the layout's /boot filesystem
    assert_eq!(
        hook_lines,
        [
            "hook: a kernel",
            "hook: /boot/grub /boot/kernel-file /boot/lost+found"
        ]
    );
    // partitions: 1 BIOS boot, 2 /boot, 3 /, 4 swap, 5 config-2
    let (boot_p, root_p, swap_p) = (l.part(2), l.part(3), l.part(4));
    assert_eq!(blkid(&boot_p, "LABEL"), "boot");
    assert_eq!(blkid(&swap_p, "TYPE"), "swap");
    assert_eq!(blkid(&l.part(5), "LABEL"), "config-2");
    assert_eq!(done.config_drive, Some(l.part(5)));
    // the image's filesystem, at the start of `/` and grown to its size
    assert_eq!(blkid(&root_p, "LABEL"), "byolroot");
    ok("e2fsck", &["-f", "-n", root_p.to_str().unwrap()]);
    let dumpe2fs = ok("dumpe2fs", &["-h", root_p.to_str().unwrap()]);
    let blocks: u64 = dumpe2fs
        .lines()
        .find_map(|l| l.strip_prefix("Block count:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let bs: u64 = dumpe2fs
        .lines()
        .find_map(|l| l.strip_prefix("Block size:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(blocks * bs > disk_size(&root_p) - 8 * MIB, "not grown");
    // /boot's files moved (hard link kept), the image's /boot left empty as a mount point
    assert_eq!(debugfs_cat(&boot_p, "/kernel-file"), "a kernel");
    let stat = ok(
        "debugfs",
        &["-R", "stat /grub/link", boot_p.to_str().unwrap()],
    );
    assert!(stat.contains("Links: 2"), "{stat}");
    let ls = ok("debugfs", &["-R", "ls /boot", root_p.to_str().unwrap()]);
    assert!(!ls.contains("kernel-file"), "{ls}");
    assert_eq!(debugfs_cat(&root_p, "/root/hook-ran"), "ran");
    let fstab = debugfs_cat(&root_p, "/etc/fstab");
    let uuid = |p: &Path| blkid(p, "UUID");
    assert_eq!(
        fstab,
        format!(
            "# replaced by byol: LABEL=byolroot / ext4 errors=remount-ro 0 1\n\
             # the storage layout, written by byol\n\
             UUID={} / ext4 defaults,errors=remount-ro 0 1\n\
             UUID={} /boot ext4 defaults,errors=remount-ro 0 2\n\
             UUID={} none swap sw,nofail 0 0",
            uuid(&root_p),
            uuid(&boot_p),
            uuid(&swap_p)
        )
    );
}

/// The copy strategy with no RAID 1 under `/` (one disk, `/` in xfs, the image ext4): the
/// image's filesystem waits in RAM, or (RAM too small) on `/data`'s partition, which is made
/// again afterwards; `/` gets the image's files either way.
#[test]
fn layout_install_copies_into_another_filesystem_through_ram_or_a_partition() {
    for (ram, place) in [(Some(1u64 << 30), "RAM ("), (Some(0), " (/data)")] {
        copy_through_scratch(ram, place);
    }
    // nowhere (RAM too small, swap too small, no other row): OVH's RAM error, then what byol
    // tried and what to change; the disk's ends wiped
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let img = system_image_with(tmp.path(), None, |_| {});
    let mut o = options(tmp.path());
    o.scratch_ram = Some(0);
    let (l, ev, r) = install_layout(
        tmp.path(),
        &img,
        1024,
        &[("/", "xfs", 0), ("swap", "swap", 32)],
        &o,
    );
    let e = r.expect_err("no scratch place");
    assert!(
        e.contains("Could not download, qcow2 image is too big to download in memory. (")
            && e.contains("make `/` ext4 in the layout"),
        "{e}"
    );
    assert!(
        !ev.iter()
            .any(|e| e.phase == "image" && e.status == EventStatus::Ok),
        "{ev:#?}"
    );
    let mut head = vec![0u8; MIB as usize];
    std::io::Read::read_exact(&mut std::fs::File::open(&l.dev).unwrap(), &mut head).unwrap();
    assert!(
        head.iter().all(|&b| b == 0),
        "the disk's first MiB is not wiped"
    );
}

fn copy_through_scratch(ram: Option<u64>, place: &str) {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let hook = "#!/bin/sh\ncat /etc/motd\necho ran > /root/hook-ran\n";
    let img = system_image_with(tmp.path(), Some(hook), |stage| {
        std::fs::write(stage.join("etc/motd"), "copied, not streamed\n").unwrap();
        std::fs::create_dir_all(stage.join("data/sub")).unwrap();
        std::fs::write(stage.join("data/sub/kept"), "on /data\n").unwrap();
    });
    let mut o = options(tmp.path());
    o.scratch_ram = ram;
    o.scratch_dir = tmp.path().join("ram");
    let (l, ev, r) = install_layout(
        tmp.path(),
        &img,
        1536,
        &[
            ("/", "xfs", 600),
            ("swap", "swap", 32),
            ("/data", "ext4", 0),
        ],
        &o,
    );
    r.unwrap_or_else(|e| panic!("{e}: {ev:#?}"));
    let image = ev
        .iter()
        .find(|e| e.phase == "image" && e.status == EventStatus::Ok)
        .unwrap();
    assert!(
        image.message.contains("files copied from its copy in")
            && image.message.contains(place)
            && image.message.contains("into xfs /"),
        "{}",
        image.message
    );
    // no scratch file left in RAM
    assert!(
        std::fs::read_dir(tmp.path().join("ram"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
    );
    let hook_lines: Vec<String> = ev
        .iter()
        .flat_map(|e| e.logs.clone())
        .filter(|l| l.starts_with("hook: "))
        .collect();
    assert_eq!(hook_lines, ["hook: copied, not streamed"]);
    // partitions: 1 BIOS boot, 2 /, 3 swap, 4 /data, 5 config-2
    let (root_p, swap_p, data_p) = (l.part(2), l.part(3), l.part(4));
    assert_eq!(blkid(&root_p, "TYPE"), "xfs");
    assert_eq!(blkid(&root_p, "LABEL"), "root");
    assert_eq!(blkid(&swap_p, "TYPE"), "swap");
    assert_eq!(blkid(&data_p, "TYPE"), "ext4");
    assert_eq!(blkid(&data_p, "LABEL"), "data");
    ok("e2fsck", &["-f", "-n", data_p.to_str().unwrap()]);
    ok("xfs_repair", &["-n", root_p.to_str().unwrap()]);
    assert_eq!(debugfs_cat(&data_p, "/sub/kept"), "on /data");
    let fstab_line = |p: &Path, m: &str| format!("UUID={} {m} ", blkid(p, "UUID"));
    // /'s files (read through a mount: debugfs does not read xfs)
    let mnt = tmp.path().join("check");
    std::fs::create_dir_all(&mnt).unwrap();
    ok(
        "mount",
        &["-o", "ro", root_p.to_str().unwrap(), mnt.to_str().unwrap()],
    );
    let motd = std::fs::read_to_string(mnt.join("etc/motd"));
    let ran = std::fs::read_to_string(mnt.join("root/hook-ran"));
    let fstab = std::fs::read_to_string(mnt.join("etc/fstab"));
    let data_dir: Vec<_> = std::fs::read_dir(mnt.join("data")).unwrap().collect();
    ok("umount", &[mnt.to_str().unwrap()]);
    assert_eq!(motd.unwrap(), "copied, not streamed\n");
    assert_eq!(ran.unwrap(), "ran\n");
    assert!(data_dir.is_empty(), "/data's files left on /: {data_dir:?}");
    let fstab = fstab.unwrap();
    for (p, m) in [(&root_p, "/"), (&data_p, "/data")] {
        assert!(fstab.contains(&fstab_line(p, m)), "{fstab}");
    }
}

/// A layout install (`rows`: mount point, filesystem, MiB) of `img` on a new `mib`-MiB loop
/// disk, on BIOS; its events and what it made or why it failed (nothing left mounted either
/// way).
fn install_layout(
    tmp: &Path,
    img: &Path,
    mib: u64,
    rows: &[(&str, &str, u64)],
    o: &BootloaderOptions,
) -> (
    Loop,
    Vec<AgentEvent>,
    Result<install::byolinux::Done, String>,
) {
    let disk = tmp.join("disk");
    sparse(&disk, mib * MIB);
    let l = Loop::attach(&disk, 512);
    let mut c = cfg(img);
    c.install.storage = Some(byol_spec::StorageSpec {
        scheme: "custom".into(),
        disk_group_id: 1,
        disks: None,
        layout: rows
            .iter()
            .map(|(m, fs, size)| byol_spec::storage::PartitionSpec {
                mount_point: (*m).into(),
                file_system: (*fs).into(),
                size: *size,
                ..Default::default()
            })
            .collect(),
    });
    let name = l.dev.file_name().unwrap().to_str().unwrap().to_string();
    let d = byol_agent::agent::disks::Disk {
        path: l.dev.display().to_string(),
        name,
        size_bytes: disk_size(&l.dev),
        ..Default::default()
    };
    let mut ev: Vec<AgentEvent> = Vec::new();
    let r = install::byolinux::install(&c, &boot(Firmware::Bios), &[d], o, &mut ev);
    assert_eq!(mounts_under(tmp), Vec::<String>::new());
    (l, ev, r.map_err(|e| e.to_string()))
}

/// `img` (from [`system_image_with`]) with its partition made btrfs (mixed mode: it is small)
/// holding the same files, and the subvolumes `subvols` in it.
fn as_btrfs(dir: &Path, img: &Path, subvols: &[&str]) {
    let l = ok(
        "losetup",
        &[
            "-f",
            "--show",
            "-o",
            &MIB.to_string(),
            "--sizelimit",
            &(60 * MIB).to_string(),
            img.to_str().unwrap(),
        ],
    );
    let dev = l.trim().to_string();
    let stage = dir.join("stage");
    let mnt = dir.join("btrfs-mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    ok("mkfs.btrfs", &["-q", "-f", "-M", "-L", "byolroot", &dev]);
    ok("mount", &[&dev, mnt.to_str().unwrap()]);
    ok(
        "cp",
        &[
            "-a",
            &format!("{}/.", stage.display()),
            mnt.to_str().unwrap(),
        ],
    );
    for s in subvols {
        ok(
            "btrfs",
            &["subvolume", "create", mnt.join(s).to_str().unwrap()],
        );
    }
    ok("umount", &[mnt.to_str().unwrap()]);
    ok("losetup", &["-d", &dev]);
}

/// A btrfs image into a btrfs `/` (the direct strategy: streamed, moved, grown); the same image
/// with a subvolume refused, naming it.
#[test]
fn btrfs_images_without_subvolumes_install_and_with_them_are_refused() {
    for subvols in [&[][..], &["@home"][..]] {
        let _g = serial();
        let tmp = tempfile::tempdir().unwrap();
        let img = system_image_with(tmp.path(), Some("#!/bin/sh\necho btrfs hook\n"), |_| {});
        as_btrfs(tmp.path(), &img, subvols);
        let o = options(tmp.path());
        let (l, ev, r) = install_layout(
            tmp.path(),
            &img,
            1024,
            &[("/", "btrfs", 0), ("swap", "swap", 32)],
            &o,
        );
        if subvols.is_empty() {
            r.unwrap_or_else(|e| panic!("{e}: {ev:#?}"));
            let hook: Vec<String> = ev
                .iter()
                .flat_map(|e| e.logs.clone())
                .filter(|l| l.starts_with("hook: "))
                .collect();
            assert_eq!(hook, ["hook: btrfs hook"]);
            let root_p = l.part(2);
            assert_eq!(blkid(&root_p, "TYPE"), "btrfs");
            // grown to its partition
            let show = ok(
                "btrfs",
                &["inspect-internal", "dump-super", root_p.to_str().unwrap()],
            );
            let total: u64 = show
                .lines()
                .find_map(|l| l.strip_prefix("total_bytes"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            assert!(total > disk_size(&root_p) - 8 * MIB, "not grown: {total}");
        } else {
            let e = r.expect_err("subvolumes refused");
            assert!(
                e.contains("holds 1 subvolume (@home)") && e.contains("without subvolumes"),
                "{e}"
            );
        }
    }
}
