//! Helpers of the install tests on loop devices (root only): sparse files, loop devices
//! detached on drop, images made with sfdisk and mke2fs, the install's config, the usual tools
//! run and read back.
#![allow(dead_code)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use byol_agent::agent::install::{Boot, Firmware, ids};
use byol_agent::agent::net::{AddrSource, NetConfig};
use byol_spec::{AgentConfig, Checksum, ChecksumType, FailureAction, ImageType, InstallSpec};
use serde_json::Value;

pub const MIB: u64 = 1 << 20;
pub const LINUX_FS: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// Loop devices are a shared resource: one test at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn sh(cmd: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (is it installed?)"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

pub fn ok(cmd: &str, args: &[&str]) -> String {
    let (code, text) = sh(cmd, args);
    assert_eq!(code, 0, "{cmd} {args:?}: {text}");
    text
}

/// A loop device with partition scanning, detached on drop.
pub struct Loop {
    pub dev: PathBuf,
}

impl Loop {
    pub fn attach(file: &Path, sector: u32) -> Loop {
        let ss = sector.to_string();
        let out = ok(
            "losetup",
            &[
                "-f",
                "-P",
                "--show",
                "--sector-size",
                &ss,
                file.to_str().unwrap(),
            ],
        );
        Loop {
            dev: PathBuf::from(out.trim()),
        }
    }
    pub fn part(&self, n: u32) -> PathBuf {
        PathBuf::from(format!("{}p{n}", self.dev.display()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

pub fn sparse(path: &Path, len: u64) {
    File::create(path).unwrap().set_len(len).unwrap();
}

/// mke2fs on `[offset, offset + len)` of `file`.
pub fn ext4_at(file: &Path, offset: u64, len: u64) {
    ext4_with(file, offset, len, None)
}

/// mke2fs on `[offset, offset + len)` of `file`, filled with the tree `root` when given.
pub fn ext4_with(file: &Path, offset: u64, len: u64, root: Option<&Path>) {
    let offset = format!("offset={offset}");
    let size = format!("{}k", len / 1024);
    let mut args = vec!["-q", "-F", "-t", "ext4", "-L", "byolroot", "-E", &offset];
    if let Some(r) = root {
        args.extend(["-d", r.to_str().unwrap()]);
    }
    args.extend([file.to_str().unwrap(), size.as_str()]);
    ok("mke2fs", &args);
}

/// A 64 MiB image: `label` (`gpt` or `dos`) with the partitions of `parts` (sfdisk lines), an
/// ext4 filesystem in the first at 1 MiB of `fs_len` bytes.
pub fn image(dir: &Path, name: &str, label: &str, parts: &[&str], fs_len: u64) -> PathBuf {
    let p = dir.join(name);
    sparse(&p, 64 * MIB);
    let script = format!("label: {label}\n{}\n", parts.join("\n"));
    let mut child = Command::new("sfdisk")
        .args(["-q", p.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk {script}");
    ext4_at(&p, MIB, fs_len);
    p
}

pub fn gpt_image(dir: &Path) -> PathBuf {
    image(
        dir,
        "gpt.img",
        "gpt",
        &[&format!("start=2048, size=122880, type={LINUX_FS}")],
        60 * MIB,
    )
}

pub fn mbr_image(dir: &Path) -> PathBuf {
    image(
        dir,
        "mbr.img",
        "dos",
        &["start=2048, size=122880, type=83"],
        60 * MIB,
    )
}

/// A 4096-byte-sector GPT image made with gptman (sfdisk cannot on a file).
pub fn gpt4k_image(dir: &Path) -> PathBuf {
    let p = dir.join("gpt4k.img");
    sparse(&p, 64 * MIB);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    let mut gpt = gptman::GPT::new_from(&mut f, 4096, [7; 16]).unwrap();
    gpt[1] = gptman::GPTPartitionEntry {
        partition_type_guid: ids::parse_guid(LINUX_FS).unwrap(),
        unique_partition_guid: [9; 16],
        starting_lba: 256,
        ending_lba: 256 + 15360 - 1,
        attribute_bits: 0,
        partition_name: "root".into(),
    };
    gpt.write_into(&mut f).unwrap();
    gptman::GPT::write_protective_mbr_into(&mut f, 4096).unwrap();
    drop(f);
    ext4_at(&p, MIB, 60 * MIB);
    p
}

pub fn sha256(path: &Path) -> String {
    ok("sha256sum", &[path.to_str().unwrap()])
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

pub fn cfg(image: &Path) -> AgentConfig {
    AgentConfig {
        install_id: "inst-7".into(),
        machine: "rack1-u7".into(),
        macs: vec!["52:54:00:12:34:56".into()],
        install: InstallSpec {
            template: "byolinux_64".into(),
            partition_scheme: "default".into(),
            storage: None,
            efi_bootloader_path: None,
            hostname: Some("vm1.example".into()),
            image_url: image.display().to_string(),
            image_type: ImageType::Raw,
            checksum: image.exists().then(|| Checksum {
                kind: ChecksumType::Sha256,
                hex: sha256(image),
            }),
            http_headers: Vec::new(),
            user_data: None,
            metadata: None,
            ssh_key: Some("ssh-ed25519 AAAA key".into()),
            disk_group_id: 1,
            hook_timeout_seconds: None,
        },
        on_failure: FailureAction::default(),
        disk_hints: Default::default(),
        hook_timeout_seconds: byol_spec::DEFAULT_HOOK_TIMEOUT_SECONDS,
    }
}

pub fn boot(firmware: Firmware) -> Boot {
    Boot {
        firmware,
        net: Some(NetConfig {
            iface: "eth0".into(),
            mac: "52:54:00:12:34:56".into(),
            address: "10.0.2.15".parse().unwrap(),
            netmask: "255.255.255.0".parse().unwrap(),
            prefix: 24,
            gateway: Some("10.0.2.2".parse().unwrap()),
            dns: vec!["10.0.2.3".parse().unwrap()],
            source: AddrSource::Ipxe,
            lease_seconds: None,
        }),
    }
}

pub fn sfdisk_json(dev: &Path) -> Value {
    let out = Command::new("sfdisk")
        .args(["--json", dev.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["partitiontable"].clone()
}

pub fn blkid(dev: &Path, tag: &str) -> String {
    ok(
        "blkid",
        &["-p", "-o", "value", "-s", tag, dev.to_str().unwrap()],
    )
    .trim()
    .to_string()
}

pub fn read_at(dev: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    File::open(dev)
        .unwrap()
        .read_exact_at(&mut b, offset)
        .unwrap();
    b
}

pub fn disk_size(dev: &Path) -> u64 {
    ok("blockdev", &["--getsize64", dev.to_str().unwrap()])
        .trim()
        .parse()
        .unwrap()
}

/// The ConfigDrive read back from the partition with fatfs.
pub fn read_drive(dev: &Path, path: &str) -> Vec<u8> {
    let fs = fatfs::FileSystem::new(File::open(dev).unwrap(), fatfs::FsOptions::new()).unwrap();
    let mut f = fs.root_dir().open_file(path).unwrap();
    let mut v = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut v).unwrap();
    v
}

/// A disk whose first and last MiB hold something, to see that a refusal wipes them.
pub fn dirty_disk(path: &Path, len: u64) {
    sparse(path, len);
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&[0xaa; 4096], 0).unwrap();
    f.write_all_at(&[0xaa; 4096], len - 4096).unwrap();
}

pub fn ends_are_zero(dev: &Path) -> bool {
    let size = disk_size(dev);
    read_at(dev, 0, MIB as usize).iter().all(|b| *b == 0)
        && read_at(dev, size - MIB, MIB as usize)
            .iter()
            .all(|b| *b == 0)
}
