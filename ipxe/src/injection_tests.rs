//! Injection attempts against every value a script embeds: each is refused with an error naming
//! the value, or (the free `reason` text) neutralised so that the script keeps exactly the
//! template's structure, checked with the iPXE-like reader of `check.rs`.

use crate::check::{check, entry_shape, install_shape, local_boot_shape};
use crate::{
    BaseUrl, InstallBoot, Platform, RenderError, echo_safe, entry_script, install_script,
    local_boot_script, normalize_mac, try_entry_script,
};

/// Each one must be refused in every embedded value (install id, token, console value, extra
/// argument, base URL path or host) and neutralised in free text.
const ATTACKS: &[&str] = &[
    "x\nshell",
    "x\r\nshell",
    "x\\\nshell",
    "\nshell\n",
    "${root-path}",
    "${net0/dhcp/root-path}",
    "${netX/mac}",
    "$",
    "{",
    "}",
    "|| shell",
    "x||shell",
    "x|shell",
    "&& chain http://evil/",
    "x&&chain",
    "x&y",
    "; shell",
    "x;shell",
    "#",
    "# shell",
    "x#y",
    "a b",
    "a\tb",
    "a\u{b}b",
    "\"q\"",
    "'q'",
    "`id`",
    "back\\slash",
    "ünïcödé",
    "☃",
    "\u{202e}rtl",
    "\u{a0}nbsp",
    "\0",
    "\u{1b}[2J",
    "<x>",
    "%0ashell",
    "x?y",
    "x*y",
    "x!y",
    "x^y",
    "(x)",
];

const SETTINGS: &[&str] = &["netX/mac", "netX/ip", "netX/netmask", "netX/gateway", "dns"];
const ID: &str = "0b7c9f2e-5d1a-4c3b-9e8f-1a2b3c4d5e6f";
const TOKEN: &str = "6f1ed002ab5595859014ebf0951522d9";

fn render(
    base: &BaseUrl,
    id: &str,
    token: &str,
    console: &[String],
    extra: &[String],
) -> Result<String, RenderError> {
    install_script(&InstallBoot {
        base,
        install_id: id,
        token,
        platform: Platform::Pcbios,
        console,
        extra_args: extra,
    })
}

fn good_base() -> BaseUrl {
    BaseUrl::parse("http://10.0.2.2:8080").unwrap()
}

/// The attack in three positions: alone, after a valid value, before a valid value.
fn placed(valid: &str, attack: &str) -> [String; 3] {
    [
        attack.to_string(),
        format!("{valid}{attack}"),
        format!("{attack}{valid}"),
    ]
}

fn assert_message_is_one_safe_line(e: &RenderError) {
    let msg = e.to_string();
    assert!(
        !msg.contains(['\n', '\r', '\0', '\u{1b}', '\u{202e}']),
        "{msg:?}"
    );
}

#[test]
fn reason_is_neutralised() {
    let long = format!("{}\nshell", "${root-path} ".repeat(1000));
    let mut reasons: Vec<&str> = ATTACKS.to_vec();
    reasons.extend([":label", "-n", "--help", "  ", long.as_str()]);
    for p in [Platform::Pcbios, Platform::Efi] {
        let benign = local_boot_script(p, "no install pending");
        let benign_lines = benign.lines().count();
        for r in &reasons {
            let got = local_boot_script(p, r);
            let parsed = check(&got, &[], &local_boot_shape(p))
                .unwrap_or_else(|e| panic!("reason {r:?}: {e}"));
            assert_eq!(got.lines().count(), benign_lines);
            let echo = &parsed[1];
            assert_eq!(echo.words[..2], ["echo", "byol:"]);
            assert!(echo.expansions.is_empty(), "{r:?}");
            let line = got.lines().nth(2).unwrap();
            let want = echo_safe(r);
            if !want.is_empty() {
                assert_eq!(line, format!("echo byol: {want}"));
            }
            assert!(line.len() <= "echo byol: ".len() + crate::ECHO_TEXT_MAX_CHARS);
            // only the template's own lines follow the reason
            assert_eq!(
                got.lines().skip(3).collect::<Vec<_>>(),
                benign.lines().skip(3).collect::<Vec<_>>()
            );
        }
    }
}

#[test]
fn install_id_is_refused() {
    let (base, console) = (good_base(), vec!["ttyS0".to_string()]);
    let mut cases: Vec<String> = ATTACKS.iter().flat_map(|a| placed(ID, a)).collect();
    cases.extend([
        String::new(),
        ID.to_uppercase(),
        "g".into(),
        "a".repeat(65),
        ":label".into(),
        "-n".into(),
        "0b7c9f2e 5d1a".into(),
    ]);
    for id in cases {
        let e = render(&base, &id, TOKEN, &console, &[]).expect_err(&id);
        assert!(matches!(e, RenderError::InstallId { .. }), "{id:?}: {e}");
        assert!(e.to_string().starts_with("install id `"), "{e}");
        assert_message_is_one_safe_line(&e);
    }
    // the longest accepted id
    render(&base, &"a".repeat(64), TOKEN, &console, &[]).unwrap();
}

#[test]
fn token_is_refused_and_never_shown() {
    let (base, console) = (good_base(), vec!["ttyS0".to_string()]);
    let mut cases: Vec<String> = ATTACKS.iter().flat_map(|a| placed(TOKEN, a)).collect();
    cases.extend([
        String::new(),
        "0".repeat(257),
        format!("{TOKEN}g"),
        format!("{TOKEN}-"),
    ]);
    for token in cases {
        let e = render(&base, ID, &token, &console, &[]).expect_err(&token);
        assert!(matches!(e, RenderError::Token { .. }), "{token:?}: {e}");
        let msg = e.to_string();
        assert!(!msg.contains(TOKEN) && !msg.contains("shell"), "{msg}");
        assert!(!format!("{e:?}").contains(TOKEN), "{e:?}");
        assert_message_is_one_safe_line(&e);
    }
    // upper-case hex is hex
    render(&base, ID, &TOKEN.to_uppercase(), &console, &[]).unwrap();
}

#[test]
fn console_values_are_refused() {
    let base = good_base();
    let mut cases: Vec<String> = ATTACKS.iter().flat_map(|a| placed("ttyS0", a)).collect();
    cases.extend([String::new(), "-x".into(), "--".into(), "t".repeat(65)]);
    for c in cases {
        let console = vec!["tty0".to_string(), c.clone()];
        let e = render(&base, ID, TOKEN, &console, &[]).expect_err(&c);
        assert!(matches!(e, RenderError::Console { .. }), "{c:?}: {e}");
        assert!(e.to_string().starts_with("console value `"), "{e}");
        assert_message_is_one_safe_line(&e);
    }
}

#[test]
fn extra_args_are_refused() {
    let base = good_base();
    let mut cases: Vec<String> = ATTACKS.iter().flat_map(|a| placed("quiet", a)).collect();
    cases.extend([
        String::new(),
        "-x".into(),
        "--".into(),
        "byol.token=0000".into(),
        "byol.server=http://evil".into(),
        "initrd=evil".into(),
        "a".repeat(257),
    ]);
    for a in cases {
        let extra = vec!["quiet".to_string(), a.clone()];
        let e = render(&base, ID, TOKEN, &[], &extra).expect_err(&a);
        assert!(matches!(e, RenderError::ExtraArg { .. }), "{a:?}: {e}");
        assert!(e.to_string().starts_with("extra kernel argument `"), "{e}");
        assert_message_is_one_safe_line(&e);
    }
}

/// `:` and `=` are fine inside a kernel word: a label only starts a line, and the word stays one.
#[test]
fn accepted_kernel_words_stay_single_words() {
    let base = good_base();
    let words: Vec<String> = [":label", "a=b", "x:y", "root=/dev/sda1", "a,b.c_d+e@f~g"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let got = render(&base, ID, TOKEN, &words, &words).unwrap();
    let parsed = check(&got, SETTINGS, &install_shape(Platform::Pcbios)).unwrap();
    let kernel = &parsed[2].words;
    assert_eq!(kernel.len(), 4 + 9 + words.len() + 1 + words.len());
    for w in &words {
        assert!(kernel.contains(&format!("console={w}")));
        assert!(kernel.contains(w));
    }
}

#[test]
fn base_url_is_refused_everywhere() {
    let console = vec!["ttyS0".to_string()];
    let mut bases: Vec<String> = Vec::new();
    for a in ATTACKS {
        bases.push(format!("http://x/{a}"));
        bases.push(format!("http://x{a}"));
        bases.push(format!("http://x/a{a}b"));
        bases.push(format!("{a}http://x"));
    }
    bases.extend(
        [
            "http://x/ ${foo}",
            "http://host\nshell",
            "javascript:alert(1)",
            "data:text/plain,x",
            "tftp://x/boot.ipxe",
            "http://x:8080 || shell",
            "http://evil/&& chain http://evil/",
            "http://x/:label",
        ]
        .map(String::from),
    );
    for b in bases {
        assert!(BaseUrl::parse(&b).is_err(), "parse accepted {b:?}");
        let fixed = BaseUrl::Fixed(b.clone());
        let e = render(&fixed, ID, TOKEN, &console, &[]).expect_err(&b);
        assert!(matches!(e, RenderError::BaseUrl { .. }), "{b:?}: {e}");
        assert_message_is_one_safe_line(&e);
        assert!(try_entry_script(&fixed).is_err(), "{b:?}");
        // the infallible entry script never carries it
        let entry = entry_script(&fixed);
        assert!(!entry.contains("chain"), "{entry}");
        assert!(
            !entry.contains("shell") && !entry.contains("evil"),
            "{entry}"
        );
    }
}

#[test]
fn good_values_pass_the_reader() {
    let console = vec!["tty0".to_string(), "ttyS0,115200n8".to_string()];
    let extra = vec!["quiet".to_string(), "loglevel=7".to_string()];
    for base in [
        good_base(),
        BaseUrl::parse("https://[2001:db8::1]:8443/byol/v1").unwrap(),
        BaseUrl::NextServer { port: 69 },
    ] {
        let mut settings = SETTINGS.to_vec();
        settings.push("next-server");
        for p in [Platform::Pcbios, Platform::Efi] {
            let got = install_script(&InstallBoot {
                base: &base,
                install_id: ID,
                token: TOKEN,
                platform: p,
                console: &console,
                extra_args: &extra,
            })
            .unwrap();
            let parsed = check(&got, &settings, &install_shape(p)).unwrap();
            assert_eq!(parsed[2].words.len(), 4 + 9 + 2 + 1 + 2);
        }
        check(
            &entry_script(&base),
            &["netX/mac", "platform", "buildarch", "next-server"],
            &entry_shape(),
        )
        .unwrap();
    }
}

#[test]
fn mac_attacks_are_not_macs() {
    for a in ATTACKS {
        for m in placed("52:54:00:12:34:56", a) {
            assert_eq!(normalize_mac(&m), None, "{m:?}");
        }
    }
}
