//! Builds the bundled tiny guest kernel (resources/guest, a standalone no_std crate) with a
//! nested cargo and hands its ELF to the binary through OUT_DIR, so `machina` with no
//! `-kernel` boots it and the README's run command needs no download.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let guest_dir = manifest_dir.join("../resources/guest");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    for path in [
        "src",
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "link.ld",
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", guest_dir.join(path).display());
    }
    // One guest build shared by every profile and tool of the workspace.
    let workspace_target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir.join("../target"));
    let guest_target = workspace_target.join("guest");

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guest_dir)
        .args(["build", "--release", "--quiet", "--target-dir"])
        .arg(&guest_target);
    // The outer build's flags and wrappers (clippy, coverage) are not the guest's.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CLIPPY_ARGS",
        "CARGO_MAKEFLAGS",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let output = cmd
        .output()
        .expect("cannot run cargo to build the tiny guest");
    if !output.status.success() {
        panic!(
            "building the tiny guest in {} failed:\n{}{}",
            guest_dir.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let elf = guest_target.join("release/machina-guest");
    std::fs::copy(&elf, out_dir.join("machina-guest.elf"))
        .unwrap_or_else(|e| panic!("cannot copy {}: {e}", elf.display()));
}
