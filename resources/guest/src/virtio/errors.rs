//! Errors and small helpers.

use super::*;

/// Why a path failed: printed as `reason=<str>`.
pub(crate) type Reason = &'static str;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    Legacy,
    Modern,
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Path::Legacy => "legacy",
            Path::Modern => "modern",
        })
    }
}

/// Bytes as one `key=value` token: non-graphic bytes become `_`.
pub(crate) struct TokenBytes<'a>(pub(crate) &'a [u8]);

impl fmt::Display for TokenBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            let c = if b.is_ascii_graphic() { b } else { b'_' };
            fmt::Write::write_char(f, char::from(c))?;
        }
        Ok(())
    }
}

pub(crate) struct Mac(pub(crate) [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}
