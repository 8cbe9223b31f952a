//! image: the image engine: streams a qcow2 or raw image from a URL or a file to a disk in
//! one pass, verifying its checksum while it streams.

pub mod qcow2;
