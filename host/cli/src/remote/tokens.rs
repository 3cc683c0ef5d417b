//! `kanon tokens`: issue, list and revoke tokens (the operator; a tenant
//! admin its tenant's admins; the daemon's `tokens` API).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use kanon_client::{NewToken, Role};

use super::Connection;
use super::output::{at, duration_secs, escaped, escaped_or_dash, print_json, revoked_or, show_items};

#[derive(Debug, Args)]
pub struct TokensArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: TokensCommand,
}

#[derive(Debug, Subcommand)]
enum TokensCommand {
    /// Issue a token; it is printed once. The operator issues operator,
    /// analyst and vendor tokens; a tenant admin further tenant-admin tokens
    /// of its tenant.
    Issue {
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// The holder's name (approvals name analysts by it); unique among
        /// live tokens.
        #[arg(long)]
        name: String,
        /// The tenant of a tenant-admin token (default: the issuer's).
        #[arg(long)]
        tenant: Option<String>,
        /// Lifetime: 30m, 12h, 90d; none means until revoked.
        #[arg(long)]
        ttl: Option<String>,
    },
    /// List tokens, without secrets (the operator every one, a tenant
    /// admin its tenant's).
    List,
    /// Revoke a token by id (the operator any, a tenant admin its tenant's).
    Revoke { id: String },
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::ALL
        .into_iter()
        .find(|r| r.name() == text)
        .ok_or_else(|| format!("unknown role `{text}`: operator, tenant-admin, analyst or vendor"))
}

pub fn tokens(args: TokensArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    match args.command {
        TokensCommand::Issue { role, name, tenant, ttl } => {
            let ttl_secs = ttl.as_deref().map(duration_secs).transpose()?;
            let issued = client.issue_token(&NewToken { role, name: name.clone(), tenant, ttl_secs })?;
            if args.conn.json {
                print_json(&issued)?;
            } else {
                println!("{}", escaped(&issued.token));
                eprintln!("token {} for {} {} (shown once)", escaped(&issued.info.id), role, name);
            }
        }
        TokensCommand::List => {
            let tokens = client.list_tokens()?;
            return show_items(
                args.conn.json,
                &tokens,
                &["id", "role", "name", "tenant", "expires", "state"],
                |t| {
                    vec![
                        escaped(&t.id),
                        t.role.to_string(),
                        escaped(&t.name),
                        escaped_or_dash(t.tenant.as_deref()),
                        at(t.expires_ms),
                        revoked_or(t.revoked_ms, "live"),
                    ]
                },
            );
        }
        TokensCommand::Revoke { id } => {
            let info = client.revoke_token(&id)?;
            if args.conn.json { print_json(&info)? } else { println!("revoked token {id}") }
        }
    }
    Ok(ExitCode::SUCCESS)
}
