//! redfish: a Redfish BMC over HTTPS and JSON (DMTF DSP0266): the system's `PowerState`, the
//! `ComputerSystem.Reset` action, and a one-time boot override (`Boot.BootSourceOverrideTarget:
//! Pxe`, `BootSourceOverrideEnabled: Once`). HTTP Basic authentication on every request (what
//! every BMC accepts); no redirect is followed (credentials never go elsewhere); the BMC's
//! certificate checked against the public roots, or against the operator's CA file, or (with
//! `--insecure`) not at all.

use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};

use super::{BMC_TIMEOUT, BmcError, PowerAction, PowerState, shown};
use byol_spec::Secret;

const SYSTEMS: &str = "/redfish/v1/Systems";

pub struct Redfish {
    http: reqwest::Client,
    /// `https://HOST[:PORT]`
    base: Url,
    /// `/redfish/v1/Systems/ID`, or None to find the one system the BMC has.
    system: Option<String>,
    user: String,
    password: Secret,
}

/// The PEM certificates of a CA file.
pub fn certificates(pem: &str) -> Result<Vec<reqwest::Certificate>, BmcError> {
    let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
        .map_err(|e| BmcError(format!("the CA file is not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(BmcError(
            "the CA file holds no certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(certs)
}

/// `https://HOST[:PORT][/redfish/v1/Systems/ID]` checked and written back in one form: no
/// user or password in it, no query; `http://` only with `insecure`.
pub fn check_url(s: &str, insecure: bool) -> Result<String, BmcError> {
    let bad = |why: &str| {
        Err(BmcError(format!(
            "Redfish BMC `{}`: {why} (give https://HOST[:PORT] or https://HOST[:PORT]{SYSTEMS}/ID)",
            shown(s)
        )))
    };
    let u = match Url::parse(s) {
        Ok(u) => u,
        Err(e) => return bad(&format!("not a URL: {e}")),
    };
    match u.scheme() {
        "https" => {}
        "http" if insecure => {}
        "http" => {
            return bad(
                "plain HTTP sends the BMC password readable by anyone on the path: use https, \
                 or --insecure where the BMC network is trusted",
            );
        }
        _ => return bad("not an http(s) URL"),
    }
    if u.host_str().is_none() {
        return bad("no host");
    }
    if !u.username().is_empty() || u.password().is_some() {
        return bad("the user and password go in --user and --password-file, not in the URL");
    }
    if u.query().is_some() || u.fragment().is_some() {
        return bad("no query or fragment");
    }
    let path = u.path().trim_end_matches('/');
    match path {
        "" | "/redfish/v1" | SYSTEMS => {}
        p => match p.strip_prefix(SYSTEMS).and_then(|r| r.strip_prefix('/')) {
            Some(id) if !id.is_empty() && !id.contains('/') => {}
            _ => return bad("the path must be the system's"),
        },
    }
    let mut out = format!("{}://{}", u.scheme(), host_port(&u));
    if path.len() > SYSTEMS.len() {
        out.push_str(path);
    }
    Ok(out)
}

fn host_port(u: &Url) -> String {
    // IPv6 addresses come back in brackets
    let host = u.host_str().unwrap_or("");
    match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}

impl Redfish {
    pub fn new(
        address: &str,
        user: &str,
        password: Secret,
        ca_pem: Option<&str>,
        insecure: bool,
    ) -> Result<Redfish, BmcError> {
        let address = check_url(address, insecure)?;
        let u = Url::parse(&address).map_err(|e| BmcError(e.to_string()))?;
        let system = (u.path().len() > SYSTEMS.len()).then(|| u.path().to_string());
        let base = Url::parse(&format!("{}://{}", u.scheme(), host_port(&u)))
            .map_err(|e| BmcError(e.to_string()))?;
        let mut b = reqwest::Client::builder()
            .timeout(BMC_TIMEOUT)
            .connect_timeout(std::time::Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("byol/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = ca_pem {
            b = b.tls_built_in_root_certs(false);
            for c in certificates(pem)? {
                b = b.add_root_certificate(c);
            }
        }
        if insecure {
            b = b.danger_accept_invalid_certs(true);
        }
        let http = b
            .build()
            .map_err(|e| BmcError(format!("making the Redfish client: {e}")))?;
        Ok(Redfish {
            http,
            base,
            system,
            user: user.to_string(),
            password,
        })
    }

    pub fn describe(&self) -> String {
        let mut s = self.base.as_str().trim_end_matches('/').to_string();
        if let Some(p) = &self.system {
            s.push_str(p);
        }
        s
    }

    /// One request; the JSON answer (Null when empty) and the ETag, or an error that says what
    /// the BMC answered.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        etag: Option<&str>,
    ) -> Result<(StatusCode, Value, Option<String>), BmcError> {
        let url = self
            .base
            .join(path)
            .map_err(|e| BmcError(format!("{path}: {e}")))?;
        let what = format!("{method} {path}");
        let mut req = self
            .http
            .request(method, url)
            .basic_auth(&self.user, Some(self.password.expose()))
            .header("Accept", "application/json");
        if let Some(b) = body {
            req = req.json(&b);
        }
        if let Some(e) = etag {
            req = req.header("If-Match", e);
        }
        let resp = req.send().await.map_err(|e| {
            BmcError(format!(
                "the BMC at {} did not answer {what}: {}",
                self.base.as_str().trim_end_matches('/'),
                error_chain(&e)
            ))
        })?;
        let status = resp.status();
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp.text().await.unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok((status, v, etag));
        }
        let detail = redfish_message(&v).unwrap_or_else(|| shown(&text));
        let hint = match status {
            StatusCode::UNAUTHORIZED => format!(
                ": the BMC refused user `{}` and its password",
                shown(&self.user)
            ),
            StatusCode::FORBIDDEN => format!(": user `{}` may not do this", shown(&self.user)),
            StatusCode::NOT_FOUND => ": no such resource on this BMC".to_string(),
            s if s.is_redirection() => ": byol follows no redirect: give the BMC's own URL".into(),
            _ => String::new(),
        };
        Err(BmcError(format!(
            "the BMC answered {status} to {what}{hint}{}",
            if detail.is_empty() {
                String::new()
            } else {
                format!(" ({detail})")
            }
        )))
    }

    /// The system's path: the one given, or the only member of `/redfish/v1/Systems`.
    async fn system(&self) -> Result<String, BmcError> {
        if let Some(s) = &self.system {
            return Ok(s.clone());
        }
        let (_, v, _) = self.call(Method::GET, SYSTEMS, None, None).await?;
        let members: Vec<String> = v["Members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["@odata.id"].as_str().map(str::to_string))
            .collect();
        match members.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(BmcError(format!("the BMC lists no system under {SYSTEMS}"))),
            many => Err(BmcError(format!(
                "the BMC has {} systems ({}): give the machine's in the BMC URL, \
                 https://HOST{SYSTEMS}/ID",
                many.len(),
                shown(&many.join(", "))
            ))),
        }
    }

    pub async fn status(&self) -> Result<PowerState, BmcError> {
        let sys = self.system().await?;
        let (_, v, _) = self.call(Method::GET, &sys, None, None).await?;
        Ok(match v["PowerState"].as_str() {
            Some("On") => PowerState::On,
            Some("Off") => PowerState::Off,
            Some(s) => PowerState::Other(shown(s)),
            None => {
                return Err(BmcError(format!(
                    "the BMC's {sys} has no PowerState: is it a ComputerSystem?"
                )));
            }
        })
    }

    pub async fn power(&self, action: PowerAction) -> Result<String, BmcError> {
        let sys = self.system().await?;
        let reset = match action {
            PowerAction::On => "On",
            PowerAction::Off => "ForceOff",
            PowerAction::Cycle => "ForceRestart",
            PowerAction::Status => return Ok(String::new()),
        };
        // the action's target as the system names it (DSP0266), else the usual path
        let (_, v, _) = self.call(Method::GET, &sys, None, None).await?;
        let target = v["Actions"]["#ComputerSystem.Reset"]["target"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{sys}/Actions/ComputerSystem.Reset"));
        let (status, _, _) = self
            .call(
                Method::POST,
                &target,
                Some(json!({"ResetType": reset})),
                None,
            )
            .await?;
        Ok(format!("ResetType {reset}: {status}"))
    }

    pub async fn boot_network_once(&self) -> Result<String, BmcError> {
        let sys = self.system().await?;
        // some BMCs take a PATCH only with the resource's ETag
        let (_, _, etag) = self.call(Method::GET, &sys, None, None).await?;
        let (status, _, _) = self
            .call(
                Method::PATCH,
                &sys,
                Some(json!({"Boot": {
                    "BootSourceOverrideTarget": "Pxe",
                    "BootSourceOverrideEnabled": "Once",
                }})),
                etag.as_deref(),
            )
            .await?;
        Ok(format!("BootSourceOverrideTarget Pxe, Once: {status}"))
    }
}

/// A Redfish error's message (`error.@Message.ExtendedInfo[].Message`, else `error.message`).
fn redfish_message(v: &Value) -> Option<String> {
    let e = &v["error"];
    let ext: Vec<&str> = e["@Message.ExtendedInfo"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["Message"].as_str())
        .collect();
    let m = if ext.is_empty() {
        e["message"].as_str()?.to_string()
    } else {
        ext.join("; ")
    };
    Some(shown(&m))
}

/// A reqwest error with its causes (TLS, connection refused…), one line.
fn error_chain(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    shown(&s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bmc_urls_are_checked_and_written_in_one_form() {
        assert_eq!(
            check_url("https://10.0.0.9/", false).unwrap(),
            "https://10.0.0.9"
        );
        assert_eq!(
            check_url("https://bmc.example:8443/redfish/v1/Systems/1/", false).unwrap(),
            "https://bmc.example:8443/redfish/v1/Systems/1"
        );
        assert_eq!(
            check_url("https://[fd00::9]/redfish/v1", false).unwrap(),
            "https://[fd00::9]"
        );
        assert_eq!(
            check_url("http://127.0.0.1:8000", true).unwrap(),
            "http://127.0.0.1:8000"
        );
        for (bad, why) in [
            ("http://127.0.0.1:8000", "plain HTTP"),
            ("https://admin:pw@bmc/", "not in the URL"),
            ("https://bmc/redfish/v1/Managers/1", "the system's"),
            ("https://bmc/redfish/v1/Systems/1/Bios", "the system's"),
            ("ftp://bmc/", "not an http(s) URL"),
            ("bmc.example", "not a URL"),
            ("https://bmc/?x=1", "no query"),
        ] {
            let e = check_url(bad, false).unwrap_err().0;
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn redfish_error_messages_are_read() {
        let v = json!({"error": {"code": "Base.1.0.GeneralError", "message": "general",
            "@Message.ExtendedInfo": [{"Message": "The value Foo for ResetType is not allowed."}]}});
        assert_eq!(
            redfish_message(&v).unwrap(),
            "The value Foo for ResetType is not allowed."
        );
        assert_eq!(
            redfish_message(&json!({"error": {"message": "no\u{1b}[2J"}})).unwrap(),
            byol_spec::escape_control("no\u{1b}[2J")
        );
        assert_eq!(redfish_message(&Value::Null), None);
    }
}
