//! `kanon jobs`: run jobs under approvals, follow, cancel, read logs (the
//! daemon's `jobs` API).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use kanon_client::types::{Job, JobLog, JobState, SubmitRequest};
use kanon_client::{Client, ClientError, MAX_WAIT_SECS};

use super::Connection;
use super::output::{at, escaped, escaped_or_dash, print_json, print_record, print_table};
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
            let approvals = client.my_approvals()?;
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
            let job = client.submit_job(&request)?;
            if !wait {
                if json_out {
                    print_record(&job)?
                } else {
                    println!("{}", escaped(&job.id))
                }
                return Ok(ExitCode::SUCCESS);
            }
            let id = job.id;
            let job = follow(&client, &id, !json_out)?;
            if job.state != JobState::Succeeded {
                if json_out {
                    print_record(&job)?;
                } else {
                    eprintln!(
                        "job {id} {}: {}; nothing was released",
                        job.state.name(),
                        escaped_or_dash(job.failure.as_deref())
                    );
                }
                return Ok(ExitCode::from(crate::local::run::EXIT_RUN_FAILED));
            }
            show_results(&client, &id, json_out)?;
        }
        JobsCommand::List => {
            let list = client.list_jobs()?;
            if json_out {
                print_record(&list)?;
            } else {
                print_table(
                    &["id", "tenant", "state", "failure", "submitted"],
                    list.iter().map(job_row).collect(),
                );
            }
        }
        JobsCommand::Show { id } => {
            let job = client.job(&id)?;
            if json_out {
                print_record(&job)?
            } else {
                print_table(&["id", "tenant", "state", "failure", "submitted"], vec![job_row(&job)])
            }
        }
        JobsCommand::Cancel { id } => {
            let job = client.cancel_job(&id)?;
            if json_out { print_record(&job)? } else { println!("job {id}: {}", job.state.name()) }
        }
        JobsCommand::Log { id } => print_log(&client.job_log(&id)?, json_out)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// A plugin's output log of a run.
pub(crate) fn print_log(log: &JobLog, json_out: bool) -> anyhow::Result<()> {
    if json_out {
        return print_record(log);
    }
    let texts = [("stdout", Some(&log.stdout)), ("stderr", Some(&log.stderr)), ("error", log.error.as_ref())];
    for (name, text) in texts {
        println!("== {name}\n{}", escaped_or_dash(text.map(String::as_str)));
    }
    Ok(())
}

fn job_row(job: &Job) -> Vec<String> {
    vec![
        escaped(&job.id),
        escaped(&job.tenant),
        job.state.name().into(),
        escaped_or_dash(job.failure.as_deref()),
        at(Some(job.submitted_ms)),
    ]
}

/// At least this long between two waits of one follower.
const EARLY_ANSWER_PAUSE: Duration = Duration::from_secs(1);

/// Follow a job until it ends, showing its state on stderr.
pub(crate) fn follow(client: &Client, id: &str, show: bool) -> anyhow::Result<Job> {
    follow_with(|wait| client.wait_job(id, wait), |job| job.state, &format!("job {id}"), show)
}

/// Follow a job or a benchmark run through `wait` (the record, once it
/// has ended or the given wait is over: the daemon's long poll) until its
/// `state` is final, showing the state on stderr as `what`'s.
pub(crate) fn follow_with<T>(
    wait: impl Fn(Duration) -> Result<T, ClientError>,
    state: impl Fn(&T) -> JobState,
    what: &str,
    show: bool,
) -> anyhow::Result<T> {
    let started = Instant::now();
    let mut last = None;
    // First as it stands, to show it; then a wait at a time.
    let mut item = wait(Duration::ZERO)?;
    loop {
        let now = state(&item);
        if show && last != Some(now) {
            eprintln!("{what}: {} ({:.1} s)", now.name(), started.elapsed().as_secs_f64());
            last = Some(now);
        }
        if now.is_final() {
            return Ok(item);
        }
        let asked = Instant::now();
        item = wait(Duration::from_secs(MAX_WAIT_SECS))?;
        // Answered at once though not ended: the daemon had no room for
        // another wait (or is stopping). Pause rather than ask in a loop;
        // an end is shown at once.
        if !state(&item).is_final() {
            std::thread::sleep(EARLY_ANSWER_PAUSE.saturating_sub(asked.elapsed()));
        }
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
