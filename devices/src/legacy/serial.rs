//! The 16550 UART (vm-superio) on the I/O bus, with its output going to a shared sink so the
//! console survives a machine reset and its interrupt going out through an eventfd (irqfd).

use crate::bus::BusDevice;
use std::io::Write;
use std::sync::{Arc, Mutex};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// An interrupt line backed by an eventfd that the VMM registers as a KVM irqfd.
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Console output shared across machine resets (stdout, a file, a socket client, nothing).
#[derive(Clone)]
pub struct SharedWriter(pub Arc<Mutex<Box<dyn Write + Send>>>);

impl SharedWriter {
    pub fn new(writer: Box<dyn Write + Send>) -> Self {
        Self(Arc::new(Mutex::new(writer)))
    }

    /// Replace the destination (e.g. when a socket client connects).
    pub fn replace(&self, writer: Box<dyn Write + Send>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = writer;
    }
}

impl Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut w = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // A console whose reader went away must not stop the guest: drop the bytes.
        match w.write_all(buf) {
            Ok(()) => Ok(buf.len()),
            Err(_) => Ok(buf.len()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.0.lock().unwrap_or_else(|e| e.into_inner()).flush();
        Ok(())
    }
}

/// A COM port.
pub struct SerialPort {
    uart: Serial<EventFdTrigger, vm_superio::serial::NoEvents, SharedWriter>,
}

impl SerialPort {
    pub fn new(interrupt: EventFd, out: SharedWriter) -> Self {
        Self {
            uart: Serial::new(EventFdTrigger(interrupt), out),
        }
    }

    /// Feed bytes typed on the console into the receive FIFO; returns how many fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl BusDevice for SerialPort {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(first), Ok(offset)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.uart.read(offset);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let (Some(&value), Ok(offset)) = (data.first(), u8::try_from(offset)) {
            // A failed interrupt write only loses an edge the guest will poll past.
            let _ = self.uart.write(offset, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmits_and_receives() {
        let capture = Capture::default();
        let mut port = SerialPort::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            SharedWriter::new(Box::new(capture.clone())),
        );
        for b in b"hi\n" {
            port.write(0x3f8, 0, &[*b]);
        }
        assert_eq!(capture.0.lock().unwrap().as_slice(), b"hi\n");
        assert_eq!(port.enqueue_input(b"x"), 1);
        let mut lsr = [0u8];
        port.read(0x3f8, 5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut rbr = [0u8];
        port.read(0x3f8, 0, &mut rbr);
        assert_eq!(rbr[0], b'x');
        // Out-of-range offsets and empty accesses are ignored.
        port.write(0x3f8, 1 << 40, &[1]);
        port.write(0x3f8, 0, &[]);
    }
}
