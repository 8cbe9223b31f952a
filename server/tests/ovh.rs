//! OVH's API as OVH's clients call it: signed requests (checked and refused like OVH's), the
//! consumer-key flow, tasks, and the official python client (`ovh` from PyPI, installed by
//! `cargo xtask deps` into `target/py`) driving byol with only its endpoint changed.

mod common;

use std::path::PathBuf;

use common::Server;
use serde_json::{Value, json};

const MAC: &str = "52:54:00:12:34:56";

/// OVH's BYOLinux sample body (the reference's, verbatim but for ZFS, which byol refuses:
/// `/data` is xfs here; the refusal of the original is tested below).
fn sample_body(image: &str) -> Value {
    json!({
        "operatingSystem": "byolinux_64",
        "customizations": {
            "hostname": "mon-tux",
            "imageURL": image,
            "imageCheckSum": "367f26c915f39314dde155db3a2b0326803e06975d1f4be04256f8b591e38fd4", "imageCheckSumType": "sha256",
            "httpHeaders": { "Authorization": "Basic bG9naW46cGFzc3dvcmQ=" },
            "efiBootloaderPath": "\\efi\\debian\\grubx64.efi",
            "configDriveUserData": "I2Nsb3VkLWNvbmZpZwpzc2hfcHdhdXRoOiB0cnVlCg==",
            "configDriveMetadata": { "role": "webserver", "env": "prod" }
        },
        "storage": [ { "partitioning": { "disks": 4, "layout": [
            { "fileSystem": "ext4", "mountPoint": "/boot", "raidLevel": 1, "size": 1024 },
            { "fileSystem": "ext4", "mountPoint": "/", "raidLevel": 1, "size": 20480, "extras": { "lv": { "name": "root" } } },
            { "fileSystem": "swap", "mountPoint": "swap", "size": 2048 },
            { "fileSystem": "xfs", "mountPoint": "/data", "raidLevel": 5, "size": 0 } ] } } ],
        "properties": { "essential": "false", "role": "webservers" }
    })
}

async fn machine(s: &Server, name: &str, mac: &str) {
    let (st, v) = s
        .client()
        .post(
            "/api/v1/machines",
            &json!({"name": name, "macs": [mac]}).to_string(),
        )
        .await;
    assert_eq!(st, 201, "{v}");
}

async fn new_key(s: &Server, name: &str) -> (String, String, String) {
    let (st, v) = s
        .client()
        .post("/api/v1/api-keys", &json!({ "name": name }).to_string())
        .await;
    assert_eq!(st, 201, "{v}");
    let f = |k: &str| v[k].as_str().unwrap().to_string();
    (
        f("applicationKey"),
        f("applicationSecret"),
        f("consumerKey"),
    )
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A request signed as python-ovh signs it; `sig` replaces the signature when given.
/// Returns the status, the body and the signature sent.
async fn signed(
    s: &Server,
    method: &str,
    path: &str,
    body: &str,
    (ak, secret, ck): (&str, &str, &str),
    ts: i64,
    sig: Option<&str>,
) -> (u16, Value, String) {
    let url = s.url(path);
    let ts = ts.to_string();
    let good = byol_server::ovhauth::signature(secret, ck, method, &url, body.as_bytes(), &ts);
    let sent = sig.map_or(good, str::to_string);
    let (st, v) = send(method, &url, body, (ak, ck), &ts, &sent).await;
    (st, v, sent)
}

/// A signed request that must be refused with `want` (status, OVH's `errorCode`).
#[allow(clippy::too_many_arguments)]
async fn refused(
    s: &Server,
    method: &str,
    path: &str,
    body: &str,
    key: (&str, &str, &str),
    ts: i64,
    sig: Option<&str>,
    want: (u16, &str),
) -> Value {
    let (st, v, _) = signed(s, method, path, body, key, ts, sig).await;
    assert_eq!(
        (st, v["errorCode"].as_str()),
        (want.0, Some(want.1)),
        "{method} {path}: {v}"
    );
    v
}

/// A request with the given OVH headers, as is.
async fn send(
    method: &str,
    url: &str,
    body: &str,
    (ak, ck): (&str, &str),
    ts: &str,
    sig: &str,
) -> (u16, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut r = reqwest::Client::new()
        .request(m, url)
        .header("X-Ovh-Application", ak)
        .header("X-Ovh-Consumer", ck)
        .header("X-Ovh-Timestamp", ts)
        .header("X-Ovh-Signature", sig);
    if !body.is_empty() {
        r = r
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let res = r.send().await.unwrap();
    let st = res.status().as_u16();
    let text = res.text().await.unwrap();
    (
        st,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_requests_are_checked_like_ovhs() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &[]);
    machine(&s, "ns1", MAC).await;
    let (ak, secret, ck) = new_key(&s, "ci").await;
    let key = (ak.as_str(), secret.as_str(), ck.as_str());

    // the server's clock, open
    let (st, t) = s.client().text("/1.0/auth/time").await;
    assert_eq!(st, 200);
    let t: i64 = t.trim().parse().unwrap();
    assert!((t - now()).abs() <= 2, "{t}");

    // a good signature, under /1.0 and at the root
    let ts = now();
    let (st, v, sig) = signed(&s, "GET", "/1.0/dedicated/server", "", key, ts, None).await;
    assert_eq!((st, &v), (200, &json!(["ns1"])));
    let (st, v, _) = signed(&s, "GET", "/dedicated/server/ns1", "", key, now(), None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["name"], "ns1");
    assert_eq!(v["macs"], json!([MAC]));

    // the same GET again is served (clients poll within a second); the same POST again is a
    // replay, refused
    let url = s.url("/1.0/dedicated/server");
    let (st, v) = send("GET", &url, "", (&ak, &ck), &ts.to_string(), &sig).await;
    assert_eq!(st, 200, "{v}");
    let install = r#"{"templateName":"byolinux_64"}"#;
    let path = "/1.0/dedicated/server/ns1/install/start";
    let (st, v, sig) = signed(&s, "POST", path, install, key, ts, None).await;
    assert_eq!(st, 400, "a bad body, but signed: {v}");
    assert!(v.get("errorCode").is_none(), "{v}");
    let (st, v) = send(
        "POST",
        &s.url(path),
        install,
        (&ak, &ck),
        &ts.to_string(),
        &sig,
    )
    .await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["errorCode"], "INVALID_SIGNATURE");
    assert!(
        v["message"].as_str().unwrap().contains("already used"),
        "{v}"
    );

    // a wrong signature (a byte changed), an old timestamp, a wrong secret
    let wrong = "$1$0000000000000000000000000000000000000000";
    refused(
        &s,
        "GET",
        "/1.0/dedicated/server",
        "",
        key,
        now(),
        Some(wrong),
        (400, "INVALID_SIGNATURE"),
    )
    .await;
    let v = refused(
        &s,
        "GET",
        "/1.0/dedicated/server",
        "",
        key,
        now() - 600,
        None,
        (400, "QUERY_TIME_OUT"),
    )
    .await;
    assert!(v["message"].as_str().unwrap().contains("/auth/time"), "{v}");
    let other = (ak.as_str(), "not-the-secret", ck.as_str());
    refused(
        &s,
        "GET",
        "/1.0/dedicated/server",
        "",
        other,
        now(),
        None,
        (400, "INVALID_SIGNATURE"),
    )
    .await;
    // the body is signed: the same signature over another body fails
    let body = r#"{"x":1}"#;
    let (_, _, sig) = signed(
        &s,
        "POST",
        "/1.0/dedicated/server/ns1/task/1/cancel",
        body,
        key,
        now(),
        None,
    )
    .await;
    refused(
        &s,
        "POST",
        "/1.0/dedicated/server/ns1/task/1/cancel",
        r#"{"x":2}"#,
        key,
        now(),
        Some(&sig),
        (400, "INVALID_SIGNATURE"),
    )
    .await;
    // unknown application, unknown consumer key
    let (st, v, _) = signed(
        &s,
        "GET",
        "/1.0/dedicated/server",
        "",
        ("nope", &secret, &ck),
        now(),
        None,
    )
    .await;
    assert_eq!(
        (st, v["errorCode"].as_str()),
        (403, Some("INVALID_KEY")),
        "{v}"
    );
    let (st, v, _) = signed(
        &s,
        "GET",
        "/1.0/dedicated/server",
        "",
        (&ak, &secret, "nope"),
        now(),
        None,
    )
    .await;
    assert_eq!(
        (st, v["errorCode"].as_str()),
        (403, Some("INVALID_CREDENTIAL")),
        "{v}"
    );

    // a consumer key asked for by the application: pending until an operator validates it,
    // then good for its rules only
    let res = reqwest::Client::new()
        .post(s.url("/1.0/auth/credential"))
        .header("X-Ovh-Application", &ak)
        .json(&json!({"accessRules": [{"method": "GET", "path": "/dedicated/server/*"}], "redirection": "https://example.invalid/"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let cred: Value = res.json().await.unwrap();
    assert_eq!(cred["state"], "pendingValidation");
    let ck2 = cred["consumerKey"].as_str().unwrap().to_string();
    let url = cred["validationUrl"].as_str().unwrap().to_string();
    let id: i64 = url.rsplit('/').next().unwrap().parse().unwrap();
    let page = reqwest::get(&url).await.unwrap().text().await.unwrap();
    assert!(
        page.contains("byol api-key validate") && page.contains("GET /dedicated/server/*"),
        "{page}"
    );
    let key2 = (ak.as_str(), secret.as_str(), ck2.as_str());
    refused(
        &s,
        "GET",
        "/1.0/dedicated/server/ns1",
        "",
        key2,
        now(),
        None,
        (403, "NOT_CREDENTIAL"),
    )
    .await;
    let (st, v) = s
        .client()
        .post(&format!("/api/v1/credentials/{id}/validate"), "")
        .await;
    assert_eq!((st, v["status"].as_str()), (200, Some("validated")), "{v}");
    let (st, v, _) = signed(
        &s,
        "GET",
        "/1.0/dedicated/server/ns1",
        "",
        key2,
        now(),
        None,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    refused(
        &s,
        "GET",
        "/1.0/dedicated/server",
        "",
        key2,
        now(),
        None,
        (403, "NOT_GRANTED_CALL"),
    )
    .await;
    refused(
        &s,
        "POST",
        "/1.0/dedicated/server/ns1/reinstall",
        "{}",
        key2,
        now(),
        None,
        (403, "NOT_GRANTED_CALL"),
    )
    .await;

    // an open endpoint cannot fill the store: 20 pending consumer keys at most per application
    for i in 0.. {
        let res = reqwest::Client::new()
            .post(s.url("/auth/credential"))
            .header("X-Ovh-Application", &ak)
            .json(&json!({"accessRules": [{"method": "GET", "path": "/*"}]}))
            .send()
            .await
            .unwrap();
        if res.status() == 429 {
            let v: Value = res.json().await.unwrap();
            assert_eq!(v["errorCode"], "TOO_MANY_PENDING", "{v}");
            assert_eq!(i, 20, "refused after {i}");
            break;
        }
        assert_eq!(res.status(), 200);
        assert!(i < 20, "never refused");
    }

    // listed without secrets; revoked: nothing of it works any more
    let (st, v) = s.client().get("/api/v1/api-keys").await;
    assert_eq!(st, 200);
    let text = v.to_string();
    assert!(
        !text.contains(&secret) && !text.contains(&ck) && !text.contains(&ck2),
        "{text}"
    );
    assert_eq!(v[0]["credentials"].as_array().unwrap().len(), 2 + 20, "{v}");
    let (st, _) = s.client().req("DELETE", "/api/v1/api-keys/ci", None).await;
    assert_eq!(st, 200);
    refused(
        &s,
        "GET",
        "/1.0/dedicated/server/ns1",
        "",
        key2,
        now(),
        None,
        (403, "INVALID_KEY"),
    )
    .await;
    // no secret reached the log
    let log = s.log();
    assert!(
        !log.contains(&secret) && !log.contains(&ck),
        "a secret in the log"
    );
    // the secret is sealed in the store, not written as is
    let db = std::fs::read(d.path().join("byol.sqlite")).unwrap();
    assert!(
        !db.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "secret in the store"
    );
}

/// The python venv `cargo xtask deps` makes (with python-ovh in it).
fn python() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/py/bin/python3");
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask deps` (it installs the official OVH client, `ovh` from \
         PyPI, into target/py)",
        p.display()
    );
    p
}

const CLIENT_SCRIPT: &str = r#"
import json, sys, time
import ovh, ovh.client, ovh.exceptions
url, ak, secret, ck, body = sys.argv[1:6]
body = json.loads(body)
ovh.client.ENDPOINTS["byol"] = url + "/1.0"
c = ovh.Client(endpoint="byol", application_key=ak, application_secret=secret, consumer_key=ck)
out = {"servers": c.get("/dedicated/server")}
t = c.post("/dedicated/server/ns1/reinstall", **body)
out["task"] = t
out["task_again"] = c.get("/dedicated/server/ns1/task/%d" % t["taskId"])
out["init_tasks"] = c.get("/dedicated/server/ns1/task", status="init", function="reinstallServer")
out["done_tasks"] = c.get("/dedicated/server/ns1/task", status="done")
out["status"] = c.get("/dedicated/server/ns1/install/status")
def refused(f):
    try:
        f()
        return None
    except ovh.exceptions.APIError as e:
        return {"type": type(e).__name__, "class": e.response.json().get("class"), "message": e.response.json().get("message")}
# the same POST within one second would be signed identically: a replay, refused
time.sleep(1.1)
out["second"] = refused(lambda: c.post("/dedicated/server/ns1/reinstall", **body))
zfs = json.loads(json.dumps(body))
zfs["storage"][0]["partitioning"]["layout"][3]["fileSystem"] = "zfs"
zfs["storage"][0]["partitioning"]["layout"][3]["extras"] = {"zp": {"name": "poule"}}
out["zfs"] = refused(lambda: c.post("/dedicated/server/ns2/reinstall", **zfs))
bad = json.loads(json.dumps(body))
bad["customizations"]["hostname"] = "-bad-"
out["hostname"] = refused(lambda: c.post("/dedicated/server/ns2/reinstall", **bad))
out["nope"] = refused(lambda: c.get("/dedicated/server/nope/task"))
out["cancel"] = c.post("/dedicated/server/ns1/task/%d/cancel" % t["taskId"])
out["cancelled"] = c.get("/dedicated/server/ns1/task/%d" % t["taskId"])
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_official_ovh_python_client_drives_byol() {
    let py = python();
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &[]);
    machine(&s, "ns1", MAC).await;
    machine(&s, "ns2", "52:54:00:12:34:57").await;
    let (ak, secret, ck) = new_key(&s, "python").await;
    let body = sample_body(&s.url("/images/x.qcow2")).to_string();
    let base = s.url("");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(py)
            .args(["-c", CLIENT_SCRIPT, &base, &ak, &secret, &ck, &body])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python client failed: {stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();

    assert_eq!(v["servers"], json!(["ns1", "ns2"]));
    let t = &v["task"];
    assert_eq!(t["function"], "reinstallServer", "{v}");
    assert_eq!(t["status"], "init");
    assert!(t["taskId"].as_i64().unwrap() >= 1);
    assert!(t["startDate"].as_str().unwrap().ends_with('Z'));
    assert_eq!(v["task_again"]["taskId"], t["taskId"]);
    assert_eq!(v["init_tasks"], json!([t["taskId"]]));
    assert_eq!(v["done_tasks"], json!([]));
    assert_eq!(v["status"]["progress"][0]["status"], "doing", "{v}");
    assert_eq!(v["second"]["type"], "BadParametersError", "{v}");
    assert_eq!(
        v["second"]["class"],
        "Client::BadRequest::TaskAlreadyExists"
    );
    assert_eq!(v["zfs"]["type"], "BadParametersError", "{v}");
    assert_eq!(
        v["zfs"]["class"],
        "Client::BadRequest::PartitionIncompatibleFs"
    );
    assert!(
        v["zfs"]["message"]
            .as_str()
            .unwrap()
            .contains("ZFS is not supported by byol yet"),
        "{v}"
    );
    assert_eq!(
        v["hostname"]["class"], "Client::BadRequest::HostnameInvalidFormat",
        "{v}"
    );
    assert_eq!(v["nope"]["type"], "ResourceNotFoundError", "{v}");
    assert_eq!(v["cancel"], Value::Null);
    assert_eq!(v["cancelled"]["status"], "cancelled", "{v}");
    assert!(!v["cancelled"]["doneDate"].is_null(), "{v}");

    // what the request asked for reached the install: the layout, the properties as `meta`
    let (st, inst) = s.client().get("/api/v1/machines/ns1/installs").await;
    assert_eq!(st, 200);
    let spec = &inst["installs"][0]["spec"];
    assert_eq!(spec["hostname"], "mon-tux", "{inst}");
    assert_eq!(spec["storage"]["disks"], 4, "{inst}");
    assert_eq!(
        spec["efiBootloaderPath"], "\\efi\\debian\\grubx64.efi",
        "{inst}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hardware_templates_and_task_states_from_the_agents_reports() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &[]);
    machine(&s, "ns1", MAC).await;
    let api = s.client();

    // before any boot: nothing known
    let (st, v) = api
        .get("/dedicated/server/ns1/specifications/hardware")
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["bootMode"].clone(), v["diskGroups"].clone()),
        (Value::Null, json!([]))
    );
    let (st, v) = api
        .get("/dedicated/server/ns1/install/compatibleTemplates")
        .await;
    assert_eq!(
        (st, &v["ovh"]),
        (200, &json!(["byolinux_64", "byoi_64"])),
        "{v}"
    );
    let (st, v) = api
        .get("/1.0/dedicated/installationTemplate/byolinux_64")
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["lvmReady"], true);
    assert_eq!(v["filesystems"], json!(["btrfs", "ext4", "swap", "xfs"]));
    assert!(
        v["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "imageURL" && i["mandatory"] == true)
    );
    let (st, v) = api.get("/dedicated/installationTemplate/debian12_64").await;
    assert_eq!(
        (st, v["class"].as_str()),
        (404, Some("Client::NotFound::OperatingSystem")),
        "{v}"
    );

    // an install; its agent reports the disks (with the inventory), then fails downloading
    let (st, t) = api
        .post("/dedicated/server/ns1/install/start", common::GUIDE_EXAMPLE)
        .await;
    assert_eq!(st, 200, "{t}");
    let task = t["taskId"].as_i64().unwrap();
    let agent = booted_agent(&s, &api).await;
    let disks = json!({"phase": "disks", "status": "ok", "message": "2 disks", "seq": 1,
        "inventory": {"bootMode": "uefi", "diskGroups": [
            {"diskGroupId": 1, "numberOfDisks": 2, "diskSizeBytes": 960_197_124_096u64, "diskType": "NVME", "transport": "nvme"},
            {"diskGroupId": 2, "numberOfDisks": 1, "diskSizeBytes": 4_000_787_030_016u64, "diskType": "HDD", "transport": "sata"}]}});
    let (st, v) = agent.post("/agent/v1/events", &disks.to_string()).await;
    assert_eq!(st, 200, "{v}");
    let (_, v) = api.get(&format!("/dedicated/server/ns1/task/{task}")).await;
    assert_eq!(v["status"], "doing", "{v}");
    let (st, v) = api
        .get("/dedicated/server/ns1/specifications/hardware")
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["bootMode"], "uefi", "{v}");
    assert_eq!(v["defaultDiskGroupId"], 1);
    assert_eq!(v["diskGroups"][0]["numberOfDisks"], 2);
    assert_eq!(
        v["diskGroups"][0]["diskSize"],
        json!({"unit": "GB", "value": 960})
    );
    assert_eq!(v["diskGroups"][0]["diskType"], "NVME");
    assert_eq!(v["diskGroups"][1]["diskSize"]["value"], 4000);
    // the history keeps the event, not the inventory
    let id = {
        let (_, l) = api.get("/api/v1/machines/ns1/installs").await;
        l["installs"][0]["id"].as_str().unwrap().to_string()
    };
    let (_, ev) = api.get(&format!("/api/v1/installs/{id}/events")).await;
    assert!(ev["events"][0].get("inventory").is_none(), "{ev}");

    // a download failure is the customer's (the image), and the task says so
    let failed = json!({"phase": "download", "status": "failed", "seq": 2,
        "message": "Could not download image located : `http://127.0.0.1/x.qcow2` (404)"});
    let (st, _) = agent.post("/agent/v1/events", &failed.to_string()).await;
    assert_eq!(st, 200);
    let (_, v) = api.get(&format!("/dedicated/server/ns1/task/{task}")).await;
    assert_eq!(v["status"], "customerError", "{v}");
    assert!(
        v["comment"]
            .as_str()
            .unwrap()
            .contains("Could not download"),
        "{v}"
    );
    assert!(!v["doneDate"].is_null());
    let (_, v) = api
        .get("/dedicated/server/ns1/task?status=customerError")
        .await;
    assert_eq!(v, json!([task]));
    let (st, v) = api.get("/dedicated/server/ns1/task?status=nope").await;
    assert_eq!(st, 400, "{v}");
    // an ended task cannot be cancelled
    let (st, v) = api
        .post(&format!("/dedicated/server/ns1/task/{task}/cancel"), "")
        .await;
    assert_eq!(
        (st, v["class"].as_str()),
        (400, Some("Client::BadRequest::TaskNotCancellable")),
        "{v}"
    );
    let (st, v) = api.get("/dedicated/server/ns1/task/999").await;
    assert_eq!(st, 404, "{v}");

    // the server object keeps the efiBootloaderPath of its last finished install
    let (_, v) = api.get("/dedicated/server/ns1").await;
    assert_eq!(v["efiBootloaderPath"], Value::Null, "{v}");
    let mut body: Value = serde_json::from_str(common::GUIDE_EXAMPLE).unwrap();
    body["userMetadata"]
        .as_array_mut()
        .unwrap()
        .push(json!({"key": "efiBootloaderPath", "value": "\\efi\\debian\\shimx64.efi"}));
    let (st, t) = api
        .post("/dedicated/server/ns1/install/start", &body.to_string())
        .await;
    assert_eq!(st, 200, "{t}");
    let agent = booted_agent(&s, &api).await;
    let (_, v) = api.get("/dedicated/server/ns1").await;
    assert_eq!(v["efiBootloaderPath"], Value::Null, "not done yet: {v}");
    // while an install runs the machine boots byol's installer (bootId 2), after it its disk
    assert_eq!(v["bootId"], 2, "{v}");
    let (_, b) = api.get("/1.0/dedicated/server/ns1/boot").await;
    assert_eq!(b, json!([1, 2]));
    let (_, b) = api
        .get("/dedicated/server/ns1/boot?bootType=harddisk")
        .await;
    assert_eq!(b, json!([1]));
    let (_, b) = api.get("/dedicated/server/ns1/boot/2").await;
    assert_eq!(b["bootType"], "internal", "{b}");
    let (st, b) = api.get("/dedicated/server/ns1/boot/7").await;
    assert_eq!(
        (st, b["class"].as_str()),
        (404, Some("Client::NotFound")),
        "{b}"
    );
    let done = json!({"phase": "done", "status": "done", "seq": 1, "message": "installed"});
    let (st, _) = agent.post("/agent/v1/events", &done.to_string()).await;
    assert_eq!(st, 200);
    let (_, v) = api.get("/dedicated/server/ns1").await;
    assert_eq!(v["efiBootloaderPath"], "\\efi\\debian\\shimx64.efi", "{v}");
    assert_eq!(v["state"], "ok", "{v}");
    assert_eq!(v["bootId"], 1, "{v}");
}

/// The agent of the machine's next boot: its boot script fetched, its config taken.
async fn booted_agent(s: &Server, api: &common::Api) -> common::Api {
    let (_, script) = api.text(&format!("/ipxe/{MAC}")).await;
    let agent = common::Api {
        http: reqwest::Client::new(),
        base: s.base.clone(),
        token: Some(common::token_in(&script)),
    };
    let (st, _) = agent.get("/agent/v1/config").await;
    assert_eq!(st, 200);
    agent
}
