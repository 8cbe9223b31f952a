//! install: the install itself, once the agent has its config and the disk inventory. Step by
//! step, each reported as an event (phase names in brackets):
//!
//! 1. [`choose`] the disk from the machine's disk hints, or `diskGroupId` (`disk`);
//! 2. [`download`]: stream the image to it with the image engine, progress every ~2 s
//!    (`download`);
//! 3. [`image`]: check what was written: a partition table for the disk's logical sector size,
//!    exactly one partition, holding ext4, xfs or btrfs (`image`);
//! 4. [`layout`] ([`gpt`], [`mbr`]): the table fixed for the disk: backup GPT header at the
//!    disk's end, the image's partition grown, ESP (UEFI) or BIOS boot partition (legacy on GPT)
//!    and `config-2` added at the end; the kernel told ([`blockdev`]); the ESP formatted
//!    ([`fat`]) (`partition`);
//! 5. [`configdrive`]: the OpenStack ConfigDrive on `config-2` (`configdrive`);
//! 6. the image's `/root/.ovh/make_image_bootable.sh` in a chroot ([`mounts`], [`hook`]), its
//!    output streamed, then on UEFI the removable-path fallback ([`uefi`]) and a boot entry
//!    with network boot kept on top of `BootOrder` ([`efiboot`]) (`bootloader`);
//! 7. `done`, and the caller reboots.
//!
//! The engine writes the image's first MiB only once the checksum is verified and the checks
//! of step 3 passed on the disk as it will read (the held first MiB over the written rest):
//! a refused image never has its partition table on the disk. From the commit on, any failure
//! zeroes the disk's first and last MiB (MBR, primary and backup GPT) before it is reported:
//! a failed install never leaves a disk that boots half an image.

pub mod blockdev;
pub mod byolinux;
pub mod choose;
pub mod configdrive;
pub mod copytree;
pub mod devlinks;
pub mod download;
pub mod efiboot;
pub mod fat;
pub mod gpt;
pub mod hook;
pub mod ids;
pub mod image;
pub mod inroot;
pub mod layout;
pub mod loopdev;
pub mod mbr;
pub mod mounts;
pub mod record;
pub mod storage;
pub mod tools;
pub mod uefi;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use byol_spec::{AgentConfig, AgentEvent, EventStatus, Phase};

use super::console::{say, take_lines};
use super::disks::Disk;
use super::net::NetConfig;
pub use super::step::{Step, clip};
use layout::{Layout, Role};

/// The firmware the machine booted with, which decides the partitions added and `BOOT_MODE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    Uefi,
    Bios,
}

impl Firmware {
    /// `uefi` or `legacy`: the hook's `BOOT_MODE`.
    pub fn boot_mode(self) -> &'static str {
        match self {
            Firmware::Uefi => "uefi",
            Firmware::Bios => "legacy",
        }
    }
}

/// What the machine booted with.
#[derive(Debug, Clone)]
pub struct Boot {
    pub firmware: Firmware,
    /// The network the agent set up (None when it left the host's alone).
    pub net: Option<NetConfig>,
}

/// Where events go (the agent's reporter, or a test's list).
pub trait Events: Send {
    fn send(&mut self, e: AgentEvent);
    /// Set once the server has said to stop (cancelled, or taken over by a newer boot).
    fn stop(&self) -> crate::stop::Stop {
        crate::stop::Stop::default()
    }
}

/// Fails `step` when the server has said to stop.
fn check_stop(events: &dyn Events, step: &Step) -> Result<(), InstallError> {
    match events.stop().reason() {
        Some(why) => Err(step.fail(format!("stopped: {why}"))),
        None => Ok(()),
    }
}

impl Events for Vec<AgentEvent> {
    fn send(&mut self, e: AgentEvent) {
        self.push(e);
    }
}

/// A failed install: the phase it failed in and the message (the guide's wording where it has
/// one). The disk is already left unbootable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InstallError {
    pub phase: Phase,
    pub message: String,
}

/// A finished install.
#[derive(Debug, Clone, PartialEq)]
pub struct Installed {
    pub disk: String,
    pub seconds: f64,
    pub message: String,
}

/// How the bootloader step runs (paths are parameters for tests; [`Default`] is the machine).
#[derive(Debug, Clone)]
pub struct BootloaderOptions {
    /// Where the image's root filesystem is mounted (`/mnt/root`).
    pub root_mount: PathBuf,
    /// The agent's own resolv.conf, copied into the chroot.
    pub resolv_conf: PathBuf,
    /// The hook, inside the image.
    pub hook: String,
    pub hook_timeout: Duration,
    /// The EFI variables (None: the machine's, `/sys/firmware/efi/efivars`).
    pub efivars: Option<efiboot::Vars>,
    /// The machine's disks, whose `/dev/disk/by-id|by-path` links are made under `dev`
    /// (from `sysfs`) before the hook; none: no links made (tests on a host that has udev).
    pub disks: Vec<Disk>,
    pub dev: PathBuf,
    pub sysfs: PathBuf,
    /// Where the hook's `/proc/cmdline` (byol's parameters taken out) is written.
    pub hook_cmdline_file: PathBuf,
    /// Run the image's hook (false: the host CLI's `--no-hook`, for images without one).
    pub run_hook: bool,
    /// OVH's `efiBootloaderPath` (`\efi\debian\grubx64.efi`): the loader the boot entry and
    /// the removable path start (none: the one found).
    pub efi_loader: Option<String>,
    /// The copy strategy without RAID 1 under `/`: the most RAM its scratch copy of the image
    /// may take (none: what /proc/meminfo says is available, less a reserve), and where that
    /// copy goes (a RAM filesystem).
    pub scratch_ram: Option<u64>,
    pub scratch_dir: PathBuf,
}

impl Default for BootloaderOptions {
    fn default() -> Self {
        BootloaderOptions {
            root_mount: PathBuf::from("/mnt/root"),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            hook: hook::HOOK_PATH.to_string(),
            hook_timeout: hook::DEFAULT_TIMEOUT,
            efivars: None,
            disks: Vec::new(),
            dev: PathBuf::from("/dev"),
            sysfs: PathBuf::from("/sys"),
            hook_cmdline_file: PathBuf::from("/run/byol-hook-cmdline"),
            run_hook: true,
            efi_loader: None,
            scratch_ram: None,
            scratch_dir: PathBuf::from("/run"),
        }
    }
}

/// The whole install on the machine: the disk chosen from `disks`, written, fixed, made
/// bootable; the `done` event sent. The caller reboots. On failure the disk is left unbootable
/// and the error says where and why (the caller sends the `failed` event).
pub fn run(
    cfg: &AgentConfig,
    boot: &Boot,
    disks: &[Disk],
    events: &mut dyn Events,
) -> Result<Installed, InstallError> {
    let t0 = Instant::now();
    let step = Step::start(Phase::Disk);
    let o = BootloaderOptions {
        hook_timeout: Duration::from_secs(cfg.hook_timeout_seconds),
        disks: disks.to_vec(),
        efi_loader: cfg.install.efi_bootloader_path.clone(),
        ..BootloaderOptions::default()
    };
    let (disk, message) = if let Some((disk, part, rec)) =
        record::find_done(&o.sysfs, &o.dev, disks, &cfg.install_id)
    {
        // this install finished on this disk before the server heard of it: nothing is
        // written again
        let message = format!(
            "{disk} already holds install {} (done {}, says {} on {}): nothing written again, \
             rebooting into the installed system",
            rec.install_id,
            ago(rec.finished_at),
            record::PATH,
            part.display()
        );
        events.send(step.ok(format!("{disk}: install {} already done", rec.install_id)));
        (PathBuf::from(disk), message)
    } else {
        let choice = choose::pick(disks, cfg.install.disk_group_id, &cfg.disk_hints)
            .map_err(|m| step.fail(m.to_string()))?;
        let disk = if cfg.install.storage.is_some() {
            // byolinux_64: the layout goes on the whole group (hints choose one disk)
            let group = choice
                .groups
                .iter()
                .find(|g| g.number == choice.group)
                .filter(|_| cfg.disk_hints.is_empty());
            let (members, line) = match group {
                Some(g) => (g.disks.clone(), format!("disk group {}", g.line())),
                None => (vec![choice.disk.clone()], choice.message.clone()),
            };
            events.send(step.ok(line));
            check_stop(events, &step)?;
            let done = byolinux::install(cfg, boot, &members, &o, events)?;
            mark_done(done.config_drive.as_deref(), &cfg.install_id);
            let names: Vec<String> = done.disks.iter().map(|d| d.display().to_string()).collect();
            PathBuf::from(names.join(", "))
        } else {
            events.send(step.ok(choice.message.clone()));
            check_stop(events, &step)?;
            let disk = PathBuf::from(&choice.disk.path);
            install_on(cfg, boot, &disk, &o, events)?;
            disk
        };
        nix::unistd::sync();
        let seconds = t0.elapsed().as_secs_f64();
        let message = format!(
            "installed on {} in {seconds:.1} s: rebooting into the installed system",
            disk.display()
        );
        (disk, message)
    };
    let seconds = t0.elapsed().as_secs_f64();
    say(&message);
    events.send(AgentEvent {
        logs: take_lines(),
        seconds: Some((seconds * 1000.0).round() / 1000.0),
        ..AgentEvent::new(Phase::Done, EventStatus::Done, message.clone())
    });
    Ok(Installed {
        disk: disk.display().to_string(),
        seconds,
        message,
    })
}

/// Steps 2 to 6 on `disk`: written, checked, fixed, made bootable. On a failure after the
/// engine wrote anything, the disk's first and last MiB are zeroed before the error returns.
pub fn install_on(
    cfg: &AgentConfig,
    boot: &Boot,
    disk: &Path,
    o: &BootloaderOptions,
    events: &mut dyn Events,
) -> Result<(), InstallError> {
    let step = Step::start(Phase::Download);
    check_stop(events, &step)?;
    match download::write(&cfg.install, disk, events) {
        Ok(msg) => events.send(step.ok(msg)),
        Err(e) => {
            // The engine zeroed the first MiB if it wrote anything; the image may have
            // reached the disk's end (a backup GPT): zero that too, unless the disk was never
            // touched (its old first MiB is still there).
            if blockdev::head_is_zero(disk) {
                let _ = blockdev::wipe_ends(disk);
            }
            return Err(match e {
                download::WriteError::Download(m) => step.fail(m),
                download::WriteError::Image(m) => {
                    events.send(step.ok("image written and verified, but refused by the checks"));
                    Step::start(Phase::Image).fail(m)
                }
            });
        }
    }
    let finished = check_stop(events, &step)
        .and_then(|()| prepare_disk(cfg, boot, disk, events))
        .and_then(|p| {
            check_stop(events, &step)?;
            make_bootable(&p, boot, disk, o, events)?;
            Ok(p)
        });
    let finished = finished.map(|p| mark_done(p.device(Role::ConfigDrive), &cfg.install_id));
    if let Err(e) = finished {
        say(format!(
            "install failed in {}: zeroing the first and last MiB of {} so that nothing boots \
             a half-installed disk",
            e.phase,
            disk.display()
        ));
        if let Err(w) = blockdev::wipe_ends(disk) {
            say(format!("could not wipe {}: {w}", disk.display()));
        }
        return Err(e);
    }
    Ok(())
}

/// Records the install as done on `config-2` before the server is told.
fn mark_done(dev: Option<&Path>, install_id: &str) {
    let Some(dev) = dev else { return };
    match record::mark_done(dev, install_id) {
        Ok(()) => say(format!(
            "install {install_id} recorded as done in {} on {}",
            record::PATH,
            dev.display()
        )),
        Err(e) => say(format!(
            "warning: could not record the install on config-2 ({e}): should the machine \
             reboot before the server has the done report, it would install again"
        )),
    }
}

/// What [`prepare_disk`] made: the image found, the new layout, the partitions' device nodes.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub image: image::ImageInfo,
    pub layout: Layout,
    /// Device node of each partition of the layout, in its order.
    pub devices: Vec<PathBuf>,
    /// The ESP's FAT volume id as fstab wants it (`ABCD-1234`), on UEFI.
    pub esp_uuid: Option<String>,
}

impl Prepared {
    /// The device node of the partition with `role`.
    pub fn device(&self, role: Role) -> Option<&Path> {
        self.layout
            .parts
            .iter()
            .zip(&self.devices)
            .find(|(p, _)| p.role == role)
            .map(|(_, d)| d.as_path())
    }
}

/// Steps 3 to 5 on a written disk (block device): the image checked, the table fixed, the
/// kernel told, the ESP formatted, the ConfigDrive written. Does not wipe on failure (see
/// [`install_on`]).
pub fn prepare_disk(
    cfg: &AgentConfig,
    boot: &Boot,
    disk: &Path,
    events: &mut dyn Events,
) -> Result<Prepared, InstallError> {
    let step = Step::start(Phase::Image);
    let (img, disk_bytes) = image::inspect_disk(disk).map_err(|m| step.fail(m))?;
    events.send(step.ok(img.summary()));

    let step = Step::start(Phase::Partition);
    let layout = layout::fix_disk(disk, &img, boot.firmware).map_err(|m| step.fail(m))?;
    for w in &layout.warnings {
        say(format!("warning: {w}"));
    }
    let devices = blockdev::expose(disk, &layout.kernel_parts()).map_err(|m| step.fail(m))?;
    let mut prepared = Prepared {
        image: img,
        layout,
        devices,
        esp_uuid: None,
    };
    if let Some(esp) = prepared.device(Role::Esp).map(Path::to_path_buf) {
        let id = ids::fat_volume_id();
        fat::format(
            &esp,
            fat::FatKind::Fat32,
            "EFI",
            id,
            prepared.layout.sector_size,
        )
        .map_err(|m| step.fail(m))?;
        prepared.esp_uuid = Some(fat::volume_uuid(id));
    }
    let msg = prepared
        .layout
        .summary(&prepared.devices, human(disk_bytes));
    events.send(step.ok(msg));

    let step = Step::start(Phase::Configdrive);
    let dev = prepared
        .device(Role::ConfigDrive)
        .ok_or_else(|| step.fail("internal: no config-2 partition in the layout"))?
        .to_path_buf();
    let files = configdrive::files(cfg, boot.net.as_ref());
    configdrive::write(&dev, &files, prepared.layout.sector_size).map_err(|m| step.fail(m))?;
    events.send(step.ok(configdrive::summary(&dev, &files)));
    Ok(prepared)
}

/// Step 6: mounts, the hook in a chroot, the UEFI fallback, unmounts, sync.
pub fn make_bootable(
    p: &Prepared,
    boot: &Boot,
    disk: &Path,
    o: &BootloaderOptions,
    events: &mut dyn Events,
) -> Result<(), InstallError> {
    let step = Step::start(Phase::Bootloader);
    let root_dev = p
        .device(Role::Root)
        .ok_or_else(|| step.fail("internal: no root partition in the layout"))?;
    let mut m = mounts::Mounts::new();
    let fs = m
        .mount_root(root_dev, &o.root_mount, p.image.fs)
        .map_err(|e| step.fail(e))?;
    say(format!(
        "mounted {} ({fs}) on {}",
        root_dev.display(),
        o.root_mount.display()
    ));
    let esp_dev = p.device(Role::Esp).map(Path::to_path_buf);
    if boot.firmware == Firmware::Uefi {
        let (Some(esp), Some(uuid)) = (&esp_dev, &p.esp_uuid) else {
            return Err(step.fail("internal: UEFI install without an ESP"));
        };
        let line = mounts::add_esp_to_fstab(&o.root_mount, uuid).map_err(|e| step.fail(e))?;
        say(format!("/etc/fstab: {line}"));
        m.mount_esp(esp, &o.root_mount).map_err(|e| step.fail(e))?;
    }
    let msg = in_chroot(
        &mut m,
        boot,
        disk,
        esp_dev.as_deref(),
        o,
        events,
        &step,
        &|| efiboot_location(disk, p),
    )?;
    let errors = m.unmount_all();
    if !errors.is_empty() {
        return Err(step.fail(format!("cannot unmount: {}", errors.join("; "))));
    }
    nix::unistd::sync();
    events.send(step.ok(msg));
    Ok(())
}

/// The image's system mounted under `o.root_mount` (its ESP at `boot/efi` on UEFI) made
/// bootable: `/dev` links, system mounts, the hook in a chroot, then on UEFI the
/// removable-path fallback and a boot entry for `esp` (at `esp_location`). Ok: the step's
/// message. The caller unmounts.
#[allow(clippy::too_many_arguments)]
pub fn in_chroot(
    m: &mut mounts::Mounts,
    boot: &Boot,
    disk: &Path,
    esp_dev: Option<&Path>,
    o: &BootloaderOptions,
    events: &mut dyn Events,
    step: &Step,
    esp_location: &dyn Fn() -> Result<efiboot::EspLocation, String>,
) -> Result<String, InstallError> {
    if !o.disks.is_empty() {
        let (made, errors) = devlinks::make(&o.dev, &o.sysfs, &o.disks);
        for e in errors {
            say(format!("warning: {e}"));
        }
        if !made.is_empty() {
            say(format!(
                "/dev links as udev makes them: {}",
                made.join(", ")
            ));
        }
    }
    m.bind_system(&o.root_mount, boot.firmware == Firmware::Uefi)
        .map_err(|e| step.fail(e))?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    m.mask_cmdline(
        &o.root_mount,
        &o.hook_cmdline_file,
        &mounts::hook_cmdline(&cmdline),
    )
    .map_err(|e| step.fail(e))?;
    for w in m.warnings.drain(..) {
        say(format!("warning: {w}"));
    }
    let resolv =
        mounts::ResolvConf::install(&o.root_mount, &o.resolv_conf).map_err(|e| step.fail(e))?;
    // BootOrder before the hook: a hook that makes its own entry puts it first
    let vars = o.efivars.clone().unwrap_or_else(efiboot::Vars::system);
    let order_before = (boot.firmware == Firmware::Uefi && vars.available())
        .then(|| vars.boot_order())
        .transpose()
        .unwrap_or_else(|e| {
            say(format!("warning: {e}"));
            None
        });

    let mut env = vec![
        (
            "BOOT_MODE".to_string(),
            boot.firmware.boot_mode().to_string(),
        ),
        ("TARGET_DISK".to_string(), disk.display().to_string()),
    ];
    if let Some(esp) = esp_dev {
        env.push(("ESP_DEVICE".to_string(), esp.display().to_string()));
    }
    let spec = hook::HookSpec {
        root: o.root_mount.clone(),
        script: o.hook.clone(),
        env,
        timeout: o.hook_timeout,
        batch: Duration::from_secs(1),
        heartbeat: hook::HEARTBEAT,
        stop: events.stop(),
    };
    say(format!(
        "running {} in a chroot of the image (time limit {}; BOOT_MODE={}, TARGET_DISK={}{})",
        o.hook,
        byol_spec::format_duration(o.hook_timeout.as_secs()),
        boot.firmware.boot_mode(),
        disk.display(),
        esp_dev
            .map(|e| format!(", ESP_DEVICE={}", e.display()))
            .unwrap_or_default()
    ));
    let done = hook::run(&spec, &mut |lines| {
        for l in &lines {
            say(format!("hook: {l}"));
        }
        let n = lines.len();
        events.send(step.running(
            format!(
                "{} output: {n} line{}",
                o.hook,
                if n == 1 { "" } else { "s" }
            ),
            take_lines(),
        ));
    })
    .map_err(|e| step.fail(e.to_string()))?;
    say(format!(
        "{} finished in {:.1} s ({} lines of output)",
        o.hook, done.seconds, done.lines
    ));
    if let Err(e) = resolv.restore() {
        say(format!("warning: {e}"));
    }
    let mut msg = format!(
        "{} ran in {:.1} s ({} firmware)",
        o.hook,
        done.seconds,
        boot.firmware.boot_mode()
    );
    if boot.firmware == Firmware::Uefi {
        // resolved inside the image: its /boot may be a symlink
        let esp_dir = inroot::InRoot::open(&o.root_mount)
            .and_then(|r| r.dir("boot/efi"))
            .map_err(|e| step.fail(e))?;
        // efiBootloaderPath: the loader both point at, and an error when the hook left none
        let wanted = match &o.efi_loader {
            Some(w) => Some(uefi::resolve_loader(&esp_dir, w).map_err(|e| step.fail(e))?),
            None => None,
        };
        let fallback = uefi::ensure_removable_path_for(&esp_dir, wanted.as_deref())
            .map_err(|e| step.fail(e))?;
        msg.push_str(&format!("; {fallback}"));
        let entry = match &order_before {
            None => Err(format!(
                "no EFI variables at {}: the firmware finds the loader by the removable path alone",
                vars.dir.display()
            )),
            Some(before) => esp_location().and_then(|loc| {
                efiboot::ensure_entry_for(&vars, &esp_dir, &loc, before, wanted.as_deref())
            }),
        };
        match entry {
            Ok(m) => {
                say(&m);
                msg.push_str(&format!("; {m}"));
            }
            Err(e) => {
                say(format!("warning: {e}"));
                msg.push_str(&format!("; no boot entry: {e}"));
            }
        }
    }
    Ok(msg)
}

/// Where the ESP of `p` is on `disk`, for the boot entry's HD() node: its number, start and
/// size, and the partition's GUID (GPT) or the disk signature (MBR), read back from the disk.
pub fn efiboot_location(disk: &Path, p: &Prepared) -> Result<efiboot::EspLocation, String> {
    let part = p
        .layout
        .parts
        .iter()
        .find(|x| x.role == Role::Esp)
        .ok_or("internal: no ESP in the layout")?;
    esp_location(
        disk,
        p.layout.table,
        p.layout.sector_size,
        (part.number, part.start, part.sectors),
    )
}

/// [`efiboot_location`] for partition `(number, start, sectors)` (in logical sectors).
pub fn esp_location(
    disk: &Path,
    table: image::TableKind,
    sector_size: u32,
    (number, start, sectors): (u32, u64, u64),
) -> Result<efiboot::EspLocation, String> {
    let mut f =
        std::fs::File::open(disk).map_err(|e| format!("cannot open {}: {e}", disk.display()))?;
    let mut signature = [0u8; 16];
    match table {
        image::TableKind::Gpt => {
            let gpt = gptman::GPT::read_from(&mut f, u64::from(sector_size))
                .map_err(|e| format!("cannot read the GPT of {}: {e}", disk.display()))?;
            signature = gpt[number].unique_partition_guid;
        }
        image::TableKind::Mbr => {
            use std::io::{Read as _, Seek as _, SeekFrom};
            f.seek(SeekFrom::Start(440))
                .and_then(|_| f.read_exact(&mut signature[..4]))
                .map_err(|e| format!("cannot read the MBR of {}: {e}", disk.display()))?;
            if signature[..4] == [0; 4] {
                return Err("the MBR's disk signature is 0: firmware cannot tell the disk".into());
            }
        }
    }
    Ok(efiboot::EspLocation {
        number,
        start,
        sectors,
        table,
        signature,
    })
}

/// `3m20s ago` for a time in seconds since 1970.
fn ago(unix: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "{} ago",
        byol_spec::format_duration(now.saturating_sub(unix))
    )
}

pub use byol_spec::text::human;
