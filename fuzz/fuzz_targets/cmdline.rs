//! The kernel command line as the agent reads it: split like the kernel's `next_arg()`, then the
//! `byol.*` values and the consoles. Any text gives parameters (a bad value is a warning, never
//! a failure); the warnings go to the console and may not carry control characters; the token
//! never shows in what the agent prints.
#![no_main]

use byol_agent::agent::cmdline::{BootParams, Cmdline, Mac, console_devices};
use byol_spec::Secret;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let c = Cmdline::parse(text);
    let b = BootParams::from_cmdline(&c);
    for w in &b.warnings {
        assert!(
            !w.chars().any(char::is_control),
            "control character in a warning: {w:?}"
        );
    }
    // the token is a secret: what the agent shows of the parameters does not depend on it
    let mut other = b.clone();
    other.token = Secret::new("x".repeat(b.token.len()));
    assert_eq!(format!("{b:?}"), format!("{other:?}"), "the token shows");
    let _ = console_devices(&c);
    if let Some(m) = c.get("byol.mac")
        && let Some(mac) = Mac::parse(m)
    {
        assert_eq!(Mac::parse(&mac.to_string()), Some(mac));
    }
});
