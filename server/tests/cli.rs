//! The CLI client against a real server: what an operator types.

mod common;

use std::process::{Command, Output};

use common::{BIN, GUIDE_EXAMPLE, Server};

fn byol(s: &Server, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .args(["--server", &s.base, "--data-dir"])
        .arg(&s.data)
        .env_remove("BYOL_TOKEN")
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn operator_workflow() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &[]);
    let out = ok(&byol(
        &s,
        &["machine", "add", "web1", "--mac", "52:54:00:00:00:01"],
    ));
    assert_eq!(out, "machine web1 added (MACs: 52:54:00:00:00:01)\n");
    let out = ok(&byol(&s, &["machine", "list"]));
    assert!(out.lines().nth(1).unwrap().starts_with("web1 "), "{out}");

    let body = d.path().join("body.json");
    std::fs::write(&body, GUIDE_EXAMPLE).unwrap();
    let out = ok(&byol(
        &s,
        &["install", "start", "web1", "--body", body.to_str().unwrap()],
    ));
    assert!(
        out.starts_with("install ") && out.contains("started for web1"),
        "{out}"
    );
    let out = ok(&byol(&s, &["install", "status", "web1"]));
    assert!(out.contains(": pending"), "{out}");
    let o = byol(
        &s,
        &[
            "install",
            "start",
            "web1",
            "--image-url",
            "http://127.0.0.1/x.qcow2",
        ],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("already has an install in progress") && err.contains("(HTTP 409)"),
        "{err}"
    );
    let out = ok(&byol(&s, &["install", "cancel", "web1"]));
    assert!(out.contains("cancelled"), "{out}");

    // flags build the OVH body; user data is sent base64-encoded and accepted
    let ud = d.path().join("user-data");
    std::fs::write(&ud, "#cloud-config\nhostname: web1\n").unwrap();
    let out = ok(&byol(
        &s,
        &[
            "install",
            "start",
            "web1",
            "--json",
            "--image-url",
            "http://127.0.0.1/x.raw",
            "--image-type",
            "raw",
            "--checksum",
            &"a".repeat(64),
            "--checksum-type",
            "sha256",
            "--header",
            "Authorization: Basic eDp5",
            "--user-data",
            ud.to_str().unwrap(),
            "--hostname",
            "web1",
            "--ssh-key",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq1 me@x",
        ],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["state"], "pending");
    assert_eq!(v["spec"]["imageType"], "raw");
    assert_eq!(v["spec"]["httpHeaders"][0]["name"], "Authorization");
    assert!(!out.contains("eDp5"), "header value redacted: {out}");

    // a client error comes back as the server's message, non-zero exit
    let o = byol(
        &s,
        &[
            "install",
            "start",
            "nope",
            "--image-url",
            "http://127.0.0.1/x",
        ],
    );
    assert!(!o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "byol: unknown machine `nope`: add it first (byol machine add nope --mac MAC) (HTTP 404)\n"
    );
    let o = byol(&s, &["install", "start", "web1", "--checksum", "ab"]);
    assert!(!o.status.success());

    // without a token the CLI says where to find one
    let o = Command::new(BIN)
        .args([
            "machine",
            "list",
            "--server",
            &s.base,
            "--data-dir",
            "/nonexistent",
        ])
        .env_remove("BYOL_TOKEN")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no admin token: set BYOL_TOKEN"));
}

#[test]
fn disk_hints_from_the_cli() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &[]);
    let out = ok(&byol(
        &s,
        &[
            "machine",
            "add",
            "db1",
            "--mac",
            "52:54:00:00:00:09",
            "--disk-serial",
            "S3Z9NB0K100002",
            "--disk-min-size",
            "400G",
        ],
    ));
    assert_eq!(
        out,
        "machine db1 added (MACs: 52:54:00:00:00:09); disk hints: serial=\"S3Z9NB0K100002\", \
         minSize=429496729600\n"
    );
    let out = ok(&byol(
        &s,
        &[
            "machine",
            "disk",
            "db1",
            "--disk-by-path",
            "pci-0000:00:1f.2-ata-2.0",
        ],
    ));
    assert_eq!(
        out,
        "machine db1: disk hints byPath=\"pci-0000:00:1f.2-ata-2.0\"\n"
    );
    let out = ok(&byol(&s, &["machine", "show", "db1"]));
    assert!(
        out.contains("\"byPath\": \"pci-0000:00:1f.2-ata-2.0\""),
        "{out}"
    );
    let out = ok(&byol(&s, &["machine", "disk", "db1", "--clear"]));
    assert_eq!(
        out,
        "machine db1: disk hints cleared, the disk comes from diskGroupId\n"
    );
    // bad input: what was wrong and what to do
    let o = byol(&s, &["machine", "disk", "db1"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("give either --clear or at least one"));
    let o = byol(&s, &["machine", "disk", "db1", "--disk-min-size", "lots"]);
    assert!(!o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "byol: --disk-min-size: size `lots` is not a number of bytes with an optional unit (e.g. \
         480G, 2TB)\n"
    );
    let o = byol(
        &s,
        &["machine", "disk", "db1", "--disk-transport", "floppy"],
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("disk hint `transport` is `floppy`: use one of"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn status_follow_prints_events_until_the_end() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &[]);
    ok(&byol(
        &s,
        &["machine", "add", "web2", "--mac", "52:54:00:00:00:02"],
    ));
    ok(&byol(
        &s,
        &[
            "install",
            "start",
            "web2",
            "--image-url",
            "http://127.0.0.1/x.qcow2",
        ],
    ));
    let script = reqwest::blocking_get(&s.url("/ipxe/52:54:00:00:00:02"));
    let token = common::token_in(&script);
    // the agent takes its config: the install is its
    reqwest::blocking_config(&s.url("/agent/v1/config"), &token);
    let follow = Command::new(BIN)
        .args([
            "install",
            "status",
            "web2",
            "--follow",
            "--server",
            &s.base,
            "--data-dir",
        ])
        .arg(&s.data)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for ev in [
        r#"{"phase":"download","status":"running","message":"writing","bytes_done":1048576,"bytes_total":4194304}"#,
        r#"{"phase":"bootloader","status":"ok","logs":["grub-install: done","evil\u001b[2J\nINFO forged"]}"#,
        r#"{"phase":"done","status":"done","message":"installed"}"#,
    ] {
        reqwest::blocking_post(&s.url("/agent/v1/events"), &token, ev);
    }
    let out = follow.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("download     running  writing [1 / 4 MiB, 25%]"),
        "{text}"
    );
    assert!(text.contains("    | grub-install: done"), "{text}");
    // the machine's text cannot drive the terminal or forge a line
    assert!(
        text.contains("    | evil\\u{1b}[2J\\nINFO forged"),
        "{text}"
    );
    assert!(!text.contains('\u{1b}'), "{text}");
    assert!(text.trim_end().ends_with(": done"), "{text}");
}

/// Tiny blocking HTTP helpers over reqwest's async client.
mod reqwest {
    pub fn blocking_get(url: &str) -> String {
        rt().block_on(async { ::reqwest::get(url).await.unwrap().text().await.unwrap() })
    }
    pub fn blocking_config(url: &str, token: &str) {
        rt().block_on(async {
            let r = ::reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
        })
    }
    pub fn blocking_post(url: &str, token: &str, body: &str) {
        rt().block_on(async {
            let r = ::reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
        })
    }
    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }
}

/// The client flags work before the subcommand as after it; the later one wins.
#[test]
fn client_flags_before_or_after_the_subcommand() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &[]);
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env_remove("BYOL_TOKEN")
            .env_remove("BYOL_SERVER")
            .env_remove("BYOL_DATA_DIR")
            .output()
            .unwrap()
    };
    let data = s.data.to_str().unwrap();
    let out = ok(&run(&[
        "--server",
        &s.base,
        "--data-dir",
        data,
        "machine",
        "add",
        "cf1",
        "--mac",
        "52:54:00:00:00:41",
    ]));
    assert_eq!(out, "machine cf1 added (MACs: 52:54:00:00:00:41)\n");
    let out = ok(&run(&[
        "--server",
        &s.base,
        "--data-dir",
        data,
        "--json",
        "machine",
        "show",
        "cf1",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["name"], "cf1");
    let out = ok(&run(&[
        "machine",
        "--server",
        &s.base,
        "list",
        "--data-dir",
        data,
        "--json",
    ]));
    assert!(out.contains("\"cf1\""), "{out}");
    // after the subcommand wins over before it
    let o = run(&[
        "--server",
        &s.base,
        "machine",
        "list",
        "--server",
        "http://127.0.0.1:9",
        "--data-dir",
        data,
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("127.0.0.1:9"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn hook_timeout_on_machines_and_installs() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &[]);
    ok(&byol(
        &s,
        &[
            "machine",
            "add",
            "ht2",
            "--mac",
            "52:54:00:00:00:42",
            "--hook-timeout",
            "45m",
        ],
    ));
    let v: serde_json::Value =
        serde_json::from_str(&ok(&byol(&s, &["machine", "show", "ht2"]))).unwrap();
    assert_eq!(v["hookTimeout"], "45m");
    let out = ok(&byol(&s, &["machine", "hook-timeout", "ht2", "2h"]));
    assert_eq!(out, "machine ht2: make_image_bootable.sh may run for 2h\n");
    let out = ok(&byol(&s, &["machine", "hook-timeout", "ht2", "default"]));
    assert_eq!(
        out,
        "machine ht2: make_image_bootable.sh gets the server's time limit\n"
    );
    let o = byol(&s, &["machine", "hook-timeout", "ht2", "soon"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("hookTimeout: `soon` is not a duration"),
        "{err}"
    );
    // an install's own limit travels as the hookTimeout key and shows in its spec
    let out = ok(&byol(
        &s,
        &[
            "install",
            "start",
            "ht2",
            "--image-url",
            "http://127.0.0.1/x.qcow2",
            "--hook-timeout",
            "90m",
            "--json",
        ],
    ));
    assert!(
        out.contains("\"hookTimeout\": \"1h30m\"") || out.contains("\"hookTimeout\":\"1h30m\""),
        "{out}"
    );
}

#[test]
fn storage_schemes_from_the_cli_and_the_api() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &[]);
    // the built-in scheme is listed and shown, never replaced
    let out = ok(&byol(&s, &["scheme", "list"]));
    assert_eq!(out, "default (3 rows, built in)\n");
    let out = ok(&byol(&s, &["scheme", "show", "default"]));
    assert_eq!(
        out,
        "scheme default (built in)\n  /boot        ext4   1024 MiB, RAID 1\n  /            ext4   the \
         rest, RAID 1\n  swap         swap   512 MiB, on every disk\n"
    );
    let file = d.path().join("layout.json");
    std::fs::write(
        &file,
        r#"{"layout": [
            {"mountPoint": "/boot", "fileSystem": "ext4", "raidLevel": 1, "size": 1024},
            {"mountPoint": "/", "fileSystem": "ext4", "raidLevel": 1, "size": 20480, "extras": {"lv": {"name": "root"}}},
            {"mountPoint": "swap", "fileSystem": "swap", "size": 2048},
            {"mountPoint": "/data", "fileSystem": "xfs", "raidLevel": 5, "size": 0}]}"#,
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let out = ok(&byol(&s, &["scheme", "add", "web", "--file", f]));
    assert!(out.starts_with("scheme web\n  /boot "), "{out}");
    assert!(
        out.contains("  /            ext4   20480 MiB, RAID 1, LV root\n"),
        "{out}"
    );
    let o = byol(&s, &["scheme", "add", "default", "--file", f]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("`default` is byol's built-in scheme"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // a bad layout: OVH's class and message, nothing stored
    std::fs::write(
        &file,
        r#"[{"mountPoint": "/boot/efi", "fileSystem": "ext4", "size": 512}, {"mountPoint": "/", "fileSystem": "ext4"}]"#,
    )
    .unwrap();
    let o = byol(&s, &["scheme", "add", "bad", "--file", f]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("mountPoint value /boot/efi is forbidden") && err.contains("(HTTP 400)"),
        "{err}"
    );
    let layout = std::fs::read_to_string(&file).unwrap();
    let (status, v) = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(s.client().req("PUT", "/api/v1/schemes/bad", Some(&layout)));
    assert_eq!(status, 400);
    assert_eq!(
        v["class"],
        "Client::BadRequest::PartitionForbiddenMountpoint"
    );
    let out = ok(&byol(&s, &["scheme", "list"]));
    assert_eq!(out, "default (3 rows, built in)\nweb (4 rows)\n");
    // a machine's default scheme; a scheme in use is not deleted
    ok(&byol(
        &s,
        &["machine", "add", "db1", "--mac", "52:54:00:00:00:09"],
    ));
    let out = ok(&byol(&s, &["machine", "scheme", "db1", "web"]));
    assert_eq!(out, "machine db1: storage scheme web\n");
    let o = byol(&s, &["machine", "scheme", "db1", "nope"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(
            "Partition scheme nope not found for operating system byolinux_64 (HTTP 404)"
        )
    );
    let v: serde_json::Value =
        serde_json::from_str(&ok(&byol(&s, &["machine", "show", "db1"]))).unwrap();
    assert_eq!(v["scheme"], "web");
    let o = byol(&s, &["scheme", "delete", "web"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("scheme `web` is the default of db1"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    ok(&byol(&s, &["machine", "scheme", "db1", "default"]));
    assert_eq!(
        ok(&byol(&s, &["scheme", "delete", "web"])),
        "scheme web deleted\n"
    );
    assert_eq!(
        ok(&byol(&s, &["scheme", "list"])),
        "default (3 rows, built in)\n"
    );
}

/// Where an install's layout comes from: the request's `storage` (OVH's newer `reinstall`
/// body), its `partitionSchemeName`, the machine's default scheme, byol's `default`; and
/// `byoi_64` has none. Unknown schemes and several disk groups get OVH's classes.
#[test]
fn installs_take_their_layout_from_the_request_the_scheme_or_the_machine() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = s.client();
    let req = |m: &str, p: &str, b: Option<&str>| rt.block_on(c.req(m, p, b));
    let web = r#"{"layout": [{"mountPoint": "/", "fileSystem": "ext4", "size": 0},
        {"mountPoint": "/data", "fileSystem": "xfs", "raidLevel": 5, "size": 4096}]}"#;
    assert_eq!(req("PUT", "/api/v1/schemes/web", Some(web)).0, 201);
    ok(&byol(
        &s,
        &["machine", "add", "db1", "--mac", "52:54:00:00:00:19"],
    ));
    let legacy = |scheme: Option<&str>, template: &str| {
        let mut v: serde_json::Value = serde_json::from_str(GUIDE_EXAMPLE).unwrap();
        v["templateName"] = template.into();
        match scheme {
            Some(n) => v["partitionSchemeName"] = n.into(),
            None => {
                v.as_object_mut().unwrap().remove("partitionSchemeName");
            }
        }
        v.to_string()
    };
    let start = "/dedicated/server/db1/install/start";
    let (st, v) = req("POST", start, Some(&legacy(Some("nope"), "byolinux_64")));
    assert_eq!(
        (st, v["class"].as_str()),
        (404, Some("Client::NotFound::SchemeName"))
    );
    assert_eq!(
        v["message"],
        "Partition scheme nope not found for operating system byolinux_64"
    );
    let reinstall = "/dedicated/server/db1/reinstall";
    let two = r#"{"operatingSystem": "byolinux_64", "customizations": {"imageURL": "https://example.com/i.qcow2"},
        "storage": [{"diskGroupId": 1}, {"diskGroupId": 2}]}"#;
    let (st, v) = req("POST", reinstall, Some(two));
    assert_eq!(
        (st, v["class"].as_str()),
        (
            501,
            Some("Server::NotImplemented::DiskGroupMultipleConfigs")
        )
    );
    let bad = r#"{"operatingSystem": "byolinux_64", "customizations": {"imageURL": "https://example.com/i.qcow2"},
        "storage": [{"partitioning": {"layout": [{"mountPoint": "/boot", "fileSystem": "ext4", "size": 512}]}}]}"#;
    let (st, v) = req("POST", reinstall, Some(bad));
    assert_eq!(
        (st, v["class"].as_str()),
        (
            400,
            Some("Client::BadRequest::PartitionMissingRootMountpoint")
        ),
        "{v}"
    );
    // each accepted request's layout, then the install cancelled for the next one
    let check = |path: &str, body: &str, scheme: Option<&str>, rows: usize| {
        let (st, v) = req("POST", path, Some(body));
        assert_eq!(st, 200, "{v}");
        assert!(v["taskId"].as_i64().is_some(), "{v}");
        let machine = path.split('/').nth(3).unwrap();
        let (_, l) = req("GET", &format!("/api/v1/machines/{machine}/installs"), None);
        let id = l["installs"][0]["id"].as_str().unwrap().to_string();
        let (_, i) = req("GET", &format!("/api/v1/installs/{id}"), None);
        let storage = &i["spec"]["storage"];
        match scheme {
            None => assert!(storage.is_null(), "{i}"),
            Some(n) => {
                assert_eq!(storage["scheme"], n, "{i}");
                assert_eq!(storage["layout"].as_array().unwrap().len(), rows, "{i}");
            }
        }
        let (st, _) = req("POST", &format!("/api/v1/installs/{id}/cancel"), None);
        assert_eq!(st, 200);
    };
    check(start, &legacy(None, "byolinux_64"), Some("default"), 3);
    check(start, &legacy(Some("web"), "byolinux_64"), Some("web"), 2);
    check(start, &legacy(None, "byoi_64"), None, 0);
    ok(&byol(&s, &["machine", "scheme", "db1", "web"]));
    check(start, &legacy(None, "byolinux_64"), Some("web"), 2);
    check(
        start,
        &legacy(Some("default"), "byolinux_64"),
        Some("default"),
        3,
    );
    let custom = r#"{"operatingSystem": "byolinux_64",
        "customizations": {"hostname": "db1", "imageURL": "https://example.com/i.qcow2",
            "httpHeaders": {"Authorization": "Basic x"}, "configDriveMetadata": {"a": "b"}},
        "storage": [{"diskGroupId": 1, "partitioning": {"disks": 2, "layout": [
            {"mountPoint": "/boot", "fileSystem": "ext4", "raidLevel": 1, "size": 1024},
            {"mountPoint": "/", "fileSystem": "ext4", "raidLevel": 1, "size": 20480, "extras": {"lv": {"name": "root"}}},
            {"mountPoint": "swap", "fileSystem": "swap", "size": 2048},
            {"mountPoint": "/data", "fileSystem": "xfs", "raidLevel": 5, "size": 0}]}}]}"#;
    check(reinstall, custom, Some("custom"), 4);
    let named = r#"{"operatingSystem": "byolinux_64", "customizations": {"imageURL": "https://example.com/i.qcow2"},
        "storage": [{"partitioning": {"schemeName": "default"}}]}"#;
    check(reinstall, named, Some("default"), 3);
}

#[test]
fn api_keys_from_the_cli() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &[]);
    let out = ok(&byol(&s, &["api-key", "create", "terraform", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["applicationKey", "applicationSecret", "consumerKey"],
        "{out}"
    );
    let secret = v["applicationSecret"].as_str().unwrap();
    let ck = v["consumerKey"].as_str().unwrap();
    assert!(secret.len() >= 32 && ck.len() >= 32, "{out}");

    // listed without secrets, with the consumer key's rules
    let list = ok(&byol(&s, &["api-key", "list"]));
    assert!(list.starts_with("terraform "), "{list}");
    assert!(
        list.contains("credential 1 validated: GET /*, POST /*, PUT /*, DELETE /*"),
        "{list}"
    );
    assert!(!list.contains(secret) && !list.contains(ck), "{list}");
    // a second key of the same name is refused, saying what to do
    let o = byol(&s, &["api-key", "create", "terraform"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("byol api-key revoke terraform"), "{err}");
    // an unknown credential to validate
    let o = byol(&s, &["api-key", "validate", "99"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no credential 99"));

    let out = ok(&byol(&s, &["api-key", "revoke", "terraform"]));
    assert_eq!(out, "api key terraform revoked\n");
    let list = ok(&byol(&s, &["api-key", "list"]));
    assert!(
        list.contains("(revoked)") && list.contains("credential 1 revoked"),
        "{list}"
    );
}
