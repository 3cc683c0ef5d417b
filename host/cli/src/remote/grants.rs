//! `kanon grants`: support-access grants (tenant admin; the daemon's
//! grant routes).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use kanon_client::{NewGrant, SupportGrant};

use super::Connection;
use super::output::{at, duration_secs, escaped, revoked_or, show_item, show_items};

#[derive(Debug, Args)]
pub struct GrantsArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: GrantsCommand,
}

#[derive(Debug, Subcommand)]
enum GrantsCommand {
    /// Let operator staff read your job metadata and logs for a while (tenant admin).
    Create {
        #[arg(long)]
        tenant: String,
        /// How long: 2h, 3d (at most 30d).
        #[arg(long)]
        ttl: String,
        /// Why: a ticket number, say.
        #[arg(long)]
        reason: String,
    },
    List {
        #[arg(long)]
        tenant: String,
    },
    Revoke {
        #[arg(long)]
        tenant: String,
        id: String,
    },
}

pub fn grants(args: GrantsArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let header = ["id", "expires", "state", "reason"];
    let row = |g: &SupportGrant| {
        vec![escaped(&g.id), at(Some(g.expires_ms)), revoked_or(g.revoked_ms, "granted"), escaped(&g.reason)]
    };
    match args.command {
        GrantsCommand::Create { tenant, ttl, reason } => {
            let grant = client.create_grant(&tenant, &NewGrant { ttl_secs: duration_secs(&ttl)?, reason })?;
            show_item(args.conn.json, &grant, &header, row)
        }
        GrantsCommand::List { tenant } => {
            show_items(args.conn.json, &client.list_grants(&tenant)?, &header, row)
        }
        GrantsCommand::Revoke { tenant, id } => {
            show_item(args.conn.json, &client.revoke_grant(&tenant, &id)?, &header, row)
        }
    }
}
