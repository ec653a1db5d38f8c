//! A streaming parser for QEMU's JSON dialect (`qobject/json-lexer.c`,
//! `json-streamer.c`, `json-parser.c`).
//!
//! Bytes arrive in arbitrary chunks; a message is complete when its braces and
//! brackets balance, so several messages may come in one read and one message may
//! span many reads. The dialect adds single-quoted strings (and the `\'` escape)
//! to RFC 8259. A lexical error (any control character other than `\t`, `\r`,
//! `\n`, an invalid byte, a stray character) discards the partial message, is
//! reported once, and puts the lexer in recovery until a structural character
//! or a control character: clients rely on this to reset the parser.

use serde_json::{Map, Number, Value};

/// Limits from json-streamer.c: they bound what one message can make us allocate.
const MAX_TOKEN_SIZE: usize = 64 << 20;
const MAX_TOKEN_COUNT: usize = 2 << 20;
const MAX_NESTING: i64 = 1 << 10;

/// A parse failure; `0` is the complete `desc` ("JSON parse error, ...").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl ParseError {
    fn parse(msg: impl AsRef<str>) -> Self {
        ParseError(format!("JSON parse error, {}", msg.as_ref()))
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    LCurly,
    RCurly,
    LSquare,
    RSquare,
    Comma,
    Colon,
    /// Raw bytes of a string literal, quotes included; decoded by the parser.
    Str(Vec<u8>),
    Int(String),
    Float(String),
    Keyword(String),
}

impl Token {
    fn size(&self) -> usize {
        match self {
            Token::Str(s) => s.len(),
            Token::Int(s) | Token::Float(s) | Token::Keyword(s) => s.len(),
            _ => 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Esc {
    None,
    Backslash,
    Hex(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    Sign,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LexState {
    Start,
    Str { quote: u8, esc: Esc },
    Num(Num),
    Keyword,
    Recovery,
}

enum LexEvent {
    Token(Token),
    Error(Vec<u8>),
}

struct Lexer {
    state: LexState,
    buf: Vec<u8>,
}

impl Lexer {
    fn new() -> Self {
        Lexer {
            state: LexState::Start,
            buf: Vec::new(),
        }
    }

    /// Feeds one byte; `emit` receives completed tokens and lexical errors.
    fn feed(&mut self, b: u8, emit: &mut dyn FnMut(LexEvent)) {
        // A byte may be looked at twice: once to end the current token, once to start the next.
        loop {
            match self.step(b, emit) {
                Step::Consumed => break,
                Step::Again => continue,
            }
        }
        if self.buf.len() > MAX_TOKEN_SIZE {
            self.buf.clear();
            self.state = LexState::Recovery;
            emit(LexEvent::Error(b"<token too large>".to_vec()));
        }
    }

    fn error(&mut self, emit: &mut dyn FnMut(LexEvent)) {
        let tok = std::mem::take(&mut self.buf);
        self.state = LexState::Recovery;
        emit(LexEvent::Error(tok));
    }

    fn finish(&mut self, tok: Token, emit: &mut dyn FnMut(LexEvent)) {
        self.buf.clear();
        self.state = LexState::Start;
        emit(LexEvent::Token(tok));
    }

    fn buf_string(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    fn step(&mut self, b: u8, emit: &mut dyn FnMut(LexEvent)) -> Step {
        match self.state {
            LexState::Start => {
                match b {
                    b' ' | b'\t' | b'\r' | b'\n' => {}
                    b'{' => emit(LexEvent::Token(Token::LCurly)),
                    b'}' => emit(LexEvent::Token(Token::RCurly)),
                    b'[' => emit(LexEvent::Token(Token::LSquare)),
                    b']' => emit(LexEvent::Token(Token::RSquare)),
                    b',' => emit(LexEvent::Token(Token::Comma)),
                    b':' => emit(LexEvent::Token(Token::Colon)),
                    b'"' | b'\'' => {
                        self.buf.push(b);
                        self.state = LexState::Str {
                            quote: b,
                            esc: Esc::None,
                        };
                    }
                    b'0' => self.start_num(b, Num::Zero),
                    b'1'..=b'9' => self.start_num(b, Num::Int),
                    b'-' => self.start_num(b, Num::Sign),
                    b'a'..=b'z' => {
                        self.buf.push(b);
                        self.state = LexState::Keyword;
                    }
                    _ => {
                        self.buf.push(b);
                        self.error(emit);
                    }
                }
                Step::Consumed
            }
            LexState::Str { quote, esc } => {
                match esc {
                    Esc::None => {
                        if b == quote {
                            self.buf.push(b);
                            let tok = Token::Str(std::mem::take(&mut self.buf));
                            self.finish(tok, emit);
                        } else if b == b'\\' {
                            self.buf.push(b);
                            self.state = LexState::Str {
                                quote,
                                esc: Esc::Backslash,
                            };
                        } else if b < 0x20 || b == 0xC0 || b == 0xC1 || b >= 0xF5 {
                            // Control characters and bytes that never occur in UTF-8.
                            self.buf.push(b);
                            self.error(emit);
                        } else {
                            self.buf.push(b);
                        }
                    }
                    Esc::Backslash => {
                        self.buf.push(b);
                        match b {
                            b'b' | b'f' | b'n' | b'r' | b't' | b'/' | b'\\' | b'\'' | b'"' => {
                                self.state = LexState::Str {
                                    quote,
                                    esc: Esc::None,
                                }
                            }
                            b'u' => {
                                self.state = LexState::Str {
                                    quote,
                                    esc: Esc::Hex(0),
                                }
                            }
                            _ => self.error(emit),
                        }
                    }
                    Esc::Hex(n) => {
                        self.buf.push(b);
                        if b.is_ascii_hexdigit() {
                            let esc = if n == 3 { Esc::None } else { Esc::Hex(n + 1) };
                            self.state = LexState::Str { quote, esc };
                        } else {
                            self.error(emit);
                        }
                    }
                }
                Step::Consumed
            }
            LexState::Num(num) => self.step_num(num, b, emit),
            LexState::Keyword => {
                if b.is_ascii_lowercase() {
                    self.buf.push(b);
                    Step::Consumed
                } else {
                    let tok = Token::Keyword(self.buf_string());
                    self.finish(tok, emit);
                    Step::Again
                }
            }
            LexState::Recovery => {
                // Resynchronise on structural characters, control characters other
                // than tab, and bytes impossible in UTF-8 (the documented reset).
                let resync =
                    matches!(b, b'[' | b']' | b'{' | b'}') || (b < 0x20 && b != b'\t') || b >= 0xFE;
                if resync {
                    self.state = LexState::Start;
                    Step::Again
                } else {
                    Step::Consumed
                }
            }
        }
    }

    fn start_num(&mut self, b: u8, num: Num) {
        self.buf.push(b);
        self.state = LexState::Num(num);
    }

    fn step_num(&mut self, num: Num, b: u8, emit: &mut dyn FnMut(LexEvent)) -> Step {
        let next = match (num, b) {
            (Num::Sign, b'0') => Some(Num::Zero),
            (Num::Sign, b'1'..=b'9') => Some(Num::Int),
            (Num::Zero, b'.') | (Num::Int, b'.') => Some(Num::Dot),
            (Num::Zero, b'0'..=b'9') => {
                // A leading zero followed by a digit is malformed, as in QEMU.
                self.buf.push(b);
                self.error(emit);
                return Step::Consumed;
            }
            (Num::Int, b'0'..=b'9') => Some(Num::Int),
            (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => Some(Num::Exp),
            (Num::Dot | Num::Frac, b'0'..=b'9') => Some(Num::Frac),
            (Num::Exp, b'+' | b'-') => Some(Num::ExpSign),
            (Num::Exp | Num::ExpSign | Num::ExpDigits, b'0'..=b'9') => Some(Num::ExpDigits),
            _ => None,
        };
        if let Some(n) = next {
            self.buf.push(b);
            self.state = LexState::Num(n);
            return Step::Consumed;
        }
        // The byte ends the number: emit it if complete, else it is an error; the
        // byte is then looked at again (lookahead).
        match num {
            Num::Zero | Num::Int => {
                let tok = Token::Int(self.buf_string());
                self.finish(tok, emit);
            }
            Num::Frac | Num::ExpDigits => {
                let tok = Token::Float(self.buf_string());
                self.finish(tok, emit);
            }
            Num::Sign | Num::Dot | Num::Exp | Num::ExpSign => self.error(emit),
        }
        Step::Again
    }
}

enum Step {
    Consumed,
    Again,
}

/// Collects tokens until braces and brackets balance, then parses the message.
struct Streamer {
    tokens: Vec<Token>,
    brace: i64,
    bracket: i64,
    size: usize,
}

impl Streamer {
    fn new() -> Self {
        Streamer {
            tokens: Vec::new(),
            brace: 0,
            bracket: 0,
            size: 0,
        }
    }

    fn reset(&mut self) {
        self.tokens.clear();
        self.brace = 0;
        self.bracket = 0;
        self.size = 0;
    }

    fn event(&mut self, ev: LexEvent, out: &mut Vec<Result<Value, ParseError>>) {
        let tok = match ev {
            LexEvent::Error(raw) => {
                self.reset();
                out.push(Err(ParseError::parse(format!(
                    "stray '{}'",
                    String::from_utf8_lossy(&raw)
                ))));
                return;
            }
            LexEvent::Token(t) => t,
        };
        match tok {
            Token::LCurly => self.brace += 1,
            Token::RCurly => self.brace -= 1,
            Token::LSquare => self.bracket += 1,
            Token::RSquare => self.bracket -= 1,
            _ => {}
        }
        let limit = if self.size + tok.size() + 1 > MAX_TOKEN_SIZE {
            Some("JSON token size limit exceeded")
        } else if self.tokens.len() + 1 > MAX_TOKEN_COUNT {
            Some("JSON token count limit exceeded")
        } else if self.brace + self.bracket > MAX_NESTING {
            Some("JSON nesting depth limit exceeded")
        } else {
            None
        };
        if let Some(msg) = limit {
            self.reset();
            out.push(Err(ParseError(msg.to_string())));
            return;
        }
        self.size += tok.size();
        self.tokens.push(tok);
        if (self.brace > 0 || self.bracket > 0) && self.brace >= 0 && self.bracket >= 0 {
            return;
        }
        let tokens = std::mem::take(&mut self.tokens);
        self.reset();
        out.push(parse_tokens(&tokens));
    }
}

/// The incremental parser: feed it bytes, collect complete messages.
pub struct JsonStreamParser {
    lexer: Lexer,
    streamer: Streamer,
}

impl Default for JsonStreamParser {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonStreamParser {
    pub fn new() -> Self {
        JsonStreamParser {
            lexer: Lexer::new(),
            streamer: Streamer::new(),
        }
    }

    /// Feeds `data`; every message (or error) completed by it is appended to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<Result<Value, ParseError>>) {
        let streamer = &mut self.streamer;
        let mut emit = |ev: LexEvent| streamer.event(ev, out);
        for &b in data {
            self.lexer.feed(b, &mut emit);
        }
    }

    /// Convenience: feed and return what completed.
    pub fn feed_vec(&mut self, data: &[u8]) -> Vec<Result<Value, ParseError>> {
        let mut out = Vec::new();
        self.feed(data, &mut out);
        out
    }
}

/// Parses one complete text (tests, command-line JSON): exactly one value expected.
pub fn parse_one(text: &str) -> Result<Value, ParseError> {
    let mut p = JsonStreamParser::new();
    let mut out = p.feed_vec(text.as_bytes());
    // A trailing space flushes a pending top-level number or keyword.
    out.extend(p.feed_vec(b" "));
    match out.len() {
        1 => out.remove(0),
        0 => Err(ParseError::parse("premature end of input")),
        _ => Err(ParseError::parse("expecting end of input")),
    }
}

struct TokenParser<'a> {
    tokens: &'a [Token],
    pos: usize,
}

fn parse_tokens(tokens: &[Token]) -> Result<Value, ParseError> {
    let mut p = TokenParser { tokens, pos: 0 };
    p.value()
}

impl TokenParser<'_> {
    fn next(&mut self) -> Result<&Token, ParseError> {
        let t = self
            .tokens
            .get(self.pos)
            .ok_or_else(|| ParseError::parse("premature end of input"))?;
        self.pos += 1;
        Ok(t)
    }

    fn value(&mut self) -> Result<Value, ParseError> {
        match self.next()?.clone() {
            Token::LCurly => self.object(),
            Token::LSquare => self.array(),
            Token::Str(raw) => Ok(Value::String(decode_string(&raw)?)),
            Token::Int(s) => Ok(Value::Number(int_number(&s))),
            Token::Float(s) => Ok(Value::Number(float_number(&s))),
            Token::Keyword(k) => match k.as_str() {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                "null" => Ok(Value::Null),
                _ => Err(ParseError::parse(format!("invalid keyword '{k}'"))),
            },
            _ => Err(ParseError::parse("expecting value")),
        }
    }

    fn object(&mut self) -> Result<Value, ParseError> {
        let mut map = Map::new();
        if self.tokens.get(self.pos) == Some(&Token::RCurly) {
            self.pos += 1;
            return Ok(Value::Object(map));
        }
        loop {
            let key = match self.next()? {
                Token::Str(raw) => decode_string(raw)?,
                _ => return Err(ParseError::parse("expecting key")),
            };
            if self.next()? != &Token::Colon {
                return Err(ParseError::parse("expecting ':'"));
            }
            let v = self.value()?;
            if map.contains_key(&key) {
                return Err(ParseError::parse("duplicate key"));
            }
            map.insert(key, v);
            match self.next()? {
                Token::Comma => continue,
                Token::RCurly => return Ok(Value::Object(map)),
                _ => return Err(ParseError::parse("expected ',' or '}'")),
            }
        }
    }

    fn array(&mut self) -> Result<Value, ParseError> {
        let mut list = Vec::new();
        if self.tokens.get(self.pos) == Some(&Token::RSquare) {
            self.pos += 1;
            return Ok(Value::Array(list));
        }
        loop {
            list.push(self.value()?);
            match self.next()? {
                Token::Comma => continue,
                Token::RSquare => return Ok(Value::Array(list)),
                _ => return Err(ParseError::parse("expected ',' or ']'")),
            }
        }
    }
}

/// Integers become i64, else u64, else a double, like QEMU's QNum.
fn int_number(s: &str) -> Number {
    if let Ok(v) = s.parse::<i64>() {
        return Number::from(v);
    }
    if let Ok(v) = s.parse::<u64>() {
        return Number::from(v);
    }
    float_number(s)
}

fn float_number(s: &str) -> Number {
    let v = s.parse::<f64>().unwrap_or(0.0);
    // QEMU would keep an infinity; JSON values here cannot hold one, so saturate.
    let v = if v.is_finite() {
        v
    } else if v > 0.0 {
        f64::MAX
    } else {
        f64::MIN
    };
    Number::from_f64(v).unwrap_or_else(|| Number::from(0))
}

/// Unicode scalar values QEMU accepts (`is_valid_codepoint`, util/unicode.c).
fn valid_codepoint(cp: u32) -> bool {
    !(cp > 0x10FFFF
        || (cp & 0xFFFF_F800) == 0xD800
        || (0xFDD0..=0xFDEF).contains(&cp)
        || (cp & 0xFFFE) == 0xFFFE)
}

fn hex4(raw: &[u8], at: usize) -> Option<u32> {
    let digits = raw.get(at..at + 4)?;
    let s = std::str::from_utf8(digits).ok()?;
    u32::from_str_radix(s, 16).ok()
}

fn decode_string(raw: &[u8]) -> Result<String, ParseError> {
    // raw = quote, body, quote (the lexer guarantees both quotes).
    let body = raw.get(1..raw.len().saturating_sub(1)).unwrap_or(&[]);
    let mut out = String::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        if body[i] == b'\\' {
            let beg = i;
            let c = body.get(i + 1).copied().unwrap_or(0);
            i += 2;
            match c {
                b'"' => out.push('"'),
                b'\'' => out.push('\''),
                b'\\' => out.push('\\'),
                b'/' => out.push('/'),
                b'b' => out.push('\u{8}'),
                b'f' => out.push('\u{c}'),
                b'n' => out.push('\n'),
                b'r' => out.push('\r'),
                b't' => out.push('\t'),
                b'u' => {
                    let mut cp = hex4(body, i);
                    i += 4;
                    if let Some(lead) = cp {
                        if (0xD800..=0xDBFF).contains(&lead)
                            && body.get(i) == Some(&b'\\')
                            && body.get(i + 1) == Some(&b'u')
                        {
                            cp = match hex4(body, i + 2) {
                                Some(t) if (0xDC00..=0xDFFF).contains(&t) => {
                                    i += 6;
                                    Some(0x10000 + ((lead & 0x3FF) << 10) + (t & 0x3FF))
                                }
                                _ => None,
                            };
                        }
                    }
                    match cp.filter(|&c| valid_codepoint(c)).and_then(char::from_u32) {
                        Some(ch) => out.push(ch),
                        None => {
                            let end = i.min(body.len());
                            return Err(ParseError::parse(format!(
                                "{} is not a valid Unicode character",
                                String::from_utf8_lossy(&body[beg..end])
                            )));
                        }
                    }
                }
                _ => return Err(ParseError::parse("invalid escape sequence in string")),
            }
        } else {
            let start = i;
            while i < body.len() && body[i] != b'\\' {
                i += 1;
            }
            let chunk = std::str::from_utf8(&body[start..i])
                .map_err(|_| ParseError::parse("invalid UTF-8 sequence in string"))?;
            if chunk.chars().any(|c| !valid_codepoint(c as u32)) {
                return Err(ParseError::parse("invalid UTF-8 sequence in string"));
            }
            out.push_str(chunk);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn all(input: &[u8]) -> Vec<Result<Value, ParseError>> {
        JsonStreamParser::new().feed_vec(input)
    }

    #[test]
    fn objects_split_and_joined() {
        let mut p = JsonStreamParser::new();
        assert!(p.feed_vec(b"{\"exe").is_empty());
        assert!(p.feed_vec(b"cute\": \"a\"").is_empty());
        let out = p.feed_vec(b"}{'b': [1, -2.5e3, true, null]}\r\n");
        assert_eq!(
            out,
            vec![
                Ok(json!({"execute": "a"})),
                Ok(json!({"b": [1, -2500.0, true, null]}))
            ]
        );
    }

    #[test]
    fn single_quotes_and_escapes() {
        let out = all(b"{'a': 'it\\'s \"x\"', \"u\": \"\\u00e9\\ud83d\\ude00\"}");
        assert_eq!(out, vec![Ok(json!({"a": "it's \"x\"", "u": "é😀"}))]);
    }

    #[test]
    fn integers_are_qnum_like() {
        let out = all(b"[9223372036854775807, 18446744073709551615, 18446744073709551616, 1.0]");
        let v = out[0].clone().unwrap();
        assert!(v[0].is_i64());
        assert!(v[1].is_u64() && !v[1].is_i64());
        assert!(v[2].is_f64());
        assert!(v[3].is_f64());
    }

    #[test]
    fn errors_have_qemu_texts() {
        let err = |s: &[u8]| match all(s).remove(0) {
            Err(ParseError(d)) => d,
            Ok(v) => panic!("parsed {v}"),
        };
        assert_eq!(err(b"}"), "JSON parse error, expecting value");
        assert_eq!(err(b"{1: 2}"), "JSON parse error, expecting key");
        assert_eq!(err(b"{'a' 2}"), "JSON parse error, expecting ':'");
        assert_eq!(
            err(b"{'a': 1 'b'}"),
            "JSON parse error, expected ',' or '}'"
        );
        assert_eq!(err(b"[1 2]"), "JSON parse error, expected ',' or ']'");
        assert_eq!(err(b"{'a':1,'a':2}"), "JSON parse error, duplicate key");
        assert_eq!(err(b"[nul]"), "JSON parse error, invalid keyword 'nul'");
        assert_eq!(err(b"@"), "JSON parse error, stray '@'");
        assert_eq!(
            err(b"['\\ud800']"),
            "JSON parse error, \\ud800 is not a valid Unicode character"
        );
        assert_eq!(err(b"['\\q']"), "JSON parse error, stray ''\\q'");
    }

    #[test]
    fn control_character_resets() {
        let mut p = JsonStreamParser::new();
        assert!(p.feed_vec(b"{\"execute\": ").is_empty());
        let out = p.feed_vec(b"\x01");
        assert_eq!(out.len(), 1);
        assert!(out[0].is_err());
        let out = p.feed_vec(b"{'execute': 'x'}");
        assert_eq!(out, vec![Ok(json!({"execute": "x"}))]);
    }

    #[test]
    fn recovery_skips_to_structural_character() {
        let out = all(b"@garbage here {'a': 1}");
        assert_eq!(out.len(), 2);
        assert!(out[0].is_err());
        assert_eq!(out[1], Ok(json!({"a": 1})));
    }

    #[test]
    fn top_level_scalars_are_messages() {
        let out = all(b"\"abc\" 12 ");
        assert_eq!(out, vec![Ok(json!("abc")), Ok(json!(12))]);
    }

    #[test]
    fn nesting_limit() {
        let deep = vec![b'['; 1100];
        let out = all(&deep);
        assert_eq!(
            out,
            vec![Err(ParseError("JSON nesting depth limit exceeded".into()))]
        );
    }

    #[test]
    fn parse_one_works() {
        assert_eq!(parse_one("{'a': 1}"), Ok(json!({"a": 1})));
        assert_eq!(parse_one("5"), Ok(json!(5)));
        assert!(parse_one("{").is_err());
    }
}
