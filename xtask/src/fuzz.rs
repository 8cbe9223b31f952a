//! `cargo xtask fuzz [--seconds N] [TARGET…]`: the libFuzzer targets of `fuzz/` (cargo-fuzz
//! layout), each run for N seconds (default 60) from its committed corpus (`fuzz/corpus/T`, read
//! only) plus what earlier runs found (`target/fuzz/corpus/T`, where new inputs go), two at a
//! time. Ends with `fuzz: T targets, E executions, C crashes`; a crash leaves its input under
//! `target/fuzz/artifacts/T/` and the command fails with the line that replays it.
//!
//! cargo-fuzz is installed under `target/cargo-fuzz/` (pinned, `--locked`) the first time. The
//! build is `cargo fuzz build -O -s none`: no AddressSanitizer, which needs a nightly compiler,
//! and debug assertions and overflow checks set per package in `fuzz/Cargo.toml`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, bail};

use crate::{root, run};

/// The targets, with the largest input each is given (libFuzzer's `-max_len`).
pub const TARGETS: [(&str, usize); 6] = [
    ("qcow2", 128 << 10),
    ("partition_table", 64 << 10),
    ("install_request", 16 << 10),
    ("tftp_request", 1 << 10),
    ("dhcp", 2 << 10),
    ("cmdline", 4 << 10),
];

const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// What one target's run gave.
#[derive(Debug, Default)]
pub struct Run {
    pub name: &'static str,
    pub executions: u64,
    /// libFuzzer's coverage counters: edges (`cov`) and features (`ft`) reached.
    pub cov: u64,
    pub features: u64,
    pub corpus: u64,
    pub seconds: f64,
    /// The crash's input and libFuzzer's report, when it found one.
    pub crash: Option<String>,
}

pub fn fuzz_cmd(args: &[String]) -> anyhow::Result<()> {
    let mut seconds = 60u64;
    let mut only = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = it
                    .next()
                    .context("--seconds needs a value")?
                    .parse()
                    .context("--seconds N: a whole number of seconds")?;
            }
            t if TARGETS.iter().any(|(n, _)| *n == t) => only.push(t.to_string()),
            other => bail!(
                "unknown argument {other}: cargo xtask fuzz [--seconds N] [{}]",
                TARGETS.map(|(n, _)| n).join("|")
            ),
        }
    }
    let runs = fuzz(seconds, &only)?;
    let crashes = runs.iter().filter(|r| r.crash.is_some()).count();
    if crashes > 0 {
        bail!("{crashes} fuzz target(s) crashed");
    }
    Ok(())
}

/// Builds and runs the targets (all when `only` is empty) for `seconds` each; prints a line per
/// target and the summary line.
pub fn fuzz(seconds: u64, only: &[String]) -> anyhow::Result<Vec<Run>> {
    let cargo_fuzz = ensure_cargo_fuzz()?;
    let dir = root().join("target/fuzz");
    run(Command::new(&cargo_fuzz)
        .current_dir(root())
        .args(["build", "-O", "-s", "none", "--codegen-units", "16"])
        .arg("--target-dir")
        .arg(&dir))?;
    let targets: Vec<(&'static str, usize)> = TARGETS
        .into_iter()
        .filter(|(n, _)| only.is_empty() || only.iter().any(|o| o == n))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let runs = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while let Some(&(name, max_len)) =
                    targets.get(next.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
                {
                    let r = run_target(&dir, name, max_len, seconds).unwrap_or_else(|e| Run {
                        name,
                        crash: Some(format!("{e:#}")),
                        ..Run::default()
                    });
                    report(&r);
                    runs.lock().unwrap_or_else(|p| p.into_inner()).push(r);
                }
            });
        }
    });
    let mut runs = runs.into_inner().unwrap_or_else(|p| p.into_inner());
    runs.sort_by_key(|r| TARGETS.iter().position(|(n, _)| *n == r.name));
    let executions: u64 = runs.iter().map(|r| r.executions).sum();
    let crashes = runs.iter().filter(|r| r.crash.is_some()).count();
    println!(
        "fuzz: {} targets, {executions} executions, {crashes} crashes",
        runs.len()
    );
    Ok(runs)
}

fn report(r: &Run) {
    let outcome = match &r.crash {
        None => "no crash".to_string(),
        Some(c) => format!("CRASH: {c}"),
    };
    println!(
        "fuzz[{}]: {} executions in {:.0} s, cov {} ft {}, corpus {}: {outcome}",
        r.name, r.executions, r.seconds, r.cov, r.features, r.corpus
    );
}

/// cargo-fuzz under target/cargo-fuzz, installed when missing or of another version.
fn ensure_cargo_fuzz() -> anyhow::Result<PathBuf> {
    let prefix = root().join("target/cargo-fuzz");
    let bin = prefix.join("bin/cargo-fuzz");
    let version = Command::new(&bin)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if version.as_deref() != Some(&format!("cargo-fuzz {CARGO_FUZZ_VERSION}")) {
        run(crate::cargo()
            .args(["install", "cargo-fuzz", "--locked", "--version"])
            .arg(CARGO_FUZZ_VERSION)
            .arg("--root")
            .arg(&prefix))?;
    }
    Ok(bin)
}

fn run_target(dir: &Path, name: &'static str, max_len: usize, seconds: u64) -> anyhow::Result<Run> {
    let bin = dir.join("x86_64-unknown-linux-gnu/release").join(name);
    let found = dir.join("corpus").join(name);
    let artifacts = dir.join("artifacts").join(name);
    for d in [&found, &artifacts] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let seeds = root().join("fuzz/corpus").join(name);
    let log = dir.join(format!("{name}.log"));
    let mut cmd = Command::new(&bin);
    cmd.arg(format!("-max_total_time={seconds}"))
        .arg(format!("-max_len={max_len}"))
        // an input that takes 10 s, or 2 GiB, is a finding too
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(&found)
        .arg(&seeds)
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?,
        );
    let t0 = Instant::now();
    let st = cmd
        .status()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let mut r = parse_log(name, &text);
    r.seconds = t0.elapsed().as_secs_f64();
    if !st.success() {
        let input = std::fs::read_dir(&artifacts)
            .ok()
            .and_then(|d| {
                d.filter_map(Result::ok)
                    .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
            })
            .map(|e| e.path());
        let why = text
            .lines()
            .find(|l| l.contains("panicked at") || l.contains("ERROR: libFuzzer"))
            .unwrap_or("see the log");
        r.crash = Some(match input {
            Some(i) => format!(
                "{why} (exit {st}); replay: {} {}; log {}",
                bin.display(),
                i.display(),
                log.display()
            ),
            None => format!("{why} (exit {st}); log {}", log.display()),
        });
    }
    Ok(r)
}

/// The figures of a libFuzzer log: `stat::number_of_executed_units` and the last status line's
/// `cov:`, `ft:` and `corp:`.
fn parse_log(name: &'static str, text: &str) -> Run {
    let mut r = Run {
        name,
        ..Run::default()
    };
    let field = |line: &str, key: &str| -> Option<u64> {
        let rest = line.split(key).nth(1)?.trim_start();
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    for line in text.lines() {
        if let Some(n) = line
            .strip_prefix("stat::number_of_executed_units:")
            .and_then(|v| v.trim().parse().ok())
        {
            r.executions = n;
        }
        if line.starts_with('#') && line.contains("cov: ") {
            r.cov = field(line, "cov:").unwrap_or(r.cov);
            r.features = field(line, "ft:").unwrap_or(r.features);
            r.corpus = field(line, "corp:").unwrap_or(r.corpus);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_figures() {
        let log = "INFO: seed corpus: files: 8\n\
                   #2\tINITED cov: 380 ft: 381 corp: 1/1b exec/s: 0 rss: 27Mb\n\
                   #667567\tDONE   cov: 1012 ft: 3221 corp: 740/3567Kb lim: 109248 exec/s: 74174\n\
                   stat::number_of_executed_units: 667567\n\
                   stat::peak_rss_mb:              34\n";
        let r = parse_log("qcow2", log);
        assert_eq!(
            (r.executions, r.cov, r.features, r.corpus),
            (667567, 1012, 3221, 740)
        );
        assert_eq!(parse_log("x", "").executions, 0);
    }
}
