//! The i8042 keyboard controller at 0x60/0x64, here for its reset line (command 0xfe), as
//! Linux's `reboot=k` and many firmwares use it. No keyboard is attached.

use crate::bus::BusDevice;
use crate::lifecycle::{Lifecycle, Request};
use vm_superio::{I8042Device, Trigger};

/// Turns the i8042's reset pulse into a machine reset request.
pub struct ResetLine(Lifecycle);

impl Trigger for ResetLine {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(Request::Reset);
        Ok(())
    }
}

/// Data port 0x60 and command/status port 0x64; map both ranges to one instance.
pub struct I8042 {
    controller: I8042Device<ResetLine>,
}

pub const DATA_PORT: u64 = 0x60;
pub const COMMAND_PORT: u64 = 0x64;

impl I8042 {
    pub fn new(lifecycle: Lifecycle) -> Self {
        Self {
            controller: I8042Device::new(ResetLine(lifecycle)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let port = base + offset;
        if let Some(b) = data.first_mut() {
            *b = self.controller.read((port - DATA_PORT) as u8);
        }
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let port = base + offset;
        if let (Some(&v), true) = (data.first(), (DATA_PORT..=COMMAND_PORT).contains(&port)) {
            let Ok(()) = self.controller.write((port - DATA_PORT) as u8, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_fe_resets() {
        let l = Lifecycle::new().unwrap();
        let mut kbc = I8042::new(l.clone());
        kbc.write(COMMAND_PORT, 0, &[0xd1]);
        assert_eq!(l.pending(), Request::None);
        kbc.write(COMMAND_PORT, 0, &[0xfe]);
        assert_eq!(l.take(), Request::Reset);
    }
}
