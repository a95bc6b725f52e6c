//! `agent registry policy set|show|clear`: the server's pull policies (admin), over
//! `/admin/policy`.

use super::admin::ok_json;
use super::http::Client;
use clap::Subcommand;
use http::Method;
use serde_json::{json, Value};
use std::io::Write;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Set the vulnerability policy at run time (kept until `policy clear`; it takes the
    /// place of the config's `[policy]` block_vulnerabilities and unscanned).
    Set {
        /// Refuse images whose newest report has a finding at or above this severity:
        /// critical, high, medium, low, or none.
        #[arg(long)]
        block_vulnerabilities: Option<String>,
        /// Images with no report: allow or block.
        #[arg(long)]
        unscanned: Option<String>,
    },
    /// Show the policies in effect.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Drop the run-time settings: the config's `[policy]` applies again.
    Clear,
}

pub async fn run(c: &Client, cmd: PolicyCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    let (v, json_out) = match cmd {
        PolicyCommand::Set {
            block_vulnerabilities,
            unscanned,
        } => {
            if block_vulnerabilities.is_none() && unscanned.is_none() {
                anyhow::bail!("policy set: give --block-vulnerabilities or --unscanned");
            }
            let block = block_vulnerabilities.map(|b| match b.as_str() {
                "none" => String::new(),
                _ => b,
            });
            let body = json!({ "block_vulnerabilities": block, "unscanned": unscanned });
            let r = c
                .request(Method::PUT, "/admin/policy", serde_json::to_vec(&body).ok())
                .await?;
            (ok_json(c, &r, "policy set")?, false)
        }
        PolicyCommand::Show { json } => {
            let r = c.get("/admin/policy").await?;
            (ok_json(c, &r, "policy show")?, json)
        }
        PolicyCommand::Clear => {
            let r = c.request(Method::DELETE, "/admin/policy", None).await?;
            (ok_json(c, &r, "policy clear")?, false)
        }
    };
    if json_out {
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    show(&v, out)
}

fn show(v: &Value, out: &mut dyn Write) -> anyhow::Result<()> {
    let s = |x: &Value| match x.as_str() {
        Some("") | None => "none".to_string(),
        Some(t) => t.to_string(),
    };
    let runtime = v["runtime"].as_object().is_some_and(|o| !o.is_empty());
    writeln!(out, "Policy version:        {}", v["version"])?;
    writeln!(
        out,
        "Block vulnerabilities: {}{}",
        s(&v["block_vulnerabilities"]),
        if runtime { " (set at run time)" } else { "" }
    )?;
    writeln!(out, "Unscanned images:      {}", s(&v["unscanned"]))?;
    let rules = v["signatures"].as_array().cloned().unwrap_or_default();
    if rules.is_empty() {
        writeln!(out, "Signatures:            none required")?;
    }
    for r in rules {
        let list = |k: &str| {
            r[k].as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(
            out,
            "Signatures:            {} ({}) with keys {}",
            list("repos"),
            s(&r["mode"]),
            list("keys")
        )?;
    }
    Ok(())
}
