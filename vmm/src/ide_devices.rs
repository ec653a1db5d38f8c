//! The IDE drives of a plan with their images: identity and geometry as QEMU's ide-hd /
//! ide-cd realize computes them (ide_dev_initfn, ide_init_drive), the CMOS bytes the board
//! writes for them (pc_cmos_init_late) and the PIIX IDE functions that carry them.

use crate::backends::{Backend, CacheMode};
use devices::ide::drive::{Drive, DriveInfo, Kind};
use devices::ide::geometry::{self, Chs, Translation};
use devices::ide::{Disk, DmaMemory, PiixIde};
use devices::pci::host::SharedFunction;
use devices::pci::PciError;
use machine::{IdeDrivePlan, PciFunctionPlan, Plan};
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};

/// QEMU's qemu_hw_version(): the firmware revision drives report.
const HW_VERSION: &str = "2.5+";

/// One drive's identity and image, ready to become a model.
struct Prepared {
    controller: usize,
    channel: usize,
    unit: usize,
    info: DriveInfo,
    disk: Option<Disk>,
}

/// The IDE drives of one build of the machine.
#[derive(Default)]
pub struct IdeSet {
    drives: Vec<Prepared>,
}

fn drive_err(d: &IdeDrivePlan, reason: impl Into<String>) -> PciError {
    PciError::Device {
        device: d.id.clone().unwrap_or_else(|| d.type_name.clone()),
        reason: reason.into(),
    }
}

fn prop<'a>(d: &'a IdeDrivePlan, name: &str) -> Option<&'a str> {
    d.properties.nonempty_str(name)
}

fn num(d: &IdeDrivePlan, name: &str) -> u64 {
    d.properties.uint(name).unwrap_or(0)
}

/// Open the image of drive `id` (the descriptor the device took at start, duplicated).
fn open_disk(d: &IdeDrivePlan, id: &str, backends: &[Backend]) -> Result<Option<Disk>, PciError> {
    let Some(Backend::Drive {
        file,
        read_only,
        cache,
        attached,
        null_size,
        debug,
        rerror,
        werror,
        ..
    }) = backends
        .iter()
        .find(|b| matches!(b, Backend::Drive { id: x, .. } if x == id))
    else {
        return Err(drive_err(d, format!("drive '{id}' not found")));
    };
    if file.as_os_str().is_empty() {
        return Ok(None);
    }
    let handle = match attached {
        Some(h) => h.dup(),
        None => {
            let mut o = OpenOptions::new();
            o.read(true).write(!read_only);
            if *cache == CacheMode::Direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(file)
        }
    }
    .map_err(|e| drive_err(d, format!("Could not open '{}': {e}", file.display())))?;
    let write_cache = match prop(d, "write-cache") {
        Some("on") => true,
        Some("off") => false,
        _ => *cache != CacheMode::WriteThrough,
    };
    Disk::new(handle, *read_only, write_cache, *null_size)
        .map(|disk| {
            Some(
                disk.with_debug(debug.clone())
                    .with_policy(id, *rerror, *werror),
            )
        })
        .map_err(|e| drive_err(d, format!("Could not open '{}': {e}", file.display())))
}

impl IdeSet {
    /// Every IDE drive of `plan` with its image; QEMU's realize checks, in its words.
    pub fn open(plan: &Plan, backends: &[Backend]) -> Result<Self, PciError> {
        let mut drives = Vec::new();
        for d in &plan.ide {
            let kind = if d.cdrom { Kind::Cd } else { Kind::Hd };
            let mut disk = match prop(d, "drive") {
                Some(id) => open_disk(d, id, backends)?,
                None => None,
            };
            if kind == Kind::Hd {
                match &disk {
                    None => return Err(drive_err(d, "Device needs media, but drive is empty")),
                    Some(disk) if disk.read_only() => {
                        return Err(drive_err(d, "Can't use a read-only drive"))
                    }
                    _ => {}
                }
            }
            let discard = match num(d, "discard_granularity") {
                0xffff_ffff | 512 => true,
                0 => false,
                _ => return Err(drive_err(d, "discard_granularity must be 512 for ide")),
            };
            let nb_sectors = disk.as_ref().map_or(0, Disk::sectors);
            let (chs, translation) = if kind == Kind::Hd {
                let mut mbr = [0u8; 512];
                let mbr = disk
                    .as_mut()
                    .and_then(|disk| disk.read(0, &mut mbr).ok().map(|_| &mbr));
                let user = Chs {
                    cyls: num(d, "cyls") as u32,
                    heads: num(d, "heads") as u32,
                    secs: num(d, "secs") as u32,
                };
                let trans = prop(d, "bios-chs-trans")
                    .and_then(Translation::parse)
                    .unwrap_or(Translation::Auto);
                geometry::resolve(user, trans, nb_sectors, mbr)
            } else {
                (
                    Chs {
                        cyls: 0,
                        heads: 0,
                        secs: 0,
                    },
                    Translation::Auto,
                )
            };
            // ide_init1 numbers the units of the first controller from 1.
            let index = usize::from(d.channel) * 2 + usize::from(d.unit);
            let info = DriveInfo {
                kind,
                serial: prop(d, "serial")
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("QM{:05}", index + 1)),
                model: prop(d, "model").map(str::to_string).unwrap_or_else(|| {
                    if kind == Kind::Cd {
                        "QEMU DVD-ROM".to_string()
                    } else {
                        "QEMU HARDDISK".to_string()
                    }
                }),
                version: prop(d, "ver").unwrap_or(HW_VERSION).to_string(),
                wwn: num(d, "wwn"),
                discard,
                rotation_rate: num(d, "rotation_rate") as u16,
                chs,
                translation,
            };
            drives.push(Prepared {
                controller: d.controller,
                channel: usize::from(d.channel),
                unit: usize::from(d.unit),
                info,
                disk,
            });
        }
        Ok(Self { drives })
    }

    /// The CMOS disk bytes for the hard disks on the first IDE controller's buses.
    pub fn cmos_bytes(&self) -> Vec<(u8, u8)> {
        let first = self.drives.iter().map(|d| d.controller).min();
        let mut disks = [None; 4];
        for d in &self.drives {
            if Some(d.controller) == first && d.info.kind == Kind::Hd && d.disk.is_some() {
                disks[d.channel * 2 + d.unit] = Some((d.info.chs, d.info.translation));
            }
        }
        geometry::cmos_bytes(&disks)
    }

    /// The model of `f` when it is an IDE controller of `plan`; its drives move into it.
    pub fn build(
        &mut self,
        plan: &Plan,
        f: &PciFunctionPlan,
        mem: Arc<dyn DmaMemory>,
        lifecycle: &devices::lifecycle::Lifecycle,
    ) -> Option<Result<SharedFunction, PciError>> {
        // Controllers without drives are the kind's to build (no images, no DMA).
        let index = plan
            .pci
            .iter()
            .position(|p| p.bus == f.bus && p.devfn() == f.devfn())?;
        if !plan.ide.iter().any(|d| d.controller == index) {
            return None;
        }
        let mut slots: [[Option<Drive>; 2]; 2] = Default::default();
        let mut rest = Vec::new();
        for d in std::mem::take(&mut self.drives) {
            if d.controller == index {
                slots[d.channel & 1][d.unit & 1] = Some(Drive::new(true, d.info, d.disk));
            } else {
                rest.push(d);
            }
        }
        self.drives = rest;
        Some(
            PiixIde::with_drives(f, slots, Some(mem))
                .map(|m| Arc::new(Mutex::new(m.with_lifecycle(lifecycle))) as SharedFunction),
        )
    }
}

/// ISA interrupt lines under KVM: the PIIX IDE's IRQ 14/15 are edge-triggered, so a rising
/// level is one irqfd pulse (as the serial ports' lines), a falling one nothing.
pub struct EdgeIrqfds(pub Vec<(u32, vmm_sys_util::eventfd::EventFd)>);

impl devices::pci::interrupt::IntxSink for EdgeIrqfds {
    fn set_level(&self, gsi: u32, level: bool) {
        if !level {
            return;
        }
        if let Some((_, evt)) = self.0.iter().find(|(g, _)| *g == gsi) {
            // A full counter (never read by anyone but KVM) only loses a pulse.
            let _ = evt.write(1);
        }
    }
}
