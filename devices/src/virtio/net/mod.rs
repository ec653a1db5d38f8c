//! virtio-net (type 1) over a tap with a vnet header: features MAC and STATUS, one rx/tx
//! queue pair and QEMU's control queue (present although CTRL_VQ is not offered: drivers
//! such as libqos set up every queue; a command there gets VIRTIO_NET_ERR), the 12-byte
//! header with VERSION_1 and the 10-byte legacy header otherwise. Over a socket (a netdev
//! of the network thread) frames pass without the header.
//! Frames pass through with their header, since the tap uses the same header length: a
//! transmitted chain is one writev from guest memory to the tap, a received frame one readv
//! from the tap into the guest's buffers (iovecs bounds-checked against guest RAM).

pub mod tap;

use super::device::{
    bad_queue, check_chain, read_config_bytes, DeviceError, QueueContext, VirtioDevice,
};
use super::iov::chain_iovecs;
use super::regs::features::VERSION_1;
use machine::MacAddr;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use virtio_queue::{QueueOwnedT, QueueT};

pub const DEVICE_TYPE: u16 = 1;

const F_MAC: u64 = 1 << 5;
const F_MRG_RXBUF: u64 = 1 << 15;
const F_STATUS: u64 = 1 << 16;
const S_LINK_UP: u16 = 1;

const QUEUE_SIZE: u16 = 256;
const CTRL_QUEUE_SIZE: u16 = 64;
const RX: usize = 0;
const TX: usize = 1;
const CTRL: usize = 2;
/// The control queue's answer to a command the device does not take.
const VIRTIO_NET_ERR: u8 = 1;
const TAP_TOKEN: u32 = 0;
/// Largest frame plus header we move (64 KiB frames without offloads are impossible, but a
/// tap may still hand us up to this much).
const MAX_FRAME: usize = 65_562;
const CONFIG_LEN: usize = 8;

/// The tap the VMM opened (see [`tap::open_tap`]) and the MAC the machine gives the device
/// (its `mac=`, or QEMU's default numbering: `devices::kinds::mac_of`).
pub struct NetBackend {
    pub tap: File,
    pub mac: MacAddr,
}

pub struct Net {
    /// How log lines name the device (`logging::pci_name`).
    name: String,
    tap: File,
    mac: [u8; 6],
    /// The tap may have frames (edge-triggered: set on readiness, cleared on EAGAIN).
    tap_readable: bool,
    /// The backend is a datagram socket (a NIC without netdev, or the socket pair to a
    /// socket-like netdev), not a tap: frames pass without the virtio-net header.
    socket: bool,
    /// Header length the guest negotiated (10, or 12 with VERSION_1 / MRG_RXBUF).
    hdr_len: usize,
    /// Sends to the backend are failing (reported once, when they start).
    tx_failing: bool,
}

/// Drop the first `n` bytes of `iovs`; false if they hold fewer.
fn skip_front(iovs: &mut Vec<libc::iovec>, mut n: usize) -> bool {
    while n > 0 {
        let Some(first) = iovs.first_mut() else {
            return false;
        };
        if first.iov_len > n {
            first.iov_base = (first.iov_base as usize + n) as *mut libc::c_void;
            first.iov_len -= n;
            return true;
        }
        n -= first.iov_len;
        iovs.remove(0);
    }
    true
}

/// Copy `data` into the start of `iovs` (guest buffers); false if they hold fewer bytes.
fn write_front(iovs: &[libc::iovec], mut data: &[u8]) -> bool {
    for v in iovs {
        if data.is_empty() {
            break;
        }
        let n = v.iov_len.min(data.len());
        // SAFETY: the iovec points into guest RAM, bounds-checked by chain_iovecs and kept
        // mapped by the caller's GuestMemoryMmap; `n` is within both buffers.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), v.iov_base as *mut u8, n) };
        data = &data[n..];
    }
    data.is_empty()
}

/// Receive one frame from `fd` into `iovs`; returns the frame's full length, which exceeds
/// the buffers' capacity when the frame was truncated. A tap's read returns the full length
/// already; a datagram socket says it with MSG_TRUNC.
fn receive_frame(fd: RawFd, socket: bool, iovs: &mut [libc::iovec]) -> std::io::Result<usize> {
    if !socket {
        return vectored(fd, false, iovs);
    }
    // SAFETY: an all-zero msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iovs.as_mut_ptr();
    msg.msg_iovlen = iovs.len().min(1024) as _;
    // SAFETY: the msghdr points at iovecs over guest RAM checked by chain_iovecs and kept
    // mapped by the caller's GuestMemoryMmap; recvmsg writes only into those buffers.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_TRUNC) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn is_socket(file: &File) -> bool {
    use std::os::unix::fs::FileTypeExt;
    file.metadata().is_ok_and(|m| m.file_type().is_socket())
}

/// readv/writev on `fd` over `iovs` (at most IOV_MAX of them).
fn vectored(fd: RawFd, write: bool, iovs: &[libc::iovec]) -> std::io::Result<usize> {
    let count = iovs.len().min(1024) as libc::c_int;
    // SAFETY: the iovecs point into guest RAM, bounds-checked by chain_iovecs against the
    // guest memory regions, which the caller's GuestMemoryMmap keeps mapped for the call;
    // the kernel only reads (writev) or writes (readv) those bytes.
    let n = unsafe {
        if write {
            libc::writev(fd, iovs.as_ptr(), count)
        } else {
            libc::readv(fd, iovs.as_ptr(), count)
        }
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Send one frame; a full backend drops it, as a congested link would. Another failure is
/// an error naming the device, reported once until a send works again (`failing`).
fn send_reported(fd: RawFd, iovs: &[libc::iovec], name: &str, failing: &mut bool) {
    match vectored(fd, true, iovs) {
        Ok(_) => *failing = false,
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.raw_os_error() == Some(libc::ENOBUFS) => {}
        Err(e) => {
            if !std::mem::replace(failing, true) {
                log::error!(
                    "{name}: cannot send a frame to its network backend: {e}; frames are dropped"
                );
            }
        }
    }
}

impl Net {
    pub fn new(backend: NetBackend) -> Self {
        Self {
            // Log lines name the function; the transport sets it (set_name).
            name: String::new(),
            socket: is_socket(&backend.tap),
            tap: backend.tap,
            mac: backend.mac.bytes(),
            tap_readable: true,
            hdr_len: 10,
            tx_failing: false,
        }
    }

    fn hdr_len(features: u64) -> usize {
        if features & (VERSION_1 | F_MRG_RXBUF) != 0 {
            12
        } else {
            10
        }
    }

    fn transmit(&mut self, ctx: &mut QueueContext) -> Result<(), DeviceError> {
        let tap = self.tap.as_raw_fd();
        // A socket peer takes the bare frame: the guest's header stays behind.
        let strip = if self.socket { self.hdr_len } else { 0 };
        let (name, tx_failing) = (&self.name, &mut self.tx_failing);
        let used = ctx.drain_queue(TX, |mem, chain| {
            // Buffers outside guest RAM or a frame too large for a tap: dropped.
            if let Some(mut iovs) = chain_iovecs(mem, &chain, false) {
                let n: usize = iovs.iter().map(|v| v.iov_len).sum();
                if n > strip && n <= MAX_FRAME && skip_front(&mut iovs, strip) {
                    send_reported(tap, &iovs, name, tx_failing);
                }
            }
            Ok(0)
        })?;
        if used == Some(true) {
            ctx.notify(TX);
        }
        Ok(())
    }

    fn receive(&mut self, ctx: &mut QueueContext) -> Result<(), DeviceError> {
        let mem = ctx.mem;
        let mut used_any = false;
        while let Some(q) = ctx.queues.get_mut(RX).filter(|q| q.ready()) {
            // Only take a frame from the tap when a buffer is waiting for it.
            let has_buffer = q.avail_idx(mem, std::sync::atomic::Ordering::Acquire).ok()
                != Some(std::num::Wrapping(q.next_avail()));
            if !has_buffer {
                break;
            }
            if !self.tap_readable {
                break;
            }
            let chain = q.iter(mem).map_err(|e| bad_queue(RX, e))?.next();
            let Some(chain) = chain else {
                break;
            };
            check_chain(RX, &chain)?;
            let head = chain.head_index();
            // The frame lands straight in the guest's buffers.
            let n = match chain_iovecs(mem, &chain, true) {
                Some(mut iovs) if !iovs.is_empty() => {
                    // A socket peer sends bare frames: the device writes the header (no
                    // offloads; one buffer) in front of the frame.
                    let hdr = if self.socket { self.hdr_len } else { 0 };
                    let mut header = [0u8; 12];
                    header[10] = 1;
                    // Buffers too small for even the header still take (and drop) the
                    // next frame, as buffers too small for a frame do.
                    let fits = hdr == 0
                        || (write_front(&iovs, &header[..hdr]) && skip_front(&mut iovs, hdr));
                    if !fits {
                        iovs.clear();
                    }
                    let capacity: usize = iovs.iter().map(|v| v.iov_len).sum();
                    match receive_frame(self.tap.as_raw_fd(), self.socket, &mut iovs) {
                        // A frame too large for the buffers is dropped (QEMU without
                        // MRG_RXBUF drops it too); the buffer comes back empty.
                        Ok(n) if n > capacity || !fits => 0,
                        Ok(n) => hdr + n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                            q.go_to_previous_position();
                            continue;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            // Drained until the next readiness edge; the buffer stays.
                            self.tap_readable = false;
                            q.go_to_previous_position();
                            break;
                        }
                        // Anything else drops the frame; the buffer comes back empty.
                        Err(_) => 0,
                    }
                }
                // Buffers outside guest RAM (or none writable): returned unused.
                _ => 0,
            };
            q.add_used(mem, head, n as u32)
                .map_err(|e| bad_queue(RX, e))?;
            used_any = true;
        }
        if used_any {
            ctx.notify(RX);
        }
        Ok(())
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE, CTRL_QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        F_MAC | F_STATUS
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn read_config(&self, offset: usize, data: &mut [u8]) {
        let mut c = [0u8; CONFIG_LEN];
        c[..6].copy_from_slice(&self.mac);
        c[6..8].copy_from_slice(&S_LINK_UP.to_le_bytes());
        read_config_bytes(&c, offset, data);
    }

    fn set_name(&mut self, name: &str) {
        self.name = name.to_string();
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        // Legacy drivers without CTRL_MAC_ADDR set the MAC through config space.
        for (i, &b) in data.iter().enumerate() {
            if let Some(m) = self.mac.get_mut(offset + i) {
                *m = b;
            }
        }
    }

    fn activate(&mut self, features: u64) {
        // The tap must frame packets with the header length the guest negotiated; if it
        // refuses, frames are misframed both ways: say so, naming the device. (A socket
        // peer takes bare frames: the device strips and writes the header itself.)
        let len = Self::hdr_len(features);
        self.hdr_len = len;
        let set = match self.socket {
            true => Ok(()),
            false => tap::set_vnet_hdr_size(&self.tap, len as i32),
        };
        if let Err(e) = set {
            log::error!(
                "{}: cannot set the tap's vnet header size to {len}: {e}",
                self.name
            );
        }
        self.tap_readable = true;
    }

    fn process_queue(&mut self, idx: usize, ctx: &mut QueueContext) -> Result<(), DeviceError> {
        match idx {
            RX => self.receive(ctx),
            TX => self.transmit(ctx),
            CTRL => {
                // CTRL_VQ is not offered: every command is refused (ack VIRTIO_NET_ERR).
                let used = ctx.drain_queue(CTRL, |mem, chain| {
                    Ok(match chain_iovecs(mem, &chain, true) {
                        Some(iovs) if write_front(&iovs, &[VIRTIO_NET_ERR]) => 1,
                        _ => 0,
                    })
                })?;
                if used == Some(true) {
                    ctx.notify(CTRL);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn event_sources(&self) -> Vec<(RawFd, u32)> {
        vec![(self.tap.as_raw_fd(), TAP_TOKEN)]
    }

    fn process_event(&mut self, token: u32, ctx: &mut QueueContext) -> Result<(), DeviceError> {
        if token == TAP_TOKEN {
            self.tap_readable = true;
            self.receive(ctx)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_length_follows_features() {
        assert_eq!(Net::hdr_len(VERSION_1), 12);
        assert_eq!(Net::hdr_len(F_MRG_RXBUF), 12);
        assert_eq!(Net::hdr_len(F_MAC), 10);
    }

    #[test]
    fn a_failing_send_is_an_error_naming_the_device_once() {
        let log = crate::logging::captured();
        let name = "virtio-net-pci id=txfail (pcie.0:03.0)";
        let frame = [0u8; 60];
        let iov = [libc::iovec {
            iov_base: frame.as_ptr() as *mut libc::c_void,
            iov_len: frame.len(),
        }];
        let lines = |log: &std::sync::Mutex<Vec<(String, String)>>| {
            log.lock()
                .unwrap()
                .iter()
                .filter(|(_, l)| l.starts_with(name))
                .count()
        };
        let before = lines(log);
        // A read-only descriptor refuses every write (EBADF): one line, not one per frame.
        let refusing = File::open("/dev/null").unwrap();
        let mut failing = false;
        for _ in 0..3 {
            send_reported(refusing.as_raw_fd(), &iov, name, &mut failing);
        }
        assert!(failing);
        assert_eq!(lines(log) - before, 1);
        let text = log
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(_, l)| l.starts_with(name))
            .map(|(_, l)| l.clone())
            .unwrap();
        assert!(text.contains("cannot send a frame"), "{text}");
        // A send that works ends the episode; the next failure is reported again.
        let working = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .unwrap();
        send_reported(working.as_raw_fd(), &iov, name, &mut failing);
        assert!(!failing);
        send_reported(refusing.as_raw_fd(), &iov, name, &mut failing);
        assert_eq!(lines(log) - before, 2);
    }
}
