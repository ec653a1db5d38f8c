//! virtio-blk driver.

use super::*;

/// virtio-blk request types and status values.
pub(crate) const BLK_T_IN: u32 = 0;
pub(crate) const BLK_T_OUT: u32 = 1;
pub(crate) const BLK_T_FLUSH: u32 = 4;
pub(crate) const BLK_T_GET_ID: u32 = 8;
pub(crate) const BLK_ID_BYTES: usize = 20;
pub(crate) const BLK_BLOCK: usize = 4096;

/// Layout of the data area for virtio-blk.
pub(crate) const BLK_HDR: usize = DATA;
pub(crate) const BLK_STATUS: usize = DATA + 16;
pub(crate) const BLK_ID: usize = DATA + 32;
pub(crate) const BLK_BUF: usize = DATA + 4096;

/// The documented test pattern: byte `i` of the 4096-byte block written at
/// `sector`.
pub fn blk_pattern(seed: u64, sector: u64, i: usize) -> u8 {
    (seed
        .wrapping_mul(31)
        .wrapping_add(sector.wrapping_mul(7))
        .wrapping_add(i as u64)) as u8
}

/// Outcome of one virtio-blk request.
pub(crate) enum BlkStatus {
    Ok,
    IoErr,
    Unsupp,
    Other(u8),
    NotOffered,
}

impl fmt::Display for BlkStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlkStatus::Ok => f.write_str("ok"),
            BlkStatus::IoErr => f.write_str("ioerr"),
            BlkStatus::Unsupp => f.write_str("unsupp"),
            BlkStatus::Other(s) => write!(f, "status-{}", s),
            BlkStatus::NotOffered => f.write_str("not-offered"),
        }
    }
}

impl BlkStatus {
    pub(crate) fn ok(&self) -> bool {
        matches!(self, BlkStatus::Ok)
    }
}

pub(crate) fn blk_request(
    q: &mut Queue,
    kind: u32,
    sector: u64,
    data: Option<Buf>,
    timeout: Reason,
) -> Result<BlkStatus, Reason> {
    dma_write(BLK_HDR, kind);
    dma_write(BLK_HDR + 4, 0u32);
    dma_write(BLK_HDR + 8, sector);
    dma_write(BLK_STATUS, 0xffu8);
    let hdr = Buf::out(BLK_HDR, 16);
    let status = Buf::into(BLK_STATUS, 1);
    match data {
        Some(d) => q.request(&[hdr, d, status], timeout)?,
        None => q.request(&[hdr, status], timeout)?,
    };
    Ok(match dma_read::<u8>(BLK_STATUS) {
        0 => BlkStatus::Ok,
        1 => BlkStatus::IoErr,
        2 => BlkStatus::Unsupp,
        s => BlkStatus::Other(s),
    })
}

pub(crate) fn run_blk(t: &Transport, bdf: Bdf, path: Path, seed: u64) -> Result<(), Reason> {
    let (offered, features) = t.negotiate(BLK_F_FLUSH)?;
    let mut q = t.setup_queue(0, 0)?;
    t.driver_ok();
    let capacity = t.cfg64(0);
    let sector: u64 = match path {
        Path::Legacy => 8,
        Path::Modern => 16,
    };
    if capacity < sector + (BLK_BLOCK / 512) as u64 {
        println!(
            "virtio-blk: {} path={} capacity={} result=error reason=disk-too-small",
            bdf, path, capacity
        );
        return Err("disk-too-small");
    }

    for i in 0..BLK_BLOCK {
        dma_write(BLK_BUF + i, blk_pattern(seed, sector, i));
    }
    let write = blk_request(
        &mut q,
        BLK_T_OUT,
        sector,
        Some(Buf::out(BLK_BUF, BLK_BLOCK)),
        "write-timeout",
    )?;

    dma_fill(BLK_BUF, BLK_BLOCK, 0);
    let read = blk_request(
        &mut q,
        BLK_T_IN,
        sector,
        Some(Buf::into(BLK_BUF, BLK_BLOCK)),
        "read-timeout",
    )?;
    let matches =
        (0..BLK_BLOCK).all(|i| dma_read::<u8>(BLK_BUF + i) == blk_pattern(seed, sector, i));

    let flush = if features & BLK_F_FLUSH != 0 {
        blk_request(&mut q, BLK_T_FLUSH, 0, None, "flush-timeout")?
    } else {
        BlkStatus::NotOffered
    };

    dma_fill(BLK_ID, BLK_ID_BYTES, 0);
    let get_id = blk_request(
        &mut q,
        BLK_T_GET_ID,
        0,
        Some(Buf::into(BLK_ID, BLK_ID_BYTES)),
        "get-id-timeout",
    )?;
    let mut id = [0u8; BLK_ID_BYTES];
    for (i, b) in id.iter_mut().enumerate() {
        *b = dma_read(BLK_ID + i);
    }
    let id_len = if get_id.ok() {
        id.iter().position(|&b| b == 0).unwrap_or(BLK_ID_BYTES)
    } else {
        0
    };

    println!(
        "virtio-blk: {} path={} capacity={} ro={} write={} read={} match={} flush={} get-id={} id={}",
        bdf,
        path,
        capacity,
        if offered & BLK_F_RO != 0 { "yes" } else { "no" },
        write,
        read,
        if matches { "yes" } else { "no" },
        flush,
        get_id,
        TokenBytes(&id[..id_len])
    );
    if !write.ok() {
        Err("write-failed")
    } else if !read.ok() {
        Err("read-failed")
    } else if !matches {
        Err("mismatch")
    } else if !(flush.ok() || matches!(flush, BlkStatus::NotOffered)) {
        Err("flush-failed")
    } else {
        Ok(())
    }
}
