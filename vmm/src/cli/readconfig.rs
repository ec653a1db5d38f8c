//! `-readconfig FILE`: QEMU's INI-style configuration file (util/qemu-config.c), each
//! section turned into the command-line option of its group and parsed by the same code
//! (`[device "id"]` + `driver = "e1000"` is `-device e1000,id=id`). Lines are read as
//! QEMU's `sscanf` patterns read them, and errors name `FILE:LINE` as QEMU's do.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::Mutex;

/// Configuration files are a few lines; anything larger is not one (a device, a FIFO).
const MAX_CONFIG_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadConfigError {
    #[error("-readconfig {0}: Could not open '{0}': {1}")]
    Open(String, String),
    #[error("-readconfig {0}: Cannot read config file: {1}")]
    Read(String, String),
    /// `FILE:LINE: MESSAGE`, or the message alone before any key line (QEMU has no
    /// location to give then).
    #[error("{}{message}", location.as_ref().map(|l| format!("{l}: ")).unwrap_or_default())]
    At {
        location: Option<String>,
        message: String,
    },
}

/// One section of the file: its group, its members (later keys replace earlier ones, as
/// in QEMU's QDict) and where errors about it point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub group: String,
    pub members: Vec<(String, OsString)>,
    /// `FILE:LINE` of the last key line read when the section ended.
    pub location: Option<String>,
}

impl Section {
    fn set(&mut self, key: String, value: OsString) {
        match self.members.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.members.push((key, value)),
        }
    }

    fn take(&mut self, key: &str) -> Option<OsString> {
        let at = self.members.iter().position(|(k, _)| k == key)?;
        Some(self.members.remove(at).1)
    }
}

/// A run of at most `max` bytes that are not ASCII whitespace (sscanf's `%Ns`).
fn token(s: &[u8], max: usize) -> (&[u8], &[u8]) {
    let end = s
        .iter()
        .take(max)
        .position(|b| b.is_ascii_whitespace())
        .unwrap_or(s.len().min(max));
    s.split_at(end)
}

fn skip_ws(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &s[n..]
}

/// `[group "id"]` or `[group]` (QEMU's `[%63s "%63[^"]"]` and `[%63[^]]]`).
fn header(line: &[u8]) -> Option<(String, Option<String>)> {
    let rest = line.strip_prefix(b"[")?;
    let (group, after) = token(rest, 63);
    if !group.is_empty() {
        if let Some(quoted) = skip_ws(after).strip_prefix(b"\"") {
            let id: Vec<u8> = quoted
                .iter()
                .take(63)
                .take_while(|b| **b != b'"')
                .copied()
                .collect();
            if !id.is_empty() {
                return Some((String::from_utf8_lossy(group).into(), Some(lossy(&id))));
            }
        }
    }
    let group: Vec<u8> = rest
        .iter()
        .take(63)
        .take_while(|b| **b != b']')
        .copied()
        .collect();
    (!group.is_empty()).then(|| (lossy(&group), None))
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `key = "value"` (QEMU's ` %63s = "%1023[^"]"`, then ` %63s = ""`): None for a parse
/// error. A key whose value does not match sscanf's pattern gets an empty value, as in QEMU.
fn key_value(line: &[u8]) -> Option<(String, OsString)> {
    let (key, rest) = token(skip_ws(line), 63);
    if key.is_empty() {
        return None;
    }
    let rest = skip_ws(rest);
    let value = rest
        .strip_prefix(b"=")
        .map(skip_ws)
        .and_then(|r| r.strip_prefix(b"\""))
        .map(|r| {
            r.iter()
                .take(1023)
                .take_while(|b| **b != b'"')
                .copied()
                .collect::<Vec<u8>>()
        })
        .unwrap_or_default();
    Some((lossy(key), OsString::from_vec(value)))
}

/// Split a configuration file into its sections.
pub fn parse_text(text: &[u8], file: &str) -> Result<Vec<Section>, ReadConfigError> {
    let mut sections: Vec<Section> = Vec::new();
    let mut current: Option<Section> = None;
    let mut location: Option<String> = None;
    for (i, raw) in text.split_inclusive(|b| *b == b'\n').enumerate() {
        if raw == b"\n" || raw.starts_with(b"#") {
            continue;
        }
        let line = raw.strip_suffix(b"\n").unwrap_or(raw);
        if let Some((group, id)) = header(line) {
            if let Some(mut done) = current.take() {
                done.location = location.clone();
                sections.push(done);
            }
            let mut section = Section {
                group,
                members: Vec::new(),
                location: None,
            };
            if let Some(id) = id {
                section.set("id".into(), id.into());
            }
            current = Some(section);
            continue;
        }
        location = Some(format!("{file}:{}", i + 1));
        let at = |message: &str| ReadConfigError::At {
            location: location.clone(),
            message: message.into(),
        };
        let (key, value) = key_value(line).ok_or_else(|| at("parse error"))?;
        current
            .as_mut()
            .ok_or_else(|| at("no group defined"))?
            .set(key, value);
    }
    if let Some(mut done) = current {
        done.location = location;
        sections.push(done);
    }
    Ok(sections)
}

/// The command-line option a group is, and the key its option takes without a name
/// (QEMU's implied_opt_name). Groups machina has no option for are absent.
fn option_of(group: &str) -> Option<(&'static str, Option<&'static str>)> {
    Some(match group {
        "drive" => ("drive", None),
        "chardev" => ("chardev", Some("backend")),
        "device" => ("device", Some("driver")),
        "netdev" => ("netdev", Some("type")),
        "net" => ("net", Some("type")),
        "object" => ("object", Some("qom-type")),
        "memory" => ("m", Some("size")),
        "machine" => ("machine", Some("type")),
        "smp-opts" => ("smp", Some("cpus")),
        "boot-opts" => ("boot", Some("order")),
        "numa" => ("numa", Some("type")),
        "name" => ("name", Some("guest")),
        "rtc" => ("rtc", None),
        "global" => ("global", None),
        "mon" => ("mon", None),
        "msg" => ("msg", None),
        "sandbox" => ("sandbox", Some("enable")),
        "add-fd" => ("add-fd", None),
        "action" => ("action", None),
        "overcommit" => ("overcommit", None),
        "trace" => ("trace", Some("enable")),
        "audiodev" => ("audiodev", Some("driver")),
        "accel" => ("accel", Some("accel")),
        _ => return None,
    })
}

/// `,` doubled, as every QemuOpts/keyval option reads it back.
fn escape(value: &OsStr) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    for &b in value.as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    out
}

/// The option and argument a section stands for (`("device", "e1000,id=nic0")`).
pub fn to_option(section: &Section) -> Result<(&'static str, OsString), ReadConfigError> {
    let at = |message: String| ReadConfigError::At {
        location: section.location.clone(),
        message,
    };
    let (option, implied) = option_of(&section.group)
        .ok_or_else(|| at(format!("There is no option group '{}'", section.group)))?;
    let mut section = section.clone();
    if option == "global" {
        // `driver`, `property`, `value` members: `-global DRIVER.PROPERTY=VALUE`.
        let mut get = |k: &str| {
            section
                .take(k)
                .ok_or_else(|| at(format!("Parameter '{k}' is missing")))
        };
        let (driver, property, value) = (get("driver")?, get("property")?, get("value")?);
        if let Some((k, _)) = section.members.first() {
            return Err(at(format!("Invalid parameter '{k}'")));
        }
        let mut arg = driver.into_vec();
        arg.push(b'.');
        arg.extend(property.as_bytes());
        arg.push(b'=');
        arg.extend(value.as_bytes());
        return Ok((option, OsString::from_vec(arg)));
    }
    let mut items: Vec<Vec<u8>> = Vec::new();
    if let Some(first) = implied.and_then(|k| section.take(k)) {
        items.push(escape(&first));
    }
    for (k, v) in &section.members {
        let mut item = k.as_bytes().to_vec();
        item.push(b'=');
        item.extend(escape(v));
        items.push(item);
    }
    Ok((option, OsString::from_vec(items.join(&b","[..]))))
}

/// Read FILE into its sections.
pub fn read(path: &OsStr) -> Result<Vec<Section>, ReadConfigError> {
    let name = path.to_string_lossy().into_owned();
    let file = std::fs::File::open(path)
        .map_err(|e| ReadConfigError::Open(name.clone(), crate::backends::reason(&e)))?;
    let mut text = Vec::new();
    file.take(MAX_CONFIG_BYTES)
        .read_to_end(&mut text)
        .map_err(|e| ReadConfigError::Read(name.clone(), crate::backends::reason(&e)))?;
    parse_text(&text, &name)
}

/// Options that came from a configuration file: the option as an error would name it
/// (`-device e1000,id=x`) and the file location to name instead.
static ORIGINS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

pub(super) fn record_origin(option_text: String, location: Option<String>) {
    if let Some(location) = location {
        if let Ok(mut origins) = ORIGINS.lock() {
            origins.push((option_text, location));
        }
    }
}

/// Whether an option (as [`locate`] matches it) came from a configuration file: QEMU
/// makes those objects from their sections, outside the command line's option lists.
pub fn from_file(option_text: &str) -> bool {
    ORIGINS
        .lock()
        .is_ok_and(|origins| origins.iter().any(|(option, _)| option == option_text))
}

/// An error that names an option from a configuration file names its `FILE:LINE`
/// instead, as QEMU's do (its QemuOpts remember where they were read).
pub fn locate(message: &str) -> String {
    let Ok(origins) = ORIGINS.lock() else {
        return message.to_string();
    };
    origins
        .iter()
        .rev()
        .find_map(|(option, location)| {
            let rest = message.strip_prefix(option.as_str())?.strip_prefix(": ")?;
            Some(format!("{location}: {rest}"))
        })
        .unwrap_or_else(|| message.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(text: &str) -> Result<Vec<(&'static str, String)>, ReadConfigError> {
        parse_text(text.as_bytes(), "f.cfg")?
            .iter()
            .map(|s| to_option(s).map(|(o, a)| (o, a.to_string_lossy().into_owned())))
            .collect()
    }

    #[test]
    fn sections_become_options() {
        let text =
            "# comment\n[device \"nic0\"]\n  driver = \"e1000\"\n  mac = \"52:54:00:12:34:56\"\n\n\
                    [memory]\nsize = \"200\"\n[object]\nqom-type = \"rng-builtin\"\nid = \"rng0\"\n\
                    [drive \"d\"]\nfile = \"/tmp/a,b\"\n[global]\ndriver = \"ICH9-LPC\"\n\
                    property = \"noreboot\"\nvalue = \"off\"\n[machine]\ntype = \"q35\"\n";
        assert_eq!(
            opt(text).unwrap(),
            vec![
                ("device", "e1000,id=nic0,mac=52:54:00:12:34:56".into()),
                ("m", "200".into()),
                ("object", "rng-builtin,id=rng0".into()),
                ("drive", "id=d,file=/tmp/a,,b".into()),
                ("global", "ICH9-LPC.noreboot=off".into()),
                ("machine", "q35".into()),
            ]
        );
    }

    #[test]
    fn errors_name_file_and_line_as_qemu() {
        let e = |t: &str| opt(t).unwrap_err().to_string();
        assert_eq!(e("size = \"200\"\n"), "f.cfg:1: no group defined");
        assert_eq!(e("[memory]\n \n"), "f.cfg:2: parse error");
        // A key without a quoted value is a key with an empty value (QEMU's sscanf).
        assert_eq!(
            opt("[memory]\nsize = \"1\"\nbogus\n").unwrap(),
            vec![("m", "1,bogus=".into())]
        );
        // The section's location is its last key line, read when the next one starts.
        assert_eq!(
            e("[nosuch]\nsize = \"200\"\n[memory]\n"),
            "f.cfg:2: There is no option group 'nosuch'"
        );
        assert_eq!(e("[spice]\n"), "There is no option group 'spice'");
        assert_eq!(
            e("[global]\ndriver = \"x\"\nvalue = \"1\"\n"),
            "f.cfg:3: Parameter 'property' is missing"
        );
    }

    #[test]
    fn later_keys_replace_earlier_ones_and_ids() {
        assert_eq!(
            opt("[device \"a\"]\ndriver = \"e1000\"\nid = \"b\"\ndriver = \"virtio-net-pci\"\n")
                .unwrap(),
            vec![("device", "virtio-net-pci,id=b".into())]
        );
    }

    #[test]
    fn origins_replace_the_option_in_errors() {
        record_origin("-device zz,id=q".into(), Some("g.cfg:4".into()));
        assert_eq!(
            locate("-device zz,id=q: 'zz' is not a valid device model name"),
            "g.cfg:4: 'zz' is not a valid device model name"
        );
        assert_eq!(locate("-device zzz: other"), "-device zzz: other");
    }
}
