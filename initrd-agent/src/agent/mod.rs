//! agent: byol-agent as PID 1 of the initramfs. The kernel starts it as `/init`; it mounts
//! what a system needs ([`init`]), shows every line on every console ([`console`]), reads the
//! command line iPXE wrote ([`cmdline`]), loads drivers by modalias ([`modules`]), joins the
//! network ([`net`], [`dhcp`]), fetches its config and reports to the server ([`client`]),
//! lists the disks ([`disks`]), installs ([`install`]), phase after phase ([`run`]), and ends
//! the machine: a reboot into the installed system, or the install's failure action
//! ([`init::end`]). It never exits and never panics its way out.

pub mod client;
pub mod cmdline;
pub mod console;
pub mod dhcp;
pub mod disks;
pub mod init;
pub mod install;
pub mod modules;
pub mod net;
pub mod run;
pub mod step;

use std::path::Path;

/// Whether this process is the machine's init: PID 1, or started under a name ending in
/// `init` (`/init`, `/sbin/init`), e.g. by a test harness that is not PID 1.
pub fn is_init(pid: u32, argv0: &str) -> bool {
    let name = Path::new(argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    pid == 1 || name.ends_with("init")
}

/// [`is_init`] for this process.
pub fn running_as_init() -> bool {
    let argv0 = std::env::args_os()
        .next()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    is_init(std::process::id(), &argv0)
}

/// PID 1: everything, then the end. Never returns.
pub fn run_pid1() -> ! {
    init::install_panic_hook();
    init::mount_early();
    fix_std_fds();
    let text = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let consoles = cmdline::console_devices(&cmdline::Cmdline::parse(&text));
    let opened = console::open(&consoles, Path::new("/dev"));
    console::say(format!("consoles: {}", opened.join(", ")));
    init::start_reaper();
    let outcome = run::run(&run::RunOptions::pid1(text));
    match outcome {
        run::Outcome::Installed { message } => {
            init::end(byol_spec::FailureAction::Reboot { seconds: 0 }, &message)
        }
        run::Outcome::Idle { action, message } => init::end(action, &message),
        run::Outcome::Failed {
            action,
            phase,
            message,
        } => init::end(action, &format!("FATAL ({phase}): {message}")),
    }
}

/// When the kernel found no /dev/console in the initramfs, init starts with fds 0-2 closed:
/// point them at the console now that devtmpfs is mounted, so that nothing else lands there.
fn fix_std_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only asks whether the descriptor is open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            continue;
        }
        // SAFETY: open with a valid C string; dup2 onto the closed slot.
        unsafe {
            let c = libc::open(c"/dev/console".as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
            if c < 0 {
                return;
            }
            if c != fd {
                libc::dup2(c, fd);
                libc::close(c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_detection() {
        assert!(is_init(1, "/usr/bin/byol-agent"));
        assert!(is_init(4242, "/init"));
        assert!(is_init(4242, "/sbin/init"));
        assert!(is_init(4242, "init"));
        assert!(!is_init(4242, "/usr/bin/byol-agent"));
        assert!(!is_init(4242, "/tmp/init/byol-agent"));
        assert!(!is_init(4242, ""));
    }
}
