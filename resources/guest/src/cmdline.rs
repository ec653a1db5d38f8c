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
