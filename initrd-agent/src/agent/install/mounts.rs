//! mounts: the image's system, ready for its hook: the root filesystem mounted (its type as
//! found, else ext4, xfs, btrfs tried in turn), the ESP at `boot/efi` on UEFI, `/dev` (with
//! its pts and shm), `/proc`, `/sys`, `/run` bound (and efivarfs on UEFI), a working `etc/resolv.conf` (the image's own
//! put back after), and the ESP in the image's `etc/fstab` by UUID. [`Mounts`] unmounts
//! everything in reverse order when it is dropped, whatever happened.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::image::FsKind;
use super::inroot::InRoot;

/// Mounts made, unmounted in reverse order by [`Mounts::unmount_all`] or on drop.
#[derive(Debug, Default)]
pub struct Mounts {
    /// Mount points, and whether to detach (a recursive bind, with mounts under it).
    stack: Vec<(PathBuf, bool)>,
    /// What did not work but does not stop the install (efivarfs).
    pub warnings: Vec<String>,
}

impl Mounts {
    pub fn new() -> Mounts {
        Mounts::default()
    }

    fn mount(
        &mut self,
        src: &Path,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
    ) -> Result<(), Errno> {
        mount(Some(src), target, fstype, flags, None::<&str>)?;
        self.stack
            .push((target.to_path_buf(), flags.contains(MsFlags::MS_REC)));
        Ok(())
    }

    /// Mounts the root filesystem `dev` on `target` (made if missing): as `hint`, else each of
    /// ext4, xfs, btrfs. Ok: the type that mounted.
    pub fn mount_root(
        &mut self,
        dev: &Path,
        target: &Path,
        hint: FsKind,
    ) -> Result<&'static str, String> {
        fs::create_dir_all(target).map_err(|e| format!("cannot make {}: {e}", target.display()))?;
        let mut tried = Vec::new();
        for fs in [hint, FsKind::Ext4, FsKind::Xfs, FsKind::Btrfs] {
            let t = fs.as_str();
            if tried.iter().any(|(x, _)| *x == t) {
                continue;
            }
            match self.mount(dev, target, Some(t), MsFlags::empty()) {
                Ok(()) => return Ok(t),
                Err(e) => tried.push((t, e)),
            }
        }
        let why: Vec<String> = tried.iter().map(|(t, e)| format!("{t}: {e}")).collect();
        Err(format!(
            "cannot mount the image's root filesystem {} on {} ({}): is the filesystem's \
             module in the initramfs?",
            dev.display(),
            target.display(),
            why.join(", ")
        ))
    }

    /// Mounts the filesystem `fs` of `dev` on the directory `target`.
    pub fn mount_fs(&mut self, dev: &Path, target: &Path, fs: FsKind) -> Result<(), String> {
        self.mount(dev, target, Some(fs.as_str()), MsFlags::empty())
            .map_err(|e| {
                format!(
                    "cannot mount {} ({}) on {}: {e}",
                    dev.display(),
                    fs.as_str(),
                    target.display()
                )
            })
    }

    /// Mounts the filesystem `fs` of `dev` on `target`, read-only.
    pub fn mount_ro(&mut self, dev: &Path, target: &Path, fs: FsKind) -> Result<(), String> {
        self.mount(dev, target, Some(fs.as_str()), MsFlags::MS_RDONLY)
            .map_err(|e| {
                format!(
                    "cannot mount {} ({}) read-only on {}: {e}",
                    dev.display(),
                    fs.as_str(),
                    target.display()
                )
            })
    }

    /// Mounts the ESP on `<root>/boot/efi` (made if missing; resolved inside the image).
    pub fn mount_esp(&mut self, esp: &Path, root: &Path) -> Result<(), String> {
        let target = InRoot::open(root)?.dir("boot/efi")?;
        self.mount(esp, &target, Some("vfat"), MsFlags::empty())
            .map_err(|e| {
                let hint = if e == Errno::ENODEV {
                    " (the kernel has no vfat: is its module in the initramfs?)"
                } else {
                    ""
                };
                format!(
                    "cannot mount the ESP {} on {}: {e}{hint}",
                    esp.display(),
                    target.display()
                )
            })
    }

    /// Binds /dev (with what is mounted under it: pts, shm), /proc, /sys, /run into `root`;
    /// on UEFI mounts efivarfs on `sys/firmware/efi/efivars` (a failure there is a warning:
    /// the hook may not need it). The recursive bind is made a slave, so that unmounting it
    /// never unmounts the host's own `/dev/pts` through shared propagation.
    pub fn bind_system(&mut self, root: &Path, uefi: bool) -> Result<(), String> {
        let image = InRoot::open(root)?;
        for d in ["dev", "proc", "sys", "run"] {
            let target = image.dir(d)?;
            let src = Path::new("/").join(d);
            let flags = if d == "dev" {
                MsFlags::MS_BIND | MsFlags::MS_REC
            } else {
                MsFlags::MS_BIND
            };
            self.mount(&src, &target, None, flags).map_err(|e| {
                format!("cannot bind {} on {}: {e}", src.display(), target.display())
            })?;
            // a slave: nothing mounted or unmounted under it reaches the host's own tree
            mount(
                None::<&str>,
                &target,
                None::<&str>,
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| format!("cannot make {} a slave mount: {e}", target.display()))?;
        }
        if uefi {
            let target = image
                .existing("sys/firmware/efi/efivars")?
                .unwrap_or_else(|| root.join("sys/firmware/efi/efivars"));
            if target.is_dir() {
                if let Err(e) = self.mount(
                    Path::new("efivarfs"),
                    &target,
                    Some("efivarfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                ) {
                    self.warnings.push(format!(
                        "cannot mount efivarfs on {}: {e} (the hook cannot see EFI variables)",
                        target.display()
                    ));
                }
            } else {
                self.warnings.push(format!(
                    "{} does not exist: the kernel shows no EFI variables",
                    target.display()
                ));
            }
        }
        Ok(())
    }

    /// Mounts `text` over `<root>/proc/cmdline` (bound from /proc by [`Mounts::bind_system`]),
    /// from a file written at `scratch`: the hook reads the installer's kernel command line
    /// (OVHcloud's hooks copy its `console=` into GRUB) without byol's parameters, whose
    /// agent token opens the install's secrets.
    pub fn mask_cmdline(&mut self, root: &Path, scratch: &Path, text: &str) -> Result<(), String> {
        fs::write(scratch, format!("{text}\n"))
            .map_err(|e| format!("cannot write {}: {e}", scratch.display()))?;
        let target = InRoot::open(root)?
            .existing("proc/cmdline")?
            .ok_or("the chroot has no /proc/cmdline: /proc is not bound")?;
        self.mount(scratch, &target, None, MsFlags::MS_BIND)
            .map_err(|e| {
                format!(
                    "cannot bind {} on {}: {e}",
                    scratch.display(),
                    target.display()
                )
            })?;
        // read-only, as /proc/cmdline is
        let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(None::<&str>, &target, None::<&str>, ro, None::<&str>)
            .map_err(|e| format!("cannot make {} read-only: {e}", target.display()))
    }

    /// Unmounts everything, last first (lazily when busy, and always for a recursive bind,
    /// which has mounts under it). Returns what failed.
    pub fn unmount_all(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        while let Some((t, recursive)) = self.stack.pop() {
            if recursive {
                if let Err(e) = umount2(&t, MntFlags::MNT_DETACH) {
                    errors.push(format!("{}: {e}", t.display()));
                }
                continue;
            }
            if let Err(e) = umount2(&t, MntFlags::empty()) {
                match umount2(&t, MntFlags::MNT_DETACH) {
                    Ok(()) if e == Errno::EBUSY => {}
                    Ok(()) => errors.push(format!("{}: {e} (detached)", t.display())),
                    Err(e2) => errors.push(format!("{}: {e}, then {e2}", t.display())),
                }
            }
        }
        nix::unistd::sync();
        errors
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        let _ = self.unmount_all();
    }
}

/// The image's `etc/resolv.conf` as it was, put back by [`ResolvConf::restore`] (or on drop).
#[derive(Debug)]
pub struct ResolvConf {
    path: PathBuf,
    saved: Saved,
    done: bool,
}

#[derive(Debug)]
enum Saved {
    Absent,
    /// A symlink (e.g. to systemd-resolved's stub file), with its target.
    Link(PathBuf),
    /// A file, moved aside to this path.
    File(PathBuf),
}

impl ResolvConf {
    /// Saves the image's `<root>/etc/resolv.conf` and writes a copy of `ours` there (the
    /// agent's, with the DNS servers it booted with).
    pub fn install(root: &Path, ours: &Path) -> Result<ResolvConf, String> {
        let etc = InRoot::open(root)?.dir("etc")?;
        let path = etc.join("resolv.conf");
        let content = fs::read(ours).unwrap_or_default();
        let saved = match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Saved::Absent,
            Err(e) => return Err(format!("cannot look at {}: {e}", path.display())),
            Ok(m) if m.file_type().is_symlink() => {
                let target = fs::read_link(&path)
                    .map_err(|e| format!("cannot read the link {}: {e}", path.display()))?;
                fs::remove_file(&path)
                    .map_err(|e| format!("cannot replace {}: {e}", path.display()))?;
                Saved::Link(target)
            }
            Ok(_) => {
                let aside = etc.join("resolv.conf.byol-saved");
                fs::rename(&path, &aside)
                    .map_err(|e| format!("cannot move {} aside: {e}", path.display()))?;
                Saved::File(aside)
            }
        };
        let r = ResolvConf {
            path,
            saved,
            done: false,
        };
        write_new(&r.path, &content)?;
        Ok(r)
    }

    /// Puts the image's own resolv.conf back.
    pub fn restore(mut self) -> Result<(), String> {
        self.put_back()
    }

    fn put_back(&mut self) -> Result<(), String> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        let p = &self.path;
        let _ = fs::remove_file(p);
        match &self.saved {
            Saved::Absent => Ok(()),
            Saved::Link(t) => std::os::unix::fs::symlink(t, p)
                .map_err(|e| format!("cannot restore the link {}: {e}", p.display())),
            Saved::File(aside) => {
                fs::rename(aside, p).map_err(|e| format!("cannot put {} back: {e}", p.display()))
            }
        }
    }
}

impl Drop for ResolvConf {
    fn drop(&mut self) {
        let _ = self.put_back();
    }
}

/// Creates `path` with `data`, never through a symlink (the name was just cleared).
fn write_new(path: &Path, data: &[u8]) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .and_then(|mut f| f.write_all(data))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The kernel command line as the hook sees it: every parameter but byol's own (`byol.…`).
pub fn hook_cmdline(cmdline: &str) -> String {
    cmdline
        .split_whitespace()
        .filter(|p| !p.starts_with("byol.") && !p.starts_with("byol="))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The fstab line of the ESP.
pub fn esp_fstab_line(uuid: &str) -> String {
    format!("UUID={uuid} /boot/efi vfat umask=0077 0 1")
}

/// Adds the ESP to `<root>/etc/fstab` by UUID; an existing `/boot/efi` line is commented out.
/// Ok: the line added.
pub fn add_esp_to_fstab(root: &Path, uuid: &str) -> Result<String, String> {
    let image = InRoot::open(root)?;
    let old = image.read_to_string("etc/fstab")?.unwrap_or_default();
    let line = esp_fstab_line(uuid);
    let mut out = String::new();
    for l in old.lines() {
        let fields: Vec<&str> = l.split_whitespace().collect();
        if !l.trim_start().starts_with('#') && fields.get(1) == Some(&"/boot/efi") {
            out.push_str(&format!("# replaced by byol: {l}\n"));
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    out.push_str(&format!("{line}\n"));
    image.write("etc/fstab", out.as_bytes())?;
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hook_never_sees_byols_parameters() {
        let c = "BOOT_IMAGE=x byol.server=http://10.0.0.1:8080 byol.install=i byol.token=0123abcd \
                 byol.mac=52:54:00:00:00:01 console=tty0 console=ttyS1,115200n8 quiet initrd=initramfs";
        assert_eq!(
            hook_cmdline(c),
            "BOOT_IMAGE=x console=tty0 console=ttyS1,115200n8 quiet initrd=initramfs"
        );
        assert_eq!(hook_cmdline(""), "");
    }
}
