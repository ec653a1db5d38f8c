//! The machina VMM: KVM glue, direct boot, ACPI, the machine builder and the run loop.
//! The `machina` binary (src/main.rs) is a thin command-line front end over this library.

pub mod acpi;
pub mod acpi_cpus;
pub mod actions;
pub mod backends;
pub mod blockdev_json;
pub mod boot;
pub mod builder;
pub mod chardev_check;
pub mod cli;
pub mod config;
pub mod console;
pub mod control;
pub mod cpu_hotplug;
pub mod cpu_models;
pub mod cpuid;
pub mod daemon;
pub mod fdset;
pub mod firmware;
pub mod fw_cfg;
pub mod globals;
pub mod hotplug;
pub mod ide_devices;
pub mod interrupts;
pub mod iothread;
pub mod kvm_vm;
pub mod logging;
pub mod memory;
pub mod monitor;
pub mod netdev;
pub mod nic_devices;
pub mod objects;
pub mod qtest;
pub mod runner;
pub mod vcpu;
pub mod virtio_devices;
