//! `machina`: a KVM virtual machine monitor for QEMU's q35 and i440fx machine types.

use std::process::ExitCode;
use std::time::Instant;
use vmm::cli::{self, Action, SerialSpec};
use vmm::console::Console;
use vmm::runner::{self, RunSpec};

/// The tiny guest kernel from resources/guest, built by build.rs.
static BUNDLED_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/machina-guest.elf"));

fn main() -> ExitCode {
    let start = Instant::now();
    match run(std::env::args().skip(1).collect(), start) {
        Ok(code) => ExitCode::from(code),
        Err(message) => {
            eprintln!("machina: {message}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Vec<String>, start: Instant) -> Result<u8, String> {
    let opts = cli::parse(args).map_err(|e| e.to_string())?;
    let mut catalog = machine::Catalog::builtin().clone();
    for path in &opts.machine_definitions {
        catalog
            .load_file(path)
            .map_err(|e| format!("-machine-definition {}: {e}", path.display()))?;
    }
    match &opts.action {
        Action::Help => {
            print!("{}", cli::help_text());
            return Ok(0);
        }
        Action::Version => {
            println!(
                "machina version {} (QEMU {} machine types)\nA KVM VMM for q35 and pc; see README.md",
                env!("CARGO_PKG_VERSION"),
                machine::QEMU_VERSION
            );
            return Ok(0);
        }
        Action::MachineHelp => {
            print!("{}", machine::help::machine_help(&catalog));
            return Ok(0);
        }
        Action::DeviceHelp => {
            print!("{}", machine::help::device_help(&catalog));
            return Ok(0);
        }
        Action::DeviceProperties(ty) => {
            let text = machine::help::device_properties_help(&catalog, ty)
                .map_err(|e| format!("-device {ty},help: {e}"))?;
            print!("{text}");
            return Ok(0);
        }
        Action::Run => {}
    }

    // machina has no display: the default console's home is the terminal. As in QEMU,
    // -nodefaults drops the default serial port unless -serial names one.
    let serial = match opts.serial.first() {
        Some(spec) => spec.clone(),
        None if opts.nodefaults => SerialSpec::None,
        None => SerialSpec::Stdio,
    };
    let request = vmm::plan_request(&opts, &serial).map_err(|e| e.to_string())?;
    let plan = catalog.plan(&request).map_err(|e| e.to_string())?;
    if plan.family == machine::Family::None && !opts.start_paused {
        // QEMU's `none` has no chipset, console or firmware interface: nothing could run.
        return Err(format!(
            "machine type '{}' has no chipset to boot a kernel on; use it with -S to inspect it",
            plan.machine
        ));
    }
    let console = Console::open(&serial).map_err(|e| e.to_string())?;
    let trace_start = std::env::var_os("MACHINA_TRACE").map(|_| start);
    let outcome = runner::run(
        RunSpec {
            plan,
            kernel: opts.kernel.clone(),
            bundled_kernel: BUNDLED_GUEST,
            initrd: opts.initrd.clone(),
            cmdline: opts.append.clone(),
            no_reboot: opts.no_reboot,
            start_paused: opts.start_paused,
            trace_start,
        },
        console,
    )
    .map_err(|e| e.to_string())?;
    if let Some(start) = trace_start {
        eprintln!("machina-trace: exit us={}", start.elapsed().as_micros());
    }
    Ok(outcome.exit_code() as u8)
}
