//! How the remote commands print what the daemon answered.

use std::process::ExitCode;

use anyhow::{Context, bail};
use serde::Serialize;

use crate::render;

pub(crate) fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Rows as aligned columns under a header.
pub(crate) fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_uppercase()).collect());
    for row in rows {
        line(row);
    }
}

/// A reply as JSON, or as a table of `rows`. The JSON goes through
/// `serde_json::Value`, whose maps sort their keys: how these replies have
/// always been printed.
pub(crate) fn show(
    json: bool,
    reply: &impl Serialize,
    header: &[&str],
    rows: impl FnOnce() -> Vec<Vec<String>>,
) -> anyhow::Result<ExitCode> {
    if json {
        print_record(reply)?;
    } else {
        print_table(header, rows());
    }
    Ok(ExitCode::SUCCESS)
}

/// A record as JSON, its keys sorted (see [`show`]).
pub(crate) fn print_record(record: &impl Serialize) -> anyhow::Result<()> {
    print_json(&serde_json::to_value(record)?)
}

/// Typed items as JSON, or as a table (one row per item).
pub(crate) fn show_items<T: Serialize>(
    json: bool,
    items: &[T],
    header: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<ExitCode> {
    if json {
        print_json(&items)?;
    } else {
        print_table(header, items.iter().map(row).collect());
    }
    Ok(ExitCode::SUCCESS)
}

/// One typed item as JSON, or as a table of one row.
pub(crate) fn show_item<T: Serialize>(
    json: bool,
    item: &T,
    header: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<ExitCode> {
    if json {
        print_json(item)?;
    } else {
        print_table(header, vec![row(item)]);
    }
    Ok(ExitCode::SUCCESS)
}

/// `revoked` or the live state's name.
pub(crate) fn revoked_or(revoked_ms: Option<u64>, live: &str) -> String {
    if revoked_ms.is_none() { live.into() } else { "revoked".into() }
}

/// A name from the daemon's answer, its control characters escaped.
pub(crate) fn escaped(text: &str) -> String {
    render::escape_controls(text).into_owned()
}

/// An optional name, `-` when absent.
pub(crate) fn escaped_or_dash(text: Option<&str>) -> String {
    text.map_or_else(|| "-".into(), escaped)
}

/// A number, `-` when absent.
pub(crate) fn or_dash(value: Option<impl std::fmt::Display>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

/// Milliseconds since the epoch as a timestamp, `-` when absent.
pub(crate) fn at(ms: Option<u64>) -> String {
    ms.map_or_else(|| "-".into(), |ms| kanon_vault::format_timestamp((ms * 1000) as i64))
}

/// Seconds from `30s`, `15m`, `12h`, `7d` or a plain number of seconds.
pub(crate) fn duration_secs(text: &str) -> anyhow::Result<u64> {
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = digits.parse().with_context(|| format!("`{text}` is not a duration like 30m, 12h or 7d"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("`{text}` is not a duration like 30m, 12h or 7d"),
    };
    Ok(n * scale)
}
