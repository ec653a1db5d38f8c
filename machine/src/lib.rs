//! Machine types as data: the catalog of machine and device types, the plan of a machine
//! (buses, PCI functions, ISA devices, memory map) and QEMU's placement rules.
//!
//! Pure Rust, no KVM. The plan computed here is the single source of truth: the VMM's
//! builder, `-machine help` / `-device help` and every QMP answer come from it.

pub mod plan;

pub use plan::*;
