//! `byol api-key …`: OVH-style keys for OVH's clients (python-ovh and the others): create
//! (secrets printed once), list (no secrets), revoke, validate a pending consumer key.

use serde_json::{Value, json};

use super::{Client, ClientArgs, enc, print_json, s};

#[derive(Debug, clap::Subcommand)]
pub enum ApiKeyCmd {
    /// A new application key with a validated consumer key for every call (`GET/POST/PUT/DELETE
    /// /*`). Prints the application key, secret and consumer key once (`--json`:
    /// `{"applicationKey", "applicationSecret", "consumerKey"}`).
    Create { name: String },
    /// The keys and their consumer keys (no secrets).
    List,
    /// The key and every consumer key of it stop working at once.
    Revoke { name: String },
    /// Grants a consumer key an application asked for (`POST /auth/credential`).
    Validate { credential_id: i64 },
}

pub async fn api_key(a: &ClientArgs, cmd: ApiKeyCmd) -> anyhow::Result<()> {
    let c = Client::new(a)?;
    match cmd {
        ApiKeyCmd::Create { name } => {
            let body = serde_json::to_vec(&json!({ "name": name }))?;
            let v = c
                .call(reqwest::Method::POST, "/api/v1/api-keys", Some(body))
                .await?;
            if a.json {
                print_json(&json!({
                    "applicationKey": v["applicationKey"],
                    "applicationSecret": v["applicationSecret"],
                    "consumerKey": v["consumerKey"],
                }));
            } else {
                println!(
                    "api key {} created; the secret and consumer key are shown once:",
                    s(&v["name"])
                );
                println!("application key     {}", s(&v["applicationKey"]));
                println!("application secret  {}", s(&v["applicationSecret"]));
                println!("consumer key        {}", s(&v["consumerKey"]));
            }
        }
        ApiKeyCmd::List => {
            let v = c.get("/api/v1/api-keys").await?;
            if a.json {
                print_json(&v);
            } else {
                for k in v.as_array().into_iter().flatten() {
                    let state = if k["revokedAt"].is_null() {
                        ""
                    } else {
                        " (revoked)"
                    };
                    println!(
                        "{} {}{state}, created {}",
                        s(&k["name"]),
                        s(&k["applicationKey"]),
                        s(&k["createdAt"])
                    );
                    for cr in k["credentials"].as_array().into_iter().flatten() {
                        let rules: Vec<String> = cr["rules"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|r| format!("{} {}", s(&r["method"]), s(&r["path"])))
                            .collect();
                        println!(
                            "  credential {} {}: {}",
                            s(&cr["credentialId"]),
                            s(&cr["status"]),
                            rules.join(", ")
                        );
                    }
                }
            }
        }
        ApiKeyCmd::Revoke { name } => {
            let v = c
                .call(
                    reqwest::Method::DELETE,
                    &format!("/api/v1/api-keys/{}", enc(&name)),
                    None,
                )
                .await?;
            if a.json {
                print_json(&v);
            } else {
                println!("api key {} revoked", s(&v["name"]));
            }
        }
        ApiKeyCmd::Validate { credential_id } => {
            let v: Value = c
                .call(
                    reqwest::Method::POST,
                    &format!("/api/v1/credentials/{credential_id}/validate"),
                    None,
                )
                .await?;
            if a.json {
                print_json(&v);
            } else {
                println!("credential {} {}", s(&v["credentialId"]), s(&v["status"]));
            }
        }
    }
    Ok(())
}
