//! Ports that accept anything and read zero: POST code port 0x80 and the FPU-error port 0xf0.

use super::kind::{IsaBuilt, IsaContext, IsaError, IsaKind};
use crate::bus::BusDevice;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct SinkPort;

impl BusDevice for SinkPort {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
}

/// The POST code and FPU-error ports.
pub struct SinkKind;
pub static KIND: SinkKind = SinkKind;

impl IsaKind for SinkKind {
    fn names(&self) -> &'static [&'static str] {
        &["ioport80", "ioportF0"]
    }
    fn build(&self, _ctx: &mut IsaContext) -> Result<IsaBuilt, IsaError> {
        Ok(IsaBuilt::new(Arc::new(Mutex::new(SinkPort))))
    }
}
