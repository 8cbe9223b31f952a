//! The two index files the agent reads to load modules without modules.dep or modprobe,
//! both in `/lib/modules/<kver>/` of the initramfs: their exact format, writer, parser, and the
//! modalias glob matching the agent must apply.
//!
//! # `byol-modules.txt`
//!
//! UTF-8 text, one module per line, lines ended by `\n`. Lines that are empty or start with `#`
//! are comments (the first line is `# byol-modules v1: name path depends softdeps`). Every other
//! line has exactly four fields separated by one space:
//!
//! ```text
//! <name> <path> <depends> <softdeps>
//! virtio_blk kernel/drivers/block/virtio_blk.ko virtio,virtio_ring -
//! ext4 kernel/fs/ext4/ext4.ko crc16,jbd2,mbcache crc32c_generic,crc32c_intel
//! ```
//!
//! - `name`: the module's name with `_`, never `-` (as the kernel names it in /proc/modules).
//! - `path`: the `.ko` file (uncompressed) relative to `/lib/modules/<kver>/`.
//! - `depends`: comma-separated names of modules that must be loaded first (they provide
//!   symbols; a failure to load one makes this one fail too), or `-` for none.
//! - `softdeps`: comma-separated names of modules to try to load first, best effort (the
//!   module's `softdep=pre:`, resolved to modules of this file: e.g. ext4's `crypto-crc32c`
//!   becomes `crc32c_generic,crc32c_intel`; `crc32c_intel` fails on CPUs without SSE4.2,
//!   which is fine), or `-` for none.
//!
//! Every name in `depends` and `softdeps` has its own line. Lines are in a load order: each
//! module comes after everything in its `depends` and `softdeps` (softdep cycles excepted), so
//! loading the whole file top to bottom works, and so does loading one module after its
//! dependencies, recursively. A module already loaded (`EEXIST`) counts as loaded.
//!
//! # `byol-aliases.txt`
//!
//! Same comment rules (first line `# byol-aliases v1: pattern module`); every other line has
//! exactly two fields separated by one space:
//!
//! ```text
//! <pattern> <module>
//! pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
//! virtio:d00000002v* virtio_blk
//! fs-ext4 ext4
//! ```
//!
//! - `pattern`: a module's `alias=` value as the module declares it: a glob over a device's
//!   modalias (`/sys/…/modalias`, uevent `MODALIAS=`) with fnmatch(3) rules and no flags: `*`
//!   any run of characters (`/` included), `?` one character, `[abc]`, `[a-z]`, `[!a]`/`[^a]`
//!   classes; everything else literal, case-sensitive. Patterns never contain spaces.
//!   Non-device aliases (`fs-ext4`, `crypto-crc32c`, `char-major-10-234`) are there too.
//! - `module`: a name that has a line in `byol-modules.txt`.
//!
//! Lines are sorted (by pattern, then module) and unique. For a device, load every module one
//! of whose patterns matches its modalias (as `modprobe <modalias>` does), see [`lookup`].

use crate::Error;

/// File name of the module list, in `/lib/modules/<kver>/`.
pub const MODULES_FILE: &str = "byol-modules.txt";
/// File name of the alias table, in `/lib/modules/<kver>/`.
pub const ALIASES_FILE: &str = "byol-aliases.txt";
const MODULES_HEADER: &str = "# byol-modules v1: name path depends softdeps";
const ALIASES_HEADER: &str = "# byol-aliases v1: pattern module";

/// One line of `byol-modules.txt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleLine {
    pub name: String,
    /// Relative to `/lib/modules/<kver>/`.
    pub path: String,
    pub depends: Vec<String>,
    pub softdeps: Vec<String>,
}

/// One line of `byol-aliases.txt`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AliasLine {
    pub pattern: String,
    pub module: String,
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

fn check_field(s: &str, what: &str) -> Result<(), Error> {
    if s.is_empty() || s.contains(char::is_whitespace) || s.starts_with('#') {
        return Err(Error::Index(format!("{what} {s:?} cannot be written")));
    }
    Ok(())
}

/// `byol-modules.txt` for `lines`, in the order given (which must be a load order).
pub fn write_modules(lines: &[ModuleLine]) -> Result<String, Error> {
    let mut out = format!("{MODULES_HEADER}\n");
    for l in lines {
        check_field(&l.name, "module name")?;
        check_field(&l.path, "module path")?;
        for d in l.depends.iter().chain(&l.softdeps) {
            check_field(d, "dependency")?;
            if d.contains(',') {
                return Err(Error::Index(format!("dependency {d:?} cannot be written")));
            }
        }
        out.push_str(&format!(
            "{} {} {} {}\n",
            l.name,
            l.path,
            list(&l.depends),
            list(&l.softdeps)
        ));
    }
    Ok(out)
}

/// `byol-aliases.txt` for `lines` (sorted and deduplicated here).
pub fn write_aliases(lines: &[AliasLine]) -> Result<String, Error> {
    let mut sorted = lines.to_vec();
    sorted.sort();
    sorted.dedup();
    let mut out = format!("{ALIASES_HEADER}\n");
    for l in &sorted {
        check_field(&l.pattern, "alias")?;
        check_field(&l.module, "module name")?;
        out.push_str(&format!("{} {}\n", l.pattern, l.module));
    }
    Ok(out)
}

fn data_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

fn parse_list(s: &str) -> Vec<String> {
    if s == "-" {
        Vec::new()
    } else {
        s.split(',').map(str::to_owned).collect()
    }
}

/// Parses `byol-modules.txt`.
pub fn parse_modules(text: &str) -> Result<Vec<ModuleLine>, Error> {
    data_lines(text)
        .map(|(n, l)| {
            let f: Vec<&str> = l.split(' ').collect();
            let [name, path, deps, soft] = f[..] else {
                return Err(Error::Index(format!(
                    "{MODULES_FILE} line {n}: want 4 fields, got {l:?}"
                )));
            };
            Ok(ModuleLine {
                name: name.into(),
                path: path.into(),
                depends: parse_list(deps),
                softdeps: parse_list(soft),
            })
        })
        .collect()
}

/// Parses `byol-aliases.txt`.
pub fn parse_aliases(text: &str) -> Result<Vec<AliasLine>, Error> {
    data_lines(text)
        .map(|(n, l)| match l.split(' ').collect::<Vec<_>>()[..] {
            [pattern, module] => Ok(AliasLine {
                pattern: pattern.into(),
                module: module.into(),
            }),
            _ => Err(Error::Index(format!(
                "{ALIASES_FILE} line {n}: want 2 fields, got {l:?}"
            ))),
        })
        .collect()
}

/// The modules to load for a device whose modalias is `modalias` (sorted, unique).
pub fn lookup<'a>(aliases: &'a [AliasLine], modalias: &str) -> Vec<&'a str> {
    let mut out: Vec<&str> = aliases
        .iter()
        .filter(|a| glob_match(&a.pattern, modalias))
        .map(|a| a.module.as_str())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// fnmatch(3) with no flags: `*`, `?`, `[…]` (ranges, `!`/`^` negation); `\` is literal.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // position after the last `*` and the text position it is trying
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match p.get(pi) {
            Some(b'*') => {
                star = Some((pi + 1, ti));
                pi += 1;
                continue;
            }
            Some(b'?') => Some(pi + 1),
            Some(b'[') => match class(p, pi, t[ti]) {
                Some((true, next)) => Some(next),
                Some((false, _)) => None,
                // an unclosed `[` is a literal
                None => (t[ti] == b'[').then_some(pi + 1),
            },
            Some(c) => (*c == t[ti]).then_some(pi + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                pi = next;
                ti += 1;
            }
            (None, Some((sp, st))) => {
                pi = sp;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            (None, None) => return false,
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

/// Matches `c` against the class starting at `p[at] == b'['`: (matched, index after `]`),
/// or `None` if the class is not closed.
fn class(p: &[u8], at: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = at + 1;
    let negate = matches!(p.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *p.get(i)?;
        if lo == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if p.get(i + 1) == Some(&b'-') && p.get(i + 2).is_some_and(|h| *h != b']') {
            let hi = p[i + 2];
            matched |= lo <= c && c <= hi;
            i += 3;
        } else {
            matched |= lo == c;
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_rules() {
        let pci = "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00";
        assert!(glob_match("pci:v00001AF4d*sv*sd*bc*sc*i*", pci));
        assert!(glob_match("pci:v00001AF4d00001001sv*sd*bc*sc*i*", pci));
        assert!(!glob_match("pci:v00001AF4d00001000sv*sd*bc*sc*i*", pci));
        assert!(!glob_match("pci:v00001af4d*sv*sd*bc*sc*i*", pci));
        assert!(glob_match(
            "pci:v*d*sv*sd*bc01sc06i01*",
            "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"
        ));
        assert!(glob_match(
            "virtio:d00000002v*",
            "virtio:d00000002v00001AF4"
        ));
        assert!(!glob_match(
            "virtio:d00000002v*",
            "virtio:d00000001v00001AF4"
        ));
        assert!(glob_match("a?c", "abc") && !glob_match("a?c", "ac"));
        assert!(glob_match("x[0-9]y", "x5y") && !glob_match("x[0-9]y", "xay"));
        assert!(glob_match("x[!0-9]y", "xay") && glob_match("x[^a]y", "xby"));
        assert!(glob_match("x[]]y", "x]y"));
        assert!(glob_match("x[ab", "x[ab"));
        assert!(glob_match("*", "") && glob_match("**a**", "bab"));
        assert!(!glob_match("fs-ext4", "fs-ext3") && glob_match("fs-ext4", "fs-ext4"));
        assert!(glob_match("*ab*ab", "xxabyyabab"));
    }

    #[test]
    fn formats_round_trip_exactly() {
        let mods = vec![
            ModuleLine {
                name: "virtio".into(),
                path: "kernel/drivers/virtio/virtio.ko".into(),
                depends: vec![],
                softdeps: vec![],
            },
            ModuleLine {
                name: "ext4".into(),
                path: "kernel/fs/ext4/ext4.ko".into(),
                depends: vec!["jbd2".into(), "mbcache".into()],
                softdeps: vec!["crc32c_generic".into()],
            },
        ];
        let text = write_modules(&mods).unwrap();
        assert_eq!(
            text,
            "# byol-modules v1: name path depends softdeps\nvirtio kernel/drivers/virtio/virtio.ko - -\next4 kernel/fs/ext4/ext4.ko jbd2,mbcache crc32c_generic\n"
        );
        assert_eq!(parse_modules(&text).unwrap(), mods);
        let aliases = vec![
            AliasLine {
                pattern: "virtio:d00000002v*".into(),
                module: "virtio_blk".into(),
            },
            AliasLine {
                pattern: "fs-ext4".into(),
                module: "ext4".into(),
            },
        ];
        let text = write_aliases(&aliases).unwrap();
        assert_eq!(
            text,
            "# byol-aliases v1: pattern module\nfs-ext4 ext4\nvirtio:d00000002v* virtio_blk\n"
        );
        let back = parse_aliases(&text).unwrap();
        assert_eq!(lookup(&back, "virtio:d00000002v00001AF4"), ["virtio_blk"]);
        assert!(lookup(&back, "virtio:d00000001v00001AF4").is_empty());
        assert!(parse_modules("a b c\n").is_err());
        assert!(parse_aliases("a\n").is_err());
        assert!(
            write_aliases(&[AliasLine {
                pattern: "a b".into(),
                module: "m".into()
            }])
            .is_err()
        );
    }
}
