//! Opening a Linux tap device with a virtio-net header (`/dev/net/tun`, IFF_TAP | IFF_NO_PI
//! | IFF_VNET_HDR), and setting its header size and offloads.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUNSETQUEUE: libc::c_ulong = 0x4004_54d9;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_ATTACH_QUEUE: libc::c_short = 0x0200;
const IFF_DETACH_QUEUE: libc::c_short = 0x0400;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// `struct ifreq` reduced to the name and the flags member of its union.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn ioctl_err(what: &str) -> std::io::Error {
    let e = std::io::Error::last_os_error();
    std::io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Open (or create, with CAP_NET_ADMIN) the tap `ifname`, non-blocking, with a vnet header.
pub fn open_tap(ifname: &str) -> std::io::Result<File> {
    open_tap_flags(ifname, 0)
}

/// Open `queues` queues of the multiqueue tap `ifname` (QEMU's `queues=N`): one descriptor
/// each, the first creating the tap when it does not exist.
pub fn open_tap_queues(ifname: &str, queues: usize) -> std::io::Result<Vec<File>> {
    if queues <= 1 {
        return Ok(vec![open_tap(ifname)?]);
    }
    let first = open_tap_flags(ifname, IFF_MULTI_QUEUE)?;
    // Without a name the kernel picked one: the other queues join that tap.
    let name = match ifname {
        "" => ifname_of(&first)?,
        n => n.to_string(),
    };
    let mut all = vec![first];
    for _ in 1..queues {
        all.push(open_tap_flags(&name, IFF_MULTI_QUEUE)?);
    }
    Ok(all)
}

/// The interface name of an open tap (TUNGETIFF).
fn ifname_of(tap: &File) -> std::io::Result<String> {
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    // SAFETY: TUNGETIFF writes a `struct ifreq`; `req` is one, padded to the full 40 bytes,
    // and outlives the call.
    let r = unsafe { libc::ioctl(tap.as_raw_fd(), TUNGETIFF as _, &mut req as *mut IfReq) };
    if r < 0 {
        return Err(ioctl_err("TUNGETIFF"));
    }
    let end = req
        .name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(req.name.len());
    Ok(String::from_utf8_lossy(&req.name[..end]).into_owned())
}

fn open_tap_flags(ifname: &str, extra: libc::c_short) -> std::io::Result<File> {
    if ifname.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("interface name {ifname} is too long"),
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | extra,
        _pad: [0; 22],
    };
    req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is one (name + flags,
    // padded to the full 40 bytes) and outlives the call.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
    if r < 0 {
        return Err(ioctl_err("TUNSETIFF"));
    }
    set_offload(&file, 0)?;
    Ok(file)
}

/// Take over a tap that a management layer opened and configured (`-netdev tap,fd=N`, as
/// libvirt passes `<interface type='ethernet'>`): the descriptor must be a tap with a
/// virtio-net header, since the device hands the guest's headers straight to it. It is
/// duplicated close-on-exec (the caller closes the inherited number) and made non-blocking.
pub fn adopt_tap(fd: std::os::fd::RawFd) -> std::io::Result<File> {
    use std::os::fd::{BorrowedFd, OwnedFd};
    // SAFETY: F_GETFD only reads the descriptor table entry; a closed `fd` gives EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was checked open above and is only borrowed for the duplication.
    let owned: OwnedFd = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
    let file = File::from(owned);
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    // SAFETY: TUNGETIFF writes a `struct ifreq`; `req` is one, padded to the full 40 bytes,
    // and outlives the call. On a descriptor that is not a tap it fails with EBADFD/EINVAL.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNGETIFF as _, &mut req as *mut IfReq) };
    if r < 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "fd {fd} is not a tap device ({})",
                std::io::Error::last_os_error()
            ),
        ));
    }
    if req.flags & IFF_TAP == 0 || req.flags & IFF_NO_PI == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("fd {fd} is not a tap device without packet information (IFF_TAP, IFF_NO_PI)"),
        ));
    }
    if req.flags & IFF_VNET_HDR == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("tap fd {fd} has no virtio-net header (IFF_VNET_HDR), which machina needs"),
        ));
    }
    // SAFETY: F_GETFL only reads the open file's status flags.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: F_SETFL only changes the open file's status flags.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    set_offload(&file, 0)?;
    Ok(file)
}

/// Set the virtio-net header length the tap prepends and expects (10 or 12).
pub fn set_vnet_hdr_size(tap: &File, size: i32) -> std::io::Result<()> {
    // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer, which is valid for the call.
    let r = unsafe { libc::ioctl(tap.as_raw_fd(), TUNSETVNETHDRSZ as _, &size as *const i32) };
    if r < 0 {
        return Err(ioctl_err("TUNSETVNETHDRSZ"));
    }
    Ok(())
}

/// Attach or detach one queue of a multiqueue tap (a detached queue gets no frames).
pub fn set_queue_enabled(tap: &File, enabled: bool) -> std::io::Result<()> {
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: if enabled {
            IFF_ATTACH_QUEUE
        } else {
            IFF_DETACH_QUEUE
        },
        _pad: [0; 22],
    };
    // SAFETY: TUNSETQUEUE reads a `struct ifreq`; `req` is one, padded to the full 40 bytes,
    // and outlives the call.
    let r = unsafe { libc::ioctl(tap.as_raw_fd(), TUNSETQUEUE as _, &mut req as *mut IfReq) };
    // A queue already in the wanted state answers EINVAL: nothing to do.
    if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        return Err(ioctl_err("TUNSETQUEUE"));
    }
    Ok(())
}

/// Offload flags (TUN_F_*) the tap may hand the guest: the receive offloads it negotiated.
pub fn set_offload(tap: &File, flags: libc::c_uint) -> std::io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
    let r = unsafe { libc::ioctl(tap.as_raw_fd(), TUNSETOFFLOAD as _, flags as libc::c_ulong) };
    if r < 0 {
        return Err(ioctl_err("TUNSETOFFLOAD"));
    }
    Ok(())
}
