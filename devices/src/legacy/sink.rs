//! Ports that accept anything and read zero: POST code port 0x80 and the FPU-error port 0xf0.

use crate::bus::BusDevice;

#[derive(Default)]
pub struct SinkPort;

impl BusDevice for SinkPort {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
}
