//! `daemon --tap-steering cpu` (port/tap.rs, port/bpf.rs): a frame a
//! container sends lands on the TAP queue of the CPU it was sent from, so
//! the worker pinned to that core reads it. Checked by the per-queue
//! receive counters while ping runs pinned to one CPU, then the other.

mod common;

use common::*;

/// Frames read so far from each queue of the port in `netns`.
fn per_queue(d: &Daemon, netns: &str) -> Vec<u64> {
    let p = d.port(netns);
    p["counters"]["rx_queue_packets"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect()
}

/// Pings `ip` 30 times from `ns`, pinned to `cpu`; returns how many more
/// frames each queue of `ns`'s port read meanwhile.
fn pinned_ping(d: &Daemon, ns: &Netns, cpu: &str, ip: &str) -> Vec<u64> {
    let before = per_queue(d, &ns.name);
    assert!(ns.run(&["taskset", "-c", cpu, "ping", "-n", "-q", "-c", "30", "-i", "0.01", "-W", "1", ip]));
    let after = per_queue(d, &ns.name);
    after.iter().zip(&before).map(|(a, b)| a - b).collect()
}

#[test]
fn cpu_steering_puts_a_senders_frames_on_its_cpus_queue() {
    if !net_admin() {
        return;
    }
    if !initial_userns() {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "cpu_steering_puts_a_senders_frames_on_its_cpus_queue: skipped: loading a BPF program needs root in the host's user namespace"
        );
        return;
    }
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        panic!("this test needs two CPUs to tell the queues apart");
    }
    let d = Daemon::start_with("steer", None, &["--uplink", "none", "--tap-steering", "cpu"]);
    let net = name("steer");
    d.ok(&["network", "create", &net, "--subnet", "10.96.0.0/24"]);
    let a = Netns::new("steera");
    let b = Netns::new("steerb");
    a.no_ipv6();
    b.no_ipv6();
    d.ok(&["connect", &net, &a.name, "--ip", "10.96.0.2"]);
    d.ok(&["connect", &net, &b.name, "--ip", "10.96.0.3"]);
    assert!(a.reaches("10.96.0.3"));

    // 30 echo requests from CPU 1, then from CPU 0: each run's requests are
    // read from that CPU's queue (a stray ARP may come from anywhere).
    let on1 = pinned_ping(&d, &a, "1", "10.96.0.3");
    assert!(on1[1] >= 30 && on1[0] <= 3, "sent on CPU 1, read per queue: {on1:?}\n{}", d.log());
    let on0 = pinned_ping(&d, &a, "0", "10.96.0.3");
    assert!(on0[0] >= 30 && on0[1] <= 3, "sent on CPU 0, read per queue: {on0:?}\n{}", d.log());
}
