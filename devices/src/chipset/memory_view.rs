//! The guest-physical address space as the chipset decodes it: guest RAM and the PCI side
//! (ROMs placed there, else the MMIO bus), with the chipset's remapping layers on top (PAM
//! segments, the SMRAM/VGA window, TSEG and SMBASE black holes). One layered description;
//! KVM memslots ([`MemoryView::slots`], pushed to the listener on every change) and every
//! access that reaches the VMM (vCPU MMIO exits, qtest `readb`/`writeb`) are derived from
//! it, so both always agree.
//!
//! A layer can only point at guest RAM (checked against the RAM blocks when the view is
//! flattened), a ROM image the view owns, the MMIO bus or nothing: a guest programming the
//! chipset registers cannot reach host memory outside guest RAM and ROM images.
//!
//! Firmware plugs its images in with [`MemoryView::set_rom`]: a ROM is what the PCI side
//! shows at its address (the BIOS at the top of 4 GiB, the isa-bios copy below 1 MiB). Where
//! RAM is not mapped over it (outside RAM, or where PAM routes reads to the PCI side), reads
//! come from the image; writes are dropped or go to the MMIO bus (a flash device there).

use crate::bus::Bus;
use std::sync::{Arc, Mutex, RwLock};
use vm_memory::mmap::MmapRegion;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Guest RAM as the view reaches it.
pub type ViewMemory = GuestMemoryMmap<()>;

const PAGE: u64 = 0x1000;

/// Where an overlay sends reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Guest RAM at this RAM address (RAM's guest-physical address in the plan's map).
    Ram(u64),
    /// The PCI side: a ROM placed there, else the MMIO bus (devices, or nothing).
    Pci,
    /// Nothing answers: reads are all ones, writes are dropped (QEMU's black holes).
    Blackhole,
    /// The overlay is switched off for this direction: the layers below decide.
    Below,
}

/// One remapped range of a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overlay {
    pub base: u64,
    pub size: u64,
    pub read: Side,
    pub write: Side,
}

impl Overlay {
    /// Reads and writes both go to `side`.
    pub fn both(base: u64, size: u64, side: Side) -> Self {
        Self {
            base,
            size,
            read: side,
            write: side,
        }
    }
    fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }
}

/// The chipset's remapping layers, lowest priority first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Layer {
    /// PAM segments 0xc0000-0xfffff.
    Pam,
    /// The SMRAM window 0xa0000-0xbffff (and its high alias at 0xfeda0000 on q35).
    Smram,
    /// TSEG at the top of RAM below 4 GiB.
    Tseg,
    /// The q35 SMRAM at SMBASE (0x30000, 128 KiB).
    Smbase,
}

/// What happens to writes that reach a ROM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RomWrites {
    /// Dropped (a plain ROM).
    Dropped,
    /// Passed to the MMIO bus at the same address (a flash device in ROM mode: reads come
    /// from the image, commands are written to the device).
    Bus,
}

/// A ROM image in host memory the view owns (page-aligned, so KVM can map it read-only).
pub struct RomImage {
    region: MmapRegion<()>,
    len: u64,
}

impl std::fmt::Debug for RomImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RomImage").field("len", &self.len).finish()
    }
}

impl RomImage {
    /// An image holding `bytes`; its size is `bytes.len()` rounded up to a page (the tail
    /// reads as zero).
    pub fn new(bytes: &[u8]) -> std::io::Result<Arc<Self>> {
        let len = (bytes.len() as u64).div_ceil(PAGE).max(1) * PAGE;
        let region = MmapRegion::<()>::build(
            None,
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
        )
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        // SAFETY: the mapping was just created with `len` >= bytes.len() bytes, readable and
        // writable, and nothing else refers to it yet.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), region.as_ptr(), bytes.len()) };
        Ok(Arc::new(Self { region, len }))
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` bytes long and lives as long as `self`; the view
        // only reads it (KVM maps it read-only).
        unsafe { std::slice::from_raw_parts(self.region.as_ptr(), self.len as usize) }
    }

    /// The host address of the image (for a read-only KVM memslot).
    pub fn host_address(&self) -> u64 {
        self.region.as_ptr() as u64
    }

    /// Copy out `buf.len()` bytes at `offset` (bytes past the end read as all-ones).
    pub fn read(&self, offset: u64, buf: &mut [u8]) {
        buf.fill(0xff);
        if let Ok(s) = vm_memory::VolatileMemory::get_slice(&self.region, 0, self.len as usize) {
            let start = offset.min(self.len) as usize;
            let n = buf.len().min(self.len as usize - start);
            if let Ok(s) = s.subslice(start, n) {
                s.copy_to(&mut buf[..n]);
            }
        }
    }

    /// Change the image (a flash device programming its array): `data` at `offset`, what
    /// lies past the end dropped. Read-only slots over the image see the change at once.
    pub fn write(&self, offset: u64, data: &[u8]) {
        if let Ok(s) = vm_memory::VolatileMemory::get_slice(&self.region, 0, self.len as usize) {
            let start = offset.min(self.len) as usize;
            let n = data.len().min(self.len as usize - start);
            if let Ok(s) = s.subslice(start, n) {
                s.copy_from(&data[..n]);
            }
        }
    }
}

#[derive(Clone, Debug)]
struct Rom {
    name: String,
    base: u64,
    image: Arc<RomImage>,
    writes: RomWrites,
}

impl Rom {
    fn end(&self) -> u64 {
        self.base.saturating_add(self.image.len())
    }
}

/// Where a piece of the flattened space sends one direction of access.
#[derive(Clone, Debug)]
enum Route {
    Ram(u64),
    Rom(Arc<RomImage>, u64),
    Bus,
    Blackhole,
    Discard,
}

impl Route {
    /// Whether `next`, starting `delta` bytes later, continues this route.
    fn continues(&self, next: &Route, delta: u64) -> bool {
        match (self, next) {
            (Route::Ram(a), Route::Ram(b)) => a.checked_add(delta) == Some(*b),
            (Route::Rom(ia, a), Route::Rom(ib, b)) => {
                Arc::ptr_eq(ia, ib) && a.checked_add(delta) == Some(*b)
            }
            (Route::Bus, Route::Bus)
            | (Route::Blackhole, Route::Blackhole)
            | (Route::Discard, Route::Discard) => true,
            _ => false,
        }
    }
    fn at(&self, offset: u64) -> Route {
        match self {
            Route::Ram(a) => Route::Ram(a + offset),
            Route::Rom(i, a) => Route::Rom(i.clone(), a + offset),
            other => other.clone(),
        }
    }
}

#[derive(Clone, Debug)]
struct Span {
    base: u64,
    end: u64,
    read: Route,
    write: Route,
}

/// A KVM memslot the view wants: `size` bytes at `gpa` backed by host memory at `host`.
#[derive(Clone, Debug)]
pub struct SlotSpec {
    pub gpa: u64,
    pub size: u64,
    pub host: u64,
    pub readonly: bool,
    /// The ROM image behind the slot, kept alive while the slot exists.
    pub rom: Option<Arc<RomImage>>,
}

impl PartialEq for SlotSpec {
    fn eq(&self, o: &Self) -> bool {
        self.gpa == o.gpa
            && self.size == o.size
            && self.host == o.host
            && self.readonly == o.readonly
    }
}

/// Receives the whole wanted memslot list after every change of the view.
pub type SlotListener = Box<dyn Fn(&[SlotSpec]) + Send + Sync>;

/// Layers as a host bridge publishes them.
pub type LayerSet = Vec<(Layer, Vec<Overlay>)>;

struct State {
    layers: std::collections::BTreeMap<Layer, Vec<Overlay>>,
    roms: Vec<Rom>,
    spans: Vec<Span>,
}

/// The layered guest-physical address space of one machine build.
pub struct MemoryView {
    memory: ViewMemory,
    /// RAM blocks (base, size) of the plan.
    ram: Vec<(u64, u64)>,
    /// Whether KVM can map read-only memslots (KVM_CAP_READONLY_MEM); without it, ranges
    /// that are readable but not writable RAM are served by exits.
    readonly_slots: bool,
    state: RwLock<State>,
    listener: Mutex<Option<SlotListener>>,
    /// While positive, changes update the view but reach the listener only when the last
    /// [`Hold`] ends (the build: no vCPU runs, KVM gets the end result in one diff).
    held: Mutex<usize>,
}

/// Defers memslot updates until dropped; see [`MemoryView::hold`].
pub struct Hold<'a>(&'a MemoryView);

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        let listener = self.0.listener.lock().unwrap_or_else(|e| e.into_inner());
        let mut held = self.0.held.lock().unwrap_or_else(|e| e.into_inner());
        *held = held.saturating_sub(1);
        if *held == 0 {
            if let Some(l) = listener.as_ref() {
                l(&self.0.slots());
            }
        }
    }
}

impl MemoryView {
    /// The view of `memory` (RAM at the addresses of its regions) with the `seed` layers:
    /// the host bridge's reset-state layers, so that the memslots registered first already
    /// have the shape the bridge asks for (each later memslot change costs KVM a grace
    /// period).
    pub fn new(memory: ViewMemory, readonly_slots: bool, seed: LayerSet) -> Arc<Self> {
        let ram: Vec<(u64, u64)> = memory.iter().map(|r| (r.start_addr().0, r.len())).collect();
        let view = Self {
            memory,
            ram,
            readonly_slots,
            state: RwLock::new(State {
                layers: seed.into_iter().filter(|(_, o)| !o.is_empty()).collect(),
                roms: Vec::new(),
                spans: Vec::new(),
            }),
            listener: Mutex::new(None),
            held: Mutex::new(0),
        };
        {
            let mut st = view.write_state();
            st.spans = view.flatten(&st);
        }
        Arc::new(view)
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Guest RAM behind the view.
    pub fn memory(&self) -> &ViewMemory {
        &self.memory
    }

    /// Install the memslot listener; it is called at once with the current slots.
    pub fn set_listener(&self, listener: SlotListener) {
        let mut l = self.listener.lock().unwrap_or_else(|e| e.into_inner());
        let st = self.read_state();
        listener(&self.slots_of(&st.spans));
        *l = Some(listener);
    }

    /// Defer memslot updates until the returned guard is dropped (reads and writes through
    /// the view follow every change at once).
    pub fn hold(&self) -> Hold<'_> {
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        Hold(self)
    }

    /// Replace the overlays of `layer` (an empty list removes the layer).
    pub fn set_layer(&self, layer: Layer, overlays: Vec<Overlay>) {
        self.update(|st| {
            if st
                .layers
                .get(&layer)
                .map_or(overlays.is_empty(), |o| *o == overlays)
            {
                return false;
            }
            if overlays.is_empty() {
                st.layers.remove(&layer);
            } else {
                st.layers.insert(layer, overlays);
            }
            true
        });
    }

    /// Place (Some) or remove (None) the ROM called `name` on the PCI side at `base`.
    pub fn set_rom(&self, name: &str, base: u64, image: Option<Arc<RomImage>>, writes: RomWrites) {
        self.update(|st| {
            st.roms.retain(|r| r.name != name);
            if let Some(image) = image {
                st.roms.push(Rom {
                    name: name.to_string(),
                    base,
                    image,
                    writes,
                });
            }
            true
        });
    }

    fn update(&self, change: impl FnOnce(&mut State) -> bool) {
        // The listener lock first: slot lists reach KVM in the order the view changed.
        let listener = self.listener.lock().unwrap_or_else(|e| e.into_inner());
        let slots = {
            let mut st = self.write_state();
            if !change(&mut st) {
                return;
            }
            st.spans = self.flatten(&st);
            self.slots_of(&st.spans)
        };
        if *self.held.lock().unwrap_or_else(|e| e.into_inner()) > 0 {
            return;
        }
        if let Some(l) = listener.as_ref() {
            l(&slots);
        }
    }

    /// Whether [base, end) lies inside one RAM block.
    fn in_ram(&self, base: u64, end: u64) -> bool {
        self.ram
            .iter()
            .any(|&(b, s)| base >= b && end <= b.saturating_add(s))
    }

    /// Resolve `side` for [a, b) given the base (unremapped) decode.
    fn resolve(&self, st: &State, a: u64, b: u64, write: bool) -> Route {
        let mut side = if self.in_ram(a, b) {
            Side::Ram(a)
        } else {
            Side::Pci
        };
        // Highest layer first; the first overlay that is not `Below` decides.
        'layers: for overlays in st.layers.values().rev() {
            for o in overlays {
                if o.base <= a && b <= o.end() {
                    let s = if write { o.write } else { o.read };
                    match s {
                        Side::Below => {}
                        Side::Ram(r) => {
                            let r = r.saturating_add(a - o.base);
                            side = Side::Ram(r);
                            break 'layers;
                        }
                        other => {
                            side = other;
                            break 'layers;
                        }
                    }
                }
            }
        }
        match side {
            Side::Ram(r) if self.in_ram(r, r.saturating_add(b - a)) => Route::Ram(r),
            // A remap outside RAM: as if nothing were there.
            Side::Ram(_) => Route::Bus,
            Side::Blackhole => {
                if write {
                    Route::Discard
                } else {
                    Route::Blackhole
                }
            }
            Side::Pci | Side::Below => {
                match st.roms.iter().rev().find(|r| r.base <= a && b <= r.end()) {
                    Some(rom) if !write => Route::Rom(rom.image.clone(), a - rom.base),
                    Some(rom) if rom.writes == RomWrites::Dropped => Route::Discard,
                    _ => Route::Bus,
                }
            }
        }
    }

    fn flatten(&self, st: &State) -> Vec<Span> {
        let mut edges = vec![0u64, u64::MAX];
        for &(b, s) in &self.ram {
            edges.extend([b, b.saturating_add(s)]);
        }
        for r in &st.roms {
            edges.extend([r.base, r.end()]);
        }
        for o in st.layers.values().flatten() {
            edges.extend([o.base, o.end()]);
        }
        edges.sort_unstable();
        edges.dedup();
        let mut spans: Vec<Span> = Vec::new();
        for w in edges.windows(2) {
            let (a, b) = (w[0], w[1]);
            let read = self.resolve(st, a, b, false);
            let write = self.resolve(st, a, b, true);
            if let Some(last) = spans.last_mut() {
                let delta = a - last.base;
                if last.end == a
                    && last.read.continues(&read, delta)
                    && last.write.continues(&write, delta)
                {
                    last.end = b;
                    continue;
                }
            }
            spans.push(Span {
                base: a,
                end: b,
                read,
                write,
            });
        }
        spans
    }

    fn slots_of(&self, spans: &[Span]) -> Vec<SlotSpec> {
        let mut slots = Vec::new();
        for s in spans {
            let size = s.end - s.base;
            if s.base % PAGE != 0 || size % PAGE != 0 {
                continue; // served by exits
            }
            let (host, rom) = match &s.read {
                Route::Ram(r) => match self.ram_host(*r, size) {
                    Some(h) => (h, None),
                    None => continue,
                },
                Route::Rom(image, off) => (image.host_address() + off, Some(image.clone())),
                _ => continue,
            };
            let writable = matches!((&s.read, &s.write), (Route::Ram(a), Route::Ram(b)) if a == b);
            if !writable && !self.readonly_slots {
                continue;
            }
            slots.push(SlotSpec {
                gpa: s.base,
                size,
                host,
                readonly: !writable,
                rom,
            });
        }
        slots
    }

    /// The host address of RAM [r, r + size), if it lies inside one region.
    fn ram_host(&self, r: u64, size: u64) -> Option<u64> {
        let (region, offset) = self.memory.to_region_addr(GuestAddress(r))?;
        if offset.0.checked_add(size)? > region.len() {
            return None;
        }
        region.get_host_address(offset).ok().map(|p| p as u64)
    }

    /// The memslots the view wants now.
    pub fn slots(&self) -> Vec<SlotSpec> {
        self.slots_of(&self.read_state().spans)
    }

    /// The routes covering [addr, addr + len), split at span edges. The state lock is
    /// released before the caller serves them: a bus access may reach a host bridge that
    /// changes the view (ECAM config writes).
    fn pieces(&self, addr: u64, len: usize, write: bool) -> Vec<(u64, usize, Route)> {
        let st = self.read_state();
        let mut out = Vec::with_capacity(1);
        let mut a = addr;
        let end = addr.saturating_add(len as u64);
        while a < end {
            let i = st.spans.partition_point(|s| s.end <= a);
            let Some(s) = st.spans.get(i) else { break };
            let n = (s.end.min(end) - a) as usize;
            let route = if write { &s.write } else { &s.read };
            out.push((a, n, route.at(a - s.base)));
            a += n as u64;
        }
        out
    }

    /// A read the VMM serves (qtest, or a vCPU exit): RAM, ROM, the MMIO bus (unclaimed
    /// reads as zero, as on QEMU's x86 machines) or a black hole (all ones).
    pub fn read(&self, addr: u64, data: &mut [u8], bus: &Bus) {
        let pieces = self.pieces(addr, data.len(), false);
        let mut done = 0usize;
        for (a, n, route) in pieces {
            self.read_piece(a, &mut data[done..done + n], route, bus);
            done += n;
        }
        data[done..].fill(0);
    }

    fn read_piece(&self, a: u64, buf: &mut [u8], route: Route, bus: &Bus) {
        match route {
            Route::Ram(r) => {
                if self.memory.read_slice(buf, GuestAddress(r)).is_err() {
                    buf.fill(0);
                }
            }
            Route::Rom(image, off) => {
                let bytes = image.bytes();
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = bytes.get(off as usize + i).copied().unwrap_or(0);
                }
            }
            Route::Bus => {
                if !bus.read(a, buf) {
                    buf.fill(0);
                }
            }
            Route::Blackhole => buf.fill(0xff),
            Route::Discard => buf.fill(0),
        }
    }

    /// A write the VMM serves: RAM, the MMIO bus, or dropped.
    pub fn write(&self, addr: u64, data: &[u8], bus: &Bus) {
        let pieces = self.pieces(addr, data.len(), true);
        let mut done = 0usize;
        for (a, n, route) in pieces {
            let buf = &data[done..done + n];
            match route {
                Route::Ram(r) => {
                    let _ = self.memory.write_slice(buf, GuestAddress(r));
                }
                Route::Bus => {
                    bus.write(a, buf);
                }
                Route::Rom(..) | Route::Blackhole | Route::Discard => {}
            }
            done += n;
        }
    }
}

/// Shared handle chipset functions keep.
pub type SharedView = Arc<MemoryView>;

// ---- the chipset's layers, as pure functions of their registers ----

/// PAM: 13 segments (0xf0000 64 KiB, then twelve 16 KiB segments from 0xc0000).
pub const PAM_BIOS_BASE: u64 = 0xf0000;
pub const PAM_BIOS_SIZE: u64 = 0x10000;
pub const PAM_EXPAN_BASE: u64 = 0xc0000;
pub const PAM_EXPAN_SIZE: u64 = 0x4000;
const PAM_RE: u8 = 1;
const PAM_WE: u8 = 2;

/// The PAM overlays for the seven PAM registers (QEMU's pam_update indexing: segment 0 in
/// PAM0's high nibble, segment i in PAM[(i+1)/2], low nibble for odd i). RE routes reads
/// to RAM, WE writes; a cleared bit sends that direction to the PCI side.
pub fn pam_overlays(pam: &[u8; 7]) -> Vec<Overlay> {
    (0..13usize)
        .map(|i| {
            let reg = pam[i.div_ceil(2)];
            let attr = if i & 1 == 1 { reg & 3 } else { (reg >> 4) & 3 };
            let (base, size) = if i == 0 {
                (PAM_BIOS_BASE, PAM_BIOS_SIZE)
            } else {
                (
                    PAM_EXPAN_BASE + (i as u64 - 1) * PAM_EXPAN_SIZE,
                    PAM_EXPAN_SIZE,
                )
            };
            let side = |bit: u8| {
                if attr & bit != 0 {
                    Side::Ram(base)
                } else {
                    Side::Pci
                }
            };
            Overlay {
                base,
                size,
                read: side(PAM_RE),
                write: side(PAM_WE),
            }
        })
        .collect()
}

/// The legacy SMRAM window (the VGA hole).
pub const SMRAM_C_BASE: u64 = 0xa0000;
pub const SMRAM_C_SIZE: u64 = 0x20000;
/// Where q35 shows the window's RAM with H_SMRAME and D_OPEN.
pub const SMRAM_HIGH_BASE: u64 = 0xfeda_0000;

/// The SMRAM window for the non-SMM view: RAM when `ram_low` (D_OPEN without H_SMRAME),
/// else the PCI side; with `ram_high`, the RAM is also seen at 0xfeda0000.
pub fn smram_overlays(ram_low: bool, ram_high: bool) -> Vec<Overlay> {
    let mut v = vec![Overlay::both(
        SMRAM_C_BASE,
        SMRAM_C_SIZE,
        if ram_low {
            Side::Ram(SMRAM_C_BASE)
        } else {
            Side::Pci
        },
    )];
    if ram_high {
        v.push(Overlay::both(
            SMRAM_HIGH_BASE,
            SMRAM_C_SIZE,
            Side::Ram(SMRAM_C_BASE),
        ));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;

    fn view(readonly: bool) -> Arc<MemoryView> {
        let mem = ViewMemory::from_ranges(&[(GuestAddress(0), 0x200000)]).unwrap();
        MemoryView::new(mem, readonly, Vec::new())
    }

    fn rd(v: &MemoryView, a: u64) -> u8 {
        let mut b = [0u8];
        v.read(a, &mut b, &Bus::new());
        b[0]
    }
    fn wr(v: &MemoryView, a: u64, x: u8) {
        v.write(a, &[x], &Bus::new());
    }

    #[test]
    fn pam_segments_route_reads_and_writes() {
        let v = view(true);
        let rom = RomImage::new(&[0x5a; 0x20000]).unwrap();
        v.set_rom("isa-bios", 0xe0000, Some(rom), RomWrites::Dropped);
        // Plain RAM before any layer.
        wr(&v, 0xf0000, 1);
        assert_eq!(rd(&v, 0xf0000), 1);
        // All PAM clear: the PCI side (the ROM) for reads, writes dropped.
        v.set_layer(Layer::Pam, pam_overlays(&[0; 7]));
        assert_eq!(rd(&v, 0xf0000), 0x5a);
        wr(&v, 0xf0000, 2);
        assert_eq!(rd(&v, 0xf0000), 0x5a);
        // Nothing behind 0xc0000 on the PCI side: unclaimed reads 0.
        assert_eq!(rd(&v, 0xc0000), 0);
        // WE only: writes reach RAM, reads still the ROM.
        v.set_layer(Layer::Pam, pam_overlays(&[0x20, 0, 0, 0, 0, 0, 0]));
        wr(&v, 0xf0000, 3);
        assert_eq!(rd(&v, 0xf0000), 0x5a);
        // RE only: RAM shows what was written; writes go to the PCI side.
        v.set_layer(Layer::Pam, pam_overlays(&[0x10, 0, 0, 0, 0, 0, 0]));
        assert_eq!(rd(&v, 0xf0000), 3);
        wr(&v, 0xf0000, 4);
        assert_eq!(rd(&v, 0xf0000), 3);
        // Segment 1 (0xc0000) is PAM1's low nibble, segment 2 its high nibble.
        v.set_layer(Layer::Pam, pam_overlays(&[0, 0x03, 0, 0, 0, 0, 0]));
        wr(&v, 0xc0000, 7);
        wr(&v, 0xc4000, 7);
        assert_eq!(rd(&v, 0xc0000), 7);
        assert_eq!(rd(&v, 0xc4000), 0);
    }

    #[test]
    fn slots_follow_layers() {
        let v = view(true);
        assert_eq!(v.slots().len(), 1);
        v.set_layer(
            Layer::Pam,
            pam_overlays(&[0x10, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33]),
        );
        v.set_layer(Layer::Smram, smram_overlays(false, false));
        let slots = v.slots();
        // [0, 0xa0000) rw, [0xc0000, 0xf0000) rw, [0xf0000, 0x100000) ro, rest rw.
        let desc: Vec<(u64, u64, bool)> =
            slots.iter().map(|s| (s.gpa, s.size, s.readonly)).collect();
        assert_eq!(
            desc,
            vec![
                (0, 0xa0000, false),
                (0xc0000, 0x30000, false),
                (0xf0000, 0x10000, true),
                (0x100000, 0x100000, false)
            ]
        );
        // Without read-only slots the BIOS segment is left to exits.
        let v = view(false);
        v.set_layer(
            Layer::Pam,
            pam_overlays(&[0x10, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33]),
        );
        assert!(v.slots().iter().all(|s| !s.readonly && s.gpa != 0xf0000));
    }

    #[test]
    fn hold_defers_slot_updates() {
        let v = view(true);
        let calls = Arc::new(Mutex::new(Vec::new()));
        let c = calls.clone();
        v.set_listener(Box::new(move |s| c.lock().unwrap().push(s.len())));
        {
            let _hold = v.hold();
            v.set_layer(Layer::Pam, pam_overlays(&[0; 7]));
            v.set_layer(Layer::Smram, smram_overlays(false, false));
            // Accesses follow at once.
            assert_eq!(rd(&v, 0xf0000), 0);
        }
        v.set_layer(Layer::Smram, smram_overlays(false, false));
        // The initial call, then one for the whole held batch; the no-op change adds none.
        assert_eq!(calls.lock().unwrap().as_slice(), &[1, 2]);
    }

    #[test]
    fn blackhole_and_remap_outside_ram() {
        let v = view(true);
        wr(&v, 0x1ff000, 9);
        v.set_layer(
            Layer::Tseg,
            vec![Overlay::both(0x100000, 0x100000, Side::Blackhole)],
        );
        assert_eq!(rd(&v, 0x1ff000), 0xff);
        wr(&v, 0x1ff000, 1);
        v.set_layer(Layer::Tseg, vec![]);
        assert_eq!(rd(&v, 0x1ff000), 9);
        // A layer pointing past RAM reaches nothing, never host memory.
        v.set_layer(
            Layer::Smram,
            vec![Overlay::both(0x1000, 0x1000, Side::Ram(u64::MAX - 10))],
        );
        assert_eq!(rd(&v, 0x1000), 0);
        assert!(v.slots().iter().all(|s| s.gpa != 0x1000));
    }

    struct Dev(Vec<(u64, u8)>);
    impl BusDevice for Dev {
        fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
            data.fill(0x77);
        }
        fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
            self.0.push((offset, data[0]));
        }
    }

    #[test]
    fn pci_side_reaches_the_bus() {
        let v = view(true);
        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(Dev(Vec::new())));
        bus.insert(0xa0000, 0x20000, dev.clone()).unwrap();
        v.set_layer(Layer::Smram, smram_overlays(false, false));
        let mut b = [0u8; 2];
        v.read(0xa0010, &mut b, &bus);
        assert_eq!(b, [0x77, 0x77]);
        v.write(0xa0010, &[5], &bus);
        assert_eq!(dev.lock().unwrap().0.as_slice(), &[(0x10, 5)]);
        v.set_layer(Layer::Smram, smram_overlays(true, false));
        v.read(0xa0010, &mut b, &bus);
        assert_eq!(b, [0, 0]);
    }
}
