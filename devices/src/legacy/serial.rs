//! The 16550 UART (vm-superio) on the I/O bus, with its output going to a shared sink so the
//! console survives a machine reset and its interrupt going out through an eventfd (irqfd).

use super::kind::{IsaBuilt, IsaContext, IsaError, IsaKind};
use crate::aml;
use crate::bus::BusDevice;
use acpi_tables::{aml as a, Aml};
use machine::IsaDevicePlan;
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

/// COM port number (1-based) of a serial port at `base`, as QEMU's isa-serial numbers its
/// index: the standard bases 0x3f8, 0x2f8, 0x3e8, 0x2e8, then the order of appearance.
fn com_number(base: u64, nth: usize) -> usize {
    match base {
        0x3f8 => 1,
        0x2f8 => 2,
        0x3e8 => 3,
        0x2e8 => 4,
        _ => nth + 1,
    }
}

/// The 16550 COM port kind. Only the first port has the console behind it.
pub struct SerialKind;
pub static KIND: SerialKind = SerialKind;

impl IsaKind for SerialKind {
    fn names(&self) -> &'static [&'static str] {
        &["isa-serial"]
    }
    fn build(&self, ctx: &mut IsaContext) -> Result<IsaBuilt, IsaError> {
        let evt = ctx.required_irq(0)?;
        let console = ctx.console.take();
        let first = console.is_some();
        let out = console.unwrap_or_else(|| SharedWriter::new(Box::new(std::io::sink())));
        let port = Arc::new(Mutex::new(SerialPort::new(evt, out)));
        let mut built = IsaBuilt::new(port.clone());
        built.console = first.then_some(port);
        Ok(built)
    }
    fn console(&self) -> bool {
        true
    }
    fn aml_order(&self) -> u8 {
        3
    }
    /// `COMn` (PNP0501) with its ports and IRQ.
    fn aml(&self, dev: &IsaDevicePlan, nth: usize) -> Vec<u8> {
        let n = com_number(dev.io.first().map_or(0, |r| r.base), nth);
        let ios = aml::io_ranges(dev);
        let irqs = aml::irqs(dev);
        let mut res: Vec<&dyn Aml> = ios.iter().map(|i| i as &dyn Aml).collect();
        res.extend(irqs.iter().map(|i| i as &dyn Aml));
        let crs = a::ResourceTemplate::new(res);
        let hid = a::Name::new("_HID".into(), &a::EISAName::new("PNP0501"));
        let uid = a::Name::new("_UID".into(), &(n as u32));
        let sta = a::Name::new("_STA".into(), &0x0fu8);
        let crs = a::Name::new("_CRS".into(), &crs);
        let name = format!("COM{}", n.min(9));
        aml::bytes_of(&a::Device::new(
            name.as_str().into(),
            vec![&hid, &uid, &sta, &crs],
        ))
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
