//! modules: drivers without udev. The initramfs (crate mkinitramfs) carries the kernel modules
//! and two index files under `/lib/modules/<kver>/`: `byol-modules.txt` (one module a line:
//! name, path, dependencies) and `byol-aliases.txt` (one alias a line: modalias glob, module).
//! The exact format is mkinitramfs's (`mkinitramfs/src/index.rs`): `name path depends
//! softdeps`, lists comma-separated or `-`; `pattern module`.
//!
//! The agent walks `/sys/devices` for `modalias` files, matches each against the alias globs
//! with modprobe's (fnmatch) rules, and loads the matching modules, dependencies first, with
//! finit_module(2). Loading a bus driver makes new devices appear (virtio_pci → virtio
//! devices → virtio_net), so the walk repeats until nothing new shows up (bounded). Modules
//! the rest of the agent needs whatever the hardware (ext4, vfat, efivarfs…) are loaded by
//! name with [`Loader::load_by_name`].

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::kmod::{ModuleInitFlags, finit_module};

/// The index file of modules: `name path depends softdeps` (lists: `a,b` or `-`).
pub const MODULES_FILE: &str = "byol-modules.txt";
/// The alias file: `glob module`.
pub const ALIASES_FILE: &str = "byol-aliases.txt";
/// Walks of /sys before giving up on new devices appearing.
const MAX_ROUNDS: usize = 10;

/// One module of the initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleEntry {
    /// Normalised name (`-` → `_`, as the kernel names modules).
    pub name: String,
    /// The `.ko` file (absolute).
    pub path: PathBuf,
    /// Direct dependencies (normalised names): they provide symbols, load them first.
    pub deps: Vec<String>,
    /// Soft dependencies (`softdep pre:`): loaded first too, best effort (crc32c_intel fails
    /// on CPUs without SSE4.2, which is fine).
    pub softdeps: Vec<String>,
}

/// The two index files, read.
#[derive(Debug, Clone, Default)]
pub struct ModuleIndex {
    pub modules: BTreeMap<String, ModuleEntry>,
    /// (glob, module), in file order.
    pub aliases: Vec<(String, String)>,
}

/// Module names are the same with `-` or `_` (modprobe's rule).
pub fn normalise(name: &str) -> String {
    name.trim().replace('-', "_")
}

impl ModuleIndex {
    /// Reads `byol-modules.txt` and `byol-aliases.txt` from `dir` (`/lib/modules/<kver>`).
    pub fn load(dir: &Path) -> Result<ModuleIndex, String> {
        let read = |f: &str| {
            fs::read_to_string(dir.join(f))
                .map_err(|e| format!("cannot read {}: {e}", dir.join(f).display()))
        };
        Ok(ModuleIndex::parse(
            &read(MODULES_FILE)?,
            &read(ALIASES_FILE)?,
            dir,
        ))
    }

    /// Parses the index files. `base` is where relative module paths start. Blank lines and
    /// `#` comments are skipped; lists are comma-separated, `-` means none; a missing
    /// softdeps field means none.
    pub fn parse(modules: &str, aliases: &str, base: &Path) -> ModuleIndex {
        let mut idx = ModuleIndex::default();
        for line in modules.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut f = line.split_whitespace();
            let (Some(name), Some(path)) = (f.next(), f.next()) else {
                continue;
            };
            let list = |field: Option<&str>| -> Vec<String> {
                field
                    .unwrap_or("-")
                    .split(',')
                    .map(normalise)
                    .filter(|d| !d.is_empty() && d != "_")
                    .collect()
            };
            let deps = list(f.next());
            let softdeps = list(f.next());
            let path = Path::new(path);
            let path = if path.is_absolute() {
                path.to_path_buf()
            } else {
                base.join(path)
            };
            let name = normalise(name);
            idx.modules.insert(
                name.clone(),
                ModuleEntry {
                    name,
                    path,
                    deps,
                    softdeps,
                },
            );
        }
        for line in aliases.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut f = line.split_whitespace();
            if let (Some(glob), Some(module)) = (f.next(), f.next()) {
                idx.aliases.push((glob.to_string(), normalise(module)));
            }
        }
        idx
    }

    /// The modules whose alias globs match `modalias` (each once, in alias-file order).
    pub fn modules_for(&self, modalias: &str) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for (glob, module) in &self.aliases {
            if !out.contains(&module.as_str()) && glob_match(glob, modalias) {
                out.push(module);
            }
        }
        out
    }

    /// The modules to load for `wanted`, soft then hard dependencies first, each once. Names
    /// missing from the index are left out (see [`ModuleIndex::missing`]); a dependency
    /// cycle is broken where it is found.
    pub fn load_order<'a>(&'a self, wanted: &[&str]) -> Vec<&'a ModuleEntry> {
        fn visit<'a>(
            idx: &'a ModuleIndex,
            name: &str,
            seen: &mut HashSet<String>,
            out: &mut Vec<&'a ModuleEntry>,
        ) {
            let Some(m) = idx.modules.get(name) else {
                return;
            };
            if !seen.insert(m.name.clone()) {
                return;
            }
            for d in m.softdeps.iter().chain(&m.deps) {
                visit(idx, d, seen, out);
            }
            out.push(m);
        }
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for w in wanted {
            visit(self, &normalise(w), &mut seen, &mut out);
        }
        out
    }

    /// `wanted` and their hard dependencies, recursively: the modules whose failure matters.
    pub fn hard_closure(&self, wanted: &[&str]) -> HashSet<String> {
        let mut out = HashSet::new();
        let mut todo: Vec<String> = wanted.iter().map(|n| normalise(n)).collect();
        while let Some(n) = todo.pop() {
            if let Some(m) = self.modules.get(&n)
                && out.insert(n)
            {
                todo.extend(m.deps.iter().cloned());
            }
        }
        out
    }

    /// Which of `names` (or of their dependencies) the index does not have.
    pub fn missing(&self, names: &[&str]) -> Vec<String> {
        let mut out = BTreeSet::new();
        let mut todo: Vec<String> = names.iter().map(|n| normalise(n)).collect();
        let mut seen = HashSet::new();
        while let Some(n) = todo.pop() {
            if !seen.insert(n.clone()) {
                continue;
            }
            match self.modules.get(&n) {
                Some(m) => todo.extend(m.deps.iter().cloned()),
                None => {
                    out.insert(n);
                }
            }
        }
        out.into_iter().collect()
    }
}

/// fnmatch(3) without flags, as modprobe matches aliases: `*` any run of characters (`/`
/// included), `?` one character, `[abc]`, `[a-z]`, `[!x]`/`[^x]` a class, `\x` a literal x.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    // Where to resume after the last `*`: (pattern index after it, text index it matched to).
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi + 1, ti));
                    pi += 1;
                    continue;
                }
                '?' => Some(pi + 1),
                '[' => match class(&p, pi, t[ti]) {
                    Some((true, next)) => Some(next),
                    Some((false, _)) => None,
                    // An unclosed `[` is a literal.
                    None => (t[ti] == '[').then_some(pi + 1),
                },
                '\\' if pi + 1 < p.len() => (t[ti] == p[pi + 1]).then_some(pi + 2),
                c => (t[ti] == c).then_some(pi + 1),
            }
        } else {
            None
        };
        match step {
            Some(next) => {
                pi = next;
                ti += 1;
            }
            None => match star {
                // Let the last `*` take one more character and try again from there.
                Some((sp, st)) => {
                    pi = sp;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Matches `c` against the class starting at `p[start] == '['`: (matched, index after `]`),
/// or None when the class is not closed.
fn class(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = i < p.len() && (p[i] == '!' || p[i] == '^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        let mut lo = p[i];
        if lo == '\\' && i + 1 < p.len() {
            i += 1;
            lo = p[i];
        }
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            let hi = p[i + 2];
            if lo <= c && c <= hi {
                matched = true;
            }
            i += 3;
        } else {
            if lo == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

/// Every `modalias` under `<sysfs>/devices` (symlinks not followed), deduplicated, non-empty.
pub fn scan_modaliases(sysfs: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut dirs = vec![sysfs.join("devices")];
    while let Some(dir) = dirs.pop() {
        let Ok(rd) = fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                dirs.push(e.path());
            } else if ft.is_file()
                && e.file_name() == "modalias"
                && let Ok(s) = fs::read_to_string(e.path())
            {
                let s = s.trim();
                if !s.is_empty() {
                    out.insert(s.to_string());
                }
            }
        }
    }
    out
}

/// Loads one module file with finit_module(2); "already loaded" (EEXIST) is success.
pub fn finit(m: &ModuleEntry) -> Result<(), String> {
    let f = File::open(&m.path).map_err(|e| format!("{}: {e}", m.path.display()))?;
    match finit_module(&f, c"", ModuleInitFlags::empty()) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(format!("{e}")),
    }
}

/// What the driver phase did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverReport {
    /// Modules loaded (or found already loaded), in load order.
    pub loaded: Vec<String>,
    /// (module, error) for modules that would not load.
    pub failed: Vec<(String, String)>,
    /// (module, error) for soft dependencies that would not load (best effort: not an error).
    pub soft_failed: Vec<(String, String)>,
    /// Distinct modaliases seen.
    pub devices: usize,
    /// Modaliases no module of the initramfs claims.
    pub unclaimed: usize,
    /// Walks of /sys done.
    pub rounds: usize,
    /// Names asked for by name that the initramfs does not carry.
    pub not_carried: Vec<String>,
}

impl DriverReport {
    /// One line for the console and the `drivers` event.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "loaded {} modules for {} devices in {} rounds",
            self.loaded.len(),
            self.devices,
            self.rounds
        );
        if !self.loaded.is_empty() {
            s.push_str(&format!(": {}", self.loaded.join(", ")));
        }
        if !self.failed.is_empty() {
            let f: Vec<String> = self
                .failed
                .iter()
                .map(|(m, e)| format!("{m} ({e})"))
                .collect();
            s.push_str(&format!("; failed: {}", f.join(", ")));
        }
        s
    }
}

/// How one module is loaded: [`finit`] on a machine, a recorder in tests.
pub type LoadFn<'a> = Box<dyn FnMut(&ModuleEntry) -> Result<(), String> + 'a>;

/// Loads modules, remembering what was tried so that each module is tried once.
pub struct Loader<'a> {
    pub index: &'a ModuleIndex,
    /// The loading itself: [`finit`] on a machine, a recorder in tests.
    pub load: LoadFn<'a>,
    /// Pause before walking /sys again after a load (devices probe asynchronously).
    pub settle: Duration,
    tried: HashSet<String>,
    pub report: DriverReport,
}

impl<'a> Loader<'a> {
    pub fn new(
        index: &'a ModuleIndex,
        load: impl FnMut(&ModuleEntry) -> Result<(), String> + 'a,
    ) -> Loader<'a> {
        Loader {
            index,
            load: Box::new(load),
            settle: Duration::from_millis(150),
            tried: HashSet::new(),
            report: DriverReport::default(),
        }
    }

    /// Loads `wanted` and their dependencies, in order, each module at most once per loader.
    /// Returns how many modules were newly loaded.
    pub fn load_modules(&mut self, wanted: &[&str]) -> usize {
        let mut n = 0;
        let hard = self.index.hard_closure(wanted);
        for m in self.index.load_order(wanted) {
            if !self.tried.insert(m.name.clone()) {
                continue;
            }
            match (self.load)(m) {
                Ok(()) => {
                    self.report.loaded.push(m.name.clone());
                    n += 1;
                }
                Err(e) if hard.contains(&m.name) => self.report.failed.push((m.name.clone(), e)),
                Err(e) => self.report.soft_failed.push((m.name.clone(), e)),
            }
        }
        n
    }

    /// Loads modules by name (filesystems, efivarfs…): the ones the initramfs does not carry
    /// are noted in the report, not an error.
    pub fn load_by_name(&mut self, names: &[&str]) -> usize {
        let present: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| self.index.modules.contains_key(&normalise(n)))
            .collect();
        for n in names {
            let n = normalise(n);
            if !self.index.modules.contains_key(&n) && !self.report.not_carried.contains(&n) {
                self.report.not_carried.push(n);
            }
        }
        self.load_modules(&present)
    }

    /// Walks `<sysfs>/devices`, loads what matches, and walks again while loads made new
    /// devices appear (at most 10 walks). `walk` is [`scan_modaliases`] on a machine.
    pub fn load_for_hardware(&mut self, mut walk: impl FnMut() -> BTreeSet<String>) {
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut unclaimed = 0;
        let mut quiet_walks = 0;
        for _ in 0..MAX_ROUNDS {
            self.report.rounds += 1;
            let now = walk();
            let new: Vec<String> = now.difference(&seen).cloned().collect();
            seen.extend(new.iter().cloned());
            let mut wanted: Vec<&str> = Vec::new();
            for a in &new {
                let mods = self.index.modules_for(a);
                if mods.is_empty() {
                    unclaimed += 1;
                }
                for m in mods {
                    if !wanted.contains(&m) {
                        wanted.push(m);
                    }
                }
            }
            let loaded = self.load_modules(&wanted);
            if loaded == 0 && new.is_empty() {
                // Nothing new: one more look after a pause catches slow probes, then stop.
                quiet_walks += 1;
                if quiet_walks >= 2 {
                    break;
                }
            } else {
                quiet_walks = 0;
            }
            if !self.settle.is_zero() {
                std::thread::sleep(self.settle);
            }
        }
        self.report.devices = seen.len();
        self.report.unclaimed = unclaimed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_aliases() {
        let dev = "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00";
        assert!(glob_match("pci:v00001AF4d00001001sv*sd*bc*sc*i*", dev));
        assert!(glob_match("pci:v00001AF4d*sv*sd*bc*sc*i*", dev));
        assert!(!glob_match("pci:v00001AF4d00001000sv*sd*bc*sc*i*", dev));
        assert!(!glob_match("pci:v00008086d*sv*sd*bc*sc*i*", dev));
        // Class-based alias (ahci): bc01 sc06 i01.
        let sata = "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01";
        assert!(glob_match("pci:v*d*sv*sd*bc01sc06i01*", sata));
        assert!(!glob_match("pci:v*d*sv*sd*bc01sc08i02*", sata));
        // virtio bus: virtio_net is d00000001.
        assert!(glob_match(
            "virtio:d00000001v*",
            "virtio:d00000001v00001AF4"
        ));
        assert!(!glob_match(
            "virtio:d00000002v*",
            "virtio:d00000001v00001AF4"
        ));
        // cpu feature aliases, with a `*` between every token.
        let cpu = "cpu:type:x86,ven0000fam0006mod003F:feature:,0000,0001,0002,0081,0089";
        assert!(glob_match("cpu:type:x86,ven*fam*mod*:feature:*0081*", cpu));
        assert!(!glob_match("cpu:type:x86,ven*fam*mod*:feature:*0099*", cpu));
        // acpi and scsi.
        assert!(glob_match("acpi*:PNP0501:*", "acpi:PNP0501:"));
        assert!(glob_match("scsi:t-0x00*", "scsi:t-0x00"));
        assert!(glob_match("scsi:t-0x0[0e]*", "scsi:t-0x0e"));
    }

    /// Alias lines as Debian's 6.1 kernel modules declare them (`.modinfo` `alias=`), and the
    /// modaliases QEMU's devices show in /sys.
    #[test]
    fn debian_aliases_pick_the_right_drivers() {
        let aliases = "\
pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
virtio:d00000001v* virtio_net
virtio:d00000002v* virtio_blk
virtio:d00000008v* virtio_scsi
pci:v*d*sv*sd*bc01sc06i01* ahci
pci:v00001B4Bd00009123sv*sd*bc01sc06i01* ahci
pci:v00008086d*sv00001028sd*bc01sc04i00* ahci
pci:v00008086d00002922sv*sd*bc*sc*i* ahci
pci:v*d*sv*sd*bc01sc08i02* nvme
pci:v0000106Bd00002005sv*sd*bc*sc*i* nvme
pci:v00008086d0000100Esv*sd*bc*sc*i* e1000
pci:v00008086d000010B5sv*sd*bc*sc*i* e1000
scsi:t-0x00* sd_mod
scsi:t-0x0e* sd_mod
block-major-8-* sd_mod
fs-efivarfs efivarfs
";
        let idx = ModuleIndex::parse("", aliases, Path::new("/"));
        let cases: &[(&str, &[&str])] = &[
            (
                "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00",
                &["virtio_pci"],
            ),
            (
                "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
                &["virtio_pci"],
            ),
            (
                "pci:v00001AF4d00001041sv00001AF4sd00001100bc02sc00i00",
                &["virtio_pci"],
            ),
            ("virtio:d00000001v00001AF4", &["virtio_net"]),
            ("virtio:d00000002v00001AF4", &["virtio_blk"]),
            ("virtio:d00000008v00001AF4", &["virtio_scsi"]),
            (
                "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01",
                &["ahci"],
            ),
            (
                "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02",
                &["nvme"],
            ),
            (
                "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00",
                &["e1000"],
            ),
            ("scsi:t-0x00", &["sd_mod"]),
            ("scsi:t-0x05", &[]),
            // Host bridge, ISA bridge, SMBus: no driver in the initramfs.
            ("pci:v00008086d00001237sv00001AF4sd00001100bc06sc00i00", &[]),
            ("pci:v00008086d00002918sv00001AF4sd00001100bc06sc01i00", &[]),
            ("acpi:PNP0303:", &[]),
        ];
        for (modalias, want) in cases {
            assert_eq!(idx.modules_for(modalias), *want, "{modalias}");
        }
    }

    #[test]
    fn glob_rules() {
        assert!(glob_match("", ""));
        assert!(!glob_match("", "a"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("a[b-d]e", "ace"));
        assert!(!glob_match("a[!b-d]e", "ace"));
        assert!(glob_match("a[^b-d]e", "aze"));
        assert!(glob_match("a[]]b", "a]b"));
        assert!(glob_match("a[b", "a[b"), "unclosed class is literal");
        assert!(glob_match(r"a\*b", "a*b"));
        assert!(!glob_match(r"a\*b", "axb"));
        assert!(glob_match("*a*a*a*", "xaxaxax"));
        assert!(!glob_match("*a*a*a*b", "xaxaxax"));
        assert!(glob_match(
            "usb:v*p*d*dc*dsc*dp*ic08isc06ip50in*",
            "usb:v0781p5567d0100dc00dsc00dp00ic08isc06ip50in00"
        ));
    }

    fn index() -> ModuleIndex {
        let modules = "\
# byol-modules v1: name path depends softdeps
virtio_net kernel/drivers/net/virtio_net.ko net_failover -
net_failover kernel/drivers/net/net_failover.ko failover -
failover kernel/net/core/failover.ko - -
virtio_pci kernel/drivers/virtio/virtio_pci.ko virtio_pci_modern_dev,virtio_pci_legacy_dev -
virtio_pci_modern_dev kernel/drivers/virtio/virtio_pci_modern_dev.ko - -
virtio_pci_legacy_dev kernel/drivers/virtio/virtio_pci_legacy_dev.ko
virtio-blk kernel/drivers/block/virtio_blk.ko - -
ext4 /abs/ext4.ko crc16,mbcache,jbd2 crc32c_generic,crc32c_intel
crc32c_generic kernel/crypto/crc32c_generic.ko - -
crc32c_intel kernel/arch/x86/crypto/crc32c-intel.ko - -
crc16 kernel/lib/crc16.ko - -
mbcache kernel/fs/mbcache.ko - -
jbd2 kernel/fs/jbd2/jbd2.ko - -
loopy a.ko loopz -
loopz b.ko loopy -
";
        let aliases = "\
pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
virtio:d00000001v* virtio_net
virtio:d00000002v* virtio_blk
fs-ext4 ext4
";
        ModuleIndex::parse(modules, aliases, Path::new("/lib/modules/6.1"))
    }

    #[test]
    fn deps_first_each_once() {
        let idx = index();
        assert_eq!(
            idx.modules["virtio_blk"].path,
            Path::new("/lib/modules/6.1/kernel/drivers/block/virtio_blk.ko")
        );
        assert_eq!(idx.modules["ext4"].path, Path::new("/abs/ext4.ko"));
        let order: Vec<&str> = idx
            .load_order(&["virtio_net", "ext4", "failover", "virtio-net", "nope"])
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(
            order,
            [
                "failover",
                "net_failover",
                "virtio_net",
                "crc32c_generic",
                "crc32c_intel",
                "crc16",
                "mbcache",
                "jbd2",
                "ext4"
            ]
        );
        assert!(idx.hard_closure(&["ext4"]).contains("jbd2"));
        assert!(!idx.hard_closure(&["ext4"]).contains("crc32c_intel"));
        let cyc: Vec<&str> = idx
            .load_order(&["loopy"])
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(cyc, ["loopz", "loopy"], "a cycle is broken, not looped");
        assert_eq!(idx.missing(&["ext4", "xfs"]), vec!["xfs".to_string()]);
    }

    #[test]
    fn rounds_follow_new_devices() {
        let idx = index();
        let loaded = std::cell::RefCell::new(Vec::<String>::new());
        let mut l = Loader::new(&idx, |m| {
            loaded.borrow_mut().push(m.name.clone());
            if m.name == "failover" || m.name == "crc32c_intel" {
                Err("Invalid argument".into())
            } else {
                Ok(())
            }
        });
        l.settle = Duration::ZERO;
        // The virtio devices appear only once virtio_pci is loaded.
        l.load_for_hardware(|| {
            let mut s = BTreeSet::from([
                "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00".to_string(),
                "acpi:PNP0A03:".to_string(),
            ]);
            if loaded.borrow().iter().any(|m| m == "virtio_pci") {
                s.insert("virtio:d00000001v00001AF4".into());
                s.insert("virtio:d00000002v00001AF4".into());
            }
            s
        });
        let r = l.report.clone();
        let n = l.load_by_name(&["ext4", "vfat", "virtio_blk"]);
        assert_eq!(
            n, 5,
            "ext4, its three deps and a softdep; virtio_blk was already loaded"
        );
        assert_eq!(
            l.report.soft_failed,
            vec![("crc32c_intel".to_string(), "Invalid argument".to_string())]
        );
        assert_eq!(
            *loaded.borrow(),
            [
                "virtio_pci_modern_dev",
                "virtio_pci_legacy_dev",
                "virtio_pci",
                "failover",
                "net_failover",
                "virtio_net",
                "virtio_blk",
                "crc32c_generic",
                "crc32c_intel",
                "crc16",
                "mbcache",
                "jbd2",
                "ext4"
            ]
        );
        assert_eq!(r.devices, 4);
        assert_eq!(r.unclaimed, 1);
        assert!(r.rounds >= 3 && r.rounds <= MAX_ROUNDS, "{}", r.rounds);
        assert_eq!(
            r.failed,
            vec![("failover".to_string(), "Invalid argument".to_string())]
        );
        assert_eq!(l.report.not_carried, vec!["vfat".to_string()]);
        assert!(
            r.summary().starts_with("loaded 6 modules for 4 devices"),
            "{}",
            r.summary()
        );
    }
}
