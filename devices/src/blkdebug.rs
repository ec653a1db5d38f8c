//! QEMU's `blkdebug` block driver, the part a device model needs: rules that inject errors
//! and delays into requests once an event fired, a state machine (`set-state`), and
//! breakpoints that suspend a request at an event until the monitor resumes it (HMP
//! `qemu-io DRIVE "break EVENT TAG"` / `"resume TAG"`). Only the events machina's drives
//! raise are accepted; a rule naming another is refused rather than never firing.

use std::sync::{Arc, Mutex, MutexGuard};

/// Events machina's drives raise (QEMU's BlkdebugEvent names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// At open.
    None,
    ReadAio,
    WriteAio,
    FlushToOs,
    FlushToDisk,
}

impl Event {
    pub fn parse(name: &str) -> Result<Self, String> {
        Ok(match name {
            "none" => Self::None,
            "read_aio" => Self::ReadAio,
            "write_aio" => Self::WriteAio,
            "flush_to_os" => Self::FlushToOs,
            "flush_to_disk" => Self::FlushToDisk,
            other => {
                return Err(format!(
                    "blkdebug event '{other}' is not raised by machina's drives \
                     (none, read_aio, write_aio, flush_to_os, flush_to_disk)"
                ))
            }
        })
    }
}

/// Request kinds a rule can match (QEMU's BlkdebugIOType).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoType {
    Read = 0,
    Write = 1,
    WriteZeroes = 2,
    Discard = 3,
    Flush = 4,
    BlockStatus = 5,
}

impl IoType {
    fn parse(name: &str) -> Result<Self, String> {
        Ok(match name {
            "read" => Self::Read,
            "write" => Self::Write,
            "write-zeroes" => Self::WriteZeroes,
            "discard" => Self::Discard,
            "flush" => Self::Flush,
            "block-status" => Self::BlockStatus,
            other => {
                return Err(format!(
                    "Parameter 'iotype' does not accept value '{other}'"
                ))
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Inject {
        errno: i32,
        /// Bit per IoType.
        iotypes: u64,
        /// Byte offset the request must cover; None: any.
        offset: Option<u64>,
        once: bool,
        delay_ns: u64,
    },
    SetState(u32),
    Suspend(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    event: Event,
    /// Only in this state (0: any).
    state: u32,
    action: Action,
}

fn number<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("Parameter '{key}' expects a number"))
}

fn boolean(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(format!("Parameter '{key}' expects 'on' or 'off'")),
    }
}

impl Rule {
    /// A rule of `section` (`inject-error` or `set-state`) from its options.
    pub fn from_pairs(section: &str, pairs: &[(String, String)]) -> Result<Self, String> {
        let get = |k: &str| pairs.iter().find(|(p, _)| p == k).map(|(_, v)| v.as_str());
        let allowed: &[&str] = match section {
            "inject-error" => &[
                "event",
                "state",
                "iotype",
                "errno",
                "sector",
                "once",
                "immediately",
                "delay-ns",
            ],
            "set-state" => &["event", "state", "new_state"],
            other => return Err(format!("blkdebug: unknown rule section '{other}'")),
        };
        if let Some((k, _)) = pairs.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            return Err(format!("Invalid parameter '{k}'"));
        }
        let event = Event::parse(get("event").ok_or("Missing event name for rule")?)?;
        let state = get("state").map_or(Ok(0), |v| number("state", v))?;
        let action = if section == "set-state" {
            Action::SetState(get("new_state").map_or(Ok(0), |v| number("new_state", v))?)
        } else {
            let iotypes = match get("iotype") {
                Some(t) => 1u64 << IoType::parse(t)? as u8,
                // QEMU's default: reads, writes, write-zeroes, discards and flushes.
                None => 0b1_1111,
            };
            let sector: i64 = get("sector").map_or(Ok(-1), |v| number("sector", v))?;
            Action::Inject {
                errno: get("errno").map_or(Ok(libc::EIO), |v| number("errno", v))?,
                iotypes,
                offset: u64::try_from(sector).ok().map(|s| s.saturating_mul(512)),
                once: get("once").map_or(Ok(false), |v| boolean("once", v))?,
                delay_ns: get("delay-ns").map_or(Ok(0), |v| number("delay-ns", v))?,
            }
        };
        Ok(Rule {
            event,
            state,
            action,
        })
    }
}

/// Rules of a blkdebug config file: `[inject-error]` / `[set-state]` sections of
/// `key = "value"` lines (QEMU's QemuOpts config format).
pub fn parse_config(text: &str) -> Result<Vec<Rule>, String> {
    let mut rules = Vec::new();
    let mut section: Option<(String, Vec<(String, String)>)> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if let Some((s, pairs)) = section.take() {
                rules.push(Rule::from_pairs(&s, &pairs)?);
            }
            section = Some((name.trim().to_string(), Vec::new()));
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: parse error", n + 1))?;
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        match section.as_mut() {
            Some((_, pairs)) => pairs.push((k.trim().to_string(), v.to_string())),
            None => return Err(format!("line {}: no group defined", n + 1)),
        }
    }
    if let Some((s, pairs)) = section {
        rules.push(Rule::from_pairs(&s, &pairs)?);
    }
    Ok(rules)
}

type Continuation = Box<dyn FnOnce() + Send>;

struct State {
    rules: Vec<Rule>,
    /// Indices into `rules` of the inject rules the last event activated.
    active: Vec<usize>,
    state: u32,
    suspended: Vec<(String, Continuation)>,
}

/// One blkdebug node.
pub struct BlkDebug {
    inner: Mutex<State>,
}

impl std::fmt::Debug for BlkDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlkDebug")
    }
}

/// What an event means for the request that raised it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Go,
    /// A breakpoint: the request waits for `resume TAG`.
    Suspend(String),
}

impl BlkDebug {
    /// A node with `rules`; the `none` event fires at open, as QEMU's blkdebug_open.
    pub fn new(rules: Vec<Rule>) -> Arc<Self> {
        let d = Arc::new(Self {
            inner: Mutex::new(State {
                rules,
                active: Vec::new(),
                state: 1,
                suspended: Vec::new(),
            }),
        });
        let _ = d.event(Event::None);
        d
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Raise `event` (blkdebug_co_debug_event).
    pub fn event(&self, event: Event) -> Outcome {
        let mut s = self.lock();
        let current = s.state;
        let mut new_state = current;
        let mut injects = 0;
        let mut suspend = None;
        for i in 0..s.rules.len() {
            let r = &s.rules[i];
            if r.event != event || (r.state != 0 && r.state != current) {
                continue;
            }
            match &r.action {
                Action::Inject { .. } => {
                    injects += 1;
                    if injects == 1 {
                        s.active.clear();
                    }
                    s.active.insert(0, i);
                }
                Action::SetState(n) => new_state = *n,
                Action::Suspend(tag) => suspend = Some(tag.clone()),
            }
        }
        s.state = new_state;
        match suspend {
            Some(tag) => Outcome::Suspend(tag),
            None => Outcome::Go,
        }
    }

    /// rule_check: the errno an active rule injects into a request of `io` over `bytes`
    /// at byte `offset`, after its delay; `Ok` when none matches.
    pub fn check(&self, io: IoType, offset: u64, bytes: u64) -> Result<(), i32> {
        let (errno, delay) = {
            let mut s = self.lock();
            let found = s.active.iter().position(|&i| match &s.rules[i].action {
                Action::Inject {
                    iotypes,
                    offset: at,
                    ..
                } => {
                    iotypes & (1 << io as u8) != 0
                        && at.is_none_or(|a| bytes != 0 && a >= offset && a < offset + bytes)
                }
                _ => false,
            });
            let Some(pos) = found else {
                return Ok(());
            };
            let index = s.active[pos];
            let Action::Inject {
                errno,
                once,
                delay_ns,
                ..
            } = s.rules[index].action.clone()
            else {
                return Ok(());
            };
            if once {
                s.active.remove(pos);
                // Other indices stay valid: the rule stays in the list, inactive for good.
                s.rules[index].event = Event::None;
                s.rules[index].state = u32::MAX;
            }
            (errno, delay_ns)
        };
        if delay > 0 {
            std::thread::sleep(std::time::Duration::from_nanos(delay));
        }
        if errno == 0 {
            Ok(())
        } else {
            Err(errno)
        }
    }

    /// `break EVENT TAG`.
    pub fn add_breakpoint(&self, event: &str, tag: &str) -> Result<(), String> {
        let event = Event::parse(event)?;
        // Appended: the active list holds indices into the rules.
        self.lock().rules.push(Rule {
            event,
            state: 0,
            action: Action::Suspend(tag.to_string()),
        });
        Ok(())
    }

    /// `remove_break TAG`.
    pub fn remove_breakpoint(&self, tag: &str) -> Result<(), String> {
        let mut s = self.lock();
        let before = s.rules.len();
        let keep: Vec<bool> = s
            .rules
            .iter()
            .map(|r| !matches!(&r.action, Action::Suspend(t) if t == tag))
            .collect();
        if keep.iter().all(|&k| k) {
            return Err(format!(
                "Could not remove breakpoint {tag}: No such file or directory"
            ));
        }
        // Re-index the active list over the kept rules.
        let mut map = Vec::with_capacity(before);
        let mut n = 0;
        for &k in &keep {
            map.push(if k { Some(n) } else { None });
            n += usize::from(k);
        }
        let rules = std::mem::take(&mut s.rules);
        s.rules = rules
            .into_iter()
            .zip(&keep)
            .filter(|(_, &k)| k)
            .map(|(r, _)| r)
            .collect();
        s.active = s.active.iter().filter_map(|&i| map[i]).collect();
        Ok(())
    }

    /// A request suspended at breakpoint `tag` continues with `cont` when resumed.
    pub fn suspend(&self, tag: String, cont: Continuation) {
        self.lock().suspended.push((tag, cont));
    }

    /// `resume TAG`: the first request suspended there continues (on this thread).
    pub fn resume(&self, tag: &str) -> Result<(), String> {
        let cont = {
            let mut s = self.lock();
            let Some(i) = s.suspended.iter().position(|(t, _)| t == tag) else {
                return Err(format!("Could not resume {tag}: No such file or directory"));
            };
            s.suspended.remove(i).1
        };
        cont();
        Ok(())
    }

    /// Whether a request waits at `tag` (`wait_break`).
    pub fn is_suspended(&self, tag: &str) -> bool {
        self.lock().suspended.iter().any(|(t, _)| t == tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_injects_once_then_state_moves_on() {
        let rules = parse_config(
            "[inject-error]\nevent = \"flush_to_disk\"\nerrno = \"5\"\nstate = \"1\"\n\
             immediately = \"off\"\nonce = \"on\"\n[set-state]\nevent = \"flush_to_disk\"\n\
             new_state = \"2\"\n",
        )
        .unwrap();
        let d = BlkDebug::new(rules);
        assert_eq!(d.check(IoType::Flush, 0, 0), Ok(()));
        assert_eq!(d.event(Event::FlushToDisk), Outcome::Go);
        assert_eq!(d.check(IoType::Flush, 0, 0), Err(5));
        assert_eq!(d.check(IoType::Flush, 0, 0), Ok(()));
        // State 2 now: the inject rule (state 1) no longer activates.
        d.event(Event::FlushToDisk);
        assert_eq!(d.check(IoType::Flush, 0, 0), Ok(()));
        assert!(parse_config("[inject-error]\nevent = \"cluster_alloc\"\n").is_err());
        assert!(parse_config("event = \"none\"\n").is_err());
    }

    #[test]
    fn breakpoints_suspend_and_resume() {
        let d = BlkDebug::new(Vec::new());
        d.add_breakpoint("flush_to_os", "A").unwrap();
        assert_eq!(d.event(Event::FlushToOs), Outcome::Suspend("A".into()));
        let hit = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let h = hit.clone();
        d.suspend(
            "A".into(),
            Box::new(move || h.store(true, std::sync::atomic::Ordering::SeqCst)),
        );
        assert!(d.is_suspended("A"));
        assert!(d.resume("B").is_err());
        d.resume("A").unwrap();
        assert!(hit.load(std::sync::atomic::Ordering::SeqCst));
        d.remove_breakpoint("A").unwrap();
        assert_eq!(d.event(Event::FlushToOs), Outcome::Go);
    }

    #[test]
    fn discard_rule_from_options() {
        let pairs: Vec<(String, String)> = [
            ("event", "none"),
            ("iotype", "discard"),
            ("errno", "0"),
            ("delay-ns", "1000"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let d = BlkDebug::new(vec![Rule::from_pairs("inject-error", &pairs).unwrap()]);
        assert_eq!(d.check(IoType::Discard, 0, 512), Ok(()));
        let eio: Vec<(String, String)> = vec![
            ("event".into(), "none".into()),
            ("iotype".into(), "read".into()),
            ("sector".into(), "4".into()),
        ];
        let d = BlkDebug::new(vec![Rule::from_pairs("inject-error", &eio).unwrap()]);
        assert_eq!(d.check(IoType::Read, 0, 512), Ok(()));
        assert_eq!(d.check(IoType::Read, 2048, 512), Err(libc::EIO));
        assert_eq!(d.check(IoType::Write, 2048, 512), Ok(()));
    }
}
