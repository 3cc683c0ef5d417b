//! `kanon budget TENANT`: a tenant's privacy budget, what differentially
//! private runs charged in its window and what remains (tenant admin;
//! operator staff under a support grant; an analyst with a live approval
//! on the tenant, its own charges only). `kanon budget --benchmark NAME`:
//! what a run of a benchmark charges and how many its tenants' budgets
//! allow (its vendor, operator).

use std::process::ExitCode;

use clap::Args;
use kanon_client::{BenchmarkBudget, Budget, ChargeState, rho_text};

use super::Connection;
use super::output::{at, escaped, print_record, print_table};

#[derive(Debug, Args)]
pub struct BudgetArgs {
    #[command(flatten)]
    conn: Connection,
    /// The tenant.
    #[arg(required_unless_present = "benchmark")]
    tenant: Option<String>,
    /// A benchmark instead (its vendor, operator).
    #[arg(long, conflicts_with = "tenant")]
    benchmark: Option<String>,
}

pub fn budget(args: BudgetArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.client()?;
    if let Some(benchmark) = &args.benchmark {
        let budget = client.benchmark_budget(benchmark)?;
        if args.conn.json {
            print_record(&budget)?;
        } else {
            print_benchmark_budget(&budget);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let tenant = args.tenant.as_deref().ok_or_else(|| anyhow::anyhow!("name a tenant or --benchmark"))?;
    let budget = client.tenant_budget(tenant)?;
    if args.conn.json {
        print_record(&budget)?;
    } else {
        print_budget(&budget);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_benchmark_budget(budget: &BenchmarkBudget) {
    let name = escaped(&budget.benchmark);
    match (budget.rho_nanos, budget.runs_possible) {
        (Some(rho), Some(runs)) => println!(
            "benchmark `{name}`: a run charges ρ = {} to each tenant it reads (differential privacy); \
             the tightest budget of its tenants allows {runs} more in its window",
            rho_text(rho)
        ),
        _ => {
            println!("benchmark `{name}`: its tenants run under thresholds; a run charges no privacy budget")
        }
    }
}

fn print_budget(budget: &Budget) {
    let remaining = budget.remaining_nanos as f64 / 1e9;
    println!(
        "tenant `{}`: ρ = {} of {} left in its {}-day window (what is left is ε ≈ {:.2} at δ = 1e-6){}",
        escaped(&budget.tenant),
        rho_text(budget.remaining_nanos),
        rho_text(budget.budget_nanos),
        budget.window_days,
        kanon_gate::dp::epsilon(remaining, 1e-6),
        if budget.dp_required { "; its policy requires differential privacy" } else { "" },
    );
    if let Some(next) = budget.next_free_ms {
        println!("the oldest charge leaves the window at {}", at(Some(next)));
    }
    if budget.charges.is_empty() {
        println!("no charges in the window");
        return;
    }
    let rows = budget
        .charges
        .iter()
        .map(|c| {
            let state = match c.state {
                ChargeState::Reserved => "reserved",
                ChargeState::Released => "released",
                ChargeState::Spent => "spent",
            };
            vec![
                escaped(&c.run),
                escaped(&c.by),
                rho_text(c.rho_nanos),
                state.into(),
                at(Some(c.reserved_ms)),
            ]
        })
        .collect();
    print_table(&["run", "by", "rho", "state", "reserved"], rows);
}
