//! The install request parser (OVH's `install/start` body): any bytes either give a validated
//! install or an error. The error's text is for logs and terminals: it may not carry control
//! characters. A validated install survives the trip to the agent (JSON) unchanged.
#![no_main]

use byol_spec::Secret;
use byol_spec::request::{InstallRequest, InstallSpec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match InstallRequest::parse_and_validate(data) {
        Ok(spec) => {
            let json = serde_json::to_vec(&spec).expect("a validated install serialises");
            let back: InstallSpec = serde_json::from_slice(&json).expect("and reads back");
            assert_eq!(back, spec);
            // the redacted view (API answers, logs) depends on the secrets' lengths only
            let mut blank = spec.clone();
            for h in &mut blank.http_headers {
                h.value = Secret::new("x".repeat(h.value.len()));
            }
            if let Some(u) = &mut blank.user_data {
                u.value = Secret::new("x".repeat(u.value.len()));
            }
            if let Some(m) = &mut blank.metadata {
                for v in m.values_mut() {
                    *v = serde_json::Value::Null;
                }
            }
            assert_eq!(
                blank.redacted(),
                spec.redacted(),
                "a secret shows in the redacted view"
            );
        }
        Err(e) => {
            let text = e.to_string();
            assert!(
                !text.chars().any(char::is_control),
                "control character in the error: {text:?}"
            );
        }
    }
});
