//! The printed report: one table row per scenario, then the verdict.

use std::io::Write;

/// One scenario's outcome.
pub(super) struct Row {
    pub(super) scenario: &'static str,
    pub(super) why: &'static str,
    pub(super) expected: String,
    pub(super) observed: String,
    pub(super) ok: bool,
}

pub(super) fn describe(seen: &[(u16, String)]) -> String {
    seen.iter()
        .map(|(s, e)| {
            if e.is_empty() {
                s.to_string()
            } else {
                format!("{s} {e}")
            }
        })
        .collect::<Vec<_>>()
        .join(", then ")
}

pub(super) fn table(out: &mut dyn Write, rows: &[Row]) -> std::io::Result<()> {
    let w1 = rows.iter().map(|r| r.scenario.len()).max().unwrap_or(0);
    let w2 = rows
        .iter()
        .map(|r| r.expected.len())
        .max()
        .unwrap_or(0)
        .max(8);
    writeln!(out, "    {:w1$}  {:w2$}  observed", "scenario", "expected")?;
    for (i, r) in rows.iter().enumerate() {
        writeln!(
            out,
            "{} {:>2} {:w1$}  {:w2$}  {}",
            if r.ok { "✓" } else { "✗" },
            i + 1,
            r.scenario,
            r.expected,
            r.observed
        )?;
        writeln!(out, "        {}", r.why)?;
    }
    Ok(())
}

/// The closing line: every scenario behaved, or how many did not.
pub(super) fn summary(out: &mut dyn Write, rows: &[Row]) -> std::io::Result<()> {
    let failures = rows.iter().filter(|r| !r.ok).count();
    if failures == 0 {
        writeln!(
            out,
            "\nAll {} scenarios behaved as they should.",
            rows.len()
        )?;
    } else {
        writeln!(
            out,
            "\n{failures} of {} scenarios did NOT behave as they should.",
            rows.len()
        )?;
    }
    Ok(())
}
