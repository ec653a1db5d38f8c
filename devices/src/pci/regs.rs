//! Standard configuration-space register offsets and bits (PCI Local Bus 3.0, PCIe 4.0).

pub const VENDOR_ID: usize = 0x00;
pub const DEVICE_ID: usize = 0x02;
pub const COMMAND: usize = 0x04;
pub const STATUS: usize = 0x06;
pub const REVISION_ID: usize = 0x08;
pub const CLASS_PROG: usize = 0x09;
pub const CACHE_LINE_SIZE: usize = 0x0c;
pub const LATENCY_TIMER: usize = 0x0d;
pub const HEADER_TYPE: usize = 0x0e;
pub const BAR0: usize = 0x10;
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
pub const SUBSYSTEM_ID: usize = 0x2e;
pub const ROM_ADDRESS: usize = 0x30;
pub const CAPABILITY_LIST: usize = 0x34;
pub const ROM_ADDRESS1: usize = 0x38;
pub const INTERRUPT_LINE: usize = 0x3c;
pub const INTERRUPT_PIN: usize = 0x3d;

/// End of the standard header; QEMU makes everything above it writable by default.
pub const HEADER_SIZE: usize = 0x40;

// Type-1 (bridge) header.
pub const PRIMARY_BUS: usize = 0x18;
pub const SECONDARY_BUS: usize = 0x19;
pub const SUBORDINATE_BUS: usize = 0x1a;
pub const SEC_LATENCY_TIMER: usize = 0x1b;
pub const IO_BASE: usize = 0x1c;
pub const IO_LIMIT: usize = 0x1d;
pub const SEC_STATUS: usize = 0x1e;
pub const MEMORY_BASE: usize = 0x20;
pub const MEMORY_LIMIT: usize = 0x22;
pub const PREF_MEMORY_BASE: usize = 0x24;
pub const PREF_MEMORY_LIMIT: usize = 0x26;
pub const PREF_BASE_UPPER32: usize = 0x28;
pub const PREF_LIMIT_UPPER32: usize = 0x2c;
pub const IO_BASE_UPPER16: usize = 0x30;
pub const IO_LIMIT_UPPER16: usize = 0x32;
pub const BRIDGE_CONTROL: usize = 0x3e;

pub const HEADER_TYPE_MULTI_FUNCTION: u8 = 0x80;
pub const HEADER_TYPE_NORMAL: u8 = 0;
pub const HEADER_TYPE_BRIDGE: u8 = 1;

pub const COMMAND_IO: u16 = 0x1;
pub const COMMAND_MEMORY: u16 = 0x2;
pub const COMMAND_MASTER: u16 = 0x4;
pub const COMMAND_SERR: u16 = 0x100;
pub const COMMAND_INTX_DISABLE: u16 = 0x400;

pub const STATUS_INTERRUPT: u16 = 0x08;
pub const STATUS_CAP_LIST: u16 = 0x10;
pub const STATUS_66MHZ: u16 = 0x20;
pub const STATUS_FAST_BACK: u16 = 0x80;
pub const STATUS_PARITY: u16 = 0x100;
pub const STATUS_DEVSEL_MEDIUM: u16 = 0x200;
pub const STATUS_SIG_TARGET_ABORT: u16 = 0x800;
pub const STATUS_REC_TARGET_ABORT: u16 = 0x1000;
pub const STATUS_REC_MASTER_ABORT: u16 = 0x2000;
pub const STATUS_SIG_SYSTEM_ERROR: u16 = 0x4000;
pub const STATUS_DETECTED_PARITY: u16 = 0x8000;

pub const BAR_SPACE_IO: u32 = 0x1;
pub const BAR_MEM_TYPE_64: u32 = 0x4;
pub const BAR_MEM_PREFETCH: u32 = 0x8;
pub const ROM_ADDRESS_ENABLE: u32 = 0x1;

pub const BRIDGE_CTL_PARITY: u16 = 0x01;
pub const BRIDGE_CTL_SERR: u16 = 0x02;
pub const BRIDGE_CTL_ISA: u16 = 0x04;
pub const BRIDGE_CTL_VGA: u16 = 0x08;
pub const BRIDGE_CTL_VGA_16BIT: u16 = 0x10;
pub const BRIDGE_CTL_MASTER_ABORT: u16 = 0x20;
pub const BRIDGE_CTL_BUS_RESET: u16 = 0x40;
pub const BRIDGE_CTL_FAST_BACK: u16 = 0x80;
pub const BRIDGE_CTL_DISCARD: u16 = 0x100;
pub const BRIDGE_CTL_SEC_DISCARD: u16 = 0x200;
pub const BRIDGE_CTL_DISCARD_STATUS: u16 = 0x400;
pub const BRIDGE_CTL_DISCARD_SERR: u16 = 0x800;

pub const PREF_RANGE_TYPE_64: u16 = 0x1;

// Capability IDs.
pub const CAP_ID_PM: u8 = 0x01;
pub const CAP_ID_MSI: u8 = 0x05;
pub const CAP_ID_SLOTID: u8 = 0x04;
pub const CAP_ID_SHPC: u8 = 0x0c;
pub const CAP_ID_SSVID: u8 = 0x0d;
pub const CAP_ID_EXP: u8 = 0x10;
pub const CAP_ID_MSIX: u8 = 0x11;
pub const CAP_ID_SATA: u8 = 0x12;

// Extended capability IDs.
pub const EXT_CAP_ID_ERR: u16 = 0x0001;
pub const EXT_CAP_ID_DSN: u16 = 0x0003;
pub const EXT_CAP_ID_ACS: u16 = 0x000d;

/// First byte of PCIe extended configuration space.
pub const EXT_CONFIG_START: usize = 0x100;
