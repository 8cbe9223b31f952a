//! A kernel module's own metadata: the `.modinfo` ELF section (`key=value` strings separated
//! by NULs) read from a `.ko` (little-endian ELF64, section headers parsed here, every offset
//! checked) or from a `.ko.xz` / `.ko.zst` / `.ko.gz` after decompression.
//!
//! Only uncompressed modules are read partially (header, section table, names, `.modinfo`);
//! compressed ones are decompressed whole.

use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use crate::Error;

/// What `.modinfo` says about a module, in the order the keys appear.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    /// `name=` (KBUILD_MODNAME: underscores), when present.
    pub name: Option<String>,
    /// `depends=`: modules providing symbols it uses (as written: may contain `-`).
    pub depends: Vec<String>,
    /// `alias=`: modalias glob patterns and other names (`fs-ext4`, `crypto-crc32c`), deduplicated.
    pub aliases: Vec<String>,
    /// `firmware=`: paths under /lib/firmware it may request.
    pub firmware: Vec<String>,
    /// `softdep=pre: …`: names (modules or aliases) to load before it.
    pub softdep_pre: Vec<String>,
    /// `softdep=… post: …`: names to load after it.
    pub softdep_post: Vec<String>,
}

/// `nvme-core` → `nvme_core`: the kernel treats both spellings as one module.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The compression of a module file, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModCompression {
    None,
    Xz,
    Zstd,
    Gzip,
}

/// `virtio_blk.ko.xz` → (`virtio_blk`, Xz); `None` for files that are not modules.
pub fn module_file(file_name: &str) -> Option<(&str, ModCompression)> {
    for (ext, c) in [
        (".ko", ModCompression::None),
        (".ko.xz", ModCompression::Xz),
        (".ko.zst", ModCompression::Zstd),
        (".ko.gz", ModCompression::Gzip),
    ] {
        if let Some(stem) = file_name.strip_suffix(ext)
            && !stem.is_empty()
        {
            return Some((stem, c));
        }
    }
    None
}

/// Parses the raw `.modinfo` section.
pub fn parse(section: &[u8]) -> ModInfo {
    let mut info = ModInfo::default();
    for field in section.split(|b| *b == 0) {
        let Ok(field) = std::str::from_utf8(field) else {
            continue;
        };
        let Some((key, value)) = field.split_once('=') else {
            continue;
        };
        match key {
            "name" => info.name = Some(value.to_owned()),
            "depends" => info.depends.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(str::to_owned),
            ),
            "alias" => push_unique(&mut info.aliases, value),
            "firmware" => push_unique(&mut info.firmware, value),
            "softdep" => parse_softdep(value, &mut info),
            _ => {}
        }
    }
    info
}

fn push_unique(list: &mut Vec<String>, value: &str) {
    if !value.is_empty() && !list.iter().any(|a| a == value) {
        list.push(value.to_owned());
    }
}

/// `pre: a b post: c` (either part optional, in any order).
fn parse_softdep(value: &str, info: &mut ModInfo) {
    let mut into: Option<bool> = None; // Some(true) = pre
    for tok in value.split_whitespace() {
        match tok {
            "pre:" => into = Some(true),
            "post:" => into = Some(false),
            name => match into {
                Some(true) => info.softdep_pre.push(name.to_owned()),
                Some(false) => info.softdep_post.push(name.to_owned()),
                None => {}
            },
        }
    }
}

/// Reads `.modinfo` of the module at `path` (compressed or not).
pub fn read(path: &Path) -> Result<ModInfo, Error> {
    let err = |what: String| Error::Module {
        path: path.to_owned(),
        what,
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let compression = module_file(name).map_or(ModCompression::None, |(_, c)| c);
    let section = if compression == ModCompression::None {
        let file = File::open(path).map_err(|e| err(e.to_string()))?;
        let len = file.metadata().map_err(|e| err(e.to_string()))?.len();
        modinfo_section(&FileSource(file), len).map_err(err)?
    } else {
        let bytes = read_module(path)?;
        modinfo_section(&bytes.as_slice(), bytes.len() as u64).map_err(err)?
    };
    Ok(parse(&section))
}

/// The module's uncompressed bytes (what goes into the initramfs).
pub fn read_module(path: &Path) -> Result<Vec<u8>, Error> {
    let err = |what: String| Error::Module {
        path: path.to_owned(),
        what,
    };
    let raw = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let mut out = Vec::new();
    let res = if raw.starts_with(&[0xFD, b'7', b'z', b'X', b'Z', 0]) {
        liblzma::read::XzDecoder::new_multi_decoder(raw.as_slice()).read_to_end(&mut out)
    } else if raw.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) {
        zstd::stream::read::Decoder::new(raw.as_slice()).and_then(|mut d| d.read_to_end(&mut out))
    } else if raw.starts_with(&[0x1F, 0x8B]) {
        flate2::read::MultiGzDecoder::new(raw.as_slice()).read_to_end(&mut out)
    } else {
        return Ok(raw);
    };
    res.map_err(|e| err(format!("cannot decompress: {e}")))?;
    Ok(out)
}

/// Random access to the bytes of a module, from a file or from memory.
trait Source {
    fn read_at(&self, off: u64, len: usize) -> Result<Vec<u8>, String>;
}

struct FileSource(File);

impl Source for FileSource {
    fn read_at(&self, off: u64, len: usize) -> Result<Vec<u8>, String> {
        let mut buf = vec![0; len];
        self.0
            .read_exact_at(&mut buf, off)
            .map_err(|e| format!("reading {len} bytes at {off}: {e}"))?;
        Ok(buf)
    }
}

impl Source for &[u8] {
    fn read_at(&self, off: u64, len: usize) -> Result<Vec<u8>, String> {
        usize::try_from(off)
            .ok()
            .and_then(|o| self.get(o..o.checked_add(len)?))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| format!("{len} bytes at {off} are past the end"))
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

const SHT_NOBITS: u32 = 8;

/// Finds and returns the `.modinfo` section of an ELF64 little-endian object of `len` bytes.
fn modinfo_section(src: &dyn Source, len: u64) -> Result<Vec<u8>, String> {
    if len < 64 {
        return Err("not an ELF file (too short)".into());
    }
    let eh = src.read_at(0, 64)?;
    if &eh[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if eh[4] != 2 || eh[5] != 1 {
        return Err("not a little-endian ELF64 object".into());
    }
    let shoff = u64_at(&eh, 0x28);
    let shentsize = usize::from(u16_at(&eh, 0x3A));
    let shnum = usize::from(u16_at(&eh, 0x3C));
    let shstrndx = usize::from(u16_at(&eh, 0x3E));
    if shentsize < 64 || shnum == 0 || shstrndx >= shnum {
        return Err(format!(
            "unsupported section table (entsize {shentsize}, count {shnum}, names {shstrndx})"
        ));
    }
    let table_len = shentsize * shnum;
    if shoff.checked_add(table_len as u64).is_none_or(|e| e > len) {
        return Err("section table past the end of the file".into());
    }
    let table = src.read_at(shoff, table_len)?;
    let section = |i: usize| -> (u32, u32, u64, u64) {
        let s = &table[i * shentsize..];
        (u32_at(s, 0), u32_at(s, 4), u64_at(s, 24), u64_at(s, 32))
    };
    let read_section = |off: u64, size: u64| -> Result<Vec<u8>, String> {
        if off.checked_add(size).is_none_or(|e| e > len) {
            return Err(format!("section at {off}+{size} past the end of the file"));
        }
        let size = usize::try_from(size).map_err(|_| "section too large".to_string())?;
        src.read_at(off, size)
    };
    let (_, _, names_off, names_size) = section(shstrndx);
    let names = read_section(names_off, names_size)?;
    for i in 0..shnum {
        let (name_at, ty, off, size) = section(i);
        let name = names
            .get(name_at as usize..)
            .and_then(|n| n.split(|b| *b == 0).next())
            .unwrap_or(&[]);
        if name == b".modinfo" {
            if ty == SHT_NOBITS {
                return Err(".modinfo has no data".into());
            }
            return read_section(off, size);
        }
    }
    Err("no .modinfo section (not a kernel module?)".into())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF64 object with a `.modinfo` section holding `info`.
    pub(crate) fn fake_module(info: &[&str]) -> Vec<u8> {
        let mut modinfo = Vec::new();
        for kv in info {
            modinfo.extend_from_slice(kv.as_bytes());
            modinfo.push(0);
        }
        let names = b"\0.shstrtab\0.modinfo\0".to_vec();
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        let names_off = f.len() as u64;
        f.extend_from_slice(&names);
        let info_off = f.len() as u64;
        f.extend_from_slice(&modinfo);
        while !f.len().is_multiple_of(8) {
            f.push(0);
        }
        let shoff = f.len() as u64;
        let mut sh = |name: u32, ty: u32, off: u64, size: u64| {
            let mut s = vec![0u8; 64];
            s[0..4].copy_from_slice(&name.to_le_bytes());
            s[4..8].copy_from_slice(&ty.to_le_bytes());
            s[24..32].copy_from_slice(&off.to_le_bytes());
            s[32..40].copy_from_slice(&size.to_le_bytes());
            f.extend_from_slice(&s);
        };
        sh(0, 0, 0, 0);
        sh(1, 3, names_off, names.len() as u64);
        sh(11, 1, info_off, modinfo.len() as u64);
        f[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        f[0x3A..0x3C].copy_from_slice(&64u16.to_le_bytes());
        f[0x3C..0x3E].copy_from_slice(&3u16.to_le_bytes());
        f[0x3E..0x40].copy_from_slice(&1u16.to_le_bytes());
        f
    }

    #[test]
    fn parses_keys_and_softdeps() {
        let info = parse(
            b"license=GPL\0softdep=pre: crypto-crc32c sha256 post: foo\0name=ext4\0depends=jbd2,mbcache,crc16\0alias=fs-ext4\0alias=ext3\0alias=ext3\0firmware=a/b.bin\0vermagic=6.1 SMP\0",
        );
        assert_eq!(info.name.as_deref(), Some("ext4"));
        assert_eq!(info.depends, ["jbd2", "mbcache", "crc16"]);
        assert_eq!(info.aliases, ["fs-ext4", "ext3"]);
        assert_eq!(info.firmware, ["a/b.bin"]);
        assert_eq!(info.softdep_pre, ["crypto-crc32c", "sha256"]);
        assert_eq!(info.softdep_post, ["foo"]);
        assert!(parse(b"depends=\0").depends.is_empty());
    }

    #[test]
    fn reads_plain_and_compressed_modules() {
        let dir = tempfile::tempdir().unwrap();
        let elf = fake_module(&["name=virtio_blk", "depends=virtio,virtio_ring"]);
        let plain = dir.path().join("virtio_blk.ko");
        std::fs::write(&plain, &elf).unwrap();
        let xz = dir.path().join("virtio_blk.ko.xz");
        let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 6);
        std::io::Write::write_all(&mut enc, &elf).unwrap();
        std::fs::write(&xz, enc.finish().unwrap()).unwrap();
        let zst = dir.path().join("virtio_blk.ko.zst");
        std::fs::write(&zst, zstd::bulk::compress(&elf, 3).unwrap()).unwrap();
        for p in [&plain, &xz, &zst] {
            let info = read(p).unwrap();
            assert_eq!(info.name.as_deref(), Some("virtio_blk"), "{p:?}");
            assert_eq!(info.depends, ["virtio", "virtio_ring"]);
            assert_eq!(read_module(p).unwrap(), elf);
        }
    }

    #[test]
    fn refuses_non_modules_and_bad_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.ko");
        std::fs::write(
            &p,
            b"not an elf file at all, but long enough to have a header ......",
        )
        .unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("not an ELF"));
        let mut elf = fake_module(&["name=x"]);
        let n = elf.len();
        elf[0x28..0x30].copy_from_slice(&(n as u64).to_le_bytes());
        std::fs::write(&p, &elf).unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("past the end"));
    }

    #[test]
    fn module_file_names() {
        assert_eq!(
            module_file("nvme-core.ko"),
            Some(("nvme-core", ModCompression::None))
        );
        assert_eq!(module_file("a.ko.zst"), Some(("a", ModCompression::Zstd)));
        assert_eq!(module_file("modules.dep"), None);
        assert_eq!(normalize("nvme-core"), "nvme_core");
    }
}
