//! mkinitramfs: builds the initramfs (newc cpio, module closure, compression). Filled by the "machine side, part 1" issue.
