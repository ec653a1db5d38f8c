//! Kernel command line parsing: whitespace-separated `key=value` options.
//! A value may be double-quoted to contain spaces (`machina.echo="a b"`),
//! as with Linux. When a key repeats, the last occurrence wins.

pub struct Cmdline<'a>(&'a [u8]);

impl<'a> Cmdline<'a> {
    pub fn new(raw: &'a [u8]) -> Self {
        Self(raw)
    }

    /// The value of the last `key=value` option, quotes stripped. `key`
    /// alone (no '=') yields an empty value.
    pub fn get(&self, key: &[u8]) -> Option<&'a [u8]> {
        self.options()
            .filter_map(|opt| {
                let (k, v) = match opt.iter().position(|&b| b == b'=') {
                    Some(eq) => (&opt[..eq], &opt[eq + 1..]),
                    None => (opt, &opt[opt.len()..]),
                };
                (k == key).then(|| unquote(v))
            })
            .last()
    }

    /// The value of `key` as an unsigned number (decimal, or hex with a
    /// `0x` prefix); `default` when absent or not a valid number.
    pub fn get_u64(&self, key: &[u8], default: u64) -> u64 {
        self.get(key).and_then(parse_u64).unwrap_or(default)
    }

    /// Splits at whitespace outside double quotes.
    fn options(&self) -> impl Iterator<Item = &'a [u8]> {
        let raw = self.0;
        let mut pos = 0;
        core::iter::from_fn(move || {
            while pos < raw.len() && raw[pos].is_ascii_whitespace() {
                pos += 1;
            }
            if pos == raw.len() {
                return None;
            }
            let start = pos;
            let mut quoted = false;
            while pos < raw.len() && (quoted || !raw[pos].is_ascii_whitespace()) {
                quoted ^= raw[pos] == b'"';
                pos += 1;
            }
            Some(&raw[start..pos])
        })
    }
}

fn unquote(v: &[u8]) -> &[u8] {
    match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    }
}

/// Parses a decimal or `0x`-prefixed hexadecimal number without overflow.
fn parse_u64(v: &[u8]) -> Option<u64> {
    let (digits, radix) = match v {
        [b'0', b'x' | b'X', rest @ ..] => (rest, 16),
        _ => (v, 10),
    };
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        let d = char::from(b).to_digit(radix)?;
        acc.checked_mul(u64::from(radix))?.checked_add(u64::from(d))
    })
}
