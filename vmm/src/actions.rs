//! What the machine does on guest events, as QEMU's system/runstate-action.c and
//! hw/watchdog/watchdog.c:
//! `-action reboot=,shutdown=,panic=,watchdog=`, `-watchdog-action`,
//! `-no-reboot` (reboot=shutdown), `-no-shutdown` (shutdown=pause), and QMP `set-action` /
//! `watchdog-set-action` at run time. The run loop (runner.rs) applies them.

/// A QAPI enum: its values as QEMU spells them.
pub trait ActionEnum: Sized + Copy + PartialEq + 'static {
    const VALUES: &'static [(&'static str, Self)];

    fn parse(s: &str) -> Option<Self> {
        Self::VALUES.iter().find(|(n, _)| *n == s).map(|(_, v)| *v)
    }

    fn as_str(self) -> &'static str {
        Self::VALUES
            .iter()
            .find(|(_, v)| *v == self)
            .map(|(n, _)| *n)
            .unwrap_or("")
    }

    fn names() -> Vec<&'static str> {
        Self::VALUES.iter().map(|(n, _)| *n).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RebootAction {
    #[default]
    Reset,
    Shutdown,
}

impl ActionEnum for RebootAction {
    const VALUES: &'static [(&'static str, Self)] =
        &[("reset", Self::Reset), ("shutdown", Self::Shutdown)];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShutdownAction {
    #[default]
    Poweroff,
    Pause,
}

impl ActionEnum for ShutdownAction {
    const VALUES: &'static [(&'static str, Self)] =
        &[("poweroff", Self::Poweroff), ("pause", Self::Pause)];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PanicAction {
    Pause,
    #[default]
    Shutdown,
    ExitFailure,
    None,
}

impl ActionEnum for PanicAction {
    const VALUES: &'static [(&'static str, Self)] = &[
        ("pause", Self::Pause),
        ("shutdown", Self::Shutdown),
        ("exit-failure", Self::ExitFailure),
        ("none", Self::None),
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WatchdogAction {
    #[default]
    Reset,
    Shutdown,
    Poweroff,
    Pause,
    Debug,
    None,
    InjectNmi,
}

impl ActionEnum for WatchdogAction {
    const VALUES: &'static [(&'static str, Self)] = &[
        ("reset", Self::Reset),
        ("shutdown", Self::Shutdown),
        ("poweroff", Self::Poweroff),
        ("pause", Self::Pause),
        ("debug", Self::Debug),
        ("none", Self::None),
        ("inject-nmi", Self::InjectNmi),
    ];
}

/// The four actions; QEMU's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Actions {
    pub reboot: RebootAction,
    pub shutdown: ShutdownAction,
    pub panic: PanicAction,
    pub watchdog: WatchdogAction,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActionError {
    #[error("-{option} {arg}: Parameter '{key}' does not accept value '{value}'")]
    BadValue {
        option: &'static str,
        arg: String,
        key: String,
        value: String,
    },
    #[error("-action {0}: Invalid parameter '{1}'")]
    UnknownKey(String, String),
}

impl Actions {
    /// One `-action` argument: `key=value` pairs, applied in order.
    pub fn apply_cli(&mut self, arg: &str) -> Result<(), ActionError> {
        for item in arg.split(',').filter(|i| !i.is_empty()) {
            let (key, value) = item.split_once('=').unwrap_or((item, ""));
            let bad = || ActionError::BadValue {
                option: "action",
                arg: arg.to_string(),
                key: key.to_string(),
                value: value.to_string(),
            };
            match key {
                "reboot" => self.reboot = RebootAction::parse(value).ok_or_else(bad)?,
                "shutdown" => self.shutdown = ShutdownAction::parse(value).ok_or_else(bad)?,
                "panic" => self.panic = PanicAction::parse(value).ok_or_else(bad)?,
                "watchdog" => self.watchdog = WatchdogAction::parse(value).ok_or_else(bad)?,
                _ => return Err(ActionError::UnknownKey(arg.to_string(), key.to_string())),
            }
        }
        Ok(())
    }

    /// `-watchdog-action ACTION`.
    pub fn apply_watchdog_cli(&mut self, arg: &str) -> Result<(), ActionError> {
        self.watchdog = WatchdogAction::parse(arg).ok_or_else(|| ActionError::BadValue {
            option: "watchdog-action",
            arg: arg.to_string(),
            key: "watchdog".to_string(),
            value: arg.to_string(),
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_forms_and_qemu_texts() {
        let mut a = Actions::default();
        a.apply_cli("panic=pause,shutdown=pause,reboot=shutdown,watchdog=debug")
            .unwrap();
        assert_eq!(
            a,
            Actions {
                reboot: RebootAction::Shutdown,
                shutdown: ShutdownAction::Pause,
                panic: PanicAction::Pause,
                watchdog: WatchdogAction::Debug,
            }
        );
        assert_eq!(
            a.apply_cli("panic=foo").unwrap_err().to_string(),
            "-action panic=foo: Parameter 'panic' does not accept value 'foo'"
        );
        assert_eq!(
            a.apply_cli("foo=bar").unwrap_err().to_string(),
            "-action foo=bar: Invalid parameter 'foo'"
        );
        a.apply_cli("watchdog=inject-nmi").unwrap();
        assert_eq!(a.watchdog, WatchdogAction::InjectNmi);
        a.apply_watchdog_cli("none").unwrap();
        assert_eq!(a.watchdog.as_str(), "none");
        assert_eq!(
            a.apply_watchdog_cli("foo").unwrap_err().to_string(),
            "-watchdog-action foo: Parameter 'watchdog' does not accept value 'foo'"
        );
    }
}
