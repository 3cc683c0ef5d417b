//! `kanon approvals`: approve plugins on your data, list and revoke
//! approvals (tenant admin; an analyst lists its own; the daemon's
//! `approvals` API).

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use kanon_daemon::approvals::covering;
use kanon_daemon::registry::PluginRecord;
use serde_json::{Value, json};

use super::Connection;
use super::output::{duration_secs, revoked_or, show, text, when};

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
    let value: Value = match args.command {
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
            let (approved, outputs) = covering(&record.manifest, |name| {
                mapping.get(name).cloned().unwrap_or_else(|| name.to_owned())
            });
            let mut body = json!({"plugin": plugin, "analyst": analyst, "datasets": approved, "outputs": outputs,
                                  "ttl_secs": duration_secs(&ttl)?});
            if let Some(isolation) = isolation {
                body["policy"] = json!({"isolation": isolation});
            }
            match params_schema {
                Some(schema) => {
                    body["params_schema"] =
                        serde_json::from_str(&schema).context("--params-schema is not JSON")?;
                }
                None => body["params"] = serde_json::from_str(&params).context("--params is not JSON")?,
            }
            client.grant_approval(&tenant, &body)?
        }
        ApprovalsCommand::List { tenant: Some(tenant) } => client.tenant_approvals(&tenant)?,
        ApprovalsCommand::List { tenant: None } => client.my_approvals()?,
        ApprovalsCommand::Revoke { tenant, id } => client.revoke_approval(&tenant, &id)?,
    };
    show(args.conn.json, value, &["id", "tenant", "plugin", "analyst", "datasets", "expires", "state"], |a| {
        let datasets: Vec<String> = a["datasets"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| format!("{k}={}", text(&v["dataset"]))).collect())
            .unwrap_or_default();
        vec![
            text(&a["id"]),
            text(&a["tenant"]),
            text(&a["plugin"]).chars().take(12).collect(),
            text(&a["analyst"]),
            datasets.join(","),
            when(&a["expires_ms"]),
            revoked_or(a["revoked_ms"].as_u64(), "live"),
        ]
    })
}
