//! Disk geometry as QEMU computes it (hw/block/hd-geometry.c, blkconf_geometry): the
//! physical CHS an IDE disk reports, guessed from an MS-DOS partition table or from the
//! size, and the BIOS translation firmware uses (the CMOS bytes of pc_cmos_init_late).

/// BIOS CHS translation (QEMU's BIOS_ATA_TRANSLATION_*; CMOS stores the value minus 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Translation {
    Auto = 0,
    None = 1,
    Lba = 2,
    Large = 3,
    Rechs = 4,
}

impl Translation {
    /// The `bios-chs-trans` property value.
    pub fn parse(v: &str) -> Option<Self> {
        Some(match v {
            "auto" => Self::Auto,
            "none" => Self::None,
            "lba" => Self::Lba,
            "large" => Self::Large,
            "rechs" => Self::Rechs,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chs {
    pub cyls: u32,
    pub heads: u32,
    pub secs: u32,
}

/// hd_bios_chs_auto_trans.
pub fn auto_translation(chs: Chs) -> Translation {
    if chs.cyls <= 1024 && chs.heads <= 16 && chs.secs <= 63 {
        Translation::None
    } else {
        Translation::Lba
    }
}

/// guess_chs_for_size: 16 heads, 63 sectors, 2..=16383 cylinders.
fn chs_for_size(nb_sectors: u64) -> Chs {
    Chs {
        cyls: (nb_sectors / (16 * 63)).clamp(2, 16383) as u32,
        heads: 16,
        secs: 63,
    }
}

/// guess_disk_lchs: the logical geometry of the first partition that ends on a head
/// boundary, assuming it ends on a cylinder boundary.
fn lchs_from_mbr(mbr: &[u8; 512], nb_sectors: u64) -> Option<Chs> {
    if mbr[510] != 0x55 || mbr[511] != 0xaa {
        return None;
    }
    (0..4).find_map(|i| {
        let p = &mbr[0x1be + 16 * i..0x1be + 16 * (i + 1)];
        let nr_sects = u32::from_le_bytes([p[12], p[13], p[14], p[15]]);
        let end_head = u32::from(p[5]);
        if nr_sects == 0 || end_head == 0 {
            return None;
        }
        let heads = end_head + 1;
        let secs = u32::from(p[6] & 63);
        if secs == 0 {
            return None;
        }
        let cyls = nb_sectors / u64::from(heads * secs);
        if !(1..=16383).contains(&cyls) {
            return None;
        }
        Some(Chs {
            cyls: cyls as u32,
            heads,
            secs,
        })
    })
}

/// hd_geometry_guess: the physical geometry and the translation it implies.
pub fn guess(nb_sectors: u64, mbr: Option<&[u8; 512]>) -> (Chs, Translation) {
    match mbr.and_then(|m| lchs_from_mbr(m, nb_sectors)) {
        None => {
            let chs = chs_for_size(nb_sectors);
            (chs, auto_translation(chs))
        }
        // A logical geometry with more than 16 heads means the BIOS translated.
        Some(l) if l.heads > 16 => {
            let chs = chs_for_size(nb_sectors);
            let t = if chs.cyls * chs.heads <= 131_072 {
                Translation::Large
            } else {
                Translation::Lba
            };
            (chs, t)
        }
        Some(l) => (l, Translation::None),
    }
}

/// blkconf_geometry for IDE: the user's CHS (checked by the planner) or a guess, and the
/// translation (`trans`, unless auto).
pub fn resolve(
    user: Chs,
    trans: Translation,
    nb_sectors: u64,
    mbr: Option<&[u8; 512]>,
) -> (Chs, Translation) {
    if user.cyls == 0 && user.heads == 0 && user.secs == 0 {
        let (chs, guessed) = guess(nb_sectors, mbr);
        let t = if trans == Translation::Auto {
            guessed
        } else {
            trans
        };
        return (chs, t);
    }
    let t = if trans == Translation::Auto {
        auto_translation(user)
    } else {
        trans
    };
    (user, t)
}

/// The CMOS bytes pc_cmos_init_late writes for the hard disks of the first two IDE buses:
/// `disks[i]` is the disk at index i (bus i / 2, unit i % 2), if any.
pub fn cmos_bytes(disks: &[Option<(Chs, Translation)>; 4]) -> Vec<(u8, u8)> {
    let mut out = Vec::new();
    let mut present = 0u8;
    for (unit, (type_ofs, info_ofs, bits)) in [(0x19u8, 0x1bu8, 0xf0u8), (0x1a, 0x24, 0x0f)]
        .into_iter()
        .enumerate()
    {
        let Some((chs, _)) = disks[unit] else {
            continue;
        };
        present |= bits;
        let c = chs.cyls as u16;
        let h = chs.heads as u8;
        out.push((type_ofs, 47));
        out.extend([
            (info_ofs, c as u8),
            (info_ofs + 1, (c >> 8) as u8),
            (info_ofs + 2, h),
            (info_ofs + 3, 0xff),
            (info_ofs + 4, 0xff),
            (info_ofs + 5, 0xc0 | (u8::from(h > 8) << 3)),
            (info_ofs + 6, c as u8),
            (info_ofs + 7, (c >> 8) as u8),
            (info_ofs + 8, chs.secs as u8),
        ]);
    }
    out.push((0x12, present));
    let mut trans = 0u8;
    for (i, d) in disks.iter().enumerate() {
        if let Some((_, t)) = d {
            trans |= ((*t as u8).saturating_sub(1) & 3) << (2 * i);
        }
    }
    out.push((0x39, trans));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mbr(part: [u8; 16]) -> [u8; 512] {
        let mut m = [0u8; 512];
        m[510] = 0x55;
        m[511] = 0xaa;
        m[0x1be..0x1ce].copy_from_slice(&part);
        m
    }

    // hd-geo-test's expectations.
    #[test]
    fn guesses_as_qemu() {
        let chs = |cyls, heads, secs| Chs { cyls, heads, secs };
        let lba = mbr([0x80, 1, 1, 0, 6, 127, 63, 0, 63, 0, 0, 0, 0x41, 0x1f, 0, 0]);
        let chs_part = mbr([0x80, 1, 1, 0, 6, 15, 63, 7, 63, 0, 0, 0, 0x41, 0x1f, 0, 0]);
        assert_eq!(guess(61440, None), (chs(60, 16, 63), Translation::None));
        assert_eq!(
            guess(61440, Some(&lba)),
            (chs(60, 16, 63), Translation::Large)
        );
        assert_eq!(
            guess(61440, Some(&chs_part)),
            (chs(60, 16, 63), Translation::None)
        );
        assert_eq!(guess(8388608, None), (chs(8322, 16, 63), Translation::Lba));
        assert_eq!(
            guess(8388608, Some(&lba)),
            (chs(8322, 16, 63), Translation::Lba)
        );
        assert_eq!(
            guess(8388608, Some(&chs_part)),
            (chs(8322, 16, 63), Translation::None)
        );
        assert_eq!(guess(1, None).0, chs(2, 16, 63));
        let user = chs(480, 4, 32);
        assert_eq!(
            resolve(user, Translation::Auto, 61440, None),
            (user, Translation::None)
        );
        assert_eq!(
            resolve(user, Translation::Lba, 61440, None),
            (user, Translation::Lba)
        );
    }

    #[test]
    fn cmos_layout() {
        let d = Some((
            Chs {
                cyls: 0x1234,
                heads: 16,
                secs: 63,
            },
            Translation::Lba,
        ));
        let bytes = cmos_bytes(&[None, d, None, d]);
        let get = |r: u8| bytes.iter().find(|(k, _)| *k == r).map(|(_, v)| *v);
        assert_eq!(get(0x12), Some(0x0f));
        assert_eq!(get(0x19), None);
        assert_eq!(get(0x1a), Some(47));
        assert_eq!(get(0x24), Some(0x34));
        assert_eq!(get(0x25), Some(0x12));
        assert_eq!(get(0x29), Some(0xc8));
        assert_eq!(get(0x2c), Some(63));
        assert_eq!(get(0x39), Some(0b0100_0100));
    }
}
