//! Private network namespaces for the tests' taps (`ip netns`, from iproute2).

use std::process::{Command, Stdio};

/// Runs `cmd` quietly and says whether it succeeded.
pub fn sh(cmd: &[&str]) -> bool {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A network namespace named after the test and this process, deleted on drop.
pub struct Netns(pub String);

impl Netns {
    /// None where the host forbids creating one (the caller skips with a reason).
    pub fn create(tag: &str) -> Option<Netns> {
        let name = format!("machina-{tag}-{}", std::process::id());
        sh(&["ip", "netns", "add", &name]).then_some(Netns(name))
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    /// Tap interfaces in the namespace.
    pub fn taps(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.0, "ip", "-o", "link", "show", "type", "tun",
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        out.lines()
            .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.0]);
    }
}
