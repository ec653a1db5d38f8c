//! Polled COM1 (16550) output: the guest's only output channel.

use core::fmt;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::port::{inb, outb};

const COM1: u16 = 0x3f8;
const THR: u16 = COM1; // transmit holding register (DLAB = 0)
const IER: u16 = COM1 + 1; // interrupt enable (DLAB = 0), divisor high (DLAB = 1)
const FCR: u16 = COM1 + 2; // FIFO control (write)
const IIR: u16 = COM1 + 2; // interrupt identification (read)
const LCR: u16 = COM1 + 3;
const MCR: u16 = COM1 + 4;
const LSR: u16 = COM1 + 5;
const LSR_THR_EMPTY: u8 = 1 << 5;
/// Polls of LSR before writing anyway: a VMM whose UART never reports
/// "empty" must not hang the guest, it merely risks a dropped byte.
const MAX_POLLS: u32 = 100_000;
/// IIR bits 7:6 read 0b11 when a 16550 FIFO is present and enabled.
const IIR_FIFO_ENABLED: u8 = 0xc0;
const FIFO_DEPTH: u32 = 16;

/// Bytes the UART accepts per "THR empty" poll: 16 with a working FIFO and
/// one without. Every port access is a VM exit (expensive under PVM), so
/// batching nearly halves the cost of output. Zero (not yet probed) acts
/// as one.
static BATCH: AtomicU32 = AtomicU32::new(0);
/// Bytes that may still be written before LSR must be polled again.
static CREDIT: AtomicU32 = AtomicU32::new(0);

/// Programs 115200 8N1, no interrupts, FIFOs on. Firmware (SeaBIOS) may
/// have left the UART in any state; our VMM may not need this at all.
pub fn init() {
    outb(IER, 0);
    outb(LCR, 0x80); // DLAB on
    outb(THR, 1); // divisor low: 115200 baud
    outb(IER, 0); // divisor high
    outb(LCR, 0x03); // DLAB off, 8 data bits, no parity, 1 stop bit
    outb(FCR, 0x07); // enable and clear both FIFOs
    outb(MCR, 0x03); // DTR | RTS, loopback off
    let batch = if inb(IIR) & IIR_FIFO_ENABLED == IIR_FIFO_ENABLED {
        FIFO_DEPTH
    } else {
        1
    };
    BATCH.store(batch, Ordering::Relaxed);
    CREDIT.store(0, Ordering::Relaxed);
}

/// Writes one byte. When the credit is spent, waits (boundedly) for LSR's
/// "THR empty", which in FIFO mode means the whole transmit FIFO is free.
pub fn write_byte(byte: u8) {
    let mut credit = CREDIT.load(Ordering::Relaxed);
    if credit == 0 {
        let mut polls = 0;
        while inb(LSR) & LSR_THR_EMPTY == 0 && polls < MAX_POLLS {
            core::hint::spin_loop();
            polls += 1;
        }
        credit = BATCH.load(Ordering::Relaxed).max(1);
    }
    outb(THR, byte);
    CREDIT.store(credit - 1, Ordering::Relaxed);
}

/// Zero-sized handle implementing `fmt::Write` over COM1.
pub struct Serial;

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        s.bytes().for_each(write_byte);
        Ok(())
    }
}

/// Prints to COM1 without a newline.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        // Serial output cannot fail.
        let _ = core::fmt::Write::write_fmt(&mut $crate::serial::Serial, format_args!($($arg)*));
    }};
}

/// Prints a line to COM1; lines always end with "\n".
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => {{
        $crate::print!($($arg)*);
        $crate::print!("\n");
    }};
}

/// Displays raw bytes as one line: bytes outside printable ASCII become '?'
/// so that guest-controlled data can never break the line format.
pub struct Printable<'a>(pub &'a [u8]);

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            let c = if (0x20..0x7f).contains(&b) { b } else { b'?' };
            fmt::Write::write_char(f, char::from(c))?;
        }
        Ok(())
    }
}

/// Displays a fixed-width firmware identifier (ACPI signature, OEM ID) as
/// a single key=value token: trailing spaces/NULs are dropped, any other
/// byte outside '!'..='~' becomes '_'.
pub struct Token<'a>(pub &'a [u8]);

impl fmt::Display for Token<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = self
            .0
            .iter()
            .rposition(|&b| b != b' ' && b != 0)
            .map_or(0, |i| i + 1);
        for &b in &self.0[..end] {
            let c = if b.is_ascii_graphic() { b } else { b'_' };
            fmt::Write::write_char(f, char::from(c))?;
        }
        Ok(())
    }
}
