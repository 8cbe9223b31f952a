//! modules: kernel module names that the initramfs builder and the agent both know.

/// Software RAID: the md core and the personalities mdadm assembles arrays with. Carried by
/// every initramfs and loaded with the drivers, so that `/proc/mdstat` exists as on a booted
/// server (OVHcloud's hooks run `mkconf force-generate`, which needs it), device-mapper for
/// LVM layouts, and loop (the image's copy read from a RAID 1 member). `linear` is gone from
/// newer kernels: optional.
pub const SOFTWARE_RAID: &[&str] = &[
    "md_mod", "linear", "raid0", "raid1", "raid10", "raid456", "dm_mod", "loop",
];
