//! Command-line checks of character devices as QEMU 7.2 makes them before anything starts:
//! every `-chardev` is a known driver with an id and what its driver needs, every `-mon`
//! names an existing chardev once, and stdio has one user. Without them a mistake was
//! accepted and silently ignored (a `-mon` on a missing chardev, a second stdio reader that
//! split QMP input with the console).

use crate::cli::{lossy, split_keyval, CliOptions, SerialSpec};

/// A refused command line: the option as given and QEMU's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{option}: {message}")]
pub struct ChardevCheckError {
    pub option: String,
    pub message: String,
}

fn fail(option: String, message: impl Into<String>) -> ChardevCheckError {
    ChardevCheckError {
        option,
        message: message.into(),
    }
}

/// QEMU 7.2's chardev drivers (`-chardev help`).
const QEMU_DRIVERS: &[&str] = &[
    "braille",
    "dbus",
    "file",
    "memory",
    "msmouse",
    "mux",
    "null",
    "parallel",
    "pipe",
    "pty",
    "qemu-vdagent",
    "ringbuf",
    "serial",
    "socket",
    "spiceport",
    "spicevmc",
    "stdio",
    "testdev",
    "udp",
    "vc",
    "wctablet",
];

/// The drivers machina implements (backends.rs and the qmp crate's endpoints).
const MACHINA_DRIVERS: &[&str] = &["file", "null", "pty", "socket", "stdio"];

/// QEMU's `id_wellformed`.
fn id_wellformed(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

fn pairs(spec: &str) -> Vec<(String, String)> {
    split_keyval(spec)
        .into_iter()
        .map(|item| match item.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (item, String::new()),
        })
        .collect()
}

fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Check every `-chardev`, `-mon` and the users of stdio.
pub fn check(opts: &CliOptions) -> Result<(), ChardevCheckError> {
    let mut ids: Vec<String> = Vec::new();
    // The options that read stdio, in QEMU's creation order: monitors' and -chardev's
    // chardevs, then the serial ports, then qtest.
    let mut stdio_users: Vec<String> = Vec::new();
    for spec in &opts.qmp {
        let spec = lossy(spec);
        if spec == "stdio" || spec.starts_with("stdio,") {
            stdio_users.push(format!("-qmp {spec}"));
        }
    }
    for spec in &opts.chardevs {
        let spec = lossy(spec);
        let option = format!("-chardev {spec}");
        let p = pairs(&spec);
        let driver = match p.first() {
            Some((k, v)) if k == "backend" => v.clone(),
            Some((k, v)) if v.is_empty() => k.clone(),
            _ => String::new(),
        };
        let id = get(&p, "id").ok_or_else(|| fail(option.clone(), "chardev: no id specified"))?;
        if !id_wellformed(id) {
            return Err(fail(option, "Parameter 'id' expects an identifier"));
        }
        if !QEMU_DRIVERS.contains(&driver.as_str()) {
            return Err(fail(
                option,
                format!("'{driver}' is not a valid char driver name"),
            ));
        }
        if !MACHINA_DRIVERS.contains(&driver.as_str()) {
            return Err(fail(
                option,
                format!(
                    "chardev backend '{driver}' is not supported by machina (file, null, pty, socket, stdio)"
                ),
            ));
        }
        if driver == "file" && get(&p, "path").is_none() {
            return Err(fail(option, "chardev: file: no filename given"));
        }
        if ids.iter().any(|i| i == id) {
            return Err(fail(option, format!("Duplicate ID '{id}' for chardev")));
        }
        ids.push(id.to_string());
        if driver == "stdio" {
            stdio_users.push(option);
        }
    }
    let mut used: Vec<String> = Vec::new();
    for spec in &opts.monitors {
        let option = format!("-mon {spec}");
        let p = pairs(spec);
        let chardev = get(&p, "chardev")
            .ok_or_else(|| fail(option.clone(), "Parameter 'chardev' is missing"))?;
        // QEMU's order: the mode's value, the chardev, then machina's own refusal of HMP.
        let mode = get(&p, "mode");
        if let Some(other) = mode.filter(|m| !matches!(*m, "control" | "readline")) {
            return Err(fail(
                option,
                format!("Parameter 'mode' does not accept value '{other}'"),
            ));
        }
        if !ids.iter().any(|i| i == chardev) {
            return Err(fail(option, format!("chardev \"{chardev}\" not found")));
        }
        if used.iter().any(|u| u == chardev) {
            return Err(fail(option, format!("Device '{chardev}' is in use")));
        }
        // QEMU's default mode is the human monitor.
        if mode != Some("control") {
            return Err(fail(
                option,
                "machina has no human monitor (HMP): use mode=control for QMP",
            ));
        }
        used.push(chardev.to_string());
    }
    for s in &opts.serial {
        if *s == SerialSpec::Stdio {
            stdio_users.push("-serial stdio".to_string());
        }
    }
    // machina has no display: its default serial port is on the terminal (QEMU's
    // -nographic), unless -nodefaults or -serial say otherwise.
    let default_serial = opts.serial.is_empty() && !opts.nodefaults;
    if opts.qtest.as_deref() == Some("stdio") {
        stdio_users.push("-qtest stdio".to_string());
    }
    // QEMU names the user that came second; the default port is created after the others.
    let second = match (stdio_users.len(), default_serial) {
        (0, _) | (1, false) => None,
        (1, true) => stdio_users.first(),
        _ => stdio_users.get(1),
    };
    if let Some(option) = second {
        return Err(fail(
            option.clone(),
            "cannot use stdio by multiple character devices",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::parse;

    fn check_args(args: &str) -> Result<(), String> {
        let opts = parse(args.split_whitespace()).map_err(|e| e.to_string())?;
        check(&opts).map_err(|e| e.to_string())
    }

    #[test]
    fn qemu_texts() {
        // QEMU 7.2's answers (the default serial on stdio is QEMU's -nographic).
        let table: &[(&str, Option<&str>)] = &[
            ("-nodefaults -chardev bogus,id=c0", Some("-chardev bogus,id=c0: 'bogus' is not a valid char driver name")),
            ("-nodefaults -chardev file,id=c0", Some("-chardev file,id=c0: chardev: file: no filename given")),
            ("-nodefaults -chardev null", Some("-chardev null: chardev: no id specified")),
            ("-nodefaults -chardev null,id=1a", Some("-chardev null,id=1a: Parameter 'id' expects an identifier")),
            ("-nodefaults -chardev null,id=c0 -chardev null,id=c0", Some("-chardev null,id=c0: Duplicate ID 'c0' for chardev")),
            ("-nodefaults -mon chardev=missing,mode=control", Some("-mon chardev=missing,mode=control: chardev \"missing\" not found")),
            ("-nodefaults -mon mode=control", Some("-mon mode=control: Parameter 'chardev' is missing")),
            ("-nodefaults -chardev null,id=c0 -mon chardev=c0,mode=bogus", Some("-mon chardev=c0,mode=bogus: Parameter 'mode' does not accept value 'bogus'")),
            ("-nodefaults -chardev null,id=c0 -mon chardev=c0,mode=control -mon chardev=c0,mode=control", Some("-mon chardev=c0,mode=control: Device 'c0' is in use")),
            ("-nodefaults -chardev null,id=c0 -mon chardev=c0,mode=readline", Some("-mon chardev=c0,mode=readline: machina has no human monitor (HMP): use mode=control for QMP")),
            ("-nodefaults -chardev null,id=c0 -mon chardev=c0", Some("-mon chardev=c0: machina has no human monitor (HMP): use mode=control for QMP")),
            ("-nodefaults -chardev ringbuf,id=c0", Some("-chardev ringbuf,id=c0: chardev backend 'ringbuf' is not supported by machina (file, null, pty, socket, stdio)")),
            ("-qmp stdio", Some("-qmp stdio: cannot use stdio by multiple character devices")),
            ("-nodefaults -qmp stdio -serial stdio", Some("-serial stdio: cannot use stdio by multiple character devices")),
            ("-nodefaults -chardev stdio,id=c0 -chardev stdio,id=c1", Some("-chardev stdio,id=c1: cannot use stdio by multiple character devices")),
            ("-nodefaults -qmp stdio", None),
            ("-serial null -qmp stdio", None),
            ("-nodefaults -chardev null,id=c0 -mon chardev=c0,mode=control", None),
            ("-nodefaults -chardev file,id=c0,path=/tmp/x", None),
            ("-chardev socket,id=m,path=/tmp/s,server=on,wait=off -mon chardev=m,mode=control", None),
        ];
        for (args, want) in table {
            assert_eq!(check_args(args).err().as_deref(), *want, "{args}");
        }
    }
}
