//! `cargo xtask bench image`: byol's image engine against the OVH guide's pipeline and against
//! qemu-img, on one real OS image (Debian, built with debootstrap, cached under target/bench/)
//! served by `byol serve` over loopback HTTP, sha512 verification on:
//!
//! - A: `byol-agent image write` (one pass: download, verify, convert);
//! - B: the guide's pipeline: curl into tmpfs, `sha512sum`, `qemu-img convert -O raw`;
//! - C: `qemu-img convert` reading over HTTP itself (no verification).
//!
//! Wall time and peak RSS (GNU time) for each, tmpfs use for B, and A's peak RSS again on the
//! same image grown to a 20 GiB virtual size. Figures go to target/bench/image.md and .json.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail, ensure};

use crate::{cargo, ensure_packages, root, run};

pub(crate) const BENCH_PACKAGES: &[(&str, &str)] = &[
    ("debootstrap", "/usr/sbin/debootstrap"),
    ("openssl", "/usr/bin/openssl"),
    ("fdisk", "/usr/sbin/sfdisk"),
    ("e2fsprogs", "/usr/sbin/mke2fs"),
    ("time", "/usr/bin/time"),
    ("curl", "/usr/bin/curl"),
    (
        "qemu-block-extra",
        "/usr/lib/x86_64-linux-gnu/qemu/block-curl.so",
    ),
];

/// What goes into the image besides minbase: a kernel, bootloaders, cloud-init and a
/// toolchain, to make a real image of over 1 GB.
const INCLUDE: &str = "linux-image-amd64,grub-pc-bin,grub-efi-amd64-bin,cloud-init,openssh-server,\
python3,python3-cffi-backend,perl,gcc,g++,make,clang,git,vim,locales,man-db,curl,ca-certificates,e2fsprogs";

pub fn image(_args: &[String]) -> anyhow::Result<()> {
    ensure_packages(crate::PACKAGES)?;
    ensure_packages(BENCH_PACKAGES)?;
    let dir = root().join("target/bench");
    let images = dir.join("images");
    std::fs::create_dir_all(&images)?;
    let img = os_image(&dir, &images)?;
    let img_len = std::fs::metadata(&img)?.len();
    let sha = sha512(&img)?;
    let big = images.join("debian-20g.qcow2");
    if !big.exists() {
        run(Command::new("cp")
            .args(["--reflink=auto"])
            .arg(&img)
            .arg(&big))?;
        run(Command::new("qemu-img")
            .args(["resize", "-f", "qcow2"])
            .arg(&big)
            .arg("20G"))?;
    }
    let big_sha = sha512(&big)?;
    let vsize = virtual_size(&img)?;

    let bin = build_release()?;
    let (mut server, port) = start_server(&bin.join("byol"), &dir, &images)?;
    let url = |name: &str| format!("http://127.0.0.1:{port}/images/{name}");
    let res = (|| -> anyhow::Result<()> {
        // the image in the page cache for every run alike
        run(Command::new("cat").arg(&img).stdout(Stdio::null()))?;
        // outputs in tmpfs: the disk under target/ (and its writeback of earlier runs' gigabytes)
        // must not decide the figures. Only one output at a time: each is hashed, deleted, and
        // its hash compared with C's (a second 3 GiB file in tmpfs slowed the next run by half)
        let out = |n: &str| PathBuf::from(format!("/dev/shm/byol-bench-out-{n}.raw"));
        let agent = bin.join("byol-agent");
        let shm = PathBuf::from("/dev/shm/byol-bench.qcow2");
        let digest = |n: &str| -> anyhow::Result<String> {
            let o = Command::new("sha256sum").arg(out(n)).output()?;
            let _ = std::fs::remove_file(out(n));
            ensure!(o.status.success(), "sha256sum of output {n} failed");
            Ok(String::from_utf8(o.stdout)?
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string())
        };

        // qemu-img 7.2's curl driver sometimes stalls at the end with every connection idle
        // (its output complete, the process never exiting): such a run is cut at 60 s, counted,
        // and run again, up to 5 times
        let mut c_stalls = 0;
        let c = loop {
            match timed(
                "C",
                &dir,
                Command::new("timeout")
                    .args(["60", "qemu-img", "convert", "-f", "qcow2", "-O", "raw"])
                    .arg(url("debian.qcow2"))
                    .arg(out("c")),
            ) {
                Ok(r) => break r,
                Err(e) if c_stalls < 4 => {
                    eprintln!("xtask: bench C stalled ({e:#}): again");
                    c_stalls += 1;
                }
                Err(e) => return Err(e.context("qemu-img stalled 5 times")),
            }
        };
        let c_sum = digest("c")?;
        let same_as_c = |n: &str| -> anyhow::Result<()> {
            ensure!(digest(n)? == c_sum, "output {n} differs from qemu-img's");
            Ok(())
        };
        // `byol-agent image write` of `image` to `target`, sha512-verified when `sum` is given
        let write = |image: &str, target: &Path, sum: Option<&str>| {
            let mut c = Command::new(&agent);
            c.args(["image", "write", "--source", &url(image), "--target"])
                .arg(target);
            if let Some(sum) = sum {
                c.args(["--checksum", sum, "--checksum-type", "sha512"]);
            }
            c
        };
        let a = timed("A", &dir, &mut write("debian.qcow2", &out("a"), Some(&sha)))?;
        same_as_c("a")?;
        let b_script = format!(
            "set -e; curl -sSf -o {shm} {u}; echo \"{sha}  {shm}\" | sha512sum -c --quiet; du -k {shm} | cut -f1 > {dir}/tmpfs-kib; qemu-img convert -f qcow2 -O raw {shm} {out}; rm -f {shm}",
            shm = shm.display(),
            u = url("debian.qcow2"),
            dir = dir.display(),
            out = out("b").display()
        );
        let b = timed("B", &dir, Command::new("sh").args(["-c", &b_script]))?;
        let tmpfs_kib: u64 = std::fs::read_to_string(dir.join("tmpfs-kib"))?
            .trim()
            .parse()
            .unwrap_or(0);
        same_as_c("b")?;
        // the engine alone, without the checksum, and the checksum alone
        let a0 = timed(
            "A without checksum",
            &dir,
            &mut write("debian.qcow2", &out("a0"), None),
        )?;
        same_as_c("a0")?;
        let h = timed(
            "sha512 alone",
            &dir,
            Command::new("openssl").args(["dgst", "-sha512"]).arg(&img),
        )?;
        let big_out = out("20g");
        let a20 = timed(
            "A 20 GiB",
            &dir,
            &mut write("debian-20g.qcow2", &big_out, Some(&big_sha)),
        )?;
        let _ = std::fs::remove_file(&big_out);

        let mib = |kib: u64| kib as f64 / 1024.0;
        let md = format!(
            "# cargo xtask bench image\n\n\
             Image: Debian 12 built with debootstrap ({INCLUDE}), GPT + ext4, qcow2 file {:.2} GB, \
             virtual {:.2} GiB; served by `byol serve` on 127.0.0.1; sha512 verified by A and B; \
             every output in tmpfs, its sha256 compared with that of C's output.\n\n\
             | run | what | wall s | peak RSS MiB |\n|---|---|---|---|\n\
             | A | byol-agent image write (download + sha512 + convert, one pass) | {:.2} | {:.1} |\n\
             | B | curl to tmpfs; sha512sum; qemu-img convert (tmpfs peak {:.0} MiB) | {:.2} | {:.1} |\n\
             | C | qemu-img convert over HTTP, no verification ({c_stalls} stalled runs cut at 60 s before this one) | {:.2} | {:.1} |\n\
             | A0 | A without a checksum: the engine alone | {:.2} | {:.1} |\n\
             | H | sha512 of the file alone (openssl dgst, from the page cache): the floor of any verified run | {:.2} | {:.1} |\n\
             | A 20 GiB | A on the same image grown to 20 GiB virtual | {:.2} | {:.1} |\n\n\
             A/B = {:.2} (target ≤ 0.5), A/C = {:.2} (target ≤ 1.2), A0/C = {:.2}, H/C = {:.2}, A peak RSS {:.1} MiB and {:.1} MiB at 20 GiB (target ≤ 64).\n",
            img_len as f64 / 1e9,
            vsize as f64 / (1u64 << 30) as f64,
            a.0,
            mib(a.1),
            mib(tmpfs_kib),
            b.0,
            mib(b.1),
            c.0,
            mib(c.1),
            a0.0,
            mib(a0.1),
            h.0,
            mib(h.1),
            a20.0,
            mib(a20.1),
            a.0 / b.0,
            a.0 / c.0,
            a0.0 / c.0,
            h.0 / c.0,
            mib(a.1),
            mib(a20.1)
        );
        let json = format!(
            "{{\"file_bytes\":{img_len},\"virtual_bytes\":{vsize},\"a_s\":{:.3},\"a_rss_kib\":{},\"b_s\":{:.3},\"b_rss_kib\":{},\"b_tmpfs_kib\":{tmpfs_kib},\"c_s\":{:.3},\"c_rss_kib\":{},\"a0_s\":{:.3},\"h_s\":{:.3},\"c_stalls\":{c_stalls},\"a20_s\":{:.3},\"a20_rss_kib\":{},\"a_over_b\":{:.3},\"a_over_c\":{:.3}}}\n",
            a.0,
            a.1,
            b.0,
            b.1,
            c.0,
            c.1,
            a0.0,
            h.0,
            a20.0,
            a20.1,
            a.0 / b.0,
            a.0 / c.0
        );
        std::fs::write(dir.join("image.md"), &md)?;
        std::fs::write(dir.join("image.json"), &json)?;
        println!("{md}");
        Ok(())
    })();
    let _ = server.kill();
    let _ = server.wait();
    res
}

/// The release server and agent, built; their directory.
fn build_release() -> anyhow::Result<PathBuf> {
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "byol-server",
        "-p",
        "byol-agent",
    ]))?;
    Ok(crate::release_dir())
}

/// Runs a command under GNU time after a sync: (wall seconds, peak RSS KiB).
fn timed(name: &str, dir: &Path, cmd: &mut Command) -> anyhow::Result<(f64, u64)> {
    run(&mut Command::new("sync"))?;
    let tf = dir.join("time.out");
    let prog = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    eprintln!("xtask: bench {name}: {prog:?} {args:?}");
    let st = Command::new("/usr/bin/time")
        .args(["-f", "%e %M", "-o"])
        .arg(&tf)
        .arg(&prog)
        .args(&args)
        .stdout(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("bench {name} failed ({st})");
    }
    let t = std::fs::read_to_string(&tf)?;
    let mut it = t.split_whitespace();
    let secs: f64 = it
        .next()
        .and_then(|v| v.parse().ok())
        .context("time output")?;
    let rss: u64 = it
        .next()
        .and_then(|v| v.parse().ok())
        .context("time output")?;
    eprintln!(
        "xtask: bench {name}: {secs:.2} s, peak RSS {} MiB",
        rss / 1024
    );
    Ok((secs, rss))
}

fn sha512(p: &Path) -> anyhow::Result<String> {
    let cache = p.with_extension("qcow2.sha512");
    if let Ok(s) = std::fs::read_to_string(&cache) {
        return Ok(s.trim().to_string());
    }
    let out = Command::new("sha512sum").arg(p).output()?;
    let s = String::from_utf8(out.stdout)?
        .split_whitespace()
        .next()
        .context("sha512sum")?
        .to_string();
    std::fs::write(&cache, &s)?;
    Ok(s)
}

fn virtual_size(p: &Path) -> anyhow::Result<u64> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(p)
        .output()?;
    let v = String::from_utf8(out.stdout)?;
    let i = v.find("\"virtual-size\":").context("qemu-img info")? + "\"virtual-size\":".len();
    Ok(v[i..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap_or("0")
        .parse()?)
}

fn start_server(
    bin: &Path,
    dir: &Path,
    images: &Path,
) -> anyhow::Result<(std::process::Child, u16)> {
    let mut child = Command::new(bin)
        .args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--tftp",
            "off",
            "--data-dir",
        ])
        .arg(dir.join("server"))
        .arg("--images-dir")
        .arg(images)
        .env("BYOL_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()?;
    let out = child.stdout.take().context("server stdout")?;
    for line in std::io::BufReader::new(out).lines() {
        let line = line?;
        if let Some(addr) = line.strip_prefix("byol: listening on http://") {
            let port = addr.rsplit(':').next().unwrap_or("0").parse()?;
            return Ok((child, port));
        }
    }
    bail!("the server did not start")
}

/// target/bench/images/debian.qcow2: Debian 12 from debootstrap in one ext4 partition (GPT),
/// built once and cached.
fn os_image(dir: &Path, images: &Path) -> anyhow::Result<PathBuf> {
    let img = images.join("debian.qcow2");
    if img.exists() {
        return Ok(img);
    }
    let rootfs = dir.join("rootfs");
    if !rootfs.join(".complete").exists() {
        let _ = std::fs::remove_dir_all(&rootfs);
        run(Command::new("debootstrap")
            .args([
                "--variant=minbase",
                &format!("--include={INCLUDE}"),
                "bookworm",
            ])
            .arg(&rootfs)
            .arg("http://deb.debian.org/debian"))?;
        std::fs::write(rootfs.join(".complete"), "")?;
    }
    let raw = dir.join("debian.raw");
    let size: u64 = 3 << 30;
    let f = std::fs::File::create(&raw)?;
    f.set_len(size)?;
    drop(f);
    let mut sf = Command::new("sfdisk")
        .arg("--quiet")
        .arg(&raw)
        .stdin(Stdio::piped())
        .spawn()?;
    if let Some(stdin) = sf.stdin.as_mut() {
        use std::io::Write as _;
        stdin.write_all(b"label: gpt\nstart=2048, type=L\n")?;
    }
    if !sf.wait()?.success() {
        bail!("sfdisk failed");
    }
    let fs_kib = (size >> 10) - 2048;
    run(Command::new("mke2fs")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            "root",
            "-E",
            "offset=1048576",
            "-d",
        ])
        .arg(&rootfs)
        .arg(&raw)
        .arg(format!("{fs_kib}k")))?;
    let tmp = images.join("debian.qcow2.tmp");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&tmp))?;
    std::fs::rename(&tmp, &img)?;
    let _ = std::fs::remove_file(&raw);
    Ok(img)
}

/// `cargo xtask bench layout`: byol's layout install (`byol-agent layout install`: the layout
/// made, the image's filesystem streamed onto `/`, moved, grown, `/boot` moved into its own)
/// against OVH's pipeline into the same layout (the image downloaded to tmpfs and verified,
/// opened as a block device, the layout made with sfdisk and mkfs, `rsync -aHAX` of the
/// image's tree into it), on loop devices over tmpfs files, the bench image served by `byol
/// serve` on loopback. Two disks in RAID 1 where the kernel has md; one disk otherwise (this
/// machine's kernel has neither md nor nbd: the image is opened with `qemu-img convert` to
/// raw and a loop device, which OVH's qemu-nbd would only make slower to read). Last line:
/// `layout: ratio=R rss_mib=N` (R = byol's wall time / OVH's pipeline's, same run).
pub fn layout(_args: &[String]) -> anyhow::Result<()> {
    ensure_packages(crate::PACKAGES)?;
    ensure_packages(BENCH_PACKAGES)?;
    ensure_packages(&[("rsync", "/usr/bin/rsync")])?;
    let dir = root().join("target/bench");
    let images = dir.join("images");
    std::fs::create_dir_all(&images)?;
    let img = os_image(&dir, &images)?;
    let sha = sha512(&img)?;
    let bin = build_release()?;
    let md = Path::new("/sys/module/md_mod").exists() || Path::new("/proc/mdstat").exists();
    let n_disks = if md { 2 } else { 1 };
    let (mut server, port) = start_server(&bin.join("byol"), &dir, &images)?;
    let url = format!("http://127.0.0.1:{port}/images/debian.qcow2");
    let res = (|| -> anyhow::Result<(f64, f64, u64)> {
        run(Command::new("cat").arg(&img).stdout(Stdio::null()))?;
        let disk_bytes: u64 = 8 << 30;
        let disks = |side: &str| -> anyhow::Result<Vec<Loop>> {
            (0..n_disks)
                .map(|i| Loop::new(&format!("/dev/shm/byol-bench-{side}{i}.raw"), disk_bytes))
                .collect()
        };
        // A: byol
        let a_disks = disks("a")?;
        let mut a = Command::new(bin.join("byol-agent"));
        a.args(["layout", "install", "--source", &url, "--layout", "default"])
            .args(["--checksum", &sha, "--checksum-type", "sha512", "--no-hook"])
            .args(["--root", "/mnt/byol-bench-a"]);
        for d in &a_disks {
            a.arg("--disk").arg(&d.dev);
        }
        let (a_secs, a_rss) = timed("layout A (byol)", &dir, &mut a)?;
        drop(a_disks);
        // B: OVH's pipeline into the same layout
        let b_disks = disks("b")?;
        let devs: Vec<String> = b_disks.iter().map(|d| d.dev.clone()).collect();
        let script = ovh_pipeline(&url, &sha, &devs, md);
        let (b_secs, _) = timed(
            "layout B (OVH's pipeline)",
            &dir,
            Command::new("bash").args(["-c", &script]),
        )?;
        drop(b_disks);
        Ok((a_secs, b_secs, a_rss))
    })();
    let _ = server.kill();
    let _ = server.wait();
    let (a, b, rss) = res?;
    let ratio = a / b;
    let md_text = format!(
        "# cargo xtask bench layout\n\nbyol `layout install` {a:.1} s (peak RSS {} MiB) against \
         OVH's pipeline {b:.1} s on {n_disks} disk(s){}: ratio {ratio:.2}\n",
        rss / 1024,
        if md {
            " in RAID 1"
        } else {
            " (no md in this kernel)"
        }
    );
    std::fs::write(dir.join("layout.md"), &md_text)?;
    eprint!("{md_text}");
    println!("layout: ratio={ratio:.2} rss_mib={}", rss / 1024);
    Ok(())
}

/// A loop device over a sparse tmpfs file, detached and removed on drop.
struct Loop {
    dev: String,
    file: PathBuf,
}

impl Loop {
    fn new(file: &str, len: u64) -> anyhow::Result<Loop> {
        let f = std::fs::File::create(file)?;
        f.set_len(len)?;
        drop(f);
        let out = Command::new("losetup")
            .args(["-f", "--show", file])
            .output()?;
        ensure!(out.status.success(), "losetup {file} failed");
        Ok(Loop {
            dev: String::from_utf8(out.stdout)?.trim().to_string(),
            file: file.into(),
        })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// OVH's pipeline as a bash script: download into tmpfs, verify, open the image's partition,
/// make the default layout (BIOS boot, /boot 1 GiB, / the rest, swap 512 MiB, config-2 64
/// MiB; RAID 1 over two disks when `md`), `rsync -aHAX` the tree in, unmount.
fn ovh_pipeline(url: &str, sha: &str, disks: &[String], md: bool) -> String {
    // the same partitions as byol's plan (8 GiB disks): BIOS boot, /boot, /, swap, config-2
    let table = concat!(
        "label: gpt\\n",
        "size=1MiB, type=21686148-6449-6E6F-744E-656564454649\\n",
        "size=1GiB, type=L\\nsize=6580MiB, type=L\\nsize=512MiB, type=S\\nsize=64MiB, type=L\\n"
    );
    let parts: Vec<String> = disks
        .iter()
        .map(|d| {
            format!(
                "printf '{table}' | sfdisk -q {d}; partx -u {d} || partx -a {d}; mkswap -q {d}p4"
            )
        })
        .collect();
    let (boot, rootdev) = if md {
        (
            format!(
                "mdadm --create /dev/md/bboot --run --level 1 --raid-devices 2 {d0}p2 {d1}p2 && \
                 mdadm --create /dev/md/broot --run --level 1 --raid-devices 2 {d0}p3 {d1}p3",
                d0 = disks[0],
                d1 = disks[1]
            ),
            ("/dev/md/bboot".to_string(), "/dev/md/broot".to_string()),
        )
    } else {
        (
            String::from("true"),
            (format!("{}p2", disks[0]), format!("{}p3", disks[0])),
        )
    };
    let (bootdev, rootdev) = rootdev;
    format!(
        "set -euo pipefail
q=/dev/shm/byol-bench-ovh.qcow2; raw=/dev/shm/byol-bench-ovh.raw
curl -sSf -o $q '{url}'
echo '{sha}  '$q | sha512sum -c --quiet
qemu-img convert -f qcow2 -O raw $q $raw; rm -f $q
src=$(losetup -f --show -r -P $raw)
# the partitions told to the kernel with BLKPG (partx), whatever its own table parsers
partx -a $src 2>/dev/null || partx -u $src
{parts}
{boot}
mkfs.ext4 -q -F -L boot {bootdev}; mkfs.ext4 -q -F -L root {rootdev}
mkdir -p /mnt/byol-bench-src /mnt/byol-bench-b
mount -o ro ${{src}}p1 /mnt/byol-bench-src
mount {rootdev} /mnt/byol-bench-b; mkdir -p /mnt/byol-bench-b/boot
mount {bootdev} /mnt/byol-bench-b/boot
rsync -aHAX /mnt/byol-bench-src/ /mnt/byol-bench-b/
umount /mnt/byol-bench-b/boot /mnt/byol-bench-b /mnt/byol-bench-src
losetup -d $src; rm -f $raw
sync
",
        parts = parts.join("\n"),
    )
}
