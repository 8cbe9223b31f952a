//! config: what the agent fetches with its one-time token (`GET /agent/v1/config`): the
//! validated install plus what the server knows about the machine.

use serde::{Deserialize, Serialize};

use crate::disk::DiskHints;
use crate::request::InstallSpec;

/// What the agent does after a fatal error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum FailureAction {
    /// Show the error for `seconds`, then power off (the default: 300 s).
    Poweroff { seconds: u64 },
    /// Show the error for `seconds`, then reboot.
    Reboot { seconds: u64 },
    /// Stay up showing the error.
    Halt,
}

impl Default for FailureAction {
    fn default() -> Self {
        FailureAction::Poweroff { seconds: 300 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentConfig {
    pub install_id: String,
    /// The machine's name on the server (OVH's serviceName).
    pub machine: String,
    /// The machine's known MACs, lowercase colon form.
    pub macs: Vec<String>,
    pub install: InstallSpec,
    #[serde(default)]
    pub on_failure: FailureAction,
    /// The machine's disk hints; empty: the disk comes from `diskGroupId`.
    #[serde(default, skip_serializing_if = "DiskHints::is_empty")]
    pub disk_hints: DiskHints,
    /// How long the image's `make_image_bootable.sh` may run before it is killed: the
    /// install's `hookTimeout`, else the machine's, else the server's (default 30 min).
    #[serde(default = "default_hook_timeout")]
    pub hook_timeout_seconds: u64,
}

/// The hook's time limit when nothing sets one: 30 minutes, as MAAS's deploy timeout; real
/// hooks build DKMS modules and initramfs images.
pub const DEFAULT_HOOK_TIMEOUT_SECONDS: u64 = 30 * 60;

fn default_hook_timeout() -> u64 {
    DEFAULT_HOOK_TIMEOUT_SECONDS
}
