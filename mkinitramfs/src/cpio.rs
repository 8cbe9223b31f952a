//! The newc ("070701") cpio format the kernel unpacks into its rootfs: a reproducible writer
//! (sorted entries, parents before children, mtime 0, uid/gid 0, inodes numbered in order)
//! and a small reader used to check archives.
//!
//! Layout of one entry: a 110-byte ASCII header (`070701` and 13 fields of 8 hex digits),
//! the NUL-terminated name padded with NULs to a multiple of 4 (counting from the header's
//! start), then the data padded to a multiple of 4. The archive ends with `TRAILER!!!`.
//! Names carry no leading `/` (`init`, `lib/modules/…`).

use std::collections::BTreeMap;

use crate::Error;

/// Magic of the "new ASCII" format without checksums.
pub const MAGIC: &[u8; 6] = b"070701";
/// Name of the closing entry.
pub const TRAILER: &str = "TRAILER!!!";
const HEADER_LEN: usize = 110;

/// What an entry is, with what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    /// Character device `major:minor`.
    CharDev(u32, u32),
    /// Block device `major:minor`.
    BlockDev(u32, u32),
}

/// One entry of an archive (as written, or as read back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path without a leading `/`.
    pub name: String,
    /// Permission bits only (e.g. 0o755); the type comes from `kind`.
    pub perm: u32,
    pub kind: Kind,
    /// Filled by the reader; the writer numbers entries itself.
    pub ino: u32,
    pub mtime: u32,
}

impl Entry {
    /// The full `st_mode`: file type bits and permissions.
    pub fn mode(&self) -> u32 {
        let ty = match self.kind {
            Kind::Dir => 0o040000,
            Kind::File(_) => 0o100000,
            Kind::Symlink(_) => 0o120000,
            Kind::CharDev(..) => 0o020000,
            Kind::BlockDev(..) => 0o060000,
        };
        ty | (self.perm & 0o7777)
    }

    fn data(&self) -> &[u8] {
        match &self.kind {
            Kind::File(d) => d,
            Kind::Symlink(t) => t.as_bytes(),
            _ => &[],
        }
    }
}

/// An archive being assembled. Entries are kept by path, so the output order is the sorted
/// order whatever the order of insertion, and missing parent directories are added (0755).
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a directory (and its parents).
    pub fn dir(&mut self, path: &str, perm: u32) -> Result<(), Error> {
        self.insert(path, perm, Kind::Dir)
    }

    /// Adds a regular file (and its parent directories).
    pub fn file(&mut self, path: &str, perm: u32, data: Vec<u8>) -> Result<(), Error> {
        if u32::try_from(data.len()).is_err() {
            return Err(Error::Cpio(format!("{path}: too large for newc (4 GiB)")));
        }
        self.insert(path, perm, Kind::File(data))
    }

    /// Adds a symbolic link `path -> target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), Error> {
        self.insert(path, 0o777, Kind::Symlink(target.to_owned()))
    }

    /// Adds a character device node.
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> Result<(), Error> {
        self.insert(path, perm, Kind::CharDev(major, minor))
    }

    /// Number of entries (trailer excluded).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `path` is already in the archive.
    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path.trim_start_matches('/'))
    }

    fn insert(&mut self, path: &str, perm: u32, kind: Kind) -> Result<(), Error> {
        let name = clean(path)?;
        // parents first, as directories
        let mut at = 0;
        while let Some(i) = name[at..].find('/') {
            let parent = &name[..at + i];
            match self.entries.get(parent) {
                Some(e) if e.kind != Kind::Dir => {
                    return Err(Error::Cpio(format!(
                        "{name}: parent {parent} is not a directory"
                    )));
                }
                Some(_) => {}
                None => {
                    self.entries
                        .insert(parent.to_owned(), entry(parent, 0o755, Kind::Dir));
                }
            }
            at += i + 1;
        }
        if let Some(old) = self.entries.get(&name) {
            if old.kind == Kind::Dir && kind == Kind::Dir {
                // an explicit directory may set the mode of an implicit one
                self.entries.insert(name.clone(), entry(&name, perm, kind));
                return Ok(());
            }
            return Err(Error::Cpio(format!("{name}: added twice")));
        }
        self.entries.insert(name.clone(), entry(&name, perm, kind));
        Ok(())
    }

    /// The archive's bytes: entries in sorted path order (a parent always sorts before its
    /// children), inode numbers 1, 2, … in that order, mtime 0, uid/gid 0, then the trailer.
    pub fn write(&self) -> Vec<u8> {
        let size: usize = self
            .entries
            .values()
            .map(|e| HEADER_LEN + e.name.len() + 4 + e.data().len() + 4)
            .sum();
        let mut out = Vec::with_capacity(size + 256);
        for (ino, e) in self.entries.values().enumerate() {
            let nlink = if e.kind == Kind::Dir { 2 } else { 1 };
            let (maj, min) = match e.kind {
                Kind::CharDev(a, b) | Kind::BlockDev(a, b) => (a, b),
                _ => (0, 0),
            };
            let ino = u32::try_from(ino + 1).unwrap_or(u32::MAX);
            push_entry(
                &mut out,
                &e.name,
                ino,
                e.mode(),
                nlink,
                (maj, min),
                e.data(),
            );
        }
        push_entry(&mut out, TRAILER, 0, 0, 1, (0, 0), &[]);
        out
    }
}

fn entry(name: &str, perm: u32, kind: Kind) -> Entry {
    Entry {
        name: name.to_owned(),
        perm,
        kind,
        ino: 0,
        mtime: 0,
    }
}

/// `/a//b/` → `a/b`; refuses empty names, `.`/`..` components and NULs.
fn clean(path: &str) -> Result<String, Error> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty()
        || parts.iter().any(|p| *p == "." || *p == "..")
        || path.contains('\0')
        || parts.join("/") == TRAILER
    {
        return Err(Error::Cpio(format!("invalid archive path {path:?}")));
    }
    Ok(parts.join("/"))
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn push_entry(
    out: &mut Vec<u8>,
    name: &str,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    data: &[u8],
) {
    let start = out.len();
    debug_assert!(start.is_multiple_of(4));
    let namesize = u32::try_from(name.len() + 1).unwrap_or(u32::MAX);
    let filesize = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let fields = [
        ino, mode, 0, // uid
        0, // gid
        nlink, 0, // mtime
        filesize, 0, // devmajor
        0, // devminor
        rdev.0, rdev.1, namesize, 0, // check
    ];
    out.extend_from_slice(MAGIC);
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

/// Reads a whole newc archive (uncompressed) back into entries, checking magic, padding and
/// bounds; stops at the trailer, which is required.
pub fn read(bytes: &[u8]) -> Result<Vec<Entry>, Error> {
    let bad = |at: usize, what: &str| Error::Cpio(format!("at byte {at}: {what}"));
    let mut pos = 0usize;
    let mut out = Vec::new();
    loop {
        let hdr = bytes
            .get(pos..pos + HEADER_LEN)
            .ok_or_else(|| bad(pos, "truncated header (no trailer)"))?;
        if &hdr[..6] != MAGIC {
            return Err(bad(pos, "bad magic (not newc 070701)"));
        }
        let mut f = [0u32; 13];
        for (i, v) in f.iter_mut().enumerate() {
            let s = std::str::from_utf8(&hdr[6 + i * 8..14 + i * 8])
                .map_err(|_| bad(pos, "non-ASCII header field"))?;
            *v = u32::from_str_radix(s, 16).map_err(|_| bad(pos, "non-hex header field"))?;
        }
        let [ino, mode, _uid, _gid, _nlink, mtime, filesize, ..] = f;
        let (rmaj, rmin, namesize) = (f[9], f[10], f[11] as usize);
        let name_at = pos + HEADER_LEN;
        let name_bytes = bytes
            .get(name_at..name_at + namesize)
            .ok_or_else(|| bad(pos, "truncated name"))?;
        let name = match name_bytes.split_last() {
            Some((0, n)) => {
                String::from_utf8(n.to_vec()).map_err(|_| bad(pos, "non-UTF-8 name"))?
            }
            _ => return Err(bad(pos, "name not NUL-terminated")),
        };
        let data_at = (name_at + namesize).next_multiple_of(4);
        let data_end = data_at + filesize as usize;
        let data = bytes
            .get(data_at..data_end)
            .ok_or_else(|| bad(pos, "truncated data"))?;
        if name == TRAILER {
            return Ok(out);
        }
        let kind = match mode & 0o170000 {
            0o040000 => Kind::Dir,
            0o100000 => Kind::File(data.to_vec()),
            0o120000 => Kind::Symlink(
                String::from_utf8(data.to_vec()).map_err(|_| bad(pos, "non-UTF-8 symlink"))?,
            ),
            0o020000 => Kind::CharDev(rmaj, rmin),
            0o060000 => Kind::BlockDev(rmaj, rmin),
            other => return Err(bad(pos, &format!("unsupported file type {other:o}"))),
        };
        out.push(Entry {
            name,
            perm: mode & 0o7777,
            kind,
            ino,
            mtime,
        });
        pos = data_end.next_multiple_of(4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.file("/lib/modules/6.1/kernel/a.ko", 0o644, b"ko!".to_vec())
            .unwrap();
        a.file("init", 0o755, vec![7u8; 1001]).unwrap();
        a.dir("/dev", 0o755).unwrap();
        a.char_dev("dev/console", 0o600, 5, 1).unwrap();
        a.symlink("lib/firmware/x.bin", "y.bin").unwrap();
        a.file("lib/firmware/y.bin", 0o644, Vec::new()).unwrap();
        a
    }

    #[test]
    fn round_trip_through_own_reader() {
        let bytes = sample().write();
        assert_eq!(bytes.len() % 4, 0);
        let entries = read(&bytes).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "init",
                "lib",
                "lib/firmware",
                "lib/firmware/x.bin",
                "lib/firmware/y.bin",
                "lib/modules",
                "lib/modules/6.1",
                "lib/modules/6.1/kernel",
                "lib/modules/6.1/kernel/a.ko",
            ]
        );
        let init = entries.iter().find(|e| e.name == "init").unwrap();
        assert_eq!(init.kind, Kind::File(vec![7u8; 1001]));
        assert_eq!(init.mode(), 0o100755);
        let con = entries.iter().find(|e| e.name == "dev/console").unwrap();
        assert_eq!(con.kind, Kind::CharDev(5, 1));
        let link = entries
            .iter()
            .find(|e| e.name == "lib/firmware/x.bin")
            .unwrap();
        assert_eq!(link.kind, Kind::Symlink("y.bin".into()));
        // inodes in order, all mtimes 0
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.ino as usize, i + 1);
            assert_eq!(e.mtime, 0);
        }
    }

    #[test]
    fn same_content_any_insertion_order_same_bytes() {
        let mut b = Archive::new();
        b.symlink("lib/firmware/x.bin", "y.bin").unwrap();
        b.file("lib/firmware/y.bin", 0o644, Vec::new()).unwrap();
        b.char_dev("dev/console", 0o600, 5, 1).unwrap();
        b.file("init", 0o755, vec![7u8; 1001]).unwrap();
        b.file("lib/modules/6.1/kernel/a.ko", 0o644, b"ko!".to_vec())
            .unwrap();
        assert_eq!(sample().write(), b.write());
    }

    #[test]
    fn header_layout_is_exact() {
        let mut a = Archive::new();
        a.file("ab", 0o644, b"xyz".to_vec()).unwrap();
        let bytes = a.write();
        let hdr = std::str::from_utf8(&bytes[..110]).unwrap();
        let fields = [1, 0o100644, 0, 0, 1, 0, 3, 0, 0, 0, 0, 3, 0];
        let want: String = fields.iter().map(|f| format!("{f:08X}")).collect();
        assert_eq!(hdr, format!("070701{want}"));
        // name "ab\0" padded to 116 (110 + 3 → 4-multiple), data "xyz" + 1 pad, trailer at 120
        assert_eq!(&bytes[110..116], b"ab\0\0\0\0");
        assert_eq!(&bytes[116..120], b"xyz\0");
        assert_eq!(&bytes[120..126], MAGIC);
        assert_eq!(&bytes[120 + 110..120 + 110 + 11], b"TRAILER!!!\0");
        assert_eq!(bytes.len(), 120 + 124);
    }

    #[test]
    fn refuses_bad_paths_and_duplicates() {
        let mut a = Archive::new();
        assert!(a.file("", 0o644, vec![]).is_err());
        assert!(a.file("a/../b", 0o644, vec![]).is_err());
        a.file("a", 0o644, vec![]).unwrap();
        assert!(a.file("a", 0o644, vec![]).is_err());
        assert!(a.file("a/b", 0o644, vec![]).is_err());
    }

    #[test]
    fn reader_rejects_damage() {
        let bytes = sample().write();
        assert!(read(&bytes[..bytes.len() - 8]).is_err());
        let mut bad = bytes.clone();
        bad[0] = b'9';
        assert!(read(&bad).is_err());
    }

    /// The real tools agree with the writer (skipped, with a note, where they are missing).
    #[test]
    fn real_cpio_and_bsdtar_list_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.cpio");
        std::fs::write(&path, sample().write()).unwrap();
        let mut ran = 0;
        for (tool, args) in [
            ("cpio", &["-i", "-t", "-v", "-F"][..]),
            ("bsdtar", &["-tvf"][..]),
        ] {
            let Ok(out) = std::process::Command::new(tool)
                .args(args)
                .arg(&path)
                .output()
            else {
                eprintln!("note: `{tool}` not installed, skipping its check");
                continue;
            };
            ran += 1;
            assert!(out.status.success(), "{tool}: {out:?}");
            let listing = String::from_utf8_lossy(&out.stdout);
            for name in ["init", "dev/console", "lib/modules/6.1/kernel/a.ko"] {
                assert!(
                    listing.lines().any(|l| l.ends_with(name)),
                    "{tool} listing lacks {name}:\n{listing}"
                );
            }
            let init = listing.lines().find(|l| l.ends_with(" init")).unwrap();
            assert!(init.starts_with("-rwxr-xr-x"), "{init}");
            assert!(init.contains("1001"), "{init}");
            let con = listing
                .lines()
                .find(|l| l.ends_with("dev/console"))
                .unwrap();
            assert!(con.starts_with("crw-------"), "{con}");
            let link = listing.lines().find(|l| l.contains("x.bin")).unwrap();
            assert!(link.ends_with("x.bin -> y.bin"), "{link}");
        }
        if ran == 0 {
            eprintln!("note: neither cpio nor bsdtar is installed: only the own reader checked");
        }
    }
}
