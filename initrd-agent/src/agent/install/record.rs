//! record: what the disk says about the install that wrote it. Once the hook has made the disk
//! bootable, `byol/install.json` on `config-2` records the install id and `done`; the server is
//! told afterwards. An agent that boots for an install its disk already completed (the machine
//! rebooted, or lost power, before the server acknowledged `done`) finds the record, reports
//! `done` again and reboots without writing anything.
//!
//! cloud-init reads only `openstack/` on the drive: the extra directory is ignored by it.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::super::disks::Disk;
use super::configdrive::LABEL;
use super::fat;

/// The record's path on `config-2`.
pub const PATH: &str = "byol/install.json";
/// The largest record read back.
const MAX_RECORD: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub install_id: String,
    /// `done`.
    pub state: String,
    /// Seconds since 1970 when the install finished.
    pub finished_at: u64,
}

/// Writes the `done` record of `install_id` on the config-2 FAT at `dev`.
pub fn mark_done(dev: &Path, install_id: &str) -> Result<(), String> {
    let name = dev.display();
    let rec = Record {
        install_id: install_id.to_string(),
        state: "done".into(),
        finished_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let body = serde_json::to_vec_pretty(&rec).map_err(|e| e.to_string())?;
    fat::write_files(dev, &[(PATH, &body)])?;
    let f = std::fs::File::open(dev).map_err(|e| format!("cannot open {name}: {e}"))?;
    f.sync_all()
        .map_err(|e| format!("cannot flush {name}: {e}"))?;
    Ok(())
}

/// The record on the FAT at `dev`, if it is a `config-2` drive that has one.
pub fn read(dev: &Path) -> Option<Record> {
    let mut f = std::fs::File::open(dev).ok()?;
    let mut boot = [0u8; 512];
    f.read_exact(&mut boot).ok()?;
    let label = fat::label_field(LABEL);
    // FAT12/16 keep the label at 43, FAT32 at 71
    if boot[43..54] != label && boot[71..82] != label {
        return None;
    }
    let f = std::fs::File::open(dev).ok()?;
    let fs = fatfs::FileSystem::new(f, fatfs::FsOptions::new()).ok()?;
    let file = fs.root_dir().open_file(PATH).ok()?;
    let mut body = Vec::new();
    file.take(MAX_RECORD).read_to_end(&mut body).ok()?;
    serde_json::from_slice(&body).ok()
}

/// The disk (and its config-2 partition) whose record says `install_id` is done.
pub fn find_done(
    sysfs: &Path,
    dev: &Path,
    disks: &[Disk],
    install_id: &str,
) -> Option<(String, PathBuf, Record)> {
    for d in disks {
        for (name, _) in super::devlinks::partitions(sysfs, &d.name) {
            let p = dev.join(name);
            if let Some(r) = read(&p)
                && r.install_id == install_id
                && r.state == "done"
            {
                return Some((d.path.clone(), p, r));
            }
        }
    }
    None
}
