//! APM control/status ports 0xb2/0xb3 (both chipsets). The ACPI enable/disable commands
//! (FADT SMI_CMD values) set or clear SCI_EN in PM1_CNT, which is how an OS switches the
//! chipset into ACPI mode; other commands would raise an SMI, which we do not model.

use super::acpi_pm::AcpiPm;
use crate::bus::{BusDevice, SharedDevice};
use crate::legacy::kind::BoardEntry;
use crate::pci::device::{Space, Window, WindowTarget};
use machine::{Plan, Range};
use std::sync::{Arc, Mutex};

/// The board's APM entry: APM_CNT at its first port, APM_STS at the next.
pub static APM: BoardEntry = BoardEntry { names: &["apm"] };

/// Where the plan puts the APM ports (none on a machine without them, e.g. `pc,acpi=off`).
pub fn ports(plan: &Plan) -> Option<Range> {
    APM.find(plan).and_then(|d| d.io.first().copied())
}

/// The APM ports at `at` as a fixed window of the function that owns the PM block. Another
/// model may already own the ports; then it wins and this stays unmapped.
pub fn window(key: u32, at: Range, apm: &SharedDevice) -> Window {
    Window {
        key,
        space: Space::Io,
        base: at.base,
        size: at.size,
        target: WindowTarget::Device(apm.clone()),
    }
}

pub struct Apm {
    pm: Arc<Mutex<AcpiPm>>,
    cnt: u8,
    sts: u8,
    enable_cmd: u8,
    disable_cmd: u8,
}

impl Apm {
    /// `enable_cmd`/`disable_cmd`: ICH9 0x02/0x03, PIIX4 0xf1/0xf0.
    pub fn new(pm: Arc<Mutex<AcpiPm>>, enable_cmd: u8, disable_cmd: u8) -> Self {
        Self {
            pm,
            cnt: 0,
            sts: 0,
            enable_cmd,
            disable_cmd,
        }
    }
}

impl BusDevice for Apm {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = match offset + i as u64 {
                0 => self.cnt,
                1 => self.sts,
                _ => 0xff,
            };
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            match offset + i as u64 {
                0 => {
                    self.cnt = v;
                    let enable = v == self.enable_cmd;
                    let disable = v == self.disable_cmd;
                    if enable || disable {
                        self.pm
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .set_sci_enabled(enable);
                    }
                }
                1 => self.sts = v,
                _ => {}
            }
        }
    }
}
