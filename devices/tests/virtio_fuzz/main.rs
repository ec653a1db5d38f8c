//! Robustness fuzzing of the virtio device models, driven exactly as a guest driver would:
//! config space and BAR accesses bring a virtio-pci function up (modern, sometimes legacy),
//! then random and structured-but-wrong virtqueue contents are written into guest memory
//! and the queues are notified and processed.
//!
//! Invariants checked after every round:
//! - nothing panics and every round finishes (a watchdog aborts with the seed on a hang);
//! - no host byte around the guest regions changes (guest memory is built over one host
//!   mapping with canaries before, between and after the regions);
//! - guest canary ranges no descriptor or ring points at stay unchanged;
//! - the virtio-blk backing file keeps its length;
//! - once the device reports NEEDS_RESET it completes nothing more until reset;
//! - rounds made only of well-formed requests complete exactly as a model of the device
//!   says (status, used length, data read back, file contents).
//!
//! Bounded for CI: each random target runs for `MACHINA_FUZZ_SECS` seconds (default 5) or
//! `MACHINA_FUZZ_ITERS` iterations, whichever comes first. `MACHINA_FUZZ_SEED` fixes the
//! base seed (default: from the clock, printed); `MACHINA_FUZZ_ITER` runs a single
//! iteration; `MACHINA_FUZZ_TRACE=1` logs what each iteration generated, printed on failure.

#[path = "../common/mod.rs"]
mod common;
#[macro_use]
mod runner;
mod bad_chains;
mod blk;
mod chains;
mod driver;
mod generic;
mod layout;

pub(crate) use blk::*;
pub(crate) use chains::*;
pub(crate) use common::*;
pub(crate) use devices::virtio::blk::BlockBackend;
pub(crate) use devices::virtio::console::ConsoleBackend;
pub(crate) use devices::virtio::net::NetBackend;
pub(crate) use devices::virtio::regs::{common as cc, features, modern, status};
pub(crate) use devices::virtio::VirtioBackend;
pub(crate) use driver::*;
pub(crate) use layout::*;
pub(crate) use runner::*;
pub(crate) use std::cell::RefCell;
pub(crate) use std::fs::File;
pub(crate) use std::io::Write as _;
pub(crate) use std::os::fd::OwnedFd;
pub(crate) use std::os::unix::net::UnixDatagram;
pub(crate) use std::sync::{Arc, Mutex, OnceLock};
pub(crate) use std::time::{Duration, Instant};
pub(crate) use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
