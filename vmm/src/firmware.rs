//! System firmware of the PC boards, as QEMU's pc_sysfw.c / x86_bios_rom_init place it:
//! either a ROM image (`-bios`, `-machine firmware=`) or up to two CFI01 flash devices
//! (`-machine pflash0=,pflash1=`, `-drive if=pflash`), mapped so that they end at 4 GiB
//! (flash 0 on top, flash 1 below it), and the last 128 KiB of the top image (all of it
//! if smaller) shown again below 1 MiB (QEMU's "isa-bios").
//!
//! Guest access goes through the machine's memory view: each image is a ROM on the PCI
//! side (behind PAM below 1 MiB, as QEMU's isa-bios sits under the PAM regions), which the
//! view maps as read-only KVM memory and serves to exits and qtest. A flash is also a
//! device on the MMIO bus: writes to its ROM reach it there, and while a command is in
//! progress (QEMU's romd mode off) its image leaves the view so that reads reach it too.

use crate::backends::Backend;
use devices::bus::Bus;
use devices::chipset::memory_view::{MemoryView, RomImage, RomWrites};
use devices::pflash::{FirmwareImage, PflashCfi01, RomdSink, SECTOR_SIZE};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where the ISA BIOS window ends, and its largest size.
const ISA_BIOS_END: u64 = 1 << 20;
const ISA_BIOS_MAX: u64 = 128 << 10;
const FOUR_GIB: u64 = 1 << 32;
/// QEMU's `-bios` images are whole 64 KiB units.
const BIOS_UNIT: u64 = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    /// QEMU prints this one as `qemu: could not load PC BIOS 'NAME'`.
    #[error("could not load PC BIOS '{0}'")]
    LoadBios(String),
    #[error("Property 'cfi.pflash01.drive' can't find value '{0}'")]
    NoDrive(String),
    #[error("pflash{0} requires pflash{1}")]
    Gap(usize, usize),
    #[error("{0}: clashes with -machine")]
    Clash(String),
    #[error(
        "system firmware block device {name} has invalid size {size} \
         (its size must be a non-zero multiple of {SECTOR_SIZE:#x})"
    )]
    FlashSize { name: String, size: u64 },
    #[error("combined size of system firmware exceeds {0} bytes")]
    TooLarge(u64),
    #[error("can't get size of block device {name}: {reason}")]
    FlashRead { name: String, reason: String },
    #[error(transparent)]
    Backend(#[from] crate::backends::BackendError),
    #[error("{0}")]
    Memory(#[from] devices::pflash::FlashError),
    #[error("pflash with kvm requires KVM readonly memory support")]
    NoReadonlyMemory,
    #[error("cannot copy the ISA BIOS: {0}")]
    IsaBios(#[source] std::io::Error),
    #[error("cannot map the system firmware at {base:#x}: {source}")]
    Bus {
        base: u64,
        #[source]
        source: devices::bus::BusError,
    },
}

/// One system flash: its drive, its contents (shared by every build of the machine: what
/// the guest programmed survives a reset, as QEMU's flash RAM does) and write permission.
#[derive(Debug, Clone)]
pub struct FlashUnit {
    pub drive: String,
    pub image: Arc<FirmwareImage>,
    pub read_only: bool,
}

/// The machine's system firmware.
#[derive(Debug, Clone)]
pub enum Firmware {
    /// A ROM image: read-only, its file read once at start.
    Bios {
        name: String,
        image: Arc<FirmwareImage>,
    },
    /// Flash 0 (code) and optionally flash 1 (variables).
    Flash(Vec<FlashUnit>),
}

/// What the command line asks for.
pub struct FirmwareRequest<'a> {
    pub bios: Option<&'a Path>,
    pub data_dirs: &'a [PathBuf],
    /// `-drive if=pflash` drives (id, option as given) per unit.
    pub drives: &'a [Option<(String, String)>; 2],
    /// `-machine pflash0=`, `pflash1=`.
    pub properties: [Option<String>; 2],
    /// `-machine max-fw-size=` (QEMU's default 8 MiB).
    pub max_fw_size: u64,
}

impl Firmware {
    /// Resolve the request: flash drives taken (opened, locked, read), or the ROM image
    /// found and read. None: no firmware (machina boots a kernel directly).
    pub fn resolve(
        req: &FirmwareRequest,
        backends: &mut [Backend],
    ) -> Result<Option<Firmware>, FirmwareError> {
        let mut ids: [Option<String>; 2] = [None, None];
        for (unit, id) in ids.iter_mut().enumerate() {
            *id = match (&req.drives[unit], &req.properties[unit]) {
                (Some((_, spec)), Some(_)) => return Err(FirmwareError::Clash(spec.clone())),
                (Some((drive, _)), None) => Some(drive.clone()),
                (None, property) => property.clone(),
            };
        }
        if ids[1].is_some() && ids[0].is_none() {
            return Err(FirmwareError::Gap(1, 0));
        }
        if ids[0].is_none() {
            return match req.bios {
                Some(name) => Ok(Some(load_bios(name, req.data_dirs)?)),
                None => Ok(None),
            };
        }
        let mut units = Vec::new();
        let mut total = 0u64;
        for (unit, id) in ids.iter().enumerate() {
            let Some(id) = id else { break };
            let context = match &req.drives[unit] {
                Some((_, spec)) => spec.clone(),
                None => format!("-machine pflash{unit}={id}"),
            };
            let crate::backends::FlashDrive {
                file,
                read_only,
                null_size,
            } = crate::backends::attach_flash_drive(backends, id, &context)
                .ok_or_else(|| FirmwareError::NoDrive(id.clone()))??;
            let size = match null_size {
                Some(s) => s,
                None => file
                    .metadata()
                    .map(|m| m.len())
                    .map_err(|e| FirmwareError::FlashRead {
                        name: id.clone(),
                        reason: e.to_string(),
                    })?,
            };
            if size == 0 || size % SECTOR_SIZE != 0 {
                return Err(FirmwareError::FlashSize {
                    name: id.clone(),
                    size,
                });
            }
            total = total
                .checked_add(size)
                .filter(|t| *t <= req.max_fw_size)
                .ok_or(FirmwareError::TooLarge(req.max_fw_size))?;
            let len =
                usize::try_from(size).map_err(|_| FirmwareError::TooLarge(req.max_fw_size))?;
            let image = FirmwareImage::from_file(file, len, !read_only)?;
            units.push(FlashUnit {
                drive: id.clone(),
                image: Arc::new(image),
                read_only,
            });
        }
        Ok(Some(Firmware::Flash(units)))
    }

    /// The image that ends at 4 GiB (the ROM, or flash 0), whose top the ISA window shows.
    fn top_len(&self) -> u64 {
        match self {
            Firmware::Bios { image, .. } => image.len(),
            Firmware::Flash(units) => units.first().map_or(0, |u| u.image.len()),
        }
    }

    /// The ISA BIOS window below 1 MiB: `(base, size)`.
    pub fn isa_window(&self) -> (u64, u64) {
        let size = self.top_len().min(ISA_BIOS_MAX);
        (ISA_BIOS_END - size, size)
    }

    /// Place the firmware in `view` (ROMs on the PCI side) and its flash devices on
    /// `mmio`. The ISA BIOS window is a read-only copy of the top image's last bytes,
    /// taken at each build, as QEMU's pc_isa_bios_init for machine types before 9.1 (later
    /// ones alias flash 0 there: what the guest programs into those bytes of flash 0 shows
    /// below 1 MiB only from the next reset on here).
    pub fn install(&self, view: &Arc<MemoryView>, mmio: &Bus) -> Result<(), FirmwareError> {
        let (isa_base, isa_size) = self.isa_window();
        let top = match self {
            Firmware::Bios { image, .. } => image,
            Firmware::Flash(units) => match units.first() {
                Some(u) => &u.image,
                None => return Ok(()),
            },
        };
        let mut isa = vec![0u8; isa_size as usize];
        top.read(top.len() - isa_size, &mut isa);
        view.set_rom(
            "isa-bios",
            isa_base,
            Some(RomImage::new(&isa).map_err(FirmwareError::IsaBios)?),
            RomWrites::Dropped,
        );
        match self {
            Firmware::Bios { image, .. } => {
                view.set_rom(
                    "pc.bios",
                    FOUR_GIB - image.len(),
                    Some(image.rom().clone()),
                    RomWrites::Dropped,
                );
            }
            Firmware::Flash(units) => {
                let mut base = FOUR_GIB;
                for (i, unit) in units.iter().enumerate() {
                    let len = unit.image.len();
                    base -= len;
                    let name = format!("system.flash{i}");
                    let mut flash = PflashCfi01::new(&name, unit.image.clone(), unit.read_only);
                    let mut sink = ViewRomd {
                        view: view.clone(),
                        name,
                        base,
                        rom: unit.image.rom().clone(),
                    };
                    sink.set_romd(true);
                    flash.set_romd_sink(Box::new(sink));
                    mmio.insert(base, len, Arc::new(Mutex::new(flash)))
                        .map_err(|source| FirmwareError::Bus { base, source })?;
                }
            }
        }
        Ok(())
    }
}

/// A flash's array in the memory view while it is in read-array mode: reads come from the
/// image (a read-only KVM slot), writes go to the flash device on the MMIO bus.
struct ViewRomd {
    view: Arc<MemoryView>,
    name: String,
    base: u64,
    rom: Arc<RomImage>,
}

impl RomdSink for ViewRomd {
    fn set_romd(&mut self, romd: bool) {
        self.view.set_rom(
            &self.name,
            self.base,
            romd.then(|| self.rom.clone()),
            RomWrites::Bus,
        );
    }
}

/// Find and read a `-bios` image as QEMU's qemu_find_file + x86_bios_rom_init: the name
/// as a readable path, else in each `-L` directory; a non-empty multiple of 64 KiB.
fn load_bios(name: &Path, data_dirs: &[PathBuf]) -> Result<Firmware, FirmwareError> {
    let shown = name.display().to_string();
    let fail = || FirmwareError::LoadBios(shown.clone());
    let candidates =
        std::iter::once(name.to_path_buf()).chain(data_dirs.iter().map(|d| d.join(name)));
    let mut bytes = None;
    for path in candidates {
        // Only regular files: a FIFO or device could block or never end.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let Ok(file) = std::fs::File::open(&path) else {
            continue;
        };
        let len = meta.len();
        if len == 0 || len % BIOS_UNIT != 0 || len > u64::from(u32::MAX) {
            return Err(fail());
        }
        let mut buf = Vec::with_capacity(len as usize);
        file.take(len).read_to_end(&mut buf).map_err(|_| fail())?;
        if buf.len() as u64 != len {
            return Err(fail());
        }
        bytes = Some(buf);
        break;
    }
    let bytes = bytes.ok_or_else(fail)?;
    Ok(Firmware::Bios {
        name: shown,
        image: Arc::new(FirmwareImage::from_bytes(&bytes)?),
    })
}

/// Whether KVM can map read-only memory (needed for flash, as QEMU requires).
pub fn check_readonly_memory(kvm: &kvm_ioctls::Kvm) -> Result<(), FirmwareError> {
    if kvm.check_extension(kvm_ioctls::Cap::ReadonlyMem) {
        Ok(())
    } else {
        Err(FirmwareError::NoReadonlyMemory)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use machina_tests::TempDir;

    fn req<'a>(
        bios: Option<&'a Path>,
        dirs: &'a [PathBuf],
        drives: &'a [Option<(String, String)>; 2],
    ) -> FirmwareRequest<'a> {
        FirmwareRequest {
            bios,
            data_dirs: dirs,
            drives,
            properties: [None, None],
            max_fw_size: 8 << 20,
        }
    }

    #[test]
    fn bios_lookup_and_size_rules() {
        let dir = TempDir::new("fw-bios");
        std::fs::write(dir.path().join("ok.bin"), vec![0x5a; 128 << 10]).unwrap();
        std::fs::write(dir.path().join("odd.bin"), vec![0; 1000]).unwrap();
        std::fs::write(dir.path().join("empty.bin"), b"").unwrap();
        let none: [Option<(String, String)>; 2] = [None, None];
        let dirs = vec![PathBuf::from("/nonexistent"), dir.path().to_path_buf()];
        // Found through -L by its bare name.
        let fw = Firmware::resolve(&req(Some(Path::new("ok.bin")), &dirs, &none), &mut [])
            .unwrap()
            .unwrap();
        assert_eq!(fw.isa_window(), (0xe0000, 0x20000));
        for name in ["odd.bin", "empty.bin", "missing.bin"] {
            let e =
                Firmware::resolve(&req(Some(Path::new(name)), &dirs, &none), &mut []).unwrap_err();
            assert_eq!(e.to_string(), format!("could not load PC BIOS '{name}'"));
        }
        // A directory is no image.
        let d = dir.path().to_path_buf();
        let e = Firmware::resolve(&req(Some(&d), &[], &none), &mut []).unwrap_err();
        assert!(e.to_string().starts_with("could not load PC BIOS"), "{e}");
        assert!(Firmware::resolve(&req(None, &[], &none), &mut [])
            .unwrap()
            .is_none());
    }

    #[test]
    fn flash_rules_follow_qemu() {
        let none: [Option<(String, String)>; 2] = [None, None];
        let mut r = req(None, &[], &none);
        r.properties = [None, Some("vars".into())];
        assert_eq!(
            Firmware::resolve(&r, &mut []).unwrap_err().to_string(),
            "pflash1 requires pflash0"
        );
        r.properties = [Some("code".into()), None];
        assert_eq!(
            Firmware::resolve(&r, &mut []).unwrap_err().to_string(),
            "Property 'cfi.pflash01.drive' can't find value 'code'"
        );
        let drives = [
            Some(("pflash0".to_string(), "-drive if=pflash,file=x".to_string())),
            None,
        ];
        let mut r = req(None, &[], &drives);
        r.properties = [Some("code".into()), None];
        assert_eq!(
            Firmware::resolve(&r, &mut []).unwrap_err().to_string(),
            "-drive if=pflash,file=x: clashes with -machine"
        );
    }

    #[test]
    fn isa_window_is_the_top_128k_or_all() {
        let small = Firmware::Bios {
            name: "b".into(),
            image: Arc::new(FirmwareImage::from_bytes(&[0; 64 << 10]).unwrap()),
        };
        assert_eq!(small.isa_window(), (0xf0000, 0x10000));
        let big = Firmware::Bios {
            name: "b".into(),
            image: Arc::new(FirmwareImage::from_bytes(&vec![0; 256 << 10]).unwrap()),
        };
        assert_eq!(big.isa_window(), (0xe0000, 0x20000));
    }

    #[test]
    fn install_places_the_rom_and_the_isa_copy() {
        let bytes: Vec<u8> = (0..(256u32 << 10)).map(|i| (i >> 12) as u8).collect();
        let fw = Firmware::Bios {
            name: "b".into(),
            image: Arc::new(FirmwareImage::from_bytes(&bytes).unwrap()),
        };
        let memory =
            vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(vm_memory::GuestAddress(0), 2 << 20)])
                .unwrap();
        let view = MemoryView::new(memory, true, Vec::new());
        let bus = Bus::new();
        fw.install(&view, &bus).unwrap();
        let read = |addr: u64| {
            let mut b = [0u8; 1];
            view.read(addr, &mut b, &bus);
            b[0]
        };
        assert_eq!(read(0xffff_fff0), 0x3f);
        // Without PAM layers, RAM covers the ISA window; the ROM sits behind it.
        assert_eq!(read(0xfff00), 0);
        assert_eq!(read(0xfffc_0000), 0);
        view.write(0xfffc_0000, &[9], &bus);
        assert_eq!(read(0xfffc_0000), 0, "ROM ignores writes");
        let slots = view.slots();
        assert!(
            slots
                .iter()
                .any(|s| s.gpa == 0xfffc_0000 && s.size == 256 << 10 && s.readonly),
            "{slots:?}"
        );
    }
}
