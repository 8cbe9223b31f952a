//! The server for real: `byol serve` on a loopback port, driven over HTTP like an operator,
//! a booting firmware and an agent would.

mod common;

use std::time::Duration;

use common::{Api, GUIDE_EXAMPLE, Server, body, token_in};
use serde_json::json;

const MAC: &str = "52:54:00:12:34:56";

/// The id of the machine's latest install (OVH's task answers carry the task number).
async fn latest_install(api: &Api, machine: &str) -> String {
    let (st, v) = api
        .get(&format!("/api/v1/machines/{machine}/installs"))
        .await;
    assert_eq!(st, 200, "{v}");
    v["installs"][0]["id"].as_str().unwrap().to_string()
}

async fn with_machine(s: &Server, name: &str, mac: &str) -> Api {
    let api = s.client();
    let (st, v) = api
        .post(
            "/api/v1/machines",
            &json!({"name": name, "macs": [mac]}).to_string(),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    api
}

#[tokio::test]
async fn guide_example_accepted_and_status_is_ovh_shaped() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &[]);
    let api = with_machine(&s, "ns1", MAC).await;
    let (st, v) = api
        .post("/dedicated/server/ns1/install/start", GUIDE_EXAMPLE)
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["function"], "reinstallServer");
    assert_eq!(v["taskId"], 1, "{v}");
    assert_eq!(v["function"], "reinstallServer");
    assert_eq!(v["status"], "init");
    assert_eq!(latest_install(&api, "ns1").await.len(), 36);

    let (st, v) = api.get("/dedicated/server/ns1/install/status").await;
    assert_eq!(st, 200, "{v}");
    assert!(v["elapsedTime"].is_u64(), "{v}");
    assert_eq!(v["progress"][0]["status"], "doing");
    assert_eq!(v["progress"][0]["error"], "");
    assert!(
        v["progress"][0]["comment"]
            .as_str()
            .unwrap()
            .contains("network-boot")
    );

    // a second install while one is pending is refused, in OVH's words
    let (st, v) = api
        .post("/dedicated/server/ns1/install/start", GUIDE_EXAMPLE)
        .await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["class"], "Client::BadRequest::TaskAlreadyExists", "{v}");
    assert_eq!(
        v["message"],
        "Task 1 of type reinstallServer with status init is already running on server ns1",
        "{v}"
    );
    // the native API's answer stays a 409 with byol's words
    let (st, v) = api
        .post("/api/v1/machines/ns1/installs", GUIDE_EXAMPLE)
        .await;
    assert_eq!(st, 409, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("already has an install in progress"),
        "{v}"
    );

    // no install at all on another machine: OVH's answer
    with_machine(&s, "ns2", "52:54:00:12:34:57").await;
    let (st, v) = api.get("/dedicated/server/ns2/install/status").await;
    assert_eq!(st, 404);
    assert_eq!(
        v["message"],
        "Server is not being installed or reinstalled at the moment"
    );
}

#[tokio::test]
async fn client_errors_have_exact_texts() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &[]);
    let api = with_machine(&s, "ns1", MAC).await;
    let url = ("imageURL", "http://127.0.0.1/i.qcow2");
    let cases: Vec<(String, &str)> = vec![
        (
            body(&[url, ("imageCheckSum", "ab")]),
            "Please provide checkSum AND checkSumType or none of them",
        ),
        (
            body(&[url, ("imageCheckSumType", "sha512")]),
            "Please provide checkSum AND checkSumType or none of them",
        ),
        (
            body(&[]),
            "missing userMetadata `imageURL`: give the http(s) URL of your qcow2 or raw image",
        ),
        (
            body(&[url, ("imageCheckSum", "ab"), ("imageCheckSumType", "sha3")]),
            "unknown imageCheckSumType `sha3`: use md5, sha1, sha256 or sha512",
        ),
        (
            body(&[url, ("imageCheckSum", "ab"), ("imageCheckSumType", "sha1")]),
            "imageCheckSum is not a valid `sha1` checksum: expected 40 hexadecimal characters, got 2",
        ),
        (
            body(&[url, ("httpHeaders0Key", "Authorization")]),
            "httpHeaders0Key has no matching httpHeaders0Value: give both or neither",
        ),
        (
            body(&[url, ("configDriveUserData", "not user data")]),
            "configDriveUserData is neither base64 nor a `#cloud-config` or `#!` script text (it is not base64 and does not start with `#cloud-config` or `#!`); send `base64 -w0 < my-data.yaml` or the plain text",
        ),
    ];
    for (b, want) in cases {
        let (st, v) = api.post("/dedicated/server/ns1/install/start", &b).await;
        assert_eq!(st, 400, "{v}");
        assert_eq!(v["message"], want);
    }
    // an unknown template: OVH's class and words, then what byol installs
    let (st, v) = api
        .post(
            "/dedicated/server/ns1/install/start",
            &GUIDE_EXAMPLE.replace("byolinux_64", "debian12_64"),
        )
        .await;
    assert_eq!(st, 404, "{v}");
    assert_eq!(v["class"], "Client::NotFound::OperatingSystem");
    assert_eq!(
        v["message"],
        "Operating system debian12_64 could not be found: byol installs byolinux_64 (the image's files in a storage layout) and byoi_64 (the image written to one disk)"
    );
    let (st, v) = api
        .post("/dedicated/server/nope/install/start", GUIDE_EXAMPLE)
        .await;
    assert_eq!(st, 404);
    assert_eq!(
        v["message"],
        "unknown machine `nope`: add it first (byol machine add nope --mac MAC)"
    );
    // nothing was created by the refused requests
    let (_, v) = api.get("/api/v1/machines/ns1/installs").await;
    assert_eq!(v["installs"].as_array().unwrap().len(), 0, "{v}");
}

#[tokio::test]
async fn admin_token_required() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &[]);
    let mut api = s.client();
    api.token = None;
    let (st, v) = api.get("/api/v1/machines").await;
    assert_eq!(st, 401);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("missing credentials: send `Authorization: Bearer <token>`")
    );
    api.token = Some("0".repeat(64));
    let (st, _) = api
        .post("/dedicated/server/x/install/start", GUIDE_EXAMPLE)
        .await;
    assert_eq!(st, 401);
    assert!(s.wait_log("wrong admin token", Duration::from_secs(5)));
    assert!(!s.log().contains(&"0".repeat(64)));
}

#[tokio::test]
async fn machines_crud_and_validation() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &[]);
    let api = s.client();
    let (st, v) = api
        .post(
            "/api/v1/machines",
            r#"{"name":"rack1-u07","macs":["52-54-00-AA-BB-CC"]}"#,
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["macs"][0], "52:54:00:aa:bb:cc");
    let (st, v) = api
        .post(
            "/api/v1/machines",
            r#"{"name":"other","macs":["52:54:00:aa:bb:cc"]}"#,
        )
        .await;
    assert_eq!(st, 409);
    assert_eq!(
        v["message"],
        "MAC 52:54:00:aa:bb:cc already belongs to machine `rack1-u07`"
    );
    let (st, v) = api
        .post(
            "/api/v1/machines",
            r#"{"name":"bad\nname","macs":["52:54:00:aa:bb:cd"]}"#,
        )
        .await;
    assert_eq!(st, 400, "{v}");
    let (st, v) = api
        .post(
            "/api/v1/machines",
            r#"{"name":"m2","macs":["zz:54:00:aa:bb:cd"]}"#,
        )
        .await;
    assert_eq!(st, 400);
    assert_eq!(
        v["message"],
        "`zz:54:00:aa:bb:cd` is not a MAC address (e.g. 52:54:00:12:34:56)"
    );
    let (st, v) = api.post("/api/v1/machines", r#"{"name":"m2"}"#).await;
    assert_eq!(st, 400);
    assert!(v["message"].as_str().unwrap().contains("at least one MAC"));
    let (st, v) = api.get("/api/v1/machines").await;
    assert_eq!(st, 200);
    assert_eq!(v["machines"].as_array().unwrap().len(), 1);
    let (st, _) = api.req("DELETE", "/api/v1/machines/rack1-u07", None).await;
    assert_eq!(st, 204);
    let (st, _) = api.get("/api/v1/machines/rack1-u07").await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn disk_hints_on_machines_reach_the_agent() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &[]);
    let api = s.client();
    let (st, v) = api
        .post(
            "/api/v1/machines",
            r#"{"name":"ns2","macs":["52:54:00:00:00:02"],"disk":{"serial":"S3Z9NB0K","minSize":100000000000}}"#,
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(
        v["disk"],
        json!({"serial": "S3Z9NB0K", "minSize": 100000000000u64})
    );
    // bad hints: the field and what to do
    for (hints, want) in [
        (r#"{"serail":"x"}"#, "unknown field `serail`"),
        (r#"{"transport":"floppy"}"#, "use one of nvme"),
        (r#"{"minSize":10,"maxSize":5}"#, "larger than `maxSize`"),
        (r#"{"allowRemovable":true}"#, "needs another hint"),
        (r#"{"serial":""}"#, "`serial` is empty"),
    ] {
        let (st, v) = api
            .req("PUT", "/api/v1/machines/ns2/disk", Some(hints))
            .await;
        assert_eq!(st, 400, "{hints}: {v}");
        assert!(
            v["message"].as_str().unwrap().contains(want),
            "{hints}: {v}"
        );
    }
    let (st, v) = api
        .req(
            "PUT",
            "/api/v1/machines/nope/disk",
            Some(r#"{"serial":"x"}"#),
        )
        .await;
    assert_eq!(st, 404, "{v}");
    // diskGroupId other than 1 conflicts with hints: said before the machine boots
    let (st, v) = api
        .post(
            "/dedicated/server/ns2/install/start",
            &body(&[
                ("imageURL", "http://127.0.0.1/x.qcow2"),
                ("diskGroupId", "2"),
            ]),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["message"].as_str().unwrap().starts_with(
            "diskGroupId 2 given, but machine `ns2` has disk hints (serial=\"S3Z9NB0K\""
        ),
        "{v}"
    );
    let (st, v) = api
        .post(
            "/dedicated/server/ns2/install/start",
            &body(&[("imageURL", "http://127.0.0.1/x.qcow2")]),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    // the agent's config carries the hints
    let (_, script) = api.text("/ipxe/52:54:00:00:00:02").await;
    let agent = Api {
        http: reqwest::Client::new(),
        base: s.base.clone(),
        token: Some(token_in(&script)),
    };
    let (st, cfg) = agent.get("/agent/v1/config").await;
    assert_eq!(st, 200, "{cfg}");
    assert_eq!(cfg["disk_hints"]["serial"], "S3Z9NB0K");
    // hints cannot change under a running install; after it, they can, and `{}` clears them
    let (st, v) = api
        .req(
            "PUT",
            "/api/v1/machines/ns2/disk",
            Some(r#"{"wwn":"0x5000c500a1b2c3d4"}"#),
        )
        .await;
    assert_eq!(st, 409, "{v}");
    let id = cfg["install_id"].as_str().unwrap().to_string();
    let (st, _) = api.post(&format!("/api/v1/installs/{id}/cancel"), "").await;
    assert_eq!(st, 200);
    let (st, v) = api
        .req(
            "PUT",
            "/api/v1/machines/ns2/disk",
            Some(r#"{"wwn":"0x5000c500a1b2c3d4"}"#),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["disk"], json!({"wwn": "0x5000c500a1b2c3d4"}));
    let (st, v) = api
        .req("PUT", "/api/v1/machines/ns2/disk", Some("{}"))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["disk"], json!({}));
    // hints survive a restart (stored in SQLite)
    let (st, _) = api
        .req(
            "PUT",
            "/api/v1/machines/ns2/disk",
            Some(r#"{"byPath":"pci-0000:00:1f.2-ata-2.0"}"#),
        )
        .await;
    assert_eq!(st, 200);
    drop(s);
    let s = Server::start(d.path(), &[]);
    let (_, v) = s.client().get("/api/v1/machines/ns2").await;
    assert_eq!(v["disk"]["byPath"], "pci-0000:00:1f.2-ata-2.0");
}

#[tokio::test]
async fn ipxe_scripts_for_each_case() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &[]);
    let api = with_machine(&s, "ns1", MAC).await;

    let (st, entry) = api.text("/boot.ipxe").await;
    assert_eq!(st, 200);
    assert!(entry.starts_with("#!ipxe"), "{entry}");
    assert!(
        entry.contains(&format!("{}/ipxe/${{netX/mac}}", s.base)),
        "{entry}"
    );
    assert!(
        entry.contains("${platform}") && entry.contains("${buildarch}"),
        "{entry}"
    );

    // unknown MAC: local disk, per firmware
    let (_, bios) = api.text("/ipxe/52:54:00:99:99:99?platform=pcbios").await;
    assert!(
        bios.contains("sanboot --no-describe --drive 0x80"),
        "{bios}"
    );
    let (_, efi) = api.text("/ipxe/52:54:00:99:99:99?platform=efi").await;
    assert!(efi.lines().any(|l| l.trim().starts_with("exit")), "{efi}");
    assert!(!efi.contains("sanboot"), "{efi}");
    // known MAC without install: local disk
    let (_, local) = api.text(&format!("/ipxe/{MAC}?platform=pcbios")).await;
    assert!(
        local.contains("sanboot --no-describe --drive 0x80"),
        "{local}"
    );
    assert!(!local.contains("kernel"), "{local}");
    // unknown and idle MACs get the very same answer: it names no machine
    let (_, unknown) = api.text("/ipxe/52:54:00:99:99:99?platform=pcbios").await;
    assert_eq!(unknown, local);
    assert!(!local.contains("ns1"), "{local}");
    // pending install: kernel + initramfs + command line, hyphen MAC form accepted
    let (st, _) = api
        .post("/dedicated/server/ns1/install/start", GUIDE_EXAMPLE)
        .await;
    assert_eq!(st, 200);
    let (_, inst) = api
        .text("/ipxe/52-54-00-12-34-56?platform=efi&buildarch=x86_64")
        .await;
    assert!(
        inst.contains(&format!("{}/assets/vmlinuz", s.base)),
        "{inst}"
    );
    assert!(
        inst.contains(&format!("{}/assets/initramfs", s.base)),
        "{inst}"
    );
    assert!(inst.contains(&format!("byol.server={}", s.base)), "{inst}");
    assert!(inst.contains("byol.install="), "{inst}");
    assert!(inst.contains("byol.mac=${netX/mac}"), "{inst}");
    assert!(inst.contains("byol.ip=${netX/ip}"), "{inst}");
    assert_eq!(token_in(&inst).len(), 64);
    // nothing the operator typed is in the script
    assert!(
        !inst.contains("myCustomBYOLinux") && !inst.contains("github.com"),
        "{inst}"
    );
    // not a MAC
    let (st, _) = api.text("/ipxe/not-a-mac").await;
    assert_eq!(st, 400);
    assert!(s.wait_log("ipxe script: install", Duration::from_secs(5)));
}

#[tokio::test]
async fn injection_attempts_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &[]);
    let api = with_machine(&s, "ns1", MAC).await;
    let http = reqwest::Client::new();
    // a hostile Host header cannot become part of a script
    for host in ["evil${root-path}", "a b", "x|shell", "h&&chain"] {
        let r = http
            .get(s.url("/boot.ipxe"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "Host {host:?}");
        let t = r.text().await.unwrap();
        assert!(!t.contains("#!ipxe"), "{t}");
    }
    // MAC paths with iPXE syntax
    for p in [
        "/ipxe/52:54:00:12:34:56%0Ashell",
        "/ipxe/$%7Bnet0%2Fmac%7D",
        "/ipxe/52:54:00:12:34:56%20||%20shell",
    ] {
        let (st, t) = api.text(p).await;
        assert_eq!(st, 400, "{p}: {t}");
    }
    // an operator-typed hostname with script syntax never validates
    let mut b: serde_json::Value = serde_json::from_str(GUIDE_EXAMPLE).unwrap();
    b["details"]["customHostname"] = json!("h\nshell");
    let (st, _) = api
        .post("/dedicated/server/ns1/install/start", &b.to_string())
        .await;
    assert_eq!(st, 400);
    // an image URL with script syntax is accepted as data but never reaches a script
    let evil = body(&[("imageURL", "http://x/a${net0/ip}||shell&&reboot")]);
    let (st, v) = api.post("/dedicated/server/ns1/install/start", &evil).await;
    assert_eq!(st, 200, "{v}");
    let (_, inst) = api.text(&format!("/ipxe/{MAC}?platform=pcbios")).await;
    assert!(
        !inst.contains("||shell") && !inst.contains("net0/ip"),
        "{inst}"
    );
    // an unknown platform value is not echoed
    let (_, t) = api.text(&format!("/ipxe/{MAC}?platform=%0Ashell")).await;
    assert!(!t.contains("\nshell"), "{t}");
}

#[tokio::test]
async fn agent_token_rules_and_state_machine() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &[]);
    let api = with_machine(&s, "ns1", MAC).await;
    let (st, v) = api
        .post("/dedicated/server/ns1/install/start", GUIDE_EXAMPLE)
        .await;
    assert_eq!(st, 200, "{v}");
    let id = latest_install(&api, "ns1").await;
    let agent = |t: &str| Api {
        http: reqwest::Client::new(),
        base: s.base.clone(),
        token: Some(t.to_string()),
    };

    let (_, script1) = api.text(&format!("/ipxe/{MAC}")).await;
    let t1 = token_in(&script1);
    let (st, cfg) = agent(&t1).get("/agent/v1/config").await;
    assert_eq!(st, 200, "{cfg}");
    assert_eq!(cfg["install_id"], id);
    assert_eq!(cfg["machine"], "ns1");
    assert_eq!(cfg["macs"][0], MAC);
    // the agent gets the real secrets it needs
    assert_eq!(
        cfg["install"]["http_headers"][0]["value"],
        "Basic bG9naW46cGFzc3dvcmQ="
    );

    // the token opens the config once
    let (st, v) = agent(&t1).get("/agent/v1/config").await;
    assert_eq!(st, 403, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("this boot's token already fetched the config"),
        "{v}"
    );
    // a second boot script (a stray fetch) gets its own token, which cannot take over the
    // running agent: boot 1 was heard from just now
    let (_, script2) = api.text(&format!("/ipxe/{MAC}")).await;
    let t2 = token_in(&script2);
    assert_ne!(t1, t2);
    let (st, v) = agent(&t2).get("/agent/v1/config").await;
    assert_eq!(st, 409, "{v}");
    assert_eq!(v["state"], "busy");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("boot 1 of this machine is running this install"),
        "{v}"
    );
    let (st, _) = agent("nonsense").get("/agent/v1/config").await;
    assert_eq!(st, 401);
    let (st, _) = Api {
        http: reqwest::Client::new(),
        base: s.base.clone(),
        token: None,
    }
    .get("/agent/v1/config")
    .await;
    assert_eq!(st, 401);
    // the admin token is not an agent token
    let (st, _) = agent(&s.token).get("/agent/v1/config").await;
    assert_eq!(st, 401);
    // the stray token's events are kept in the log but change nothing
    let (st, v) = agent(&t2)
        .post(
            "/agent/v1/events",
            r#"{"phase":"verify","status":"failed","message":"forged"}"#,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["state"], "installing");

    let a = agent(&t1);
    let (st, v) = a
        .post(
            "/agent/v1/events",
            r#"{"phase":"booted","status":"ok","message":"kernel up","seq":1}"#,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["state"], "installing");
    let batch = r#"[{"phase":"download","status":"running","bytes_done":10,"bytes_total":100,"seq":2},{"phase":"download","status":"ok","bytes_done":100,"bytes_total":100,"seq":3}]"#;
    let (st, v) = a.post("/agent/v1/events", batch).await;
    assert_eq!(st, 200, "{v}");
    // the same batch again (its answer was lost): recorded once
    let (st, v) = a.post("/agent/v1/events", batch).await;
    assert_eq!(st, 200, "{v}");
    assert!(s.wait_log(
        "agent events already recorded (sent again): skipped",
        Duration::from_secs(5)
    ));
    let (st, v) = a
        .post("/agent/v1/events", r#"{"phase":"BAD PHASE","status":"ok"}"#)
        .await;
    assert_eq!(st, 400, "{v}");
    let (st, v) = a
        .post("/agent/v1/events", r#"{"phase":"x","status":"exploded"}"#)
        .await;
    assert_eq!(st, 400, "{v}");
    let (_, inst) = api.get(&format!("/api/v1/installs/{id}")).await;
    assert_eq!(inst["state"], "installing");
    assert_eq!(inst["bytesDone"], 100);
    let done = r#"{"phase":"done","status":"done","message":"installed","seq":4}"#;
    let (st, v) = a.post("/agent/v1/events", done).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["state"], "done");
    // done sent again (the agent did not get the answer): answered done, recorded once
    let (st, v) = a.post("/agent/v1/events", done).await;
    assert_eq!((st, v["state"].as_str()), (200, Some("done")), "{v}");
    // done: no token opens the config, and the machine boots its disk
    let (st, _) = a.get("/agent/v1/config").await;
    assert_eq!(st, 401);
    let (_, local) = api.text(&format!("/ipxe/{MAC}?platform=pcbios")).await;
    assert!(
        local.contains("sanboot --no-describe --drive 0x80"),
        "{local}"
    );
    let (_, status) = api.get("/dedicated/server/ns1/install/status").await;
    let steps = status["progress"].as_array().unwrap();
    assert_eq!(steps.len(), 3, "{status}");
    assert!(steps.iter().all(|s| s["status"] == "done"), "{status}");
    let (_, ev) = api.get(&format!("/api/v1/installs/{id}/events")).await;
    let evs = ev["events"].as_array().unwrap();
    // the stray boot's event, booted, the two download events and done: each once
    assert_eq!(evs.len(), 5, "{ev}");
    assert_eq!(evs[0]["boot"], 2, "{ev}");
    assert_eq!(evs[0]["ignored"], true, "{ev}");
    assert!(evs[1..].iter().all(|e| e.get("ignored").is_none()), "{ev}");
    assert!(evs[1..].iter().all(|e| e["boot"] == 1), "{ev}");
    assert!(
        evs.iter().all(|e| e.get("seq").is_some_and(|s| s.is_i64())),
        "{ev}"
    );
    // the log never holds a token
    let log = s.log();
    for t in [&t1, &t2] {
        assert!(!log.contains(t.as_str()), "agent token in log");
    }
    // the admin token: printed once on first start, never logged
    assert_eq!(
        log.matches(s.token.as_str()).count(),
        1,
        "admin token in log"
    );
    assert!(log.contains("agent token rejected"));
}

#[tokio::test]
async fn failed_and_cancelled_installs() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &[]);
    let api = with_machine(&s, "ns1", MAC).await;
    api.post("/dedicated/server/ns1/install/start", GUIDE_EXAMPLE)
        .await;
    let (_, script) = api.text(&format!("/ipxe/{MAC}")).await;
    let a = Api {
        http: reqwest::Client::new(),
        base: s.base.clone(),
        token: Some(token_in(&script)),
    };
    let (st, _) = a.get("/agent/v1/config").await;
    assert_eq!(st, 200);
    let msg = "Bad `sha512` for downloaded file, got : `aa` while expecting `bb`.";
    let (_, v) = a
        .post(
            "/agent/v1/events",
            &json!({"phase":"verify","status":"failed","message": msg}).to_string(),
        )
        .await;
    assert_eq!(v["state"], "failed");
    let (_, status) = api.get("/dedicated/server/ns1/install/status").await;
    assert_eq!(status["progress"][0]["status"], "error");
    assert_eq!(status["progress"][0]["error"], msg);
    // a new install after a failure, then cancelled
    let (st, v) = api
        .post("/api/v1/machines/ns1/installs", GUIDE_EXAMPLE)
        .await;
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_str().unwrap();
    let (_, script) = api.text(&format!("/ipxe/{MAC}")).await;
    let a = Api {
        http: reqwest::Client::new(),
        base: s.base.clone(),
        token: Some(token_in(&script)),
    };
    let (st, _) = a.get("/agent/v1/config").await;
    assert_eq!(st, 200);
    let (st, v) = api.post(&format!("/api/v1/installs/{id}/cancel"), "").await;
    assert_eq!(st, 200);
    assert_eq!(v["state"], "cancelled");
    // the running agent's next event is answered `cancelled`: it stops
    let (st, v) = a
        .post(
            "/agent/v1/events",
            r#"{"phase":"download","status":"running","seq":7}"#,
        )
        .await;
    assert_eq!(st, 409, "{v}");
    assert_eq!(v["state"], "cancelled");
    assert_eq!(
        v["message"],
        format!("install {id} is cancelled (cancelled by the operator): the agent stops")
    );
    let (st, v) = api.post(&format!("/api/v1/installs/{id}/cancel"), "").await;
    assert_eq!(st, 409);
    assert_eq!(v["message"], format!("install `{id}` is already cancelled"));
    let (_, local) = api.text(&format!("/ipxe/{MAC}?platform=efi")).await;
    assert!(
        local.lines().any(|l| l.trim().starts_with("exit")),
        "{local}"
    );
}

#[tokio::test]
async fn secrets_are_redacted_everywhere() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &[]);
    let api = with_machine(&s, "ns1", MAC).await;
    let (_, v) = api
        .post("/api/v1/machines/ns1/installs", GUIDE_EXAMPLE)
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    let mut shown = String::new();
    for p in [
        "/api/v1/machines",
        "/api/v1/machines/ns1",
        "/api/v1/machines/ns1/installs",
        &format!("/api/v1/installs/{id}"),
        "/dedicated/server/ns1/install/status",
    ] {
        let (st, v) = api.get(p).await;
        assert_eq!(st, 200, "{p}");
        shown.push_str(&v.to_string());
    }
    // the log, less the admin token's one-time print on first start
    shown.push_str(&s.log().replacen(&s.token, "", 1));
    for secret in [
        "bG9naW46cGFzc3dvcmQ",
        "I2Nsb3VkLWNvbmZpZw",
        "patient0",
        &s.token,
    ] {
        assert!(!shown.contains(secret), "secret {secret} shown");
    }
    assert!(
        shown.contains("<redacted 26 bytes>"),
        "the header is listed, redacted"
    );
}

#[tokio::test]
async fn state_survives_kill_and_restart() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &[]);
    let token = s.token.clone();
    let api = with_machine(&s, "ns1", MAC).await;
    let (st, v) = api
        .post("/dedicated/server/ns1/install/start", GUIDE_EXAMPLE)
        .await;
    assert_eq!(st, 200, "{v}");
    let id = latest_install(&api, "ns1").await;
    let (_, script) = api.text(&format!("/ipxe/{MAC}")).await;
    let t = token_in(&script);
    let a = Api {
        http: reqwest::Client::new(),
        base: s.base.clone(),
        token: Some(t.clone()),
    };
    assert_eq!(a.get("/agent/v1/config").await.0, 200);
    a.post(
        "/agent/v1/events",
        r#"{"phase":"download","status":"running","bytes_done":5,"bytes_total":9}"#,
    )
    .await;
    s.signal("KILL"); // no chance to flush anything
    drop(s);

    let s = Server::start(d.path(), &[]);
    assert_eq!(s.token, token, "same admin token after restart");
    assert!(
        !s.log().contains("new admin token"),
        "printed only on first start"
    );
    let api = s.client();
    let (_, inst) = api.get(&format!("/api/v1/installs/{id}")).await;
    assert_eq!(inst["state"], "installing", "{inst}");
    assert_eq!(inst["bytesDone"], 5);
    // the agent carries on with its token on the restarted server
    let a = Api {
        http: reqwest::Client::new(),
        base: s.base.clone(),
        token: Some(t),
    };
    let (st, v) = a
        .post("/agent/v1/events", r#"{"phase":"done","status":"done"}"#)
        .await;
    assert_eq!(st, 200, "{v}");
    let st = s.stop();
    assert!(st.success(), "clean exit on SIGTERM: {st:?}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(d.path().join("byol.sqlite"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o077, 0, "state database is private");
}

#[tokio::test]
async fn health_metrics_and_static_files() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("assets")).unwrap();
    std::fs::create_dir_all(d.path().join("images")).unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(d.path().join("images/test.raw"), &data).unwrap();
    std::fs::write(d.path().join("assets/vmlinuz"), b"kernel").unwrap();
    let s = Server::start(d.path(), &[]);
    let api = s.client();
    let (st, t) = api.text("/healthz").await;
    assert_eq!((st, t.as_str()), (200, "ok\n"));
    api.text("/boot.ipxe").await;
    let (st, m) = api.text("/metrics").await;
    assert_eq!(st, 200);
    assert!(
        m.contains("byol_ipxe_scripts_total{kind=\"entry\"} 1"),
        "{m}"
    );
    assert!(m.contains("byol_installs{state=\"pending\"} 0"), "{m}");
    assert!(
        m.contains("# TYPE byol_http_responses_total counter"),
        "{m}"
    );

    let http = reqwest::Client::new();
    let r = http.get(s.url("/images/test.raw")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-length"], "100000");
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert!(etag.starts_with('"') && etag.len() > 8, "{etag}");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[..]);
    let r = http
        .get(s.url("/images/test.raw"))
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(
        r.headers()["etag"].to_str().unwrap(),
        etag,
        "same ETag on a range"
    );
    assert_eq!(r.headers()["content-range"], "bytes 1000-1999/100000");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[1000..2000]);
    let (st, _) = api.text("/images/../byol.sqlite").await;
    assert!(st == 404 || st == 400, "{st}");
    let (st, t) = api.text("/assets/vmlinuz").await;
    assert_eq!((st, t.as_str()), (200, "kernel"));
    // the file changes: so does its ETag
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(d.path().join("images/test.raw"), b"other").unwrap();
    let r = http.get(s.url("/images/test.raw")).send().await.unwrap();
    assert_ne!(r.headers()["etag"].to_str().unwrap(), etag);
    let (st, _) = api.text("/images/missing.qcow2").await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn tftp_from_the_real_server() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &["--tftp", "127.0.0.1:0"]);
    assert!(
        s.wait_log("byol: TFTP on udp", Duration::from_secs(5)),
        "{}",
        s.log()
    );
    let addr = s.tftp_addr().unwrap();
    let (host, port) = addr.rsplit_once(':').unwrap();
    let out = d.path().join("boot.ipxe");
    let st = std::process::Command::new("atftp")
        .args(["--get", "-r", "boot.ipxe", "-l"])
        .arg(&out)
        .args([host, port])
        .status()
        .expect("atftp missing: run `cargo xtask test`");
    assert!(st.success());
    let script = std::fs::read_to_string(&out).unwrap();
    // over TFTP the server cannot know its own address: iPXE's next-server fills it in
    assert!(
        script.contains(&format!(
            "http://${{next-server}}:{}/ipxe/${{netX/mac}}",
            s.port
        )),
        "{script}"
    );
    let st = std::process::Command::new("atftp")
        .args(["--get", "-r", "undionly.kpxe", "-l"])
        .arg(d.path().join("u.kpxe"))
        .args([host, port])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        std::fs::read(d.path().join("u.kpxe")).unwrap(),
        std::fs::read("/usr/lib/ipxe/undionly.kpxe").unwrap()
    );
}

#[tokio::test]
async fn installer_kernel_and_initramfs_from_anywhere() {
    let d = tempfile::tempdir().unwrap();
    let k = d.path().join("my-vmlinuz");
    let i = d.path().join("my-initrd.cpio.zst");
    std::fs::write(&k, b"K").unwrap();
    std::fs::write(&i, vec![7u8; 5000]).unwrap();
    let s = Server::start(
        &d.path().join("data"),
        &[
            "--kernel",
            k.to_str().unwrap(),
            "--initramfs",
            i.to_str().unwrap(),
        ],
    );
    let api = s.client();
    let (st, t) = api.text("/assets/vmlinuz").await;
    assert_eq!((st, t.as_str()), (200, "K"));
    let r = reqwest::Client::new()
        .get(s.url("/assets/initramfs"))
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 206);
    assert!(r.headers().contains_key("etag"));
    assert_eq!(r.bytes().await.unwrap().as_ref(), &[7u8; 10]);
}

/// make_image_bootable.sh's time limit: the install's `hookTimeout`, else the machine's, else
/// the server's `--hook-timeout` (30 min when unset), all three as the agent receives it.
#[tokio::test]
async fn hook_timeout_from_install_machine_or_server() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &["--hook-timeout", "45m"]);
    let api = s.client();
    let mac = "52:54:00:00:00:31";
    // a bad machine value is refused with what to write
    let (st, v) = api
        .post(
            "/api/v1/machines",
            &json!({"name": "ht1", "macs": [mac], "hookTimeout": "90"}).to_string(),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("hookTimeout: `90` has no unit: write `90s`"),
        "{v}"
    );
    let (st, v) = api
        .post(
            "/api/v1/machines",
            &json!({"name": "ht1", "macs": [mac]}).to_string(),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["hookTimeout"], serde_json::Value::Null);
    // the server's
    assert_eq!(agent_timeout(&api, &s.base, &[]).await, 45 * 60);
    // the machine's
    let (st, v) = api
        .req(
            "PUT",
            "/api/v1/machines/ht1/hook-timeout",
            Some(r#"{"hookTimeout":"2h"}"#),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["hookTimeout"], "2h");
    assert_eq!(agent_timeout(&api, &s.base, &[]).await, 7200);
    // the install's, over the machine's
    assert_eq!(
        agent_timeout(&api, &s.base, &[("hookTimeout", "1h30m")]).await,
        5400
    );
    let (st, v) = api
        .post(
            "/dedicated/server/ht1/install/start",
            &body(&[
                ("imageURL", "http://127.0.0.1/x.qcow2"),
                ("hookTimeout", "30s"),
            ]),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(
        v["message"],
        "hookTimeout: `30s` is outside 1m to 24h (how long make_image_bootable.sh may run, from \
         1m to 24h, e.g. `45m`)"
    );
    // back to the server's
    let (st, v) = api
        .req(
            "PUT",
            "/api/v1/machines/ht1/hook-timeout",
            Some(r#"{"hookTimeout":null}"#),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(agent_timeout(&api, &s.base, &[]).await, 45 * 60);
}

/// Starts an install on `ht1` with `meta`, fetches the agent's config, cancels the install:
/// the hook timeout the agent got.
async fn agent_timeout(api: &Api, base: &str, meta: &[(&str, &str)]) -> u64 {
    let mut m = vec![("imageURL", "http://127.0.0.1/x.qcow2")];
    m.extend_from_slice(meta);
    let (st, v) = api
        .post("/dedicated/server/ht1/install/start", &body(&m))
        .await;
    assert_eq!(st, 200, "{v}");
    let (_, script) = api.text("/ipxe/52:54:00:00:00:31").await;
    let agent = Api {
        http: reqwest::Client::new(),
        base: base.to_string(),
        token: Some(token_in(&script)),
    };
    let (st, cfg) = agent.get("/agent/v1/config").await;
    assert_eq!(st, 200, "{cfg}");
    let id = cfg["install_id"].as_str().unwrap();
    let (st, v) = api
        .post(&format!("/api/v1/installs/{id}/cancel"), "{}")
        .await;
    assert_eq!(st, 200, "{v}");
    cfg["hook_timeout_seconds"].as_u64().unwrap()
}

/// An install started for machine ns1, its boot script fetched and its config taken by the
/// agent (from 127.0.0.1): (the operator's client, the agent's, the install id).
async fn installing(s: &Server) -> (Api, Api, String) {
    let api = with_machine(s, "ns1", MAC).await;
    let (st, v) = api
        .post("/dedicated/server/ns1/install/start", GUIDE_EXAMPLE)
        .await;
    assert_eq!(st, 200, "{v}");
    let id = latest_install(&api, "ns1").await;
    let (_, script) = api.text(&format!("/ipxe/{MAC}")).await;
    let a = agent_at(s, &token_in(&script), "127.0.0.1");
    assert_eq!(a.get("/agent/v1/config").await.0, 200);
    (api, a, id)
}

fn agent_at(s: &Server, token: &str, from: &str) -> Api {
    Api {
        http: reqwest::Client::builder()
            .local_address(from.parse::<std::net::IpAddr>().unwrap())
            .build()
            .unwrap(),
        base: s.base.clone(),
        token: Some(token.to_string()),
    }
}

async fn script_from(s: &Server, from: &str) -> String {
    let (st, t) = agent_at(s, "", from).text(&format!("/ipxe/{MAC}")).await;
    assert_eq!(st, 200);
    t
}

#[tokio::test]
async fn agent_tokens_are_bound_to_their_address_and_window() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &["--token-window", "2s"]);
    let api = with_machine(&s, "ns1", MAC).await;
    api.post("/dedicated/server/ns1/install/start", GUIDE_EXAMPLE)
        .await;
    let t = token_in(&script_from(&s, "127.0.0.1").await);
    // someone else on the network with the token: refused, and the token still works
    let (st, v) = agent_at(&s, &t, "127.0.0.2").get("/agent/v1/config").await;
    assert_eq!(st, 403, "{v}");
    assert_eq!(
        v["message"],
        "this token was issued to 127.0.0.1, not 127.0.0.2: it opens the config only from the address that fetched the boot script"
    );
    // past the window
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let (st, v) = agent_at(&s, &t, "127.0.0.1").get("/agent/v1/config").await;
    assert_eq!(st, 403, "{v}");
    assert!(
        v["message"].as_str().unwrap().starts_with(
            "this token has expired: it opens the config within 2s of the boot script"
        ),
        "{v}"
    );
    // a new boot script from 127.0.0.2 gives a token for 127.0.0.2
    let t2 = token_in(&script_from(&s, "127.0.0.2").await);
    let (st, v) = agent_at(&s, &t2, "127.0.0.2").get("/agent/v1/config").await;
    assert_eq!(st, 200, "{v}");
    assert!(
        s.log()
            .contains("config refused: token used from another address")
    );
}

#[tokio::test]
async fn a_new_boot_takes_over_only_from_a_silent_one() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &["--takeover-after", "2s"]);
    let api = with_machine(&s, "ns1", MAC).await;
    let (st, v) = api
        .post("/dedicated/server/ns1/install/start", GUIDE_EXAMPLE)
        .await;
    assert_eq!(st, 200, "{v}");
    let id = latest_install(&api, "ns1").await;
    let t1 = token_in(&script_from(&s, "127.0.0.1").await);
    let a1 = agent_at(&s, &t1, "127.0.0.1");
    assert_eq!(a1.get("/agent/v1/config").await.0, 200);
    // the machine loses power in the download and boots again
    let t2 = token_in(&script_from(&s, "127.0.0.1").await);
    let a2 = agent_at(&s, &t2, "127.0.0.1");
    let res = a2
        .http
        .get(s.url("/agent/v1/config"))
        .bearer_auth(&t2)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    let wait: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let (st, cfg) = a2.get("/agent/v1/config").await;
    assert_eq!(st, 200, "{cfg}");
    assert_eq!(cfg["install_id"], id);
    // the old boot, should it still be alive, is told to stop
    let (st, v) = a1
        .post(
            "/agent/v1/events",
            r#"{"phase":"download","status":"running","seq":3}"#,
        )
        .await;
    assert_eq!(st, 409, "{v}");
    assert_eq!(v["state"], "superseded");
    let (st, v) = a2
        .post(
            "/agent/v1/events",
            r#"{"phase":"done","status":"done","seq":1}"#,
        )
        .await;
    assert_eq!((st, v["state"].as_str()), (200, Some("done")), "{v}");
    let (_, ev) = api.get(&format!("/api/v1/installs/{id}/events")).await;
    let text = ev.to_string();
    assert!(
        text.contains("boot 2 of the machine took over the install from boot 1, silent for 2s"),
        "{text}"
    );
}

#[tokio::test]
async fn pending_and_stalled_installs_expire() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &["--pending-ttl", "2s", "--stall-timeout", "3s"]);
    let api = with_machine(&s, "ns1", MAC).await;
    let other = "52:54:00:12:34:57";
    with_machine(&s, "ns2", other).await;
    api.post("/dedicated/server/ns1/install/start", GUIDE_EXAMPLE)
        .await;
    let (st, v) = api
        .post("/dedicated/server/ns2/install/start", GUIDE_EXAMPLE)
        .await;
    assert_eq!(st, 200, "{v}");
    let id2 = latest_install(&api, "ns2").await;
    // ns2 boots the installer, which then goes silent
    let (_, script) = api.text(&format!("/ipxe/{other}")).await;
    let a = agent_at(&s, &token_in(&script), "127.0.0.1");
    assert_eq!(a.get("/agent/v1/config").await.0, 200);
    let t0 = std::time::Instant::now();
    let mut states = (String::new(), String::new());
    while t0.elapsed() < Duration::from_secs(15) {
        let (_, m1) = api.get("/dedicated/server/ns1/install/status").await;
        let (_, i2) = api.get(&format!("/api/v1/installs/{id2}")).await;
        states = (
            m1.to_string(),
            i2["state"].as_str().unwrap_or("").to_string(),
        );
        if states.0.contains("--pending-ttl") && states.1 == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        states.0.contains("the machine did not boot the installer within 2s of the install's start (--pending-ttl)"),
        "{states:?}"
    );
    assert_eq!(states.1, "failed", "{states:?}");
    let (_, i2) = api.get(&format!("/api/v1/installs/{id2}")).await;
    assert!(
        i2.to_string()
            .contains("nothing heard from the machine's installer for 3s (--stall-timeout)"),
        "{i2}"
    );
    // both machines boot their disks; the silent agent, should it wake, is told to stop
    for mac in [MAC, other] {
        let (_, t) = api.text(&format!("/ipxe/{mac}?platform=pcbios")).await;
        assert!(t.contains("sanboot"), "{t}");
    }
    let (st, v) = a
        .post(
            "/agent/v1/events",
            r#"{"phase":"download","status":"running","seq":1}"#,
        )
        .await;
    assert_eq!((st, v["state"].as_str()), (409, Some("failed")), "{v}");
    assert!(s.log().contains("install expired"));
}

#[tokio::test]
async fn an_install_keeps_a_bounded_history() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &[]);
    let (api, a, id) = installing(&s).await;
    let mut seq = 0;
    for _ in 0..25 {
        let batch: Vec<_> = (0..100)
            .map(|_| {
                seq += 1;
                json!({"phase": "bootloader", "status": "running", "logs": ["hook: a line"], "seq": seq})
            })
            .collect();
        let (st, v) = a
            .post(
                "/agent/v1/events",
                &serde_json::Value::Array(batch).to_string(),
            )
            .await;
        assert_eq!(st, 200, "{v}");
    }
    let (st, v) = a
        .post(
            "/agent/v1/events",
            &json!({"phase": "done", "status": "done", "seq": seq + 1}).to_string(),
        )
        .await;
    assert_eq!((st, v["state"].as_str()), (200, Some("done")), "{v}");
    let (_, ev) = api.get(&format!("/api/v1/installs/{id}/events")).await;
    let evs = ev["events"].as_array().unwrap();
    assert!(evs.len() <= 2000, "{} events kept", evs.len());
    assert_eq!(evs.last().unwrap()["status"], "done");
    let folded = evs
        .iter()
        .find(|e| e["phase"] == "folded")
        .expect("a folded line");
    let n: usize = folded["message"]
        .as_str()
        .unwrap()
        .split_once(" earlier progress events folded: an install keeps its last 2000 events (at most 32 MiB)")
        .expect("fold message")
        .0
        .parse()
        .unwrap();
    // nothing lost silently: what is kept plus what was folded is what was sent
    assert_eq!(n + evs.len() - 1, 2501, "{folded}");
}

/// The status line's code for a request whose head announces `len` body bytes, none sent:
/// a limit holds before the body is read.
fn status_for_announced_body(s: &Server, path: &str, token: &str, len: usize) -> u16 {
    use std::io::{Read as _, Write as _};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 64];
    let n = c.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    head.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn request_bodies_are_bounded_per_route() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &[]);
    let api = with_machine(&s, "ns1", MAC).await;
    // the operators' API: 1 MiB
    let path = "/dedicated/server/ns1/install/start";
    assert_eq!(
        status_for_announced_body(&s, path, &s.token, (1 << 20) + 1),
        413
    );
    api.post(path, GUIDE_EXAMPLE).await;
    let (_, script) = api.text(&format!("/ipxe/{MAC}")).await;
    let t = token_in(&script);
    let a = agent_at(&s, &t, "127.0.0.1");
    assert_eq!(a.get("/agent/v1/config").await.0, 200);
    // events: one event at its limits fits, more than 4 MiB does not
    let lines = vec!["l".repeat(4000); 500];
    let (st, v) = a
        .post(
            "/agent/v1/events",
            &json!({"phase": "bootloader", "status": "running", "logs": lines}).to_string(),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        status_for_announced_body(&s, "/agent/v1/events", &t, (4 << 20) + 1),
        413
    );
}

#[tokio::test]
async fn idle_connections_from_one_host_leave_others_served() {
    use std::io::Write as _;
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &[]);
    // a slowloris: 1000 connections that send half a request and wait
    let mut idle = Vec::new();
    for _ in 0..1000 {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
        idle.push(c);
    }
    let t = std::time::Instant::now();
    let (st, body) = agent_at(&s, "", "127.0.0.2").text("/healthz").await;
    assert_eq!((st, body.as_str()), (200, "ok\n"));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // the server keeps at most 64 of them open (its files: those, the store, the listener)
    let fds = std::fs::read_dir(format!("/proc/{}/fd", s.child.id()))
        .unwrap()
        .count();
    assert!(fds < 64 + 40, "the server holds {fds} files");
    // and a half-sent request is dropped after the header time limit (10 s)
    let mut c = idle.pop().unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let t = std::time::Instant::now();
    let mut buf = [0u8; 256];
    let n = std::io::Read::read(&mut c, &mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(
        n == 0 || head.starts_with("HTTP/1.1 408"),
        "a half-sent request got {head:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    assert!(
        s.log()
            .contains("connection refused: too many open connections")
    );
}

#[tokio::test]
async fn the_operators_api_and_metrics_on_their_own_listeners_with_tls() {
    let d = tempfile::tempdir().unwrap();
    let (cert, key) = (d.path().join("cert.pem"), d.path().join("key.pem"));
    // a CA and a server certificate it signed (webpki takes no self-signed end entity)
    let openssl = |args: &[&str]| {
        let st = std::process::Command::new("openssl")
            .args(args)
            .current_dir(d.path())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "openssl {args:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-days",
                "1",
                "-subj",
                "/CN=byol test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "key.pem",
                "-out",
                "leaf.csr",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        d.path().join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "leaf.ext",
        "-out",
        "cert.pem",
    ]);
    let data = d.path().join("data");
    let s = Server::start(
        &data,
        &[
            "--admin-http",
            "127.0.0.1:0",
            "--metrics-http",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let port_of = |what: &str| -> u16 {
        assert!(
            s.wait_log(what, Duration::from_secs(10)),
            "no `{what}` line"
        );
        let log = s.log();
        let line = log.lines().find(|l| l.starts_with(what)).unwrap();
        line.rsplit(':').next().unwrap().parse().unwrap()
    };
    let admin = port_of("byol: admin API on https://127.0.0.1:");
    let metrics = port_of("byol: metrics on http://127.0.0.1:");
    let pem = std::fs::read(d.path().join("ca.pem")).unwrap();
    let tls = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let r = tls
        .get(format!("https://127.0.0.1:{admin}/api/v1/machines"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // plain HTTP to the TLS listener gets nothing
    assert!(
        reqwest::get(format!("http://127.0.0.1:{admin}/healthz"))
            .await
            .map(|r| r.status() != 200)
            .unwrap_or(true)
    );
    // the machines' listener has no operators' API and no metrics; the metrics one has them
    let api = s.client();
    assert_eq!(api.get("/api/v1/machines").await.0, 404);
    assert_eq!(api.text("/metrics").await.0, 404);
    assert_eq!(api.text("/boot.ipxe").await.0, 200);
    let m = reqwest::get(format!("http://127.0.0.1:{metrics}/metrics"))
        .await
        .unwrap();
    assert_eq!(m.status(), 200);
    assert!(m.text().await.unwrap().contains("byol_"));
}

#[tokio::test]
async fn boot_scripts_are_rate_limited_per_address() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &["--boot-rate", "20"]);
    // a burst of 5 (a quarter of 20, at least 5), then 429 with Retry-After
    let c = agent_at(&s, "", "127.0.0.3");
    let mut codes = Vec::new();
    for _ in 0..8 {
        let r = c
            .http
            .get(s.url("/ipxe/52:54:00:99:99:99"))
            .send()
            .await
            .unwrap();
        codes.push((
            r.status().as_u16(),
            r.headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string()),
        ));
    }
    assert!(codes[..5].iter().all(|(c, _)| *c == 200), "{codes:?}");
    assert_eq!(codes[5], (429, Some("3".to_string())), "{codes:?}");
    // another address is not held back
    let (st, _) = agent_at(&s, "", "127.0.0.4")
        .text("/ipxe/52:54:00:99:99:99")
        .await;
    assert_eq!(st, 200);
    let (_, m) = s.client().text("/metrics").await;
    assert!(m.contains("byol_rate_limited_total 3"), "{m}");
}

#[tokio::test]
async fn an_install_keeps_a_bounded_history_in_bytes_too() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &[]);
    let (api, a, id) = installing(&s).await;
    // 24 events of 2 MB of hook output each: 48 MB
    let lines = vec!["h".repeat(4000); 500];
    for seq in 1..=24 {
        let (st, v) = a
            .post(
                "/agent/v1/events",
                &json!({"phase": "bootloader", "status": "running", "logs": lines, "seq": seq})
                    .to_string(),
            )
            .await;
        assert_eq!(st, 200, "{v}");
    }
    let (_, ev) = api.get(&format!("/api/v1/installs/{id}/events")).await;
    let evs = ev["events"].as_array().unwrap();
    let bytes: usize = evs.iter().map(|e| e.to_string().len()).sum();
    assert!(bytes <= 34 << 20, "{bytes} bytes of history kept");
    assert!(evs.iter().any(|e| e["phase"] == "folded"), "no folded line");
}

#[tokio::test]
async fn progress_before_the_config_shows_in_the_ovh_status() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &[]);
    let api = with_machine(&s, "ns1", MAC).await;
    api.post("/dedicated/server/ns1/install/start", GUIDE_EXAMPLE)
        .await;
    let (_, script) = api.text(&format!("/ipxe/{MAC}")).await;
    let a = agent_at(&s, &token_in(&script), "127.0.0.1");
    // the agent reports its boot before it fetches the config
    let (st, v) = a
        .post(
            "/agent/v1/events",
            r#"[{"phase":"booted","status":"ok","seq":1},{"phase":"network","status":"ok","seq":2}]"#,
        )
        .await;
    assert_eq!((st, v["state"].as_str()), (200, Some("pending")), "{v}");
    let (_, status) = api.get("/dedicated/server/ns1/install/status").await;
    let comments: Vec<&str> = status["progress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["comment"].as_str().unwrap())
        .collect();
    assert_eq!(
        comments,
        ["Boot the installer", "Configure the network"],
        "{status}"
    );
}
