//! What a port's link does to frames on purpose: the impairment settings
//! (delay, jitter, loss, duplication, reordering, corruption, a rate limit)
//! and the human syntax they are written in (`20ms`, `1%`, `10mbit`), shared
//! by `tapyard port set`, the control protocol and lab topology files.
//!
//! This module owns the settings, and [`PortImpair`]: what a port's
//! settings carry into the data path (the rate buckets and frame counts
//! shared by every worker, and the frame memory control allocates for
//! each worker when a setting is applied); the engine that uses them is
//! `datapath::impair`. It imports nothing of the crate. The
//! units follow tc(8) and tc-netem(8), which lab users already type: rates
//! in `bit`, `kbit`, `mbit`, `gbit` (bits per second) or `bps`, `kbps`,
//! `mbps`, `gbps` (bytes per second); sizes in `b`, `kb`, `mb` (or `k`, `m`;
//! powers of 1024); times in `us`, `ms`, `s`.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Which frames of a port an impairment applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Frames the node sends into the switch (the port's ingress).
    In,
    /// Frames the switch sends to the node (the port's egress).
    Out,
    /// Both: a delay of 20 ms adds 40 ms to a round trip through the port.
    #[default]
    Both,
}

/// How jitter is drawn around the delay (tc-netem(8) `distribution`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    /// delay ± jitter, every value equally likely.
    #[default]
    Uniform,
    /// Normal with standard deviation `jitter`, clipped at zero.
    Normal,
    /// Pareto (heavy tail) with mean `delay` and scale set by `jitter`.
    Pareto,
}

/// One direction's impairments; all zero means a plain link.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Impairment {
    /// Fixed delay added to every frame, in microseconds.
    pub delay_us: u64,
    /// Variation around `delay_us`, in microseconds.
    pub jitter_us: u64,
    pub distribution: Distribution,
    /// Probability of losing a frame, in parts per million.
    pub loss_ppm: u32,
    /// Mean length of a loss burst in frames (Gilbert model; 1.0 or 0.0 =
    /// independent losses). The long-run loss rate stays `loss_ppm`.
    pub loss_burst: f64,
    /// Probability of sending a frame twice, in parts per million.
    pub duplicate_ppm: u32,
    /// Probability that a frame skips the delay and overtakes those queued
    /// before it (needs a delay), in parts per million.
    pub reorder_ppm: u32,
    /// Probability of flipping one random bit past the Ethernet header, in
    /// parts per million.
    pub corrupt_ppm: u32,
    /// Token-bucket rate in bits per second; 0 = unlimited.
    pub rate_bps: u64,
    /// Token-bucket depth in bytes; 0 = a default of max(2 × MTU-sized frames, rate × 1 ms).
    pub burst_bytes: u64,
    /// Frames held at most (delay queue plus rate queue); beyond it frames
    /// are dropped and counted. 0 = the default, 1000 (tc-netem's limit).
    pub limit: u32,
}

// `loss_burst` is the one float, and `validate` keeps it finite (never NaN),
// so equality is an equivalence: port specs holding settings compare with `==`.
impl Eq for Impairment {}

impl Impairment {
    /// The frame limit in force (`limit`, or tc-netem's default of 1000).
    pub fn frame_limit(&self) -> u32 {
        if self.limit == 0 {
            DEFAULT_LIMIT
        } else {
            self.limit
        }
    }

    /// The token-bucket depth in force: `burst_bytes`, or max(2 × 1514
    /// bytes, what the rate sends in 1 ms).
    pub fn burst(&self) -> u64 {
        if self.burst_bytes > 0 {
            self.burst_bytes
        } else {
            (2 * 1514).max(self.rate_bps / 8 / 1000)
        }
    }

    /// True when this direction changes nothing.
    pub fn is_none(&self) -> bool {
        *self == Impairment::default()
    }
}

/// Written as `port set`'s flags take it: `delay 20ms jitter 5ms loss 1%
/// rate 10mbit` (only what is set; `none` for a plain direction).
impl std::fmt::Display for Impairment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if self.delay_us > 0 {
            parts.push(format!("delay {}", show_duration(self.delay_us)));
        }
        if self.jitter_us > 0 {
            parts.push(format!("jitter {}", show_duration(self.jitter_us)));
            if self.distribution != Distribution::Uniform {
                let d = if self.distribution == Distribution::Normal { "normal" } else { "pareto" };
                parts.push(format!("distribution {d}"));
            }
        }
        for (name, ppm) in [("loss", self.loss_ppm)] {
            if ppm > 0 {
                parts.push(format!("{name} {}", show_percent(ppm)));
            }
        }
        if self.loss_burst > 1.0 {
            parts.push(format!("loss-burst {}", self.loss_burst));
        }
        for (name, ppm) in
            [("duplicate", self.duplicate_ppm), ("reorder", self.reorder_ppm), ("corrupt", self.corrupt_ppm)]
        {
            if ppm > 0 {
                parts.push(format!("{name} {}", show_percent(ppm)));
            }
        }
        if self.rate_bps > 0 {
            parts.push(format!("rate {}", show_rate(self.rate_bps)));
        }
        if self.burst_bytes > 0 {
            parts.push(format!("burst {}b", self.burst_bytes));
        }
        if self.limit > 0 {
            parts.push(format!("limit {}", self.limit));
        }
        if parts.is_empty() {
            return f.write_str("none");
        }
        f.write_str(&parts.join(" "))
    }
}

/// Microseconds as `port set` takes them: `20ms`, `1.5s`, `250us`.
pub fn show_duration(us: u64) -> String {
    if us >= 1_000_000 && us.is_multiple_of(1000) {
        format!("{}s", us as f64 / 1e6)
    } else if us >= 1000 && us.is_multiple_of(1000) {
        format!("{}ms", us / 1000)
    } else if us >= 1000 {
        format!("{}ms", us as f64 / 1e3)
    } else {
        format!("{us}us")
    }
}

/// Parts per million as a percentage: `1%`, `0.5%`.
pub fn show_percent(ppm: u32) -> String {
    format!("{}%", f64::from(ppm) / 10_000.0)
}

/// Bits per second in tc(8) units: `10mbit`, `1.5gbit`, `800kbit`.
pub fn show_rate(bps: u64) -> String {
    let (v, u) = match bps {
        b if b >= 1_000_000_000 => (b as f64 / 1e9, "gbit"),
        b if b >= 1_000_000 => (b as f64 / 1e6, "mbit"),
        b if b >= 1_000 => (b as f64 / 1e3, "kbit"),
        b => (b as f64, "bit"),
    };
    format!("{v}{u}")
}

/// A change to a port's impairments (`port set`): only the fields given
/// change; the others keep their values.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImpairPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jitter_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distribution: Option<Distribution>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_ppm: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_burst: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate_ppm: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reorder_ppm: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub corrupt_ppm: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_bps: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

impl ImpairPatch {
    /// True when the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == ImpairPatch::default()
    }

    /// Applies the given fields to `to`, then checks the result.
    pub fn apply(&self, to: &mut Impairment) -> Result<(), String> {
        let mut next = *to;
        macro_rules! set {
            ($($f:ident),*) => { $(if let Some(v) = self.$f { next.$f = v; })* };
        }
        set!(
            delay_us,
            jitter_us,
            distribution,
            loss_ppm,
            loss_burst,
            duplicate_ppm,
            reorder_ppm,
            corrupt_ppm,
            rate_bps,
            burst_bytes,
            limit
        );
        validate(&next)?;
        *to = next;
        Ok(())
    }
}

/// The largest delay or jitter accepted: a minute (a lab link, not a time machine;
/// it also bounds how long a worker holds a frame).
pub const MAX_DELAY_US: u64 = 60_000_000;
/// Frames held per port and direction when `limit` is 0 (tc-netem's default).
pub const DEFAULT_LIMIT: u32 = 1000;
/// Bytes of frame memory per frame of `limit`, for each worker: room for
/// `limit` full-size Ethernet frames, or fewer larger (GSO) ones. The memory
/// bounds what is held as much as the frame count does.
pub const BYTES_PER_FRAME: usize = 2048;
/// The least frame memory of a direction: four 64 KiB GSO super-frames.
pub const MIN_ARENA: usize = 4 * (65_536 + 128);

/// One direction's index in [`PortImpair`]'s arrays.
pub const IN: usize = 0;
/// See [`IN`].
pub const OUT: usize = 1;

/// A port's link settings: both directions and whether the link is up.
/// Serialized without what is plain (a state file of a plain port has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkSettings {
    /// Frames the node sends (`Direction::In`).
    #[serde(skip_serializing_if = "Impairment::is_none")]
    pub impair_in: Impairment,
    /// Frames sent to the node (`Direction::Out`).
    #[serde(skip_serializing_if = "Impairment::is_none")]
    pub impair_out: Impairment,
    pub link_up: bool,
}

impl Default for LinkSettings {
    fn default() -> Self {
        LinkSettings { impair_in: Impairment::default(), impair_out: Impairment::default(), link_up: true }
    }
}

impl LinkSettings {
    /// True for a plain, connected link: the data path needs nothing of it.
    pub fn is_plain(&self) -> bool {
        self.link_up && self.impair_in.is_none() && self.impair_out.is_none()
    }

    /// The settings of direction `d` ([`IN`] or [`OUT`]).
    pub fn dir(&self, d: usize) -> &Impairment {
        if d == IN {
            &self.impair_in
        } else {
            &self.impair_out
        }
    }

    /// Applies a `port set`: `clear` first, then `patch` to `direction`,
    /// then the link state. Checked as a whole: an error changes nothing.
    pub fn set(
        &mut self,
        clear: bool,
        direction: Direction,
        patch: &ImpairPatch,
        link_up: Option<bool>,
    ) -> Result<(), String> {
        let mut next = *self;
        if clear {
            next.impair_in = Impairment::default();
            next.impair_out = Impairment::default();
        }
        if matches!(direction, Direction::In | Direction::Both) {
            patch.apply(&mut next.impair_in)?;
        }
        if matches!(direction, Direction::Out | Direction::Both) {
            patch.apply(&mut next.impair_out)?;
        }
        if let Some(up) = link_up {
            next.link_up = up;
        }
        *self = next;
        Ok(())
    }
}

/// One worker's frame memory for one direction, until the worker takes it.
pub type Arena = Mutex<Option<Box<[u8]>>>;

/// What one port's settings carry into the data path, built by control when
/// a setting is applied and shared by every worker through the snapshot.
pub struct PortImpair {
    pub settings: LinkSettings,
    /// Per direction: the token bucket's theoretical arrival time (GCRA,
    /// ITU-T I.371) in nanoseconds of the workers' clock, shared so that a
    /// port's rate is one limit however many workers send to it.
    pub rate_tat: [AtomicU64; 2],
    /// Per direction: frames held by all workers together, against `limit`.
    pub held: [AtomicU32; 2],
    /// Per worker, per direction: the frame memory it holds frames in,
    /// allocated here (in control) and taken by the worker once when it
    /// adopts the snapshot, so no worker allocates it.
    pub arenas: Vec<[Arena; 2]>,
}

impl PortImpair {
    /// The shared state of `settings` for `workers` workers, with frame
    /// memory for each impaired direction.
    pub fn new(settings: LinkSettings, workers: usize) -> PortImpair {
        let arena = |d: usize| {
            let i = settings.dir(d);
            (!i.is_none()).then(|| {
                let bytes = (i.frame_limit() as usize * BYTES_PER_FRAME).max(MIN_ARENA);
                vec![0u8; bytes].into_boxed_slice()
            })
        };
        PortImpair {
            settings,
            rate_tat: Default::default(),
            held: Default::default(),
            arenas: (0..workers.max(1)).map(|_| [Mutex::new(arena(IN)), Mutex::new(arena(OUT))]).collect(),
        }
    }

    /// Takes worker `w`'s frame memory for direction `d` (once).
    pub fn take_arena(&self, w: usize, d: usize) -> Option<Box<[u8]>> {
        self.arenas.get(w)?[d].lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The largest `limit`: bounds the memory one port may hold in frames.
pub const MAX_LIMIT: u32 = 100_000;

/// Checks one direction's settings for values no link can have.
pub fn validate(i: &Impairment) -> Result<(), String> {
    if i.delay_us > MAX_DELAY_US || i.jitter_us > MAX_DELAY_US {
        return Err("delay and jitter must be at most 60s".into());
    }
    for (name, v) in
        [("loss", i.loss_ppm), ("duplicate", i.duplicate_ppm), ("reorder", i.reorder_ppm), ("corrupt", i.corrupt_ppm)]
    {
        if v > 1_000_000 {
            return Err(format!("{name} must be between 0% and 100%"));
        }
    }
    if !i.loss_burst.is_finite() || (i.loss_burst != 0.0 && i.loss_burst < 1.0) {
        return Err("loss burst must be a mean length of at least 1 frame".into());
    }
    if i.reorder_ppm > 0 && i.delay_us == 0 {
        return Err("reorder needs a delay: frames that skip it overtake the delayed ones (tc-netem(8))".into());
    }
    if i.limit > MAX_LIMIT {
        return Err(format!("limit must be at most {MAX_LIMIT} frames"));
    }
    Ok(())
}

/// Parses a time: `20ms`, `500us`, `1.5s`, `0` (microseconds).
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = split_unit(t, &[("us", 1.0), ("µs", 1.0), ("ms", 1e3), ("s", 1e6)])
        .ok_or_else(|| format!("{s:?} is not a time: write 20ms, 500us or 1s"))?;
    to_int(num, mult, s, "a time", MAX_DELAY_US as f64)
}

/// Parses a probability: `1%`, `0.5%` (parts per million).
pub fn parse_percent(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let Some(num) = t.strip_suffix('%') else {
        return Err(format!("{s:?} is not a percentage: write 1% or 0.5%"));
    };
    let v: f64 = num.trim().parse().map_err(|_| format!("{s:?} is not a percentage: write 1% or 0.5%"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("{s:?}: a percentage is between 0% and 100%"));
    }
    Ok((v * 10_000.0).round() as u32)
}

/// Parses a rate as tc(8) does: `10mbit`, `1gbit`, `500kbit`, `100bit`
/// (bits/s) or `1mbps` (bytes/s) (bits per second).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let units = [
        ("tbit", 1e12),
        ("gbit", 1e9),
        ("mbit", 1e6),
        ("kbit", 1e3),
        ("bit", 1.0),
        ("gbps", 8e9),
        ("mbps", 8e6),
        ("kbps", 8e3),
        ("bps", 8.0),
    ];
    let (num, mult) = split_unit(&t, &units)
        .ok_or_else(|| format!("{s:?} is not a rate: write 10mbit, 1gbit or 500kbit (tc(8) units)"))?;
    to_int(num, mult, s, "a rate", 1e13)
}

/// Parses a size: `32kb`, `1500b`, `64k`, `1mb` (bytes, powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let units = [("kb", 1024.0), ("k", 1024.0), ("mb", 1048576.0), ("m", 1048576.0), ("b", 1.0)];
    let (num, mult) = match split_unit(&t, &units) {
        Some(x) => x,
        None if t.chars().all(|c| c.is_ascii_digit()) && !t.is_empty() => (t.as_str(), 1.0),
        None => return Err(format!("{s:?} is not a size: write 1500b, 32kb or 1mb")),
    };
    to_int(num, mult, s, "a size", (1u64 << 32) as f64)
}

fn split_unit<'a>(t: &'a str, units: &[(&str, f64)]) -> Option<(&'a str, f64)> {
    if t == "0" {
        return Some(("0", 1.0));
    }
    units.iter().find_map(|(u, m)| t.strip_suffix(u).map(|n| (n.trim(), *m)))
}

fn to_int(num: &str, mult: f64, orig: &str, what: &str, max: f64) -> Result<u64, String> {
    let v: f64 = num.parse().map_err(|_| format!("{orig:?} is not {what}"))?;
    let v = v * mult;
    if !v.is_finite() || v < 0.0 || v > max {
        return Err(format!("{orig:?} is out of range for {what}"));
    }
    Ok(v.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_tc_units() {
        assert_eq!(parse_duration("20ms"), Ok(20_000));
        assert_eq!(parse_duration("500us"), Ok(500));
        assert_eq!(parse_duration("1.5s"), Ok(1_500_000));
        assert_eq!(parse_duration("0"), Ok(0));
        assert!(parse_duration("20").is_err());
        assert!(parse_duration("-1ms").is_err());
        assert!(parse_duration("2h").is_err());
        assert_eq!(parse_percent("1%"), Ok(10_000));
        assert_eq!(parse_percent("0.5%"), Ok(5_000));
        assert_eq!(parse_percent("100%"), Ok(1_000_000));
        assert!(parse_percent("101%").is_err());
        assert!(parse_percent("1").is_err());
        assert_eq!(parse_rate("10mbit"), Ok(10_000_000));
        assert_eq!(parse_rate("1Gbit"), Ok(1_000_000_000));
        assert_eq!(parse_rate("1mbps"), Ok(8_000_000));
        assert!(parse_rate("10").is_err());
        assert_eq!(parse_size("32kb"), Ok(32 * 1024));
        assert_eq!(parse_size("1500"), Ok(1500));
        assert_eq!(parse_size("1500b"), Ok(1500));
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn settings_are_shown_as_they_are_typed() {
        let i = Impairment {
            delay_us: 20_000,
            jitter_us: 5_000,
            distribution: Distribution::Normal,
            loss_ppm: 10_000,
            rate_bps: 10_000_000,
            ..Default::default()
        };
        assert_eq!(i.to_string(), "delay 20ms jitter 5ms distribution normal loss 1% rate 10mbit");
        assert_eq!(Impairment::default().to_string(), "none");
        assert_eq!(show_duration(1_500_000), "1.5s");
        assert_eq!(show_duration(250), "250us");
        assert_eq!(show_percent(5_000), "0.5%");
    }

    #[test]
    fn port_set_applies_clear_direction_and_link_as_one() {
        let mut l = LinkSettings::default();
        let delay = ImpairPatch { delay_us: Some(20_000), ..Default::default() };
        l.set(false, Direction::Both, &delay, None).unwrap();
        assert_eq!((l.impair_in.delay_us, l.impair_out.delay_us), (20_000, 20_000));
        let loss = ImpairPatch { loss_ppm: Some(50_000), ..Default::default() };
        l.set(false, Direction::In, &loss, Some(false)).unwrap();
        assert_eq!((l.impair_in.loss_ppm, l.impair_out.loss_ppm, l.link_up), (50_000, 0, false));
        let bad = ImpairPatch { reorder_ppm: Some(1), ..Default::default() };
        let before = l;
        assert!(l.set(true, Direction::Both, &bad, Some(true)).is_err());
        assert_eq!(l, before, "a rejected set changes nothing");
        l.set(true, Direction::Both, &ImpairPatch::default(), Some(true)).unwrap();
        assert!(l.is_plain());
        // What a state file keeps: nothing for a plain direction.
        let s = serde_json::to_string(&LinkSettings { link_up: false, ..Default::default() }).unwrap();
        assert_eq!(s, r#"{"link_up":false}"#);
        assert_eq!(serde_json::from_str::<LinkSettings>("{}").unwrap(), LinkSettings::default());
    }

    #[test]
    fn a_patch_changes_only_its_fields_and_is_checked() {
        let mut i = Impairment { delay_us: 20_000, ..Default::default() };
        ImpairPatch { loss_ppm: Some(10_000), ..Default::default() }.apply(&mut i).unwrap();
        assert_eq!((i.delay_us, i.loss_ppm), (20_000, 10_000));
        let bad = ImpairPatch { loss_ppm: Some(2_000_000), ..Default::default() };
        assert!(bad.apply(&mut i).is_err());
        assert_eq!(i.loss_ppm, 10_000, "a rejected patch changes nothing");
        let mut plain = Impairment::default();
        assert!(ImpairPatch { reorder_ppm: Some(1), ..Default::default() }.apply(&mut plain).is_err());
        assert!(plain.is_none());
    }
}
