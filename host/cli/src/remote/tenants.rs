//! `kanon tenants`: create and list tenants, new enrolment codes
//! (operator; the daemon's `tenants` API).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use kanon_client::{EnrolmentCode, NewEnrolment, NewTenant};

use super::Connection;
use super::output::{at, duration_secs, escaped, print_json, show_items};

#[derive(Debug, Args)]
pub struct TenantsArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: TenantsCommand,
}

#[derive(Debug, Subcommand)]
enum TenantsCommand {
    /// Create a tenant (operator); prints the one-time code its admin
    /// enrols with (`kanon enrol`).
    Create {
        name: String,
        /// How long the code lasts: 12h, 7d (at most 30d; default 7d).
        #[arg(long)]
        enrolment_ttl: Option<String>,
    },
    /// List tenants (operator).
    List,
    /// A fresh one-time enrolment code for a tenant whose admin lost access
    /// (operator). It replaces the tenant's unused code; its admin tokens
    /// stay, and its audit log shows the code.
    Enrolment {
        name: String,
        /// How long the code lasts: 12h, 7d (at most 30d; default 7d).
        #[arg(long)]
        ttl: Option<String>,
    },
}

/// Print an enrolment code: the code alone on stdout, how to use it on stderr.
fn print_enrolment(enrolment: &EnrolmentCode, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(enrolment);
    }
    println!("{}", escaped(&enrolment.code));
    eprintln!(
        "one-time enrolment code for the admin of `{}`, until {} (shown once): the admin runs \
         `kanon enrol PROFILE --url URL --name HOLDER` and pastes it",
        escaped(&enrolment.tenant),
        at(Some(enrolment.expires_ms))
    );
    Ok(())
}

pub fn tenants(args: TenantsArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let ttl = |text: Option<String>| text.as_deref().map(duration_secs).transpose();
    match args.command {
        TenantsCommand::Create { name, enrolment_ttl } => {
            let created =
                client.create_tenant(&NewTenant { name, enrolment_ttl_secs: ttl(enrolment_ttl)? })?;
            if args.conn.json {
                print_json(&created)?;
            } else {
                eprintln!("created tenant `{}`", escaped(&created.tenant.name));
                print_enrolment(&created.enrolment, false)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        TenantsCommand::Enrolment { name, ttl: given } => {
            let enrolment = client.issue_enrolment(&name, &NewEnrolment { ttl_secs: ttl(given)? })?;
            print_enrolment(&enrolment, args.conn.json)?;
            Ok(ExitCode::SUCCESS)
        }
        TenantsCommand::List => {
            let tenants = client.list_tenants()?;
            show_items(args.conn.json, &tenants, &["tenant", "created"], |t| {
                vec![escaped(&t.name), at(Some(t.created_ms))]
            })
        }
    }
}
