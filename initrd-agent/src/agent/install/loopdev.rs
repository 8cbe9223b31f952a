//! loopdev: a read-only loop device over a window of a block device or file (the image's
//! partition inside a RAID 1 member that holds a copy of it), with the kernel's
//! `LOOP_CTL_GET_FREE` and `LOOP_CONFIGURE`; detached when dropped. No losetup: one ioctl each.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_NAME_SIZE: usize = 64;
const LO_KEY_SIZE: usize = 32;

/// `struct loop_info64` (linux/loop.h).
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; LO_KEY_SIZE],
    lo_init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// A loop device, detached on drop.
#[derive(Debug)]
pub struct LoopDev {
    pub path: PathBuf,
    dev: File,
}

impl LoopDev {
    /// `[offset, offset + len)` of `backing`, read-only, as a new loop device under `dev`.
    pub fn attach(dev: &Path, backing: &Path, offset: u64, len: u64) -> Result<LoopDev, String> {
        let ctl = File::open(dev.join("loop-control")).map_err(|e| {
            format!(
                "cannot open {}: {e} (is the loop module loaded?)",
                dev.join("loop-control").display()
            )
        })?;
        let back =
            File::open(backing).map_err(|e| format!("cannot open {}: {e}", backing.display()))?;
        // another process may take the free device first: try again a few times
        let mut last = String::new();
        for _ in 0..8 {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number or -1.
            let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
            if n < 0 {
                return Err(format!(
                    "no free loop device: {}",
                    std::io::Error::last_os_error()
                ));
            }
            let path = dev.join(format!("loop{n}"));
            let d = match OpenOptions::new().read(true).open(&path) {
                Ok(d) => d,
                Err(e) => {
                    last = format!("cannot open {}: {e}", path.display());
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    continue;
                }
            };
            let mut info = LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: offset,
                lo_sizelimit: len,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: LO_FLAGS_READ_ONLY,
                lo_file_name: [0; LO_NAME_SIZE],
                lo_crypt_name: [0; LO_NAME_SIZE],
                lo_encrypt_key: [0; LO_KEY_SIZE],
                lo_init: [0; 2],
            };
            let name = backing.as_os_str().as_encoded_bytes();
            let n_name = name.len().min(LO_NAME_SIZE - 1);
            info.lo_file_name[..n_name].copy_from_slice(&name[..n_name]);
            let cfg = LoopConfig {
                fd: back.as_raw_fd() as u32,
                block_size: 0,
                info,
                reserved: [0; 8],
            };
            // SAFETY: LOOP_CONFIGURE reads a `struct loop_config` that lives for the call.
            let r = unsafe { libc::ioctl(d.as_raw_fd(), LOOP_CONFIGURE, &cfg) };
            if r == 0 {
                return Ok(LoopDev { path, dev: d });
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EBUSY) {
                return Err(format!(
                    "cannot attach {} to {}: {e}",
                    backing.display(),
                    path.display()
                ));
            }
            last = format!("{} was taken", path.display());
        }
        Err(format!("no loop device could be attached: {last}"))
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        // SAFETY: LOOP_CLR_FD takes no argument.
        unsafe {
            libc::ioctl(self.dev.as_raw_fd(), LOOP_CLR_FD);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_of_a_file_reads_as_a_device() {
        if !Path::new("/dev/loop-control").exists() {
            eprintln!("no /dev/loop-control here: skipped");
            return;
        }
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let mut data = vec![1u8; 1 << 20];
        data.extend(vec![7u8; 2 << 20]);
        data.extend(vec![3u8; 1 << 20]);
        std::io::Write::write_all(&mut f, &data).unwrap();
        let l = LoopDev::attach(Path::new("/dev"), f.path(), 1 << 20, 2 << 20).unwrap();
        let got = std::fs::read(&l.path).unwrap();
        assert_eq!(got.len(), 2 << 20);
        assert!(got.iter().all(|&b| b == 7));
        let p = l.path.clone();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let ro = std::fs::read_to_string(format!("/sys/block/{name}/ro")).unwrap();
        assert_eq!(ro.trim(), "1", "read-only");
        drop(l);
        let size = std::fs::read_to_string(format!("/sys/block/{name}/size")).unwrap_or_default();
        assert_eq!(size.trim(), "0", "detached");
    }
}
