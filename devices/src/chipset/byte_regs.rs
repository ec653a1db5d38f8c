//! A block of plain byte registers (ICH9 RCRB, PIIX IDE bus-master DMA): reads return what
//! was written, bytes past the end read as the block's `absent` value and ignore writes.

/// Read `data.len()` bytes of `regs` from `offset`.
pub fn read(regs: &[u8], offset: u64, data: &mut [u8], absent: u8) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset.saturating_add(i as u64))
            .ok()
            .and_then(|o| regs.get(o))
            .copied()
            .unwrap_or(absent);
    }
}

/// Store `data` into `regs` at `offset`.
pub fn write(regs: &mut [u8], offset: u64, data: &[u8]) {
    for (i, &v) in data.iter().enumerate() {
        if let Some(r) = usize::try_from(offset.saturating_add(i as u64))
            .ok()
            .and_then(|o| regs.get_mut(o))
        {
            *r = v;
        }
    }
}
