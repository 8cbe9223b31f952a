//! copytree: the image's files copied into the layout's filesystems (the scratch strategy of
//! storage layouts: the image's partition mounted read-only, its tree copied onto the new
//! filesystems mounted under the target root). Everything a system needs comes along: owners,
//! modes (setuid and sticky included), hard links (as links, copied again when their names land
//! on two filesystems), extended attributes (`security.capability`, ACLs, SELinux labels),
//! sparse files (holes kept, by `SEEK_DATA`/`SEEK_HOLE`), symbolic links, device nodes, fifos
//! and sockets, and access and modification times to the nanosecond.
//!
//! The source is the image, so nothing in it is trusted: symbolic links are never followed
//! (every call on the source is `l…`/`O_NOFOLLOW`), and on the destination only directories
//! the copy made itself (or the mount points and `lost+found` that were there) are entered.
//! Order per entry: owner, then mode (a chown clears setuid bits), then extended attributes
//! (a chown clears `security.capability` too), then times (directories after their children).

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// What a copy did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hard_links: u64,
    pub specials: u64,
    /// Bytes of data written (holes not counted).
    pub bytes: u64,
}

/// Copies the tree at `src` (its root's attributes onto `dst`'s) into the directory `dst`.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<Copied, String> {
    let mut c = Copier {
        links: HashMap::new(),
        done: Copied::default(),
        buf: vec![0u8; 1 << 20],
    };
    c.dir(src, dst)?;
    Ok(c.done)
}

/// How deep a tree may go (a real system: about 20; a hostile image must not exhaust the
/// agent's stack).
pub const MAX_DEPTH: usize = 512;

struct Copier {
    /// (dev, ino) of a source file with several links → where its first name was copied.
    links: HashMap<(u64, u64), PathBuf>,
    done: Copied,
    buf: Vec<u8>,
}

fn err(what: &str, p: &Path, e: io::Error) -> String {
    format!(
        "cannot {what} {}: {e}",
        byol_spec::escape_control(&p.display().to_string())
    )
}

fn cpath(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        format!(
            "{} has a NUL byte in its name",
            byol_spec::escape_control(&p.display().to_string())
        )
    })
}

/// Ok when a libc call returned 0 or more, else the error with what was being done.
fn check(r: libc::c_int, what: &str, p: &Path) -> Result<(), String> {
    if r < 0 {
        return Err(err(what, p, io::Error::last_os_error()));
    }
    Ok(())
}

impl Copier {
    /// The walk, with its own stack (not the thread's: a hostile image may nest deep): a
    /// directory's entries are copied when it is entered, its attributes set when it is left.
    fn dir(&mut self, src: &Path, dst: &Path) -> Result<(), String> {
        enum Work {
            Enter(PathBuf, PathBuf, usize),
            Leave(PathBuf, PathBuf, fs::Metadata),
        }
        let root_dev = fs::symlink_metadata(src)
            .map_err(|e| err("read", src, e))?
            .dev();
        let mut work = vec![Work::Enter(src.to_path_buf(), dst.to_path_buf(), 0)];
        while let Some(w) = work.pop() {
            let (src, dst, depth) = match w {
                Work::Leave(s, d, m) => {
                    self.attrs(&s, &d, &m, false)?;
                    continue;
                }
                Work::Enter(s, d, depth) => (s, d, depth),
            };
            if depth > MAX_DEPTH {
                return Err(format!(
                    "the image's tree is deeper than {MAX_DEPTH} directories at {}: refused",
                    byol_spec::escape_control(&src.display().to_string())
                ));
            }
            let meta = fs::symlink_metadata(&src).map_err(|e| err("read", &src, e))?;
            match fs::create_dir(&dst) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    // a mount point, lost+found: a real directory, never a link
                    let m = fs::symlink_metadata(&dst).map_err(|e| err("read", &dst, e))?;
                    if !m.file_type().is_dir() {
                        return Err(format!(
                            "{} exists and is not a directory: the copy does not write through it",
                            dst.display()
                        ));
                    }
                }
                Err(e) => return Err(err("make the directory", &dst, e)),
            }
            self.done.dirs += 1;
            work.push(Work::Leave(src.clone(), dst.clone(), meta));
            let mut entries: Vec<_> = fs::read_dir(&src)
                .map_err(|e| err("list", &src, e))?
                .collect::<Result<_, _>>()
                .map_err(|e| err("list", &src, e))?;
            entries.sort_by_key(|e| e.file_name());
            let mut subdirs = Vec::new();
            for e in entries {
                let name = e.file_name();
                let (s, d) = (src.join(&name), dst.join(&name));
                let m = fs::symlink_metadata(&s).map_err(|e| err("read", &s, e))?;
                let ft = m.file_type();
                if ft.is_dir() {
                    // a directory that is a mount point on the host side is not crossed: the
                    // image is one filesystem
                    if m.dev() == root_dev {
                        subdirs.push(Work::Enter(s, d, depth + 1));
                    }
                } else if ft.is_file() {
                    self.file(&s, &d, &m)?;
                } else if ft.is_symlink() {
                    let target = fs::read_link(&s).map_err(|e| err("read the link", &s, e))?;
                    std::os::unix::fs::symlink(&target, &d)
                        .map_err(|e| err("make the link", &d, e))?;
                    self.done.symlinks += 1;
                    self.attrs(&s, &d, &m, true)?;
                } else {
                    self.special(&s, &d, &m, ft)?;
                }
            }
            // in name order
            work.extend(subdirs.into_iter().rev());
        }
        Ok(())
    }

    fn file(&mut self, s: &Path, d: &Path, m: &fs::Metadata) -> Result<(), String> {
        if m.nlink() > 1 {
            let key = (m.dev(), m.ino());
            if let Some(first) = self.links.get(&key) {
                match fs::hard_link(first, d) {
                    Ok(()) => {
                        self.done.hard_links += 1;
                        return Ok(());
                    }
                    // the two names are on two filesystems of the layout: a second copy
                    Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {}
                    Err(e) => return Err(err("link", d, e)),
                }
            } else {
                self.links.insert(key, d.to_path_buf());
            }
        }
        let from = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(s)
            .map_err(|e| err("open", s, e))?;
        let to = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(d)
            .map_err(|e| err("create", d, e))?;
        self.done.bytes += self.data(&from, &to, m.len(), s, d)?;
        to.set_len(m.len())
            .map_err(|e| err("set the length of", d, e))?;
        self.done.files += 1;
        drop(to);
        self.attrs(s, d, m, false)
    }

    /// The data regions of `from` written to `to` (holes stay holes). Returns the bytes.
    fn data(
        &mut self,
        from: &File,
        to: &File,
        len: u64,
        s: &Path,
        d: &Path,
    ) -> Result<u64, String> {
        use std::os::fd::AsRawFd;
        let mut written = 0;
        let mut at = 0u64;
        while at < len {
            // SAFETY: lseek on an fd open for the whole call; no memory is touched.
            let data = unsafe { libc::lseek(from.as_raw_fd(), at as libc::off_t, libc::SEEK_DATA) };
            if data < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENXIO) {
                    break; // only a hole is left
                }
                return Err(err("read", s, e));
            }
            let data = data as u64;
            // SAFETY: as above.
            let hole =
                unsafe { libc::lseek(from.as_raw_fd(), data as libc::off_t, libc::SEEK_HOLE) };
            let hole = if hole < 0 {
                len
            } else {
                (hole as u64).min(len)
            };
            let mut pos = data;
            while pos < hole {
                let want = ((hole - pos) as usize).min(self.buf.len());
                let n = from
                    .read_at(&mut self.buf[..want], pos)
                    .map_err(|e| err("read", s, e))?;
                if n == 0 {
                    break; // the file shrank while copied
                }
                to.write_all_at(&self.buf[..n], pos)
                    .map_err(|e| err("write", d, e))?;
                pos += n as u64;
                written += n as u64;
            }
            at = hole.max(pos);
        }
        Ok(written)
    }

    fn special(
        &mut self,
        s: &Path,
        d: &Path,
        m: &fs::Metadata,
        ft: fs::FileType,
    ) -> Result<(), String> {
        let kind = if ft.is_block_device() {
            libc::S_IFBLK
        } else if ft.is_char_device() {
            libc::S_IFCHR
        } else if ft.is_fifo() {
            libc::S_IFIFO
        } else {
            libc::S_IFSOCK
        };
        let c = cpath(d)?;
        // SAFETY: a valid NUL-terminated path; mknod touches no memory of ours.
        let r = unsafe { libc::mknod(c.as_ptr(), kind | (m.mode() & 0o7777), m.rdev()) };
        check(r, "make the node", d)?;
        self.done.specials += 1;
        self.attrs(s, d, m, false)
    }

    /// Owner, mode, extended attributes, times — in that order.
    fn attrs(&mut self, s: &Path, d: &Path, m: &fs::Metadata, link: bool) -> Result<(), String> {
        let c = cpath(d)?;
        // SAFETY: a valid path; lchown never follows a link.
        let r = unsafe { libc::lchown(c.as_ptr(), m.uid(), m.gid()) };
        check(r, "set the owner of", d)?;
        if !link {
            // SAFETY: a valid path; d is not a symbolic link (we made it).
            let r = unsafe { libc::chmod(c.as_ptr(), (m.mode() & 0o7777) as libc::mode_t) };
            check(r, "set the mode of", d)?;
        }
        copy_xattrs(s, d, link)?;
        let times = [
            libc::timespec {
                tv_sec: m.atime() as libc::time_t,
                tv_nsec: m.atime_nsec() as libc::c_long,
            },
            libc::timespec {
                tv_sec: m.mtime() as libc::time_t,
                tv_nsec: m.mtime_nsec() as libc::c_long,
            },
        ];
        // SAFETY: a valid path and two timespecs that live across the call.
        let r = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        check(r, "set the times of", d)
    }
}

/// The names of `p`'s extended attributes (not following a link).
pub fn xattr_names(p: &Path) -> Result<Vec<Vec<u8>>, String> {
    let c = cpath(p)?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: buf is valid for its length; the kernel writes at most that.
        let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf
                .split(|b| *b == 0)
                .filter(|n| !n.is_empty())
                .map(<[u8]>::to_vec)
                .collect());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(err("list the extended attributes of", p, e)),
        }
    }
}

/// The value of `p`'s extended attribute `name` (not following a link).
pub fn xattr(p: &Path, name: &[u8]) -> Result<Vec<u8>, String> {
    let c = cpath(p)?;
    let n = CString::new(name).map_err(|_| "an attribute name with a NUL byte".to_string())?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: as in xattr_names.
        let r =
            unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if r >= 0 {
            buf.truncate(r as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) if buf.len() < 1 << 24 => buf.resize(buf.len() * 4, 0),
            _ => return Err(err("read an extended attribute of", p, e)),
        }
    }
}

/// Sets `p`'s extended attribute `name` to `value` (not following a link).
pub fn set_xattr(p: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let c = CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let n = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: valid path, name and value buffers for the call.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn copy_xattrs(s: &Path, d: &Path, link: bool) -> Result<(), String> {
    for name in xattr_names(s)? {
        let value = xattr(s, &name)?;
        if let Err(e) = set_xattr(d, &name, &value) {
            // user.* cannot be set on a symbolic link; nothing else is skipped
            if link && name.starts_with(b"user.") && e.raw_os_error() == Some(libc::EPERM) {
                continue;
            }
            return Err(format!(
                "cannot set the extended attribute {} of {}: {e}",
                byol_spec::escape_control(&String::from_utf8_lossy(&name)),
                byol_spec::escape_control(&d.display().to_string())
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_deeper_than_the_limit_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let mut p = t.path().join("src");
        for _ in 0..=MAX_DEPTH + 1 {
            p.push("d");
        }
        fs::create_dir_all(&p).unwrap();
        let e = copy_tree(&t.path().join("src"), &t.path().join("dst")).unwrap_err();
        assert!(
            e.starts_with("the image's tree is deeper than 512 directories at "),
            "{e}"
        );
        // a shallow tree is copied, a symbolic link to a directory is not followed
        let s = t.path().join("s");
        fs::create_dir_all(s.join("a")).unwrap();
        fs::write(s.join("a/f"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", s.join("etc")).unwrap();
        let c = copy_tree(&s, &t.path().join("d")).unwrap();
        assert_eq!((c.dirs, c.files, c.symlinks, c.bytes), (2, 1, 1, 1));
        assert!(
            fs::symlink_metadata(t.path().join("d/etc"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
}
