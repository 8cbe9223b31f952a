//! image: the image engine: streams a qcow2 or raw image from a URL or a file to a disk in
//! one pass, verifying its checksum while it streams, and never leaves a bootable half-image.
//!
//! Readers are stacked as adapters, coreos-installer style:
//! `source` (HTTP with Range and resume, or a file) → `detect` (format by magic, streaming
//! decompression of zstd/xz/gzip raw images) → `qcow2` (the format layer) → `target` (the
//! disk, holding the first MiB back until the end), with `hash` on its own thread over the
//! bytes exactly as served and `progress` reporting as it goes. `engine` ties them together.

pub mod detect;
pub mod engine;
pub mod hash;
pub mod progress;
pub mod qcow2;
pub mod source;
pub mod target;
