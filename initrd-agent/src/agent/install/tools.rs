//! tools: the Debian programs whose job it is (mdadm, lvm, mkfs.*, mkswap), run directly —
//! no shell — with their exit status checked and their stderr in the error, escaped and cut.
//! Each is looked up in the initramfs's `/usr/sbin`, `/sbin`, `/usr/bin`, `/bin` (the host's
//! for tests), so that a missing one is named as missing, not as a failed spawn.

use std::os::unix::process::ExitStatusExt as _;
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
        "mkfs.ext4" | "resize2fs" | "e2fsck" | "e2image" => "e2fsprogs",
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
    let mut child = Command::new(&path)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    let (mut out_pipe, mut err_pipe) = (child.stdout.take(), child.stderr.take());
    // stderr on its own thread: a tool that fills one pipe while we read the other never blocks
    let err_thread = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(p) = err_pipe.as_mut() {
            let _ = std::io::Read::read_to_end(p, &mut b);
        }
        b
    });
    let mut stdout = Vec::new();
    if let Some(p) = out_pipe.as_mut() {
        let _ = std::io::Read::read_to_end(p, &mut stdout);
    }
    let stderr_bytes = err_thread.join().unwrap_or_default();
    let code = match child.wait() {
        Ok(st) => st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0)),
        // in PID 1 the reaper thread may have collected it first: its status is kept there
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
            crate::agent::init::wait_child(child.id(), std::time::Duration::from_secs(60))
                .ok_or_else(|| format!("{name} ended but its exit status was lost"))?
        }
        Err(e) => return Err(format!("cannot wait for {name}: {e}")),
    };
    if ok.contains(&code) {
        return Ok(String::from_utf8_lossy(&stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&stderr_bytes);
    let stderr = stderr.trim();
    let mut cut = stderr.len().min(STDERR_MAX);
    while !stderr.is_char_boundary(cut) {
        cut -= 1;
    }
    Err(format!(
        "`{name} {}` failed (exit status: {code}): {}",
        args.join(" "),
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
