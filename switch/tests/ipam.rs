//! IPAM through the daemon: default pools, --ip auto, static claims, ranges,
//! aux addresses, reservations, lease listing, and persistence across SIGKILL.

mod common;

use common::*;

fn ip_of(d: &Daemon, netns: &str) -> String {
    d.port(netns)["ip"].as_str().unwrap().to_string()
}

#[test]
fn ip_auto_ranges_aux_addresses_reservations_and_claims() {
    if !common::net_admin() {
        return;
    }
    let mut d = Daemon::start("auto");
    let net = name("auto");
    d.ok(&[
        "network",
        "create",
        &net,
        "--subnet",
        "10.88.0.0/24",
        "--ip-range",
        "10.88.0.128/29",
        "--aux-address",
        "printer=10.88.0.129",
    ]);
    let ns: Vec<Netns> = (1..=4).map(|i| Netns::new(&format!("auto{i}"))).collect();
    d.ok(&["network", "reserve", &net, "02:aa:bb:00:00:04", "10.88.0.50"]);
    d.ok(&["connect", &net, &ns[0].name, "--ip", "auto"]);
    d.ok(&["connect", &net, &ns[1].name, "--ip", "auto"]);
    let (a0, a1) = (ip_of(&d, &ns[0].name), ip_of(&d, &ns[1].name));
    for a in [&a0, &a1] {
        let last: u8 = a.trim_end_matches("/24").rsplit('.').next().unwrap().parse().unwrap();
        assert!((128..=135).contains(&last) && last != 129, "{a} must come from the range, not the aux address");
    }
    assert_ne!(a0, a1);
    // The address is configured, with a default route through the gateway.
    assert!(ns[0].run(&["sh", "-c", &format!("ip -4 addr show dev eth0 | grep -q {a0}")]));
    assert!(ns[0].run(&["sh", "-c", "ip route show default | grep -q 'via 10.88.0.1'"]));
    assert!(ns[0].reaches(a1.trim_end_matches("/24")));
    // A static address that IPAM already gave out is refused.
    let taken = a0.trim_end_matches("/24");
    let out = d.cli(&["connect", &net, &ns[2].name, "--ip", taken]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already assigned"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = d.cli(&["connect", &net, &ns[2].name, "--ip", "10.88.0.129"]);
    assert!(!out.status.success(), "the aux address is never given to a port");
    // A static claim outside the range is fine, and auto never hands it out.
    d.ok(&["connect", &net, &ns[2].name, "--ip", "10.88.0.20"]);
    // The reservation wins for its MAC.
    d.ok(&["connect", &net, &ns[3].name, "--ip", "auto", "--mac", "02:aa:bb:00:00:04"]);
    assert_eq!(ip_of(&d, &ns[3].name), "10.88.0.50/24");
    let leases = d.json(&["lease", "ls", &net]);
    assert_eq!(leases.as_array().unwrap().len(), 4, "{leases}");
    let inspect = d.json(&["network", "inspect", &net]);
    assert_eq!(inspect["pool_size"], 8);
    assert_eq!(inspect["reservations"]["02:aa:bb:00:00:04"], "10.88.0.50");
    assert_eq!(inspect["aux_addresses"]["printer"], "10.88.0.129");

    // Killed and restarted: every address is still held by its port.
    assert_eq!(d.signal("KILL"), None);
    d.spawn();
    assert_eq!(d.json(&["lease", "ls", &net]).as_array().unwrap().len(), 4);
    assert_eq!(ip_of(&d, &ns[0].name), a0);
    // Disconnecting frees the address; the range hands out only unused ones.
    d.ok(&["disconnect", &net, &ns[1].name]);
    assert_eq!(d.json(&["lease", "ls", &net]).as_array().unwrap().len(), 3);
    let extra = Netns::new("auto5");
    d.ok(&["connect", &net, &extra.name, "--ip", "auto"]);
    assert_ne!(ip_of(&d, &extra.name), a0);
}

#[test]
fn ip_auto_on_a_full_range_is_a_clear_error() {
    if !common::net_admin() {
        return;
    }
    let d = Daemon::start("full4");
    let net = name("full4");
    d.ok(&["network", "create", &net, "--subnet", "10.89.9.0/24", "--ip-range", "10.89.9.4/31"]);
    let ns: Vec<Netns> = (1..=3).map(|i| Netns::new(&format!("fr{i}"))).collect();
    d.ok(&["connect", &net, &ns[0].name, "--ip", "auto"]);
    d.ok(&["connect", &net, &ns[1].name, "--ip", "auto"]);
    let out = d.cli(&["connect", &net, &ns[2].name, "--ip", "auto"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no free address"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!ns[2].has_link("eth0"));
    let out = d.cli(&["network", "create", "y", "--ipam", "none", "--subnet", "10.1.0.0/24"]);
    assert!(!out.status.success());
    let out = d.cli(&["network", "create", "y", "--ipam", "bogus"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ipam"));
}
