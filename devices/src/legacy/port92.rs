//! System control port A (0x92): fast A20 gate (bit 1) and fast reset (bit 0).

use super::kind::{IsaBuilt, IsaContext, IsaError, IsaKind};
use crate::bus::BusDevice;
use crate::lifecycle::{Lifecycle, Request};
use std::sync::{Arc, Mutex};

pub struct Port92 {
    value: u8,
    lifecycle: Lifecycle,
}

impl Port92 {
    pub fn new(lifecycle: Lifecycle) -> Self {
        // A20 enabled, as firmware leaves it.
        Self {
            value: 0x02,
            lifecycle,
        }
    }
}

impl BusDevice for Port92 {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = self.value;
        }
    }

    fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
        if let Some(&v) = data.first() {
            self.value = v & 0x02;
            if v & 0x01 != 0 {
                self.lifecycle.request(Request::Reset);
            }
        }
    }
}

/// System control port A.
pub struct Port92Kind;
pub static KIND: Port92Kind = Port92Kind;

impl IsaKind for Port92Kind {
    fn names(&self) -> &'static [&'static str] {
        &["port92"]
    }
    fn build(&self, ctx: &mut IsaContext) -> Result<IsaBuilt, IsaError> {
        Ok(IsaBuilt::new(Arc::new(Mutex::new(Port92::new(
            ctx.lifecycle.clone(),
        )))))
    }
}
