//! `kanon jobs`: run jobs under approvals, follow, cancel, read logs (the
//! daemon's `jobs` API).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use kanon_client::{Client, ClientError, MAX_WAIT_SECS};
use kanon_daemon::approvals::Approval;
use kanon_daemon::jobs::SubmitRequest;
use serde_json::Value;

use super::Connection;
use super::output::{list_of, print_json, print_table, text, when};
use crate::render;

#[derive(Debug, Args)]
pub struct JobsArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: JobsCommand,
}

#[derive(Debug, Subcommand)]
enum JobsCommand {
    /// Submit a job under an approval (analyst); with --wait, follow it to
    /// the end and print the results.
    Run {
        /// The approval; its tenant, plugin, datasets and params are used.
        #[arg(long)]
        approval: String,
        /// A stricter policy than the tenant's (a TOML file).
        #[arg(long)]
        policy: Option<PathBuf>,
        #[arg(long)]
        wait: bool,
    },
    /// Your jobs (analyst), or your tenant's (tenant admin).
    List,
    /// One job's state.
    Show { id: String },
    /// Cancel a job.
    Cancel { id: String },
    /// The plugin's output log of a job (tenant admin, or support under a grant).
    Log { id: String },
}

pub fn jobs(args: JobsArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    let json_out = args.conn.json;
    match args.command {
        JobsCommand::Run { approval, policy, wait } => {
            let approvals: Vec<Approval> = client.my_approvals()?;
            let found = approvals
                .into_iter()
                .find(|a| a.id == approval)
                .with_context(|| format!("no approval `{approval}` names you"))?;
            let policy = match policy {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    Some(kanon_gate::PolicyLayer::from_toml(&path.display().to_string(), &text)?)
                }
                None => None,
            };
            let request = SubmitRequest {
                datasets: found.datasets.into_iter().map(|(name, d)| (name, d.dataset)).collect(),
                // Null under a params schema: the daemon reads it as none.
                params: Some(found.params).filter(|p| !p.is_null()),
                tenant: found.tenant,
                plugin: found.plugin,
                approval,
                policy,
            };
            let job: Value = client.submit_job(&request)?;
            let id = text(&job["id"]);
            if !wait {
                if json_out {
                    print_json(&job)?
                } else {
                    println!("{id}")
                }
                return Ok(ExitCode::SUCCESS);
            }
            let job = follow(&client, &id, !json_out)?;
            if job["state"] != "succeeded" {
                if json_out {
                    print_json(&job)?;
                } else {
                    eprintln!(
                        "job {id} {}: {}; nothing was released",
                        text(&job["state"]),
                        text(&job["failure"])
                    );
                }
                return Ok(ExitCode::from(crate::local::run::EXIT_RUN_FAILED));
            }
            show_results(&client, &id, json_out)?;
        }
        JobsCommand::List => {
            let list: Value = client.list_jobs()?;
            if json_out {
                print_json(&list)?;
            } else {
                print_table(
                    &["id", "tenant", "state", "failure", "submitted"],
                    list_of(list).iter().map(job_row).collect(),
                );
            }
        }
        JobsCommand::Show { id } => {
            let job: Value = client.job(&id)?;
            if json_out {
                print_json(&job)?
            } else {
                print_table(&["id", "tenant", "state", "failure", "submitted"], vec![job_row(&job)])
            }
        }
        JobsCommand::Cancel { id } => {
            let job: Value = client.cancel_job(&id)?;
            if json_out { print_json(&job)? } else { println!("job {id}: {}", text(&job["state"])) }
        }
        JobsCommand::Log { id } => print_log(&client.job_log(&id)?, json_out)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// A plugin's output log of a run.
pub(crate) fn print_log(log: &Value, json_out: bool) -> anyhow::Result<()> {
    if json_out {
        return print_json(log);
    }
    for (name, value) in [("stdout", &log["stdout"]), ("stderr", &log["stderr"]), ("error", &log["error"])] {
        println!("== {name}\n{}", text(value));
    }
    Ok(())
}

fn job_row(job: &Value) -> Vec<String> {
    vec![
        text(&job["id"]),
        text(&job["tenant"]),
        text(&job["state"]),
        text(&job["failure"]),
        when(&job["submitted_ms"]),
    ]
}

/// At least this long between two waits of one follower.
const EARLY_ANSWER_PAUSE: Duration = Duration::from_secs(1);

/// Follow a job until it ends, showing its state on stderr.
pub(crate) fn follow(client: &Client, id: &str, show: bool) -> anyhow::Result<Value> {
    follow_with(|wait| client.wait_job(id, wait), &format!("job {id}"), show)
}

/// Follow a job or a benchmark run through `wait` (its state, once it
/// has ended or the given wait is over: the daemon's long poll) until it
/// ends, showing its state on stderr as `what`'s.
pub(crate) fn follow_with(
    wait: impl Fn(Duration) -> Result<Value, ClientError>,
    what: &str,
    show: bool,
) -> anyhow::Result<Value> {
    let started = Instant::now();
    let mut last = String::new();
    // First as it stands, to show it; then a wait at a time.
    let mut item = wait(Duration::ZERO)?;
    loop {
        let state = text(&item["state"]);
        if show && state != last {
            eprintln!("{what}: {state} ({:.1} s)", started.elapsed().as_secs_f64());
            last = state.clone();
        }
        if matches!(state.as_str(), "succeeded" | "failed" | "cancelled") {
            return Ok(item);
        }
        let asked = Instant::now();
        item = wait(Duration::from_secs(MAX_WAIT_SECS))?;
        // Answered at once though not ended: the daemon had no room for
        // another wait (or is stopping). Pause rather than ask in a loop.
        std::thread::sleep(EARLY_ANSWER_PAUSE.saturating_sub(asked.elapsed()));
    }
}

pub(crate) fn show_results(client: &Client, id: &str, json_out: bool) -> anyhow::Result<()> {
    let release = client.job_results(id)?;
    if json_out {
        return print_json(&release);
    }
    print!("{}", render::release_text(&release));
    Ok(())
}
