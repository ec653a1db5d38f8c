//! Where the build and `scripts/test` put what the integration tests need besides the
//! `machina` binary: the target folder, the tiny guest's ELF and the Python virtual
//! environment.

use std::path::{Path, PathBuf};

/// Where vmm/build.rs leaves the tiny guest, relative to the workspace's target folder.
const GUEST_ELF: &str = "guest/release/machina-guest";

/// The workspace's target folder, found from the binary under test (`TARGET/debug/machina`,
/// or `TARGET/TRIPLE/debug/machina`): the ancestor that holds the guest build, as
/// vmm/build.rs puts it there; else the binary's grandparent.
pub fn target_dir(binary: &Path) -> PathBuf {
    binary
        .ancestors()
        .skip(1)
        .find(|dir| dir.join(GUEST_ELF).is_file())
        .or_else(|| binary.parent().and_then(Path::parent))
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// The tiny guest's ELF that the build embeds in `machina` (for a `<kernel>` element or
/// `-kernel`: the same bytes machina boots when given no kernel).
pub fn guest_elf(binary: &Path) -> PathBuf {
    target_dir(binary).join(GUEST_ELF)
}

/// The Python interpreter of the virtual environment that `scripts/test` creates:
/// `$MACHINA_PYTHON` when set, else `TARGET/pyenv/bin/python`.
pub fn venv_python(binary: &Path) -> PathBuf {
    match std::env::var_os("MACHINA_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => target_dir(binary).join("pyenv/bin/python"),
    }
}

/// The Linux test guest (tests/data/linux/guest.config), built or found in its cache by
/// `scripts/linux-guest` under the workspace at `root`; panics with the script's error.
pub fn linux_guest(root: &Path) -> PathBuf {
    let out = std::process::Command::new(root.join("scripts/linux-guest"))
        .output()
        .expect("run scripts/linux-guest");
    assert!(
        out.status.success(),
        "scripts/linux-guest failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_dir_without_a_guest_build_is_the_grandparent() {
        let dir = target_dir(Path::new("/nonexistent/target/debug/machina"));
        assert_eq!(dir, PathBuf::from("/nonexistent/target"));
        assert_eq!(
            guest_elf(Path::new("/nonexistent/target/debug/machina")),
            PathBuf::from("/nonexistent/target/guest/release/machina-guest")
        );
    }
}
