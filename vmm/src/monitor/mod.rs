//! The machine-side QMP commands, registered on the `qmp` crate's server. Every answer about
//! machine types and layouts comes from the `machine` crate's catalog and plans; commands that
//! change the running machine are queued to the run loop through the controller.

mod actions;
pub mod balloon;
mod block;
mod chardev;
mod cpus;
mod hmp;
mod hotplug;
mod introspection;
mod lifecycle;
mod live;
mod net;
mod numa;
mod objects;
mod pci_info;
mod preconfig;
mod probe;
pub mod serial_ports;

use crate::control::Controller;
pub use block::{drive_size, drive_stats};
use qmp::{Registry, RegistryError};
use std::sync::Arc;

/// The full registry: qmp's built-ins plus every machine command.
pub fn registry(control: &Arc<Controller>) -> Result<Registry, RegistryError> {
    let mut reg = Registry::new();
    lifecycle::register(&mut reg, control)?;
    introspection::register(&mut reg, control)?;
    preconfig::register(&mut reg, control)?;
    pci_info::register(&mut reg, control)?;
    cpus::register(&mut reg, control)?;
    probe::register(&mut reg, control)?;
    block::register(&mut reg, control)?;
    chardev::register(&mut reg, control)?;
    hmp::register(&mut reg, control)?;
    net::register(&mut reg, control)?;
    hotplug::register(&mut reg, control)?;
    numa::register(&mut reg, control)?;
    objects::register(&mut reg, control)?;
    actions::register(&mut reg, control)?;
    live::register(&mut reg, control)?;
    live::register_fds(&mut reg)?;
    balloon::register(&mut reg, control)?;
    Ok(reg)
}
