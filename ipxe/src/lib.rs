//! byol-ipxe: the iPXE scripts byol's server hands to machines, rendered so that no value can
//! change what a script does, and where the iPXE binaries come from.
//!
//! - [`entry_script`] (`entry.rs`): boot.ipxe, which chains to `BASE/ipxe/<mac>`;
//! - [`install_script`] (`install.rs`): byol's kernel and initramfs with the agent's command line;
//! - [`local_boot_script`] (`local_boot.rs`): nothing to install, boot the local disk;
//! - [`BaseUrl`] (`base_url.rs`), [`Platform`] (`platform.rs`), [`normalize_mac`] (`mac.rs`),
//!   [`IPXE_BINARIES`] (`binaries.rs`), [`RenderError`] (`error.rs`).
//!
//! # Why no value can inject commands
//!
//! How iPXE reads a script (checked against iPXE's `image/script.c` and `core/exec.c`): lines end
//! at `\n` (a trailing `\r` is dropped, a trailing `\` joins the next line); a line starting with
//! `:` is a label; otherwise the line is split into words on whitespace, a word starting with `#`
//! starts a comment, the words `||`, `&&` and `;` separate commands, and `${name}` is replaced by
//! the setting `name` — in old builds before the line is split, and the result is expanded again.
//! So a value holding a newline adds a command, a space adds a word, `${…}` reads any setting
//! (DHCP options, `root-path`, …), and `||`, `&&`, `;` or `#` change what runs.
//!
//! The rule here is a whitelist, never escaping, and a value that does not fit is refused with a
//! [`RenderError`] naming it; nothing is silently altered:
//!
//! - base URL: `http(s)://` + DNS name, IPv4 or `[IPv6]` + optional `:port` + optional path of
//!   letters, digits and `-._~` (see `base_url.rs`); checked again at render time;
//! - install id: `[0-9a-f-]`, at most 64; token: hex digits, at most 256 (never shown in errors
//!   or `Debug`);
//! - console values and extra kernel arguments: letters, digits and `._,:/=+@~-`, not starting
//!   with `-`; extra arguments may not start with `byol.` or `initrd=` (byol's own);
//! - the kernel command line must fit Linux's 2047 bytes even after iPXE fills in the network
//!   settings at their longest.
//!
//! None of these sets holds whitespace, a control character, `$`, `{`, `}`, `|`, `&`, `;`, `#`,
//! `\`, a quote, `<`, `>`, `%`, `?` or a non-ASCII character, so every value stays one word with
//! no expansion and no operator, whichever way iPXE splits and expands.
//!
//! The one free text, the `reason` of [`local_boot_script`], is not refused but neutralised by
//! [`echo_safe`]: every character outside `[A-Za-z0-9 ._:/,()@=+-]` becomes `_` and it is cut to
//! [`ECHO_TEXT_MAX_CHARS`]; it comes after `echo byol:`, so it is never an option or a label.
//!
//! The only `${…}` in a script are the template's own: `${netX/mac}`, `${netX/ip}`,
//! `${netX/netmask}`, `${netX/gateway}`, `${dns}`, `${platform}`, `${buildarch}` and
//! `${next-server}`, all typed settings (MAC, IPv4, fixed words) whose values cannot hold
//! whitespace or operators. Every `goto` jumps forward, so no script can loop.
//!
//! The unit tests check every rendered script with a small reader that splits lines as iPXE
//! does and verifies each line's kind, command, word count, operators and expansions
//! (`check.rs`), including for each injection attempt (`injection_tests.rs`).

mod base_url;
mod binaries;
mod entry;
mod error;
mod install;
mod local_boot;
mod mac;
mod platform;
mod safe;
mod script;

#[cfg(test)]
mod check;
#[cfg(test)]
mod injection_tests;

pub use base_url::BaseUrl;
pub use binaries::{IPXE_BINARIES, IPXE_BINARY_DIR, ipxe_binary_path};
pub use entry::{MACHINE_SCRIPT_PATH, entry_script, try_entry_script};
pub use error::RenderError;
pub use install::{INITRAMFS_PATH, InstallBoot, KERNEL_CMDLINE_MAX, KERNEL_PATH, install_script};
pub use local_boot::local_boot_script;
pub use mac::normalize_mac;
pub use platform::Platform;
pub use safe::{ECHO_TEXT_MAX_CHARS, echo_safe};
