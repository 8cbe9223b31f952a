//! The install request: the guide's example accepted verbatim, every client error with its text.

use byol_spec::{ChecksumType, ImageType, InstallRequest, SpecError};
use serde_json::json;

/// The exact example body of OVH's BYOLinux guide.
pub const GUIDE_EXAMPLE: &str = include_str!("guide-example.json");

fn body(meta: &[(&str, &str)]) -> Vec<u8> {
    let md: Vec<_> = meta
        .iter()
        .map(|(k, v)| json!({"key": k, "value": v}))
        .collect();
    serde_json::to_vec(&json!({
        "details": {"customHostname": "host1"},
        "partitionSchemeName": "default",
        "templateName": "byolinux_64",
        "userMetadata": md,
    }))
    .unwrap()
}

fn err(meta: &[(&str, &str)]) -> String {
    match InstallRequest::parse_and_validate(&body(meta)) {
        Ok(s) => panic!("accepted: {s:?}"),
        Err(e) => e.to_string(),
    }
}

const URL: (&str, &str) = ("imageURL", "https://example.test/img.qcow2");

#[test]
fn guide_example_is_accepted_verbatim() {
    let spec = InstallRequest::parse_and_validate(GUIDE_EXAMPLE.as_bytes()).unwrap();
    assert_eq!(spec.hostname.as_deref(), Some("myCustomBYOLinux"));
    assert_eq!(
        spec.image_url,
        "https://github.com/ashmonger/akution_test/releases/download/0.5-compress/deb11k6.qcow2"
    );
    assert_eq!(spec.image_type, ImageType::Qcow2);
    let sum = spec.checksum.as_ref().unwrap();
    assert_eq!(sum.kind, ChecksumType::Sha512);
    assert!(sum.hex.starts_with("367f26c915f3"));
    assert_eq!(spec.http_headers.len(), 1);
    assert_eq!(spec.http_headers[0].name, "Authorization");
    assert_eq!(
        spec.http_headers[0].value.expose(),
        "Basic bG9naW46cGFzc3dvcmQ="
    );
    let ud = spec.user_data.as_ref().unwrap();
    assert_eq!(ud.encoding, "base64");
    let text = String::from_utf8(ud.bytes()).unwrap();
    assert!(
        text.starts_with("#cloud-config\nssh_authorized_keys:"),
        "{text}"
    );
    assert!(text.ends_with("final_message: The system is finally up, after $UPTIME seconds\n"));
    assert_eq!(spec.disk_group_id, 1);
}

#[test]
fn redacted_view_hides_secrets() {
    let spec = InstallRequest::parse_and_validate(GUIDE_EXAMPLE.as_bytes()).unwrap();
    let shown = spec.redacted().to_string();
    assert!(!shown.contains("bG9naW46cGFzc3dvcmQ"), "{shown}");
    assert!(!shown.contains("I2Nsb3VkLWNvbmZpZw"), "{shown}");
    assert!(shown.contains("Authorization"));
    assert!(shown.contains("<redacted 26 bytes>"));
    let dbg = format!("{spec:?}");
    assert!(!dbg.contains("bG9naW46cGFzc3dvcmQ"), "{dbg}");
    assert!(!dbg.contains("I2Nsb3VkLWNvbmZpZw"), "{dbg}");
}

#[test]
fn checksum_pairing_uses_guide_wording() {
    let want = "Please provide checkSum AND checkSumType or none of them";
    assert_eq!(err(&[URL, ("imageCheckSum", "00")]), want);
    assert_eq!(err(&[URL, ("imageCheckSumType", "sha512")]), want);
    // pairing is checked before the URL: OVH answers this first
    assert_eq!(err(&[("imageCheckSumType", "md5")]), want);
}

#[test]
fn each_client_error_has_a_clear_message() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[],
            "missing userMetadata `imageURL`: give the http(s) URL of your qcow2 or raw image",
        ),
        (
            &[("imageURL", "")],
            "missing userMetadata `imageURL`: give the http(s) URL of your qcow2 or raw image",
        ),
        (
            &[("imageURL", "ftp://x/y")],
            "invalid imageURL `ftp://x/y`: only http:// and https:// URLs are supported",
        ),
        (
            &[("imageURL", "http:///y")],
            "invalid imageURL `http:///y`: it has no host",
        ),
        (
            &[("imageURL", "http://a b/y")],
            "invalid imageURL `http://a b/y`: it contains spaces or control characters (percent-encode them)",
        ),
        (
            &[URL, ("imageType", "vmdk")],
            "unknown imageType `vmdk`: use `qcow2` or `raw`",
        ),
        (
            &[URL, ("imageCheckSum", "00"), ("imageCheckSumType", "crc32")],
            "unknown imageCheckSumType `crc32`: use md5, sha1, sha256 or sha512",
        ),
        (
            &[URL, ("imageCheckSum", "abc"), ("imageCheckSumType", "md5")],
            "imageCheckSum is not a valid `md5` checksum: expected 32 hexadecimal characters, got 3",
        ),
        (
            &[
                URL,
                ("imageCheckSum", &"z".repeat(64)),
                ("imageCheckSumType", "sha256"),
            ],
            "imageCheckSum is not a valid `sha256` checksum: expected 64 hexadecimal characters, got 64 characters, not all hexadecimal",
        ),
        (
            &[
                URL,
                ("imageCheckSum", &"a".repeat(64)),
                ("imageCheckSumType", "sha512"),
            ],
            "imageCheckSum is not a valid `sha512` checksum: expected 128 hexadecimal characters, got 64",
        ),
        (
            &[URL, ("httpHeaders0Key", "Authorization")],
            "httpHeaders0Key has no matching httpHeaders0Value: give both or neither",
        ),
        (
            &[URL, ("httpHeaders3Value", "x")],
            "httpHeaders3Value has no matching httpHeaders3Key: give both or neither",
        ),
        (
            &[
                URL,
                ("httpHeaders0Key", "Bad Header"),
                ("httpHeaders0Value", "x"),
            ],
            "httpHeaders0Key `Bad Header` is not a valid HTTP header name",
        ),
        (
            &[
                URL,
                ("httpHeaders0Key", "X-A"),
                ("httpHeaders0Value", "a\r\nX-Evil: 1"),
            ],
            "httpHeaders0Value is not a valid HTTP header value (it holds a control character or line break)",
        ),
        (
            &[URL, ("configDriveUserData", "hello world")],
            "configDriveUserData is neither base64 nor a `#cloud-config` or `#!` script text (it is not base64 and does not start with `#cloud-config` or `#!`); send `base64 -w0 < my-data.yaml` or the plain text",
        ),
        (
            &[URL, ("configDriveUserData", "aGVsbG8gd29ybGQ=")],
            "configDriveUserData is neither base64 nor a `#cloud-config` or `#!` script text (it is base64, but what it decodes to does not start with `#cloud-config`, `#!` or another cloud-init header); send `base64 -w0 < my-data.yaml` or the plain text",
        ),
        (
            &[URL, ("configDriveMetadata", "[1]")],
            "configDriveMetadata must be a JSON object (e.g. {\"role\":\"web\"}): got a JSON array",
        ),
        (
            &[URL, ("sshKey", "hello")],
            "sshKey is not an OpenSSH public key line (`ssh-ed25519 AAAA… comment`): unknown key type `hello`",
        ),
        (
            &[URL, ("diskGroupId", "0")],
            "diskGroupId `0` is not a positive integer",
        ),
        (
            &[URL, ("imageUrl", "x")],
            "unknown userMetadata key `imageUrl`: did you mean `imageURL`? (keys are case-sensitive)",
        ),
        (
            &[URL, URL],
            "userMetadata key `imageURL` is given more than once",
        ),
    ];
    for (meta, want) in cases {
        assert_eq!(&err(meta), want, "for {meta:?}");
    }
}

#[test]
fn template_scheme_hostname_and_json() {
    let mut v: serde_json::Value = serde_json::from_str(GUIDE_EXAMPLE).unwrap();
    v["templateName"] = json!("debian12_64");
    let e = InstallRequest::parse_and_validate(v.to_string().as_bytes()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "unknown templateName `debian12_64`: byol installs `byolinux_64` (the image's files in a storage layout) and `byoi_64` (the image written to one disk)"
    );
    // byolinux_64 carries the default layout, byoi_64 none
    let s = InstallRequest::parse_and_validate(GUIDE_EXAMPLE.as_bytes()).unwrap();
    let st = s.storage.expect("a layout");
    assert_eq!((st.scheme.as_str(), st.layout.len()), ("default", 3));
    let b = GUIDE_EXAMPLE.replace("byolinux_64", "byoi_64");
    let s = InstallRequest::parse_and_validate(b.as_bytes()).unwrap();
    assert!(s.storage.is_none());

    let mut v: serde_json::Value = serde_json::from_str(GUIDE_EXAMPLE).unwrap();
    v["partitionSchemeName"] = json!("custom");
    let e = InstallRequest::parse_and_validate(v.to_string().as_bytes()).unwrap_err();
    assert!(matches!(e, SpecError::UnknownPartitionScheme(_)), "{e}");

    let mut v: serde_json::Value = serde_json::from_str(GUIDE_EXAMPLE).unwrap();
    v["details"]["customHostname"] = json!("bad_host;reboot");
    let e = InstallRequest::parse_and_validate(v.to_string().as_bytes()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("customHostname `bad_host;reboot` is not a valid hostname"),
        "{e}"
    );

    let e = InstallRequest::parse_and_validate(b"{not json").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("request body is not valid JSON: "),
        "{e}"
    );
}

#[test]
fn accepted_variants() {
    let ok = |meta: &[(&str, &str)]| InstallRequest::parse_and_validate(&body(meta)).unwrap();
    let s = ok(&[
        URL,
        ("imageType", "raw"),
        ("configDriveUserData", "#!/bin/sh\necho hi\n"),
    ]);
    assert_eq!(s.image_type, ImageType::Raw);
    assert_eq!(s.user_data.as_ref().unwrap().encoding, "plain");
    assert_eq!(
        s.user_data.as_ref().unwrap().bytes(),
        b"#!/bin/sh\necho hi\n"
    );
    let s = ok(&[
        URL,
        ("imageCheckSum", &"AB".repeat(16)),
        ("imageCheckSumType", "md5"),
    ]);
    assert_eq!(s.checksum.unwrap().hex, "ab".repeat(16));
    let s = ok(&[
        URL,
        ("httpHeaders1Key", "X-B"),
        ("httpHeaders1Value", "b"),
        ("httpHeaders0Key", "X-A"),
        ("httpHeaders0Value", "a"),
        ("configDriveMetadata", "{\"role\":\"web\"}"),
        ("sshKey", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq1 me@host"),
        ("diskGroupId", "2"),
    ]);
    let names: Vec<_> = s.http_headers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["X-A", "X-B"]);
    assert_eq!(s.metadata.unwrap()["role"], "web");
    assert_eq!(s.disk_group_id, 2);
}

#[test]
fn url_credentials_never_echoed() {
    let e = err(&[("imageURL", "ftp://user:secret@host/x")]);
    assert!(!e.contains("secret"), "{e}");
}

#[test]
fn efi_bootloader_path_is_checked_and_kept() {
    let url = ("imageURL", "https://example.invalid/i.qcow2");
    let spec = InstallRequest::parse_and_validate(&body(&[
        url,
        ("efiBootloaderPath", "/efi/debian/grubx64.efi"),
    ]))
    .unwrap();
    assert_eq!(
        spec.efi_bootloader_path.as_deref(),
        Some("\\efi\\debian\\grubx64.efi")
    );
    let none = InstallRequest::parse_and_validate(&body(&[url])).unwrap();
    assert_eq!(none.efi_bootloader_path, None);
    assert_eq!(
        err(&[url, ("efiBootloaderPath", "efi\\debian\\grubx64.efi")]),
        "invalid efiBootloaderPath `efi\\debian\\grubx64.efi`: it must start with `\\` (the ESP's root), e.g. \\efi\\debian\\grubx64.efi"
    );
    assert!(err(&[url, ("efiBootloaderPath", "\\efi\\..\\x.efi")]).contains("`..`"));
    assert!(err(&[url, ("efiBootloaderPath", "\\efi\\debian\\grub.cfg")]).contains("`.efi` file"));
    assert!(err(&[url, ("efiBootloaderPath", "\\efi\\de bian\\x.efi")]).contains("no spaces"));
}
