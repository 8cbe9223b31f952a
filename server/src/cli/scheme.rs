//! `byol scheme …`: named storage layouts (OVH's `partitionSchemeName`), and
//! `byol machine scheme NAME SCHEME` (in [`super::machine`]).

use std::path::PathBuf;

use anyhow::Context as _;
use serde_json::Value;

use super::{Client, ClientArgs, enc, print_json, s};

#[derive(Debug, clap::Subcommand)]
pub enum SchemeCmd {
    /// Store a layout under NAME (or replace it): a JSON file with OVH's `layout` rows,
    /// `{"layout": [...]}` or the bare array.
    Add {
        name: String,
        #[arg(long)]
        file: PathBuf,
    },
    /// List the schemes (`default`, OVH's layout, first).
    List,
    /// Show one scheme's rows.
    Show { name: String },
    /// Delete a scheme (refused while a machine has it as its default).
    Delete { name: String },
}

/// `mountPoint fileSystem size raid lv` of a row, for people.
fn row_line(r: &Value) -> String {
    let size = match r["size"].as_u64() {
        None | Some(0) => "the rest".to_string(),
        Some(n) => format!("{n} MiB"),
    };
    let raid = match &r["raidLevel"] {
        Value::Null if r["fileSystem"] == "swap" => "on every disk".to_string(),
        Value::Null => "RAID 1".to_string(),
        v => format!(
            "RAID {}",
            v.as_str().map_or_else(|| v.to_string(), str::to_string)
        ),
    };
    let lv = match r["extras"]["lv"]["name"].as_str() {
        Some(n) => format!(", LV {}", byol_spec::escape_control(n)),
        None => String::new(),
    };
    format!(
        "{:<12} {:<6} {size}, {raid}{lv}",
        s(&r["mountPoint"]),
        s(&r["fileSystem"])
    )
}

fn print_scheme(v: &Value) {
    let built_in = if v["builtIn"] == true {
        " (built in)"
    } else {
        ""
    };
    println!("scheme {}{built_in}", s(&v["name"]));
    for r in v["layout"].as_array().into_iter().flatten() {
        println!("  {}", row_line(r));
    }
}

pub async fn scheme(a: &ClientArgs, cmd: SchemeCmd) -> anyhow::Result<()> {
    let c = Client::new(a)?;
    match cmd {
        SchemeCmd::Add { name, file } => {
            let body =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let v = c
                .call(
                    reqwest::Method::PUT,
                    &format!("/api/v1/schemes/{}", enc(&name)),
                    Some(body),
                )
                .await?;
            if a.json {
                print_json(&v)
            } else {
                print_scheme(&v);
            }
        }
        SchemeCmd::List => {
            let v = c.get("/api/v1/schemes").await?;
            if a.json {
                print_json(&v);
            } else {
                for sc in v["schemes"].as_array().into_iter().flatten() {
                    let rows = sc["layout"].as_array().map_or(0, Vec::len);
                    let built_in = if sc["builtIn"] == true {
                        ", built in"
                    } else {
                        ""
                    };
                    println!("{} ({rows} rows{built_in})", s(&sc["name"]));
                }
            }
        }
        SchemeCmd::Show { name } => {
            let v = c.get(&format!("/api/v1/schemes/{}", enc(&name))).await?;
            if a.json {
                print_json(&v)
            } else {
                print_scheme(&v);
            }
        }
        SchemeCmd::Delete { name } => {
            c.call(
                reqwest::Method::DELETE,
                &format!("/api/v1/schemes/{}", enc(&name)),
                None,
            )
            .await?;
            if !a.json {
                println!("scheme {name} deleted");
            }
        }
    }
    Ok(())
}
