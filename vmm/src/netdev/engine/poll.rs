//! The network thread's loop: the descriptors it polls, who owns each, dispatching their
//! readiness, and the timers (stream reconnects, announcement rounds).

use super::announce::announce_step;
use super::deliver::flush;
use super::*;

impl Engine {
    pub(super) fn run(&self) {
        // Process signals (SIGTERM, SIGINT, SIGHUP) belong to the run loop's signalfd: this
        // thread, which may start before the loop blocks them, must never take one.
        // SAFETY: sigfillset initialises the set; pthread_sigmask changes only this thread's
        // mask and reads the set through a valid pointer.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut set);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
        let mut buf = vec![0u8; MAX_FRAME + 1];
        loop {
            let (mut fds, owners, timeout) = {
                let state = self.lock();
                state.poll_set(self.wake.as_raw_fd())
            };
            let timeout_ms = timeout.map_or(-1, |t| {
                let now = Instant::now();
                if t <= now {
                    0
                } else {
                    (t - now).as_millis().min(60_000) as i32 + 1
                }
            });
            // SAFETY: `fds` is a valid array of pollfd of the given length for the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINTR) {
                    eprintln!("machina: network thread: poll: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
            let _ = self.wake.read();
            let events = {
                let mut state = self.lock();
                for (pfd, owner) in fds.iter().zip(&owners) {
                    if pfd.revents == 0 {
                        continue;
                    }
                    if let Some((key, what)) = owner {
                        state.ready(*key, *what, pfd.revents, &mut buf);
                    }
                }
                state.timers();
                std::mem::take(&mut state.events)
            };
            self.emit(events);
        }
    }
}

/// The descriptors to poll, who owns each (none: the wake eventfd), and the next timer.
pub(super) type PollSet = (
    Vec<libc::pollfd>,
    Vec<Option<(u64, Which)>>,
    Option<Instant>,
);

/// Which descriptor of a client a pollfd is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Which {
    Main,
    Listener,
    Char,
    CharListener,
}

pub(super) fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

impl State {
    pub(super) fn poll_set(&self, wake: RawFd) -> PollSet {
        let mut fds = vec![pollfd(wake, libc::POLLIN)];
        let mut owners = vec![None];
        let mut timeout: Option<Instant> = None;
        let mut earliest = |t: Instant| {
            timeout = Some(timeout.map_or(t, |old: Instant| old.min(t)));
        };
        for c in &self.clients {
            let can_read = self.can_send(c);
            let want_out = !c.out.q.is_empty();
            let mut add = |fd: RawFd, events: libc::c_short, which: Which| {
                if events != 0 {
                    fds.push(pollfd(fd, events));
                    owners.push(Some((c.key, which)));
                }
            };
            let rw = |read: bool, write: bool| {
                (if read { libc::POLLIN } else { 0 }) | (if write { libc::POLLOUT } else { 0 })
            };
            match &c.io {
                Io::Nic { relay, .. } => {
                    add(relay.as_raw_fd(), rw(can_read, want_out), Which::Main)
                }
                Io::Dgram { fd, .. } => add(fd.as_raw_fd(), rw(can_read, want_out), Which::Main),
                Io::Stream(s) => {
                    if let Some(conn) = &s.conn {
                        let events = if s.connecting {
                            libc::POLLOUT
                        } else {
                            rw(can_read, want_out)
                        };
                        add(conn.as_raw_fd(), events, Which::Main);
                    } else if let StreamMode::Server { listener, .. } = &s.mode {
                        add(listener.as_raw_fd(), libc::POLLIN, Which::Listener);
                    }
                    if let Some(t) = s.retry_at {
                        earliest(t);
                    }
                }
                Io::Hub { .. } | Io::Tap { .. } | Io::None => {}
            }
        }
        for ch in &self.chars {
            if let Some(conn) = &ch.conn {
                let out = if ch.out.q.is_empty() {
                    0
                } else {
                    libc::POLLOUT
                };
                fds.push(pollfd(conn.as_raw_fd(), libc::POLLIN | out));
                owners.push(Some((ch.key, Which::Char)));
            } else if let Some(l) = &ch.listener {
                fds.push(pollfd(l.as_raw_fd(), libc::POLLIN));
                owners.push(Some((ch.key, Which::CharListener)));
            }
        }
        for a in &self.announces {
            earliest(a.next);
        }
        (fds, owners, timeout)
    }

    pub(super) fn ready(&mut self, key: u64, which: Which, revents: libc::c_short, buf: &mut [u8]) {
        if matches!(which, Which::Char | Which::CharListener) {
            self.char_ready(key, which, revents, buf);
            return;
        }
        let Some(c) = self.by_key_mut(key) else {
            return;
        };
        if which == Which::Listener {
            self.accept(key);
            return;
        }
        if revents & libc::POLLOUT != 0 {
            if let Io::Stream(s) = &c.io {
                if s.connecting {
                    self.connect_done(key);
                    return;
                }
            }
            flush(c);
        }
        if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            self.read(key, buf);
        }
    }

    pub(super) fn timers(&mut self) {
        let now = Instant::now();
        let due: Vec<u64> = self
            .clients
            .iter()
            .filter(|c| matches!(&c.io, Io::Stream(s) if s.retry_at.is_some_and(|t| t <= now)))
            .map(|c| c.key)
            .collect();
        for key in due {
            self.start_connect(key);
        }
        let mut i = 0;
        while i < self.announces.len() {
            if self.announces[i].next > now {
                i += 1;
                continue;
            }
            let interfaces = self.announces[i].interfaces.clone();
            self.announce_once(interfaces.as_deref());
            let a = &mut self.announces[i];
            a.round -= 1;
            if a.round <= 0 {
                self.announces.remove(i);
            } else {
                a.next = now + Duration::from_millis(announce_step(a) as u64);
                i += 1;
            }
        }
    }
}
