//! `kanon approvals`: approve plugins on your data, list and revoke
//! approvals (tenant admin; an analyst lists its own; the daemon's
//! `approvals` API).

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use kanon_client::types::{Approval, NewApproval, PluginRecord};
use serde_json::json;

use super::Connection;
use super::output::{at, duration_secs, escaped, revoked_or, show_item, show_items};

#[derive(Debug, Args)]
pub struct ApprovalsArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: ApprovalsCommand,
}

#[derive(Debug, Subcommand)]
enum ApprovalsCommand {
    /// Approve a plugin for an analyst on your data (tenant admin). The
    /// datasets and outputs default to everything the manifest declares.
    Grant {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        plugin: String,
        #[arg(long)]
        analyst: String,
        /// MANIFEST_NAME=YOUR_DATASET; repeatable (default: the same names).
        #[arg(long = "dataset", value_name = "NAME=DATASET")]
        datasets: Vec<String>,
        /// The exact parameters jobs must pass (a JSON object).
        #[arg(long, default_value = "{}", conflicts_with = "params_schema")]
        params: String,
        /// Instead: a JSON Schema every job's params must satisfy (JSON text).
        #[arg(long)]
        params_schema: Option<String>,
        /// Lifetime: 12h, 30d.
        #[arg(long, default_value = "30d")]
        ttl: String,
        /// `entity`: every job under this approval runs once per entity, each
        /// instance seeing only that entity's rows.
        #[arg(long, value_parser = ["shared", "entity"])]
        isolation: Option<String>,
    },
    /// List approvals: a tenant's (tenant admin), or those naming you (analyst).
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke an approval (tenant admin).
    Revoke {
        #[arg(long)]
        tenant: String,
        id: String,
    },
}

pub fn approvals(args: ApprovalsArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    match args.command {
        ApprovalsCommand::Grant {
            tenant,
            plugin,
            analyst,
            datasets,
            params,
            params_schema,
            ttl,
            isolation,
        } => {
            let record: PluginRecord = client.plugin(&plugin)?;
            let mapping: BTreeMap<String, String> = datasets
                .iter()
                .map(|spec| {
                    let (name, dataset) = spec
                        .split_once('=')
                        .with_context(|| format!("--dataset takes NAME=DATASET, got `{spec}`"))?;
                    Ok((name.to_owned(), dataset.to_owned()))
                })
                .collect::<anyhow::Result<_>>()?;
            let (params, params_schema) = match params_schema {
                Some(schema) => {
                    (None, Some(serde_json::from_str(&schema).context("--params-schema is not JSON")?))
                }
                None => (Some(serde_json::from_str(&params).context("--params is not JSON")?), None),
            };
            // Parsed as the daemon parses it, so a bad value reads the same.
            let policy = isolation.map(|i| serde_json::from_value(json!({"isolation": i}))).transpose()?;
            let new = NewApproval {
                params,
                params_schema,
                ttl_secs: duration_secs(&ttl)?,
                policy,
                ..NewApproval::covering(&record, &analyst, |name| {
                    mapping.get(name).cloned().unwrap_or_else(|| name.to_owned())
                })
            };
            let approval: Approval = client.grant_approval(&tenant, &new)?;
            show_item(args.conn.json, &approval, &HEADER, row)
        }
        ApprovalsCommand::List { tenant: Some(tenant) } => {
            let approvals: Vec<Approval> = client.tenant_approvals(&tenant)?;
            show_items(args.conn.json, &approvals, &HEADER, row)
        }
        ApprovalsCommand::List { tenant: None } => {
            let approvals: Vec<Approval> = client.my_approvals()?;
            show_items(args.conn.json, &approvals, &HEADER, row)
        }
        ApprovalsCommand::Revoke { tenant, id } => {
            let approval: Approval = client.revoke_approval(&tenant, &id)?;
            show_item(args.conn.json, &approval, &HEADER, row)
        }
    }
}

const HEADER: [&str; 7] = ["id", "tenant", "plugin", "analyst", "datasets", "expires", "state"];

fn row(a: &Approval) -> Vec<String> {
    let datasets: Vec<String> =
        a.datasets.iter().map(|(k, v)| format!("{}={}", escaped(k), escaped(&v.dataset))).collect();
    vec![
        escaped(&a.id),
        escaped(&a.tenant),
        escaped(&a.plugin).chars().take(12).collect(),
        escaped(&a.analyst),
        datasets.join(","),
        at(Some(a.expires_ms)),
        revoked_or(a.revoked_ms, "live"),
    ]
}
