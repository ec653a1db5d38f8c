//! The i8042 keyboard controller at 0x60 (data) and 0x64 (status/command), with a PS/2
//! keyboard on its first port and a PS/2 mouse on its second (AUX), as QEMU's `i8042` with
//! its `ps2-kbd`/`ps2-mouse`. Everything Linux's i8042 and atkbd drivers do at probe time is
//! answered as the hardware answers: controller command byte (CTR) and RAM, self-test
//! 0xaa -> 0x55, interface tests, AUX loopback with its IRQ 12, keyboard reset (0xff ->
//! 0xfa 0xaa), identify (0xf2 -> 0xfa 0xab 0x83), and the reset line (command 0xfe or output
//! port bit 0), which resets the machine. No host input is attached: the devices never
//! produce scan codes of their own.

use super::kind::{IsaBuilt, IsaContext, IsaError, IsaKind};
use crate::aml;
use crate::bus::BusDevice;
use crate::lifecycle::{Lifecycle, Request};
use acpi_tables::{aml as a, Aml};
use machine::IsaDevicePlan;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

/// The data and command/status ports of a PC (the boards' `i8042` entry); the device
/// decodes whatever ports its plan entry gives (`at_ports`).
pub const DATA_PORT: u64 = 0x60;
pub const COMMAND_PORT: u64 = 0x64;

// Status register.
const STAT_OBF: u8 = 0x01;
const STAT_SYS: u8 = 0x04;
const STAT_CMD: u8 = 0x08;
const STAT_UNLOCKED: u8 = 0x10;
const STAT_AUX_OBF: u8 = 0x20;

// Controller command byte (RAM byte 0).
const CTR_KBDINT: u8 = 0x01;
const CTR_AUXINT: u8 = 0x02;
const CTR_SYS: u8 = 0x04;
const CTR_KBDDIS: u8 = 0x10;
const CTR_AUXDIS: u8 = 0x20;
const CTR_XLATE: u8 = 0x40;

// Output port bits.
const OUT_RESET_HIGH: u8 = 0x01;
const OUT_A20: u8 = 0x02;

// PS/2 device replies.
const ACK: u8 = 0xfa;
const RESEND: u8 = 0xfe;
const BAT_OK: u8 = 0xaa;

/// Bytes either device can have queued (QEMU's PS/2 queue is 16 entries deep).
const QUEUE_LIMIT: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Kbd,
    Aux,
}

/// A data-port byte the controller expects after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    None,
    WriteRam(u8),
    WriteOutPort,
    WriteKbdObuf,
    WriteAuxObuf,
    WriteAux,
}

/// A PS/2 device's state: a command awaiting its parameter, whether it reports.
#[derive(Debug, Default)]
struct Ps2 {
    /// Command byte waiting for its parameter (0xed, 0xf0, 0xf3 on the keyboard; 0xe8, 0xf3
    /// on the mouse).
    param_for: Option<u8>,
    enabled: bool,
    scancode_set: u8,
    /// Mouse: device ID (0 PS/2, 3 IntelliMouse, 4 IntelliMouse Explorer) and the state of
    /// the sample-rate knock sequence that selects it (QEMU's mouse_detect_state).
    mouse_type: u8,
    detect: u8,
}

pub struct I8042 {
    lifecycle: Lifecycle,
    kbd_irq: Option<EventFd>,
    aux_irq: Option<EventFd>,
    /// RAM; byte 0 is the controller command byte.
    ram: [u8; 32],
    status: u8,
    outport: u8,
    pending: Pending,
    /// Bytes waiting for the output buffer, oldest first; the front one is the buffer.
    out: VecDeque<(u8, Source)>,
    /// Whether the byte now in the output buffer has had its interrupt.
    signalled: bool,
    kbd: Ps2,
    aux: Ps2,
    /// The data port and the command/status port it decodes.
    ports: (u64, u64),
}

impl I8042 {
    /// `kbd_irq`/`aux_irq`: the ISA IRQ 1 and 12 lines (eventfds registered as irqfds).
    pub fn new(lifecycle: Lifecycle, kbd_irq: Option<EventFd>, aux_irq: Option<EventFd>) -> Self {
        let mut ram = [0u8; 32];
        // machina boots without firmware: start as SeaBIOS leaves the controller (self-test
        // passed, scan code translation on, keyboard interrupt on, AUX port disabled), so a
        // kernel sees what it sees under QEMU ("AT Translated Set 2 keyboard").
        ram[0] = CTR_XLATE | CTR_AUXDIS | CTR_KBDINT;
        Self {
            lifecycle,
            kbd_irq,
            aux_irq,
            ram,
            status: STAT_CMD | STAT_UNLOCKED | STAT_SYS,
            outport: OUT_RESET_HIGH | OUT_A20,
            pending: Pending::None,
            out: VecDeque::new(),
            signalled: false,
            kbd: Ps2 {
                enabled: true,
                scancode_set: 2,
                ..Default::default()
            },
            aux: Ps2::default(),
            ports: (DATA_PORT, COMMAND_PORT),
        }
    }

    /// The controller at `data` (data port) and `command` (command/status port).
    pub fn at_ports(mut self, data: u64, command: u64) -> Self {
        self.ports = (data, command);
        self
    }

    fn ctr(&self) -> u8 {
        self.ram[0]
    }

    fn queue(&mut self, byte: u8, source: Source) {
        let count = self.out.iter().filter(|(_, s)| *s == source).count();
        if count < QUEUE_LIMIT {
            self.out.push_back((byte, source));
        }
        self.update_irq();
    }

    /// Raise the interrupt of the byte in the output buffer once, if its port's interrupt is
    /// enabled (the lines are edge-triggered ISA IRQs; one pulse per byte presented).
    fn update_irq(&mut self) {
        if self.signalled {
            return;
        }
        let Some(&(_, source)) = self.out.front() else {
            return;
        };
        let (enabled, line) = match source {
            Source::Kbd => (self.ctr() & CTR_KBDINT != 0, &self.kbd_irq),
            Source::Aux => (self.ctr() & CTR_AUXINT != 0, &self.aux_irq),
        };
        if enabled {
            self.signalled = true;
            if let Some(evt) = line {
                // A full eventfd counter still means "interrupt pending": nothing is lost.
                let _ = evt.write(1);
            }
        }
    }

    fn status(&self) -> u8 {
        let mut s = self.status & !(STAT_OBF | STAT_AUX_OBF);
        match self.out.front() {
            Some((_, Source::Kbd)) => s |= STAT_OBF,
            Some((_, Source::Aux)) => s |= STAT_OBF | STAT_AUX_OBF,
            None => {}
        }
        s
    }

    fn read_data(&mut self) -> u8 {
        match self.out.pop_front() {
            Some((b, _)) => {
                self.signalled = false;
                self.update_irq();
                b
            }
            // An empty buffer reads as the last byte on real controllers; 0 is what QEMU's
            // empty queue gives.
            None => 0,
        }
    }

    fn write_output_port(&mut self, val: u8) {
        self.outport = val;
        if val & OUT_RESET_HIGH == 0 {
            self.lifecycle.request(Request::Reset);
        }
    }

    fn command(&mut self, cmd: u8) {
        self.status |= STAT_CMD;
        match cmd {
            0x20..=0x3f => self.queue(self.ram[usize::from(cmd & 0x1f)], Source::Kbd),
            0x60..=0x7f => self.pending = Pending::WriteRam(cmd & 0x1f),
            0xa7 => self.ram[0] |= CTR_AUXDIS,
            0xa8 => self.ram[0] &= !CTR_AUXDIS,
            // AUX and keyboard interface tests: 0 = no error.
            0xa9 | 0xab => self.queue(0x00, Source::Kbd),
            0xaa => {
                // Self-test passed; the system flag is set as after a power-on test.
                self.status |= STAT_SYS;
                self.queue(0x55, Source::Kbd)
            }
            0xad => self.ram[0] |= CTR_KBDDIS,
            0xae => self.ram[0] &= !CTR_KBDDIS,
            // Input port: keyboard not inhibited (bit 7), as QEMU.
            0xc0 => self.queue(0x80, Source::Kbd),
            0xd0 => self.queue(self.outport, Source::Kbd),
            0xd1 => self.pending = Pending::WriteOutPort,
            0xd2 => self.pending = Pending::WriteKbdObuf,
            0xd3 => self.pending = Pending::WriteAuxObuf,
            0xd4 => self.pending = Pending::WriteAux,
            0xdd => self.outport &= !OUT_A20,
            0xdf => self.outport |= OUT_A20,
            0xe0 => self.queue(0x00, Source::Kbd),
            // Pulse output lines: a low bit 0 pulses the reset line.
            0xf0..=0xff if cmd & 0x01 == 0 => self.lifecycle.request(Request::Reset),
            // Unknown commands are ignored, as QEMU does (with its guest_errors line).
            _ => crate::guest_error!("i8042: unsupported keyboard cmd={cmd:#04x}"),
        }
    }

    fn data(&mut self, val: u8) {
        self.status &= !STAT_CMD;
        match std::mem::replace(&mut self.pending, Pending::None) {
            Pending::WriteRam(0) => {
                self.ram[0] = val;
                // The SYS flag of the status register follows the CTR's.
                if val & CTR_SYS != 0 {
                    self.status |= STAT_SYS;
                } else {
                    self.status &= !STAT_SYS;
                }
                self.update_irq();
            }
            Pending::WriteRam(i) => self.ram[usize::from(i)] = val,
            Pending::WriteOutPort => self.write_output_port(val),
            Pending::WriteKbdObuf => self.queue(val, Source::Kbd),
            Pending::WriteAuxObuf => self.queue(val, Source::Aux),
            Pending::WriteAux => self.aux_command(val),
            Pending::None => {
                // A byte for the keyboard enables its port, as on real controllers.
                self.ram[0] &= !CTR_KBDDIS;
                self.kbd_command(val)
            }
        }
    }

    /// PS/2 keyboard (QEMU's ps2_write_keyboard).
    fn kbd_command(&mut self, val: u8) {
        if let Some(cmd) = self.kbd.param_for.take() {
            match cmd {
                0xf0 if val == 0 => {
                    self.queue(ACK, Source::Kbd);
                    self.queue(self.kbd.scancode_set, Source::Kbd);
                }
                0xf0 if (1..=3).contains(&val) => {
                    self.kbd.scancode_set = val;
                    self.queue(ACK, Source::Kbd);
                }
                0xf0 => self.queue(RESEND, Source::Kbd),
                // LEDs (0xed) and typematic rate (0xf3): accepted.
                _ => self.queue(ACK, Source::Kbd),
            }
            return;
        }
        match val {
            0x00 => self.queue(ACK, Source::Kbd),
            0x05 => self.queue(RESEND, Source::Kbd),
            0xee => self.queue(0xee, Source::Kbd),
            0xf2 => {
                // MF2 keyboard; with translation on the controller reports 0x41.
                self.queue(ACK, Source::Kbd);
                self.queue(0xab, Source::Kbd);
                self.queue(0x83, Source::Kbd);
            }
            0xed | 0xf0 | 0xf3 => {
                self.kbd.param_for = Some(val);
                self.queue(ACK, Source::Kbd);
            }
            0xf4 => {
                self.kbd.enabled = true;
                self.queue(ACK, Source::Kbd);
            }
            0xf5 | 0xf6 => {
                // Disable (0xf5) also restores defaults, as QEMU's ps2 keyboard.
                self.kbd.enabled = val == 0xf6;
                self.kbd.scancode_set = 2;
                self.queue(ACK, Source::Kbd);
            }
            0xf7..=0xfd => self.queue(ACK, Source::Kbd),
            0xff => {
                self.kbd.enabled = true;
                self.kbd.scancode_set = 2;
                self.queue(ACK, Source::Kbd);
                self.queue(BAT_OK, Source::Kbd);
            }
            _ => self.queue(RESEND, Source::Kbd),
        }
    }

    /// PS/2 mouse (QEMU's ps2_write_mouse), reporting disabled: answers commands only.
    fn aux_command(&mut self, val: u8) {
        if let Some(cmd) = self.aux.param_for.take() {
            if cmd == 0xf3 {
                // Sample rates 200,100,80 select IntelliMouse; 200,200,80 Explorer.
                let a = &mut self.aux;
                (a.detect, a.mouse_type) = match (a.detect, val) {
                    (0, 200) => (1, a.mouse_type),
                    (1, 100) => (2, a.mouse_type),
                    (1, 200) => (3, a.mouse_type),
                    (2, 80) => (0, 3),
                    (3, 80) => (0, 4),
                    _ => (0, a.mouse_type),
                };
            }
            self.queue(ACK, Source::Aux);
            return;
        }
        match val {
            // Wrap mode off/on, remote/stream mode, scaling: acknowledged.
            0xe6 | 0xe7 | 0xea | 0xec | 0xee | 0xf0 => self.queue(ACK, Source::Aux),
            0xe8 | 0xf3 => {
                self.aux.param_for = Some(val);
                self.queue(ACK, Source::Aux);
            }
            0xe9 => {
                // Status request: flags, resolution 2, rate 100.
                self.queue(ACK, Source::Aux);
                self.queue(u8::from(self.aux.enabled) << 5, Source::Aux);
                self.queue(0x02, Source::Aux);
                self.queue(100, Source::Aux);
            }
            0xf2 => {
                self.queue(ACK, Source::Aux);
                self.queue(self.aux.mouse_type, Source::Aux);
            }
            0xeb => {
                // Read data: one empty movement packet.
                self.queue(ACK, Source::Aux);
                for b in [0x08, 0, 0] {
                    self.queue(b, Source::Aux);
                }
            }
            0xf4 => {
                self.aux.enabled = true;
                self.queue(ACK, Source::Aux);
            }
            0xf5 | 0xf6 => {
                self.aux.enabled = false;
                self.queue(ACK, Source::Aux);
            }
            0xff => {
                self.aux.enabled = false;
                self.aux.mouse_type = 0;
                self.aux.detect = 0;
                self.queue(ACK, Source::Aux);
                self.queue(BAT_OK, Source::Aux);
                self.queue(0x00, Source::Aux);
            }
            _ => self.queue(RESEND, Source::Aux),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let port = base + offset;
        let value = if port == self.ports.0 {
            self.read_data()
        } else if port == self.ports.1 {
            self.status()
        } else {
            0xff
        };
        if let Some(b) = data.first_mut() {
            *b = value;
        }
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else {
            return;
        };
        let port = base + offset;
        if port == self.ports.0 {
            self.data(v);
        } else if port == self.ports.1 {
            self.command(v);
        }
    }
}

/// The i8042 keyboard controller kind (keyboard IRQ first, mouse second, as the plan lists
/// them).
pub struct I8042Kind;
pub static KIND: I8042Kind = I8042Kind;

impl IsaKind for I8042Kind {
    fn names(&self) -> &'static [&'static str] {
        &["i8042"]
    }
    fn build(&self, ctx: &mut IsaContext) -> Result<IsaBuilt, IsaError> {
        let kbd = ctx.irq(0)?;
        let aux = ctx.irq(1)?;
        // The plan lists the data port first, then the command/status port.
        let port = |i: usize| {
            ctx.device
                .io
                .get(i)
                .map(|r| r.base)
                .ok_or_else(|| IsaError::MissingResource {
                    device: ctx.device.type_name.clone(),
                    what: "data and command ports",
                })
        };
        let (data, command) = (port(0)?, port(1)?);
        let dev = I8042::new(ctx.lifecycle.clone(), kbd, aux).at_ports(data, command);
        Ok(IsaBuilt::new(Arc::new(Mutex::new(dev))))
    }
    fn aml_order(&self) -> u8 {
        0
    }
    /// `KBD_` (PNP0303: both ports, the keyboard IRQ) and `MOU_` (PNP0F13: the mouse IRQ).
    fn aml(&self, dev: &IsaDevicePlan, _nth: usize) -> Vec<u8> {
        let sta = a::Name::new("_STA".into(), &0x0fu8);
        let ios = aml::io_ranges(dev);
        let irqs = aml::irqs(dev);
        let mut res: Vec<&dyn Aml> = ios.iter().map(|i| i as &dyn Aml).collect();
        if let Some(kbd_irq) = irqs.first() {
            res.push(kbd_irq);
        }
        let crs = a::ResourceTemplate::new(res);
        let hid = a::Name::new("_HID".into(), &a::EISAName::new("PNP0303"));
        let crs = a::Name::new("_CRS".into(), &crs);
        let mut out = aml::bytes_of(&a::Device::new("KBD_".into(), vec![&hid, &sta, &crs]));
        if let Some(mouse_irq) = irqs.get(1) {
            let crs = a::ResourceTemplate::new(vec![mouse_irq]);
            let hid = a::Name::new("_HID".into(), &a::EISAName::new("PNP0F13"));
            let crs = a::Name::new("_CRS".into(), &crs);
            out.extend(aml::bytes_of(&a::Device::new(
                "MOU_".into(),
                vec![&hid, &sta, &crs],
            )));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Kbc {
        dev: I8042,
        lifecycle: Lifecycle,
    }

    impl Kbc {
        fn new() -> Self {
            let lifecycle = Lifecycle::new().unwrap();
            let kbd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let aux = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            Self {
                dev: I8042::new(lifecycle.clone(), Some(kbd), Some(aux)),
                lifecycle,
            }
        }
        fn cmd(&mut self, c: u8) {
            self.dev.write(COMMAND_PORT, 0, &[c]);
        }
        fn out(&mut self, v: u8) {
            self.dev.write(DATA_PORT, 0, &[v]);
        }
        fn status(&mut self) -> u8 {
            let mut b = [0];
            self.dev.read(COMMAND_PORT, 0, &mut b);
            b[0]
        }
        /// Every byte in the output buffer, as Linux's i8042_flush/i8042_wait_read see them.
        fn drain(&mut self) -> Vec<(u8, bool)> {
            let mut v = Vec::new();
            while self.status() & STAT_OBF != 0 {
                let aux = self.status() & STAT_AUX_OBF != 0;
                let mut b = [0];
                self.dev.read(DATA_PORT, 0, &mut b);
                v.push((b[0], aux));
            }
            v
        }
        fn irqs(&self) -> (u64, u64) {
            let n = |e: &Option<EventFd>| e.as_ref().unwrap().read().unwrap_or(0);
            (n(&self.dev.kbd_irq), n(&self.dev.aux_irq))
        }
    }

    #[test]
    fn decodes_the_ports_its_plan_entry_gives() {
        let lifecycle = Lifecycle::new().unwrap();
        let mut dev = I8042::new(lifecycle, None, None).at_ports(0x160, 0x164);
        let mut b = [0u8];
        dev.read(0x164, 0, &mut b);
        assert_eq!(
            b[0] & STAT_SYS,
            STAT_SYS,
            "status at the moved command port"
        );
        dev.read(COMMAND_PORT, 0, &mut b);
        assert_eq!(b[0], 0xff, "nothing at the standard port");
        // A self-test command at the moved port answers 0x55 at the moved data port.
        dev.write(0x164, 0, &[0xaa]);
        dev.read(0x160, 0, &mut b);
        assert_eq!(b[0], 0x55);
    }

    #[test]
    fn command_fe_and_output_port_reset() {
        let mut k = Kbc::new();
        k.cmd(0xd1);
        assert_eq!(k.lifecycle.pending(), Request::None);
        k.out(0x03); // reset line high: no reset
        assert_eq!(k.lifecycle.pending(), Request::None);
        k.cmd(0xfe);
        assert_eq!(k.lifecycle.take(), Request::Reset);
        k.cmd(0xd1);
        k.out(0x02);
        assert_eq!(k.lifecycle.take(), Request::Reset);
    }

    #[test]
    fn linux_i8042_probe_sequence() {
        let mut k = Kbc::new();
        // i8042_flush: nothing queued at reset.
        assert_eq!(k.drain(), vec![]);
        // i8042_controller_selftest.
        k.cmd(0xaa);
        assert_eq!(k.drain(), vec![(0x55, false)]);
        assert_ne!(k.status() & STAT_SYS, 0);
        // Read CTR twice (stable), write it back with interrupts off and ports disabled.
        k.cmd(0x20);
        assert_eq!(
            k.drain(),
            vec![(CTR_XLATE | CTR_AUXDIS | CTR_KBDINT, false)]
        );
        k.cmd(0x60);
        k.out(CTR_KBDDIS | CTR_AUXDIS | CTR_SYS | 0x40);
        k.cmd(0x20);
        assert_eq!(k.drain(), vec![(0x74, false)]);
        // AUX loopback returns the byte as AUX data.
        k.cmd(0xd3);
        k.out(0x5a);
        assert_eq!(k.drain(), vec![(0x5a, true)]);
        // Toggling AUX shows in the CTR.
        k.cmd(0xa8);
        k.cmd(0x20);
        assert_eq!(k.drain()[0].0 & CTR_AUXDIS, 0);
        k.cmd(0xa7);
        k.cmd(0x20);
        assert_ne!(k.drain()[0].0 & CTR_AUXDIS, 0);
        // Interface tests.
        k.cmd(0xa9);
        k.cmd(0xab);
        assert_eq!(k.drain(), vec![(0, false), (0, false)]);
        // No interrupt so far: KBDINT/AUXINT were off after the CTR write... except the
        // first replies, sent while the reset CTR enabled them.
        let _ = k.irqs();
        // The AUX IRQ test: AUXINT on, loop a byte, IRQ 12 fires.
        k.cmd(0x60);
        k.out(CTR_AUXINT | CTR_SYS);
        k.cmd(0xd3);
        k.out(0xa5);
        assert_eq!(k.irqs(), (0, 1));
        assert_eq!(k.drain(), vec![(0xa5, true)]);
    }

    #[test]
    fn keyboard_reset_identify_and_sets() {
        let mut k = Kbc::new();
        k.out(0xff);
        assert_eq!(k.drain(), vec![(ACK, false), (BAT_OK, false)]);
        k.out(0xf2);
        assert_eq!(k.drain(), vec![(ACK, false), (0xab, false), (0x83, false)]);
        k.out(0xf0);
        k.out(0x00);
        assert_eq!(k.drain(), vec![(ACK, false), (ACK, false), (2, false)]);
        k.out(0xf0);
        k.out(0x03);
        k.out(0xf0);
        k.out(0x00);
        assert_eq!(k.drain().last(), Some(&(3, false)));
        k.out(0xed);
        k.out(0x07);
        assert_eq!(k.drain(), vec![(ACK, false), (ACK, false)]);
        k.out(0xee);
        assert_eq!(k.drain(), vec![(0xee, false)]);
        k.out(0x42);
        assert_eq!(k.drain(), vec![(RESEND, false)]);
    }

    #[test]
    fn mouse_through_d4() {
        let mut k = Kbc::new();
        k.cmd(0xd4);
        k.out(0xff);
        assert_eq!(k.drain(), vec![(ACK, true), (BAT_OK, true), (0, true)]);
        k.cmd(0xd4);
        k.out(0xf2);
        assert_eq!(k.drain(), vec![(ACK, true), (0, true)]);
        // psmouse's IntelliMouse knocks: 200,100,80 then 200,200,80.
        for (rates, id) in [([200, 100, 80], 3), ([200, 200, 80], 4)] {
            for r in rates {
                k.cmd(0xd4);
                k.out(0xf3);
                k.cmd(0xd4);
                k.out(r);
            }
            k.cmd(0xd4);
            k.out(0xf2);
            assert_eq!(k.drain().last(), Some(&(id, true)));
        }
    }

    #[test]
    fn one_interrupt_per_byte_and_only_when_enabled() {
        let mut k = Kbc::new();
        // Reset CTR has KBDINT: identify queues three bytes, each gets its pulse when it
        // reaches the output buffer.
        k.out(0xf2);
        assert_eq!(k.irqs(), (1, 0));
        let mut b = [0];
        k.dev.read(DATA_PORT, 0, &mut b);
        assert_eq!(k.irqs(), (1, 0));
        k.dev.read(DATA_PORT, 0, &mut b);
        assert_eq!(k.irqs(), (1, 0));
        k.dev.read(DATA_PORT, 0, &mut b);
        assert_eq!(k.irqs(), (0, 0));
        // Interrupts off: no pulse; turning KBDINT on with a byte waiting pulses.
        k.cmd(0x60);
        k.out(0);
        k.out(0xee);
        assert_eq!(k.irqs(), (0, 0));
        k.cmd(0x60);
        assert_eq!(k.irqs(), (0, 0));
        k.out(CTR_KBDINT);
        assert_eq!(k.irqs(), (1, 0));
        assert_eq!(k.drain(), vec![(0xee, false)]);
    }
}
