//! The benchmark's outputs from a [`Results`]: the Markdown tables printed at
//! the end (values, and ratios to the bridge, to vde_switch and to tapyard
//! switched), and with `--report DIR` DIR/results.json, DIR/results.md,
//! DIR/chart.png (gnuplot with the embedded chart.gp) and DIR/logs/. The
//! text is what bench.sh printed, so earlier reports compare line by line.
//! Also what `--vhost` and `--egress` write and print ([`write_and_print`]).

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;

use serde::Serialize;

use super::runner::{self, Plan};
use super::schema::{fixed, FigureDef, PathResult, Results, Status, FIGURES};
use super::{BenchArgs, Test};

/// What the text needs beyond the results.
pub struct View<'a> {
    pub plan: &'a Plan,
    pub bridge_kpps: Option<f64>,
}

fn test_of(t: &str) -> Option<Test> {
    Some(match t {
        "tcp1" => Test::Tcp1,
        "tcp4" => Test::Tcp4,
        "udp" => Test::Udp,
        "loss" => Test::Loss,
        "ping" => Test::Ping,
        "pingpong" => Test::Pingpong,
        _ => return None,
    })
}

fn shown(plan: &Plan) -> Vec<&'static FigureDef> {
    FIGURES.iter().filter(|f| test_of(f.test).is_some_and(|t| plan.has(t))).collect()
}

/// A Markdown table with padded columns; a row of two cells (a path that was
/// skipped or failed, and why) does not widen the columns.
pub fn align(rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = vec![];
    for r in rows.iter().filter(|r| r.len() > 2) {
        for (i, c) in r.iter().enumerate() {
            if w.len() <= i {
                w.push(0);
            }
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for (n, r) in rows.iter().enumerate() {
        out.push('|');
        for (i, c) in r.iter().enumerate() {
            let width = w.get(i).copied().unwrap_or(0);
            let cell = if n == 1 { "-".repeat(width) } else { c.clone() };
            let _ = write!(out, " {cell:<width$} |");
        }
        out.push('\n');
    }
    out
}

/// `values`, or the ratios to `bridge`, `vde` or `tapyard`.
fn table(results: &Results, plan: &Plan, what: &str) -> String {
    let figs = shown(plan);
    let mut rows = vec![];
    let mut head = vec!["path".to_string()];
    head.extend(figs.iter().map(|f| f.head.to_string()));
    rows.push(head.clone());
    rows.push(head.iter().map(|_| "-".to_string()).collect());
    // The path a ratio table divides by (none for the values table).
    let base = results.paths.iter().find(|b| b.name == what && b.status == Status::Ok);
    for p in &results.paths {
        if what == "tapyard" && !p.name.starts_with("tapyard") {
            continue;
        }
        if p.status != Status::Ok {
            let status = if p.status == Status::Skipped { "skipped" } else { "failed" };
            rows.push(vec![p.name.clone(), format!("{status}: {}", p.reason.as_deref().unwrap_or(""))]);
            continue;
        }
        let mut row = vec![p.name.clone()];
        for f in &figs {
            let cell = if what == "values" {
                p.figures.as_ref().and_then(|v| v.get(f.key)).map(|v| match range(p, f.key) {
                    Some((lo, hi)) if plan.runs > 1 => {
                        format!("{} [{}-{}]", fixed(v, f.decimals), fixed(lo, f.decimals), fixed(hi, f.decimals))
                    }
                    _ => fixed(v, f.decimals),
                })
            } else {
                let r = match what {
                    "bridge" => &p.ratio_to_bridge,
                    "vde" => &p.ratio_to_vde,
                    _ => &p.ratio_to_tapyard,
                };
                let noise = plan.runs > 1 && base.is_some_and(|b| within_noise(p, b, f.key));
                r.as_ref()
                    .and_then(|v| v.get(f.key))
                    .map(|v| format!("{}x{}", fixed(v, 2), if noise { "~" } else { "" }))
            };
            row.push(cell.unwrap_or_else(|| "-".into()));
        }
        rows.push(row);
    }
    align(&rows)
}

/// The lowest and highest of a figure's samples over the runs.
fn range(p: &PathResult, key: &str) -> Option<(f64, f64)> {
    let v = p.runs.as_ref()?.get(key)?;
    let mut finite = v.iter().copied().filter(|x| x.is_finite());
    let first = finite.next()?;
    Some(finite.fold((first, first), |(lo, hi), x| (lo.min(x), hi.max(x))))
}

/// Whether two paths' ranges of a figure over the runs overlap: then their
/// ratio says nothing the noise of this machine could not say.
fn within_noise(a: &PathResult, b: &PathResult, key: &str) -> bool {
    match (range(a, key), range(b, key)) {
        (Some((alo, ahi)), Some((blo, bhi))) => alo <= bhi && blo <= ahi,
        _ => false,
    }
}

/// `%g` of a number of seconds or milliseconds: no trailing zeros.
fn g(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

/// The tables and the legend (what bench.sh printed without --json).
pub fn render_md(results: &Results, view: &View<'_>) -> String {
    let plan = view.plan;
    let have = runner::measured(results);
    let what = if plan.runs == 1 { "one run".to_string() } else { format!("medians [min-max] of {} runs", plan.runs) };
    let mut s =
        format!("Figures ({what} of {} s; {} pings every {} s):\n\n", plan.duration, plan.pings, g(plan.ping_interval));
    s += &table(results, plan, "values");
    if have.contains("bridge") {
        s += "\nRatio to the Linux bridge (path / bridge: above 1 is better for throughput, worse for latency, loss and CPU):\n\n";
        s += &table(results, plan, "bridge");
    }
    if have.contains("vde") {
        s += "\nRatio to vde_switch (path / vde_switch):\n\n";
        s += &table(results, plan, "vde");
    }
    if have.contains("tapyard")
        && (have.contains("tapyard-routed")
            || have.contains("tapyard-busy")
            || have.contains("tapyard-afxdp")
            || have.contains("tapyard-steer"))
    {
        s += "\nRatio to tapyard switched (routed / switched: what routing costs; busy / switched: what busy polling buys; \
              afxdp / switched: what AF_XDP ports buy over TAPs; steer / switched: what CPU steering buys):\n\n";
        s += &table(results, plan, "tapyard");
    }
    s.push('\n');
    for f in shown(plan) {
        let _ = writeln!(s, "- {}: {} ({}, {} is better)", f.key, f.label, f.unit, f.better);
    }
    if plan.runs > 1 {
        let _ = writeln!(
            s,
            "- a ratio marked ~ is within noise: the two paths' min-max over the runs overlap (every sample is in the JSON's `runs`)"
        );
    }
    if plan.has(Test::Pingpong) {
        let _ = writeln!(s, "- ping-pong tool: {}", results.config.pingpong_tool);
    }
    if let (Some(k), true) = (view.bridge_kpps, plan.has(Test::Loss)) {
        let _ = writeln!(
            s,
            "- loss test offered rate: {} kpps (the bridge's median 64-byte UDP rate); target for tapyard: < 0.1 %",
            fixed(k, 1)
        );
    }
    for p in &results.paths {
        for n in &p.notes {
            let _ = writeln!(s, "- {}: {n}", p.name);
        }
    }
    s
}

/// The chart's data: one line per measured path, NaN for a missing figure.
fn chart_tsv(results: &Results) -> (String, usize, String) {
    const COLS: [&str; 6] = ["tcp1_gbps", "tcp4_gbps", "udp64_kpps", "ping_p50_us", "pingpong_p50_us", "cpu_s_per_gb"];
    let mut tsv = String::new();
    let mut present = [false; 6];
    let mut n = 0;
    for p in results.paths.iter().filter(|p| p.status == Status::Ok) {
        n += 1;
        tsv += &p.name;
        for (i, k) in COLS.iter().enumerate() {
            match p.figures.as_ref().and_then(|f| f.get(k)) {
                Some(v) => {
                    present[i] = true;
                    let _ = write!(tsv, "\t{v}");
                }
                None => tsv += "\tNaN",
            }
        }
        tsv.push('\n');
    }
    let present = present.iter().map(|&b| if b { "1" } else { "0" }).collect::<Vec<_>>().join(" ");
    (tsv, n, present)
}

/// Writes DIR/results.json, results.md, chart.png (when gnuplot is there) and
/// logs/; sets `results.chart`.
pub fn write(dir: &Path, results: &mut Results, view: &View<'_>, work: &Path, logs: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let plan = view.plan;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (tsv, npaths, present) = chart_tsv(results);
    let chart = if !crate::cli::labkit::have("gnuplot") {
        format!("skipped: gnuplot not found (Debian package gnuplot-nox), {}", runner::INSTALL_HINT)
    } else if npaths == 0 {
        "skipped: no data path was measured".to_string()
    } else {
        let data = work.join("chart.tsv");
        fs::write(&data, tsv)?;
        let m = &results.machine;
        let date = m.date.get(..10).unwrap_or(&m.date);
        let vars = format!(
            "datafile='{}'; outfile='{}'; npaths={npaths}; present='{present}'; subtitle='{} CPUs, {}, {date}, {} x {} s'; \
             ping_title='ping every {} ms, RTT median (µs, lower is better)'",
            data.display(),
            dir.join("chart.png").display(),
            m.nproc,
            m.kernel,
            plan.runs,
            plan.duration,
            g(plan.ping_interval * 1000.0)
        );
        let out = Command::new("gnuplot").arg("-e").arg(vars).arg(work.join("chart.gp")).output();
        let text = out
            .as_ref()
            .map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
            .unwrap_or_else(|e| e.to_string());
        let _ = fs::write(logs.join("gnuplot.log"), &text);
        if out.is_ok_and(|o| o.status.success()) {
            "chart.png".to_string()
        } else {
            let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_string();
            format!("skipped: gnuplot failed: {last}")
        }
    };
    results.chart = Some(chart.clone());
    fs::write(dir.join("results.json"), serde_json::to_string_pretty(results)? + "\n")?;

    let m = &results.machine;
    let c = &results.config;
    let mut md = String::from("# tapyard bench\n\n");
    let _ = writeln!(md, "- machine: {} CPUs, {}\n- kernel: {}\n- date: {}", m.nproc, m.cpu, m.kernel, m.date);
    let _ = writeln!(md, "- tapyard: {} ({}), revision {}", m.tapyard_version, m.tapyard_binary, m.tapyard_rev);
    let _ = write!(
        md,
        "- command: tapyard bench --against {} --paths {} --tests {} --duration {} --runs {} --pings {} --ping-interval {}",
        c.against.join(","),
        c.paths.join(","),
        c.tests.join(","),
        c.duration_s,
        c.runs,
        c.pings,
        g(c.ping_interval_s)
    );
    if let Some(w) = c.workers {
        let _ = write!(md, " --workers {w}");
    }
    if let Some(n) = c.nice {
        let _ = write!(md, " --nice {n}");
    }
    let _ = writeln!(md, "\n- {}\n\nData paths:\n", c.iperf3);
    for p in &results.paths {
        let what = p.setup.as_deref().or(p.reason.as_deref()).unwrap_or("null");
        let _ = writeln!(md, "- {}: {what}", p.name);
    }
    md.push('\n');
    md += &render_md(results, view);
    md.push('\n');
    if chart == "chart.png" {
        md += "![chart](chart.png)\n";
    } else {
        let _ = writeln!(md, "Chart: {chart}");
    }
    fs::write(dir.join("results.md"), md)?;

    let dest = dir.join("logs");
    let _ = fs::remove_dir_all(&dest);
    copy_dir(logs, &dest)?;
    runner::log(&format!(
        "report: {}, results.json, {}, logs/",
        dir.join("results.md").display(),
        if chart == "chart.png" { "chart.png".to_string() } else { format!("no chart ({chart})") }
    ));
    Ok(())
}

/// What --vhost and --egress leave: with --report DIR, DIR/results.json,
/// DIR/results.md (`md`, made once results.json is written) and DIR/logs/
/// (a copy of `logs`), said in the log under `tag`; then the results on
/// stdout, as JSON with --json, else as `table`.
pub fn write_and_print<T: Serialize>(
    args: &BenchArgs,
    results: &T,
    logs: &Path,
    tag: &str,
    md: impl FnOnce() -> String,
    table: fn(&T) -> String,
) -> anyhow::Result<()> {
    if let Some(dir) = &args.report {
        fs::create_dir_all(dir)?;
        fs::write(dir.join("results.json"), serde_json::to_string_pretty(results)? + "\n")?;
        fs::write(dir.join("results.md"), md())?;
        let dest = dir.join("logs");
        let _ = fs::remove_dir_all(&dest);
        copy_dir(logs, &dest)?;
        runner::log_as(tag, &format!("report written to {}", dir.display()));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(results)?);
    } else {
        print!("{}", table(results));
    }
    Ok(())
}

pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for e in fs::read_dir(from)?.flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()))?;
        } else {
            fs::copy(&p, to.join(e.file_name()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_padded_and_short_rows_do_not_widen() {
        let rows = vec![
            vec!["path".to_string(), "TCP1 Gbit/s".into(), "ping".into()],
            vec!["-".to_string(), "-".into(), "-".into()],
            vec!["bridge".to_string(), "12.50".into(), "40".into()],
            vec!["vde".to_string(), "skipped: vde_switch not found, a long reason".into()],
        ];
        let t = align(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "| path   | TCP1 Gbit/s | ping |");
        assert_eq!(lines[1], "| ------ | ----------- | ---- |");
        assert_eq!(lines[2], "| bridge | 12.50       | 40   |");
        assert_eq!(lines[3], "| vde    | skipped: vde_switch not found, a long reason |");
    }

    /// A real results.json (bridge and tapyard, 3 runs): each median with
    /// its min-max, and a ratio marked within noise only where the two
    /// paths' ranges overlap.
    #[test]
    fn medians_show_their_spread_and_overlapping_ratios_are_marked() {
        let results: Results = serde_json::from_str(include_str!("testdata/bench-sh-results.json")).unwrap();
        let plan = Plan {
            paths: vec!["bridge", "tapyard"],
            tests: vec![Test::Tcp1, Test::Ping],
            duration: 2,
            runs: 3,
            pings: 1000,
            ping_interval: 0.002,
            workers: None,
            nice: None,
            pingpong: None,
        };
        let values = table(&results, &plan, "values");
        // bridge tcp1_gbps samples: 5.905, 5.854, 7.362; ping p50: 19, 24, 22.
        assert!(values.contains("| bridge  | 5.91 [5.85-7.36]"), "{values}");
        assert!(values.contains("| 22 [19-24]"), "{values}");
        let ratios = table(&results, &plan, "bridge");
        // tapyard's TCP samples (4.07-4.89) lie below all of the bridge's:
        // a real difference, unmarked; the bridge against itself overlaps.
        let row = |name: &str| ratios.lines().find(|l| l.starts_with(&format!("| {name} "))).unwrap().to_string();
        let cell = |name: &str, i: usize| row(name).split('|').nth(i).unwrap().trim().to_string();
        assert_eq!(cell("tapyard", 2), "0.82x", "{ratios}");
        assert_eq!(cell("bridge", 2), "1.00x~", "{ratios}");
        let (t, b) = (&results.paths[1], &results.paths[0]);
        assert!(!within_noise(t, b, "tcp1_gbps") && within_noise(b, b, "tcp1_gbps"));
        assert!(!within_noise(t, b, "no_such_figure"));
    }

    #[test]
    fn g_formats_like_printf() {
        assert_eq!(g(0.002), "0.002");
        assert_eq!(g(2.0), "2");
        assert_eq!(g(0.5), "0.5");
    }
}
