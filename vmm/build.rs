//! Builds the bundled tiny guest kernel (resources/guest, a standalone no_std crate) with a
//! nested cargo and hands its ELF to the binary through OUT_DIR, so `machina` with no
//! `-kernel` boots it and the README's run command needs no download; and links the
//! `machina` binary for a quick start: a static PIE (`link_static`) with its start-up
//! functions together (`order_startup_functions`).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    link_static();
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    order_startup_functions(&manifest_dir);
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

/// Link the `machina` binary (only it: not the tests, benches or build tools) as a static
/// PIE against glibc's archives. Start-up is the reason: the dynamic loader's work (mapping
/// libc and libgcc_s, relocating, binding ~240 symbols, libgcc_s's CPUID probe) took
/// ~0.45 ms of the ~3 ms to the QMP greeting, and the two libraries' faulted-in pages ~1 MiB
/// of the RSS at the greeting. `-C target-feature=+crt-static` would do it for every crate
/// of the build, and rustc refuses proc-macro crates with it unless `--target` is given
/// (which moves target/debug); so rustc's dynamic `-lc -lgcc_s ...` of the binary are
/// resolved here, in a search directory of its own, by linker scripts naming the static
/// archives. With an archive missing (no static glibc), or `MACHINA_LINK=dynamic`, the
/// binary links dynamically as before.
///
/// glibc's static NSS has `files` and `dns` built in (`hosts:` of a TCP `-qmp` host name);
/// other modules of nsswitch.conf are loaded from the system's glibc if its version matches.
fn link_static() {
    println!("cargo:rerun-if-env-changed=MACHINA_LINK");
    if std::env::var("MACHINA_LINK").is_ok_and(|v| v == "dynamic")
        || std::env::var("CARGO_CFG_TARGET_ENV").as_deref() != Ok("gnu")
    {
        return;
    }
    let archive = |name: &str| -> Option<String> {
        let out = Command::new("cc")
            .arg(format!("-print-file-name={name}"))
            .output()
            .ok()?;
        let path = String::from_utf8(out.stdout).ok()?.trim().to_string();
        // An archive it cannot find comes back as the bare name.
        std::path::Path::new(&path).is_absolute().then_some(path)
    };
    // The libraries std and libc ask for, each resolved to its archives.
    const LIBS: [(&str, &[&str]); 7] = [
        ("gcc_s", &["libgcc_eh.a", "libgcc.a"]),
        ("c", &["libc.a"]),
        ("m", &["libm.a"]),
        ("pthread", &["libpthread.a"]),
        ("dl", &["libdl.a"]),
        ("rt", &["librt.a"]),
        ("util", &["libutil.a"]),
    ];
    let mut scripts = Vec::new();
    for (lib, archives) in LIBS {
        let Some(paths) = archives
            .iter()
            .map(|a| archive(a))
            .collect::<Option<Vec<_>>>()
        else {
            println!(
                "cargo:warning=static glibc not found ({archives:?}): machina links dynamically"
            );
            return;
        };
        scripts.push((lib, format!("GROUP ( {} )\n", paths.join(" "))));
    }
    let dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("static-libs");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for (lib, script) in scripts {
        // Found before the system's lib*.so: the linker searches user directories first.
        let path = dir.join(format!("lib{lib}.so"));
        std::fs::write(&path, script).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    println!("cargo:rustc-link-arg-bin=machina=-static-pie");
    println!("cargo:rustc-link-arg-bin=machina=-L{}", dir.display());
}

/// Put the functions the start-up path runs (resources/startup-order.txt, made by
/// scripts/startup-order) together at the start of the text: the kernel maps file pages
/// 64 KiB around each fault, so start-up code spread over the binary made ~4 MiB of its
/// text resident by the QMP greeting, and together it is ~1.8 MiB (and fewer faults).
/// Names that match nothing (after a toolchain or code change) are ignored. Only with
/// LLD, rustc's linker on this target since Rust 1.90.
fn order_startup_functions(manifest_dir: &std::path::Path) {
    let list = manifest_dir.join("../resources/startup-order.txt");
    println!("cargo:rerun-if-changed={}", list.display());
    if !list.exists() || !rustc_links_with_lld() {
        return;
    }
    println!(
        "cargo:rustc-link-arg-bin=machina=-Wl,--symbol-ordering-file={}",
        list.display()
    );
    println!("cargo:rustc-link-arg-bin=machina=-Wl,--no-warn-symbol-ordering");
}

/// Whether rustc links x86_64 GNU/Linux binaries with its bundled LLD: its default from
/// 1.90, unless the build's flags choose a linker.
fn rustc_links_with_lld() -> bool {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("x86_64") {
        return false;
    }
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if flags.contains("linker")
        || std::env::var_os("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_some()
    {
        return false;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let Ok(out) = Command::new(rustc).arg("-vV").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let minor = text
        .lines()
        .find_map(|l| l.strip_prefix("release: 1."))
        .and_then(|r| r.split('.').next())
        .and_then(|m| m.parse::<u32>().ok());
    minor.is_some_and(|m| m >= 90)
}
