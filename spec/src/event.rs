//! event: what the agent reports while it works (`POST /agent/v1/events`) and the install
//! states those reports drive: pending → installing → done | failed (or cancelled by the
//! operator).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    /// A step started or made progress.
    Running,
    /// A step finished.
    Ok,
    /// The whole install finished: the disk is written and bootable.
    Done,
    /// The install failed; `message` says why (OVH wording where the guide has one).
    Failed,
}

/// One report from the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentEvent {
    /// The step: a [`Phase`](crate::Phase)'s name (`download`…), kept a string on the wire.
    pub phase: String,
    pub status: EventStatus,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_done: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    /// Output lines (e.g. from make_image_bootable.sh).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<String>,
    /// Seconds the phase took, when it is finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// The event's number in its agent boot (1, 2, …), set when it is queued: the server
    /// records each number once, so a batch sent again after a lost answer is harmless.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// What the machine is, with the `disks` event: the server keeps the latest one per
    /// machine (OVH's `specifications/hardware`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<Inventory>,
}

/// The machine as the agent found it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Inventory {
    /// `uefi` or `legacy` (OVH's words).
    pub boot_mode: String,
    pub disk_groups: Vec<InventoryGroup>,
}

/// One group of identical disks (OVH's disk group).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryGroup {
    pub disk_group_id: u32,
    pub number_of_disks: u32,
    pub disk_size_bytes: u64,
    /// `NVME`, `SSD` or `HDD`.
    pub disk_type: String,
    /// `nvme`, `sata`, `virtio`, … (the agent's word).
    pub transport: String,
}

impl AgentEvent {
    /// An event of `phase` with no progress, logs or timing.
    pub fn new(phase: crate::Phase, status: EventStatus, message: impl Into<String>) -> Self {
        AgentEvent {
            phase: phase.as_str().to_string(),
            status,
            message: message.into(),
            bytes_done: None,
            bytes_total: None,
            logs: Vec::new(),
            seconds: None,
            seq: None,
            inventory: None,
        }
    }

    /// Limits the server enforces on one event, so an agent cannot fill the store.
    pub const MAX_MESSAGE: usize = 4096;
    pub const MAX_LOG_LINES: usize = 500;
    pub const MAX_PHASE: usize = 32;

    /// Checks an event from the wire: a phase name of `[a-z0-9_-]`, bounded sizes.
    pub fn check(&self) -> Result<(), String> {
        if let Some(inv) = &self.inventory {
            let short = |t: &str| t.len() <= 16 && t.bytes().all(|b| b.is_ascii_graphic());
            if inv.disk_groups.len() > 64
                || !short(&inv.boot_mode)
                || inv
                    .disk_groups
                    .iter()
                    .any(|g| !short(&g.disk_type) || !short(&g.transport))
            {
                return Err("inventory too large or with unreadable words".into());
            }
        }
        if self.phase.is_empty()
            || self.phase.len() > Self::MAX_PHASE
            || !self
                .phase
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(format!(
                "phase must be 1-{} characters of a-z, 0-9, '_' or '-'",
                Self::MAX_PHASE
            ));
        }
        if self.message.len() > Self::MAX_MESSAGE {
            return Err(format!(
                "message is longer than {} bytes",
                Self::MAX_MESSAGE
            ));
        }
        if self.logs.len() > Self::MAX_LOG_LINES {
            return Err(format!(
                "more than {} log lines in one event",
                Self::MAX_LOG_LINES
            ));
        }
        if self.logs.iter().any(|l| l.len() > Self::MAX_MESSAGE) {
            return Err(format!(
                "a log line is longer than {} bytes",
                Self::MAX_MESSAGE
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstallState {
    Pending,
    Installing,
    Done,
    Failed,
    Cancelled,
}

impl InstallState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstallState::Pending => "pending",
            InstallState::Installing => "installing",
            InstallState::Done => "done",
            InstallState::Failed => "failed",
            InstallState::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => InstallState::Pending,
            "installing" => InstallState::Installing,
            "done" => InstallState::Done,
            "failed" => InstallState::Failed,
            "cancelled" => InstallState::Cancelled,
            _ => return None,
        })
    }
    /// Still waiting for or running on the machine.
    pub fn is_active(self) -> bool {
        matches!(self, InstallState::Pending | InstallState::Installing)
    }
    /// The state after an agent event, or None when the event does not change it.
    pub fn after(self, status: EventStatus) -> Option<InstallState> {
        if !self.is_active() {
            return None;
        }
        match status {
            EventStatus::Done => Some(InstallState::Done),
            EventStatus::Failed => Some(InstallState::Failed),
            _ if self == InstallState::Pending => Some(InstallState::Installing),
            _ => None,
        }
    }
}
