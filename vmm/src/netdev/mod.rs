//! Network backends other than tap: `-netdev socket` (QEMU's older backend: `fd=`,
//! `listen=`, `connect=`, `mcast=`, `udp=`), `-netdev stream` (`server=on|off`,
//! `addr.type=inet|unix|fd`, `reconnect`/`reconnect-ms`, NETDEV_STREAM_CONNECTED and
//! NETDEV_STREAM_DISCONNECTED events), `-netdev dgram` (`local.*`/`remote.*`, multicast)
//! and `-netdev hubport,hubid=N` (QEMU's hubs), with QEMU's option checks and texts. Each
//! is a client of the network thread ([`engine`]); a NIC reaches its netdev through a
//! datagram socket pair ([`Netdev::attach_nic`]). Taps keep their direct path to the device
//! and are registered only to be shown (`info network`) and announced.
//!
//! Here: the handle of a netdev and of a NIC's attachment, `info network` and
//! `announce-self`. `options` reads options, `socket`, `stream` and `dgram` open each
//! backend, `filter` adds packet filters and their chardevs.

pub mod addr;
mod dgram;
pub mod engine;
mod filter;
pub mod framing;
mod options;
mod socket;
mod stream;

use dgram::dgram_netdev;
pub use filter::{add_filter, open_char, CharSocket};
use options::{check_keys, text};
use socket::socket_netdev;
use stream::stream_netdev;

use addr::{RawAddr, SockAddr};
use engine::{Client, Io, StreamIo, StreamMode};
use framing::FrameReader;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

/// A netdev that cannot be created, with QEMU's text where QEMU has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NetdevError(pub String);

fn fail<T>(message: impl Into<String>) -> Result<T, NetdevError> {
    Err(NetdevError(message.into()))
}

/// An errno's text as QEMU prints it (no " (os error N)").
pub fn plain(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        // SAFETY: strerror returns a pointer to a NUL-terminated string, copied at once.
        Some(code) => unsafe { std::ffi::CStr::from_ptr(libc::strerror(code)) }
            .to_string_lossy()
            .into_owned(),
        None => e.to_string(),
    }
}

/// The netdev types this module creates.
pub const KINDS: &[&str] = &["socket", "stream", "dgram", "hubport"];

struct Registration {
    key: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(engine) = engine::running() {
            engine.lock().remove(self.key);
            engine.kick();
        }
    }
}

/// A netdev of the network thread; the client goes when the last handle does.
#[derive(Clone)]
pub struct Netdev(Arc<Registration>);

impl std::fmt::Debug for Netdev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Netdev({})", self.0.key)
    }
}

impl PartialEq for Netdev {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Netdev {}

impl Netdev {
    /// Create netdev `id` of `kind` (one of [`KINDS`]) from its members (the type first,
    /// dotted keys for addresses), opening its sockets now. `numeric_fds`: `fd=N` names an
    /// inherited descriptor (command line only).
    pub fn create(
        kind: &str,
        id: &str,
        members: &[(String, OsString)],
        numeric_fds: bool,
    ) -> Result<Netdev, NetdevError> {
        let engine = engine::engine().map_err(NetdevError)?;
        let (client, connect) = match kind {
            "socket" => socket_netdev(id, members, numeric_fds)?,
            "stream" => stream_netdev(id, members, numeric_fds)?,
            "dgram" => dgram_netdev(id, members, numeric_fds)?,
            "hubport" => {
                check_keys(members, &["id", "hubid", "netdev"], false)?;
                let hubid: i64 = match text(members, "hubid") {
                    None => return fail("Parameter 'hubid' is missing"),
                    Some(v) => v
                        .parse::<i32>()
                        .map_err(|_| NetdevError("Parameter 'hubid' expects int32".into()))?
                        .into(),
                };
                let client = Client::new(id.into(), "hubport", String::new(), Io::Hub { hubid });
                let peer = text(members, "netdev");
                let mut state = engine.lock();
                let peer_key = match &peer {
                    None => None,
                    Some(name) => match state.find(name) {
                        None => return fail(format!("netdev '{name}' not found")),
                        Some(p) if p.peer.is_some() => {
                            return fail(format!("netdev '{name}' is already in use"))
                        }
                        Some(p) => Some(p.key),
                    },
                };
                let key = state.add(client);
                if let Some(p) = peer_key {
                    state.link(key, p);
                }
                drop(state);
                engine.kick();
                return Ok(Netdev(Arc::new(Registration { key })));
            }
            other => return fail(format!("Parameter 'type' does not accept value '{other}'")),
        };
        let legacy = client.driver == "socket";
        let key = {
            let mut state = engine.lock();
            let key = state.add(client);
            if connect {
                state.start_connect(key);
                // `-netdev socket,connect=` refuses to start when the connect fails at once
                // (QEMU's net_socket_connect_init); `stream` reports it in its state.
                let failed = state
                    .by_key(key)
                    .and_then(|c| c.info.strip_prefix("error: ").map(str::to_string));
                if let (true, Some(why)) = (legacy, failed) {
                    state.remove(key);
                    let why = why.rsplit(": ").next().unwrap_or_default().to_string();
                    return fail(format!("can't connect socket: {why}"));
                }
            } else {
                // A passed connected stream reports its connection like a finished connect.
                state.connect_done(key);
            }
            key
        };
        engine.emit_pending();
        engine.kick();
        Ok(Netdev(Arc::new(Registration { key })))
    }

    /// Register a tap (whose frames the device moves itself) for `info network` and
    /// announcements; `fd` is a duplicate of the tap.
    pub fn register_tap(id: &str, info: String, fd: OwnedFd) -> Result<Netdev, NetdevError> {
        let engine = engine::engine().map_err(NetdevError)?;
        let key = engine
            .lock()
            .add(Client::new(id.into(), "tap", info, Io::Tap { fd }));
        Ok(Netdev(Arc::new(Registration { key })))
    }

    /// Hand its NIC what the netdev's socket already holds, before returning (a NIC model
    /// calls it when the guest gives receive buffers, as QEMU flushes queued packets then).
    pub fn pull(&self) {
        if let Some(engine) = engine::running() {
            engine.pull(self.0.key);
        }
    }

    /// Attach NIC `name` (device model `model`, MAC `mac`) as this netdev's peer: the
    /// device's end of the socket pair the frames travel through (a new descriptor for each
    /// build; the pair lives as long as the netdev). A tap gives none: the device uses the
    /// tap itself. A netdev serves one NIC.
    pub fn attach_nic(
        &self,
        name: &str,
        model: &str,
        mac: [u8; 6],
    ) -> Result<Option<File>, NetdevError> {
        let engine = engine::engine().map_err(NetdevError)?;
        let mut state = engine.lock();
        let Some(me) = state.by_key(self.0.key) else {
            return fail("netdev was deleted");
        };
        let tap = me.driver == "tap";
        if let Some(peer) = me.peer.and_then(|p| state.by_key(p)) {
            if peer.driver == "nic" && peer.name == name {
                return match &peer.io {
                    Io::Nic { device, .. } => device
                        .try_clone()
                        .map(|fd| Some(File::from(fd)))
                        .map_err(|e| NetdevError(format!("cannot share the NIC's socket: {e}"))),
                    _ => Ok(None),
                };
            }
            return fail("in use");
        }
        let io = if tap {
            Io::None
        } else {
            let mut pair = [0; 2];
            // SAFETY: socketpair writes two new descriptors into `pair`.
            let r = unsafe {
                libc::socketpair(
                    libc::AF_UNIX,
                    libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    0,
                    pair.as_mut_ptr(),
                )
            };
            if r < 0 {
                return fail(format!(
                    "cannot create a socket pair: {}",
                    plain(&std::io::Error::last_os_error())
                ));
            }
            // SAFETY: both descriptors were just created and are owned by nobody else.
            let (relay, device) =
                unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
            // Room for a burst of full-size frames on each side.
            for fd in [&relay, &device] {
                let _ = addr::set_int_option(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_SNDBUF,
                    1 << 20,
                );
                let _ = addr::set_int_option(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    1 << 20,
                );
            }
            Io::Nic { relay, device }
        };
        let info = format!(
            "model={model},macaddr={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
        );
        let mut client = Client::new(name.into(), "nic", info, io);
        client.nic = Some((model.to_string(), mac));
        let handle = match &client.io {
            Io::Nic { device, .. } => Some(
                device
                    .try_clone()
                    .map(File::from)
                    .map_err(|e| NetdevError(format!("cannot share the NIC's socket: {e}")))?,
            ),
            _ => None,
        };
        let key = state.add(client);
        state.link(key, self.0.key);
        drop(state);
        engine.kick();
        Ok(handle)
    }
}

/// Let NIC `name` (attached to a netdev) ask its guest to announce itself on each
/// `announce-self` round through `fd` (virtio-net's GUEST_ANNOUNCE); the last build's wins.
pub fn set_guest_announce(name: &str, fd: Arc<vmm_sys_util::eventfd::EventFd>) {
    let Some(engine) = engine::running() else {
        return;
    };
    let mut state = engine.lock();
    if let Some(c) = state.find_nic_mut(name) {
        c.guest_announce = Some(fd);
    }
}

/// The NIC name QEMU gives a device without `id`: its model and a per-model count.
pub fn nic_name(model: &str, id: Option<&str>) -> String {
    if let Some(id) = id {
        return id.to_string();
    }
    let taken = engine::running().map_or(0, |e| {
        e.lock()
            .clients()
            .iter()
            .filter(|c| c.nic.as_ref().is_some_and(|(m, _)| m == model))
            .count()
    });
    format!("{model}.{taken}")
}

/// Send the network's QMP events to `sink`.
pub fn set_event_sink(sink: engine::EventSink) {
    engine::set_sink(sink);
}

/// HMP `info network`, from the network thread's clients (QEMU's hmp_info_network).
pub fn info_network() -> String {
    let Some(engine) = engine::running() else {
        return String::new();
    };
    let state = engine.lock();
    let line = |c: &Client| format!("{}: index=0,type={},{}\n", c.name, c.driver, c.info);
    let mut out = String::new();
    for hubid in state.hubs() {
        let _ = writeln!(out, "hub {hubid}");
        for port in state.hub_ports(*hubid) {
            let _ = write!(out, " \\ {}", port.name);
            match port.peer.and_then(|p| state.by_key(p)) {
                Some(peer) => {
                    out.push_str(": ");
                    out.push_str(&line(peer));
                }
                None => out.push('\n'),
            }
        }
    }
    for c in state.clients() {
        let peer = c.peer.and_then(|p| state.by_key(p));
        if c.driver == "hubport" || peer.is_some_and(|p| p.driver == "hubport") {
            continue;
        }
        if peer.is_none() || c.driver == "nic" {
            out.push_str(&line(c));
        }
        if let (Some(peer), "nic") = (peer, c.driver) {
            out.push_str(" \\ ");
            out.push_str(&line(peer));
        }
    }
    out
}

/// QMP `announce-self`.
pub fn announce(
    id: String,
    interfaces: Option<Vec<String>>,
    initial: i64,
    max: i64,
    rounds: i64,
    step: i64,
) {
    // Without any netdev there is no NIC with a peer: nothing to announce to.
    let Some(engine) = engine::running() else {
        return;
    };
    engine
        .lock()
        .announce(id, interfaces, initial, max, rounds, step);
    engine.kick();
}
