//! Helpers shared by the integration tests (`mod common;`).
#![allow(dead_code)]

pub mod httpd;

/// Runs a tool the tests make images with (qemu-img, qemu-io…) and panics with its output if
/// it fails. qemu-img's LUKS set-up times PBKDF2 by the thread's CPU time and gives up with
/// "Unable to get accurate CPU usage" when the clock did not move, which a busy 2-core machine
/// provokes (seen in clean-clone runs): that is qemu-img measuring, not the image, so it is
/// asked again, a few times.
pub fn run_tool(program: &str, args: &[&str]) {
    let go = || {
        std::process::Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program} (cargo xtask test installs it): {e}"))
    };
    let mut out = go();
    for _ in 0..5 {
        if out.status.success()
            || !String::from_utf8_lossy(&out.stderr).contains("Unable to get accurate CPU usage")
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        out = go();
    }
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
