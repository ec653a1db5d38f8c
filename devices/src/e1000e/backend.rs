//! The NIC's network backend: a datagram socket that passes bare frames (the netdev's
//! socket pair, or a lone socket for a NIC without netdev) or a tap with a 10-byte
//! virtio-net header (no offloads, so the header is all zero both ways); and the worker that
//! waits for its frames on a device thread.

use super::E1000e;
use crate::pci::nic::NicWorker;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

/// The virtio-net header a tap carries in front of each frame (without MRG_RXBUF).
const VNET_HDR: usize = 10;

pub struct NetIo {
    file: File,
    /// Bytes of header in front of each frame: 0 on a socket, the vnet header on a tap.
    hdr: usize,
    /// Sends are failing (reported once, when they start).
    failing: bool,
}

fn is_socket(file: &File) -> bool {
    use std::os::unix::fs::FileTypeExt;
    file.metadata().is_ok_and(|m| m.file_type().is_socket())
}

impl NetIo {
    pub fn new(file: File) -> std::io::Result<Self> {
        let hdr = if is_socket(&file) {
            0
        } else {
            // The tap may have served a virtio-net device with a 12-byte header and receive
            // offloads before: this model takes whole, checksummed frames.
            crate::virtio::net::tap::set_vnet_hdr_size(&file, VNET_HDR as i32)?;
            crate::virtio::net::tap::set_offload(&file, 0)?;
            VNET_HDR
        };
        Ok(Self {
            file,
            hdr,
            failing: false,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    #[cfg(test)]
    pub(super) fn fd_ref(&self) -> &File {
        &self.file
    }

    /// Send one frame; a full backend drops it, as a congested link would. Another failure
    /// is logged naming the device, once until a send works again.
    pub fn send(&mut self, frame: &[u8], name: &str) {
        let header = [0u8; VNET_HDR];
        let iov = [
            libc::iovec {
                iov_base: header.as_ptr() as *mut libc::c_void,
                iov_len: self.hdr,
            },
            libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            },
        ];
        // SAFETY: both iovecs point at live buffers of the given lengths; writev only reads.
        let n = unsafe { libc::writev(self.file.as_raw_fd(), iov.as_ptr(), 2) };
        if n >= 0 {
            self.failing = false;
            return;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS) {
            return;
        }
        if !std::mem::replace(&mut self.failing, true) {
            log::error!(
                "{name}: cannot send a frame to its network backend: {e}; frames are dropped"
            );
        }
    }

    /// Receive one frame into `buf`: Ok(Some(length)), where a length beyond `buf` means
    /// the frame was truncated; Ok(None) when nothing is waiting.
    pub fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        let fd = self.file.as_raw_fd();
        loop {
            let n = if self.hdr == 0 {
                // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes; MSG_TRUNC
                // only changes the returned length to the datagram's full size.
                unsafe {
                    libc::recv(
                        fd,
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                        libc::MSG_TRUNC,
                    )
                }
            } else {
                let mut header = [0u8; VNET_HDR];
                let iov = [
                    libc::iovec {
                        iov_base: header.as_mut_ptr() as *mut libc::c_void,
                        iov_len: self.hdr,
                    },
                    libc::iovec {
                        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
                        iov_len: buf.len(),
                    },
                ];
                // SAFETY: both iovecs point at live, writable buffers of the given lengths.
                let n = unsafe { libc::readv(fd, iov.as_ptr(), 2) };
                if n >= 0 {
                    // A tap read shorter than its header carries no frame.
                    (n as usize).saturating_sub(self.hdr) as isize
                } else {
                    n
                }
            };
            if n >= 0 {
                return Ok(Some(n as usize));
            }
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::Interrupted => continue,
                std::io::ErrorKind::WouldBlock => return Ok(None),
                _ => return Err(e),
            }
        }
    }
}

/// Waits for the backend's frames and hands them to the device (edge-triggered: the device
/// remembers that the backend is readable while it has no descriptors).
pub struct RxWorker {
    dev: Arc<Mutex<E1000e>>,
    fd: Option<RawFd>,
    /// Signalled when the device stopped receiving with frames perhaps left.
    kick: Option<Arc<EventFd>>,
    name: String,
}

/// Event data of the backend and of the kick.
const BACKEND: u32 = 0;
const KICK: u32 = 1;

impl RxWorker {
    pub fn new(dev: Arc<Mutex<E1000e>>) -> Self {
        let kick = match EventFd::new(libc::EFD_NONBLOCK) {
            Ok(k) => Some(Arc::new(k)),
            Err(e) => {
                log::error!("cannot create an eventfd for a NIC worker: {e}");
                None
            }
        };
        let (fd, name) = {
            let mut d = crate::lock(&dev);
            d.rx.kick = kick.clone();
            (d.io.as_ref().map(NetIo::fd), d.name.clone())
        };
        Self {
            dev,
            fd,
            kick,
            name,
        }
    }
}

impl MutEventSubscriber for RxWorker {
    fn init(&mut self, ops: &mut EventOps) {
        let Some(fd) = self.fd else {
            return;
        };
        // The device owns the backend and this worker owns the device: the fd stays open
        // while it is registered.
        if let Err(e) = ops.add(Events::with_data_raw(
            fd,
            BACKEND,
            EventSet::IN | EventSet::EDGE_TRIGGERED,
        )) {
            log::error!(
                "{}: cannot watch its network backend ({e:?}): no frames are received",
                self.name
            );
        }
        if let Some(k) = &self.kick {
            if let Err(e) = ops.add(Events::with_data(k.as_ref(), KICK, EventSet::IN)) {
                log::error!("{}: cannot watch its receive kick ({e:?})", self.name);
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.data() == KICK {
            if let Some(k) = &self.kick {
                let _ = k.read();
            }
        }
        crate::lock(&self.dev).backend_readable();
    }
}

impl NicWorker for RxWorker {
    fn name(&self) -> String {
        self.name.clone()
    }
}
