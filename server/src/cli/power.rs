//! `byol machine bmc …` (a machine's Redfish or IPMI BMC) and `byol machine power …`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde_json::json;

use super::{Client, ClientArgs, enc, print_json, s};

/// Where a machine's BMC answers, and how byol signs in.
#[derive(Debug, Clone, clap::Args)]
pub struct BmcArgs {
    pub name: String,
    /// A Redfish BMC: https://HOST[:PORT] (its one system) or
    /// https://HOST[:PORT]/redfish/v1/Systems/ID.
    #[arg(long, conflicts_with_all = ["ipmi", "clear"])]
    pub redfish: Option<String>,
    /// An IPMI v2.0 BMC (RMCP+): HOST[:PORT] (port 623 by default).
    #[arg(long, conflicts_with = "clear")]
    pub ipmi: Option<String>,
    /// The BMC user.
    #[arg(long)]
    pub user: Option<String>,
    /// A file holding the BMC password (one line; `-` reads standard input). Stored sealed,
    /// never shown.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// Redfish: PEM certificates the BMC's certificate must chain to (BMCs with their own CA
    /// or a self-signed certificate).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Redfish: do not check the BMC's certificate, and allow http:// (trusted BMC networks
    /// only: the password crosses it).
    #[arg(long)]
    pub insecure: bool,
    /// Forget the machine's BMC: installs wait for its next network boot again.
    #[arg(long)]
    pub clear: bool,
}

/// The password in `path` (`-`: standard input): its first line.
fn read_password(path: &Path) -> anyhow::Result<String> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("reading the password from stdin")?
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("reading the password file {}", path.display()))?
    };
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        bail!(
            "the password file {} is empty: put the BMC password on its first line",
            path.display()
        );
    }
    Ok(line.to_string())
}

pub async fn bmc(a: &ClientArgs, b: BmcArgs) -> anyhow::Result<()> {
    let c = Client::new(a)?;
    let path = format!("/api/v1/machines/{}/bmc", enc(&b.name));
    let name = &b.name;
    if b.clear {
        let v = c.call(reqwest::Method::DELETE, &path, None).await?;
        if a.json {
            print_json(&v)
        } else if v["cleared"] == true {
            println!("machine {name}: BMC forgotten; installs wait for its next network boot");
        } else {
            println!("machine {name} had no BMC");
        }
        return Ok(());
    }
    let (kind, address) = match (&b.redfish, &b.ipmi) {
        (Some(u), None) => ("redfish", u.clone()),
        (None, Some(h)) => ("ipmi", h.clone()),
        (None, None) => {
            // no settings: show the BMC
            let v = c.get(&path).await?;
            if a.json {
                print_json(&v)
            } else {
                println!(
                    "machine {name}: {} BMC {} as {}{}",
                    s(&v["kind"]),
                    s(&v["address"]),
                    s(&v["username"]),
                    if v["insecure"] == true {
                        " (certificate not checked)"
                    } else if v["caPemSet"] == true {
                        " (certificate checked against its CA file)"
                    } else {
                        ""
                    }
                );
            }
            return Ok(());
        }
        (Some(_), Some(_)) => bail!("give --redfish or --ipmi, not both"),
    };
    let (Some(user), Some(pw_file)) = (&b.user, &b.password_file) else {
        bail!("a BMC needs --user and --password-file (the password on the file's first line)");
    };
    let password = read_password(pw_file)?;
    let ca_pem = match &b.ca_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading the CA file {}", p.display()))?,
        ),
        None => None,
    };
    let body = json!({
        "kind": kind, "address": address, "username": user, "password": password,
        "caPem": ca_pem, "insecure": b.insecure,
    });
    let v = c
        .call(
            reqwest::Method::PUT,
            &path,
            Some(serde_json::to_vec(&body)?),
        )
        .await?;
    if a.json {
        print_json(&v)
    } else {
        println!(
            "machine {name}: {kind} BMC {} as {}; installs now start the machine themselves \
             (network boot once, power on or reset)",
            s(&v["address"]),
            s(&v["username"])
        );
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PowerArg {
    On,
    Off,
    Cycle,
    Status,
}

pub async fn power(a: &ClientArgs, name: &str, action: PowerArg) -> anyhow::Result<()> {
    let c = Client::new(a)?;
    let action = match action {
        PowerArg::On => "on",
        PowerArg::Off => "off",
        PowerArg::Cycle => "cycle",
        PowerArg::Status => "status",
    };
    let v = c
        .post(
            &format!("/api/v1/machines/{}/power", enc(name)),
            serde_json::to_vec(&json!({ "action": action }))?,
        )
        .await?;
    if a.json {
        print_json(&v)
    } else if v["answer"].is_string() {
        println!(
            "machine {name}: {} ({}: {}); power is {}",
            action,
            s(&v["bmc"]),
            s(&v["answer"]),
            s(&v["powerState"])
        );
    } else {
        println!(
            "machine {name}: power is {} ({})",
            s(&v["powerState"]),
            s(&v["bmc"])
        );
    }
    Ok(())
}
