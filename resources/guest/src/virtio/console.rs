//! virtio-console (virtio-serial) driver.

use super::*;

pub(crate) fn run_console(t: &Transport, bdf: Bdf, path: Path) -> Result<(), Reason> {
    let (_, features) = t.negotiate(CONSOLE_F_MULTIPORT)?;
    t.driver_ok();
    let multiport = features & CONSOLE_F_MULTIPORT != 0;
    // config: cols u16, rows u16, max_nr_ports u32 (valid with MULTIPORT).
    let ports = if multiport { t.cfg32(4) } else { 1 };
    println!(
        "virtio-serial: {} path={} multiport={} ports={}",
        bdf,
        path,
        if multiport { "yes" } else { "no" },
        ports
    );
    Ok(())
}
