//! ISA legacy devices the VMM emulates in user space (the PIC, PIT and IOAPIC live in KVM).

pub mod cmos;
pub mod fw_cfg;
pub mod i8042;
pub mod ib700;
pub mod kind;
pub mod port92;
pub mod pvpanic;
pub mod serial;
pub mod sink;

/// An ISA interrupt line driven by level (the RTC's IRQ 8): an irqfd under KVM (a rising
/// edge injects), the test's view under qtest.
pub trait IrqLine: Send + Sync {
    fn set_level(&self, level: bool);
}
