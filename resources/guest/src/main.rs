//! machina-guest: a tiny PVH kernel that probes the virtual machine the
//! machina VMM builds and reports on COM1 in a line-oriented format (see
//! README.md), then powers off.

#![no_std]
#![no_main]

#[macro_use]
mod serial;

mod acpi;
mod boot;
mod cmdline;
mod cpu_hotplug;
mod cpuid;
mod fuzz;
mod hotplug;
mod mem;
mod pam;
mod pci;
mod phys;
mod port;
mod power;
mod start_info;
mod tsc;
mod virtio;

use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use cmdline::Cmdline;
use serial::Printable;
use start_info::StartInfo;

const VERSION: &str = "0.1";
const DEFAULT_TESTS: &[u8] = b"pci-scan";

/// start_info.rsdp_paddr, kept for the panic handler's power off.
static RSDP_HINT: AtomicU64 = AtomicU64::new(0);
static PANICKING: AtomicBool = AtomicBool::new(false);

/// Rust entry, called at CPL 3 by the stub in boot.rs with the physical
/// address of `hvm_start_info`.
#[no_mangle]
pub extern "C" fn guest_main(start_info: u64) -> ! {
    serial::init();
    let info = StartInfo::read(start_info);
    let cmdline = info.as_ref().map_or(&[][..], StartInfo::cmdline);
    println!(
        "machina-guest: version={} cmdline=\"{}\"",
        VERSION,
        Printable(cmdline)
    );
    let rsdp_hint = match &info {
        Ok(info) => info.rsdp_paddr,
        Err(start_info::Error::Unmapped) => {
            println!("error: start_info unmapped addr=0x{:x}", start_info);
            0
        }
        Err(start_info::Error::BadMagic(magic)) => {
            println!(
                "error: start_info bad magic=0x{:x} addr=0x{:x}",
                magic, start_info
            );
            0
        }
    };
    RSDP_HINT.store(rsdp_hint, Ordering::Relaxed);

    let cmdline = Cmdline::new(cmdline);
    let tests = cmdline.get(b"machina.test").unwrap_or(DEFAULT_TESTS);
    for name in tests.split(|&b| b == b',').filter(|n| !n.is_empty()) {
        match name {
            b"pci-scan" => pci::scan(cmdline.get(b"machina.pci-bars") == Some(b"1")),
            b"pci-scan-ecam" => pci::scan_ecam(rsdp_hint),
            b"acpi" => acpi::report(rsdp_hint),
            b"ecam" => pci::ecam_test(rsdp_hint),
            b"virtio" => virtio::run(&cmdline),
            b"cpuid" => cpuid::report(),
            b"virtio-datapath" => virtio::datapath::run(&cmdline),
            b"virtio-bench" => virtio::bench::run(&cmdline),
            b"config-fuzz" => fuzz::fuzz(&cmdline, rsdp_hint),
            b"pam" => pam::run(),
            b"hotplug" => hotplug::run(&cmdline, rsdp_hint),
            b"cpu-hotplug" => cpu_hotplug::run(&cmdline, rsdp_hint),
            b"reset" => power::reset(),
            b"powerbutton" => power::wait_power_button(rsdp_hint),
            b"triple-fault" => power::triple_fault(),
            b"watchdog" => power::watchdog(),
            b"echo" => println!(
                "echo: {}",
                Printable(cmdline.get(b"machina.echo").unwrap_or_default())
            ),
            b"panic" => panic!("requested by machina.test=panic"),
            b"start-info" => match &info {
                Ok(info) => info.report(),
                Err(_) => println!("start-info: invalid"),
            },
            _ => {
                println!("error: unknown test={}", Printable(name));
                break;
            }
        }
    }
    power::poweroff(rsdp_hint)
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    // A panic while panicking (e.g. inside power off) must not recurse.
    if PANICKING.swap(true, Ordering::Relaxed) {
        power::hang();
    }
    print!("panic: {}", info.message());
    if let Some(loc) = info.location() {
        print!(" at {}:{}", loc.file(), loc.line());
    }
    println!();
    power::poweroff(RSDP_HINT.load(Ordering::Relaxed))
}

/// The prebuilt `core` is compiled for unwinding and its unwind tables name
/// this symbol. With panic=abort nothing ever unwinds, so it is never
/// called; release builds drop the reference through LTO, debug builds need
/// the symbol to link.
#[no_mangle]
extern "C" fn rust_eh_personality() {}
