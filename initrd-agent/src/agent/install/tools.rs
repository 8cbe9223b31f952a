//! tools: the Debian programs whose job it is (mdadm, lvm, mkfs.*, mkswap), run directly —
//! no shell — with their exit status checked and their stderr in the error, escaped and cut.
//! Each is looked up in the initramfs's `/usr/sbin`, `/sbin`, `/usr/bin`, `/bin` (the host's
//! for tests), so that a missing one is named as missing, not as a failed spawn.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use byol_spec::text::escape_control;

const DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// The most of a tool's stderr an error carries.
const STDERR_MAX: usize = 2000;

/// Where `name` is, or an error naming the package that has it.
pub fn find(name: &str) -> Result<PathBuf, String> {
    DIRS.iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "{name} is not in this initramfs (build it with the `datacenter` or `qemu` \
                 profile, which carry {})",
                package_of(name)
            )
        })
}

fn package_of(name: &str) -> &'static str {
    match name {
        "mdadm" => "mdadm",
        "lvm" => "lvm2",
        "mkfs.ext4" | "resize2fs" | "e2fsck" => "e2fsprogs",
        "mkfs.xfs" | "xfs_growfs" => "xfsprogs",
        "mkfs.btrfs" | "btrfs" => "btrfs-progs",
        "mkswap" | "wipefs" => "util-linux",
        _ => "it",
    }
}

/// Runs `name args…`; Ok: its stdout. Err: what ran, the exit status and its stderr.
pub fn run(name: &str, args: &[&str]) -> Result<String, String> {
    run_env(name, args, &[])
}

/// [`run`] with environment variables added.
pub fn run_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Result<String, String> {
    run_full(name, args, env, &[0])
}

/// [`run`] where the exit codes in `ok` are success too (e2fsck: 1 = errors fixed).
pub fn run_ok(name: &str, args: &[&str], ok: &[i32]) -> Result<String, String> {
    run_full(name, args, &[], ok)
}

fn run_full(name: &str, args: &[&str], env: &[(&str, &str)], ok: &[i32]) -> Result<String, String> {
    let path = find(name)?;
    let out = Command::new(&path)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    if out.status.code().is_some_and(|c| ok.contains(&c)) {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr = stderr.trim();
    let mut cut = stderr.len().min(STDERR_MAX);
    while !stderr.is_char_boundary(cut) {
        cut -= 1;
    }
    Err(format!(
        "`{name} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        escape_control(&stderr[..cut])
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_says_what_ran_and_its_stderr() {
        let e = run("ls", &["/no/such/dir"]).unwrap_err();
        assert!(
            e.starts_with("`ls /no/such/dir` failed (exit status: 2): "),
            "{e}"
        );
        assert!(e.contains("No such file or directory"), "{e}");
        assert_eq!(run("true", &[]).unwrap(), "");
        let e = find("no-such-tool").unwrap_err();
        assert!(
            e.starts_with("no-such-tool is not in this initramfs"),
            "{e}"
        );
    }
}
