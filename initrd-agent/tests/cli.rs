//! `byol-agent image write`, the host command line of the image engine: progress on stderr,
//! one JSON line on stdout, the guide's wording and exit status 1 on failure.

mod common;

use std::process::Command;

use common::httpd::{Body, Config, Httpd};

const BIN: &str = env!("CARGO_BIN_EXE_byol-agent");

#[test]
fn write_prints_a_json_summary_and_errors_in_the_guide_s_words() {
    let d = tempfile::tempdir().unwrap();
    let raw = d.path().join("disk.raw");
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&raw, &data).unwrap();
    let qcow = d.path().join("disk.qcow2");
    let st = Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow)
        .status()
        .unwrap();
    assert!(st.success());
    let sha = {
        let o = Command::new("sha256sum").arg(&qcow).output().unwrap();
        String::from_utf8(o.stdout)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let httpd = Httpd::start(
        Config::new(Body::File(qcow.clone())).require_header("Authorization", "Basic dTpw"),
    );
    let target = d.path().join("out.raw");
    let o = Command::new(BIN)
        .args(["image", "write", "--source", &httpd.image_url(), "--target"])
        .arg(&target)
        .args([
            "--format",
            "qcow2",
            "--checksum",
            &sha,
            "--checksum-type",
            "sha256",
            "--header",
            "Authorization: Basic dTpw",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    assert_eq!(out.lines().count(), 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["format"], "qcow2");
    assert_eq!(v["virtual_size"], 3 << 20);
    assert_eq!(v["checksum"], sha);
    assert_eq!(v["bytes_read"], std::fs::metadata(&qcow).unwrap().len());
    assert!(v["seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(std::fs::read(&target).unwrap(), data);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("image format: qcow2"), "{err}");
    assert!(!err.contains("dTpw"), "header value in the output: {err}");

    // the guide's error, exit 1, nothing on stdout
    let o = Command::new(BIN)
        .args(["image", "write", "--source"])
        .arg(&raw)
        .arg("--target")
        .arg(&target)
        .args(["--format", "qcow2"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).lines().last().unwrap(),
        "byol-agent: image provided format is `raw` which does not match expected qcow2 format"
    );
    // without the header the server says 401, and the message says so without the value
    let o = Command::new(BIN)
        .args(["image", "write", "--source", &httpd.image_url(), "--target"])
        .arg(&target)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "Could not download image located : `{}`",
            httpd.image_url()
        )) && err.contains("401"),
        "{err}"
    );
}
