//! inroot: paths inside the image's root filesystem, resolved as the hook's chroot would see
//! them. The image is untrusted: its `/boot`, `/etc`, `/run` or `/proc` may be a symlink to
//! `/` or `../../..`, and a mount or a write through such a path from outside the chroot would
//! land on the installer's own tree. Every path the agent mounts on or writes to in the image
//! is resolved here with `openat2(RESOLVE_IN_ROOT)` (symlinks, absolute or relative, stay
//! inside the root; no magic links), missing directories made one level at a time, and the
//! result given as the real path the kernel resolved (from `/proc/self/fd`), which holds no
//! symlink left to follow. Nothing else runs in the image while the agent uses these paths
//! (the hook, and everything it started, is gone by then: its PID namespace).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// The image's root, opened.
#[derive(Debug)]
pub struct InRoot {
    root: PathBuf,
    fd: OwnedFd,
}

fn errno_text(e: i32) -> String {
    std::io::Error::from_raw_os_error(e).to_string()
}

/// `openat2(dirfd, path, O_PATH | O_CLOEXEC | extra, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`.
fn open_in(dirfd: &OwnedFd, path: &Path, extra: i32) -> Result<OwnedFd, i32> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| libc::EINVAL)?;
    // SAFETY: open_how is plain data; zeroed is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC | extra) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid fd, NUL-terminated path, open_how of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    // SAFETY: a new fd the kernel gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// The real path of an open fd.
fn real_path(fd: &OwnedFd) -> Result<PathBuf, String> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|e| format!("cannot see where a path in the image leads: {e}"))
}

/// `rel` as components under the root: `/etc/fstab` and `etc/fstab` alike; `..` refused.
fn parts(rel: &str) -> Result<Vec<&std::ffi::OsStr>, String> {
    let mut out = Vec::new();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            _ => return Err(format!("`{rel}`: no `..` in paths the agent writes")),
        }
    }
    Ok(out)
}

impl InRoot {
    /// Opens the mounted image root at `root`.
    pub fn open(root: &Path) -> Result<InRoot, String> {
        let c = CString::new(root.as_os_str().as_bytes())
            .map_err(|_| format!("{}: a NUL byte in the path", root.display()))?;
        // SAFETY: NUL-terminated path.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(format!(
                "cannot open {}: {}",
                root.display(),
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: a new fd.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let root = real_path(&fd)?;
        Ok(InRoot { root, fd })
    }

    /// The root's own real path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Checks that a resolved path lies under the root (openat2 promises it; this says so
    /// plainly should anything ever differ).
    fn under_root(&self, p: PathBuf, rel: &str) -> Result<PathBuf, String> {
        if p.starts_with(&self.root) {
            Ok(p)
        } else {
            Err(format!(
                "`{rel}` in the image leads to {}, outside the image: refused",
                p.display()
            ))
        }
    }

    /// The directory `rel` in the image (made, with its parents, if missing), as a real path.
    pub fn dir(&self, rel: &str) -> Result<PathBuf, String> {
        let mut cur = self.fd.try_clone().map_err(|e| e.to_string())?;
        let mut so_far = PathBuf::new();
        for name in parts(rel)? {
            so_far.push(name);
            let next = match open_in(&self.fd, &so_far, libc::O_DIRECTORY) {
                Ok(fd) => fd,
                Err(libc::ENOENT) => {
                    let c = CString::new(name.as_bytes()).map_err(|_| "a NUL byte".to_string())?;
                    // SAFETY: a valid directory fd and a NUL-terminated name without '/'.
                    let r = unsafe { libc::mkdirat(cur.as_raw_fd(), c.as_ptr(), 0o755) };
                    if r < 0 {
                        let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                        if e != libc::EEXIST {
                            return Err(format!(
                                "cannot make {} in the image: {}",
                                so_far.display(),
                                errno_text(e)
                            ));
                        }
                    }
                    open_in(&self.fd, &so_far, libc::O_DIRECTORY).map_err(|e| {
                        format!(
                            "cannot open {} in the image: {}",
                            so_far.display(),
                            errno_text(e)
                        )
                    })?
                }
                Err(e) => {
                    return Err(format!(
                        "{} in the image is not a directory the agent can use: {}",
                        so_far.display(),
                        errno_text(e)
                    ));
                }
            };
            cur = next;
        }
        let p = real_path(&cur)?;
        self.under_root(p, rel)
    }

    /// Where `rel` leads in the image when it exists (its symlinks followed inside the root),
    /// as a real path; None when it does not exist.
    pub fn existing(&self, rel: &str) -> Result<Option<PathBuf>, String> {
        let rel_path: PathBuf = parts(rel)?.iter().collect();
        match open_in(&self.fd, &rel_path, 0) {
            Ok(fd) => Ok(Some(self.under_root(real_path(&fd)?, rel)?)),
            Err(libc::ENOENT) => Ok(None),
            Err(e) => Err(format!(
                "cannot look at {rel} in the image: {}",
                errno_text(e)
            )),
        }
    }

    /// The path to use for the file `rel` in the image: its directory made and resolved in
    /// the root, then the file's name (the name itself is not followed: callers that replace
    /// a symlink there look at it first).
    pub fn file(&self, rel: &str) -> Result<PathBuf, String> {
        let p = parts(rel)?;
        let (name, dirs) = p
            .split_last()
            .ok_or_else(|| format!("`{rel}` names no file"))?;
        let dir: PathBuf = dirs.iter().collect();
        let dir = self.dir(&dir.to_string_lossy())?;
        Ok(dir.join(name))
    }

    /// Writes `data` to `rel` (its directory made as needed; a symlink at `rel` is followed
    /// inside the root, as the installed system would read it).
    pub fn write(&self, rel: &str, data: &[u8]) -> Result<PathBuf, String> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let target = match self.existing(rel)? {
            Some(p) => p,
            None => self.file(rel)?,
        };
        // a name that is still a symlink here points at nothing in the image: never follow it
        // (from outside the chroot it would lead to the installer's own files)
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&target)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    format!("{rel} in the image is a symlink to a file that does not exist there: refused")
                } else {
                    format!("cannot write {rel} ({}): {e}", target.display())
                }
            })?;
        f.write_all(data)
            .map_err(|e| format!("cannot write {rel} ({}): {e}", target.display()))?;
        Ok(target)
    }

    /// The text of `rel`, or None when it does not exist.
    pub fn read_to_string(&self, rel: &str) -> Result<Option<String>, String> {
        match self.existing(rel)? {
            None => Ok(None),
            Some(p) => std::fs::read_to_string(&p)
                .map(Some)
                .map_err(|e| format!("cannot read {rel} ({}): {e}", p.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_in_the_image_never_lead_out() {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path().join("host");
        let root = tmp.path().join("root");
        std::fs::create_dir_all(&host).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        // the image's boot points at /, data at a host directory, run climbs out relatively
        std::os::unix::fs::symlink("/", root.join("boot")).unwrap();
        std::os::unix::fs::symlink(&host, root.join("data")).unwrap();
        std::os::unix::fs::symlink("../../../..", root.join("run")).unwrap();
        std::os::unix::fs::symlink("/etc/real-fstab", root.join("etc/fstab")).unwrap();
        let r = InRoot::open(&root).unwrap();
        let rr = r.root().to_path_buf();
        assert_eq!(r.dir("boot/efi").unwrap(), rr.join("efi"));
        assert_eq!(r.dir("run").unwrap(), rr);
        assert_eq!(r.dir("/run/x").unwrap(), rr.join("x"));
        // a link to a host path is that path inside the image, which does not exist
        assert!(r.dir("data/x").is_err());
        assert!(!host.join("x").exists(), "made on the host");
        assert_eq!(r.existing("data").unwrap(), None);
        // a link to a missing file is refused; to an existing one, followed inside the image
        let host_file = tmp.path().join("host-fstab");
        std::os::unix::fs::symlink(&host_file, root.join("etc/fstab2")).unwrap();
        assert_eq!(
            r.write("etc/fstab2", b"x\n").unwrap_err(),
            "etc/fstab2 in the image is a symlink to a file that does not exist there: refused"
        );
        assert!(!host_file.exists(), "written on the host");
        std::fs::write(rr.join("etc/real-fstab"), "old\n").unwrap();
        r.write("etc/fstab", b"LABEL=x / ext4 defaults 0 1\n")
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(rr.join("etc/real-fstab")).unwrap(),
            "LABEL=x / ext4 defaults 0 1\n"
        );
        assert!(r.dir("../x").is_err());
        assert_eq!(r.read_to_string("etc/nothing").unwrap(), None);
    }
}
