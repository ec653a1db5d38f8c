//! PIIX3/PIIX4 IDE (00:01.1, prog-if 0x80: both channels in legacy mode): the primary
//! channel at 0x1f0-0x1f7/0x3f6 on IRQ 14, the secondary at 0x170-0x177/0x376 on IRQ 15
//! (always decoded, as QEMU's ISA port lists), and BAR4, the 16-byte bus-master block
//! (channel n at 8 * n: command, status, PRD table address). Status reads DEVSEL medium |
//! fast back-to-back and the command register is 0 after reset (QEMU's piix_ide_reset).

use super::bmdma::DmaMemory;
use super::channel::{Channel, DmaPort, IrqLine};
use super::drive::Drive;
use crate::bus::{BusDevice, SharedDevice};
use crate::pci::config::{BarDef, PciConfig};
use crate::pci::device::{PciFunction, Space, Window, WindowTarget};
use crate::pci::firmware::FirmwareFunction;
use crate::pci::host::SharedFunction;
use crate::pci::interrupt::IntxSink;
use crate::pci::kind::{shared, FunctionContext, PciKind};
use crate::pci::PciError;
use machine::PciFunctionPlan;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// (command block, control register, ISA IRQ) of the two channels.
pub const LEGACY: [(u64, u64, u32); 2] = [(0x1f0, 0x3f6, 14), (0x170, 0x376, 15)];
const COMMAND_MASTER: u16 = 0x04;

type SharedChannel = Arc<Mutex<Channel>>;

fn lock(ch: &SharedChannel) -> MutexGuard<'_, Channel> {
    ch.lock().unwrap_or_else(|e| e.into_inner())
}

/// The eight task-file ports of a channel.
struct CommandBlock(SharedChannel);

impl BusDevice for CommandBlock {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let mut ch = lock(&self.0);
        let v = match (offset, data.len()) {
            (_, 1) => u32::from(ch.ioport_read(offset)),
            (0, 2) => ch.data_read(2),
            (0, 4) => ch.data_read(4),
            _ => u32::MAX,
        };
        let bytes = v.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(i).copied().unwrap_or(0xff);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let mut ch = lock(&self.0);
        let mut v = [0u8; 4];
        for (d, s) in v.iter_mut().zip(data) {
            *d = *s;
        }
        let v = u32::from_le_bytes(v);
        match (offset, data.len()) {
            (_, 1) => ch.ioport_write(offset, v as u8),
            (0, 2) => ch.data_write(2, v),
            (0, 4) => ch.data_write(4, v),
            _ => {}
        }
    }
}

/// The device control / alternate status register of a channel.
struct ControlBlock(SharedChannel);

impl BusDevice for ControlBlock {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if data.len() == 1 {
            data[0] = lock(&self.0).alt_status();
        }
    }

    fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
        if data.len() == 1 {
            lock(&self.0).ctrl_write(data[0]);
        }
    }
}

pub struct PiixIde {
    config: PciConfig,
    channels: [SharedChannel; 2],
    ports: [(SharedDevice, SharedDevice); 2],
    bus_master: Arc<AtomicBool>,
}

impl PiixIde {
    /// The function with no drives.
    pub fn new(f: &PciFunctionPlan) -> Result<Self, PciError> {
        Self::with_drives(f, [[None, None], [None, None]], None)
    }

    /// The function with `drives[channel][unit]`, doing DMA to `mem`.
    pub fn with_drives(
        f: &PciFunctionPlan,
        drives: [[Option<Drive>; 2]; 2],
        mem: Option<Arc<dyn DmaMemory>>,
    ) -> Result<Self, PciError> {
        let mut c = PciConfig::new(&f.identity, f.multifunction, false);
        c.register_bar(4, BarDef::io(0x10))?;
        c.set_u16(0x06, 0x0280);
        c.commit_reset_state();
        let bus_master = Arc::new(AtomicBool::new(false));
        let dma = mem.map(|mem| DmaPort {
            mem,
            bus_master: bus_master.clone(),
        });
        let [d0, d1] = drives;
        let channel = |[a, b]: [Option<Drive>; 2]| {
            let mut ch = Channel::new(
                [
                    a.unwrap_or_else(Drive::absent),
                    b.unwrap_or_else(Drive::absent),
                ],
                dma.clone(),
            );
            Arc::new_cyclic(|this| {
                ch.set_self(this.clone());
                Mutex::new(ch)
            })
        };
        let channels = [channel(d0), channel(d1)];
        let ports = channels.clone().map(|ch| {
            (
                Arc::new(Mutex::new(CommandBlock(ch.clone()))) as SharedDevice,
                Arc::new(Mutex::new(ControlBlock(ch))) as SharedDevice,
            )
        });
        Ok(Self {
            config: c,
            channels,
            ports,
            bus_master,
        })
    }

    /// Disk errors with the `stop` action stop the machine through `lifecycle`.
    pub fn with_lifecycle(self, lifecycle: &crate::lifecycle::Lifecycle) -> Self {
        for ch in &self.channels {
            lock(ch).set_lifecycle(lifecycle.clone());
        }
        self
    }

    /// Channel `n` (0 primary, 1 secondary), for tests and the VMM's queries.
    pub fn channel(&self, n: usize) -> Option<MutexGuard<'_, Channel>> {
        self.channels.get(n).map(lock)
    }

    fn sync_bus_master(&self) {
        self.bus_master.store(
            self.config.command() & COMMAND_MASTER != 0,
            Ordering::Release,
        );
    }
}

impl PciFunction for PiixIde {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        self.config.write(usize::from(offset), data);
        self.sync_bus_master();
    }

    fn reset(&mut self) {
        self.config.reset();
        self.sync_bus_master();
        for ch in &self.channels {
            lock(ch).reset();
        }
    }

    fn bar_read(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let Some(ch) = self.channels.get((offset / 8) as usize) else {
            return;
        };
        let ch = lock(ch);
        let reg = offset % 8;
        if reg >= 4 {
            ch.bm.addr_read(reg - 4, data);
            return;
        }
        if data.len() != 1 {
            return;
        }
        data[0] = match reg {
            0 => ch.bm.cmd,
            2 => ch.bm.status,
            _ => 0xff,
        };
    }

    fn bar_write(&mut self, _bar: usize, offset: u64, data: &[u8]) {
        let Some(ch) = self.channels.get((offset / 8) as usize) else {
            return;
        };
        let mut ch = lock(ch);
        let reg = offset % 8;
        if reg >= 4 {
            ch.bm.addr_write(reg - 4, data);
            return;
        }
        if data.len() != 1 {
            return;
        }
        match reg {
            0 => ch.bm_cmd_write(data[0]),
            2 => ch.bm.status_write(data[0]),
            _ => {}
        }
    }

    fn windows(&self) -> Vec<Window> {
        let mut out = Vec::new();
        for (i, ((cmd, ctl), (base, ctrl, _))) in self.ports.iter().zip(LEGACY).enumerate() {
            out.push(Window {
                key: 2 * i as u32,
                space: Space::Io,
                base,
                size: 8,
                target: WindowTarget::Device(cmd.clone()),
            });
            out.push(Window {
                key: 2 * i as u32 + 1,
                space: Space::Io,
                base: ctrl,
                size: 1,
                target: WindowTarget::Device(ctl.clone()),
            });
        }
        out
    }

    fn restart_io(&mut self) {
        for ch in &self.channels {
            lock(ch).restart();
        }
    }

    fn set_isa_irq_sink(&mut self, sink: Arc<dyn IntxSink>) {
        for (ch, (_, _, irq)) in self.channels.iter().zip(LEGACY) {
            lock(ch).set_irq_line(IrqLine {
                sink: sink.clone(),
                gsi: irq,
            });
        }
    }
}

/// The PIIX IDE function kind. The host builds it without drives; the VMM builds the
/// functions that have drives (images, guest memory) itself.
pub struct PiixIdeKind;
pub static KIND: PiixIdeKind = PiixIdeKind;

impl PciKind for PiixIdeKind {
    fn names(&self) -> &'static [&'static str] {
        &["piix3-ide", "piix4-ide"]
    }
    fn build(&self, ctx: &FunctionContext) -> Result<SharedFunction, PciError> {
        Ok(shared(
            PiixIde::new(ctx.function)?.with_lifecycle(ctx.lifecycle),
        ))
    }
    /// SeaBIOS piix_ide_setup: enable both channels' decode (IDETIM bit 15).
    fn firmware_init(&self, fw: &mut FirmwareFunction) -> Result<(), PciError> {
        fw.write(0x40, 0x8000, 2);
        fw.write(0x42, 0x8000, 2);
        Ok(())
    }
}
