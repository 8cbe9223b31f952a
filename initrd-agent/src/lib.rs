//! byol-agent: PID 1 of byol's initramfs and the image engine. The binary (`main.rs`) is the
//! agent and the host CLI (`byol-agent image write …`); everything else is this library.

pub mod agent;
pub mod disk;
pub mod image;
pub mod stop;
