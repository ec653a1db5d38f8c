//! The machine-side QMP commands, registered on the `qmp` crate's server. Every answer about
//! machine types and layouts comes from the `machine` crate's catalog and plans; commands that
//! change the running machine are queued to the run loop through the controller.

mod introspection;
mod lifecycle;
mod pci_info;
mod preconfig;

use crate::control::Controller;
use qmp::{Registry, RegistryError};
use std::sync::Arc;

/// The full registry: qmp's built-ins plus every machine command.
pub fn registry(control: &Arc<Controller>) -> Result<Registry, RegistryError> {
    let mut reg = Registry::new();
    lifecycle::register(&mut reg, control)?;
    introspection::register(&mut reg, control)?;
    preconfig::register(&mut reg, control)?;
    pci_info::register(&mut reg, control)?;
    Ok(reg)
}
