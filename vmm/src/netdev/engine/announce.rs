//! `announce-self` (QEMU's AnnounceTimer): RARP rounds from the NICs and the guest
//! announcements of those that negotiated GUEST_ANNOUNCE.

use super::*;

/// A running `announce-self` (QEMU's AnnounceTimer).
pub(super) struct Announce {
    pub(super) id: String,
    pub(super) interfaces: Option<Vec<String>>,
    pub(super) initial: i64,
    pub(super) max: i64,
    pub(super) rounds: i64,
    pub(super) step: i64,
    /// Rounds left.
    pub(super) round: i64,
    pub(super) next: Instant,
}

impl State {
    /// QMP `announce-self`: a RARP from every NIC now, then `rounds - 1` more; a timer
    /// with the same id is replaced (rounds 0 stops it).
    pub fn announce(
        &mut self,
        id: String,
        interfaces: Option<Vec<String>>,
        initial: i64,
        max: i64,
        rounds: i64,
        step: i64,
    ) {
        self.announces.retain(|a| a.id != id);
        if rounds <= 0 {
            return;
        }
        self.announce_once(interfaces.as_deref());
        if rounds > 1 {
            let mut a = Announce {
                id,
                interfaces,
                initial,
                max,
                rounds,
                step,
                round: rounds - 1,
                next: Instant::now(),
            };
            a.next = Instant::now() + Duration::from_millis(announce_step(&a) as u64);
            self.announces.push(a);
        }
    }

    pub(super) fn announce_once(&mut self, interfaces: Option<&[String]>) {
        let nics: Vec<(u64, [u8; 6])> = self
            .clients
            .iter()
            .filter_map(|c| c.nic.as_ref().map(|(_, mac)| (c.key, *mac, &c.name)))
            .filter(|(_, _, name)| interfaces.is_none_or(|list| list.iter().any(|i| i == *name)))
            .map(|(k, m, _)| (k, m))
            .collect();
        for (key, mac) in nics {
            self.deliver(key, &rarp(&mac), 0);
            if let Some(fd) = self.by_key(key).and_then(|c| c.guest_announce.as_ref()) {
                // The device reads the count; a full counter still means "announce".
                let _ = fd.write(1);
            }
        }
    }
}

/// QEMU's qemu_announce_timer_step: the delay before the next round.
pub(super) fn announce_step(a: &Announce) -> i64 {
    let step = a.initial + (a.rounds - a.round - 1) * a.step;
    if step < 0 || step > a.max {
        a.max
    } else {
        step
    }
}

/// QEMU's announce_self_create: a broadcast RARP request from `mac`, padded to 60 bytes.
pub fn rarp(mac: &[u8; 6]) -> Vec<u8> {
    let mut buf = vec![0u8; 60];
    buf[..6].fill(0xff);
    buf[6..12].copy_from_slice(mac);
    buf[12..14].copy_from_slice(&0x8035u16.to_be_bytes());
    buf[14..16].copy_from_slice(&1u16.to_be_bytes());
    buf[16..18].copy_from_slice(&0x0800u16.to_be_bytes());
    buf[18] = 6;
    buf[19] = 4;
    buf[20..22].copy_from_slice(&3u16.to_be_bytes());
    buf[22..28].copy_from_slice(mac);
    buf[32..38].copy_from_slice(mac);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rarp_matches_qemus_layout() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let f = rarp(&mac);
        assert_eq!(f.len(), 60);
        assert_eq!(&f[..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x80, 0x35]);
        assert_eq!(&f[20..22], &[0, 3]);
        assert_eq!(&f[32..38], &mac);
    }

    #[test]
    fn announce_steps_follow_qemus_formula() {
        let mut a = Announce {
            id: String::new(),
            interfaces: None,
            initial: 50,
            max: 550,
            rounds: 5,
            step: 100,
            round: 4,
            next: Instant::now(),
        };
        assert_eq!(announce_step(&a), 50);
        a.round = 1;
        assert_eq!(announce_step(&a), 350);
        a.step = 1000;
        assert_eq!(announce_step(&a), 550, "capped at max");
    }

    /// announce-self signals a NIC's guest-announce EventFd besides sending its RARP; a
    /// NIC left out by `interfaces` is not asked.
    #[test]
    fn announce_asks_the_guests_of_the_named_nics() {
        let mut state = State::default();
        let fds: Vec<Arc<EventFd>> = (0..2)
            .map(|_| Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()))
            .collect();
        for (i, name) in ["net0", "net1"].iter().enumerate() {
            let mut c = Client::new(name.to_string(), "nic", String::new(), Io::None);
            c.nic = Some((
                "virtio-net-pci".into(),
                [0x52, 0x54, 0, 0x12, 0x34, i as u8],
            ));
            state.add(c);
        }
        for (name, fd) in ["net0", "net1"].iter().zip(&fds) {
            state.find_nic_mut(name).unwrap().guest_announce = Some(fd.clone());
        }
        state.announce("a".into(), Some(vec!["net1".into()]), 50, 550, 1, 100);
        assert!(fds[0].read().is_err(), "net0 was not named");
        assert_eq!(fds[1].read().unwrap(), 1);
        state.announce("b".into(), None, 50, 550, 1, 100);
        assert_eq!(fds[0].read().unwrap(), 1);
        assert_eq!(fds[1].read().unwrap(), 1);
    }
}
