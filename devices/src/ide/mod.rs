//! IDE: the PIIX3/PIIX4 IDE function with its two legacy channels and bus-master DMA, ATA
//! disks (`ide-hd`) and ATAPI CD-ROMs (`ide-cd`), after QEMU's hw/ide.

mod atapi;
pub mod bmdma;
pub mod channel;
pub mod disk;
pub mod drive;
pub mod geometry;
pub mod piix;
#[cfg(test)]
mod tests;

pub use bmdma::DmaMemory;
pub use disk::Disk;
pub use drive::{DriveInfo, Kind};
pub use piix::PiixIde;
