//! What the devices report, through the `log` facade; the VMM installs the logger that
//! honours QEMU's `-d`, `-D` and `-trace` (vmm/src/logging.rs). Four kinds of line:
//!
//! - guest errors ([`guest_error!`], target [`GUEST_ERRORS`], QEMU's `LOG_GUEST_ERROR`): the
//!   guest programmed a device wrongly; shown with `-d guest_errors`. One line, naming the
//!   device ([`pci_name`]) and the reason.
//! - unimplemented functionality ([`unimp!`], target [`UNIMP`], QEMU's `LOG_UNIMP`): shown
//!   with `-d unimp`.
//! - trace events ([`trace_event!`], target `trace:NAME`): shown when `-trace` enables NAME.
//!   Every NAME is in [`TRACE_EVENTS`]; where QEMU has an event for the same thing, the
//!   name and argument order are QEMU's (the device is named where QEMU prints a pointer).
//! - backend failures (`log::error!`): the host failed the device (an I/O error, a tap that
//!   refuses an ioctl); always shown, naming the device.

pub use ::log;

/// Target of guest-error lines (`-d guest_errors`).
pub const GUEST_ERRORS: &str = "guest_errors";
/// Target of unimplemented-functionality lines (`-d unimp`).
pub const UNIMP: &str = "unimp";
/// Targets of trace events are this prefix and the event name.
pub const TRACE_PREFIX: &str = "trace:";

/// Trace events the devices emit (QEMU's names; `-trace help` lists them with the VMM's).
pub const TRACE_EVENTS: &[&str] = &[
    "pci_cfg_read",
    "pci_cfg_write",
    "pci_update_mappings_add",
    "pci_update_mappings_del",
    "virtio_blk_handle_read",
    "virtio_blk_handle_write",
    "virtio_blk_req_complete",
    "virtio_notify",
    "virtio_queue_notify",
    "virtio_rng_pushed",
    "virtio_set_status",
];

/// A guest error: `guest_error!("{}: queue {q}: bad size", name)`.
#[macro_export]
macro_rules! guest_error {
    ($($arg:tt)+) => {
        $crate::logging::log::warn!(target: "guest_errors", $($arg)+)
    };
}

/// Functionality the guest used that the model does not implement.
#[macro_export]
macro_rules! unimp {
    ($($arg:tt)+) => {
        $crate::logging::log::warn!(target: "unimp", $($arg)+)
    };
}

/// A trace event: `trace_event!(NAME, "format", arguments...)`. NAME
/// must be one of [`TRACE_EVENTS`] (a unit test checks the sources).
#[macro_export]
macro_rules! trace_event {
    ($name:ident, $($arg:tt)+) => {
        $crate::logging::log::trace!(target: concat!("trace:", stringify!($name)), $($arg)+)
    };
}

/// Whether trace event `name` is enabled now (to skip preparing costly arguments).
pub fn trace_enabled(name: &str) -> bool {
    log::max_level() >= log::LevelFilter::Trace && {
        let target = format!("{TRACE_PREFIX}{name}");
        log::logger().enabled(
            &log::Metadata::builder()
                .level(log::Level::Trace)
                .target(&target)
                .build(),
        )
    }
}

/// How log lines name a PCI function of the plan: its type, its `id=` when it has one, and
/// where it sits (`virtio-blk-pci id=disk0 (pcie.0:04.0)`).
pub fn pci_name(plan: &machine::PciFunctionPlan) -> String {
    let place = format!("{}:{:02x}.{}", plan.bus, plan.slot, plan.function);
    match &plan.id {
        Some(id) => format!("{} id={id} ({place})", plan.type_name),
        None => format!("{} ({place})", plan.type_name),
    }
}

/// A logger for unit tests that keeps every record (target, message); installed once per
/// test binary, everything enabled. Tests look for lines naming their own device.
#[cfg(test)]
pub(crate) fn captured() -> &'static std::sync::Mutex<Vec<(String, String)>> {
    struct Capture(std::sync::Mutex<Vec<(String, String)>>);
    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, r: &log::Record) {
            let mut lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
            lines.push((r.target().to_string(), r.args().to_string()));
        }
        fn flush(&self) {}
    }
    static CAPTURE: std::sync::OnceLock<&'static Capture> = std::sync::OnceLock::new();
    let capture = CAPTURE.get_or_init(|| {
        let c: &'static Capture = Box::leak(Box::new(Capture(Default::default())));
        if log::set_logger(c).is_ok() {
            log::set_max_level(log::LevelFilter::Trace);
        }
        c
    });
    &capture.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `trace_event!(NAME, ...)` in the sources names an event of TRACE_EVENTS, and
    /// every listed event is emitted somewhere: `-trace help` shows exactly what exists.
    #[test]
    fn trace_events_listed_are_the_ones_emitted() {
        fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).expect("read src") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(std::fs::read_to_string(&path).expect("read source"));
                }
            }
        }
        let mut sources = Vec::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut sources,
        );
        let mut used = std::collections::BTreeSet::new();
        for text in &sources {
            for part in text.split("trace_event!(").skip(1) {
                let name: String = part
                    .trim_start()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                used.insert(name);
            }
        }
        // The macro's own definition and documentation.
        used.remove("");
        used.remove("NAME");
        let listed: std::collections::BTreeSet<String> =
            TRACE_EVENTS.iter().map(|s| s.to_string()).collect();
        assert_eq!(used, listed);
    }
}
