//! Where a QMP monitor listens, parsed from QEMU's command-line spellings:
//! `-qmp unix:/p,server=on,wait=off` (also `server,nowait`), `-qmp tcp:H:P,...`,
//! `-qmp stdio`, and `-chardev socket,id=X,path=P,server=on,wait=off` (or
//! `host=,port=`, or libvirt's pre-opened `fd=N`) + `-mon chardev=X,mode=control`.

use crate::error::EndpointError;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

/// A monitor transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QmpEndpoint {
    /// A unix socket; `server: false` connects to `path` instead of listening.
    Unix {
        path: PathBuf,
        server: bool,
        wait: bool,
    },
    /// A TCP socket; an empty `host` listens on all addresses.
    Tcp {
        host: String,
        port: u16,
        server: bool,
        wait: bool,
    },
    /// A socket the parent (libvirt) already opened and passed down.
    Fd { fd: i32, server: bool, wait: bool },
    /// The process's stdin/stdout (no `oob` capability, as in QEMU).
    Stdio,
}

impl QmpEndpoint {
    /// Parses the argument of `-qmp` / `-qmp-pretty` (legacy chardev syntax).
    /// The argument is an OS string: a socket path keeps its bytes.
    pub fn parse_qmp(arg: impl AsRef<OsStr>) -> Result<QmpEndpoint, EndpointError> {
        let raw = split_opts_os(arg.as_ref());
        let opts = lossy_all(&raw);
        let first = opts.first().map(String::as_str).unwrap_or_default();
        let rest = &opts[opts.len().min(1)..];
        let (server, wait) = socket_flags(rest)?;
        if first == "stdio" {
            return Ok(QmpEndpoint::Stdio);
        }
        let first_raw = raw.first().map(|o| o.as_bytes()).unwrap_or_default();
        if let Some(path) = first_raw.strip_prefix(b"unix:") {
            if path.is_empty() {
                return Err(EndpointError::Malformed("unix: needs a path".into()));
            }
            return Ok(QmpEndpoint::Unix {
                path: PathBuf::from(OsStr::from_bytes(path)),
                server,
                wait,
            });
        }
        if let Some(hp) = first.strip_prefix("tcp:") {
            let (host, port) = split_host_port(hp)?;
            return Ok(QmpEndpoint::Tcp {
                host,
                port,
                server,
                wait,
            });
        }
        let backend = first.split(':').next().unwrap_or_default();
        Err(EndpointError::UnsupportedBackend(backend.to_string()))
    }

    /// Whether the transport supports QMP's out-of-band capability.
    pub fn offers_oob(&self) -> bool {
        !matches!(self, QmpEndpoint::Stdio)
    }
}

/// One `-chardev` option: its id, backend kind and, when it can carry QMP, the endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChardevSpec {
    pub id: String,
    pub backend: String,
    /// `None` for backends that are not QMP transports here (pty, file, null, ...).
    pub endpoint: Option<QmpEndpoint>,
}

impl ChardevSpec {
    /// Parses `socket,id=X,path=P,server=on,wait=off`, `stdio,id=X`, ...
    pub fn parse(arg: impl AsRef<OsStr>) -> Result<ChardevSpec, EndpointError> {
        let raw = split_opts_os(arg.as_ref());
        let opts = lossy_all(&raw);
        let backend = opts
            .first()
            .map(|s| s.strip_prefix("backend=").unwrap_or(s).to_string())
            .unwrap_or_default();
        let rest = &opts[opts.len().min(1)..];
        let id = get(rest, "id")
            .ok_or_else(|| EndpointError::Malformed("Parameter 'id' is missing".into()))?
            .to_string();
        let endpoint = match backend.as_str() {
            "stdio" => Some(QmpEndpoint::Stdio),
            "socket" => {
                let (server, wait) = socket_flags(rest)?;
                if let Some(path) = get_os(&raw[raw.len().min(1)..], "path") {
                    Some(QmpEndpoint::Unix {
                        path: PathBuf::from(path),
                        server,
                        wait,
                    })
                } else if let Some(fd) = get(rest, "fd") {
                    let fd = fd
                        .parse()
                        .map_err(|_| EndpointError::Malformed(format!("bad fd '{fd}'")))?;
                    Some(QmpEndpoint::Fd { fd, server, wait })
                } else if let Some(port) = get(rest, "port") {
                    let port = port
                        .parse()
                        .map_err(|_| EndpointError::Malformed(format!("bad port '{port}'")))?;
                    Some(QmpEndpoint::Tcp {
                        host: get(rest, "host").unwrap_or_default().to_string(),
                        port,
                        server,
                        wait,
                    })
                } else {
                    return Err(EndpointError::Malformed(
                        "socket needs path=, host=/port= or fd=".into(),
                    ));
                }
            }
            _ => None,
        };
        Ok(ChardevSpec {
            id,
            backend,
            endpoint,
        })
    }
}

/// The monitor mode of `-mon`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MonMode {
    /// QMP.
    Control,
    /// HMP (the human monitor); not served by this crate.
    Readline,
}

/// One `-mon chardev=X,mode=control[,pretty=on][,id=..]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonSpec {
    pub chardev: String,
    pub mode: MonMode,
    pub pretty: bool,
    pub id: Option<String>,
}

impl MonSpec {
    pub fn parse(arg: &str) -> Result<MonSpec, EndpointError> {
        let opts = split_opts(arg);
        let chardev = get(&opts, "chardev")
            .ok_or_else(|| EndpointError::Malformed("Parameter 'chardev' is missing".into()))?
            .to_string();
        let mode = match get(&opts, "mode") {
            None | Some("readline") => MonMode::Readline,
            Some("control") => MonMode::Control,
            Some(other) => {
                return Err(EndpointError::Invalid(format!(
                    "Parameter 'mode' does not accept value '{other}'"
                )))
            }
        };
        Ok(MonSpec {
            chardev,
            mode,
            pretty: flag(&opts, "pretty")?.unwrap_or(false),
            id: get(&opts, "id").map(str::to_string),
        })
    }
}

/// The QMP endpoints of the `-mon` monitors, in order. Every monitor's chardev must exist
/// (QEMU's `chardev "X" not found`), and only QMP (`mode=control`) is served: a human
/// monitor is refused rather than silently left out.
pub fn resolve_monitors(
    chardevs: &[ChardevSpec],
    mons: &[MonSpec],
) -> Result<Vec<QmpEndpoint>, EndpointError> {
    let mut out = Vec::new();
    for m in mons {
        let cd = chardevs
            .iter()
            .find(|c| c.id == m.chardev)
            .ok_or_else(|| EndpointError::NoSuchChardev(m.chardev.clone()))?;
        if m.mode != MonMode::Control {
            return Err(EndpointError::NoHmp);
        }
        let ep = cd
            .endpoint
            .clone()
            .ok_or_else(|| EndpointError::UnsupportedBackend(cd.backend.clone()))?;
        out.push(ep);
    }
    Ok(out)
}

/// Splits QEMU options at commas; `,,` is an escaped comma.
fn split_opts(s: &str) -> Vec<String> {
    lossy_all(&split_opts_os(OsStr::new(s)))
}

/// `split_opts` on bytes: arguments are OS strings and paths need not be UTF-8. Empty items
/// are kept (`a,,b` is one item `a,b`; `a,` ends with an empty one).
pub fn split_opts_os(s: &OsStr) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = s.as_bytes().iter().copied().peekable();
    while let Some(b) = bytes.next() {
        if b == b',' {
            if bytes.peek() == Some(&b',') {
                bytes.next();
                cur.push(b',');
            } else {
                out.push(OsString::from_vec(std::mem::take(&mut cur)));
            }
        } else {
            cur.push(b);
        }
    }
    out.push(OsString::from_vec(cur));
    out
}

/// Options as text, for keys, flags and numbers.
fn lossy_all(opts: &[OsString]) -> Vec<String> {
    opts.iter()
        .map(|o| o.to_string_lossy().into_owned())
        .collect()
}

/// The last `key=VALUE` with VALUE as given (bytes).
fn get_os<'a>(opts: &'a [OsString], key: &str) -> Option<&'a OsStr> {
    opts.iter().rev().find_map(|o| {
        let bytes = o.as_bytes();
        let eq = bytes.iter().position(|&b| b == b'=')?;
        (&bytes[..eq] == key.as_bytes()).then(|| OsStr::from_bytes(&bytes[eq + 1..]))
    })
}

fn get<'a>(opts: &'a [String], key: &str) -> Option<&'a str> {
    opts.iter().rev().find_map(|o| {
        let (k, v) = o.split_once('=')?;
        (k == key).then_some(v)
    })
}

fn parse_bool(key: &str, v: &str) -> Result<bool, EndpointError> {
    machine::qapi_bool_parse(v).ok_or_else(|| EndpointError::BadBool {
        key: key.to_string(),
    })
}

/// A boolean option: `key=on|off`, bare `key` (on) or legacy `nokey` (off).
fn flag(opts: &[String], key: &str) -> Result<Option<bool>, EndpointError> {
    let mut val = None;
    let negated = format!("no{key}");
    for o in opts {
        match o.split_once('=') {
            Some((k, v)) if k == key => val = Some(parse_bool(key, v)?),
            None if o == key => val = Some(true),
            None if *o == negated => val = Some(false),
            _ => {}
        }
    }
    Ok(val)
}

/// `server` defaults to off; `wait` defaults to on when serving (QEMU's defaults).
fn socket_flags(opts: &[String]) -> Result<(bool, bool), EndpointError> {
    let server = flag(opts, "server")?.unwrap_or(false);
    let wait = flag(opts, "wait")?.unwrap_or(true);
    Ok((server, server && wait))
}

fn split_host_port(hp: &str) -> Result<(String, u16), EndpointError> {
    let (host, port) = if let Some(rest) = hp.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or_else(|| EndpointError::Malformed(format!("bad address '{hp}'")))?;
        (h, p)
    } else {
        hp.rsplit_once(':')
            .ok_or_else(|| EndpointError::Malformed(format!("bad address '{hp}'")))?
    };
    let port = port
        .parse()
        .map_err(|_| EndpointError::Malformed(format!("bad port '{port}'")))?;
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(p: &str, server: bool, wait: bool) -> QmpEndpoint {
        QmpEndpoint::Unix {
            path: PathBuf::from(p),
            server,
            wait,
        }
    }

    #[test]
    fn qmp_spellings() {
        let p = QmpEndpoint::parse_qmp;
        assert_eq!(
            p("unix:/tmp/q.sock,server=on,wait=off"),
            Ok(unix("/tmp/q.sock", true, false))
        );
        assert_eq!(
            p("unix:/tmp/q.sock,server,nowait"),
            Ok(unix("/tmp/q.sock", true, false))
        );
        assert_eq!(
            p("unix:/tmp/q.sock,server"),
            Ok(unix("/tmp/q.sock", true, true))
        );
        assert_eq!(p("unix:/tmp/q.sock"), Ok(unix("/tmp/q.sock", false, false)));
        assert_eq!(
            p("unix:/tmp/a,,b,server=on,wait=off"),
            Ok(unix("/tmp/a,b", true, false))
        );
        assert_eq!(
            p("tcp:127.0.0.1:4444,server=on,wait=off"),
            Ok(QmpEndpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 4444,
                server: true,
                wait: false
            })
        );
        assert_eq!(
            p("tcp:[::1]:5,server,nowait"),
            Ok(QmpEndpoint::Tcp {
                host: "::1".into(),
                port: 5,
                server: true,
                wait: false
            })
        );
        assert_eq!(p("stdio"), Ok(QmpEndpoint::Stdio));
        assert!(p("unix:/x,server=maybe").is_err());
        assert!(p("vc:80Cx24C").is_err());
        assert!(p("tcp:host").is_err());
    }

    #[test]
    fn chardev_and_mon() {
        let cd = ChardevSpec::parse("socket,id=charmonitor,path=/run/m.sock,server=on,wait=off")
            .unwrap();
        assert_eq!(cd.id, "charmonitor");
        assert_eq!(cd.endpoint, Some(unix("/run/m.sock", true, false)));
        let fd = ChardevSpec::parse("socket,id=charmonitor,fd=23,server=on,wait=off").unwrap();
        assert_eq!(
            fd.endpoint,
            Some(QmpEndpoint::Fd {
                fd: 23,
                server: true,
                wait: false
            })
        );
        let pty = ChardevSpec::parse("pty,id=charserial0").unwrap();
        assert_eq!(pty.endpoint, None);
        let mon = MonSpec::parse("chardev=charmonitor,id=monitor,mode=control").unwrap();
        assert_eq!(mon.mode, MonMode::Control);
        let hmp = MonSpec::parse("chardev=charserial0").unwrap();
        assert_eq!(hmp.mode, MonMode::Readline);
        let eps = resolve_monitors(&[cd.clone(), pty.clone()], std::slice::from_ref(&mon)).unwrap();
        assert_eq!(eps, vec![unix("/run/m.sock", true, false)]);
        // No human monitor: refused, not silently dropped.
        assert_eq!(
            resolve_monitors(&[cd.clone(), pty], &[mon.clone(), hmp]),
            Err(EndpointError::NoHmp)
        );
        assert_eq!(
            resolve_monitors(&[], &[mon]).map_err(|e| e.to_string()),
            Err("chardev \"charmonitor\" not found".to_string())
        );
        assert_eq!(
            MonSpec::parse("chardev=m,mode=bogus").map_err(|e| e.to_string()),
            Err("Parameter 'mode' does not accept value 'bogus'".to_string())
        );
    }
}
