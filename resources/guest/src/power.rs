//! Leaving the guest: ACPI power off, chipset reset, triple fault.

use crate::acpi::{self, AddressSpace};
use crate::phys;
use crate::port::{inw, outb, outw};
use crate::tsc::rdtsc;
use core::sync::atomic::{AtomicU64, Ordering};

/// PM1 control value for S5 as the brief defines it: SLP_TYP = 0 (QEMU's
/// and machina's \_S5 value) and SLP_EN.
const PM1_CNT_S5: u16 = 1 << 13;
/// SLEEP_CONTROL_REG (hardware-reduced ACPI): SLP_EN and the SLP_TYP shift.
const SLEEP_CTL_SLP_EN: u8 = 1 << 5;
const SLEEP_CTL_SLP_TYP_SHIFT: u8 = 2;
/// QEMU's historical "isa-debug-exit"-free power-off port (PIIX4 PM base).
const FALLBACK_PM1_CNT: u16 = 0x604;
/// Reset Control Register of PIIX/ICH chipsets.
const RESET_CONTROL: u16 = 0xcf9;

/// Gives the VMM time to act on an exit request before declaring failure:
/// QEMU, for one, stops the vCPU asynchronously after the port write.
fn grace_period() {
    // About 0.1-0.3 s of TSC ticks on any plausible host; the iteration
    // cap bounds the wait should the TSC not advance.
    const TICKS: u64 = 1 << 29;
    const MAX_SPINS: u32 = 1 << 26;
    let start = rdtsc();
    let mut spins = 0;
    while rdtsc().wrapping_sub(start) < TICKS && spins < MAX_SPINS {
        core::hint::spin_loop();
        spins += 1;
    }
}

/// Spins forever. `hlt` would #GP at CPL 3 and triple fault.
pub fn hang() -> ! {
    loop {
        core::hint::spin_loop();
    }
}

/// Writes `port` if it is a valid 16-bit I/O port address.
fn write_pm1(port: u64, value: u16) -> bool {
    match u16::try_from(port) {
        Ok(p) if p != 0 => {
            outw(p, value);
            true
        }
        _ => false,
    }
}

/// PWRBTN_STS in PM1 status (write 1 to clear).
const PM1_STS_PWRBTN: u16 = 1 << 8;

/// Waits for the ACPI power button (the VMM's `system_powerdown`) by polling PM1a status;
/// the guest takes no interrupts, so it polls the status bit an SCI would announce.
pub fn wait_power_button(rsdp_hint: u64) {
    let Some(evt) = acpi::find_fadt(rsdp_hint)
        .and_then(|f| u16::try_from(f.pm1a_evt).ok())
        .filter(|&p| p != 0)
    else {
        println!("powerbutton: no-acpi");
        return;
    };
    println!("powerbutton: waiting pm1a_evt={:#x}", evt);
    while inw(evt) & PM1_STS_PWRBTN == 0 {
        core::hint::spin_loop();
    }
    outw(evt, PM1_STS_PWRBTN);
    println!("powerbutton: pressed");
}

/// PM1a/PM1b control ports recorded by [`cache`] (0 = none).
static CACHED_PM1A: AtomicU64 = AtomicU64::new(0);
static CACHED_PM1B: AtomicU64 = AtomicU64::new(0);

/// Records the FADT's PM1 control ports now, for a power off after a test
/// that may have hidden the ACPI tables (config-fuzz).
pub fn cache(rsdp_hint: u64) {
    if let Some(fadt) = acpi::find_fadt(rsdp_hint) {
        CACHED_PM1A.store(fadt.pm1a_cnt, Ordering::Relaxed);
        CACHED_PM1B.store(fadt.pm1b_cnt, Ordering::Relaxed);
    }
}

/// Powers off via ACPI S5 (or the 0x604 fallback) and never returns.
pub fn poweroff(rsdp_hint: u64) -> ! {
    let cached = CACHED_PM1A.load(Ordering::Relaxed);
    if cached != 0 {
        println!("poweroff: pm1a_cnt=0x{:x}", cached);
        write_pm1(cached, PM1_CNT_S5);
        write_pm1(CACHED_PM1B.load(Ordering::Relaxed), PM1_CNT_S5);
        grace_period();
        println!("poweroff: failed");
        hang()
    }
    match acpi::find_fadt(rsdp_hint) {
        Some(fadt) if fadt.pm1a_cnt != 0 => {
            println!("poweroff: pm1a_cnt=0x{:x}", fadt.pm1a_cnt);
            write_pm1(fadt.pm1a_cnt, PM1_CNT_S5);
            write_pm1(fadt.pm1b_cnt, PM1_CNT_S5);
        }
        // Hardware-reduced ACPI (no PM1 blocks): the sleep control register
        // with SLP_TYP from \_S5, as e.g. QEMU microvm expects.
        Some(fadt) if fadt.sleep_ctl.addr != 0 => {
            let slp_typ = acpi::s5_slp_typ(fadt.dsdt).unwrap_or(0) & 7;
            let value = SLEEP_CTL_SLP_EN | slp_typ << SLEEP_CTL_SLP_TYP_SHIFT;
            let addr = fadt.sleep_ctl.addr;
            match fadt.sleep_ctl.space {
                AddressSpace::Io => {
                    println!(
                        "poweroff: sleep_ctl=0x{:x} space=io value=0x{:x}",
                        addr, value
                    );
                    if let Ok(port) = u16::try_from(addr) {
                        outb(port, value);
                    }
                }
                AddressSpace::Memory => {
                    println!(
                        "poweroff: sleep_ctl=0x{:x} space=mem value=0x{:x}",
                        addr, value
                    );
                    phys::mmio_write8(addr, value);
                }
                AddressSpace::Other(id) => {
                    println!("poweroff: sleep_ctl=0x{:x} space={} unsupported", addr, id)
                }
            }
        }
        _ => {
            println!("poweroff: no-acpi");
            outw(FALLBACK_PM1_CNT, PM1_CNT_S5);
        }
    }
    grace_period();
    println!("poweroff: failed");
    hang()
}

/// The `reset` test: chipset reset through port 0xCF9.
pub fn reset() {
    println!("reset: now");
    // Bit 1 (SYS_RST) selects a hard reset, bit 2 (RST_CPU) triggers it;
    // the 0x02 -> 0x06 edge is what real chipsets require.
    outb(RESET_CONTROL, 0x02);
    outb(RESET_CONTROL, 0x06);
    grace_period();
    println!("reset: failed");
}

/// The `watchdog` test: start the ib700 watchdog (`-device ib700`) with a 2 s period and
/// never ping it; the VMM's `-watchdog-action` ends the wait.
pub fn watchdog() -> ! {
    println!("watchdog: armed");
    // 0x443: enable; the low nibble 14 selects 30 - 2 * 14 = 2 s.
    outb(0x443, 14);
    hang()
}

/// The `triple-fault` test: with no IDT any exception escalates to a
/// triple fault, which the VMM must report as a failed guest.
pub fn triple_fault() -> ! {
    println!("triple-fault: now");
    // SAFETY: ud2 raises #UD; with a zero-limit IDT the CPU cannot deliver
    // it (nor the resulting #GP/#DF) and shuts down. No Rust state is
    // observed afterwards.
    unsafe { core::arch::asm!("ud2", options(noreturn, nomem, nostack)) }
}
