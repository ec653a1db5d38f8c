//! Error types: the QMP error a command returns to its client (`QmpError`), and the
//! errors of the server itself (`ServerError`) and of endpoint parsing (`EndpointError`).

use std::fmt;

/// The `class` member of a QMP error response (`qapi/error.json`, QapiErrorClass).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    GenericError,
    CommandNotFound,
    DeviceNotActive,
    DeviceNotFound,
    KVMMissingCap,
}

impl ErrorClass {
    /// The name as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::DeviceNotActive => "DeviceNotActive",
            ErrorClass::DeviceNotFound => "DeviceNotFound",
            ErrorClass::KVMMissingCap => "KVMMissingCap",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error sent back to a client as `{"error": {"class": ..., "desc": ...}}`.
///
/// The constructors reproduce QEMU's texts verbatim, because management software
/// (libvirt, test suites) matches on some of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{class}: {desc}")]
pub struct QmpError {
    pub class: ErrorClass,
    pub desc: String,
}

impl QmpError {
    pub fn new(class: ErrorClass, desc: impl Into<String>) -> Self {
        QmpError {
            class,
            desc: desc.into(),
        }
    }

    /// `GenericError` with a free text (QEMU's `error_setg`).
    pub fn generic(desc: impl Into<String>) -> Self {
        Self::new(ErrorClass::GenericError, desc)
    }

    pub fn command_not_found_class(desc: impl Into<String>) -> Self {
        Self::new(ErrorClass::CommandNotFound, desc)
    }

    /// `DeviceNotFound`, e.g. qom-get on a path that does not exist.
    pub fn device_not_found(desc: impl Into<String>) -> Self {
        Self::new(ErrorClass::DeviceNotFound, desc)
    }

    /// "The command X has not been found" (CommandNotFound).
    pub fn command_not_found(command: &str) -> Self {
        Self::command_not_found_class(format!("The command {command} has not been found"))
    }

    /// "Parameter 'x' is missing" (QERR_MISSING_PARAMETER).
    pub fn missing_parameter(name: &str) -> Self {
        Self::generic(format!("Parameter '{name}' is missing"))
    }

    /// "Parameter 'x' is unexpected".
    pub fn unexpected_parameter(name: &str) -> Self {
        Self::generic(format!("Parameter '{name}' is unexpected"))
    }

    /// "Invalid parameter type for 'x', expected: string" (QERR_INVALID_PARAMETER_TYPE).
    pub fn invalid_parameter_type(name: &str, expected: &str) -> Self {
        Self::generic(format!(
            "Invalid parameter type for '{name}', expected: {expected}"
        ))
    }

    /// "Parameter 'x' expects y" (QERR_INVALID_PARAMETER_VALUE).
    pub fn invalid_parameter_value(name: &str, expected: &str) -> Self {
        Self::generic(format!("Parameter '{name}' expects {expected}"))
    }

    /// "Parameter 'x' does not accept value 'v'" (an enum value not in the enum).
    pub fn invalid_enum_value(name: &str, value: &str) -> Self {
        Self::generic(format!(
            "Parameter '{name}' does not accept value '{value}'"
        ))
    }

    /// The preconfig gate (`qmp_command_available`, system/qdev-monitor.c).
    pub fn not_permitted_before_init(command: &str) -> Self {
        Self::generic(format!(
            "The command '{command}' is permitted only after machine initialization has completed"
        ))
    }

    /// `x-exit-preconfig` called a second time.
    pub fn only_before_init() -> Self {
        Self::generic("The command is permitted only before machine initialization")
    }
}

/// Errors of the server machinery (binding, accepting), never sent to a client.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot bind QMP socket {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the QMP server has been shut down")]
    ShutDown,
    #[error("file descriptor {0} is not a listening unix or tcp socket")]
    BadFd(i32),
}

/// Errors while parsing `-qmp`, `-chardev` and `-mon` arguments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("unsupported chardev backend '{0}'")]
    UnsupportedBackend(String),
    #[error("chardev: {0}")]
    Malformed(String),
    #[error("Parameter '{key}' expects 'on' or 'off'")]
    BadBool { key: String },
    #[error("chardev \"{0}\" not found")]
    NoSuchChardev(String),
    /// A message in QEMU's words, without a prefix.
    #[error("{0}")]
    Invalid(String),
    #[error("machina has no human monitor (HMP): use mode=control for QMP")]
    NoHmp,
}

/// Registry construction errors (programming errors of the VMM, caught at startup).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("QMP command '{0}' is registered twice")]
    DuplicateCommand(String),
    #[error("QMP event '{0}' is registered twice")]
    DuplicateEvent(String),
}
