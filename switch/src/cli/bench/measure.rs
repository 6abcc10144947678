//! Reading the measuring tools' output: iperf3's JSON (`-J`, serde types for
//! the fields used), ping's reply lines, sockperf's percentile lines and the
//! python ping-pong's one line. Pure functions of the text, so they are unit
//! tests; the runner (`runner.rs`) starts the tools and stores the text in
//! the logs.

use serde::Deserialize;

/// The part of `iperf3 -J` output the benchmark reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Iperf {
    #[serde(default)]
    pub intervals: Vec<IperfInterval>,
    #[serde(default)]
    pub end: IperfEnd,
    /// Set when iperf3 failed (it still writes JSON).
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct IperfInterval {
    #[serde(default)]
    pub sum: IperfSum,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct IperfEnd {
    #[serde(default)]
    pub sum_sent: Option<IperfSum>,
    #[serde(default)]
    pub sum_received: Option<IperfSum>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct IperfSum {
    #[serde(default)]
    pub seconds: f64,
    #[serde(default)]
    pub bytes: f64,
    #[serde(default)]
    pub bits_per_second: f64,
    #[serde(default)]
    pub retransmits: Option<f64>,
    #[serde(default)]
    pub packets: Option<f64>,
    #[serde(default)]
    pub lost_packets: Option<f64>,
}

/// What one iperf3 run measured, or why it did not.
#[derive(Debug, Clone)]
pub struct IperfResult {
    pub sent: IperfSum,
    pub received: IperfSum,
    /// bits per second of each interval (one a second).
    pub interval_bps: Vec<f64>,
}

/// Parses iperf3's JSON; a result only if the receiver got bytes (as
/// bench.sh's `.end.sum_received.bytes > 0`), else the reason.
pub fn iperf(text: &str) -> Result<IperfResult, String> {
    let v: Iperf = serde_json::from_str(text).map_err(|_| {
        let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output");
        last.trim().to_string()
    })?;
    match (v.end.sum_sent, v.end.sum_received) {
        (Some(sent), Some(received)) if received.bytes > 0.0 => Ok(IperfResult {
            sent,
            received,
            interval_bps: v.intervals.iter().map(|i| i.sum.bits_per_second).collect(),
        }),
        _ => Err(v.error.unwrap_or_else(|| "no bytes received".into())),
    }
}

impl IperfResult {
    pub fn gbps(&self) -> f64 {
        self.received.bits_per_second / 1e9
    }
    /// Seconds in which the transfer stalled: intervals under 5 % of the
    /// best one (a median hides them; they say more about a data path than the rate).
    pub fn stalled_seconds(&self) -> usize {
        let best = self.interval_bps.iter().copied().fold(0.0, f64::max);
        self.interval_bps.iter().filter(|&&b| best > 0.0 && b < 0.05 * best).count()
    }
    pub fn retransmits(&self) -> f64 {
        self.sent.retransmits.unwrap_or(0.0)
    }
    /// Frames received per second, in thousands: (packets - lost) / seconds.
    pub fn received_kpps(&self) -> Option<f64> {
        let r = self.received;
        let p = r.packets?;
        (r.seconds > 0.0).then(|| (p - r.lost_packets.unwrap_or(0.0)) / r.seconds / 1e3)
    }
    pub fn offered_kpps(&self) -> Option<f64> {
        let s = self.sent;
        let p = s.packets?;
        (s.seconds > 0.0).then(|| p / s.seconds / 1e3)
    }
    /// Percent of the frames sent that were not received (lost by sequence
    /// gaps, or never seen at all), at least 0.
    pub fn loss_pct(&self) -> Option<f64> {
        let sent = self.sent.packets?;
        let got = self.received.packets? - self.received.lost_packets.unwrap_or(0.0);
        (sent > 0.0).then(|| (100.0 * (sent - got) / sent).max(0.0))
    }
}

/// The RTTs of ping's reply lines (`... time=0.045 ms`), in microseconds
/// rounded to 0.1 µs (bench.sh's `printf "%.1f"`).
pub fn ping_rtts_us(text: &str) -> Vec<f64> {
    text.lines()
        .filter_map(|l| l.split_once("time=").map(|(_, t)| t))
        .filter_map(|t| {
            let num: String = t.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
            num.parse::<f64>().ok()
        })
        .map(|ms| (ms * 1000.0 * 10.0).round() / 10.0)
        .collect()
}

/// sockperf ping-pong: (p50, p99) RTT in µs and the messages received.
/// sockperf reports one-way latency, RTT / 2: twice that is the RTT.
pub fn sockperf(text: &str) -> Option<(f64, f64, Option<u64>)> {
    let clean = strip_ansi(text);
    let pct = |p: &str| {
        clean
            .lines()
            .find(|l| l.contains(&format!("percentile {p} =")))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| ((2.0 * v) * 10.0).round() / 10.0)
    };
    let msgs = clean.lines().find(|l| l.contains("Valid Duration")).and_then(|l| {
        let (_, rest) = l.split_once("ReceivedMessages=")?;
        rest.chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
    });
    Some((pct("50.000")?, pct("99.000")?, msgs))
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if !(d.is_ascii_digit() || d == ';') {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// pingpong.py's client line "messages p50_us p99_us lost": (p50, p99, messages), when any message came back.
pub fn pingpong_py(text: &str) -> Option<(f64, f64, Option<u64>)> {
    let mut it = text.lines().next()?.split_whitespace();
    let n: u64 = it.next()?.parse().ok()?;
    let p50: f64 = it.next()?.parse().ok()?;
    let p99: f64 = it.next()?.parse().ok()?;
    (n > 0 && p50.is_finite() && p99.is_finite()).then_some((p50, p99, Some(n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = r#"{"start":{},"intervals":[],"end":{
        "sum_sent":{"start":0,"end":1.0,"seconds":1.0,"bytes":1500000000,"bits_per_second":12000000000,"retransmits":3},
        "sum_received":{"start":0,"end":1.0,"seconds":1.0,"bytes":1250000000,"bits_per_second":10000000000}}}"#;
    const UDP: &str = r#"{"end":{
        "sum_sent":{"seconds":2.0,"bytes":3600000,"bits_per_second":1,"packets":200000,"lost_packets":0},
        "sum_received":{"seconds":2.0,"bytes":3000000,"bits_per_second":1,"packets":190000,"lost_packets":10000}}}"#;

    #[test]
    fn iperf3_tcp_and_udp() {
        let t = iperf(TCP).unwrap();
        assert_eq!(t.gbps(), 10.0);
        assert_eq!(t.stalled_seconds(), 0);
        let stalls = TCP.replace(
            r#""intervals":[]"#,
            r#""intervals":[{"sum":{"bits_per_second":1e10}},{"sum":{"bits_per_second":1e8}},{"sum":{"bits_per_second":9e9}}]"#,
        );
        assert_eq!(iperf(&stalls).unwrap().stalled_seconds(), 1);
        assert_eq!(t.retransmits(), 3.0);
        let u = iperf(UDP).unwrap();
        assert_eq!(u.received_kpps(), Some(90.0)); // (190000 - 10000) / 2 s
        assert_eq!(u.offered_kpps(), Some(100.0));
        assert_eq!(u.loss_pct(), Some(10.0)); // 20000 of 200000 not received
    }

    #[test]
    fn iperf3_failures_say_why() {
        let e = iperf(r#"{"start":{},"end":{},"error":"unable to connect to server: Connection refused"}"#);
        assert_eq!(e.unwrap_err(), "unable to connect to server: Connection refused");
        assert_eq!(iperf("iperf3: error - bad\n").unwrap_err(), "iperf3: error - bad");
        let zero = TCP.replace("\"bytes\":1250000000", "\"bytes\":0");
        assert!(iperf(&zero).is_err());
    }

    #[test]
    fn ping_lines() {
        let out = "PING 198.18.0.2 (198.18.0.2) 56(84) bytes of data.\n\
            64 bytes from 198.18.0.2: icmp_seq=1 ttl=64 time=0.045 ms\n\
            64 bytes from 198.18.0.2: icmp_seq=2 ttl=64 time=1.23456 ms\n\
            \n--- 198.18.0.2 ping statistics ---\n\
            2 packets transmitted, 2 received, 0% packet loss, time 2ms\n\
            rtt min/avg/max/mdev = 0.045/0.639/1.234/0.595 ms\n";
        assert_eq!(ping_rtts_us(out), [45.0, 1234.6]);
        assert!(ping_rtts_us("connect: Network is unreachable\n").is_empty());
    }

    #[test]
    fn sockperf_and_python_pingpong() {
        let out = "sockperf: == version #3.7-no.git ==\n\
            sockperf: [Valid Duration] RunTime=1.000 sec; SentMessages=20000; ReceivedMessages=19999\n\
            sockperf: ---> percentile 99.000 =   \x1b[1m30.500\x1b[0m\n\
            sockperf: ---> percentile 50.000 =   20.250\n";
        assert_eq!(sockperf(out), Some((40.5, 61.0, Some(19999))));
        assert_eq!(sockperf("sockperf: error\n"), None);
        assert_eq!(pingpong_py("12000 41.2 80.5 0\n"), Some((41.2, 80.5, Some(12000))));
        assert_eq!(pingpong_py("0 nan nan 5\n"), None);
        assert_eq!(pingpong_py(""), None);
    }
}
