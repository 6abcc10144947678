//! DPDK's testpmd as a test peer (a vhost-user frontend or backend nobody
//! here wrote): started with `--no-huge` (no hugepages, no privileges), with
//! its own EAL file prefix and directory, stopped by the pid we started and
//! cleaned up on drop. `scripts/setup.sh` installs it (Debian `dpdk-dev`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// testpmd busy-polls a core per forwarding lcore: tests run one at a time.
pub static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

pub struct Testpmd {
    child: Option<Child>,
    pub prefix: String,
    /// Private directory for sockets and the log.
    pub dir: PathBuf,
}

impl Testpmd {
    /// Starts `dpdk-testpmd -l LCORES --no-huge -m 256 --no-pci --file-prefix P <eal> -- <app>`.
    pub fn spawn(tag: &str, lcores: &str, eal: &[String], app: &[String]) -> Testpmd {
        super::need("dpdk-testpmd", "dpdk-dev, with librte-net-vhost23 librte-net-virtio23 librte-mempool-ring23");
        let prefix = format!("ty-{}-{tag}", std::process::id());
        let dir = std::env::temp_dir().join(&prefix);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("testpmd.log")).unwrap();
        // stdbuf: testpmd's stdout to a file is block-buffered, and the lines
        // tests wait for ("packet forwarding - ports=") would sit in the buffer.
        let child = Command::new("stdbuf")
            .args(["-oL", "dpdk-testpmd"])
            .args(["-l", lcores, "--no-huge", "-m", "256", "--no-pci", "--file-prefix", &prefix])
            .args(eal)
            .arg("--")
            .args(app)
            // testpmd exits on end of input ("Press enter to exit"): keep stdin open.
            .stdin(Stdio::piped())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dpdk-testpmd is installed by scripts/setup.sh (Debian package dpdk-dev)");
        Testpmd { child: Some(child), prefix, dir }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("testpmd.log")).unwrap_or_default()
    }

    /// Waits until the log contains `what` (testpmd prints as it goes).
    pub fn wait_log(&self, what: &str, secs: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !self.log().contains(what) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// Stops testpmd with SIGINT (it then prints its totals) and returns its log.
    pub fn stop(&mut self) -> String {
        if let Some(c) = self.child.take() {
            super::stop_child(c, "INT");
        }
        self.log()
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        self.stop();
        // EAL's runtime directory: /var/run/dpdk as root, else $XDG_RUNTIME_DIR/dpdk or /tmp/dpdk.
        let mut runtime = vec![PathBuf::from("/var/run/dpdk"), PathBuf::from("/tmp/dpdk")];
        runtime.extend(std::env::var_os("XDG_RUNTIME_DIR").map(|d| PathBuf::from(d).join("dpdk")));
        for r in runtime {
            let _ = std::fs::remove_dir_all(r.join(&self.prefix));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
