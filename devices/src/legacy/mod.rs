//! ISA legacy devices the VMM emulates in user space (the PIC, PIT and IOAPIC live in KVM).

pub mod cmos;
pub mod fw_cfg;
pub mod i8042;
pub mod kind;
pub mod port92;
pub mod serial;
pub mod sink;
