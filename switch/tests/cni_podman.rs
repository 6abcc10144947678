//! podman (Debian's 4.x, rootful, CNI backend) running containers on a
//! tapyard network through `tapyard-cni`: the real runtime's calls
//! (VERSION, ADD, DEL) and its checks of our results. The image is made
//! offline from Debian's `busybox-static`; podman's configuration, storage
//! and CNI directories are the test's own (CONTAINERS_CONF, --root,
//! --runroot), so nothing of the machine's podman setup is used or changed.
//! Recipe: docs REAL-PEERS §3c.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{name, need, net_admin, wait_for, Daemon};

/// podman with the test's configuration and storage; removes its
/// containers and directories on drop.
struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn new(d: &Daemon, net: &str, subnet: &str) -> Podman {
        let dir = std::env::temp_dir().join(format!("tapyard-it-{}", name("podstore")));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["plugins", "net.d", "root", "rootfs/bin", "rootfs/etc", "rootfs/tmp"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let p = Podman { dir };
        std::fs::create_dir_all(p.runroot()).unwrap();
        std::fs::copy(env!("CARGO_BIN_EXE_tapyard-cni"), p.dir.join("plugins/tapyard-cni")).unwrap();
        // This VM lacks CAP_SYS_RESOURCE: podman's default rlimits would fail.
        std::fs::write(
            p.dir.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\
                 [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\n\
                 network_config_dir = \"{}\"\n",
                p.dir.join("plugins").display(),
                p.dir.join("net.d").display()
            ),
        )
        .unwrap();
        let conflist = serde_json::json!({"cniVersion": "1.0.0", "name": net, "plugins": [
            {"type": "tapyard-cni", "socket": d.socket.to_str().unwrap(),
             "ipam": {"type": "tapyard", "subnet": subnet}}]});
        std::fs::write(p.dir.join(format!("net.d/{net}.conflist")), conflist.to_string()).unwrap();
        // A busybox root filesystem, imported as localhost/bb.
        let root = p.dir.join("rootfs");
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        for applet in ["sh", "ip", "ping", "sleep"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
        let tar = p.dir.join("rootfs.tar");
        common::sh(&["tar", "-C", root.to_str().unwrap(), "-cf", tar.to_str().unwrap(), "."]);
        p.ok(&["import", "--change", "ENV PATH=/bin", tar.to_str().unwrap(), "localhost/bb"]);
        p
    }

    /// podman refuses a runroot longer than 50 characters (TMPDIR can be
    /// long: the rootless pass's is): a short one of its own in /tmp.
    fn runroot(&self) -> PathBuf {
        PathBuf::from("/tmp").join(name("podrun"))
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("podman")
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.runroot())
            .args(["--storage-driver", "vfs"])
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-fa", "-t", "0"]);
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(self.runroot());
    }
}

fn ports(d: &Daemon, net: &str) -> Vec<serde_json::Value> {
    d.json(&["port", "ls"]).as_array().unwrap().iter().filter(|p| p["network"] == net).cloned().collect()
}

#[test]
fn podman_containers_on_a_tapyard_network() {
    if !net_admin() {
        return;
    }
    need("podman", "podman");
    assert!(Path::new("/bin/busybox").exists(), "busybox is not installed: run scripts/setup.sh (busybox-static)");
    let d = Daemon::start("podman");
    let net = name("pod");
    let pm = Podman::new(&d, &net, "198.18.51.0/24");
    // One container stays up; a second pings it and the gateway.
    let cname = name("a");
    let id = pm.ok(&["run", "-d", "--name", &cname, "--network", &net, "localhost/bb", "sleep", "600"]);
    let id = id.trim();
    let port = ports(&d, &net);
    assert_eq!(port.len(), 1, "{port:?}");
    assert_eq!(port[0]["owner"], id, "the port carries podman's container id: {}", port[0]);
    let a_ip = port[0]["ip"].as_str().unwrap().split('/').next().unwrap().to_string();
    let out = pm.ok(&[
        "run",
        "--rm",
        "--cap-add",
        "NET_RAW",
        "--network",
        &net,
        "localhost/bb",
        "sh",
        "-c",
        &format!("ip -o -4 addr show eth0 && ip route && ping -c1 -W3 198.18.51.1 && ping -c1 -W3 {a_ip}"),
    ]);
    assert!(out.contains("default via 198.18.51.1 dev eth0"), "{out}");
    assert!(out.matches("1 packets received").count() == 2, "pings the gateway and the other container: {out}");
    // --rm: podman's DEL removed the second container's port.
    assert_eq!(ports(&d, &net).len(), 1, "{:?}", ports(&d, &net));
    pm.ok(&["rm", "-f", "-t", "0", &cname]);
    assert!(wait_for(10, || ports(&d, &net).is_empty()), "podman rm's DEL removed the port");
}
