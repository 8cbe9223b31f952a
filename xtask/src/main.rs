//! xtask: `cargo xtask <command>`, everything around the product that a fresh machine needs.
//!
//! - `deps`: installs the Debian packages the tests use (QEMU, SeaBIOS, OVMF, iPXE, atftp…),
//!   only those missing, with apt-get (CI runs as root).
//! - `test`: deps, then formatting and clippy checks, then every test of the workspace
//!   (unit, real-server, TFTP and the QEMU firmware boot), in one `cargo test` run.
//! - `demo`: builds the server, starts it on embedded defaults and walks through an install
//!   request the way an operator would; later issues carry it to a real install in QEMU.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

mod bench;
mod bmclab;
mod deps;
mod e2e;
mod fuzz;
mod initramfs;
mod signals;
mod test_image;

/// Debian packages the test suite needs, with a file each provides (to check without dpkg).
pub const PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
    ("qemu-utils", "/usr/bin/qemu-img"),
    ("ipxe-qemu", "/usr/lib/ipxe/qemu/efi-virtio.rom"),
    ("seabios", "/usr/share/seabios/bios-256k.bin"),
    ("ovmf", "/usr/share/OVMF/OVMF_CODE_4M.fd"),
    ("ipxe", "/usr/lib/ipxe/ipxe.efi"),
    ("atftp", "/usr/bin/atftp"),
    ("dnsmasq-base", "/usr/sbin/dnsmasq"),
    ("zstd", "/usr/bin/zstd"),
    ("xz-utils", "/usr/bin/xz"),
    ("curl", "/usr/bin/curl"),
    ("cpio", "/usr/bin/cpio"),
    ("libarchive-tools", "/usr/bin/bsdtar"),
    ("gdisk", "/usr/sbin/sgdisk"),
    ("dosfstools", "/usr/sbin/fsck.vfat"),
    ("fdisk", "/usr/sbin/sfdisk"),
    // the TLS test makes its CA and certificate with it
    ("openssl", "/usr/bin/openssl"),
    // the storage layouts' filesystems on loop devices, and the tools the initramfs carries
    // (mkinitramfs/src/tools.rs) taken from this machine's packages
    ("xfsprogs", "/usr/sbin/mkfs.xfs"),
    ("btrfs-progs", "/usr/sbin/mkfs.btrfs"),
    ("mdadm", "/usr/sbin/mdadm"),
    ("lvm2", "/usr/sbin/lvm"),
    // libfuzzer-sys builds libFuzzer (C++) for `cargo xtask fuzz`
    ("g++", "/usr/bin/g++"),
    // Debian's python with venv: the official OVH client (PyPI's `ovh`) goes into target/py
    ("python3-venv", "/usr/lib/python3.11/ensurepip/__init__.py"),
    // the BMC e2e cases: a libvirt daemon runs their QEMU machine, sushy-tools (Redfish) and
    // virtualbmc (IPMI) drive it through Debian's libvirt bindings; ipmitool is byol's IPMI
    // client and the tests' reference one
    ("libvirt-daemon", "/usr/sbin/libvirtd"),
    (
        "libvirt-daemon-driver-qemu",
        "/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so",
    ),
    ("libvirt-clients", "/usr/bin/virsh"),
    (
        "python3-libvirt",
        "/usr/lib/python3/dist-packages/libvirt.py",
    ),
    ("ipmitool", "/usr/bin/ipmitool"),
];

/// The PyPI packages the tests drive byol with (pinned: a test's client does not change
/// under it), installed into `target/py`.
pub const PYTHON_PACKAGES: &[&str] = &["ovh==1.2.0", "sushy-tools==2.2.0", "virtualbmc==3.3.0"];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = signals::install() {
        eprintln!("xtask: cannot handle signals: {e:#}");
    }
    let res = match args.first().map(String::as_str) {
        Some("deps") => deps(),
        Some("test") => test(&args[1..]),
        Some("demo") => demo(),
        Some("e2e") => e2e::e2e_cmd(&args[1..]),
        Some("fuzz") => fuzz::fuzz_cmd(&args[1..]),
        Some("initramfs") => initramfs::initramfs(&args[1..]),
        Some("test-image") => test_image::test_image(&args[1..]),
        Some("bench") if args.get(1).map(String::as_str) == Some("layout") => {
            bench::layout(&args[2..])
        }
        Some("bench") if args.get(1).map(String::as_str) == Some("image") => {
            bench::image(&args[2..])
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n  deps   install the Debian packages the tests need (apt-get; root)\n  test   every check and test (what CI runs)\n  demo   start the server on embedded defaults and walk through an install request\n  initramfs   fetch the Debian kernel, build the static agent and target/byol/initramfs.cpio.zst\n  e2e    QEMU run: --firmware bios|uefi [--memory MiB] [--disk virtio|nvme|ahci], or --suite\n  fuzz   the libFuzzer targets of fuzz/: [--seconds N] [TARGET...] (60 s each by default)\n  test-image   build the Debian test image(s) the end-to-end runs install: [--table mbr|gpt] (target/test-image/)\n  bench image   the image engine against the guide's pipeline and qemu-img (figures in target/bench/)\n  bench layout   the layout install against OVH's pipeline (tmpfs, rsync -aHAX): `layout: ratio=R rss_mib=N`"
            );
            std::process::exit(2);
        }
    };
    // a signal stopped what the command waited for: the signal thread ends the process
    signals::wait_if_stopping();
    if let Err(e) = res {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

/// Where `cargo build --release` puts binaries (CARGO_TARGET_DIR is honoured).
pub fn release_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
        .join("release")
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let st = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(())
}

fn deps() -> anyhow::Result<()> {
    ensure_packages(PACKAGES)?;
    python_venv()
}

/// `target/py`: a venv of Debian's python3 with [`PYTHON_PACKAGES`] (and Debian's own python
/// packages: the libvirt bindings are Debian's, built for its libvirt); made again only when
/// the list changes (its marker file holds the list).
fn python_venv() -> anyhow::Result<()> {
    let dir = root().join("target/py");
    let marker = dir.join("byol-packages");
    let want = PYTHON_PACKAGES.join("\n");
    if std::fs::read_to_string(&marker).is_ok_and(|s| s == want) {
        eprintln!("xtask: python packages present in {}", dir.display());
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(&dir);
    run(Command::new("/usr/bin/python3")
        .args(["-m", "venv", "--system-site-packages"])
        .arg(&dir))
    .context("making the python venv for the OVH client (Debian's python3-venv)")?;
    run(Command::new(dir.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(PYTHON_PACKAGES))
    .context("installing the OVH client, sushy-tools and virtualbmc from PyPI into target/py")?;
    std::fs::write(&marker, want)?;
    Ok(())
}

/// Installs the packages of `list` whose file is missing (see [`deps`]).
pub fn ensure_packages(list: &[(&'static str, &'static str)]) -> anyhow::Result<()> {
    deps::ensure(list)
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// How long `cargo xtask test` runs each fuzz target (`cargo xtask fuzz` runs them longer).
const FUZZ_SECONDS_IN_TEST: u64 = 10;

fn test(extra: &[String]) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    deps()?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))
        .context("formatting: run `cargo fmt --all`")?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    let (mut passed, mut failed) = run_tests(
        cargo()
            .args(["test", "--workspace", "--all-targets"])
            .args(extra),
    )?;
    // the parsers of what the network and the images bring, from the committed corpus
    run(cargo().args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--", "--check"]))?;
    for r in fuzz::fuzz(FUZZ_SECONDS_IN_TEST, &[])? {
        if r.crash.is_some() {
            failed += 1;
        } else {
            passed += 1;
        }
    }
    // the machine side in QEMU, through the real iPXE path
    let (p, f) = e2e::suite()?;
    passed += p;
    failed += f;
    if failed > 0 {
        println!("xtask: {passed} passed, {failed} failed");
        bail!("{failed} QEMU end-to-end run(s) failed");
    }
    eprintln!(
        "xtask: every test passed in {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    // one closing line for the whole suite
    println!("xtask: {passed} passed, {failed} failed");
    Ok(())
}

/// Runs `cargo test`, echoing its output, and adds up its `test result:` lines.
fn run_tests(cmd: &mut Command) -> anyhow::Result<(u64, u64)> {
    use std::io::BufRead as _;
    eprintln!("xtask: running {cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let (mut passed, mut failed) = (0u64, 0u64);
    if let Some(out) = child.stdout.take() {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                passed += count_before(rest, "passed");
                failed += count_before(rest, "failed");
            }
        }
    }
    let st = child.wait()?;
    if !st.success() {
        println!("xtask: {passed} passed, {} failed", failed.max(1));
        bail!("{cmd:?} failed ({st})");
    }
    Ok((passed, failed))
}

/// In "ok. 12 passed; 0 failed; …", the number before `word`.
fn count_before(s: &str, word: &str) -> u64 {
    s.split(';')
        .find_map(|part| {
            let part = part
                .trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ");
            part.strip_suffix(word)?.trim().parse().ok()
        })
        .unwrap_or(0)
}

/// The main job on embedded defaults: the server on 127.0.0.1:8080, a QEMU machine that
/// network-boots the installer through iPXE, live progress, then the server stays up.
fn demo() -> anyhow::Result<()> {
    let mut case = e2e::default_case(e2e::Firmware::Bios);
    case.mac = "52:54:00:de:00:01".into();
    e2e::prepare(&[case.image()])?;
    let dir = root().join("target/demo");
    std::fs::create_dir_all(&dir)?;
    let http = "127.0.0.1:8080";
    eprintln!("xtask: starting byol serve on http://{http} (TFTP on 127.0.0.1:6969)");
    let mut server = e2e::start_server_on(&dir, http, "127.0.0.1:6969", None)?;
    let res = e2e::run_case_on(&case, &mut server, &dir);
    match &res {
        Ok(o) => e2e::report(&case, o),
        Err(e) => eprintln!(
            "xtask: demo run failed: {e:#} (serial log: {})",
            dir.join("serial.log").display()
        ),
    }
    res?;
    eprintln!(
        "\nxtask: the VM network-booted the installer, which wrote the test image to its disk, rebooted\n\
         xtask: into the installed system (local-boot answer from the server) and printed its marker.\n\
         xtask: the server stays up on http://{http}: GET /healthz, /metrics, /boot.ipxe, /ipxe/52:54:00:de:00:01,\n\
         xtask:   and the API with the token in {} — e.g.\n\
         xtask:   target/release/byol install status e2e --data-dir {}\n\
         xtask: the VM's serial log is {}. Press Ctrl-C to stop the server.",
        server.data.join("admin-token").display(),
        server.data.display(),
        dir.join("serial.log").display()
    );
    server.wait()?;
    Ok(())
}
