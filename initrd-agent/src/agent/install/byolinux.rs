//! byolinux: OVH's `byolinux_64` install, the image's filesystem in the operator's storage
//! layout. Steps (phases in brackets):
//!
//! 1. the layout planned for the disk group ([`byol_spec::storage::plan`], OVH's automatic
//!    fixes reported) and made ([`super::storage::create`]): every disk wiped at both ends, GPT,
//!    md arrays, LVM, filesystems and swap; the `/` device left unformatted (`partition`);
//! 2. the image streamed onto the `/` device (md array, LV or partition) by the image engine,
//!    verified before its first MiB is written, as for a disk (`download`);
//! 3. the image's one partition checked (its filesystem must be the layout's `/` type), moved
//!    to the start of the device (ext4: its blocks in use, by `e2image -ra`; xfs, btrfs:
//!    [`relocate`], one pass, bounded memory, zero runs skipped) and grown to fill it (`image`);
//! 4. the root mounted; what the image holds under the layout's other mount points (`/boot`,
//!    `/var`…) moved into their filesystems ([`super::copytree`]: owners, modes, hard links,
//!    xattrs, ACLs, holes, device nodes, times), every filesystem mounted where it belongs;
//!    `etc/fstab` written for the layout by UUID, `etc/mdadm/mdadm.conf` from the arrays; the
//!    ConfigDrive on the first disk's `config-2` (`configdrive`);
//! 5. the hook in a chroot, as for a disk ([`super::in_chroot`]); then on UEFI the ESP's
//!    files copied to every other disk's ESP (all share one FAT volume id, so one fstab line
//!    mounts whichever is left), and on BIOS a check that GRUB's boot code is on every disk
//!    (`bootloader`).
//!
//! Any failure zeroes the first and last MiB of every disk of the layout (their partition
//! tables): nothing boots a half-installed layout.

use std::path::{Path, PathBuf};

use byol_spec::storage::{Fs, Holds, Mount, PartRole, Plan, PlanDisk, RaidLevel, Table};
use byol_spec::{AgentConfig, Phase};

use super::super::console::{say, take_lines};
use super::super::disks::Disk;
use super::copytree;
use super::devlinks;
use super::image::{self, FsKind, TableKind};
use super::inroot::InRoot;
use super::mounts::{self, Mounts};
use super::storage::{self, Made, StorageOptions};
use super::{
    Boot, BootloaderOptions, Events, Firmware, InstallError, Step, check_stop, configdrive,
    download, fat, human, tools,
};
use crate::disk::{Access, Disk as Block};

/// What a finished layout install leaves for the caller: the device `config-2` is on.
#[derive(Debug, Clone)]
pub struct Done {
    pub config_drive: Option<PathBuf>,
    pub disks: Vec<PathBuf>,
}

/// The whole `byolinux_64` install on `disks` (the disk group, in order). On failure every
/// disk used is left without a partition table.
pub fn install(
    cfg: &AgentConfig,
    boot: &Boot,
    disks: &[Disk],
    o: &BootloaderOptions,
    events: &mut dyn Events,
) -> Result<Done, InstallError> {
    let mut used = Vec::new();
    let r = steps(cfg, boot, disks, o, events, &mut used);
    if let Err(e) = &r {
        let names: Vec<String> = used.iter().map(|p| p.display().to_string()).collect();
        say(format!(
            "install failed in {}: zeroing the first and last MiB of {} so that nothing boots \
             a half-installed layout",
            e.phase,
            names.join(", ")
        ));
        for d in &used {
            if let Err(w) = super::blockdev::wipe_ends(d) {
                say(format!("could not wipe {}: {w}", d.display()));
            }
        }
    }
    r
}

fn steps(
    cfg: &AgentConfig,
    boot: &Boot,
    disks: &[Disk],
    o: &BootloaderOptions,
    events: &mut dyn Events,
    used: &mut Vec<PathBuf>,
) -> Result<Done, InstallError> {
    let uefi = boot.firmware == Firmware::Uefi;

    // 1. the layout
    let step = Step::start(Phase::Partition);
    let spec = cfg
        .install
        .storage
        .as_ref()
        .ok_or_else(|| step.fail("internal: a byolinux_64 install without a storage layout"))?;
    let layout = spec.checked().map_err(|e| step.fail(e.message))?;
    let pdisks: Vec<PlanDisk> = disks
        .iter()
        .map(|d| PlanDisk {
            name: d.name.clone(),
            size_bytes: d.size_bytes,
        })
        .collect();
    let plan =
        byol_spec::storage::plan(&layout, &pdisks, uefi, Table::Gpt).map_err(|e| step.fail(e.0))?;
    for f in &plan.fixes {
        say(format!("storage: {}", f.0));
        events.send(step.running(f.0.clone(), take_lines()));
    }
    let root = plan
        .root()
        .ok_or_else(|| step.fail("internal: the layout has no `/`"))?;
    for d in &plan.disks {
        let path = disks
            .iter()
            .find(|x| x.name == d.disk)
            .map(|x| PathBuf::from(&x.path))
            .ok_or_else(|| step.fail(format!("internal: disk {} of the plan is gone", d.disk)))?;
        used.push(path);
    }
    check_stop(events, &step)?;
    let so = StorageOptions {
        sysfs: o.sysfs.clone(),
        dev: o.dev.clone(),
        image_row: Some(root),
    };
    let made = storage::create(&plan, used, &so).map_err(|m| step.fail(m))?;
    // the tables leave the disks until the image is in and verified (the kernel keeps the
    // partitions it was told): nothing can boot the layout half-written
    let held = Held::take(&plan, used).map_err(|m| step.fail(m))?;
    let summary = plan.summary();
    for l in &summary {
        say(format!("storage: {l}"));
    }
    events.send(step.ok(format!(
        "scheme {} on {} disk{}: {}",
        spec.scheme,
        used.len(),
        if used.len() == 1 { "" } else { "s" },
        summary.join("; ")
    )));
    let root_dev = made.rows[root]
        .first()
        .cloned()
        .ok_or_else(|| step.fail("internal: `/` has no device"))?;

    // 2. the image onto `/`'s device
    let step = Step::start(Phase::Download);
    check_stop(events, &step)?;
    match download::write(&cfg.install, &root_dev, events) {
        Ok(msg) => events.send(step.ok(msg)),
        Err(download::WriteError::Download(m)) => return Err(step.fail(m)),
        Err(download::WriteError::Image(m)) => {
            events.send(step.ok("image written and verified, but refused by the checks"));
            return Err(Step::start(Phase::Image).fail(m));
        }
    }

    // 3. its filesystem at the device's start, grown
    let step = Step::start(Phase::Image);
    let (img, dev_bytes) = image::inspect_disk(&root_dev).map_err(|m| step.fail(m))?;
    let want = fs_kind(plan.rows[root].fs)
        .ok_or_else(|| step.fail("internal: `/` is not a filesystem"))?;
    let ss = u64::from(img.sector_size);
    let (start, len) = (img.start * ss, (img.end + 1 - img.start) * ss);
    held.put_back().map_err(|m| step.fail(m))?;
    if img.fs != want {
        // the copy strategy: the image's copy on the last member of `/`'s RAID 1 is the
        // scratch space; `/` is made again without it, the files copied, then it joins
        // (with no RAID 1 under `/`: RAM when the image's filesystem fits, else the space of
        // another row of the layout, made again afterwards)
        let mut m = Mounts::new();
        let r1 = plan
            .arrays
            .iter()
            .position(|a| a.holds == Holds::Row(root) && a.level == RaidLevel::R1);
        let msg = match r1 {
            Some(a) => copy_through_member(&plan, &made, root, a, &img, (start, len), &mut m, o),
            None => {
                copy_through_scratch(&plan, &made, root, &root_dev, &img, (start, len), &mut m, o)
            }
        }
        .map_err(|e| step.fail(e))?;
        say(&msg);
        events.send(step.ok(format!("{}; {msg}", img.summary())));
        check_stop(events, &step)?;
        return finish(cfg, boot, &plan, &made, root, m, o, events, used);
    }
    let how = if img.fs == FsKind::Ext4 {
        // e2image moves only the blocks in use, overlap-safe
        let (d, off) = (root_dev.display().to_string(), start.to_string());
        if start > 0 {
            tools::run("e2image", &["-ra", "-o", &off, "-O", "0", &d, &d])
                .map_err(|m| step.fail(m))?;
        }
        grow_ext4(&root_dev).map_err(|m| step.fail(m))?;
        "its blocks in use moved by e2image".to_string()
    } else {
        let moved = relocate(&root_dev, start, len).map_err(|m| step.fail(m))?;
        format!("{} written", human(moved))
    };
    let image_msg = format!(
        "{}; the filesystem moved to the start of {} ({how}) and grown to {}",
        img.summary(),
        root_dev.display(),
        human(dev_bytes)
    );
    say(&image_msg);

    // 4. mounted as the layout says; fstab, mdadm.conf; the ConfigDrive
    let mut m = Mounts::new();
    let fs = m
        .mount_root(&root_dev, &o.root_mount, img.fs)
        .map_err(|e| step.fail(e))?;
    say(format!(
        "mounted {} ({fs}) on {}",
        root_dev.display(),
        o.root_mount.display()
    ));
    match img.fs {
        FsKind::Ext4 => {}
        FsKind::Xfs => {
            let mnt = o.root_mount.display().to_string();
            tools::run("xfs_growfs", &[&mnt]).map_err(|e| step.fail(e))?;
        }
        FsKind::Btrfs => {
            refuse_subvolumes(&o.root_mount).map_err(|e| step.fail(e))?;
            let mnt = o.root_mount.display().to_string();
            tools::run("btrfs", &["filesystem", "resize", "max", &mnt])
                .map_err(|e| step.fail(e))?;
        }
    }
    events.send(step.ok(image_msg));
    check_stop(events, &step)?;
    let moves =
        mount_rows(&plan, &made, root, &mut m, &o.root_mount, true).map_err(|e| step.fail(e))?;
    for l in &moves {
        say(l);
    }
    finish(cfg, boot, &plan, &made, root, m, o, events, used)
}

/// Steps 4 (fstab, mdadm.conf, config-2) and 5 once every filesystem is mounted under
/// `o.root_mount` and holds its files.
#[allow(clippy::too_many_arguments)]
fn finish(
    cfg: &AgentConfig,
    boot: &Boot,
    plan: &Plan,
    made: &Made,
    root: usize,
    mut m: Mounts,
    o: &BootloaderOptions,
    events: &mut dyn Events,
    used: &[PathBuf],
) -> Result<Done, InstallError> {
    let uefi = boot.firmware == Firmware::Uefi;
    let step = Step::start(Phase::Configdrive);
    let mut lines = Vec::new();
    for (i, r) in plan.rows.iter().enumerate() {
        for dev in &made.rows[i] {
            let Some((uuid, _)) = devlinks::fs_ids(dev) else {
                return Err(step.fail(format!(
                    "no filesystem found on {} after it was made",
                    dev.display()
                )));
            };
            lines.push(FstabLine {
                uuid,
                mount: r.mount.as_str().to_string(),
                fs: r.fs,
                root: i == root,
            });
        }
    }
    let esp_uuid = (!made.esps.is_empty()).then(|| fat::volume_uuid(made.esp_id));
    let image_root = InRoot::open(&o.root_mount).map_err(|e| step.fail(e))?;
    let old = image_root
        .read_to_string("etc/fstab")
        .map_err(|e| step.fail(e))?
        .unwrap_or_default();
    let table = fstab(&old, &lines, esp_uuid.as_deref());
    image_root
        .write("etc/fstab", table.as_bytes())
        .map_err(|e| step.fail(e))?;
    say(format!(
        "/etc/fstab written for the layout ({} entries)",
        lines.len() + usize::from(esp_uuid.is_some())
    ));
    if !made.arrays.is_empty() {
        let scan = tools::run("mdadm", &["--detail", "--scan"]).map_err(|e| step.fail(e))?;
        let conf = mdadm_conf(&scan);
        for p in ["etc/mdadm/mdadm.conf", "etc/mdadm.conf"] {
            image_root
                .write(p, conf.as_bytes())
                .map_err(|e| step.fail(e))?;
        }
        say(format!(
            "/etc/mdadm/mdadm.conf: {} arrays",
            conf.lines().filter(|l| l.starts_with("ARRAY")).count()
        ));
    }
    let dev = made
        .config_drive
        .clone()
        .ok_or_else(|| step.fail("internal: no config-2 partition in the plan"))?;
    let sector = Block::open(&dev, Access::Read)
        .map(|d| d.logical_sector())
        .map_err(|e| step.fail(e.to_string()))?;
    let files = configdrive::files(cfg, boot.net.as_ref());
    configdrive::write(&dev, &files, sector).map_err(|m| step.fail(m))?;
    events.send(step.ok(configdrive::summary(&dev, &files)));
    check_stop(events, &step)?;

    // 5. the hook, then every disk made to boot alone
    let step = Step::start(Phase::Bootloader);
    let esp = made.esps.first().cloned();
    if let Some(esp) = &esp {
        m.mount_esp(esp, &o.root_mount).map_err(|e| step.fail(e))?;
    }
    let (links, errors) = devlinks::make_for_volumes(&o.dev, &volume_devices(made, &o.dev));
    for e in errors {
        say(format!("warning: {e}"));
    }
    if !links.is_empty() {
        say(format!(
            "/dev links of the arrays and volumes: {}",
            links.join(", ")
        ));
    }
    let first = used[0].clone();
    let esp_part = plan.disks[0]
        .parts
        .iter()
        .find(|p| p.role == PartRole::Esp)
        .cloned();
    let location = || {
        let p = esp_part.as_ref().ok_or("internal: no ESP in the plan")?;
        let ss = Block::open(&first, Access::Read)
            .map(|d| u64::from(d.logical_sector()))
            .map_err(|e| e.to_string())?;
        super::esp_location(
            &first,
            TableKind::Gpt,
            ss as u32,
            (p.number, p.start / ss, p.size / ss),
        )
    };
    let mut msg = if o.run_hook {
        super::in_chroot(
            &mut m,
            boot,
            &first,
            esp.as_deref(),
            o,
            events,
            &step,
            &location,
        )?
    } else {
        format!("{} not run (asked so)", o.hook)
    };
    let errors = m.unmount_all();
    if !errors.is_empty() {
        return Err(step.fail(format!("cannot unmount: {}", errors.join("; "))));
    }
    if let Some(src) = &esp
        && made.esps.len() > 1
    {
        let files = fat::read_files(src).map_err(|e| step.fail(e))?;
        let refs: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(p, d)| (p.as_str(), d.as_slice()))
            .collect();
        for other in &made.esps[1..] {
            fat::write_files(other, &refs).map_err(|e| step.fail(e))?;
        }
        let line = format!(
            "the ESP's {} files copied to {}",
            files.len(),
            made.esps[1..]
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        say(&line);
        msg.push_str(&format!("; {line}"));
    }
    if !uefi {
        let bare: Vec<String> = used
            .iter()
            .filter(|d| !has_boot_code(d))
            .map(|d| d.display().to_string())
            .collect();
        if bare.is_empty() {
            msg.push_str(&format!("; boot code on all {} disks", used.len()));
        } else {
            let w = format!(
                "warning: {} has no boot code after {}: the machine does not boot from it alone",
                bare.join(", "),
                o.hook
            );
            say(&w);
            msg.push_str(&format!("; {w}"));
        }
    }
    nix::unistd::sync();
    events.send(step.ok(msg));
    Ok(Done {
        config_drive: made.config_drive.clone(),
        disks: used.to_vec(),
    })
}

/// The copy strategy (the image's filesystem is not `/`'s type): array `a` (`/`, RAID 1) was
/// written whole with the image; it is stopped, made again without its last member, `/` gets
/// its own filesystem, every filesystem of the layout is mounted under `o.root_mount`, and the
/// image's tree is copied in from the last member's copy (a read-only loop device over the
/// image's partition inside it); then that member joins the array (md resyncs it). Ok: what
/// was done.
#[allow(clippy::too_many_arguments)]
fn copy_through_member(
    plan: &Plan,
    made: &Made,
    root: usize,
    a: usize,
    img: &image::ImageInfo,
    (start, len): (u64, u64),
    m: &mut Mounts,
    o: &BootloaderOptions,
) -> Result<String, String> {
    let array = &made.arrays[a];
    let members = &made.members[a];
    let (scratch, keep) = members
        .split_last()
        .ok_or("internal: an array without members")?;
    let arr = array.display().to_string();
    tools::run("mdadm", &["--stop", &arr])?;
    let offset = md_data_offset(scratch)?;
    let mut with: Vec<String> = keep.iter().map(|p| p.display().to_string()).collect();
    with.push("missing".into());
    storage::create_array(array, plan.arrays[a].level, &plan.arrays[a].name, &with)?;
    storage::make_fs(&plan.rows[root], array)?;
    let want = fs_kind(plan.rows[root].fs).ok_or("internal: `/` is not a filesystem")?;
    m.mount_root(array, &o.root_mount, want)?;
    mount_rows(plan, made, root, m, &o.root_mount, false)?;
    let copied = copy_from_image(scratch, offset + start, len, img.fs, o)?;
    let sc = scratch.display().to_string();
    tools::run("mdadm", &["--zero-superblock", &sc])?;
    tools::run("mdadm", &[&arr, "--add", &sc])?;
    Ok(format!(
        "the image's {} files copied from its copy on {sc} into {} {} on {arr} ({} files, {} \
         directories, {} links, {}), then {sc} added back to {arr} (md resyncs it)",
        img.fs.as_str(),
        want.as_str(),
        plan.rows[root].mount.as_str(),
        copied.files,
        copied.dirs,
        copied.symlinks + copied.hard_links,
        human(copied.bytes)
    ))
}

/// The image's tree (a `fs` filesystem of `len` bytes at `offset` in `backing`, mounted
/// read-only through a loop device) copied into what is mounted at `o.root_mount`.
fn copy_from_image(
    backing: &Path,
    offset: u64,
    len: u64,
    fs: FsKind,
    o: &BootloaderOptions,
) -> Result<copytree::Copied, String> {
    let image = super::loopdev::LoopDev::attach(&o.dev, backing, offset, len)?;
    let image_mnt = Path::new("/run/byol-image");
    std::fs::create_dir_all(image_mnt)
        .map_err(|e| format!("cannot make {}: {e}", image_mnt.display()))?;
    let mut src = Mounts::new();
    src.mount_ro(&image.path, image_mnt, fs)?;
    // (on a refusal `src` unmounts the image as it goes)
    if fs == FsKind::Btrfs {
        refuse_subvolumes(image_mnt)?;
    }
    let c = copytree::copy_tree(image_mnt, &o.root_mount);
    let errors = src.unmount_all();
    if !errors.is_empty() {
        return Err(format!("cannot unmount the image: {}", errors.join("; ")));
    }
    drop(image);
    c
}

/// An image's btrfs with subvolumes is refused: byol moves an image's files as one tree and
/// writes fstab for the layout's filesystems, so a system that mounts `subvol=@` would not
/// boot. `mnt`: the image's filesystem, mounted.
fn refuse_subvolumes(mnt: &Path) -> Result<(), String> {
    let out = tools::run("btrfs", &["subvolume", "list", &mnt.display().to_string()])?;
    let subvols: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_once(" path ").map(|(_, p)| p.trim()))
        .collect();
    if subvols.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = subvols
        .iter()
        .take(8)
        .map(|p| byol_spec::escape_control(p).into_owned())
        .collect();
    Err(format!(
        "the image's btrfs filesystem holds {} subvolume{} ({}{}): byol installs btrfs images \
         without subvolumes (their files land in the layout's filesystems as one tree); make \
         the image with its files in the top-level subvolume, or in ext4 or xfs",
        subvols.len(),
        if subvols.len() == 1 { "" } else { "s" },
        shown.join(", "),
        if subvols.len() > shown.len() {
            ", …"
        } else {
            ""
        }
    ))
}

/// Where the image's filesystem waits while `/` is made again in its own type.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scratch {
    /// A file in RAM (the initramfs's own filesystem).
    Ram(PathBuf),
    /// The device of another row of the layout (swap first), made again afterwards.
    Row { row: usize, dev: PathBuf },
}

/// What the agent keeps free of RAM beside a scratch copy of the image (itself, the tools,
/// the kernel's buffers).
const RAM_RESERVE: u64 = 256 << 20;

/// Where a `len`-byte copy of the image's filesystem can wait: RAM when it fits within
/// `ram` bytes, else the largest device of another row that holds it (swap rows first: they
/// never hold files; a filesystem row only when no other mount point lies under it). None:
/// nowhere.
fn choose_scratch(
    plan: &Plan,
    made: &Made,
    root: usize,
    len: u64,
    ram: u64,
    dir: &Path,
    size_of: impl Fn(&Path) -> Option<u64>,
) -> Option<Scratch> {
    if len <= ram {
        return Some(Scratch::Ram(dir.join("byol-image-scratch")));
    }
    let nested = |i: usize| match &plan.rows[i].mount {
        Mount::Swap => false,
        Mount::Path(p) => plan.rows.iter().any(|r| match &r.mount {
            Mount::Path(q) => q.starts_with(&format!("{}/", p.trim_end_matches('/'))),
            Mount::Swap => false,
        }),
    };
    let mut best: Option<(bool, u64, Scratch)> = None;
    for (i, devs) in made.rows.iter().enumerate() {
        if i == root || nested(i) {
            continue;
        }
        let swap = plan.rows[i].mount == Mount::Swap;
        for d in devs {
            let Some(size) = size_of(d).filter(|&s| s >= len) else {
                continue;
            };
            let better = match &best {
                None => true,
                Some((bs, bsize, _)) => (swap, size) > (*bs, *bsize),
            };
            if better {
                best = Some((
                    swap,
                    size,
                    Scratch::Row {
                        row: i,
                        dev: d.clone(),
                    },
                ));
            }
        }
    }
    best.map(|(_, _, s)| s)
}

/// The RAM a scratch copy may take: what the kernel says is available, less [`RAM_RESERVE`].
fn ram_for_scratch() -> u64 {
    let avail = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    avail.saturating_sub(RAM_RESERVE)
}

/// The bytes a filesystem has free for `dir` (0 when it cannot be told).
fn free_bytes(dir: &Path) -> u64 {
    nix::sys::statvfs::statvfs(dir)
        .map(|v| v.blocks_available().saturating_mul(v.fragment_size()))
        .unwrap_or(0)
}

/// `len` bytes of `src` from `from` to the start of `dst` (a file it makes, or a device),
/// synced; 4 MiB at a time.
fn copy_range(src: &Path, from: u64, len: u64, dst: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileExt as _;
    let s = std::fs::File::open(src).map_err(|e| format!("cannot open {}: {e}", src.display()))?;
    let d = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(dst)
        .map_err(|e| format!("cannot open {}: {e}", dst.display()))?;
    let mut buf = vec![0u8; 4 << 20];
    let mut done = 0u64;
    while done < len {
        let n = ((len - done) as usize).min(buf.len());
        s.read_exact_at(&mut buf[..n], from + done)
            .map_err(|e| format!("cannot read {}: {e}", src.display()))?;
        d.write_all_at(&buf[..n], done)
            .map_err(|e| format!("cannot write {} at {}: {e}", dst.display(), human(done)))?;
        done += n as u64;
    }
    d.sync_all()
        .map_err(|e| format!("cannot sync {}: {e}", dst.display()))
}

/// The copy strategy without a RAID 1 under `/`: the image's filesystem (on `/`'s device at
/// `start`) is copied to scratch space ([`choose_scratch`]: RAM, or another row's device), `/`
/// gets its own filesystem, the layout is mounted (the scratch row aside), the image's tree is
/// copied in from the scratch copy (a read-only loop device), then the scratch row is made
/// again and what belongs on it moved there. Ok: what was done.
#[allow(clippy::too_many_arguments)]
fn copy_through_scratch(
    plan: &Plan,
    made: &Made,
    root: usize,
    root_dev: &Path,
    img: &image::ImageInfo,
    (start, len): (u64, u64),
    m: &mut Mounts,
    o: &BootloaderOptions,
) -> Result<String, String> {
    // the RAM filesystem holds at most its own free space (the agent's /run: half the RAM)
    let ram = o
        .scratch_ram
        .unwrap_or_else(|| ram_for_scratch().min(free_bytes(&o.scratch_dir)));
    let size_of = |d: &Path| Block::open(d, Access::Read).and_then(|b| b.size()).ok();
    let want = fs_kind(plan.rows[root].fs).ok_or("internal: `/` is not a filesystem")?;
    let Some(scratch) = choose_scratch(plan, made, root, len, ram, &o.scratch_dir, size_of) else {
        return Err(format!(
            "Could not download, qcow2 image is too big to download in memory. (the image's {} \
             filesystem is {} and the layout's `/` is {}: byol copies its files from a copy \
             kept in RAM ({} free for it) or on another partition of the layout, and none is \
             big enough: make `/` {} in the layout, or RAID 1 on two disks or more, or add a \
             partition of at least {})",
            img.fs.as_str(),
            human(len),
            want.as_str(),
            human(ram),
            img.fs.as_str(),
            human(len)
        ));
    };
    let (backing, place) = match &scratch {
        Scratch::Ram(p) => (p.clone(), format!("RAM ({})", p.display())),
        Scratch::Row { row, dev } => (
            dev.clone(),
            format!("{} ({})", dev.display(), plan.rows[*row].mount.as_str()),
        ),
    };
    if let Some(parent) = backing
        .parent()
        .filter(|_| matches!(scratch, Scratch::Ram(_)))
    {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot make {}: {e}", parent.display()))?;
    }
    let r = (|| -> Result<copytree::Copied, String> {
        copy_range(root_dev, start, len, &backing)?;
        storage::make_fs(&plan.rows[root], root_dev)?;
        let skip = match &scratch {
            Scratch::Row { row, .. } => Some(*row),
            Scratch::Ram(_) => None,
        };
        m.mount_root(root_dev, &o.root_mount, want)?;
        mount_rows_where(plan, made, root, m, &o.root_mount, false, |i| {
            Some(i) != skip
        })?;
        let copied = copy_from_image(&backing, 0, len, img.fs, o)?;
        if let Some(row) = skip {
            // the scratch row gets its filesystem (or swap) again, and its files from `/`
            storage::make_fs(&plan.rows[row], &backing)?;
            mount_rows_where(plan, made, root, m, &o.root_mount, true, |i| i == row)?;
        }
        Ok(copied)
    })();
    if let Scratch::Ram(p) = &scratch {
        let _ = std::fs::remove_file(p);
    }
    let copied = r?;
    Ok(format!(
        "the image's {} files copied from its copy in {place} into {} {} on {} ({} files, {} \
         directories, {} links, {}){}",
        img.fs.as_str(),
        want.as_str(),
        plan.rows[root].mount.as_str(),
        root_dev.display(),
        copied.files,
        copied.dirs,
        copied.symlinks + copied.hard_links,
        human(copied.bytes),
        match &scratch {
            Scratch::Row { row, .. } => format!(
                ", then {} made again for {}",
                backing.display(),
                plan.rows[*row].mount.as_str()
            ),
            Scratch::Ram(_) => String::new(),
        }
    ))
}

/// Where an md member's data starts (superblock 1.2, 4 KiB into the member: magic, then
/// `data_offset` in 512-byte sectors at byte 128).
fn md_data_offset(member: &Path) -> Result<u64, String> {
    let mut sb = [0u8; 256];
    Block::open(member, Access::Read)
        .and_then(|d| d.read_exact_at(&mut sb, 4096))
        .map_err(|e| e.to_string())?;
    if sb[..4] != 0xa92b_4efc_u32.to_le_bytes() {
        return Err(format!(
            "{} has no md superblock 1.2 at 4 KiB",
            member.display()
        ));
    }
    let mut o = [0u8; 8];
    o.copy_from_slice(&sb[128..136]);
    Ok(u64::from_le_bytes(o) * 512)
}

/// The most of each end of a disk [`Held`] keeps.
const HELD_MAX: u64 = 1 << 20;

/// The disks' partition tables (what lies before the first partition and after the last, at
/// most a MiB at each end), held in memory and zeroed on the disks while the image streams in.
struct Held {
    areas: Vec<(PathBuf, u64, Vec<u8>)>,
}

impl Held {
    fn take(plan: &Plan, disks: &[PathBuf]) -> Result<Held, String> {
        let mut areas = Vec::new();
        for (d, path) in plan.disks.iter().zip(disks) {
            let disk = Block::open(path, Access::ReadWrite).map_err(|e| e.to_string())?;
            let size = disk.size().map_err(|e| e.to_string())?;
            // the primary table before the first partition, the backup in the disk's last
            // MiB (not the free space after the last partition: at most 2 MiB held per disk)
            let first = d
                .parts
                .iter()
                .map(|p| p.start)
                .min()
                .unwrap_or(0)
                .min(HELD_MAX);
            let last = d
                .parts
                .iter()
                .map(|p| p.start + p.size)
                .max()
                .unwrap_or(size)
                .max(size.saturating_sub(HELD_MAX));
            for (at, end) in [(0, first), (last, size)] {
                let mut b = vec![0u8; end.saturating_sub(at) as usize];
                disk.read_exact_at(&mut b, at).map_err(|e| e.to_string())?;
                disk.write_zero_bytes(at, end).map_err(|e| e.to_string())?;
                areas.push((path.clone(), at, b));
            }
            disk.sync("with its partition table held back")
                .map_err(|e| e.to_string())?;
        }
        Ok(Held { areas })
    }

    fn put_back(self) -> Result<(), String> {
        for (path, at, b) in &self.areas {
            let disk = Block::open(path, Access::ReadWrite).map_err(|e| e.to_string())?;
            disk.write_all_at(b, *at).map_err(|e| e.to_string())?;
            disk.sync("its partition table")
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// The layout's filesystem type as the image's.
fn fs_kind(fs: Fs) -> Option<FsKind> {
    match fs {
        Fs::Ext4 => Some(FsKind::Ext4),
        Fs::Xfs => Some(FsKind::Xfs),
        Fs::Btrfs => Some(FsKind::Btrfs),
        Fs::Swap => None,
    }
}

/// Moves the `len` bytes at `from` on `dev` to its start, in ascending 4 MiB chunks (each
/// read whole before it is written, so an overlap is safe); a chunk of zeroes is written only
/// where the destination is not zero already. Ok: the bytes written.
pub fn relocate(dev: &Path, from: u64, len: u64) -> Result<u64, String> {
    if from == 0 {
        return Ok(0);
    }
    const CHUNK: usize = 4 << 20;
    let d = Block::open(dev, Access::ReadWrite).map_err(|e| e.to_string())?;
    let (mut src, mut dst) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let (mut at, mut written) = (0u64, 0u64);
    while at < len {
        let n = (len - at).min(CHUNK as u64) as usize;
        d.read_exact_at(&mut src[..n], from + at)
            .map_err(|e| e.to_string())?;
        if src[..n].iter().all(|&b| b == 0) {
            d.read_exact_at(&mut dst[..n], at)
                .map_err(|e| e.to_string())?;
            if dst[..n].iter().any(|&b| b != 0) {
                d.zero(at, at + n as u64).map_err(|e| e.to_string())?;
            }
        } else {
            d.write_all_at(&src[..n], at).map_err(|e| e.to_string())?;
            written += n as u64;
        }
        at += n as u64;
    }
    d.sync("the moved filesystem").map_err(|e| e.to_string())?;
    Ok(written)
}

/// e2fsck (preen; 1 = fixed is fine) then resize2fs to the device's size.
fn grow_ext4(dev: &Path) -> Result<(), String> {
    let d = dev.display().to_string();
    tools::run_ok("e2fsck", &["-f", "-p", &d], &[0, 1])?;
    tools::run("resize2fs", &[&d]).map(|_| ())
}

/// Mounts every filesystem row but `/` under `root`, shallowest first, after moving what the
/// image has at its mount point into it. Returns one line per row.
fn mount_rows(
    plan: &Plan,
    made: &Made,
    root_row: usize,
    m: &mut Mounts,
    root: &Path,
    move_files: bool,
) -> Result<Vec<String>, String> {
    mount_rows_where(plan, made, root_row, m, root, move_files, |_| true)
}

/// [`mount_rows`] for the rows `which` takes.
fn mount_rows_where(
    plan: &Plan,
    made: &Made,
    root_row: usize,
    m: &mut Mounts,
    root: &Path,
    move_files: bool,
    which: impl Fn(usize) -> bool,
) -> Result<Vec<String>, String> {
    let mut rows: Vec<(usize, &str)> = plan
        .rows
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != root_row && which(*i))
        .filter_map(|(i, r)| match &r.mount {
            Mount::Path(p) => Some((i, p.as_str())),
            Mount::Swap => None,
        })
        .collect();
    rows.sort_by_key(|(_, p)| p.matches('/').count());
    let staging = Path::new("/run/byol-move");
    let mut out = Vec::new();
    for (i, path) in rows {
        let fs = fs_kind(plan.rows[i].fs).ok_or("internal: a mount point without a filesystem")?;
        let dev = made.rows[i]
            .first()
            .ok_or_else(|| format!("internal: {path} has no device"))?;
        let rel = path.trim_start_matches('/');
        let dir = InRoot::open(root)?.dir(rel)?;
        let has = move_files
            && std::fs::read_dir(&dir)
                .map_err(|e| format!("cannot read {path} in the image: {e}"))?
                .next()
                .is_some();
        if has {
            std::fs::create_dir_all(staging)
                .map_err(|e| format!("cannot make {}: {e}", staging.display()))?;
            let mut tmp = Mounts::new();
            tmp.mount_fs(dev, staging, fs)?;
            let c = copytree::copy_tree(&dir, staging)?;
            let errors = tmp.unmount_all();
            if !errors.is_empty() {
                return Err(format!("cannot unmount: {}", errors.join("; ")));
            }
            empty_dir(&dir)?;
            out.push(format!(
                "{path}: the image's {} files, {} directories, {} moved into {}",
                c.files,
                c.dirs,
                human(c.bytes),
                dev.display()
            ));
        }
        m.mount_fs(dev, &dir, fs)?;
        out.push(format!(
            "mounted {} ({}) on {path}",
            dev.display(),
            fs.as_str()
        ));
    }
    Ok(out)
}

/// Removes what `dir` holds (never following a symlink), keeping `dir`.
fn empty_dir(dir: &Path) -> Result<(), String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    for e in rd {
        let e = e.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let p = e.path();
        let r = match e.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&p),
            _ => std::fs::remove_file(&p),
        };
        r.map_err(|e| format!("cannot remove {}: {e}", p.display()))?;
    }
    Ok(())
}

/// The md arrays and LVs of the layout (their by-uuid and by-label links for the hook).
fn volume_devices(made: &Made, dev: &Path) -> Vec<PathBuf> {
    made.arrays
        .iter()
        .cloned()
        .chain(made.volumes.iter().map(|v| dev.join(v)))
        .collect()
}

/// True when the disk's MBR holds boot code (its first 440 bytes are not all zero).
fn has_boot_code(disk: &Path) -> bool {
    let mut b = [0u8; 440];
    Block::open(disk, Access::Read)
        .and_then(|d| d.read_exact_at(&mut b, 0))
        .is_ok_and(|()| b.iter().any(|&x| x != 0))
}

/// One filesystem of the layout, for fstab.
#[derive(Debug, Clone)]
pub struct FstabLine {
    pub uuid: String,
    /// `/…` or `swap`.
    pub mount: String,
    pub fs: Fs,
    pub root: bool,
}

/// The image's fstab with its lines for `/`, `/boot/efi`, swap and the layout's mount points
/// commented out, and the layout's lines added by UUID (the ESP's too, when there is one).
pub fn fstab(old: &str, lines: &[FstabLine], esp_uuid: Option<&str>) -> String {
    let ours: Vec<&str> = lines
        .iter()
        .map(|l| l.mount.as_str())
        .chain(["/", "/boot/efi"])
        .collect();
    let mut out = String::new();
    for l in old.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let replaced = !l.trim_start().starts_with('#')
            && f.len() >= 3
            && (ours.contains(&f[1]) || f[2] == "swap");
        if replaced {
            out.push_str(&format!("# replaced by byol: {l}\n"));
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    out.push_str("# the storage layout, written by byol\n");
    // a mount point after the one it is under (`/boot/efi` after `/boot`), swap last
    let depth = |m: &str| m.split('/').filter(|c| !c.is_empty()).count();
    let mut entries: Vec<(bool, usize, String)> = lines
        .iter()
        .map(|l| {
            let line = match l.fs {
                // a RAID machine that lost a disk lost its swap there too: never waited for
                Fs::Swap => format!("UUID={} none swap sw,nofail 0 0", l.uuid),
                fs => {
                    // xfs and btrfs check themselves at mount (their fsck does nothing)
                    let pass = match (fs, l.root) {
                        (Fs::Ext4, true) => 1,
                        (Fs::Ext4, false) => 2,
                        _ => 0,
                    };
                    let opts = if fs == Fs::Ext4 {
                        "defaults,errors=remount-ro"
                    } else {
                        "defaults"
                    };
                    format!(
                        "UUID={} {} {} {opts} 0 {pass}",
                        l.uuid,
                        l.mount,
                        fs.as_str()
                    )
                }
            };
            (l.fs == Fs::Swap, depth(&l.mount), line)
        })
        .collect();
    if let Some(u) = esp_uuid {
        entries.push((false, depth("/boot/efi"), mounts::esp_fstab_line(u)));
    }
    entries.sort_by_key(|(swap, depth, _)| (*swap, *depth));
    for (_, _, line) in entries {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// `mdadm.conf` from `mdadm --detail --scan`.
pub fn mdadm_conf(scan: &str) -> String {
    let mut out = String::from(
        "# mdadm.conf, written by byol for the storage layout\n\
         HOMEHOST <system>\nMAILADDR root\n",
    );
    for l in scan.lines().filter(|l| l.starts_with("ARRAY ")) {
        out.push_str(l.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/` xfs, `/data` and `/data/x` ext4, `/srv` ext4, swap: which place holds the image.
    #[test]
    fn scratch_is_ram_when_it_fits_else_swap_else_the_largest_free_standing_row() {
        use byol_spec::storage::{PartitionSpec, PlanDisk, Table};
        let row = |m: &str, fs: &str, size: u64| PartitionSpec {
            mount_point: m.into(),
            file_system: fs.into(),
            size,
            ..Default::default()
        };
        let spec = byol_spec::StorageSpec {
            scheme: "custom".into(),
            disk_group_id: 1,
            disks: None,
            layout: vec![
                row("/", "xfs", 1024),
                row("/data", "ext4", 2048),
                row("/data/x", "ext4", 512),
                row("/srv", "ext4", 1536),
                row("swap", "swap", 256),
            ],
        };
        let layout = spec.checked().unwrap();
        let disks = [PlanDisk {
            name: "vda".into(),
            size_bytes: 20 << 30,
        }];
        let plan = byol_spec::storage::plan(&layout, &disks, false, Table::Gpt).unwrap();
        let root = plan.root().unwrap();
        let by_mount = |m: &str| {
            plan.rows
                .iter()
                .position(|r| r.mount.as_str() == m)
                .unwrap()
        };
        let mut made = Made {
            rows: vec![Vec::new(); plan.rows.len()],
            ..Made::default()
        };
        let mut sizes = std::collections::HashMap::new();
        for (m, dev, mib) in [
            ("/", "vda2", 1024u64),
            ("/data", "vda3", 2048),
            ("/data/x", "vda4", 512),
            ("/srv", "vda5", 1536),
            ("swap", "vda6", 256),
        ] {
            let p = PathBuf::from(format!("/dev/{dev}"));
            made.rows[by_mount(m)].push(p.clone());
            sizes.insert(p, mib << 20);
        }
        let size_of = |d: &Path| sizes.get(d).copied();
        let dir = Path::new("/run");
        let pick = |len: u64, ram: u64| choose_scratch(&plan, &made, root, len, ram, dir, size_of);
        // RAM when it fits
        assert_eq!(
            pick(600 << 20, 700 << 20),
            Some(Scratch::Ram(PathBuf::from("/run/byol-image-scratch")))
        );
        // swap first when it holds it (never files)
        assert_eq!(
            pick(200 << 20, 0),
            Some(Scratch::Row {
                row: by_mount("swap"),
                dev: "/dev/vda6".into()
            })
        );
        // else the largest row with no mount point under it: /srv, not /data (holds /data/x)
        assert_eq!(
            pick(600 << 20, 0),
            Some(Scratch::Row {
                row: by_mount("/srv"),
                dev: "/dev/vda5".into()
            })
        );
        // nowhere: bigger than every other row
        assert_eq!(pick(1600 << 20, 0), None);
        assert!(free_bytes(Path::new("/")) > 0);
        assert_eq!(free_bytes(Path::new("/no/such/dir")), 0);
    }

    #[test]
    fn fstab_for_a_layout() {
        let old = "# comment\nLABEL=byolroot / ext4 defaults 0 1\nUUID=1 /boot/efi vfat x 0 1\n\
                   /swapfile none swap sw 0 0\ntmpfs /tmp tmpfs defaults 0 0\n";
        let lines = [
            FstabLine {
                uuid: "b".into(),
                mount: "/boot".into(),
                fs: Fs::Ext4,
                root: false,
            },
            FstabLine {
                uuid: "s1".into(),
                mount: "swap".into(),
                fs: Fs::Swap,
                root: false,
            },
            FstabLine {
                uuid: "r".into(),
                mount: "/".into(),
                fs: Fs::Ext4,
                root: true,
            },
            FstabLine {
                uuid: "d".into(),
                mount: "/data".into(),
                fs: Fs::Xfs,
                root: false,
            },
        ];
        let t = fstab(old, &lines, Some("ABCD-1234"));
        assert_eq!(
            t,
            "# comment\n\
             # replaced by byol: LABEL=byolroot / ext4 defaults 0 1\n\
             # replaced by byol: UUID=1 /boot/efi vfat x 0 1\n\
             # replaced by byol: /swapfile none swap sw 0 0\n\
             tmpfs /tmp tmpfs defaults 0 0\n\
             # the storage layout, written by byol\n\
             UUID=r / ext4 defaults,errors=remount-ro 0 1\n\
             UUID=b /boot ext4 defaults,errors=remount-ro 0 2\n\
             UUID=d /data xfs defaults 0 0\n\
             UUID=ABCD-1234 /boot/efi vfat umask=0077 0 1\n\
             UUID=s1 none swap sw,nofail 0 0\n"
        );
    }

    #[test]
    fn mdadm_conf_keeps_the_array_lines() {
        let scan = "ARRAY /dev/md2 metadata=1.2 name=md2 UUID=a:b:c:d\nmdadm: warning\n";
        assert_eq!(
            mdadm_conf(scan),
            "# mdadm.conf, written by byol for the storage layout\nHOMEHOST <system>\n\
             MAILADDR root\nARRAY /dev/md2 metadata=1.2 name=md2 UUID=a:b:c:d\n"
        );
    }

    #[test]
    fn a_filesystem_moves_to_the_start_whatever_the_overlap() {
        use std::io::Write as _;
        for (from, len) in [(1u64 << 20, 9u64 << 20), (8 << 20, 5 << 20), (512, 3 << 20)] {
            let mut f = tempfile::NamedTempFile::new().unwrap();
            let total = from + len;
            let data: Vec<u8> = (0..total)
                .map(|i| {
                    // a zero run in the middle, to take the skip path
                    if (2 << 20..3 << 20).contains(&(i.wrapping_sub(from))) {
                        0
                    } else {
                        (i * 7 % 251) as u8 | 1
                    }
                })
                .collect();
            f.write_all(&data).unwrap();
            relocate(f.path(), from, len).unwrap();
            let got = std::fs::read(f.path()).unwrap();
            assert_eq!(&got[..len as usize], &data[from as usize..], "from {from}");
        }
    }
}
