//! byol-spec: the words byol's server and agent share. No I/O and nothing async.
//!
//! - [`request`]: the OVH install body (`templateName`, `userMetadata`, …), parsed and validated
//!   into an [`InstallSpec`], with the OVH guide's client-error wording ([`SpecError`]).
//! - [`secret`]: a string that never shows in `Debug` or logs.
//! - [`disk`]: byol's own disk hints (serial, WWN, model, size range, by-path) for a machine.
//! - [`config`]: what the agent fetches (`GET /agent/v1/config`).
//! - [`event`]: what the agent reports (`POST /agent/v1/events`) and the install states.
//! - [`storage`]: BYOLinux's storage layouts (OVH's `storage` body), checked and planned.
//! - [`phase`]: the steps of an install, their names on the wire and OVH's words for them.

pub mod config;
pub mod disk;
pub mod duration;
pub mod error;
pub mod event;
pub mod modules;
pub mod phase;
pub mod request;
pub mod secret;
pub mod storage;
pub mod text;

pub use config::{AgentConfig, DEFAULT_HOOK_TIMEOUT_SECONDS, FailureAction};
pub use disk::DiskHints;
pub use duration::{format_duration, parse_duration};
pub use error::SpecError;
pub use event::{AgentEvent, EventStatus, InstallState, Inventory, InventoryGroup};
pub use phase::Phase;
pub use request::{
    Checksum, ChecksumType, HttpHeader, ImageType, InstallRequest, InstallSpec, MetadataEntry,
    StorageSpec, TEMPLATE_BYOI, TEMPLATE_NAME, TEMPLATES, UserData,
};
pub use secret::Secret;
pub use text::escape_control;
