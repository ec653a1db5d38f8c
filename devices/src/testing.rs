//! Test support shared by the unit tests, the integration tests (`devices/tests/`) and the
//! virtio-blk bench: virtio-pci function plans from the builtin catalog, and one synthetic
//! guest driver that brings a function up through config space and BAR accesses the way a
//! guest does, with the driver side of a split virtqueue.
//!
//! Built for `cfg(test)` and with the `testing` feature (which the package's own
//! dev-dependency on itself turns on for its integration tests and bench); never part of
//! the VMM.

use crate::pci::{MsiSink, PciFunction};
use crate::virtio::blk::{BlockBackend, BlockStats};
use crate::virtio::console::ConsoleInput;
use crate::virtio::regs::{common, legacy, modern, status};
use crate::virtio::{create, IntxLine, VirtioBackend, VirtioPciFunction, VirtioWorker};
use machine::{Catalog, DeviceRequest, PciFunctionPlan, Plan, PlanRequest};
use std::sync::{Arc, Mutex};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

// ---------------------------------------------------------------------------------------
// Plans
// ---------------------------------------------------------------------------------------

pub const DEVICE_NET: u16 = 1;
pub const DEVICE_BLK: u16 = 2;
pub const DEVICE_CONSOLE: u16 = 3;
pub const DEVICE_RNG: u16 = 4;

/// A request for `machine` with these `-device`s and QEMU's defaults otherwise (128 MiB,
/// one CPU, default devices unless the caller sets `nodefaults`).
pub fn request(machine: &str, devices: &[&str]) -> PlanRequest {
    PlanRequest {
        machine: Some(machine.into()),
        devices: devices
            .iter()
            .map(|d| DeviceRequest::parse(d).unwrap_or_else(|e| panic!("-device {d}: {e}")))
            .collect(),
        ..Default::default()
    }
}

/// The builtin catalog's plan for `req` (panics with the planner's error).
pub fn catalog_plan(req: &PlanRequest) -> Plan {
    Catalog::builtin()
        .plan(req)
        .unwrap_or_else(|e| panic!("{req:?}: {e}"))
}

/// The function `-device ...,id=dut` of a q35 `-nodefaults` machine with `devices` (its
/// parents first), as the catalog plans it; `props` then go into its properties decoded as
/// the planner decodes them, or, where the planner would refuse them, as text, so that
/// tests can hand a device model values the planner refuses.
pub fn dut_plan(devices: &[&str], props: &[(&str, &str)]) -> PciFunctionPlan {
    let mut req = request("q35", devices);
    req.nodefaults = true;
    let mut f = catalog_plan(&req)
        .pci
        .into_iter()
        .find(|f| f.id.as_deref() == Some("dut"))
        .unwrap_or_else(|| panic!("no id=dut in {devices:?}"));
    set_props(&mut f, props);
    f
}

/// Set `props` on `f`: decoded with the catalog's type of each property, or kept as text
/// (which the models decode when they read it, and may refuse).
pub fn set_props(f: &mut PciFunctionPlan, props: &[(&str, &str)]) {
    let ty = Catalog::builtin().device_type(&f.type_name);
    for (k, v) in props {
        let def = ty.and_then(|t| t.property(k));
        match def.and_then(|d| d.decode(&f.type_name, v).ok()) {
            Some(value) => f.properties.insert(*k, value),
            None => f.properties.insert_text(*k, *v),
        }
    }
}

/// The virtio-pci function of virtio device type `device_type` as the catalog plans it on
/// q35: transitional (`legacy`) or modern-only, on `pcie.0` or behind a pcie-root-port
/// (`pcie`: with a PCI Express capability). `props` go into the function's properties as
/// given, unchecked (see [`dut_plan`]).
pub fn virtio_plan(
    device_type: u16,
    legacy: bool,
    pcie: bool,
    props: &[(&str, &str)],
) -> PciFunctionPlan {
    let name = match device_type {
        DEVICE_NET => "virtio-net-pci",
        DEVICE_BLK => "virtio-blk-pci",
        DEVICE_CONSOLE => "virtio-serial-pci",
        DEVICE_RNG => "virtio-rng-pci",
        t => panic!("no virtio-pci type for device type {t}"),
    };
    // On a root bus a plain virtio-*-pci is transitional; behind a root port it is
    // modern-only unless disable-legacy=off (QEMU's virtio_pci_realize rules).
    let device = match (legacy, pcie) {
        (true, false) => format!("{name},id=dut"),
        (false, false) => format!("{name}-non-transitional,id=dut"),
        (false, true) => format!("{name},id=dut,bus=rp"),
        (true, true) => format!("{name},id=dut,bus=rp,disable-legacy=off"),
    };
    let mut devices = vec![];
    if pcie {
        devices.push("pcie-root-port,id=rp,chassis=1");
    }
    devices.push(&device);
    let f = dut_plan(&devices, props);
    let mode = f.virtio.expect("a virtio function");
    assert_eq!(
        (mode.legacy, mode.pcie_capability),
        (legacy, pcie),
        "{device}"
    );
    f
}

/// A writable, write-back virtio-blk backend over `file` counting into `stats`.
pub fn block_backend(file: std::fs::File, stats: Arc<BlockStats>) -> VirtioBackend {
    VirtioBackend::Block(BlockBackend {
        file,
        read_only: false,
        direct: false,
        writeback: true,
        stats,
        size: None,
        disk_size: Arc::default(),
        auto_num_queues: 1,
    })
}

// ---------------------------------------------------------------------------------------
// The driver
// ---------------------------------------------------------------------------------------

/// Records the MSI-X messages a function sends: (address, data).
#[derive(Default)]
pub struct MsiLog(pub Mutex<Vec<(u64, u32)>>);
impl MsiSink for MsiLog {
    fn send(&self, address: u64, data: u32) {
        self.0.lock().unwrap().push((address, data));
    }
}

/// Records the INTx levels a function drives.
#[derive(Default)]
pub struct IntxLog(pub Mutex<Vec<bool>>);
impl IntxLine for IntxLog {
    fn set_level(&self, level: bool) {
        self.0.lock().unwrap().push(level);
    }
}

/// A virtio-pci function with its worker and guest memory, driven through its config space
/// and BARs.
pub struct Driver {
    pub f: VirtioPciFunction,
    pub w: VirtioWorker,
    pub mem: GuestMemoryMmap,
    pub msi: Arc<MsiLog>,
    pub intx: Arc<IntxLog>,
    pub console_input: Option<ConsoleInput>,
}

impl Driver {
    pub fn new(plan: &PciFunctionPlan, backend: VirtioBackend, mem: GuestMemoryMmap) -> Self {
        let intx = Arc::new(IntxLog::default());
        let parts =
            create(plan, backend, mem.clone(), Some(intx.clone())).expect("create virtio device");
        let mut f = parts.function;
        let msi = Arc::new(MsiLog::default());
        f.set_msi_sink(msi.clone());
        Self {
            f,
            w: parts.worker,
            mem,
            msi,
            intx,
            console_input: parts.console_input,
        }
    }

    pub fn cfg_read(&mut self, off: u16, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.f.config_read(off, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    pub fn cfg_write(&mut self, off: u16, v: u64, len: usize) {
        self.f.config_write(off, &v.to_le_bytes()[..len]);
    }

    pub fn bar_read(&mut self, bar: usize, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.f.bar_read(bar, off, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    pub fn bar_write(&mut self, bar: usize, off: u64, v: u64, len: usize) {
        self.f.bar_write(bar, off, &v.to_le_bytes()[..len]);
    }

    /// BAR size as a guest measures it (all-ones, read back).
    pub fn bar_size(&mut self, index: u16) -> u64 {
        let off = 0x10 + 4 * index;
        self.cfg_write(off, 0xffff_ffff, 4);
        let v = self.cfg_read(off, 4) as u32;
        if v == 0 {
            return 0;
        }
        let mask = if v & 1 != 0 { !3u32 } else { !0xfu32 };
        u64::from((!(v & mask)).wrapping_add(1))
    }

    pub fn common_r(&mut self, off: u64, len: usize) -> u64 {
        self.bar_read(modern::BAR, modern::COMMON + off, len)
    }

    pub fn common_w(&mut self, off: u64, v: u64, len: usize) {
        self.bar_write(modern::BAR, modern::COMMON + off, v, len);
    }

    /// Device status through the modern common config.
    pub fn status(&mut self) -> u8 {
        self.common_r(common::STATUS, 1) as u8
    }

    pub fn needs_reset(&mut self) -> bool {
        self.status() & status::NEEDS_RESET != 0
    }

    /// Device features as the modern interface shows them.
    pub fn device_features(&mut self) -> u64 {
        self.common_w(common::DFSELECT, 0, 4);
        let lo = self.common_r(common::DF, 4);
        self.common_w(common::DFSELECT, 1, 4);
        let hi = self.common_r(common::DF, 4);
        lo | (hi << 32)
    }

    pub fn num_queues(&mut self) -> u16 {
        self.common_r(common::NUMQ, 2) as u16
    }

    /// Modern init up to FEATURES_OK; returns the status read back.
    pub fn modern_begin(&mut self, features: u64) -> u8 {
        self.common_w(common::STATUS, 0, 1);
        self.common_w(common::STATUS, u64::from(status::ACKNOWLEDGE), 1);
        self.common_w(
            common::STATUS,
            u64::from(status::ACKNOWLEDGE | status::DRIVER),
            1,
        );
        for sel in 0..2u64 {
            self.common_w(common::GFSELECT, sel, 4);
            self.common_w(common::GF, (features >> (32 * sel)) & 0xffff_ffff, 4);
        }
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.common_w(common::STATUS, u64::from(s), 1);
        self.status()
    }

    /// Select queue `q` and read its maximum / current size.
    pub fn modern_queue_size(&mut self, q: u16) -> u16 {
        self.common_w(common::Q_SELECT, u64::from(q), 2);
        self.common_r(common::Q_SIZE, 2) as u16
    }

    /// Program queue `q` (size and ring addresses) and enable it.
    pub fn modern_queue(&mut self, q: u16, size: u16, desc: u64, avail: u64, used: u64) {
        self.common_w(common::Q_SELECT, u64::from(q), 2);
        self.common_w(common::Q_SIZE, u64::from(size), 2);
        self.common_w(common::Q_DESCLO, desc & 0xffff_ffff, 4);
        self.common_w(common::Q_DESCHI, desc >> 32, 4);
        self.common_w(common::Q_AVAILLO, avail & 0xffff_ffff, 4);
        self.common_w(common::Q_AVAILHI, avail >> 32, 4);
        self.common_w(common::Q_USEDLO, used & 0xffff_ffff, 4);
        self.common_w(common::Q_USEDHI, used >> 32, 4);
        self.common_w(common::Q_ENABLE, 1, 2);
    }

    /// [`Driver::modern_queue`] for `ring`.
    pub fn modern_ring(&mut self, q: u16, ring: &Ring) {
        self.modern_queue(q, ring.size, ring.desc, ring.avail, ring.used);
    }

    /// What the device holds for queue `q`: (size, desc, avail, used).
    pub fn modern_queue_state(&mut self, q: u16) -> (u16, u64, u64, u64) {
        self.common_w(common::Q_SELECT, u64::from(q), 2);
        let size = self.common_r(common::Q_SIZE, 2) as u16;
        let desc = self.common_r(common::Q_DESCLO, 4) | (self.common_r(common::Q_DESCHI, 4) << 32);
        let avail =
            self.common_r(common::Q_AVAILLO, 4) | (self.common_r(common::Q_AVAILHI, 4) << 32);
        let used = self.common_r(common::Q_USEDLO, 4) | (self.common_r(common::Q_USEDHI, 4) << 32);
        (size, desc, avail, used)
    }

    pub fn modern_driver_ok(&mut self) {
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
        self.common_w(common::STATUS, u64::from(s), 1);
    }

    pub fn notify_modern(&mut self, q: u16) {
        self.bar_write(
            modern::BAR,
            modern::NOTIFY + u64::from(q) * u64::from(modern::NOTIFY_MULTIPLIER),
            u64::from(q),
            2,
        );
    }

    /// Legacy init: reset, ACKNOWLEDGE|DRIVER and the low 32 feature bits the device also
    /// offers; returns the device's features.
    pub fn legacy_begin(&mut self, features: u32) -> u32 {
        self.bar_write(0, legacy::STATUS, 0, 1);
        self.bar_write(
            0,
            legacy::STATUS,
            u64::from(status::ACKNOWLEDGE | status::DRIVER),
            1,
        );
        let host = self.bar_read(0, legacy::HOST_FEATURES, 4) as u32;
        self.bar_write(0, legacy::GUEST_FEATURES, u64::from(features & host), 4);
        host
    }

    /// Legacy queue `q` at page frame `pfn`; returns the (fixed) queue size.
    pub fn legacy_queue(&mut self, q: u16, pfn: u32) -> u16 {
        self.bar_write(0, legacy::QUEUE_SEL, u64::from(q), 2);
        let size = self.bar_read(0, legacy::QUEUE_NUM, 2) as u16;
        self.bar_write(0, legacy::QUEUE_PFN, u64::from(pfn), 4);
        size
    }

    pub fn legacy_driver_ok(&mut self) {
        self.bar_write(
            0,
            legacy::STATUS,
            u64::from(status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK),
            1,
        );
    }

    pub fn notify_legacy(&mut self, q: u16) {
        self.bar_write(0, legacy::QUEUE_NOTIFY, u64::from(q), 2);
    }
}

// ---------------------------------------------------------------------------------------
// Driver side of a split virtqueue
// ---------------------------------------------------------------------------------------

pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;
pub const VRING_DESC_F_INDIRECT: u16 = 4;

/// Ring addresses and the driver's indices for one split virtqueue.
#[derive(Debug, Clone, Copy)]
pub struct Ring {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// Next avail index the driver publishes.
    pub avail_idx: u16,
    /// Used entries the driver has consumed.
    pub used_seen: u16,
}

impl Ring {
    pub fn new(size: u16, desc: u64, avail: u64, used: u64) -> Self {
        Self {
            size,
            desc,
            avail,
            used,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// The legacy layout for page frame `pfn` (virtio 0.9.5 vring_init, 4 KiB alignment).
    pub fn legacy(size: u16, pfn: u64) -> Self {
        let desc = pfn << 12;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 4 + 2 * u64::from(size)).next_multiple_of(4096);
        Self::new(size, desc, avail, used)
    }

    /// Bytes the used ring spans, avail_event included.
    pub fn used_bytes(&self) -> u64 {
        6 + 8 * u64::from(self.size)
    }

    pub fn avail_bytes(&self) -> u64 {
        6 + 2 * u64::from(self.size)
    }

    /// Encode one descriptor.
    pub fn desc_bytes(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        d
    }

    /// Write descriptor `idx` of the table (ignored where the table is not in memory).
    pub fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        idx: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = self.desc.wrapping_add(16 * u64::from(idx));
        let _ = mem.write_slice(&Self::desc_bytes(addr, len, flags, next), GuestAddress(at));
    }

    /// Put `head` in the next avail slot without publishing it.
    pub fn stage(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        let _ = mem.write_obj(head, GuestAddress(self.avail.wrapping_add(4 + 2 * slot)));
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Publish the avail index.
    pub fn publish(&self, mem: &GuestMemoryMmap) {
        let _ = mem.write_obj(self.avail_idx, GuestAddress(self.avail.wrapping_add(2)));
    }

    /// Write the chain `bufs` (address, length, device-writable) as consecutive descriptors
    /// from `first`, stage its head and publish it; returns the head.
    pub fn push_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        first: u16,
        bufs: &[(u64, u32, bool)],
    ) -> u16 {
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let idx = first + i as u16;
            let last = i + 1 == bufs.len();
            let mut flags = if write { VRING_DESC_F_WRITE } else { 0 };
            if !last {
                flags |= VRING_DESC_F_NEXT;
            }
            self.write_desc(mem, idx, addr, len, flags, if last { 0 } else { idx + 1 });
        }
        self.stage(mem, first);
        self.publish(mem);
        first
    }

    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used.wrapping_add(2)))
            .unwrap_or(0)
    }

    /// Used element `n` (mod size): (id, len).
    pub fn used_elem(&self, mem: &GuestMemoryMmap, n: u16) -> (u32, u32) {
        let e = self.used.wrapping_add(4 + 8 * u64::from(n % self.size));
        (
            mem.read_obj(GuestAddress(e)).unwrap_or(u32::MAX),
            mem.read_obj(GuestAddress(e.wrapping_add(4)))
                .unwrap_or(u32::MAX),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_plans_follow_the_virtio_placement_rules() {
        // (type, legacy, pcie) -> (device ID, revision, subsystem ID), QEMU's values.
        for (t, legacy, pcie, want) in [
            (DEVICE_BLK, true, false, (0x1001, 0, 2)),
            (DEVICE_BLK, false, false, (0x1042, 1, 0x1100)),
            (DEVICE_BLK, false, true, (0x1042, 1, 0x1100)),
            (DEVICE_BLK, true, true, (0x1001, 0, 2)),
            (DEVICE_NET, true, false, (0x1000, 0, 1)),
            (DEVICE_CONSOLE, true, false, (0x1003, 0, 3)),
            (DEVICE_RNG, true, false, (0x1005, 0, 4)),
            (DEVICE_RNG, false, false, (0x1044, 1, 0x1100)),
        ] {
            let f = virtio_plan(t, legacy, pcie, &[("serial", "x")]);
            let id = &f.identity;
            assert_eq!(
                (id.device_id, id.revision, id.subsystem_id.unwrap()),
                want,
                "{}",
                f.type_name
            );
            assert_eq!(f.properties.text("serial").as_deref(), Some("x"));
        }
    }
}
