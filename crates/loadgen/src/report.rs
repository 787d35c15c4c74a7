//! Turning B1's runs into what a reader sees: the markdown tables of
//! `docs/benchmarks.md` (medians, and each peer's ratio to realtime) and a
//! bar chart per figure as SVG under `docs/bench/`.
//!
//! The generated part of `docs/benchmarks.md` sits between two marker
//! comments, `<!-- fanout:begin -->` and `<!-- fanout:end -->`; everything
//! outside them (the benchmark's shape, the history) is written by hand.

use std::{fmt::Write as _, path::Path};

use crate::fanout::{Figures, Mode, Plan, Run};

pub const BEGIN: &str = "<!-- fanout:begin -->";
pub const END: &str = "<!-- fanout:end -->";

/// The figures the goal names, and how each is read.
/// A chart: its file name's suffix, its title, and the figure it draws.
type Chart = (&'static str, &'static str, fn(&Figures) -> f64);

const FIGURES: [Chart; 6] = [
    ("per-cpu", "delivered per server CPU-second", |f| {
        f.per_cpu_sec
    }),
    ("highest", "highest sustained deliveries/s", |f| {
        f.highest_per_sec
    }),
    ("p50", "p50 ms at half the highest rate", |f| {
        f.p50_ms_at_half
    }),
    ("p99", "p99 ms at half the highest rate", |f| {
        f.p99_ms_at_half
    }),
    ("p99-fixed", "p99 ms at the fixed rate", |f| {
        f.p99_ms_at_fixed
    }),
    ("rss", "KiB RSS per idle authenticated socket", |f| {
        f.rss_per_socket_kib
    }),
];

fn fmt(value: f64) -> String {
    if value.is_nan() {
        "–".to_owned()
    } else if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// A figure as the tables print it (three significant digits or so; `–`
/// for none), for the other benchmarks' tables.
pub fn number(value: f64) -> String {
    fmt(value)
}

/// The short hash of the commit checked out (`unknown` outside git).
pub fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown".to_owned(), |s| s.trim().to_owned())
}

/// The machine's CPU model, from `/proc/cpuinfo`.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

/// The markdown section: one table per mode with every system's medians,
/// then the ratios of realtime to each other system.
pub fn markdown(plan: &Plan, figures: &[Figures], header: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{BEGIN}");
    let _ = writeln!(out, "{header}\n");
    for mode in [Mode::Public, Mode::User] {
        let rows: Vec<&Figures> = figures.iter().filter(|f| f.mode == mode).collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "**{}** — medians of {} repetition(s):\n",
            match mode {
                Mode::Public => "N sockets on one public channel",
                Mode::User => "N sockets, each on its own user channel",
            },
            plan.repetitions
        );
        let _ = writeln!(
            out,
            "| sockets | system | delivered per server CPU-s | highest sustained deliveries/s | p50 ms at half | p99 ms at half | p50 ms at {fixed:.0}/s | p99 ms at {fixed:.0}/s | KiB RSS per idle socket | failed runs |",
            fixed = plan.fixed_rate
        );
        let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for f in &rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} |",
                f.size,
                f.system,
                fmt(f.per_cpu_sec),
                fmt(f.highest_per_sec),
                fmt(f.p50_ms_at_half),
                fmt(f.p99_ms_at_half),
                fmt(f.p50_ms_at_fixed),
                fmt(f.p99_ms_at_fixed),
                fmt(f.rss_per_socket_kib),
                f.failed,
                f.runs
            );
        }
        let _ = writeln!(out);
        // Ratios: realtime against every other system at the same size.
        let others: Vec<&str> = plan
            .systems
            .iter()
            .map(|s| s.name.as_str())
            .filter(|name| *name != "realtime")
            .collect();
        if rows.iter().any(|f| f.system == "realtime") && !others.is_empty() {
            let _ = writeln!(
                out,
                "| sockets | realtime ÷ … | CPU efficiency | highest rate | p99 at half | p99 at the fixed rate | RSS per socket |"
            );
            let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---:|");
            for size in &plan.sizes {
                let Some(ours) = rows
                    .iter()
                    .find(|f| f.size == *size && f.system == "realtime")
                else {
                    continue;
                };
                for other in &others {
                    let Some(theirs) = rows.iter().find(|f| f.size == *size && f.system == *other)
                    else {
                        continue;
                    };
                    let ratio = |a: f64, b: f64| format!("{:.2}×", a / b);
                    let _ = writeln!(
                        out,
                        "| {size} | {other} | {} | {} | {} | {} | {} |",
                        ratio(ours.per_cpu_sec, theirs.per_cpu_sec),
                        ratio(ours.highest_per_sec, theirs.highest_per_sec),
                        ratio(ours.p99_ms_at_half, theirs.p99_ms_at_half),
                        ratio(ours.p99_ms_at_fixed, theirs.p99_ms_at_fixed),
                        ratio(ours.rss_per_socket_kib, theirs.rss_per_socket_kib),
                    );
                }
            }
            let _ = writeln!(out);
        }
        // Above saturation: what each system did with more than it could
        // push (what was shed shows as the share not delivered in time).
        let _ = writeln!(
            out,
            "Above saturation, the first step of the ladder that was not sustained (medians):\n"
        );
        let _ = writeln!(
            out,
            "| sockets | system | delivered of what was asked | p99 ms | sockets lost |"
        );
        let _ = writeln!(out, "|---:|---|---:|---:|---:|");
        for f in &rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                f.size,
                f.system,
                if f.over_delivered_share.is_nan() {
                    fmt(f64::NAN)
                } else {
                    format!("{:.0} %", f.over_delivered_share * 100.0)
                },
                fmt(f.over_p99_ms),
                fmt(f.over_lost_sockets)
            );
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "{END}");
    out
}

/// Replaces the generated section of `doc` (between the markers) with
/// `section`; appends it when the markers are missing.
pub fn splice(doc: &str, section: &str) -> String {
    splice_between(doc, BEGIN, END, section)
}

/// The marker comments of benchmark `name`'s generated section:
/// `<!-- NAME:begin -->` and `<!-- NAME:end -->`.
pub fn markers(name: &str) -> (String, String) {
    (
        format!("<!-- {name}:begin -->"),
        format!("<!-- {name}:end -->"),
    )
}

/// Replaces what lies between the marker lines `begin` and `end` of `doc`
/// (markers included) with `section`, which carries its own markers;
/// appends it when the markers are missing.
pub fn splice_between(doc: &str, begin: &str, end: &str, section: &str) -> String {
    match (doc.find(begin), doc.find(end)) {
        (Some(from), Some(to)) if to > from => {
            let after = &doc[to + end.len()..];
            let after = after.strip_prefix('\n').unwrap_or(after);
            format!("{}{}{}", &doc[..from], section, after)
        }
        _ => format!("{doc}\n{section}"),
    }
}

/// One SVG bar chart per figure and mode: a group of bars per size, one
/// bar per system.
pub fn charts(plan: &Plan, figures: &[Figures], dir: &Path) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for mode in [Mode::Public, Mode::User] {
        let rows: Vec<&Figures> = figures.iter().filter(|f| f.mode == mode).collect();
        if rows.is_empty() {
            continue;
        }
        for (slug, title, value) in FIGURES {
            let name = format!("fanout-{}-{slug}.svg", mode_name(mode));
            std::fs::write(dir.join(&name), bar_chart(plan, &rows, title, value))?;
            written.push(name);
        }
    }
    Ok(written)
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Public => "public",
        Mode::User => "user",
    }
}

const COLOURS: [&str; 5] = ["#d9480f", "#1971c2", "#2f9e44", "#7048e8", "#868e96"];

fn bar_chart(plan: &Plan, rows: &[&Figures], title: &str, value: fn(&Figures) -> f64) -> String {
    let systems: Vec<&str> = plan.systems.iter().map(|s| s.name.as_str()).collect();
    let sizes: Vec<usize> = plan.sizes.clone();
    let max = rows
        .iter()
        .map(|f| value(f))
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let (width, height, left, top, bottom) = (640.0, 320.0, 60.0, 40.0, 60.0);
    let plot_h = height - top - bottom;
    let group_w = (width - left - 20.0) / sizes.len().max(1) as f64;
    let bar_w = (group_w - 20.0) / systems.len().max(1) as f64;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14">{title}</text>"#,
        width / 2.0
    );
    let _ = writeln!(
        svg,
        r#"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
        top + plot_h,
        width - 20.0,
        top + plot_h
    );
    for (g, size) in sizes.iter().enumerate() {
        let x0 = left + g as f64 * group_w + 10.0;
        for (s, system) in systems.iter().enumerate() {
            let Some(f) = rows.iter().find(|f| f.size == *size && f.system == *system) else {
                continue;
            };
            let v = value(f);
            if !v.is_finite() {
                continue;
            }
            let h = plot_h * v / max;
            let x = x0 + s as f64 * bar_w;
            let _ = writeln!(
                svg,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"/>"#,
                top + plot_h - h,
                bar_w - 4.0,
                COLOURS[s % COLOURS.len()]
            );
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                x + (bar_w - 4.0) / 2.0,
                top + plot_h - h - 3.0,
                fmt(v)
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{size} sockets</text>"#,
            x0 + (group_w - 20.0) / 2.0,
            top + plot_h + 16.0
        );
    }
    for (s, system) in systems.iter().enumerate() {
        let x = left + s as f64 * 150.0;
        let y = height - 16.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{y}">{system}</text>"#,
            y - 10.0,
            COLOURS[s % COLOURS.len()],
            x + 16.0
        );
    }
    let _ = writeln!(svg, "</svg>");
    svg
}

/// The JSON document a run writes: the plan, every run, and the medians.
pub fn json(plan: &Plan, runs: &[Run], figures: &[Figures], header: &str) -> serde_json::Value {
    serde_json::json!({
        "benchmark": "fanout",
        "header": header,
        "plan": plan,
        "figures": figures,
        "runs": runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splicing_replaces_only_the_generated_section() {
        let doc = format!("# B\n\nshape\n\n{BEGIN}\nold\n{END}\n\n## History\n");
        let spliced = splice(&doc, &format!("{BEGIN}\nnew\n{END}\n"));
        assert_eq!(
            spliced,
            format!("# B\n\nshape\n\n{BEGIN}\nnew\n{END}\n\n## History\n")
        );
        assert!(splice("# B\n", "x").ends_with("\nx"));
    }
}
