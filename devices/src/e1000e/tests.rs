//! The model driven as a driver would: registers through BAR 0 and BAR 2, rings in a fake
//! guest memory, frames through a datagram socket pair standing in for the netdev.

use super::regs::*;
use super::tx::{fold, ones_sum};
use super::E1000e;
use crate::ide::DmaMemory;
use crate::pci::device::{BusPlacement, PciFunction};
use crate::pci::interrupt::MsiSink;
use crate::pci::nic::NicBackend;
use crate::virtio::IntxLine;
use machina_tests::rng::XorShift;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const RAM: usize = 1 << 20;
const TX_RING: u64 = 0x1000;
const RX_RING: u64 = 0x2000;
const RING_LEN: u32 = 0x100; // 16 descriptors

/// Guest RAM from 0 to RAM; accesses outside read zeros and drop writes.
struct Ram(Mutex<Vec<u8>>);

impl DmaMemory for Ram {
    fn read(&self, addr: u64, buf: &mut [u8]) {
        let m = self.0.lock().unwrap();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = usize::try_from(addr + i as u64)
                .ok()
                .and_then(|a| m.get(a).copied())
                .unwrap_or(0);
        }
    }
    fn write(&self, addr: u64, data: &[u8]) {
        let mut m = self.0.lock().unwrap();
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = usize::try_from(addr + i as u64)
                .ok()
                .and_then(|a| m.get_mut(a))
            {
                *slot = *b;
            }
        }
    }
}

impl Ram {
    fn put(&self, addr: u64, data: &[u8]) {
        DmaMemory::write(self, addr, data);
    }
    fn get(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        DmaMemory::read(self, addr, &mut v);
        v
    }
}

#[derive(Default)]
struct Line(AtomicBool);
impl IntxLine for Line {
    fn set_level(&self, level: bool) {
        self.0.store(level, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct Sent(Mutex<Vec<(u64, u32)>>);
impl MsiSink for Sent {
    fn send(&self, address: u64, data: u32) {
        self.0.lock().unwrap().push((address, data));
    }
}

struct Rig {
    dev: E1000e,
    peer: UnixDatagram,
    ram: Arc<Ram>,
    line: Arc<Line>,
    msi: Arc<Sent>,
}

fn rig() -> Rig {
    let (ours, peer) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    peer.set_nonblocking(true).unwrap();
    let ram = Arc::new(Ram(Mutex::new(vec![0; RAM])));
    let line = Arc::new(Line::default());
    let msi = Arc::new(Sent::default());
    let plan = crate::testing::dut_plan(&["e1000e,id=dut"], &[]);
    let backend = NicBackend {
        file: std::fs::File::from(OwnedFd::from(ours)),
        mac: machine::MacAddr::FIRST_DEFAULT,
        memory: ram.clone(),
        intx: line.clone(),
        pull: None,
    };
    let place = BusPlacement {
        express: true,
        root: true,
    };
    let mut dev = E1000e::with_backend(&plan, place, backend).unwrap();
    dev.set_msi_sink(msi.clone());
    // Memory decoding and bus mastering, as the driver enables them.
    dev.config_write(0x04, &[0x06, 0x00]);
    Rig {
        dev,
        peer,
        ram,
        line,
        msi,
    }
}

impl Rig {
    fn w(&mut self, reg: usize, v: u32) {
        self.dev.bar_write(0, (reg as u64) << 2, &v.to_le_bytes());
    }
    fn r(&mut self, reg: usize) -> u32 {
        let mut b = [0u8; 4];
        self.dev.bar_read(0, (reg as u64) << 2, &mut b);
        u32::from_le_bytes(b)
    }
    fn tx_setup(&mut self) {
        self.w(TDBAL, TX_RING as u32);
        self.w(TDBAH, 0);
        self.w(TDLEN, RING_LEN);
        self.w(TDH, 0);
        self.w(TDT, 0);
        self.w(TCTL, TCTL_EN);
    }
    fn rx_setup(&mut self, extended: bool, buffers: u32) {
        self.w(RDBAL, RX_RING as u32);
        self.w(RDBAH, 0);
        self.w(RDLEN, RING_LEN);
        self.w(RDH, 0);
        self.w(RDT, 0);
        self.w(RFCTL, if extended { RFCTL_EXTEN } else { 0 });
        for i in 0..16u64 {
            // Buffer i at 0x10000 + i * 2 KiB.
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&(0x10000 + i * 2048).to_le_bytes());
            self.ram.put(RX_RING + i * 16, &d);
        }
        self.w(RCTL, RCTL_EN | RCTL_BAM | RCTL_SECRC);
        self.w(RDT, buffers);
    }
    /// Put a transmit descriptor at TDT and advance it.
    fn tx_push(&mut self, d: [u8; 16]) {
        let t = self.r(TDT);
        self.ram.put(TX_RING + u64::from(t) * 16, &d);
        self.w(TDT, (t + 1) % (RING_LEN / 16));
    }
    fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 70000];
        match self.peer.recv(&mut buf) {
            Ok(n) => Some(buf[..n].to_vec()),
            Err(_) => None,
        }
    }
}

fn legacy_tx(addr: u64, len: u16, cmd: u32) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&(u32::from(len) | cmd).to_le_bytes());
    d
}

fn frame(dest: [u8; 6], len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&dest);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    for (i, b) in f.iter_mut().enumerate().skip(14) {
        *b = i as u8;
    }
    f
}

#[test]
fn nvm_holds_the_mac_and_a_valid_checksum() {
    let mut r = rig();
    let mut words = Vec::new();
    for a in 0..64u32 {
        r.w(EERD, (a << 2) | EERW_START);
        let v = r.r(EERD);
        assert_ne!(v & EERW_DONE, 0, "word {a} done");
        words.push((v >> 16) as u16);
    }
    assert_eq!(words[0].to_le_bytes(), [0x52, 0x54]);
    assert_eq!(words[2].to_le_bytes(), [0x34, 0x56]);
    assert_eq!(words[0x0b], 0x10d3, "device ID");
    let sum = words.iter().fold(0u16, |s, w| s.wrapping_add(*w));
    assert_eq!(sum, 0xbaba, "the checksum Linux's e1000e validates");
    // Past the NVM: not done.
    r.w(EERD, (200 << 2) | EERW_START);
    assert_eq!(r.r(EERD) & EERW_DONE, 0);
    // RA[0] holds the MAC, valid.
    assert_eq!(r.r(RA), 0x1200_5452);
    assert_eq!(r.r(RA + 1), 0x8000_5634);
}

#[test]
fn link_is_up_and_the_phy_answers_over_mdic() {
    let mut r = rig();
    let status = r.r(STATUS);
    assert_eq!(status & (STATUS_LU | STATUS_FD), STATUS_LU | STATUS_FD);
    assert_eq!(status & STATUS_SPEED_1000, STATUS_SPEED_1000);
    let read = |r: &mut Rig, phy: u32, reg: u32| {
        r.w(MDIC, MDIC_OP_READ | (phy << 21) | (reg << 16));
        r.r(MDIC)
    };
    let v = read(&mut r, 1, 1);
    assert_ne!(v & MDIC_READY, 0);
    assert_eq!(v & MDIC_ERROR, 0);
    assert_ne!(v & u32::from(BMSR_LINK_ST | BMSR_AN_COMP), 0);
    assert_eq!(read(&mut r, 1, 2) & 0xffff, 0x0141);
    assert_eq!(read(&mut r, 1, 3) & 0xffff, 0x0cb1);
    assert_ne!(read(&mut r, 2, 1) & MDIC_ERROR, 0, "only PHY address 1");
    assert_ne!(read(&mut r, 1, 0x1f) & MDIC_ERROR, 0, "no such register");
    // Restarting auto-negotiation completes at once and signals a link change.
    r.w(IMS, ICR_LSC);
    r.w(
        MDIC,
        MDIC_OP_WRITE | (1 << 21) | (u32::from(BMCR_AUTOEN | BMCR_ANRESTART)),
    );
    assert!(r.line.0.load(Ordering::SeqCst), "LSC raised INTx");
    assert_eq!(
        read(&mut r, 1, 0) & u32::from(BMCR_ANRESTART),
        0,
        "self-clearing"
    );
    assert_ne!(r.r(ICR) & ICR_LSC, 0);
    assert!(
        !r.line.0.load(Ordering::SeqCst),
        "ICR read cleared the line"
    );
}

#[test]
fn icr_ics_ims_imc_and_intx() {
    let mut r = rig();
    r.w(ICS, ICR_TXDW);
    assert!(!r.line.0.load(Ordering::SeqCst), "masked");
    assert_eq!(r.r(ICS), ICR_TXDW | ICR_ASSERTED, "ICS reads as ICR");
    r.w(IMS, ICR_TXDW | ICR_RXT0);
    assert!(
        r.line.0.load(Ordering::SeqCst),
        "enabling a pending cause raises INTx"
    );
    assert_eq!(r.r(IMS), ICR_TXDW | ICR_RXT0);
    r.w(IMC, ICR_TXDW);
    assert!(!r.line.0.load(Ordering::SeqCst));
    assert_eq!(r.r(IMS), ICR_RXT0);
    r.w(ICS, ICR_RXT0);
    assert!(r.line.0.load(Ordering::SeqCst));
    assert_eq!(r.r(ICR), ICR_RXT0 | ICR_TXDW | ICR_ASSERTED);
    assert_eq!(r.r(ICR), 0, "cleared by the read");
    assert!(!r.line.0.load(Ordering::SeqCst));
    // Write-1-to-clear.
    r.w(ICS, ICR_RXT0 | ICR_LSC);
    r.w(ICR, ICR_RXT0);
    assert!(!r.line.0.load(Ordering::SeqCst));
    assert_eq!(r.r(ICS) & !ICR_ASSERTED, ICR_LSC);
    // A software reset clears causes and masks.
    r.w(CTRL, CTRL_RST | CTRL_SLU);
    assert_eq!(r.r(CTRL) & CTRL_RST, 0, "self-clearing");
    assert_eq!(r.r(IMS), 0);
    assert_eq!(r.r(ICR), 0);
}

#[test]
fn io_window_reaches_the_registers() {
    let mut r = rig();
    r.dev.bar_write(2, 0, &(0x0008u32).to_le_bytes());
    let mut b = [0u8; 4];
    r.dev.bar_read(2, 0, &mut b);
    assert_eq!(u32::from_le_bytes(b), 8, "IOADDR reads back");
    r.dev.bar_read(2, 4, &mut b);
    assert_ne!(u32::from_le_bytes(b) & STATUS_LU, 0, "IODATA reads STATUS");
    r.dev.bar_write(2, 0, &(IMS as u32 * 4).to_le_bytes());
    r.dev.bar_write(2, 4, &ICR_RXT0.to_le_bytes());
    assert_eq!(r.r(IMS), ICR_RXT0);
    // Outside the registers: reads 0, writes are ignored.
    r.dev.bar_write(2, 0, &0x4_0000u32.to_le_bytes());
    r.dev.bar_read(2, 4, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0);
}

#[test]
fn legacy_transmit_sends_the_frame_writes_back_dd_and_counts() {
    let mut r = rig();
    r.tx_setup();
    r.w(IMS, ICR_TXDW);
    let f = frame([0xff; 6], 100);
    r.ram.put(0x8000, &f);
    r.tx_push(legacy_tx(0x8000, 100, TXD_CMD_EOP | TXD_CMD_RS));
    assert_eq!(r.recv().as_deref(), Some(&f[..]));
    assert_eq!(r.ram.get(TX_RING + 12, 1)[0] & TXD_STAT_DD as u8, 1, "DD");
    assert_eq!(r.r(TDH), 1);
    assert!(r.line.0.load(Ordering::SeqCst), "TXDW raised INTx");
    assert_eq!(r.r(ICR) & (ICR_TXDW | ICR_TXQE), ICR_TXDW | ICR_TXQE);
    // A packet over two descriptors, the first without RS: no write-back for it.
    r.ram.put(0x9000, &f[..60]);
    r.ram.put(0x9100, &f[60..]);
    r.tx_push(legacy_tx(0x9000, 60, 0));
    assert!(r.recv().is_none(), "nothing before EOP");
    r.tx_push(legacy_tx(0x9100, 40, TXD_CMD_EOP | TXD_CMD_RS));
    assert_eq!(r.recv().as_deref(), Some(&f[..]));
    assert_eq!(r.ram.get(TX_RING + 16 + 12, 1)[0], 0, "no RS, no DD");
    assert_eq!(r.ram.get(TX_RING + 32 + 12, 1)[0] & 1, 1);
    assert_eq!(r.r(GPTC), 2);
    assert_eq!(r.r(BPTC), 2);
    assert_eq!(r.r(GOTCL), 200);
    assert_eq!(r.r(GOTCH), 0);
    assert_eq!(r.r(GPTC), 0, "statistics clear on read");
    assert_eq!(r.r(GOTCL), 0, "the high half cleared the pair");
    // Transmit disabled: the ring waits.
    r.w(TCTL, 0);
    r.ram.put(0xa000, &f);
    r.tx_push(legacy_tx(0xa000, 100, TXD_CMD_EOP | TXD_CMD_RS));
    assert!(r.recv().is_none());
    r.w(TCTL, TCTL_EN);
    assert_eq!(r.recv().as_deref(), Some(&f[..]));
}

/// An IPv4/TCP packet: 14 + 20 + 20 header bytes and `payload` bytes, IP checksum zero and
/// the TCP checksum seeded with the pseudo-header sum without length, as Linux's TSO does.
fn tcp_packet(payload: usize) -> Vec<u8> {
    let mut p = frame(MAC, 54 + payload);
    let ip = 14;
    p[ip] = 0x45;
    p[ip + 2..ip + 4].copy_from_slice(&0u16.to_be_bytes());
    p[ip + 4..ip + 6].copy_from_slice(&0x1234u16.to_be_bytes());
    p[ip + 6..ip + 10].copy_from_slice(&[0x40, 0, 64, 6]);
    p[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
    p[ip + 12..ip + 20].copy_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
    let tcp = 34;
    p[tcp..tcp + 4].copy_from_slice(&[0x30, 0x39, 0x00, 0x50]);
    p[tcp + 4..tcp + 8].copy_from_slice(&1000u32.to_be_bytes());
    p[tcp + 12] = 0x50;
    p[tcp + 13] = 0x19; // ACK PSH FIN
    let seed = fold(ones_sum(&p[ip + 12..ip + 20], 6));
    p[tcp + 16..tcp + 18].copy_from_slice(&seed.to_be_bytes());
    p
}

fn context(ipcss: u8, ipcso: u8, tucss: u8, tucso: u8, cmd: u32, hdr: u8, mss: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[0] = ipcss;
    d[1] = ipcso;
    // The IP header ends before the L4 header (Linux's IPCSE).
    d[2..4].copy_from_slice(&u16::from(tucss - 1).to_le_bytes());
    d[4] = tucss;
    d[5] = tucso;
    d[8..12].copy_from_slice(&(cmd | TXD_CMD_DEXT).to_le_bytes());
    d[13] = hdr;
    d[14..16].copy_from_slice(&mss.to_le_bytes());
    d
}

fn data_desc(addr: u64, len: u32, cmd: u32, popts: u8) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&(len | cmd | TXD_CMD_DEXT | TXD_DTYP_D).to_le_bytes());
    d[13] = popts;
    d
}

/// The checksum of an IPv4 TCP segment verifies (sums to 0xffff with its pseudo-header).
fn tcp_ok(f: &[u8]) -> bool {
    let ip = 14;
    let total = usize::from(u16::from_be_bytes([f[ip + 2], f[ip + 3]]));
    let tcp_len = total - 20;
    let pseudo = ones_sum(&f[ip + 12..ip + 20], 6 + tcp_len as u32);
    fold(ones_sum(&f[34..14 + total], pseudo)) == 0xffff
}

#[test]
fn tso_segments_with_lengths_sequence_flags_and_checksums() {
    let mut r = rig();
    r.tx_setup();
    let p = tcp_packet(3000);
    r.ram.put(0x8000, &p);
    let pop = TXD_POPTS_TXSM | TXD_POPTS_IXSM;
    r.tx_push(context(
        14,
        24,
        34,
        50,
        TXD_CMD_IP | TXD_CMD_TCP | TXD_CMD_TSE,
        54,
        1400,
    ));
    r.tx_push(data_desc(
        0x8000,
        54 + 3000,
        TXD_CMD_EOP | TXD_CMD_TSE | TXD_CMD_RS,
        pop,
    ));
    let segs: Vec<Vec<u8>> = std::iter::from_fn(|| r.recv()).collect();
    assert_eq!(
        segs.iter().map(Vec::len).collect::<Vec<_>>(),
        [54 + 1400, 54 + 1400, 54 + 200]
    );
    for (i, s) in segs.iter().enumerate() {
        let last = i == 2;
        assert_eq!(
            usize::from(u16::from_be_bytes([s[16], s[17]])),
            s.len() - 14,
            "IP total length"
        );
        assert_eq!(
            u16::from_be_bytes([s[18], s[19]]),
            0x1234 + i as u16,
            "IP ID"
        );
        assert_eq!(fold(ones_sum(&s[14..34], 0)), 0xffff, "IP header checksum");
        let seq = u32::from_be_bytes([s[38], s[39], s[40], s[41]]);
        assert_eq!(seq, 1000 + 1400 * i as u32);
        assert_eq!(
            s[47] & 0x09,
            if last { 0x09 } else { 0 },
            "PSH/FIN on the last"
        );
        assert!(tcp_ok(s), "segment {i} TCP checksum");
        assert_eq!(
            &s[54..],
            &p[54 + 1400 * i..(54 + 1400 * (i + 1)).min(p.len())]
        );
    }
    assert_eq!(r.r(TSCTC), 1);
}

#[test]
fn checksum_offload_without_segmentation() {
    let mut r = rig();
    r.tx_setup();
    let mut p = tcp_packet(100);
    // Without TSO the driver writes the IP length and seeds the sum with it.
    p[16..18].copy_from_slice(&140u16.to_be_bytes());
    let ph = fold(ones_sum(&p[26..34], 6 + 120));
    p[50..52].copy_from_slice(&ph.to_be_bytes());
    r.ram.put(0x8000, &p);
    r.tx_push(context(14, 24, 34, 50, TXD_CMD_IP | TXD_CMD_TCP, 0, 0));
    r.tx_push(data_desc(
        0x8000,
        p.len() as u32,
        TXD_CMD_EOP,
        TXD_POPTS_TXSM | TXD_POPTS_IXSM,
    ));
    let s = r.recv().expect("a frame");
    assert_eq!(s.len(), p.len());
    assert!(tcp_ok(&s));
    assert_eq!(fold(ones_sum(&s[14..34], 0)), 0xffff);
}

#[test]
fn vlan_tag_inserted_on_transmit_and_stripped_on_receive() {
    let mut r = rig();
    r.tx_setup();
    r.w(VET, 0x8100);
    let v = r.r(CTRL) | CTRL_VME;
    r.w(CTRL, v);
    let f = frame([0xff; 6], 64);
    r.ram.put(0x8000, &f);
    let mut d = legacy_tx(0x8000, 64, TXD_CMD_EOP | TXD_CMD_VLE);
    d[14..16].copy_from_slice(&5u16.to_le_bytes());
    r.tx_push(d);
    let s = r.recv().unwrap();
    assert_eq!(&s[12..16], &[0x81, 0x00, 0x00, 0x05]);
    assert_eq!(s.len(), 68);
    // Back in: the tag goes to the descriptor.
    r.rx_setup(true, 4);
    r.peer.send(&s).unwrap();
    r.dev.start_recv();
    let wb = r.ram.get(RX_RING, 16);
    let status = u32::from_le_bytes([wb[8], wb[9], wb[10], wb[11]]);
    assert_ne!(status & RXD_STAT_VP, 0);
    assert_eq!(u16::from_le_bytes([wb[14], wb[15]]), 5);
    assert_eq!(u16::from_le_bytes([wb[12], wb[13]]), 64);
    assert_eq!(r.ram.get(0x10000, 64), f);
}

#[test]
fn receive_filters_and_descriptor_formats() {
    let mut r = rig();
    r.rx_setup(false, 8);
    r.w(IMS, ICR_RXT0);
    let ours = frame(MAC, 80);
    let other = frame([2, 0, 0, 0, 0, 9], 80);
    let multicast = frame([0x01, 0x00, 0x5e, 0x00, 0x00, 0x01], 80);
    for f in [&other, &ours, &multicast, &frame([0xff; 6], 80)] {
        r.peer.send(f).unwrap();
    }
    r.dev.start_recv();
    // Unicast to another MAC and the multicast group not in MTA are dropped.
    assert_eq!(r.r(RDH), 2);
    assert_eq!(r.ram.get(0x10000, 80), ours);
    let wb = r.ram.get(RX_RING + 8, 8);
    assert_eq!(u16::from_le_bytes([wb[0], wb[1]]), 80, "legacy length");
    assert_eq!(wb[4] & 3, 3, "DD and EOP");
    assert!(r.line.0.load(Ordering::SeqCst), "RXT0");
    assert_eq!(r.r(GPRC), 2);
    assert_eq!(r.r(BPRC), 1);
    // The multicast group's MTA bit (MO = 0: bits 47:36 of the address).
    let hash = ((usize::from(multicast[5]) << 8 | usize::from(multicast[4])) >> 4) & 0xfff;
    r.w(MTA + (hash >> 5), 1 << (hash & 31));
    r.peer.send(&multicast).unwrap();
    r.dev.start_recv();
    assert_eq!(r.r(RDH), 3);
    assert_eq!(r.r(MPRC), 1);
    // Promiscuous unicast takes the rest.
    let v = r.r(RCTL) | RCTL_UPE;
    r.w(RCTL, v);
    r.peer.send(&other).unwrap();
    r.dev.start_recv();
    assert_eq!(r.r(RDH), 4);
    // A short frame is padded to 60 bytes; the FCS adds 4 without SECRC.
    r.w(RFCTL, RFCTL_EXTEN);
    let v = (r.r(RCTL) | RCTL_MPE) & !RCTL_SECRC;
    r.w(RCTL, v);
    r.peer.send(&ours[..20]).unwrap();
    r.dev.start_recv();
    let wb = r.ram.get(RX_RING + 4 * 16, 16);
    assert_eq!(u16::from_le_bytes([wb[12], wb[13]]), 64, "extended length");
    assert_eq!(wb[8] & 3, 3, "extended DD and EOP");
    assert_eq!(r.r(RUC), 1);
}

#[test]
fn receive_checksums_are_verified() {
    let mut r = rig();
    r.rx_setup(true, 8);
    let mut p = tcp_packet(100);
    p[16..18].copy_from_slice(&140u16.to_be_bytes());
    let ip = !fold(ones_sum(&p[14..34], 0));
    p[24..26].copy_from_slice(&ip.to_be_bytes());
    p[50..52].copy_from_slice(&[0, 0]);
    let pseudo = ones_sum(&p[26..34], 6 + 120);
    let tcp = !fold(ones_sum(&p[34..], pseudo));
    p[50..52].copy_from_slice(&tcp.to_be_bytes());
    r.peer.send(&p).unwrap();
    p[60] ^= 0xff;
    r.peer.send(&p).unwrap();
    r.dev.start_recv();
    let status = |r: &Rig, i: u64| {
        let wb = r.ram.get(RX_RING + i * 16 + 8, 4);
        u32::from_le_bytes([wb[0], wb[1], wb[2], wb[3]])
    };
    let good = status(&r, 0);
    assert_eq!(
        good & (RXD_STAT_IPCS | RXD_STAT_TCPCS),
        RXD_STAT_IPCS | RXD_STAT_TCPCS
    );
    assert_eq!(good & (RXDEXT_ERR_IPE | RXDEXT_ERR_TCPE), 0);
    let bad = status(&r, 1);
    assert_ne!(bad & RXDEXT_ERR_TCPE, 0, "corrupted payload");
    assert_eq!(bad & RXDEXT_ERR_IPE, 0);
}

#[test]
fn frames_wait_for_descriptors_and_large_ones_span_several() {
    let mut r = rig();
    r.rx_setup(true, 1);
    r.w(IMS, ICR_RXT0 | ICR_RXDMT0);
    let a = frame(MAC, 100);
    let b = frame(MAC, 3000);
    let v = r.r(RCTL) | RCTL_LPE;
    r.w(RCTL, v);
    r.peer.send(&a).unwrap();
    r.peer.send(&b).unwrap();
    r.dev.backend_readable();
    assert_eq!(r.r(RDH), 1, "one descriptor, one frame");
    assert_eq!(r.r(RNBC), 1, "the next waits for descriptors");
    assert_ne!(r.r(ICR) & ICR_RXDMT0, 0, "below the threshold");
    // Two 2 KiB buffers more: the 3000-byte frame takes both.
    r.w(RDT, 3);
    assert_eq!(r.r(RDH), 3);
    let first = r.ram.get(RX_RING + 16 + 8, 8);
    let last = r.ram.get(RX_RING + 32 + 8, 8);
    assert_eq!(first[0] & 3, 1, "DD without EOP");
    assert_eq!(last[0] & 3, 3, "DD and EOP");
    assert_eq!(u16::from_le_bytes([first[4], first[5]]), 2048);
    assert_eq!(u16::from_le_bytes([last[4], last[5]]), 3000 - 2048);
    let mut got = r.ram.get(0x10000 + 2048, 2048);
    got.extend(r.ram.get(0x10000 + 4096, 3000 - 2048));
    assert_eq!(got, b);
    // Without LPE a 3000-byte frame is oversized.
    let v = r.r(RCTL) & !RCTL_LPE;
    r.w(RCTL, v);
    r.w(RDT, 8);
    r.peer.send(&b).unwrap();
    r.dev.start_recv();
    assert_eq!(r.r(RDH), 3);
    assert_eq!(r.r(ROC), 1);
}

#[test]
fn msix_messages_follow_ivar() {
    let mut r = rig();
    // MSI-X enable (control word of the capability at 0xa0).
    r.dev.config_write(0xa2, &0x8000u16.to_le_bytes());
    for v in 0..5u64 {
        let e = v * 16;
        r.dev
            .bar_write(3, e, &(0xfee0_0000u32 + v as u32).to_le_bytes());
        r.dev.bar_write(3, e + 8, &(0x40 + v as u32).to_le_bytes());
        r.dev.bar_write(3, e + 12, &0u32.to_le_bytes());
    }
    // RXQ0 -> 0, TXQ0 -> 1, other -> 2.
    r.w(IVAR, 0x8 | (0x9 << 8) | (0xa << 16));
    r.w(IMS, u32::MAX);
    r.tx_setup();
    r.ram.put(0x8000, &frame([0xff; 6], 60));
    r.tx_push(legacy_tx(0x8000, 60, TXD_CMD_EOP | TXD_CMD_RS));
    r.rx_setup(true, 4);
    r.peer.send(&frame(MAC, 60)).unwrap();
    r.dev.start_recv();
    r.w(ICS, ICR_LSC);
    let sent = r.msi.0.lock().unwrap().clone();
    assert_eq!(
        sent,
        [
            (0xfee0_0001, 0x41),
            (0xfee0_0000, 0x40),
            (0xfee0_0002, 0x42)
        ],
        "TXQ0, RXQ0, other"
    );
    assert!(!r.line.0.load(Ordering::SeqCst), "no INTx with MSI-X");
    assert_ne!(r.r(ICR) & ICR_OTHER, 0);
    // Masked vector: pending bit in the PBA; PBACLR clears it.
    r.dev.bar_write(3, 12, &1u32.to_le_bytes());
    r.w(ICR, u32::MAX);
    r.peer.send(&frame(MAC, 60)).unwrap();
    r.dev.start_recv();
    let mut pba = [0u8; 4];
    r.dev.bar_read(3, 0x2000, &mut pba);
    assert_eq!(pba[0] & 1, 1);
    r.w(PBACLR, 1);
    r.dev.bar_read(3, 0x2000, &mut pba);
    assert_eq!(pba[0] & 1, 0);
}

#[test]
fn msi_when_enabled() {
    let mut r = rig();
    // MSI at 0xd0: 64-bit address, data at +0xc.
    r.dev.config_write(0xd4, &0xfee0_1000u32.to_le_bytes());
    r.dev.config_write(0xdc, &0x0031u16.to_le_bytes());
    r.dev.config_write(0xd2, &0x0001u16.to_le_bytes());
    r.w(IMS, ICR_TXDW);
    r.w(ICS, ICR_TXDW);
    assert_eq!(r.msi.0.lock().unwrap().clone(), [(0xfee0_1000, 0x31)]);
    assert!(!r.line.0.load(Ordering::SeqCst));
}

#[test]
fn without_bus_mastering_nothing_moves() {
    let mut r = rig();
    r.tx_setup();
    r.dev.config_write(0x04, &[0x02, 0x00]);
    r.ram.put(0x8000, &frame([0xff; 6], 60));
    r.tx_push(legacy_tx(0x8000, 60, TXD_CMD_EOP | TXD_CMD_RS));
    assert!(r.recv().is_none());
    assert_eq!(r.r(TDH), 0);
    r.dev.config_write(0x04, &[0x06, 0x00]);
    r.w(TDT, 1);
    assert!(r.recv().is_some());
}

/// Random register writes and rings anywhere (outside RAM, past the ring, huge lengths)
/// never panic and never touch memory outside the fake RAM.
#[test]
fn random_programming_is_survived() {
    let mut rng = XorShift::new(0xe100_0e00_1234_5678);
    for round in 0..40 {
        let mut r = rig();
        r.tx_setup();
        r.rx_setup(round % 2 == 0, 8);
        for _ in 0..400 {
            let reg = *rng.pick(&[
                TDT,
                TDH,
                TDLEN,
                TDBAL,
                TDBAH,
                RDT,
                RDH,
                RDLEN,
                RDBAL,
                RDBAH,
                RCTL,
                TCTL,
                CTRL,
                ICS,
                IMS,
                ICR,
                MDIC,
                EERD,
                IVAR,
                RXCSUM,
                VET,
                RA + 1,
                MTA,
            ]);
            let v = match rng.below(4) {
                0 => rng.next_u32(),
                1 => rng.below(32) as u32,
                _ => rng.below(0x2000) as u32 * 16,
            };
            if reg == CTRL {
                r.w(reg, v & !(CTRL_RST | CTRL_PHY_RST));
            } else {
                r.w(reg, v);
            }
            if rng.one_in(8) {
                let at = rng.below(RAM as u64 + 4096);
                let junk: Vec<u8> = (0..64).map(|_| rng.next_u32() as u8).collect();
                r.ram.put(at, &junk);
            }
            if rng.one_in(16) {
                let len = rng.range(1, 2000) as usize;
                let _ = r.peer.send(&frame(MAC, len.max(14)));
                r.dev.backend_readable();
            }
            while r.recv().is_some() {}
        }
        let _ = r.r(ICR);
    }
}

fn set_buf(fd: &impl std::os::fd::AsRawFd, opt: libc::c_int) {
    let size: libc::c_int = 1 << 20;
    // SAFETY: setsockopt reads one int through the valid pointer.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            &size as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// A flood of frames the filters drop takes no descriptor: one call stops after its budget
/// and wakes the worker, which goes on with the lock let go in between.
#[test]
fn a_flood_of_filtered_frames_is_taken_in_bounded_steps() {
    let mut r = rig();
    set_buf(&r.peer, libc::SO_SNDBUF);
    let kick = Arc::new(vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap());
    r.dev.rx.kick = Some(kick.clone());
    r.rx_setup(true, 8);
    if let Some(io) = &r.dev.io {
        set_buf(io.fd_ref(), libc::SO_RCVBUF);
    }
    let other = frame([2, 0, 0, 0, 0, 9], 60);
    for i in 0..600 {
        r.peer
            .send(&other)
            .unwrap_or_else(|e| panic!("frame {i}: {e}"));
    }
    r.peer.send(&frame(MAC, 60)).unwrap();
    r.dev.start_recv();
    assert_eq!(r.r(RDH), 0, "stopped before reaching our frame");
    assert_eq!(kick.read().unwrap(), 1, "the worker was woken");
    r.dev.backend_readable();
    r.dev.backend_readable();
    assert_eq!(r.r(RDH), 1, "the worker went on to our frame");
}

/// Misprogramming is a guest error (`-d guest_errors`) naming the device, reported once.
#[test]
fn misprogramming_is_a_guest_error_naming_the_device_once() {
    let log = crate::logging::captured();
    let mut r = rig();
    r.tx_setup();
    r.w(TDT, 48879);
    r.w(TDT, 48878);
    let lines: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, m)| t == crate::logging::GUEST_ERRORS && m.contains("TDT 4887"))
        .map(|(_, m)| m.clone())
        .collect();
    assert_eq!(
        lines,
        ["e1000e id=dut (pcie.0:01.0): TDT 48879 is past the transmit ring (256 bytes)"]
    );
}
