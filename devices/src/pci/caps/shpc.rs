//! Standard Hot-Plug Controller of pci-bridge and pcie-pci-bridge (QEMU's hw/pci/shpc.c):
//! the SHPC capability (dword select/data window into the registers) and the register file
//! in BAR0. Slots 1..=31 map to devices 1..=31 of the secondary bus; cold-plugged slots read
//! as enabled with power on, empty ones as disabled with the MRL open. Commands complete at
//! once. Hot-plug follows QEMU 10.0: a hot-added device closes the MRL and latches the
//! presence, MRL and button events; `device_del` presses the attention button (or frees a
//! slot that is already off); a slot command that turns a slot off (disabled, power LED
//! off) frees its devices, which the bridge reports for the VMM to remove.

use crate::pci::config::PciConfig;
use crate::pci::regs::CAP_ID_SHPC;
use crate::pci::PciError;

pub const CAP_SIZE: usize = 8;
const CAP_DWORD_SELECT: usize = 2;
const CAP_DWORD_DATA: usize = 4;

pub const NSLOTS: usize = 31;
/// Register file size: 0x24 bytes of controller registers plus one dword per slot.
pub const REGS_SIZE: usize = slot_reg(NSLOTS);
/// BAR0: the register file rounded up to a power of two.
pub const BAR_SIZE: u64 = 0x100;

const BASE_OFFSET: usize = 0x00;
const SLOTS_33: usize = 0x04;
const SLOTS_66: usize = 0x08;
const NSLOTS_REG: usize = 0x0c;
const FIRST_DEV: usize = 0x0d;
const PHYS_SLOT: usize = 0x0e;
const PHYS_NUM_UP: u16 = 0x2000;
const PHYS_MRL: u16 = 0x4000;
const PHYS_BUTTON: u16 = 0x8000;
const SEC_BUS: usize = 0x10;
const SEC_BUS_33: u8 = 0;
const SEC_BUS_MASK: u8 = 0x7;
const PROG_IFC: usize = 0x13;
const PROG_IFC_1_0: u8 = 1;
const CMD_CODE: usize = 0x14;
const CMD_TRGT: usize = 0x15;
const CMD_TRGT_MAX: u8 = 0x1f;
const CMD_STATUS: usize = 0x16;
const CMD_STATUS_ALL: u16 = 0x000f;
const CMD_STATUS_INVALID_CMD: u16 = 0x4;
const CMD_STATUS_INVALID_MODE: u16 = 0x8;
const INT_LOCATOR: usize = 0x18;
const INT_COMMAND: u32 = 0x1;
const SERR_INT: usize = 0x20;
const INT_DIS: u32 = 0x1;
const SERR_DIS: u32 = 0x2;
const CMD_INT_DIS: u32 = 0x4;
const ARB_SERR_DIS: u32 = 0x8;
const CMD_DETECTED: u32 = 0x1_0000;
const ARB_DETECTED: u32 = 0x2_0000;

const fn slot_reg(slot: usize) -> usize {
    0x24 + slot * 4
}
const fn event_latch(slot: usize) -> usize {
    slot_reg(slot) + 2
}
const fn event_disable(slot: usize) -> usize {
    slot_reg(slot) + 3
}

const STATE_MASK: u16 = 0x03;
const STATE_NO: u8 = 0;
const STATE_PWRONLY: u8 = 1;
const STATE_ENABLED: u8 = 2;
const STATE_DISABLED: u8 = 3;
const PWR_LED_MASK: u16 = 0x0c;
const ATTN_LED_MASK: u16 = 0x30;
const LED_NO: u8 = 0;
const LED_ON: u8 = 1;
const LED_BLINK: u8 = 2;
const LED_OFF: u8 = 3;
const STATUS_MRL_OPEN: u16 = 0x100;
const STATUS_66: u16 = 0x200;
const STATUS_PRSNT_MASK: u16 = 0xc00;
const PRSNT_EMPTY: u8 = 3;
const PRSNT_7_5W: u8 = 0;
/// Presence, isolated fault, button, MRL and connected fault: latched slot events.
const SLOT_EVENTS: u8 = 0x1f;
const EVENT_PRESENCE: u8 = 0x01;
const EVENT_BUTTON: u8 = 0x04;
const EVENT_MRL: u8 = 0x08;
/// The events plus the two SERR disables.
const SLOT_EVENT_DISABLES: u8 = 0x7f;

pub struct Shpc {
    /// Offset of the SHPC capability in config space.
    cap: usize,
    regs: [u8; REGS_SIZE],
    wmask: [u8; REGS_SIZE],
    w1cmask: [u8; REGS_SIZE],
    /// Slots (bit n = device n on the secondary bus) with a device plugged.
    populated: u32,
    /// Level last signalled, so MSI is sent on changes only.
    requested: bool,
    /// PCI slots (bit n = device n) a slot command turned off since `take_freed`.
    freed: u32,
}

/// Why the controller refuses `device_del` (shpc_device_unplug_request_cb).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnplugError {
    /// "Hot-unplug failed: guest is busy (power indicator blinking)".
    Busy,
    /// The device is in no slot the controller has (slot 0 or past the last).
    NoSlot,
}

impl Shpc {
    /// shpc_init: add the capability at `offset` and set up the register file.
    pub fn new(config: &mut PciConfig, offset: usize) -> Result<Self, PciError> {
        config.add_capability(CAP_ID_SHPC, offset, CAP_SIZE)?;
        config.set_wmask_u8(offset + CAP_DWORD_SELECT, 0xff);
        config.set_wmask_u32(offset + CAP_DWORD_DATA, 0xffff_ffff);
        let mut s = Self {
            cap: offset,
            regs: [0; REGS_SIZE],
            wmask: [0; REGS_SIZE],
            w1cmask: [0; REGS_SIZE],
            populated: 0,
            requested: false,
            freed: 0,
        };
        s.wmask[CMD_CODE] = 0xff;
        s.wmask[CMD_TRGT] = CMD_TRGT_MAX;
        put32(
            &mut s.wmask,
            SERR_INT,
            INT_DIS | SERR_DIS | CMD_INT_DIS | ARB_SERR_DIS,
        );
        put32(&mut s.w1cmask, SERR_INT, CMD_DETECTED | ARB_DETECTED);
        for i in 0..NSLOTS {
            s.wmask[event_disable(i)] = SLOT_EVENT_DISABLES;
            s.w1cmask[event_latch(i)] = SLOT_EVENTS;
        }
        s.reset(config);
        Ok(s)
    }

    pub fn cap_offset(&self) -> usize {
        self.cap
    }

    /// Which secondary-bus devices are present (bit n = device n), for the slot states.
    pub fn set_populated(&mut self, devices: u32) {
        self.populated = devices;
    }

    fn slot_status(&self, slot: usize) -> u16 {
        get16(&self.regs, slot_reg(slot))
    }

    fn get_status(&self, slot: usize, mask: u16) -> u8 {
        ((self.slot_status(slot) & mask) >> mask.trailing_zeros()) as u8
    }

    fn set_status(&mut self, slot: usize, value: u8, mask: u16) {
        let v =
            (self.slot_status(slot) & !mask) | ((u16::from(value) << mask.trailing_zeros()) & mask);
        put16(&mut self.regs, slot_reg(slot), v);
    }

    /// shpc_reset.
    pub fn reset(&mut self, config: &mut PciConfig) {
        self.regs = [0; REGS_SIZE];
        put32(&mut self.regs, BASE_OFFSET, 0);
        self.regs[NSLOTS_REG] = NSLOTS as u8;
        put32(&mut self.regs, SLOTS_33, NSLOTS as u32);
        put32(&mut self.regs, SLOTS_66, 0);
        self.regs[FIRST_DEV] = 1;
        put16(
            &mut self.regs,
            PHYS_SLOT,
            1 | PHYS_NUM_UP | PHYS_MRL | PHYS_BUTTON,
        );
        put32(
            &mut self.regs,
            SERR_INT,
            INT_DIS | SERR_DIS | CMD_INT_DIS | ARB_SERR_DIS,
        );
        self.regs[PROG_IFC] = PROG_IFC_1_0;
        put16(&mut self.regs, SEC_BUS, u16::from(SEC_BUS_33));
        for i in 0..NSLOTS {
            self.regs[event_disable(i)] = SLOT_EVENT_DISABLES;
            if self.populated & (1 << (i + 1)) != 0 {
                self.set_status(i, STATE_ENABLED, STATE_MASK);
                self.set_status(i, 0, STATUS_MRL_OPEN);
                self.set_status(i, PRSNT_7_5W, STATUS_PRSNT_MASK);
                self.set_status(i, LED_ON, PWR_LED_MASK);
            } else {
                self.set_status(i, STATE_DISABLED, STATE_MASK);
                self.set_status(i, 1, STATUS_MRL_OPEN);
                self.set_status(i, PRSNT_EMPTY, STATUS_PRSNT_MASK);
                self.set_status(i, LED_OFF, PWR_LED_MASK);
            }
            self.set_status(i, LED_OFF, ATTN_LED_MASK);
            self.set_status(i, 0, STATUS_66);
        }
        self.requested = false;
        self.freed = 0;
        self.update_interrupt();
        self.update_cap_dword(config);
    }

    /// The controller's index of PCI slot `pci_slot` (shpc_device_get_slot).
    fn index_of(pci_slot: u8) -> Option<usize> {
        usize::from(pci_slot).checked_sub(1).filter(|&i| i < NSLOTS)
    }

    /// shpc_device_plug_cb for a hot-added device in `pci_slot`: a closed MRL and presence
    /// with the button, MRL and presence events, or (the MRL already closed: a removal
    /// still pending) only the button, which cancels it. Returns the interrupt change.
    pub fn plug(&mut self, config: &mut PciConfig, pci_slot: u8) -> Option<bool> {
        let idx = Self::index_of(pci_slot)?;
        self.populated |= 1 << pci_slot;
        if self.get_status(idx, STATUS_MRL_OPEN) != 0 {
            self.set_status(idx, 0, STATUS_MRL_OPEN);
            self.set_status(idx, PRSNT_7_5W, STATUS_PRSNT_MASK);
            self.regs[event_latch(idx)] |= EVENT_BUTTON | EVENT_MRL | EVENT_PRESENCE;
        } else {
            self.regs[event_latch(idx)] |= EVENT_BUTTON;
        }
        self.set_status(idx, 0, STATUS_66);
        let change = self.update_interrupt();
        self.update_cap_dword(config);
        change
    }

    /// shpc_device_unplug_request_cb for the device in `pci_slot`: whether the slot was
    /// already off and its devices are freed now (else the attention button was pressed and
    /// the guest turns the slot off when it is done), and the interrupt change.
    pub fn unplug_request(
        &mut self,
        config: &mut PciConfig,
        pci_slot: u8,
    ) -> Result<(bool, Option<bool>), UnplugError> {
        let idx = Self::index_of(pci_slot).ok_or(UnplugError::NoSlot)?;
        let state = self.get_status(idx, STATE_MASK);
        let led = self.get_status(idx, PWR_LED_MASK);
        if led == LED_BLINK {
            return Err(UnplugError::Busy);
        }
        let now = state == STATE_DISABLED && led == LED_OFF;
        if now {
            self.free_slot(idx);
        } else {
            self.regs[event_latch(idx)] |= EVENT_BUTTON;
        }
        self.set_status(idx, 0, STATUS_66);
        let change = self.update_interrupt();
        self.update_cap_dword(config);
        Ok((now, change))
    }

    /// The slot's devices go (shpc_free_devices_in_slot): MRL open, nothing present, MRL
    /// and presence events.
    fn free_slot(&mut self, idx: usize) {
        self.populated &= !(1 << (idx + 1));
        self.set_status(idx, 1, STATUS_MRL_OPEN);
        self.set_status(idx, PRSNT_EMPTY, STATUS_PRSNT_MASK);
        self.regs[event_latch(idx)] |= EVENT_MRL | EVENT_PRESENCE;
    }

    /// PCI slots (bit n = device n) whose devices the guest freed by turning the slot off
    /// since the last call.
    pub fn take_freed(&mut self) -> u32 {
        std::mem::take(&mut self.freed)
    }

    /// Register-file read (BAR0); past the registers reads zero like QEMU.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| self.regs.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    /// Register-file write; returns the interrupt level change to signal, if any.
    pub fn write(&mut self, config: &mut PciConfig, offset: u64, data: &[u8]) -> Option<bool> {
        let Ok(start) = usize::try_from(offset) else {
            return None;
        };
        if start >= REGS_SIZE {
            return None;
        }
        let len = data.len().min(REGS_SIZE - start);
        for (i, &v) in data[..len].iter().enumerate() {
            let a = start + i;
            self.regs[a] = (self.regs[a] & !self.wmask[a]) | (v & self.wmask[a]);
            self.regs[a] &= !(v & self.w1cmask[a]);
        }
        if start < CMD_CODE + 2 && start + len > CMD_CODE {
            self.command();
        }
        let change = self.update_interrupt();
        self.update_cap_dword(config);
        change
    }

    /// shpc_cap_write_config: a write to the capability's data dword goes to the selected
    /// register; the data dword then mirrors the selected register again.
    pub fn cap_write(&mut self, config: &mut PciConfig, offset: usize, len: usize) -> Option<bool> {
        let cap = self.cap;
        if offset >= cap + CAP_SIZE || offset + len <= cap {
            return None;
        }
        let mut change = None;
        if offset < cap + CAP_DWORD_DATA + 4 && offset + len > cap + CAP_DWORD_DATA {
            let v = config.get_u32(cap + CAP_DWORD_DATA);
            let sel = u64::from(config.get_u8(cap + CAP_DWORD_SELECT)) * 4;
            change = self.write(config, sel, &v.to_le_bytes());
        }
        self.update_cap_dword(config);
        change
    }

    fn update_cap_dword(&self, config: &mut PciConfig) {
        let sel = u64::from(config.get_u8(self.cap + CAP_DWORD_SELECT)) * 4;
        let mut b = [0u8; 4];
        self.read(sel, &mut b);
        config.set_u32(self.cap + CAP_DWORD_DATA, u32::from_le_bytes(b));
    }

    /// Interrupt line level the controller asks for.
    pub fn level(&self) -> bool {
        self.requested
    }

    /// shpc_interrupt_update: recompute the locator; Some(level) when the level changed.
    fn update_interrupt(&mut self) -> Option<bool> {
        let mut locator = 0u32;
        for i in 0..NSLOTS {
            if self.regs[event_latch(i)] & !self.regs[event_disable(i)] != 0 {
                locator |= 1 << (i + 1);
            }
        }
        let serr = get32(&self.regs, SERR_INT);
        if serr & CMD_DETECTED != 0 && serr & CMD_INT_DIS == 0 {
            locator |= INT_COMMAND;
        }
        put32(&mut self.regs, INT_LOCATOR, locator);
        let level = serr & INT_DIS == 0 && locator != 0;
        let changed = level != self.requested;
        self.requested = level;
        changed.then_some(level)
    }

    fn invalid_command(&mut self) {
        let v = get16(&self.regs, CMD_STATUS) | CMD_STATUS_INVALID_CMD;
        put16(&mut self.regs, CMD_STATUS, v);
    }

    /// shpc_slot_command: LEDs and state as asked (0 keeps each); turning a slot off
    /// (disabled with the power LED off) that was not off frees its devices.
    fn slot_command(&mut self, target: u8, state: u8, power: u8, attn: u8) {
        let Some(slot) = usize::from(target).checked_sub(1).filter(|&s| s < NSLOTS) else {
            self.invalid_command();
            return;
        };
        let old_state = self.get_status(slot, STATE_MASK);
        let old_power = self.get_status(slot, PWR_LED_MASK);
        if old_state == STATE_ENABLED && state == STATE_PWRONLY {
            self.invalid_command();
            return;
        }
        let power = if power == LED_NO {
            old_power
        } else {
            self.set_status(slot, power, PWR_LED_MASK);
            power
        };
        if attn != LED_NO {
            self.set_status(slot, attn, ATTN_LED_MASK);
        }
        let state = if state == STATE_NO {
            old_state
        } else {
            self.set_status(slot, state, STATE_MASK);
            state
        };
        let off = |state: u8, power: u8| state == STATE_DISABLED && power == LED_OFF;
        if !off(old_state, old_power) && off(state, power) {
            self.free_slot(slot);
            self.freed |= 1 << (slot + 1);
        }
    }

    fn command(&mut self) {
        let code = self.regs[CMD_CODE];
        let st = get16(&self.regs, CMD_STATUS) & !CMD_STATUS_ALL;
        put16(&mut self.regs, CMD_STATUS, st);
        match code {
            0x00..=0x3f => {
                let target = self.regs[CMD_TRGT] & CMD_TRGT_MAX;
                self.slot_command(target, code & 0x3, (code >> 2) & 0x3, (code >> 4) & 0x3);
            }
            0x40..=0x47 => {
                if code & SEC_BUS_MASK == SEC_BUS_33 {
                    self.regs[SEC_BUS] &= !SEC_BUS_MASK;
                } else {
                    let v = get16(&self.regs, CMD_STATUS) | CMD_STATUS_INVALID_MODE;
                    put16(&mut self.regs, CMD_STATUS, v);
                }
            }
            0x48 | 0x49 => {
                // Power-only / enable all slots: refused while any slot is enabled.
                if (0..NSLOTS).any(|i| self.get_status(i, STATE_MASK) == STATE_ENABLED) {
                    self.invalid_command();
                } else {
                    let state = if code == 0x48 {
                        STATE_PWRONLY
                    } else {
                        STATE_ENABLED
                    };
                    for i in 0..NSLOTS {
                        let target = (i + 1) as u8;
                        if self.get_status(i, STATUS_MRL_OPEN) == 0 {
                            self.slot_command(target, state, LED_ON, LED_NO);
                        } else {
                            self.slot_command(target, STATE_NO, LED_OFF, LED_NO);
                        }
                    }
                }
            }
            _ => self.invalid_command(),
        }
        let serr = get32(&self.regs, SERR_INT) | CMD_DETECTED;
        put32(&mut self.regs, SERR_INT, serr);
    }
}

fn get16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn get32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn put16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shpc(populated: u32) -> (PciConfig, Shpc) {
        let mut c = PciConfig::empty(false);
        let mut s = Shpc::new(&mut c, 0x40).unwrap();
        s.set_populated(populated);
        s.reset(&mut c);
        (c, s)
    }

    fn rd32(s: &Shpc, o: u64) -> u32 {
        let mut b = [0u8; 4];
        s.read(o, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn reset_values_match_qemu() {
        let (c, s) = shpc(1 << 1);
        assert_eq!(REGS_SIZE, 0xa0);
        assert_eq!(rd32(&s, 0x04), 31, "slots available (33 MHz)");
        assert_eq!(
            rd32(&s, 0x0c),
            0xe001_011f,
            "nslots 31, first dev 1, psn 1|UP|MRL|BUTTON"
        );
        assert_eq!(rd32(&s, 0x10), 0x0100_0000, "33 MHz, prog-if 1");
        assert_eq!(rd32(&s, 0x20), 0xf, "all interrupts and SERR disabled");
        // Slot 1 populated: enabled, power LED on, attention off, present 7.5 W.
        assert_eq!(rd32(&s, 0x24), 0x7f00_0036);
        // Slot 2 empty: disabled, MRL open, empty, LEDs off.
        assert_eq!(rd32(&s, 0x28), 0x7f00_0d3f);
        assert_eq!(rd32(&s, 0xa0), 0, "past the registers");
        // The capability's data dword mirrors register 0 (base offset).
        assert_eq!(c.get_u32(0x44), 0);
    }

    #[test]
    fn commands_complete_and_interrupt() {
        let (mut c, mut s) = shpc(0);
        // Unmask interrupts and command-complete interrupts.
        assert_eq!(s.write(&mut c, 0x20, &0u32.to_le_bytes()), None);
        // Slot 2: power LED blink (2 << 2), no state change; code and target in one write
        // as shpchp issues it (a write to either byte runs a command).
        let change = s.write(&mut c, 0x14, &[0x08, 2]);
        assert_eq!(change, Some(true));
        assert_eq!(rd32(&s, 0x18), 1, "command interrupt pending");
        assert_eq!(rd32(&s, 0x28) & 0xc, 0x8);
        // Clear CMD_DETECTED (W1C).
        assert_eq!(
            s.write(&mut c, 0x20, &0x1_0000u32.to_le_bytes()),
            Some(false)
        );
        // Invalid target.
        s.write(&mut c, 0x14, &[0x01, 0]);
        assert_eq!(
            (rd32(&s, 0x14) >> 16) & 0xf,
            u32::from(CMD_STATUS_INVALID_CMD)
        );
        // Through the capability window: select dword 5 (0x14) and read it back.
        c.write(0x42, &[5]);
        s.cap_write(&mut c, 0x42, 1);
        assert_eq!(c.get_u32(0x44), rd32(&s, 0x14));
    }

    #[test]
    fn plug_unplug_request_and_slot_off_follow_qemu() {
        let (mut c, mut s) = shpc(0);
        s.write(&mut c, 0x20, &0u32.to_le_bytes());
        // Unmask slot 3's events.
        s.write(&mut c, 0x2c, &0u32.to_le_bytes());
        assert_eq!(s.plug(&mut c, 3), Some(true));
        assert_eq!(rd32(&s, 0x2c), 0x000d_003f);
        assert_eq!(rd32(&s, 0x18), 1 << 3);
        // Slot 0 is no slot of the controller.
        assert_eq!(
            s.unplug_request(&mut c, 0).unwrap_err(),
            UnplugError::NoSlot
        );
        s.write(&mut c, 0x2c, &0x001f_0000u32.to_le_bytes());
        // Enabled with the power LED on: a request presses the button.
        s.write(&mut c, 0x14, &[0x36, 3]);
        assert_eq!(s.unplug_request(&mut c, 3).map(|r| r.0), Ok(false));
        assert_eq!(rd32(&s, 0x2c) >> 16 & 0xff, 0x04);
        // Blinking: refused.
        s.write(&mut c, 0x14, &[0x08, 3]);
        assert_eq!(s.unplug_request(&mut c, 3), Err(UnplugError::Busy));
        // Disabled with the power LED still on frees nothing; the LED off then does.
        s.write(&mut c, 0x14, &[0x07, 3]);
        assert_eq!(s.take_freed(), 0);
        s.write(&mut c, 0x14, &[0x0c, 3]);
        assert_eq!(s.take_freed(), 1 << 3);
        assert_eq!(rd32(&s, 0x2c) & 0x0f00, 0x0d00, "MRL open, empty");
        // An off slot frees at once on request.
        s.plug(&mut c, 3);
        assert_eq!(s.unplug_request(&mut c, 3).map(|r| r.0), Ok(true));
        assert_eq!(s.take_freed(), 0, "the caller removes it");
    }
}
