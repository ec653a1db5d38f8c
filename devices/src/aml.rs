//! AML building blocks shared by the devices' DSDT fragments and the VMM's table builder.

use acpi_tables::{aml, Aml, AmlSink};
use machine::IsaDevicePlan;

/// Already-encoded AML spliced into a parent object.
pub struct RawAml(pub Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

/// A byte sink for AML and tables.
#[derive(Default)]
struct Buf(Vec<u8>);

impl AmlSink for Buf {
    fn byte(&mut self, byte: u8) {
        self.0.push(byte);
    }
}

/// The encoding of `table`.
pub fn bytes_of(table: &dyn Aml) -> Vec<u8> {
    let mut b = Buf::default();
    table.to_aml_bytes(&mut b);
    b.0
}

/// ACPI small resource `IRQNoFlags () {irq}` (edge, active high, exclusive: ISA style).
pub fn irq_no_flags(irq: u32) -> RawAml {
    let mask = 1u16.checked_shl(irq).unwrap_or(0);
    let [lo, hi] = mask.to_le_bytes();
    RawAml(vec![0x22, lo, hi])
}

/// `IO (Decode16, base, base, 1, len)` for each of an ISA device's port ranges.
pub fn io_ranges(dev: &IsaDevicePlan) -> Vec<aml::IO> {
    dev.io
        .iter()
        .map(|r| {
            let len = r.size.min(255) as u8;
            aml::IO::new(r.base as u16, r.base as u16, 1, len)
        })
        .collect()
}

/// An ISA device's IRQs as `IRQNoFlags` resources.
pub fn irqs(dev: &IsaDevicePlan) -> Vec<RawAml> {
    dev.irqs.iter().map(|&i| irq_no_flags(i)).collect()
}
