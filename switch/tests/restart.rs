//! A clean stop and restart (an upgrade, `systemctl restart`): SIGTERM
//! keeps the interfaces, and the next start takes each back as it is: the
//! same interface (ifindex), name, MAC, address and default route (README,
//! "Restarts"). An interface that is gone meanwhile (deleted by hand) is
//! re-created with the same name, MAC and address. What the container sees
//! is read from inside its namespace, not from `port ls`, which only
//! repeats the daemon's own records. (tests/blackout.rs measures how long
//! traffic stops.)

mod common;

use common::*;

#[test]
fn sigterm_then_restart_keeps_interfaces_as_they_were() {
    let mut d = Daemon::start("rst");
    let net = name("rst");
    d.ok(&["network", "create", &net, "--subnet", "10.83.0.0/24"]);
    let a = Netns::new("rsta");
    let b = Netns::new("rstb");
    d.ok(&["connect", &net, &a.name, "--ip", "auto"]);
    d.ok(&["connect", &net, &b.name, "--ip", "10.83.0.50", "--mac", "02:00:00:83:00:50"]);

    let a_ip = d.port(&a.name)["ip"].as_str().unwrap().to_string();
    let before_a = a.link("eth0");
    let before_b = b.link("eth0");
    let want_b = Link {
        up: true,
        mac: "02:00:00:83:00:50".into(),
        ifindex: before_b.ifindex,
        addrs: vec!["10.83.0.50/24".into()],
        default_via: Some("10.83.0.1".into()),
    };
    assert_eq!(before_b, want_b);
    assert!(before_a.up && before_a.addrs == [a_ip.clone()] && before_a.default_via.as_deref() == Some("10.83.0.1"));
    assert_eq!(before_a.mac, d.port(&a.name)["mac"].as_str().unwrap());
    assert!(a.reaches("10.83.0.50"));

    assert_eq!(d.signal("TERM"), Some(0));
    assert!(a.has_link("eth0") && b.has_link("eth0"), "a clean stop keeps the interfaces");
    // One is deleted by hand while the daemon is down: the next start makes it again.
    assert!(b.run(&["ip", "link", "del", "eth0"]));

    d.spawn();
    assert_eq!(d.json(&["port", "ls"]).as_array().unwrap().len(), 2, "{}", d.log());
    assert_eq!(a.link("eth0"), before_a, "container a after the restart (same interface); log:\n{}", d.log());
    let after_b = b.link("eth0");
    assert_eq!(Link { ifindex: before_b.ifindex, ..after_b }, want_b, "container b's interface, made again");
    assert_eq!(d.port(&a.name)["mac"].as_str().unwrap(), before_a.mac);
    assert_eq!(d.port(&a.name)["ip"].as_str().unwrap(), a_ip);
    let a_addr = a_ip.split('/').next().unwrap();
    assert!(a.reaches("10.83.0.50"), "a reaches b after the restart");
    assert!(b.reaches(a_addr), "b reaches a after the restart");
}
