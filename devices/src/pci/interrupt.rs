//! Interrupt delivery seams the VMM implements (vmm/src/interrupts.rs: resampling irqfds
//! for INTx, irqfds on GSI routes for MSI, the KVM_IRQ_LINE / KVM_SIGNAL_MSI ioctls where
//! no irqfd can be made); this crate stays free of KVM. INTx routing follows QEMU: swizzle through bridges to the root-bus slot, then
//! the chipset's slot/pin to PIRQ map, then the PIRQ route registers.

/// Delivers a message-signalled interrupt (MSI or MSI-X) as a memory write.
pub trait MsiSink: Send + Sync {
    fn send(&self, address: u64, data: u32);
}

/// Drives a level-triggered interrupt line (a GSI: PIC/IOAPIC input).
pub trait IntxSink: Send + Sync {
    fn set_level(&self, gsi: u32, level: bool);
}

/// Standard bridge swizzle (QEMU's pci_swizzle_map_irq_fn): pin (0 = INTA#) of a function at
/// `slot` behind a bridge appears on the bridge's own pin `(slot + pin) % 4`.
pub fn swizzle(slot: u8, pin0: u8) -> u8 {
    (slot.wrapping_add(pin0)) % 4
}

/// i440fx/PIIX3 root-bus map (QEMU hw/i386/pc_piix.c pc_pci_slot_get_pirq, formerly
/// pci_slot_get_pirq in hw/isa/piix.c): `(pin0 + slot - 1) & 3`, a PIRQ A-D index for a slot
/// and 0-based pin. Slot 1 INTA# is PIRQA; slot 0 wraps to PIRQD. SeaBIOS's
/// piix_pci_slot_get_irq assumes the same wiring (the slots of every bridge on the way up
/// added to the pin, which is the bridges' swizzle, then `slot - 1` at the root).
pub fn piix_map_irq(slot: u8, pin0: u8) -> u8 {
    slot.wrapping_add(pin0).wrapping_add(3) & 3
}

/// q35/ICH9 root-bus map (ich9_lpc_map_irq with the chipset-config reset values of
/// hw/isa/lpc_ich9.c ich9_cc_init/ich9_cc_update): slots 25..=31 use D{n}IR = 0x3210
/// (INTA-D -> PIRQ A-D) except D30 (the DMI-PCI bridge, PIRQ E-H); every other slot rotates
/// `(slot + pin0) % 4 + 4` over PIRQ E-H. Returns a PIRQ index 0..=7. SeaBIOS's
/// mch_pci_slot_get_irq assumes the same wiring.
pub fn ich9_map_irq(slot: u8, pin0: u8) -> u8 {
    match slot {
        30 => (pin0 & 3) + 4,
        25..=31 => pin0 & 3,
        _ => (slot.wrapping_add(pin0)) % 4 + 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_match_qemu() {
        // pc: (pin0 + slot - 1) & 3.
        assert_eq!(piix_map_irq(1, 0), 0);
        assert_eq!(piix_map_irq(1, 3), 3);
        assert_eq!(piix_map_irq(2, 0), 1);
        assert_eq!(piix_map_irq(3, 0), 2);
        assert_eq!(piix_map_irq(4, 0), 3);
        assert_eq!(piix_map_irq(5, 0), 0);
        assert_eq!(piix_map_irq(2, 3), 0);
        assert_eq!(piix_map_irq(0, 0), 3);
        assert_eq!(piix_map_irq(31, 3), 1);
        assert_eq!(ich9_map_irq(31, 0), 0);
        assert_eq!(ich9_map_irq(31, 3), 3);
        assert_eq!(ich9_map_irq(30, 1), 5);
        assert_eq!(ich9_map_irq(2, 0), 6);
        assert_eq!(ich9_map_irq(1, 0), 5);
        assert_eq!(swizzle(0, 0), 0);
        assert_eq!(swizzle(3, 2), 1);
    }
}
