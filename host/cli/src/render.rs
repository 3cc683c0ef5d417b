//! Released tables for people (aligned text) and for scripts (JSON), and
//! the one escape every piece of plugin-supplied text goes through before it
//! reaches a terminal.

use std::borrow::Cow;

use kanon_gate::dp::Interval;
use kanon_gate::{OwnPosition, Release, ReleasedTable, Scope};
use kanon_runtime::RunReport;
use serde_json::json;

/// The release record and tables of a successful run, as JSON.
pub fn release_json(report: &RunReport, release: &Release) -> serde_json::Value {
    let record = release.record(&report.plugin_hash, &report.params_hash);
    let mut json = json!({
        "run_id": report.run_id,
        "plugin_hash": record.plugin_hash,
        "params_hash": record.params_hash,
        "scope": record.scope,
        "policy": record.policy,
        "suppressed": record.tables,
        "tables": release.tables,
    });
    if let Some(dp) = &release.dp {
        json["dp"] = json!(dp);
    }
    json
}

/// A released table as aligned text; suppressed cells show `suppressed`,
/// held ones (benchmark versions) the version their values come from, and
/// noisy ones (differential privacy) their 95 % interval: `± w` for counts
/// and sums, `[lo, hi]` for means and ratios (`[n/e]` when it is unbounded).
pub fn table_text(table: &ReleasedTable) -> String {
    let mut header: Vec<String> = table.dimensions.clone();
    header.extend(table.statistics.iter().cloned());
    if table.held_cells > 0 {
        header.push("held".into());
    }
    let mut rows: Vec<Vec<String>> = vec![header];
    for cell in &table.cells {
        let mut row = cell.key.clone();
        match (&cell.values, &cell.intervals) {
            (Some(values), Some(intervals)) => {
                for (s, (statistic, (&v, interval))) in
                    table.statistics.iter().zip(values.iter().zip(intervals)).enumerate()
                {
                    let own_noise = table.noise_sd.as_ref().is_some_and(|sd| sd[s].is_some());
                    row.push(noisy(statistic, v, *interval, own_noise));
                }
            }
            (Some(values), None) => {
                row.extend(table.statistics.iter().zip(values).map(|(s, v)| number(s, *v)))
            }
            (None, _) => {
                row.push("suppressed".into());
                row.extend(std::iter::repeat_n(String::new(), table.statistics.len() - 1));
            }
        }
        if table.held_cells > 0 {
            row.push(cell.held_from.map(|v| format!("from v{v}")).unwrap_or_default());
        }
        rows.push(row);
    }
    aligned(rows, table.dimensions.len())
}

/// A noisy value with its 95 % interval: `v ± w` when the noise is the
/// value's own (`symmetric`), `v [lo, hi]` otherwise, `v [n/e]` when the
/// interval is unbounded.
fn noisy(statistic: &str, v: f64, interval: Interval, symmetric: bool) -> String {
    match (interval.lo, interval.hi) {
        (Some(lo), Some(hi)) if symmetric => {
            format!("{} ± {}", number(statistic, v), number(statistic, (hi - lo) / 2.0))
        }
        (Some(lo), Some(hi)) => {
            let (v, lo, hi) = (number(statistic, v), number(statistic, lo), number(statistic, hi));
            format!("{v} [{lo}, {hi}]")
        }
        _ => format!("{} [n/e]", number(statistic, v)),
    }
}

/// `text` with every control character other than newline and tab, and
/// every bidirectional override, written as a `\u{..}` escape: what a plugin
/// printed or declared can then neither move the cursor, redraw a row, set a
/// window title nor reorder what the reader sees.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    let escape = |c: char| c != '\n' && c != '\t' && !kanon_runtime::is_printable_char(c);
    if !text.chars().any(escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if escape(c) { out.extend(c.escape_unicode()) } else { out.push(c) }
    }
    Cow::Owned(out)
}

/// Rows as columns, the first `dims` left-aligned (labels), the rest
/// right-aligned (numbers), under a rule after the header.
fn aligned(rows: Vec<Vec<String>>, dims: usize) -> String {
    // Labels come from the plugin: one line per row, whatever they hold.
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|row| row.into_iter().map(|v| escape_controls(&v).replace(['\n', '\t'], " ")).collect())
        .collect();
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let line: Vec<String> =
            row.iter()
                .enumerate()
                .map(|(c, v)| {
                    if c < dims {
                        format!("{v:<w$}", w = widths[c])
                    } else {
                        format!("{v:>w$}", w = widths[c])
                    }
                })
                .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            out.push_str(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  "));
            out.push('\n');
        }
    }
    out
}

fn number(statistic: &str, value: f64) -> String {
    if !value.is_finite() {
        "n/a".into()
    } else if statistic == "count" || value.abs() >= 1000.0 {
        format!("{value:.0}")
    } else if value.abs() >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.4}")
    }
}

/// Every table of a release, each under a line naming what the gate held back.
pub fn release_text(release: &Release) -> String {
    let p = &release.policy;
    let mut out = String::new();
    if let Some(dp) = &release.dp {
        let epsilon = kanon_gate::dp::epsilon(dp.rho, 1e-6);
        for table in &release.tables {
            out.push_str(&format!(
                "\n{}: every cell released with noise (differential privacy: ρ = {} per release, \
                 ε = {epsilon:.2} at δ = 1e-6; one instance per entity; 95 % intervals)\n",
                table.name,
                kanon_client::rho_text(dp.rho_nanos),
            ));
            out.push_str(&table_text(table));
        }
        return out;
    }
    for table in &release.tables {
        let tenants = match release.scope {
            Scope::Benchmark => format!(", t = {}, tenant share <= {}%", p.min_tenants, p.max_tenant_percent),
            Scope::Tenant => String::new(),
        };
        let held = if table.held_cells > 0 { format!(", {} held", table.held_cells) } else { String::new() };
        let isolation = match p.isolation {
            kanon_gate::Isolation::Entity => ", one instance per entity",
            kanon_gate::Isolation::Shared => "",
        };
        out.push_str(&format!(
            "\n{}: {} of {} cells suppressed{held} (k = {}, dominance ({}, {}%){tenants}{isolation})\n",
            table.name,
            table.suppressed_cells,
            table.cells.len(),
            p.min_entities,
            p.dominance.n,
            p.dominance.percent
        ));
        out.push_str(&table_text(table));
    }
    out
}

/// A tenant's own position: per cell and statistic, the peers' released
/// value, the tenant's own, and its band (`1/5`: the top fifth).
pub fn position_text(position: &OwnPosition) -> String {
    let mut out = String::new();
    for table in &position.tables {
        out.push_str(&format!("\n{} (band 1 holds the highest values)\n", table.name));
        let mut header: Vec<String> = table.dimensions.clone();
        for statistic in &table.statistics {
            header.extend([format!("peers {statistic}"), format!("own {statistic}"), "band".into()]);
        }
        let mut rows = vec![header];
        for cell in &table.cells {
            let mut row = cell.key.clone();
            for (s, statistic) in table.statistics.iter().enumerate() {
                let peers = match (&cell.peers, cell.held_from, &cell.peer_intervals) {
                    (Some(v), Some(from), _) => format!("{} (v{from})", number(statistic, v[s])),
                    (Some(v), None, Some(intervals)) => noisy(statistic, v[s], intervals[s], false),
                    (Some(v), None, None) => number(statistic, v[s]),
                    (None, _, _) => "suppressed".into(),
                };
                let own = cell.own.as_ref().map_or("suppressed".into(), |v| number(statistic, v[s]));
                let band = cell.bands[s].map_or("-".into(), |b| format!("{}/{}", b.band, b.of));
                row.extend([peers, own, band]);
            }
            rows.push(row);
        }
        out.push_str(&aligned(rows, table.dimensions.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_text_cannot_drive_the_terminal() {
        assert!(matches!(escape_controls("north\tsouth\nwest"), Cow::Borrowed(_)));
        assert_eq!(escape_controls("ok\x1b[2K\rfake row"), "ok\\u{1b}[2K\\u{d}fake row");
        assert_eq!(escape_controls("\u{202e}evil"), "\\u{202e}evil");
        assert_eq!(escape_controls("CO₂ – 東京"), "CO₂ – 東京");
    }

    #[test]
    fn a_label_is_one_line_of_a_table() {
        let rows = vec![
            vec!["region".to_owned(), "count".to_owned()],
            vec!["a\nb\x1b[A".to_owned(), "12".to_owned()],
        ];
        let text = aligned(rows, 1);
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(!text.contains('\x1b'), "{text}");
    }
}
