//! A machine's BMC through the server: settings checked, the password sealed and never shown,
//! and an install whose BMC does not answer failed before the machine could write anything.
//! (Real BMCs — sushy-tools' Redfish and virtualbmc's IPMI over libvirt — drive a QEMU machine
//! through a whole install in `cargo xtask e2e --power redfish|ipmi`.)

mod common;

use std::time::{Duration, Instant};

use common::{Api, GUIDE_EXAMPLE, Server};
use serde_json::json;

const MAC: &str = "52:54:00:12:34:77";
const PASSWORD: &str = "bmc-Secret-4e1f";

async fn with_machine(s: &Server) -> Api {
    let api = s.client();
    let (st, v) = api
        .post(
            "/api/v1/machines",
            &json!({"name": "ns1", "macs": [MAC]}).to_string(),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    api
}

async fn put_bmc(api: &Api, body: serde_json::Value) -> (u16, serde_json::Value) {
    api.req("PUT", "/api/v1/machines/ns1/bmc", Some(&body.to_string()))
        .await
}

#[tokio::test]
async fn bmc_settings_are_checked_stored_sealed_and_never_shown() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &[]);
    let api = with_machine(&s).await;
    let (st, v) = api.get("/api/v1/machines/ns1/bmc").await;
    assert_eq!(st, 404, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("byol machine bmc ns1"),
        "{v}"
    );
    let (st, v) = api
        .post("/api/v1/machines/ns1/power", r#"{"action":"status"}"#)
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("has no BMC"), "{v}");
    let (st, v) = api
        .post("/api/v1/machines/ns1/power", r#"{"action":"reboot"}"#)
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("unknown variant `reboot`"),
        "{v}"
    );
    let (st, v) = put_bmc(&api, json!({"kind": "ipmi", "address": "127.0.0.1"})).await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("missing field"),
        "{v}"
    );

    let base = json!({"kind": "redfish", "address": "https://127.0.0.1:8443",
        "username": "admin", "password": PASSWORD});
    for (change, why) in [
        (json!({"kind": "amt"}), "use redfish or ipmi"),
        (json!({"address": "http://127.0.0.1:8000"}), "plain HTTP"),
        (
            json!({"address": "https://admin:pw@127.0.0.1/"}),
            "not in the URL",
        ),
        (
            json!({"address": "https://127.0.0.1/redfish/v1/Managers/1"}),
            "the system's",
        ),
        (json!({"caPem": "not a certificate"}), "no certificate"),
        (json!({"username": ""}), "1 to 64 characters"),
        (json!({"password": ""}), "1 to 256 bytes"),
        (
            json!({"kind": "ipmi", "address": "-oProxyCommand=x"}),
            "not a name",
        ),
        (
            json!({"kind": "ipmi", "address": "127.0.0.1:6230", "password": "p".repeat(21)}),
            "at most 20 bytes",
        ),
        (
            json!({"kind": "ipmi", "address": "127.0.0.1:6230", "insecure": true}),
            "IPMI has no TLS",
        ),
    ] {
        let mut b = base.clone();
        for (k, v) in change.as_object().unwrap() {
            b[k] = v.clone();
        }
        let (st, v) = put_bmc(&api, b).await;
        assert_eq!(st, 400, "{change}: {v}");
        let m = v["message"].as_str().unwrap();
        assert!(m.contains(why), "{change}: {m}");
        assert!(!m.contains(PASSWORD));
    }

    let (st, v) = put_bmc(&api, base.clone()).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["address"], "https://127.0.0.1:8443");
    let (st, v) = put_bmc(
        &api,
        json!({"kind": "ipmi", "address": "127.0.0.1:6230", "username": "admin", "password": PASSWORD}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (_, shown) = api.get("/api/v1/machines/ns1/bmc").await;
    assert_eq!(
        (
            shown["kind"].as_str(),
            shown["address"].as_str(),
            shown["username"].as_str()
        ),
        (Some("ipmi"), Some("127.0.0.1:6230"), Some("admin")),
        "{shown}"
    );
    // the password is nowhere: not in what is shown, the log, or the database in clear
    assert!(!shown.to_string().contains(PASSWORD), "{shown}");
    assert!(!s.log().contains(PASSWORD));
    let db = std::fs::read(d.path().join("byol.sqlite")).unwrap();
    let wal = std::fs::read(d.path().join("byol.sqlite-wal")).unwrap_or_default();
    for f in [&db, &wal] {
        assert!(
            !f.windows(PASSWORD.len()).any(|w| w == PASSWORD.as_bytes()),
            "the BMC password is in the store in clear"
        );
    }

    let (st, v) = api.req("DELETE", "/api/v1/machines/ns1/bmc", None).await;
    assert_eq!((st, v["cleared"].as_bool()), (200, Some(true)), "{v}");
    let (st, _) = api.get("/api/v1/machines/ns1/bmc").await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn an_install_whose_bmc_does_not_answer_fails_before_anything_is_written() {
    let d = tempfile::tempdir().unwrap();
    let s = Server::start(d.path(), &[]);
    let api = with_machine(&s).await;
    // a port nothing listens on: the BMC refuses the connection
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let (st, v) = put_bmc(
        &api,
        json!({"kind": "redfish", "address": format!("http://127.0.0.1:{port}"),
            "username": "admin", "password": PASSWORD, "insecure": true}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = api
        .post("/api/v1/machines/ns1/power", r#"{"action":"on"}"#)
        .await;
    assert_eq!(st, 502, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("did not answer GET /redfish/v1/Systems"),
        "{v}"
    );

    let (st, v) = api
        .post("/dedicated/server/ns1/install/start", GUIDE_EXAMPLE)
        .await;
    assert_eq!(st, 200, "{v}");
    let task = v["taskId"].as_i64().unwrap();
    let t0 = Instant::now();
    let task = loop {
        let (_, t) = api.get(&format!("/dedicated/server/ns1/task/{task}")).await;
        if t["status"] != "init" || t0.elapsed() > Duration::from_secs(60) {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // byol's side of things (the BMC), not the customer's request
    assert_eq!(task["status"], "ovhError", "{task}");
    let (_, status) = api.get("/dedicated/server/ns1/install/status").await;
    let steps = status["progress"].as_array().unwrap();
    let power = steps
        .iter()
        .find(|p| p["comment"].as_str().unwrap().contains("BMC"))
        .unwrap_or_else(|| panic!("no BMC step: {status}"));
    assert_eq!(power["status"], "error", "{status}");
    let err = power["error"].as_str().unwrap();
    assert!(
        err.contains("could not start machine ns1 through its BMC")
            && err.contains("the disks were not touched"),
        "{err}"
    );
    assert!(!err.contains(PASSWORD));
    // the machine, should it boot from the network anyway, boots its disk
    let (_, script) = api.text(&format!("/ipxe/{MAC}?platform=pcbios")).await;
    assert!(script.contains("sanboot"), "{script}");
    assert!(!s.log().contains(PASSWORD));
}
