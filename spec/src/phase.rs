//! phase: the steps the agent reports, in the order an install goes through them, and the
//! words OVH's `install/status` shows for each. On the wire a phase stays its name
//! ([`AgentEvent::phase`](crate::AgentEvent::phase) is a string, so that a server takes the
//! events of a newer agent); in the code it is this enum, so that the agent, the server's OVH
//! view and the end-to-end expectations cannot disagree.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The agent runs: what the machine is (kernel, firmware, memory).
    Booted,
    /// The kernel modules for the machine's devices are loaded.
    Drivers,
    /// The boot interface has its address.
    Network,
    /// The install's settings are fetched from the server.
    Config,
    /// The machine's disks are listed.
    Disks,
    /// The target disk is chosen (disk group, hints).
    Disk,
    /// The image is downloaded and written (progress events carry bytes).
    Download,
    /// What the image holds is checked (one partition, its filesystem).
    Image,
    /// The partition table is fixed up for the disk and the firmware.
    Partition,
    /// The cloud-init ConfigDrive is written.
    Configdrive,
    /// The image's `make_image_bootable.sh` runs, and the firmware's boot entry is set.
    Bootloader,
    /// The install is finished: the disk is written and bootable.
    Done,
    /// The agent itself failed outside a phase (a panic, a fatal signal).
    Agent,
}

impl Phase {
    /// Whether a failure in this phase is the request's (OVH's `customerError`: the disk
    /// group or layout, the image, the user data, the image's own hook) rather than byol's
    /// (`ovhError`).
    pub fn is_customers(self) -> bool {
        matches!(
            self,
            Phase::Disk
                | Phase::Download
                | Phase::Image
                | Phase::Partition
                | Phase::Configdrive
                | Phase::Bootloader
        )
    }

    /// Every phase an install reports `ok`, in order.
    pub const INSTALL: [Phase; 12] = [
        Phase::Booted,
        Phase::Drivers,
        Phase::Network,
        Phase::Config,
        Phase::Disks,
        Phase::Disk,
        Phase::Download,
        Phase::Image,
        Phase::Partition,
        Phase::Configdrive,
        Phase::Bootloader,
        Phase::Done,
    ];

    /// Every phase: the install's, then the agent's own.
    pub const ALL: [Phase; 13] = {
        let mut all = [Phase::Agent; 13];
        let mut i = 0;
        while i < Phase::INSTALL.len() {
            all[i] = Phase::INSTALL[i];
            i += 1;
        }
        all
    };

    /// The name on the wire and on the console (`== download`).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Booted => "booted",
            Phase::Drivers => "drivers",
            Phase::Network => "network",
            Phase::Config => "config",
            Phase::Disks => "disks",
            Phase::Disk => "disk",
            Phase::Download => "download",
            Phase::Image => "image",
            Phase::Partition => "partition",
            Phase::Configdrive => "configdrive",
            Phase::Bootloader => "bootloader",
            Phase::Done => "done",
            Phase::Agent => "agent",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The step's `comment` in OVH's `install/status`.
    pub fn ovh_comment(self) -> &'static str {
        match self {
            Phase::Booted => "Boot the installer",
            Phase::Drivers => "Load drivers",
            Phase::Network => "Configure the network",
            Phase::Config => "Fetch the installation settings",
            Phase::Disks => "Discover disks",
            Phase::Disk => "Choose the disk",
            Phase::Download => "Download and write the image",
            Phase::Image => "Check the image",
            Phase::Partition => "Partition the disk",
            Phase::Configdrive => "Write the cloud-init ConfigDrive",
            Phase::Bootloader => "Run make_image_bootable.sh",
            Phase::Done => "Installation finished",
            Phase::Agent => "Run the installer",
        }
    }
}

/// So that code and tests can compare a phase with a name from the wire.
impl PartialEq<&str> for Phase {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_read_back() {
        for p in Phase::ALL {
            assert_eq!(Phase::parse(p.as_str()), Some(p));
            assert_eq!(
                Phase::ALL
                    .iter()
                    .filter(|q| q.as_str() == p.as_str())
                    .count(),
                1
            );
        }
        assert!(Phase::INSTALL.iter().all(|p| Phase::ALL.contains(p)));
        assert_eq!(Phase::parse("verify"), None);
    }
}
