//! `cargo xtask test-image [--table mbr|gpt]`: the small, real, cloudready Debian 12 image that
//! the end-to-end runs install, built from Debian packages; the disk itself is never mounted.
//!
//! - rootfs (cached in target/test-image/rootfs, shared by both tables): debootstrap minbase of
//!   bookworm with systemd, a Debian kernel and its initramfs-tools initramfs, GRUB for BIOS and
//!   UEFI (binaries only: the image's hook installs it), kernel modules for hardware a server
//!   does not have pruned, docs and apt caches dropped.
//! - overlay (written on every build): fstab by label, /etc/default/grub for a serial console,
//!   `/root/.ovh/make_image_bootable.sh` (installs GRUB for the firmware in use) and the
//!   `byol-firstboot` service that reads the config-2 drive and prints the end-to-end marker.
//! - image: a 2 GiB raw disk with one partition (MBR 0x83 or GPT Linux filesystem) from 1 MiB,
//!   ext4 labelled `byolroot` made by `mke2fs -d`, checked (sfdisk, e2fsck, debugfs), then
//!   target/test-image/byol-test-<table>.qcow2 (compressed) and its `.sha512`.
//!
//! [`ensure`] builds only what is missing or was made by another recipe ([`RECIPE`] in a stamp).

use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, bail, ensure};

use crate::{ensure_packages, root, run};

/// Version of everything below that shapes the image: bump it when any of it changes, and
/// every cached image is rebuilt on next use.
const RECIPE: &str = "byol-test-image 11";
/// Version of the fast image's recipe (its hook and first-boot init): bump to rebuild it.
const FAST_RECIPE: &str = "byol-fast-image 5";
/// Version of the rootfs's own initramfs (the one the fast image boots): bump to remake it.
const INITRD_RECIPE: &str = "byol-test-initrd 2";
/// The modules of the rootfs's own initramfs (with their dependencies): every disk controller
/// and filesystem the test machines use, and software RAID and LVM. A fixed list, not the
/// build host's hardware (MODULES=dep) nor every driver (MODULES=most, three times the size,
/// slow to load through BIOS disk calls under TCG).
const INITRD_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "nvme",
    "ahci",
    "sd_mod",
    "ext4",
    "xfs",
    "btrfs",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "raid0",
    "raid1",
    "raid10",
    "raid456",
    "dm_mod",
];
/// Version of the debootstrap rootfs recipe (packages, pruning, clean-up): bump to rebuild it.
const ROOTFS_RECIPE: &str = "byol-test-rootfs 4";

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// Packages on top of minbase (debootstrap adds their dependencies); zstd for a smaller
/// initramfs; mdadm and ucf because OVHcloud's hooks run `mkconf` and install GRUB's
/// packages (whose dependency ucf must then be there already: the hook runs offline).
const INCLUDE: &str = "systemd-sysv,udev,linux-image-amd64,initramfs-tools,grub-pc-bin,\
grub-efi-amd64-bin,grub2-common,util-linux,mount,kmod,e2fsprogs,zstd,mdadm,lvm2,ucf";
/// Packages the hook installs, as OVHcloud's Debian hook does: downloaded into the image's
/// apt cache at build time (`apt-get install --download-only`), with the package lists kept
/// gzipped, so that `apt-get install grub-pc` works in the installer's chroot without network.
const CACHED_FOR_HOOK: &[&str] = &["grub-pc", "grub-efi-amd64"];
/// apt settings of the image: lists stored compressed (they stay in the image).
const APT_GZIP_INDEXES: &str =
    "Acquire::GzipIndexes \"true\";\nAcquire::CompressionTypes::Order:: \"gz\";\n";
/// The rootfs's own initramfs made for [`INITRD_MODULES`] (once per [`INITRD_RECIPE`]): the
/// fast image boots it as it is; the Debian image's hook makes its own.
fn ensure_rootfs_initrd(rootfs: &Path) -> anyhow::Result<()> {
    let stamp = rootfs.with_extension("initrd-stamp");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == INITRD_RECIPE) {
        return Ok(());
    }
    let conf = rootfs.join("etc/initramfs-tools");
    // the list only for this build: the Debian image's hook makes its own with MODULES=dep
    let modules = conf.join("modules");
    let original = std::fs::read(&modules).unwrap_or_default();
    std::fs::write(
        &modules,
        format!(
            "# byol test image: the disk controllers, filesystems, RAID and LVM of the test machines\n{}\n",
            INITRD_MODULES.join("\n")
        ),
    )?;
    let build_conf = conf.join("conf.d/zz-byol-initrd-build.conf");
    std::fs::write(&build_conf, "MODULES=list\nCOMPRESS=zstd\n")?;
    let res = {
        let _mounts = ChrootMounts::new(rootfs)?;
        chroot(rootfs, &["update-initramfs", "-u", "-k", "all"])
    };
    std::fs::remove_file(&build_conf)?;
    std::fs::write(&modules, original)?;
    res?;
    std::fs::write(&stamp, format!("{INITRD_RECIPE}\n"))?;
    Ok(())
}

/// Kernel module trees (under lib/modules/<version>/kernel) for hardware no test machine or
/// server has: graphics, sound, cameras, radios, InfiniBand, staging drivers.
const PRUNE_MODULES: &[&str] = &[
    "sound",
    "drivers/gpu",
    "drivers/media",
    "drivers/net/wireless",
    "drivers/infiniband",
    "drivers/staging",
    "drivers/comedi",
    "drivers/iio",
    "drivers/isdn",
    "drivers/bluetooth",
    "drivers/input/touchscreen",
    "net/wireless",
    "net/mac80211",
    "net/bluetooth",
];
/// Directories emptied in the rootfs: documentation, translations, apt's caches.
const PRUNE_DIRS: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/cache/apt/archives",
    "var/lib/apt/lists",
];

/// The image's disk size.
const DISK_BYTES: u64 = 2 << 30;
/// Where the partition starts (sectors of 512 bytes).
const START_SECTOR: u64 = 2048;
pub const FS_LABEL: &str = "byolroot";
const HOSTNAME: &str = "byol-test";

pub(crate) const PACKAGES: &[(&str, &str)] = &[
    ("debootstrap", "/usr/sbin/debootstrap"),
    ("fdisk", "/usr/sbin/sfdisk"),
    ("e2fsprogs", "/usr/sbin/mke2fs"),
    ("mount", "/usr/sbin/losetup"),
    ("qemu-utils", "/usr/bin/qemu-img"),
];

/// The partition table the image carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Mbr,
    Gpt,
}

impl Table {
    pub const ALL: [Table; 2] = [Table::Mbr, Table::Gpt];

    pub fn as_str(self) -> &'static str {
        match self {
            Table::Mbr => "mbr",
            Table::Gpt => "gpt",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Table> {
        match s {
            "mbr" => Ok(Table::Mbr),
            "gpt" => Ok(Table::Gpt),
            _ => bail!("--table {s}: use mbr or gpt"),
        }
    }

    /// sfdisk's script for the one partition.
    fn sfdisk_script(self) -> String {
        match self {
            Table::Mbr => format!("label: dos\nstart={START_SECTOR}, type=83\n"),
            Table::Gpt => format!("label: gpt\nstart={START_SECTOR}, type=L, name={FS_LABEL}\n"),
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which image: the table, and the variant. The Debian image's hook does what OVHcloud's do
/// (apt, GRUB, update-initramfs: about 4 minutes under TCG) and the installed system boots
/// systemd; the fast image (same rootfs) has a hook that installs GRUB and writes its config
/// only, and the installed kernel starts [`FAST_INIT`] instead of systemd, which prints the
/// marker and powers off: the matrix's other cases cost a minute or two each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub table: Table,
    pub fast: bool,
}

impl Kind {
    fn recipe(self) -> &'static str {
        if self.fast { FAST_RECIPE } else { RECIPE }
    }
}

/// `test-mbr`, `fast-gpt`: the files' stem after `byol-`.
impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}",
            if self.fast { "fast" } else { "test" },
            self.table
        )
    }
}

/// A built test image.
#[derive(Debug, Clone)]
pub struct TestImage {
    /// target/test-image/byol-test-<table>.qcow2
    pub qcow2: PathBuf,
    /// sha512 of the qcow2 file, lowercase hex (also in `<qcow2>.sha512`).
    pub sha512: String,
    /// The disk size the image describes, in bytes.
    pub virtual_size: u64,
}

/// What the stamp file records about a build, for the summary.
struct Stamp {
    recipe: String,
    content_bytes: u64,
    fs_used_bytes: u64,
    build_seconds: f64,
}

impl Stamp {
    fn render(&self) -> String {
        format!(
            "recipe={}\ncontent_bytes={}\nfs_used_bytes={}\nbuild_seconds={:.1}\n",
            self.recipe, self.content_bytes, self.fs_used_bytes, self.build_seconds
        )
    }

    fn parse(s: &str) -> Stamp {
        let get = |k: &str| {
            s.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                .unwrap_or("")
                .to_string()
        };
        Stamp {
            recipe: get("recipe"),
            content_bytes: get("content_bytes").parse().unwrap_or(0),
            fs_used_bytes: get("fs_used_bytes").parse().unwrap_or(0),
            build_seconds: get("build_seconds").parse().unwrap_or(0.0),
        }
    }
}

fn dir() -> PathBuf {
    root().join("target/test-image")
}

fn qcow2_path(k: Kind) -> PathBuf {
    dir().join(format!("byol-{k}.qcow2"))
}

fn stamp_path(k: Kind) -> PathBuf {
    dir().join(format!("byol-{k}.stamp"))
}

fn sha_path(k: Kind) -> PathBuf {
    dir().join(format!("byol-{k}.qcow2.sha512"))
}

pub fn test_image(args: &[String]) -> anyhow::Result<()> {
    let mut tables = Table::ALL.to_vec();
    let mut fast = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--fast" => fast = true,
            "--table" => {
                let v = it.next().context("--table needs mbr or gpt")?;
                tables = vec![Table::parse(v)?];
            }
            s if s.starts_with("--table=") => tables = vec![Table::parse(&s[8..])?],
            other => bail!("test-image: unknown argument {other} (use --table mbr|gpt, --fast)"),
        }
    }
    for table in tables {
        let t = Kind { table, fast };
        let built = !is_current(t);
        let img = ensure(t)?;
        let stamp = Stamp::parse(&std::fs::read_to_string(stamp_path(t)).unwrap_or_default());
        let file = std::fs::metadata(&img.qcow2)?.len();
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        println!(
            "test-image: image={t} {} ({:.1} MiB file, {:.2} GiB virtual), rootfs content {:.0} MiB, \
             filesystem used {:.0} MiB, {} in {:.0} s\ntest-image: sha512={}",
            img.qcow2.display(),
            mib(file),
            img.virtual_size as f64 / (1u64 << 30) as f64,
            mib(stamp.content_bytes),
            mib(stamp.fs_used_bytes),
            if built { "built" } else { "cached, built" },
            stamp.build_seconds,
            img.sha512
        );
    }
    Ok(())
}

/// The test image for `table`, built if missing or made by an older recipe. Holds a lock on
/// target/test-image while it works, so concurrent callers build it once.
pub fn ensure(table: Kind) -> anyhow::Result<TestImage> {
    let dir = dir();
    std::fs::create_dir_all(&dir)?;
    let lock = std::fs::File::create(dir.join(".lock"))?;
    lock.lock().context("locking target/test-image")?;
    let qcow2 = qcow2_path(table);
    if is_current(table) {
        eprintln!("xtask: test image {} is up to date", qcow2.display());
    } else {
        build(table)?;
    }
    let sha512 = std::fs::read_to_string(sha_path(table))?.trim().to_string();
    ensure!(sha512.len() == 128, "bad {}", sha_path(table).display());
    let virtual_size = virtual_size(&qcow2)?;
    Ok(TestImage {
        qcow2,
        sha512,
        virtual_size,
    })
}

/// Whether the image of `table` is there, with its checksum, made by its recipe.
fn is_current(table: Kind) -> bool {
    let stamp = std::fs::read_to_string(stamp_path(table))
        .is_ok_and(|s| Stamp::parse(&s).recipe == table.recipe());
    let sha = std::fs::read_to_string(sha_path(table)).unwrap_or_default();
    stamp && qcow2_path(table).exists() && sha.trim().len() == 128
}

fn build(table: Kind) -> anyhow::Result<()> {
    let t0 = Instant::now();
    ensure!(
        std::fs::metadata("/proc/self")?.uid() == 0,
        "building the test image needs root (debootstrap, chroot, loop devices)"
    );
    ensure_packages(PACKAGES)?;
    let dir = dir();
    let rootfs = dir.join("rootfs");
    ensure_rootfs(&rootfs)?;
    ensure_rootfs_initrd(&rootfs)?;
    overlay(&rootfs, table.fast)?;
    let busy = mounts_under(&rootfs)?;
    ensure!(
        busy.is_empty(),
        "refusing to copy {} into the image: {busy:?} mounted inside",
        rootfs.display()
    );
    let content_bytes = du_bytes(&rootfs)?;

    let _ = std::fs::remove_file(stamp_path(table));
    let raw = dir.join(format!("byol-{table}.raw"));
    let res = build_image(table, &rootfs, &raw);
    let _ = std::fs::remove_file(&raw);
    let fs_used_bytes = res?;
    let qcow2 = qcow2_path(table);
    run(Command::new("qemu-img").arg("info").arg(&qcow2))?;
    let sha = sha512sum(&qcow2)?;
    std::fs::write(sha_path(table), format!("{sha}\n"))?;
    let stamp = Stamp {
        recipe: table.recipe().to_string(),
        content_bytes,
        fs_used_bytes,
        build_seconds: t0.elapsed().as_secs_f64(),
    };
    std::fs::write(stamp_path(table), stamp.render())?;
    Ok(())
}

/// The raw disk, its checks, then the compressed qcow2. Returns the bytes used in the
/// filesystem.
fn build_image(table: Kind, rootfs: &Path, raw: &Path) -> anyhow::Result<u64> {
    let f = std::fs::File::create(raw)?;
    f.set_len(DISK_BYTES)?;
    drop(f);
    let mut sf = Command::new("sfdisk")
        .arg("--quiet")
        .arg(raw)
        .stdin(Stdio::piped())
        .spawn()
        .context("starting sfdisk")?;
    sf.stdin
        .take()
        .context("sfdisk stdin")?
        .write_all(table.table.sfdisk_script().as_bytes())?;
    ensure!(sf.wait()?.success(), "sfdisk failed on {}", raw.display());
    let (start, sectors) = partition(raw)?;
    ensure!(
        start == START_SECTOR,
        "partition starts at sector {start}, not {START_SECTOR}"
    );
    let offset = start * 512;
    // whole 4 KiB blocks of the partition
    let fs_bytes = sectors * 512 / 4096 * 4096;
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", FS_LABEL, "-E"])
        .arg(format!("offset={offset}"))
        .arg("-d")
        .arg(rootfs)
        .arg(raw)
        .arg(format!("{}k", fs_bytes / 1024)))?;

    let fs_used_bytes = check(table, raw, offset, sectors * 512)?;

    let qcow2 = qcow2_path(table);
    let tmp = qcow2.with_extension("qcow2.tmp");
    run(Command::new("qemu-img")
        .args(["convert", "-c", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(&tmp))?;
    std::fs::rename(&tmp, &qcow2)?;
    Ok(fs_used_bytes)
}

/// target/test-image/rootfs: debootstrap once per [`ROOTFS_RECIPE`], its initramfs made for
/// the pruned module set, smaller than a stock minbase + kernel by about 150 MB.
fn ensure_rootfs(rootfs: &Path) -> anyhow::Result<()> {
    // beside the rootfs, not in it: everything in it goes into the image
    let stamp = rootfs.with_extension("stamp");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == ROOTFS_RECIPE) {
        return Ok(());
    }
    let _ = std::fs::remove_file(&stamp);
    if rootfs.exists() {
        unmount_under(rootfs)?;
        std::fs::remove_dir_all(rootfs)
            .with_context(|| format!("removing the old {}", rootfs.display()))?;
    }
    let mirror = std::env::var("BYOL_DEBIAN_MIRROR").unwrap_or_else(|_| MIRROR.to_string());
    let res = run(Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={INCLUDE}"), SUITE])
        .arg(rootfs)
        .arg(&mirror));
    // debootstrap mounts /proc and /sys inside while it works; a failure may leave them
    unmount_under(rootfs)?;
    res.context("debootstrap of the test image's rootfs")?;

    let kernels = kernel_versions(rootfs)?;
    ensure!(
        !kernels.is_empty(),
        "no kernel in {}/lib/modules",
        rootfs.display()
    );
    for k in &kernels {
        let base = rootfs.join("lib/modules").join(k).join("kernel");
        for p in PRUNE_MODULES {
            let d = base.join(p);
            if d.exists() {
                std::fs::remove_dir_all(&d)?;
            }
        }
    }
    for d in PRUNE_DIRS {
        empty_dir(&rootfs.join(d))?;
    }
    std::fs::create_dir_all(rootfs.join("var/cache/apt/archives/partial"))?;
    std::fs::create_dir_all(rootfs.join("var/lib/apt/lists/partial"))?;
    for f in [
        "var/cache/apt/pkgcache.bin",
        "var/cache/apt/srcpkgcache.bin",
    ] {
        let _ = std::fs::remove_file(rootfs.join(f));
    }
    {
        let _mounts = ChrootMounts::new(rootfs)?;
        for k in &kernels {
            chroot(rootfs, &["depmod", "-a", k])?;
        }
        // the kernel's postinst made an initramfs with every module: make it again for the
        // pruned set (or for the first time, if the postinst could not)
        let mode = if initrds(rootfs)?.is_empty() {
            "-c"
        } else {
            "-u"
        };
        chroot(rootfs, &["update-initramfs", mode, "-k", "all"])?;
        cache_hook_packages(rootfs)?;
    }
    let initrds = initrds(rootfs)?;
    ensure!(
        initrds.len() == kernels.len(),
        "initramfs missing in {}/boot: kernels {kernels:?}, initrds {initrds:?}",
        rootfs.display()
    );
    std::fs::write(&stamp, format!("{ROOTFS_RECIPE}\n"))?;
    Ok(())
}

/// Fills the rootfs's apt lists and cache with [`CACHED_FOR_HOOK`] (the host's resolver
/// lent for the download, taken back after).
fn cache_hook_packages(rootfs: &Path) -> anyhow::Result<()> {
    let conf = rootfs.join("etc/apt/apt.conf.d/02byol-gzip-indexes");
    std::fs::write(&conf, APT_GZIP_INDEXES)?;
    let resolv = rootfs.join("etc/resolv.conf");
    if resolv.is_symlink() {
        std::fs::remove_file(&resolv)?;
    }
    std::fs::copy("/etc/resolv.conf", &resolv).context("lending /etc/resolv.conf")?;
    let res = (|| {
        chroot(rootfs, &["apt-get", "update", "-q"])?;
        // one at a time: grub-pc and grub-efi-amd64 conflict
        for p in CACHED_FOR_HOOK {
            chroot(
                rootfs,
                &["apt-get", "install", "-y", "-q", "--download-only", p],
            )?;
        }
        anyhow::Ok(())
    })();
    let _ = std::fs::remove_file(&resolv);
    res.context("caching the hook's packages in the test image")?;
    for p in CACHED_FOR_HOOK {
        let found = std::fs::read_dir(rootfs.join("var/cache/apt/archives"))?
            .filter_map(Result::ok)
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{p}_"))
            });
        ensure!(
            found,
            "{p} is not in the test image's apt cache after the download"
        );
    }
    for f in [
        "var/cache/apt/pkgcache.bin",
        "var/cache/apt/srcpkgcache.bin",
    ] {
        let _ = std::fs::remove_file(rootfs.join(f));
    }
    Ok(())
}

fn kernel_versions(rootfs: &Path) -> anyhow::Result<Vec<String>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(rootfs.join("lib/modules"))? {
        v.push(e?.file_name().to_string_lossy().into_owned());
    }
    v.sort();
    Ok(v)
}

fn initrds(rootfs: &Path) -> anyhow::Result<Vec<String>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(rootfs.join("boot"))? {
        let n = e?.file_name().to_string_lossy().into_owned();
        if n.starts_with("initrd.img-") {
            v.push(n);
        }
    }
    v.sort();
    Ok(v)
}

fn empty_dir(d: &Path) -> anyhow::Result<()> {
    let Ok(rd) = std::fs::read_dir(d) else {
        return Ok(());
    };
    for e in rd {
        let p = e?.path();
        if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}

fn chroot(rootfs: &Path, args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("chroot")
        .arg(rootfs)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LANG", "C.UTF-8")
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// /proc, /sys and /dev mounted in a chroot for as long as it lives.
struct ChrootMounts {
    points: Vec<PathBuf>,
}

impl ChrootMounts {
    fn new(rootfs: &Path) -> anyhow::Result<ChrootMounts> {
        let mut m = ChrootMounts { points: Vec::new() };
        for (what, args) in [
            ("proc", &["-t", "proc", "proc"][..]),
            ("sys", &["-t", "sysfs", "sysfs"][..]),
            ("dev", &["--bind", "/dev"][..]),
        ] {
            let p = rootfs.join(what);
            std::fs::create_dir_all(&p)?;
            run(Command::new("mount").args(args).arg(&p))?;
            m.points.push(p);
        }
        Ok(m)
    }
}

impl Drop for ChrootMounts {
    fn drop(&mut self) {
        for p in self.points.iter().rev() {
            let ok = Command::new("umount")
                .arg(p)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("xtask: umount {} failed, detaching it lazily", p.display());
                let _ = Command::new("umount").arg("-l").arg(p).status();
            }
        }
    }
}

/// Mount points at or below `dir`, deepest first (from /proc/self/mountinfo).
fn mounts_under(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let Ok(dir) = dir.canonicalize() else {
        return Ok(Vec::new());
    };
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(&dir))
        .collect();
    v.sort();
    v.dedup();
    v.reverse();
    Ok(v)
}

/// mountinfo writes space, tab, newline and backslash as \ooo.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(oct) = b.get(i + 1..i + 4)
            && let Ok(c) = u8::from_str_radix(&String::from_utf8_lossy(oct), 8)
        {
            out.push(c);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn unmount_under(dir: &Path) -> anyhow::Result<()> {
    for p in mounts_under(dir)? {
        eprintln!("xtask: unmounting leftover {}", p.display());
        let ok = Command::new("umount")
            .arg(&p)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            run(Command::new("umount").arg("-l").arg(&p))?;
        }
    }
    Ok(())
}

/// Writes the image's own files into the rootfs (idempotent).
fn overlay(rootfs: &Path, fast: bool) -> anyhow::Result<()> {
    let put = |rel: &str, text: &str, mode: u32| -> anyhow::Result<()> {
        let p = rootfs.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // never write through a symlink into the host
        if p.is_symlink() {
            std::fs::remove_file(&p)?;
        }
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    put(
        "etc/fstab",
        &format!(
            "# <file system> <mount point> <type> <options> <dump> <pass>\nLABEL={FS_LABEL} / ext4 errors=remount-ro 0 1\n"
        ),
        0o644,
    )?;
    put("etc/default/grub", GRUB_DEFAULTS, 0o644)?;
    // written after the rootfs's own initramfs was made (with every module, on the build
    // host): the hook's `update-initramfs -u` on the machine takes only what it needs, and
    // compresses fast, as a lean cloud image does (with MODULES=most and zstd -9, it took
    // over 4 minutes under TCG)
    put(
        "etc/initramfs-tools/conf.d/byol-test-image.conf",
        INITRAMFS_CONF,
        0o644,
    )?;
    put("etc/hostname", &format!("{HOSTNAME}\n"), 0o644)?;
    put(
        "etc/hosts",
        &format!(
            "127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        ),
        0o644,
    )?;
    // a fresh machine-id at first boot, as cloud images do; no resolver of the build host
    put("etc/machine-id", "", 0o444)?;
    let _ = std::fs::remove_file(rootfs.join("var/lib/dbus/machine-id"));
    let resolv = rootfs.join("etc/resolv.conf");
    if resolv.exists() || resolv.is_symlink() {
        std::fs::remove_file(&resolv)?;
    }
    lock_root(rootfs)?;
    std::fs::create_dir_all(rootfs.join("root/.ovh"))?;
    std::fs::set_permissions(
        rootfs.join("root/.ovh"),
        std::fs::Permissions::from_mode(0o700),
    )?;
    put(
        "root/.ovh/make_image_bootable.sh",
        if fast { FAST_HOOK } else { HOOK },
        0o755,
    )?;
    put("usr/local/sbin/byol-firstboot", FIRSTBOOT, 0o755)?;
    put("usr/local/sbin/byol-firstboot-init", FAST_INIT, 0o755)?;
    put(
        "etc/systemd/system/byol-firstboot.service",
        FIRSTBOOT_UNIT,
        0o644,
    )?;
    let wants = rootfs.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants)?;
    let link = wants.join("byol-firstboot.service");
    if link.exists() || link.is_symlink() {
        std::fs::remove_file(&link)?;
    }
    std::os::unix::fs::symlink("/etc/systemd/system/byol-firstboot.service", &link)?;
    std::fs::create_dir_all(rootfs.join("mnt/config"))?;
    Ok(())
}

/// Root's password field in /etc/shadow: locked (`!` in front), no password.
fn lock_root(rootfs: &Path) -> anyhow::Result<()> {
    let p = rootfs.join("etc/shadow");
    let s = std::fs::read_to_string(&p).context("reading the rootfs's /etc/shadow")?;
    let mut out = String::new();
    for line in s.lines() {
        let mut f: Vec<&str> = line.split(':').collect();
        if f.first() == Some(&"root") && f.len() > 1 {
            f[1] = "!*";
        }
        out.push_str(&f.join(":"));
        out.push('\n');
    }
    std::fs::write(&p, out)?;
    Ok(())
}

const INITRAMFS_CONF: &str = "# byol test image: the modules of the machine it runs on, fast compression\nMODULES=dep\nCOMPRESSLEVEL=3\n";

const GRUB_DEFAULTS: &str = r#"# byol test image: GRUB on the serial console too, no OS probing.
GRUB_DEFAULT=0
GRUB_TIMEOUT=1
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_DISABLE_OS_PROBER=true
"#;

/// The image's `/root/.ovh/make_image_bootable.sh`: the steps of OVHcloud's published Debian
/// hooks (github.com/ovh/bringyourownlinux, build_debian-12 and the older examples), on the
/// same commands, so that the installer's chroot is tested against what real hooks need.
const HOOK: &str = r#"#!/bin/bash
# byol test image: make the installed system bootable, as OVHcloud's Debian hooks do.
#
# The installer runs this in a chroot of the installed root filesystem with /dev, /proc, /sys
# and /run mounted and, on UEFI, the EFI System Partition mounted at /boot/efi. Environment:
#   BOOT_MODE    uefi or legacy: how the machine booted (checked against /sys/firmware/efi)
#   TARGET_DISK  the whole disk the image was written to, e.g. /dev/vda
#   ESP_DEVICE   the EFI System Partition (UEFI only)
# Like OVHcloud's: the log through process substitution (needs /dev/fd), mdadm.conf made
# again (needs /proc/mdstat), GRUB's package installed from the image's apt cache (needs
# /dev/pts for apt, debconf), the disks under /boot found with findmnt and lsblk, and their
# /dev/disk/by-id names given to grub-pc; on UEFI grub-install --no-nvram. Then grub.cfg, a
# machine-id, the initramfs made again, and the hook deletes itself.
set -euo pipefail
exec > >(tee -a /var/log/ovh-make-bootable.log) 2>&1

say() { echo "make_image_bootable: $*"; }
die() { echo "make_image_bootable: error: $*"; exit 1; }

for f in /dev/fd /dev/stdin /dev/stdout /dev/stderr /dev/null /dev/zero /dev/urandom \
    /dev/tty /dev/pts/ptmx /dev/shm; do
    [ -e "$f" ] || die "$f is missing in the chroot"
done
say "/dev as on a booted system: fd, std streams, pts, shm"

if [ -d /sys/firmware/efi ]; then
    firmware=uefi
else
    firmware=legacy
fi
say "firmware: $firmware (BOOT_MODE=${BOOT_MODE:-unset}, TARGET_DISK=${TARGET_DISK:-unset}, ESP_DEVICE=${ESP_DEVICE:-unset})"
if [ -n "${BOOT_MODE:-}" ] && [ "$BOOT_MODE" != "$firmware" ]; then
    die "BOOT_MODE=$BOOT_MODE but /sys/firmware/efi says $firmware"
fi

# the installer kernel's consoles, for the installed system (as OVHcloud's hooks copy them)
consoles=$(grep -Po '\bconsole=\S+' /proc/cmdline | paste -sd ' ' || true)
if [ -n "$consoles" ]; then
    sed -i "s/^GRUB_CMDLINE_LINUX=.*/GRUB_CMDLINE_LINUX=\"$consoles\"/" /etc/default/grub
    say "GRUB_CMDLINE_LINUX=\"$consoles\""
fi

rm -f /etc/mdadm/mdadm.conf /etc/mdadm.conf
/usr/share/mdadm/mkconf force-generate
say "mdadm.conf made again: $(grep -c '^ARRAY' /etc/mdadm/mdadm.conf || true) arrays"

export DEBIAN_FRONTEND=noninteractive
case "$firmware" in
uefi)
    mountpoint -q /boot/efi || die "no EFI System Partition mounted at /boot/efi"
    echo "grub-efi-amd64 grub2/update_nvram boolean false" | debconf-set-selections
    apt-get -y -q install grub-efi-amd64
    say "installing GRUB for x86_64-efi on the ESP at /boot/efi"
    grub-install --target=x86_64-efi --efi-directory=/boot/efi --bootloader-id=debian --no-nvram
    ;;
legacy)
    boot_src=$(findmnt -A -c -e -l -n -T /boot/ -o SOURCE)
    disks=$(lsblk -n -p -b -l -o TYPE,NAME "$boot_src" -s | awk '$1 == "disk" { print $2 }' | sort -u)
    [ -n "$disks" ] || die "lsblk finds no disk under $boot_src"
    if [ -n "${TARGET_DISK:-}" ]; then
        echo "$disks" | grep -qxF "$TARGET_DISK" ||
            die "lsblk finds $disks under /boot, not TARGET_DISK=$TARGET_DISK"
    fi
    devices=""
    for d in $disks; do
        link=$(find -L /dev/disk/by-id/ -type b -samefile "$d" 2>/dev/null | LC_ALL=C sort -us | head -n 1 || true)
        # OVHcloud's hooks preseed only by-id names: without one GRUB would go nowhere
        [ -n "$link" ] || die "no /dev/disk/by-id link for $d"
        devices="$devices${devices:+, }$link"
    done
    say "grub-pc/install_devices: $devices"
    echo "grub-pc grub-pc/install_devices multiselect $devices" | debconf-set-selections
    apt-get -y -q install grub-pc
    # grub-pc's postinst installs to install_devices only when GRUB was installed before
    for d in ${devices//,/}; do
        say "installing GRUB for i386-pc on $d"
        grub-install --target=i386-pc "$d"
    done
    ;;
esac

say "writing /boot/grub/grub.cfg"
update-grub
systemd-machine-id-setup
say "making the initramfs again"
update-initramfs -u
apt-get clean
rm -rf /root/.ovh
say "done: GRUB installed for $firmware"
"#;

/// The fast image's hook: the least that makes the disk boot. GRUB for the firmware in use and
/// its config, with the installer's consoles and `init=` [`FAST_INIT`] on the kernel command
/// line: no apt, no initramfs made again (the image's own has the modules of every test
/// machine), no systemd at boot.
const FAST_HOOK: &str = r#"#!/bin/bash
# byol fast test image: GRUB and grub.cfg, the installed kernel started with
# init=/usr/local/sbin/byol-firstboot-init. The Debian test image's hook does what OVHcloud's do.
set -euo pipefail
say() { echo "make_image_bootable: $*"; }
die() { echo "make_image_bootable: error: $*"; exit 1; }
[ -e /dev/fd ] && [ -e /dev/pts/ptmx ] || die "no /dev/fd or /dev/pts in the chroot"
if [ -d /sys/firmware/efi ]; then firmware=uefi; else firmware=legacy; fi
[ "${BOOT_MODE:-}" = "$firmware" ] ||
    die "BOOT_MODE=${BOOT_MODE:-unset} but /sys/firmware/efi says $firmware"
consoles=$(grep -Po '\bconsole=\S+' /proc/cmdline | paste -sd ' ' || true)
sed -i "s|^GRUB_CMDLINE_LINUX=.*|GRUB_CMDLINE_LINUX=\"$consoles init=/usr/local/sbin/byol-firstboot-init\"|" \
    /etc/default/grub
case "$firmware" in
uefi)
    mountpoint -q /boot/efi || die "no EFI System Partition mounted at /boot/efi"
    grub-install --target=x86_64-efi --efi-directory=/boot/efi --bootloader-id=debian --no-nvram
    ;;
legacy)
    [ -b "${TARGET_DISK:-}" ] || die "TARGET_DISK=${TARGET_DISK:-unset} is not a block device"
    # every disk under /boot (all members of its RAID 1), as an operator's script does
    boot_src=$(findmnt -n -o SOURCE -T /boot/)
    disks=$(lsblk -n -p -l -o TYPE,NAME -s "$boot_src" | awk '$1 == "disk" { print $2 }' | sort -u)
    [ -n "$disks" ] || disks=$TARGET_DISK
    for d in $disks; do
        say "installing GRUB for i386-pc on $d"
        grub-install --target=i386-pc "$d"
    done
    ;;
esac
if [ -e /proc/mdstat ] && grep -q '^md' /proc/mdstat; then
    rm -f /etc/mdadm/mdadm.conf /etc/mdadm.conf
    /usr/share/mdadm/mkconf force-generate
    say "mdadm.conf made again: $(grep -c '^ARRAY' /etc/mdadm/mdadm.conf || true) arrays"
fi
update-grub
rm -rf /root/.ovh
say "done: GRUB installed for $firmware (fast test image)"
"#;

/// The fast image's PID 1 (`init=` on the kernel command line): the Debian initramfs mounted
/// the root and moved /dev, /proc, /sys and /run into it; the first-boot check prints the
/// marker, then the machine powers off.
const FAST_INIT: &str = r#"#!/bin/sh
# byol fast test image: PID 1 of the installed system, instead of systemd.
export PATH=/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mountpoint -q /run || mount -t tmpfs -o mode=0755 tmpfs /run
# the layout's other filesystems and swap, as systemd would mount them
mount -o remount,rw / 2>/dev/null || true
mount -a 2>&1 | sed 's/^/byol-firstboot-init: /' > /dev/ttyS0 || true
swapon -a 2>/dev/null || true
/usr/local/sbin/byol-firstboot
sync
echo o > /proc/sysrq-trigger
sleep 3600
"#;

/// The image's `/usr/local/sbin/byol-firstboot`.
const FIRSTBOOT: &str = r#"#!/bin/sh
# byol test image, at boot: read the ConfigDrive (FAT, label config-2, OpenStack layout), set
# the hostname from openstack/latest/meta_data.json and print one line on the serial console:
#   BYOL-E2E-MARKER efi=<how it booted> hostname=<hostname> marker=<value of "byol_marker:" in user_data>
# where <how it booted> is BootCurrent/BootOrder (hex, e.g. 0004/0001,0004,0000) on UEFI, or
# none on a BIOS machine.
# or, when something is missing:
#   BYOL-E2E-MARKER error=<what>
set -u
mnt=/mnt/config

# stdout (the journal), the serial port, and /dev/console unless that is the serial port
say() {
    echo "$1"
    echo "$1" > /dev/ttyS0 2>/dev/null || true
    active=$(cat /sys/class/tty/console/active 2>/dev/null || true)
    case " $active" in
    *" ttyS0") ;;
    *) echo "$1" > /dev/console 2>/dev/null || true ;;
    esac
}

fail() {
    mountpoint -q "$mnt" && umount "$mnt"
    say "BYOL-E2E-MARKER error=$1"
    exit 1
}

# what the first boot read, kept as cloud-init keeps its datasource: a later boot without the
# config drive (it is on the first disk only, and a RAID 1 machine may have lost that disk)
# prints the same marker from it
cache=/var/lib/byol-firstboot/seen
dev=""
i=0
wait=60
[ -f "$cache" ] && wait=5
while [ "$i" -lt "$wait" ]; do
    dev=$(blkid -L config-2 2>/dev/null || blkid -L CONFIG-2 2>/dev/null || true)
    [ -n "$dev" ] && break
    i=$((i + 1))
    sleep 1
done
if [ -z "$dev" ] && [ -f "$cache" ]; then
    . "$cache"
    echo "$host" > /proc/sys/kernel/hostname || fail "cannot-set-hostname"
else
[ -n "$dev" ] || fail "no-config-drive"

mkdir -p "$mnt"
mountpoint -q "$mnt" || mount -t vfat -o ro "$dev" "$mnt" || fail "cannot-mount-$dev"
meta="$mnt/openstack/latest/meta_data.json"
user="$mnt/openstack/latest/user_data"
[ -f "$meta" ] || fail "no-meta_data.json"
[ -f "$user" ] || fail "no-user_data"
# the first "hostname" key: the top-level one, which comes before "meta"
host=$(grep -o '"hostname"[[:space:]]*:[[:space:]]*"[^"]*"' "$meta" | head -n 1 |
    sed 's/.*"\([^"]*\)"$/\1/')
marker=$(tr -d '\r' < "$user" | sed -n 's/^[[:space:]]*byol_marker:[[:space:]]*//p' | head -n 1 |
    sed 's/[[:space:]]*$//; s/^"\(.*\)"$/\1/; s/^'"'"'\(.*\)'"'"'$/\1/')
umount "$mnt"

case "$host" in
"") fail "no-hostname-in-meta_data.json" ;;
*[!A-Za-z0-9.-]*) fail "bad-hostname" ;;
esac
[ -n "$marker" ] || fail "no-byol_marker-in-user_data"

echo "$host" > /proc/sys/kernel/hostname || fail "cannot-set-hostname"
echo "$host" > /etc/hostname || true
sed -i "s/^127\.0\.1\.1[[:space:]].*/127.0.1.1\t$host/" /etc/hosts || true
mkdir -p "${cache%/*}" && printf 'host=%s\nmarker=%s\n' "$host" "$marker" > "$cache" && sync
fi

efi=none
if [ -d /sys/firmware/efi ]; then
    vars=/sys/firmware/efi/efivars
    g=8be4df61-93ca-11d2-aa0d-00e098032b8c
    mountpoint -q "$vars" || mount -t efivarfs efivarfs "$vars" 2>/dev/null || true
    # the variables' data after their 4 attribute bytes, 16-bit little-endian numbers
    hex16() { od -An -v -tx1 -j4 "$1" 2>/dev/null | tr -s ' \n' '  ' |
        awk '{ s = ""; for (i = 1; i < NF; i += 2) s = s (i > 1 ? "," : "") toupper($(i + 1) $i); print s }'; }
    efi="$(hex16 "$vars/BootCurrent-$g")/$(hex16 "$vars/BootOrder-$g")"
fi

# a RAID still syncing (the installer's arrays are new, or a member was just added) is waited
# for, up to 10 minutes: the harness pulls a disk next, as an operator would only once the
# arrays are whole
i=0
while grep -qE 'resync|recovery' /proc/mdstat 2>/dev/null && [ "$i" -lt 600 ]; do
    sleep 1
    i=$((i + 1))
done
# the storage: md arrays as /proc/mdstat shows them (name:level[status]), and what is mounted
# on /, /boot and /data
md=$(awk '/^md/ { name = $1; for (i = 3; i <= NF; i++) if ($i ~ /^raid/) { level = $i; break } }
    /blocks/ && name != "" { print name ":" level $NF; name = "" }' \
    /proc/mdstat 2>/dev/null | paste -sd, -)
mounts=""
for m in / /boot /data; do
    src=$(findmnt -n -o SOURCE "$m" 2>/dev/null || true)
    [ -n "$src" ] && mounts="$mounts${mounts:+,}$m:$src"
done
say "BYOL-E2E-MARKER efi=$efi md=${md:-none} mounts=$mounts hostname=$(cat /proc/sys/kernel/hostname) marker=$marker"
"#;

const FIRSTBOOT_UNIT: &str = r#"[Unit]
Description=byol test image: read the config-2 drive, print the end-to-end marker
After=local-fs.target
# the marker before any login prompt on the consoles
Before=systemd-user-sessions.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/byol-firstboot
TimeoutStartSec=300

[Install]
WantedBy=multi-user.target
"#;

/// The one partition of `raw`: (start sector, sectors), from sfdisk's JSON.
fn partition(raw: &Path) -> anyhow::Result<(u64, u64)> {
    let out = Command::new("sfdisk").arg("--json").arg(raw).output()?;
    ensure!(
        out.status.success(),
        "sfdisk --json {} failed",
        raw.display()
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let parts = v["partitiontable"]["partitions"]
        .as_array()
        .context("sfdisk --json: no partitions")?;
    ensure!(
        parts.len() == 1,
        "expected one partition, found {}",
        parts.len()
    );
    let start = parts[0]["start"].as_u64().context("partition start")?;
    let size = parts[0]["size"].as_u64().context("partition size")?;
    Ok((start, size))
}

/// A loop device over part of a file, detached when dropped.
struct Loop(String);

impl Loop {
    fn new(file: &Path, offset: u64, len: u64) -> anyhow::Result<Loop> {
        let out = Command::new("losetup")
            .args(["-r", "-f", "--show", "-o"])
            .arg(offset.to_string())
            .arg("--sizelimit")
            .arg(len.to_string())
            .arg(file)
            .output()
            .context("starting losetup")?;
        ensure!(
            out.status.success(),
            "losetup failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(Loop(String::from_utf8(out.stdout)?.trim().to_string()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Checks the raw image: partition table, filesystem, the files the installer relies on.
/// Returns the bytes used in the filesystem.
fn check(kind: Kind, raw: &Path, offset: u64, len: u64) -> anyhow::Result<u64> {
    let table = kind.table;
    let dump = output(Command::new("sfdisk").arg("-d").arg(raw))?;
    eprint!("xtask: sfdisk -d of the {table} image:\n{dump}");
    let want = match table {
        Table::Mbr => "type=83",
        Table::Gpt => "type=0FC63DAF-8483-4772-8E79-3D69D8477DE4",
    };
    ensure!(dump.contains(want), "partition table lacks {want}");
    let lo = Loop::new(raw, offset, len)?;
    run(Command::new("e2fsck").args(["-f", "-n", &lo.0]))?;
    let sb = output(
        Command::new("dumpe2fs")
            .args(["-h", &lo.0])
            .stderr(Stdio::null()),
    )?;
    let field = |k: &str| -> anyhow::Result<String> {
        sb.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
            .map(|v| v.trim().to_string())
            .with_context(|| format!("dumpe2fs: no {k}"))
    };
    ensure!(field("Filesystem volume name")? == FS_LABEL, "wrong label");
    let features = field("Filesystem features")?;
    // GRUB 2.06 cannot read a filesystem with this incompatible feature
    ensure!(
        !features.contains("metadata_csum_seed"),
        "ext4 features GRUB cannot read: {features}"
    );
    let blocks: u64 = field("Block count")?.parse()?;
    let free: u64 = field("Free blocks")?.parse()?;
    let bsize: u64 = field("Block size")?.parse()?;
    let debugfs = |req: &str| {
        output(
            Command::new("debugfs")
                .args(["-R", req, &lo.0])
                .stderr(Stdio::null()),
        )
    };
    for (path, exec) in [
        ("/root/.ovh/make_image_bootable.sh", true),
        ("/usr/local/sbin/byol-firstboot", true),
        ("/usr/local/sbin/byol-firstboot-init", true),
        ("/etc/systemd/system/byol-firstboot.service", false),
        ("/etc/fstab", false),
        ("/etc/default/grub", false),
    ] {
        let st = debugfs(&format!("stat {path}"))?;
        ensure!(st.contains("Type: regular"), "{path} missing in the image");
        if exec {
            let mode = st
                .split("Mode:")
                .nth(1)
                .and_then(|m| m.split_whitespace().next())
                .and_then(|m| u32::from_str_radix(m, 8).ok())
                .context("debugfs stat: no mode")?;
            ensure!(mode & 0o111 == 0o111, "{path} is not executable ({mode:o})");
        }
    }
    let link = debugfs("stat /etc/systemd/system/multi-user.target.wants/byol-firstboot.service")?;
    ensure!(
        link.contains("Type: symlink")
            && link.contains("/etc/systemd/system/byol-firstboot.service"),
        "byol-firstboot.service is not enabled in the image"
    );
    let boot = debugfs("ls -p /boot")?;
    for f in ["vmlinuz-", "initrd.img-"] {
        ensure!(
            boot.contains(&format!("/{f}")),
            "no /boot/{f}* in the image"
        );
    }
    let fstab = debugfs("cat /etc/fstab")?;
    ensure!(
        fstab.contains(&format!("LABEL={FS_LABEL} / ext4")),
        "fstab lacks the root line"
    );
    eprintln!(
        "xtask: {kind} image checked: partition, e2fsck, label {FS_LABEL}, hook, first-boot unit, kernel + initramfs"
    );
    Ok((blocks - free) * bsize)
}

fn du_bytes(dir: &Path) -> anyhow::Result<u64> {
    let out = output(
        Command::new("du")
            .args(["-s", "-x", "--block-size=1"])
            .arg(dir),
    )?;
    out.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .context("du output")
}

fn sha512sum(p: &Path) -> anyhow::Result<String> {
    let out = output(Command::new("sha512sum").arg(p))?;
    let s = out.split_whitespace().next().context("sha512sum")?;
    ensure!(s.len() == 128, "sha512sum output: {out}");
    Ok(s.to_string())
}

fn virtual_size(p: &Path) -> anyhow::Result<u64> {
    let out = output(
        Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(p),
    )?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v["virtual-size"]
        .as_u64()
        .context("qemu-img info: no virtual-size")
}
