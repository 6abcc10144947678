//! The results of `tapyard bench` (`results.json`, `--json`) as serde types,
//! and the pure computation that turns raw per-run samples into them:
//! medians, rounding, ratios between data paths. No I/O here, so every rule
//! is a unit test without root.
//!
//! Schema version 1, field for field what the former bench.sh wrote with jq:
//! readers of older results.json files keep working, and these types read
//! those files too (`Results` deserializes them).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The version of this schema (`schema_version`).
pub const SCHEMA_VERSION: u32 = 1;

/// One figure a data path is measured by (`figures[]` of the results).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FigureDef {
    pub key: &'static str,
    /// The table's column head.
    pub head: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
    pub better: &'static str,
    /// Decimals in the tables.
    pub decimals: usize,
    /// The `--tests` value that measures it.
    pub test: &'static str,
}

/// Every figure, in table order (the order of `paths[].figures`).
pub const FIGURES: [FigureDef; 9] = [
    fig("tcp1_gbps", "TCP1 Gbit/s", "TCP, 1 stream", "Gbit/s", "higher", 2, "tcp1"),
    fig("tcp4_gbps", "TCP4 Gbit/s", "TCP, 4 streams", "Gbit/s", "higher", 2, "tcp4"),
    fig("udp64_kpps", "UDP64 kpps", "64-byte UDP frames received (iperf3 -u -l 18 -b 0)", "kpps", "higher", 1, "udp"),
    fig(
        "loss_pct",
        "loss@br %",
        "loss of 60-byte frames offered at the rate the Linux bridge received",
        "%",
        "lower",
        3,
        "loss",
    ),
    fig("ping_p50_us", "ping p50 us", "ICMP ping RTT, median", "us", "lower", 0, "ping"),
    fig("ping_p99_us", "ping p99 us", "ICMP ping RTT, 99th percentile", "us", "lower", 0, "ping"),
    fig("pingpong_p50_us", "pp p50 us", "64-byte UDP ping-pong RTT, median", "us", "lower", 0, "pingpong"),
    fig("pingpong_p99_us", "pp p99 us", "64-byte UDP ping-pong RTT, 99th percentile", "us", "lower", 0, "pingpong"),
    fig("cpu_s_per_gb", "CPU s/GB", "switch CPU seconds per GB received, TCP 1 stream", "s/GB", "lower", 3, "tcp1"),
];

const fn fig(
    key: &'static str,
    head: &'static str,
    label: &'static str,
    unit: &'static str,
    better: &'static str,
    decimals: usize,
    test: &'static str,
) -> FigureDef {
    FigureDef { key, head, label, unit, better, decimals, test }
}

/// `figures` as read back from a file (owned strings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FigureInfo {
    pub key: String,
    pub label: String,
    pub unit: String,
    pub better: String,
    pub test: String,
}

impl From<&FigureDef> for FigureInfo {
    fn from(f: &FigureDef) -> Self {
        FigureInfo {
            key: f.key.into(),
            label: f.label.into(),
            unit: f.unit.into(),
            better: f.better.into(),
            test: f.test.into(),
        }
    }
}

/// The whole results document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub tool: String,
    pub schema_version: u32,
    pub machine: Machine,
    pub config: Config,
    /// The bridge's median 64-byte UDP rate (one decimal): the offered rate of every loss test.
    pub bridge_udp64_kpps: Option<f64>,
    /// Measurements that failed on paths that ran (the exit status is 1 when not 0).
    pub errors: u32,
    pub figures: Vec<FigureInfo>,
    pub paths: Vec<PathResult>,
    /// With --report: `chart.png`, or `skipped: WHY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: u32,
    pub kernel: String,
    pub cpu: String,
    /// UTC, like 2026-12-07T06:10:00Z.
    pub date: String,
    pub tapyard_rev: String,
    pub tapyard_version: String,
    pub tapyard_binary: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub against: Vec<String>,
    pub paths: Vec<String>,
    pub tests: Vec<String>,
    pub duration_s: u32,
    pub runs: u32,
    pub pings: u32,
    pub ping_interval_s: f64,
    pub workers: Option<u32>,
    pub nice: Option<i32>,
    pub iperf3: String,
    pub pingpong_tool: String,
}

/// The status of one data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// A peer that is not installed, or (vde, ovs) could not start.
    Skipped,
    /// tapyard or the bridge could not be set up: an error.
    Failed,
}

/// The nine figures of a path, or their ratios (null: not measured), by
/// key; written in the order of [`FIGURES`] (jq's `from_entries` kept it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures(pub BTreeMap<String, Option<f64>>);

impl Figures {
    pub fn get(&self, key: &str) -> Option<f64> {
        self.0.get(key).copied().flatten()
    }
}

impl Serialize for Figures {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for f in &FIGURES {
            if let Some(v) = self.0.get(f.key) {
                m.serialize_entry(f.key, v)?;
            }
        }
        for (k, v) in &self.0 {
            if !FIGURES.iter().any(|f| f.key == k) {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Figures {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Figures(BTreeMap::deserialize(d)?))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathResult {
    /// bridge, vde, ovs, ovs-tso, tapyard, tapyard-routed, tapyard-busy, tapyard-afxdp, tapyard-steer.
    pub name: String,
    pub status: Status,
    pub reason: Option<String>,
    /// How the path was built, one line.
    pub setup: Option<String>,
    /// Medians of the runs, rounded to 3 decimals; null unless ok.
    pub figures: Option<Figures>,
    /// Medians of the other samples (retransmits, offered rates, lost pings, messages).
    pub extra: Option<BTreeMap<String, Option<f64>>>,
    /// Every sample, per key, in run order.
    pub runs: Option<BTreeMap<String, Vec<f64>>>,
    pub notes: Vec<String>,
    pub ratio_to_bridge: Option<Figures>,
    pub ratio_to_vde: Option<Figures>,
    pub ratio_to_tapyard: Option<Figures>,
}

/// What the runner collected for one data path, before any computation.
#[derive(Debug, Clone, PartialEq)]
pub struct RawPath {
    pub name: String,
    pub status: Status,
    pub reason: Option<String>,
    pub setup: Option<String>,
    /// (key, value) in the order measured; a key's samples are its runs.
    pub samples: Vec<(String, f64)>,
    pub notes: Vec<String>,
}

impl RawPath {
    pub fn new(name: &str) -> RawPath {
        RawPath { name: name.into(), status: Status::Ok, reason: None, setup: None, samples: vec![], notes: vec![] }
    }
    pub fn record(&mut self, key: &str, value: f64) {
        self.samples.push((key.to_string(), value));
    }
    /// The samples of `key`, in run order.
    pub fn values(&self, key: &str) -> Vec<f64> {
        self.samples.iter().filter(|(k, _)| k == key).map(|(_, v)| *v).collect()
    }
}

/// The spread of a figure over the runs: the median, the lowest and the
/// highest, and every run's value (`tapyard bench --egress` and `--dhcp`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: Vec<f64>,
}

impl Stat {
    pub fn of(v: &[f64]) -> Option<Stat> {
        let m = median(v)?;
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(Stat {
            median: round3(m),
            min: round3(min),
            max: round3(max),
            runs: v.iter().map(|x| round3(*x)).collect(),
        })
    }

    /// Whether the two spreads overlap: then a ratio of their medians says
    /// nothing the noise of this machine could not say.
    pub fn overlaps(&self, other: &Stat) -> bool {
        self.min <= other.max && other.min <= self.max
    }
}

/// The median: the middle value, or the mean of the two middle values; None for no values.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// The nearest-rank percentile `p` (0 to 1) of `values`: the smallest value
/// with at least p of all values at or below it (the rank ceil(p * n), at least 1).
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// Rounded to 3 decimals (halves away from zero), as the figures are stored.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The figures of `p` divided by those of `base`, rounded to 2 decimals;
/// null where either is missing or the base is 0.
pub fn ratio(p: &Figures, base: &Figures) -> Figures {
    let mut out = Figures::default();
    for f in &FIGURES {
        let r = match (p.get(f.key), base.get(f.key)) {
            (Some(a), Some(b)) if b != 0.0 => Some((a / b * 100.0).round() / 100.0),
            _ => None,
        };
        out.0.insert(f.key.to_string(), r);
    }
    out
}

/// Turns what was collected into the path results: medians of the runs for
/// every figure (null when not measured), medians of the other samples in
/// `extra`, every sample in `runs`, and the ratios to the bridge, vde_switch
/// and tapyard (switched) when those were measured.
pub fn compute(raw: &[RawPath]) -> Vec<PathResult> {
    let mut out: Vec<PathResult> = raw.iter().map(path_result).collect();
    let base = |name: &str| -> Option<Figures> {
        out.iter().find(|p| p.name == name && p.status == Status::Ok).and_then(|p| p.figures.clone())
    };
    let (bridge, vde, ty) = (base("bridge"), base("vde"), base("tapyard"));
    for p in &mut out {
        if p.status != Status::Ok {
            continue;
        }
        let f = p.figures.clone().unwrap_or_default();
        p.ratio_to_bridge = bridge.as_ref().map(|b| ratio(&f, b));
        p.ratio_to_vde = vde.as_ref().map(|b| ratio(&f, b));
        p.ratio_to_tapyard = ty.as_ref().map(|b| ratio(&f, b));
    }
    out
}

fn path_result(r: &RawPath) -> PathResult {
    let mut p = PathResult {
        name: r.name.clone(),
        status: r.status,
        reason: r.reason.clone().filter(|s| !s.is_empty()),
        setup: r.setup.clone().filter(|s| !s.is_empty()),
        figures: None,
        extra: None,
        runs: None,
        notes: r.notes.clone(),
        ratio_to_bridge: None,
        ratio_to_vde: None,
        ratio_to_tapyard: None,
    };
    if r.status != Status::Ok {
        return p;
    }
    let mut runs: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (k, v) in &r.samples {
        runs.entry(k.clone()).or_default().push(*v);
    }
    let mut figures = Figures::default();
    for f in &FIGURES {
        let m = runs.get(f.key).and_then(|v| median(v)).map(round3);
        figures.0.insert(f.key.to_string(), m);
    }
    let extra = runs
        .iter()
        .filter(|(k, _)| !FIGURES.iter().any(|f| f.key == k.as_str()))
        .map(|(k, v)| (k.clone(), median(v).map(round3)))
        .collect();
    p.figures = Some(figures);
    p.extra = Some(extra);
    p.runs = Some(runs);
    p
}

/// `x` with `decimals` decimals, rounding halves away from zero (jq's
/// `round` did; Rust's `{:.N}` rounds halves to even).
pub fn fixed(x: f64, decimals: usize) -> String {
    let scale = 10f64.powi(decimals as i32);
    let i = (x * scale).round();
    let neg = i < 0.0;
    let digits = format!("{:.0}", i.abs());
    let s = if decimals == 0 {
        digits
    } else {
        let padded = if digits.len() <= decimals { format!("{digits:0>w$}", w = decimals + 1) } else { digits };
        let (a, b) = padded.split_at(padded.len() - decimals);
        format!("{a}.{b}")
    };
    if neg {
        format!("-{s}")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_percentiles() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        // nearest rank: 100 values 1..=100, p99 is the 99th, p50 the 50th
        let v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        // 3 values: p50 is rank 2, p99 rank 3; one value is every percentile
        assert_eq!(percentile(&[30.0, 10.0, 20.0], 0.5), Some(20.0));
        assert_eq!(percentile(&[30.0, 10.0, 20.0], 0.99), Some(30.0));
        assert_eq!(percentile(&[7.0], 0.01), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn fixed_rounds_halves_away_from_zero() {
        assert_eq!(fixed(0.125, 2), "0.13");
        assert_eq!(fixed(2.0, 2), "2.00");
        assert_eq!(fixed(0.004, 3), "0.004");
        assert_eq!(fixed(41.5, 0), "42");
        assert_eq!(fixed(-1.25, 1), "-1.3");
        assert_eq!(fixed(1234.56, 1), "1234.6");
    }

    fn raw(name: &str, samples: &[(&str, f64)]) -> RawPath {
        let mut r = RawPath::new(name);
        for (k, v) in samples {
            r.record(k, *v);
        }
        r
    }

    #[test]
    fn results_from_samples() {
        let bridge = raw(
            "bridge",
            &[
                ("tcp1_gbps", 10.0),
                ("tcp1_retransmits", 0.0),
                ("tcp1_gbps", 12.0),
                ("tcp1_retransmits", 4.0),
                ("tcp1_gbps", 11.0),
                ("tcp1_retransmits", 1.0),
                ("ping_p50_us", 40.0),
            ],
        );
        let ty = raw(
            "tapyard",
            &[
                ("tcp1_gbps", 5.5),
                ("cpu_s_per_gb", 0.12345),
                ("tcp1_gbps", 6.0),
                ("cpu_s_per_gb", 0.2),
                ("ping_p50_us", 60.0),
            ],
        );
        let mut ovs = RawPath::new("ovs");
        ovs.status = Status::Skipped;
        ovs.reason = Some("ovs-vsctl not found".into());
        let out = compute(&[bridge, ovs, ty]);
        assert_eq!(out.len(), 3);
        let (b, o, t) = (&out[0], &out[1], &out[2]);
        let bf = b.figures.as_ref().unwrap();
        assert_eq!(bf.get("tcp1_gbps"), Some(11.0));
        assert_eq!(bf.get("cpu_s_per_gb"), None);
        assert_eq!(b.extra.as_ref().unwrap()["tcp1_retransmits"], Some(1.0));
        assert_eq!(b.runs.as_ref().unwrap()["tcp1_gbps"], [10.0, 12.0, 11.0]);
        // the bridge against itself is 1; no path has a vde ratio (vde was not measured)
        assert_eq!(b.ratio_to_bridge.as_ref().unwrap().get("tcp1_gbps"), Some(1.0));
        assert!(b.ratio_to_vde.is_none());
        assert_eq!(b.ratio_to_tapyard.as_ref().unwrap().get("tcp1_gbps"), Some(1.91)); // 11 / 5.75
        let tf = t.figures.as_ref().unwrap();
        assert_eq!(tf.get("tcp1_gbps"), Some(5.75));
        assert_eq!(tf.get("cpu_s_per_gb"), Some(0.162)); // (0.12345 + 0.2) / 2 = 0.161725
        let tr = t.ratio_to_bridge.as_ref().unwrap();
        assert_eq!(tr.get("tcp1_gbps"), Some(0.52)); // 5.75 / 11
        assert_eq!(tr.get("ping_p50_us"), Some(1.5));
        assert_eq!(tr.get("cpu_s_per_gb"), None); // the bridge has none
        assert_eq!(o.status, Status::Skipped);
        assert!(o.figures.is_none() && o.ratio_to_bridge.is_none() && o.runs.is_none());
    }

    #[test]
    fn json_has_the_old_shape() {
        let out = compute(&[raw("bridge", &[("tcp1_gbps", 1.0)])]);
        let v = serde_json::to_value(&out[0]).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        for k in [
            "name",
            "status",
            "reason",
            "setup",
            "figures",
            "extra",
            "runs",
            "notes",
            "ratio_to_bridge",
            "ratio_to_vde",
            "ratio_to_tapyard",
        ] {
            assert!(keys.contains(&k), "{k} missing: {v}");
        }
        assert_eq!(v["status"], "ok");
        // every figure is there, in table order, null when not measured
        let fk: Vec<&String> = v["figures"].as_object().unwrap().keys().collect();
        assert_eq!(fk.len(), FIGURES.len());
        // written straight from the types (a Value would sort the keys)
        let s = serde_json::to_string(out[0].figures.as_ref().unwrap()).unwrap();
        assert!(s.starts_with("{\"tcp1_gbps\":1.0,\"tcp4_gbps\":null"), "{s}");
        assert!(v["figures"]["udp64_kpps"].is_null());
    }

    /// A results.json written by the former bench.sh (trimmed) reads back.
    #[test]
    fn reads_a_results_json_of_bench_sh() {
        let old = r#"{"tool":"tapyard bench","schema_version":1,
          "machine":{"nproc":2,"kernel":"6.1.0","cpu":"x","date":"2026-11-28T14:33:00Z",
            "tapyard_rev":"abc","tapyard_version":"tapyard 0.1.0","tapyard_binary":"/t"},
          "config":{"against":["bridge"],"paths":["switched"],"tests":["tcp1","ping"],"duration_s":1,"runs":1,
            "pings":20,"ping_interval_s":0.002,"workers":null,"nice":null,"iperf3":"iperf 3.12","pingpong_tool":"x"},
          "bridge_udp64_kpps":null,"errors":0,
          "figures":[{"key":"tcp1_gbps","label":"TCP, 1 stream","unit":"Gbit/s","better":"higher","test":"tcp1"}],
          "paths":[{"name":"bridge","status":"ok","reason":null,"setup":"Linux bridge",
            "figures":{"tcp1_gbps":12.5,"ping_p50_us":null},"extra":{"tcp1_retransmits":0},
            "runs":{"tcp1_gbps":[12.5],"tcp1_retransmits":[0]},"notes":[],
            "ratio_to_bridge":{"tcp1_gbps":1},"ratio_to_vde":null,"ratio_to_tapyard":null},
            {"name":"vde","status":"skipped","reason":"vde_switch not found","setup":null,"figures":null,
            "extra":null,"runs":null,"notes":[],"ratio_to_bridge":null,"ratio_to_vde":null,"ratio_to_tapyard":null}],
          "chart":"chart.png"}"#;
        let r: Results = serde_json::from_str(old).unwrap();
        assert_eq!(r.paths[0].figures.as_ref().unwrap().get("tcp1_gbps"), Some(12.5));
        assert_eq!(r.paths[1].status, Status::Skipped);
        assert_eq!(r.chart.as_deref(), Some("chart.png"));
    }

    /// The figures, extras and ratios bench.sh computed with jq (a real
    /// results.json of 2026-12-07: bridge and tapyard, every test, 3 runs),
    /// recomputed here from its own samples, are the same to the last bit.
    #[test]
    fn recomputes_what_bench_sh_computed() {
        let old: Results = serde_json::from_str(include_str!("testdata/bench-sh-results.json")).unwrap();
        let raw: Vec<RawPath> = old
            .paths
            .iter()
            .map(|p| {
                let mut r = RawPath::new(&p.name);
                r.status = p.status;
                r.reason = p.reason.clone();
                r.setup = p.setup.clone();
                r.notes = p.notes.clone();
                for (k, v) in p.runs.clone().unwrap_or_default() {
                    for x in v {
                        r.record(&k, x);
                    }
                }
                r
            })
            .collect();
        assert_eq!(compute(&raw), old.paths);
        // and it writes back the same fields and values (jq wrote whole
        // numbers as 0, serde writes 0.0: the same number to a JSON reader)
        let again: serde_json::Value = serde_json::to_value(&old).unwrap();
        let orig: serde_json::Value = serde_json::from_str(include_str!("testdata/bench-sh-results.json")).unwrap();
        assert!(same(&again, &orig), "{again}\n{orig}");
    }

    fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
        use serde_json::Value::*;
        match (a, b) {
            (Number(x), Number(y)) => x.as_f64() == y.as_f64(),
            (Array(x), Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
            (Object(x), Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w))),
            _ => a == b,
        }
    }
}
