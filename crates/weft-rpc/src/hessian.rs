//! Hessian 2.0 serialization, as far as a router needs it: a skipper that walks past any value
//! (so fields after the arguments, such as Dubbo's attachments, can be found without decoding the
//! arguments), a decoder for the few scalar types routing compares (strings, ints, longs, booleans,
//! null), a walker over maps of those, and encoders for the values a proxy writes itself.
//!
//! Nothing here allocates for a single-chunk string: [`Value::Str`] borrows the input. Nesting is
//! bounded ([`MAX_DEPTH`]) and every length is checked against the input, so arbitrary bytes give an
//! error, never a panic or unbounded work.

use std::borrow::Cow;
use std::fmt;

/// Containers nested deeper than this are refused.
pub const MAX_DEPTH: u32 = 64;
/// Class definitions remembered per body (object instances refer to them by index).
const MAX_CLASS_DEFS: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HessianError {
    /// The input ended inside a value.
    Truncated,
    /// A byte that starts no value (or a reserved code).
    BadCode(u8),
    /// Nesting beyond [`MAX_DEPTH`].
    TooDeep,
    /// An object instance names a class definition that was not given.
    UnknownClass,
    /// A string chunk is not valid (modified) UTF-8.
    BadString,
    /// A length or count out of range.
    BadLength,
}

impl fmt::Display for HessianError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HessianError::Truncated => f.write_str("hessian2 value truncated"),
            HessianError::BadCode(c) => write!(f, "hessian2: unexpected code 0x{c:02x}"),
            HessianError::TooDeep => f.write_str("hessian2: nesting too deep"),
            HessianError::UnknownClass => f.write_str("hessian2: object of an undefined class"),
            HessianError::BadString => f.write_str("hessian2: malformed string"),
            HessianError::BadLength => f.write_str("hessian2: bad length"),
        }
    }
}

impl std::error::Error for HessianError {}

type R<T> = Result<T, HessianError>;

/// A decoded scalar value. Strings borrow the input when they are one chunk.
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Str(Cow<'a, str>),
    /// Anything else (lists, maps, objects, binary, doubles, dates): skipped, not decoded.
    Other,
}

impl Value<'_> {
    /// Compares with a rule's textual value: strings as they are, integers in decimal, booleans as
    /// `true`/`false`, null as `null`.
    pub fn matches_text(&self, want: &str) -> bool {
        match self {
            Value::Str(s) => s == want,
            Value::Int(n) => want.parse::<i64>().is_ok_and(|w| w == *n),
            Value::Bool(b) => want == if *b { "true" } else { "false" },
            Value::Null => want == "null",
            Value::Other => false,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// A cursor over a hessian2 byte stream. Remembers class definitions (for object instances).
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Field counts of the class definitions seen so far.
    classes: Vec<u32>,
    /// The body is in the Hessian 2.0 draft that hessian 3.x libraries write (`O` definitions,
    /// `o` instances, `V`/`M` with `t` types ended by `z`), seen by [`Reader::object_field`].
    draft: bool,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader {
            buf,
            pos: 0,
            classes: Vec::new(),
            draft: false,
        }
    }

    /// A reader starting at `pos` of `buf` (offsets it reports are into `buf`).
    pub fn at(buf: &'a [u8], pos: usize) -> Reader<'a> {
        Reader {
            buf,
            pos: pos.min(buf.len()),
            classes: Vec::new(),
            draft: false,
        }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub fn peek(&self) -> R<u8> {
        self.buf.get(self.pos).copied().ok_or(HessianError::Truncated)
    }

    fn byte(&mut self) -> R<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(HessianError::BadLength)?;
        let s = self.buf.get(self.pos..end).ok_or(HessianError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn be(&mut self, n: usize) -> R<u64> {
        Ok(self.take(n)?.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b)))
    }

    /// Skips one value of any type.
    pub fn skip(&mut self) -> R<()> {
        // An `O` before any class definition cannot be a final-encoding instance (it would name a
        // definition not given): it is a draft definition.
        if self.draft || (self.classes.is_empty() && self.peek()? == b'O') {
            self.draft = true;
            return self.skip_draft(0);
        }
        self.skip_depth(0)
    }

    /// Skips one value of the Hessian 2.0 draft (hessian 3.x), whose scalars are the final
    /// encoding's but whose containers and objects are not.
    fn skip_draft(&mut self, depth: u32) -> R<()> {
        if depth > MAX_DEPTH {
            return Err(HessianError::TooDeep);
        }
        match self.peek()? {
            b'V' => {
                self.pos += 1;
                self.draft_type()?;
                match self.peek()? {
                    b'n' => self.take(2).map(drop)?,
                    b'l' => self.take(5).map(drop)?,
                    _ => {}
                }
                while self.peek()? != b'z' {
                    self.skip_draft(depth + 1)?;
                }
                self.pos += 1;
                Ok(())
            }
            b'M' => {
                self.pos += 1;
                self.draft_type()?;
                while self.peek()? != b'z' {
                    self.skip_draft(depth + 1)?;
                    self.skip_draft(depth + 1)?;
                }
                self.pos += 1;
                Ok(())
            }
            b'O' => {
                self.draft_class()?;
                self.skip_draft(depth + 1)
            }
            b'o' => {
                self.pos += 1;
                let def = self.read_int()?;
                let fields = usize::try_from(def)
                    .ok()
                    .and_then(|d| self.classes.get(d).copied())
                    .ok_or(HessianError::UnknownClass)?;
                if fields as usize > self.buf.len() - self.pos {
                    return Err(HessianError::BadLength);
                }
                for _ in 0..fields {
                    self.skip_draft(depth + 1)?;
                }
                Ok(())
            }
            // A reference (an int32), not a string chunk as in the final encoding.
            b'R' => self.take(5).map(drop),
            // A non-final string chunk.
            // Non-final string or binary chunks (a loop, not recursion: there may be many), then
            // the final one.
            b's' | b'b' => {
                while let c @ (b's' | b'b') = self.peek()? {
                    self.pos += 1;
                    let n = self.be(2)? as usize;
                    if c == b's' {
                        self.skip_utf8(n)?;
                    } else {
                        self.take(n)?;
                    }
                }
                self.skip_depth(depth)
            }
            _ => self.skip_depth(depth),
        }
    }

    /// A draft list or map's optional type: `t`, a 2-byte length, the name.
    fn draft_type(&mut self) -> R<()> {
        if self.peek()? == b't' {
            self.pos += 1;
            let n = self.be(2)? as usize;
            self.take(n)?;
        }
        Ok(())
    }

    /// A draft class definition (`O`, the name's length as an int, the name, the field count, the
    /// field names); returns the field count.
    fn draft_class(&mut self) -> R<u32> {
        self.pos += 1;
        let len = self.read_int()?;
        let len = usize::try_from(len).map_err(|_| HessianError::BadLength)?;
        self.take(len)?;
        let n = self.read_int()?;
        if !(0..=65_535).contains(&n) {
            return Err(HessianError::BadLength);
        }
        for _ in 0..n {
            self.skip_string()?;
        }
        if self.classes.len() >= MAX_CLASS_DEFS {
            return Err(HessianError::BadLength);
        }
        self.classes.push(n as u32);
        Ok(n as u32)
    }

    fn skip_depth(&mut self, depth: u32) -> R<()> {
        if depth > MAX_DEPTH {
            return Err(HessianError::TooDeep);
        }
        let c = self.byte()?;
        match c {
            0x00..=0x1f => self.skip_utf8(c as usize).map(drop),
            0x20..=0x2f => self.take((c - 0x20) as usize).map(drop),
            0x30..=0x33 => {
                let n = ((c as usize - 0x30) << 8) | self.byte()? as usize;
                self.skip_utf8(n).map(drop)
            }
            0x34..=0x37 => {
                let n = ((c as usize - 0x34) << 8) | self.byte()? as usize;
                self.take(n).map(drop)
            }
            0x38..=0x3f => self.take(2).map(drop),
            b'A' | b'B' => {
                // Binary chunks: non-final 'A' chunks, then a final 'B' (or short binary).
                let mut c = c;
                loop {
                    let n = self.be(2)? as usize;
                    self.take(n)?;
                    if c == b'B' {
                        return Ok(());
                    }
                    c = self.byte()?;
                    match c {
                        b'A' | b'B' => {}
                        0x20..=0x2f => return self.take((c - 0x20) as usize).map(drop),
                        0x34..=0x37 => {
                            let n = ((c as usize - 0x34) << 8) | self.byte()? as usize;
                            return self.take(n).map(drop);
                        }
                        _ => return Err(HessianError::BadCode(c)),
                    }
                }
            }
            b'R' | b'S' => {
                self.pos -= 1;
                self.read_string_chunks().map(drop)
            }
            b'C' => {
                // Class definition, then the value that follows it.
                self.skip_type_name(depth)?;
                let n = self.read_int()?;
                if !(0..=65_535).contains(&n) {
                    return Err(HessianError::BadLength);
                }
                for _ in 0..n {
                    self.skip_string()?;
                }
                if self.classes.len() >= MAX_CLASS_DEFS {
                    return Err(HessianError::BadLength);
                }
                self.classes.push(n as u32);
                self.skip_depth(depth + 1)
            }
            b'D' | b'J' | b'L' => self.take(8).map(drop),
            b'I' | b'K' | b'Y' | 0x5f => self.take(4).map(drop),
            b'F' | b'T' | b'N' | 0x5b | 0x5c => Ok(()),
            0x5d => self.take(1).map(drop),
            0x5e => self.take(2).map(drop),
            b'H' => self.skip_map_entries(depth),
            b'M' => {
                self.skip_type_name(depth)?;
                self.skip_map_entries(depth)
            }
            b'O' => {
                let def = self.read_int()?;
                self.skip_object(def, depth)
            }
            0x60..=0x6f => self.skip_object((c - 0x60) as i64, depth),
            b'Q' => self.read_int().map(drop),
            b'U' => {
                self.skip_type_name(depth)?;
                self.skip_until_z(depth)
            }
            b'W' => self.skip_until_z(depth),
            b'V' => {
                self.skip_type_name(depth)?;
                let n = self.read_int()?;
                self.skip_n(n, depth)
            }
            b'X' => {
                let n = self.read_int()?;
                self.skip_n(n, depth)
            }
            0x70..=0x77 => {
                self.skip_type_name(depth)?;
                self.skip_n((c - 0x70) as i64, depth)
            }
            0x78..=0x7f => self.skip_n((c - 0x78) as i64, depth),
            0x80..=0xbf => Ok(()),
            0xc0..=0xcf => self.take(1).map(drop),
            0xd0..=0xd7 => self.take(2).map(drop),
            0xd8..=0xef => Ok(()),
            0xf0..=0xff => self.take(1).map(drop),
            _ => Err(HessianError::BadCode(c)),
        }
    }

    /// A type in a typed list or map: a string or an int (a reference to an earlier type).
    fn skip_type_name(&mut self, depth: u32) -> R<()> {
        match self.peek()? {
            0x00..=0x1f | 0x30..=0x33 | b'R' | b'S' => self.skip_string(),
            0x80..=0xd7 | b'I' => self.read_int().map(drop),
            _ => {
                let _ = depth;
                Err(HessianError::BadCode(self.peek()?))
            }
        }
    }

    fn skip_object(&mut self, def: i64, depth: u32) -> R<()> {
        let fields = usize::try_from(def)
            .ok()
            .and_then(|d| self.classes.get(d).copied())
            .ok_or(HessianError::UnknownClass)?;
        self.skip_n(fields as i64, depth)
    }

    fn skip_n(&mut self, n: i64, depth: u32) -> R<()> {
        // Each value takes at least one byte: a count beyond the input is an error up front.
        if n < 0 || n as u64 > (self.buf.len() - self.pos) as u64 {
            return Err(HessianError::BadLength);
        }
        for _ in 0..n {
            self.skip_depth(depth + 1)?;
        }
        Ok(())
    }

    fn skip_until_z(&mut self, depth: u32) -> R<()> {
        while self.peek()? != b'Z' {
            self.skip_depth(depth + 1)?;
        }
        self.pos += 1;
        Ok(())
    }

    fn skip_map_entries(&mut self, depth: u32) -> R<()> {
        while self.peek()? != b'Z' {
            self.skip_depth(depth + 1)?;
            self.skip_depth(depth + 1)?;
        }
        self.pos += 1;
        Ok(())
    }

    /// Skips `chars` UTF-16 units of (modified) UTF-8; returns the bytes.
    fn skip_utf8(&mut self, chars: usize) -> R<&'a [u8]> {
        let start = self.pos;
        let mut left = chars;
        while left > 0 {
            let b = self.byte()?;
            let (extra, units) = match b {
                0x00..=0x7f => (0, 1),
                0xc0..=0xdf => (1, 1),
                0xe0..=0xef => (2, 1),
                // A real 4-byte sequence (non-Java encoders) is a surrogate pair: two units.
                0xf0..=0xf7 => (3, 2),
                _ => return Err(HessianError::BadString),
            };
            self.take(extra)?;
            left = left.checked_sub(units).ok_or(HessianError::BadString)?;
        }
        Ok(&self.buf[start..self.pos])
    }

    fn skip_string(&mut self) -> R<()> {
        self.read_string_chunks().map(drop)
    }

    /// Reads a string value (any chunking) as raw chunks. A single chunk is returned borrowed.
    fn read_string_chunks(&mut self) -> R<Cow<'a, [u8]>> {
        let mut out: Option<Vec<u8>> = None;
        loop {
            let c = self.byte()?;
            let (n, last) = match c {
                0x00..=0x1f => (c as usize, true),
                0x30..=0x33 => (((c as usize - 0x30) << 8) | self.byte()? as usize, true),
                b'S' => (self.be(2)? as usize, true),
                b'R' => (self.be(2)? as usize, false),
                _ => return Err(HessianError::BadCode(c)),
            };
            let bytes = self.skip_utf8(n)?;
            match (&mut out, last) {
                (None, true) => return Ok(Cow::Borrowed(bytes)),
                (None, false) => out = Some(bytes.to_vec()),
                (Some(v), _) => v.extend_from_slice(bytes),
            }
            if last {
                return Ok(Cow::Owned(out.unwrap_or_default()));
            }
        }
    }

    /// Reads a string (or null as `None`).
    pub fn read_opt_string(&mut self) -> R<Option<Cow<'a, str>>> {
        if self.peek()? == b'N' {
            self.pos += 1;
            return Ok(None);
        }
        let raw = self.read_string_chunks()?;
        let s = match raw {
            Cow::Borrowed(b) => Cow::Borrowed(std::str::from_utf8(b).map_err(|_| HessianError::BadString)?),
            Cow::Owned(v) => Cow::Owned(String::from_utf8(v).map_err(|_| HessianError::BadString)?),
        };
        Ok(Some(s))
    }

    /// Reads a string, returning the byte range of its text when it is one chunk (no copy), for
    /// fields a router keeps as offsets into the frame.
    pub fn read_string_span(&mut self) -> R<StrSpan> {
        if self.peek()? == b'N' {
            self.pos += 1;
            return Ok(StrSpan::Null);
        }
        let start = self.pos;
        let raw = self.read_string_chunks()?;
        match raw {
            Cow::Borrowed(b) => {
                let off = b.as_ptr() as usize - self.buf.as_ptr() as usize;
                std::str::from_utf8(b).map_err(|_| HessianError::BadString)?;
                Ok(StrSpan::Range(off as u32, (off + b.len()) as u32))
            }
            Cow::Owned(v) => {
                String::from_utf8(v).map_err(|_| HessianError::BadString)?;
                Ok(StrSpan::Chunked(start as u32, self.pos as u32))
            }
        }
    }

    /// Positions the reader at field `name` of an object written with its class definition in
    /// front (`C` name count fields…, then the instance), skipping the fields before it. `Ok(false)`
    /// when the class has no such field (the whole object is then skipped). The definition is
    /// remembered, so later values of the body that refer to it can still be skipped.
    pub fn object_field(&mut self, name: &str) -> R<bool> {
        let draft = match self.byte()? {
            b'C' => {
                self.skip_type_name(0)?;
                false
            }
            b'O' => {
                let len = usize::try_from(self.read_int()?).map_err(|_| HessianError::BadLength)?;
                self.take(len)?;
                self.draft = true;
                true
            }
            c => return Err(HessianError::BadCode(c)),
        };
        let n = self.read_int()?;
        if !(0..=65_535).contains(&n) {
            return Err(HessianError::BadLength);
        }
        let mut want = None;
        for i in 0..n {
            if self.read_opt_string()?.is_some_and(|f| f == name) && want.is_none() {
                want = Some(i);
            }
        }
        if self.classes.len() >= MAX_CLASS_DEFS {
            return Err(HessianError::BadLength);
        }
        self.classes.push(n as u32);
        let def = match (self.byte()?, draft) {
            (b'O', false) | (b'o', true) => self.read_int()?,
            (c @ 0x60..=0x6f, false) => i64::from(c - 0x60),
            (c, _) => return Err(HessianError::BadCode(c)),
        };
        if def != self.classes.len() as i64 - 1 {
            return Err(HessianError::UnknownClass);
        }
        let before = want.unwrap_or(n);
        if draft {
            for _ in 0..before {
                self.skip_draft(0)?;
            }
        } else {
            self.skip_n(before, 0)?;
        }
        Ok(want.is_some())
    }

    /// Reads an int (any int encoding).
    pub fn read_int(&mut self) -> R<i64> {
        let c = self.byte()?;
        Ok(match c {
            0x80..=0xbf => c as i64 - 0x90,
            0xc0..=0xcf => ((c as i64 - 0xc8) << 8) | self.byte()? as i64,
            0xd0..=0xd7 => ((c as i64 - 0xd4) << 16) | self.be(2)? as i64,
            b'I' => self.be(4)? as u32 as i32 as i64,
            _ => return Err(HessianError::BadCode(c)),
        })
    }

    /// Reads one value, decoding scalars and skipping the rest.
    pub fn read_value(&mut self) -> R<Value<'a>> {
        let c = self.peek()?;
        Ok(match c {
            b'N' => {
                self.pos += 1;
                Value::Null
            }
            b'T' | b'F' => {
                self.pos += 1;
                Value::Bool(c == b'T')
            }
            0x80..=0xd7 | b'I' => Value::Int(self.read_int()?),
            0xd8..=0xef => {
                self.pos += 1;
                Value::Int(c as i64 - 0xe0)
            }
            0xf0..=0xff => {
                self.pos += 1;
                Value::Int(((c as i64 - 0xf8) << 8) | self.byte()? as i64)
            }
            0x38..=0x3f => {
                self.pos += 1;
                Value::Int(((c as i64 - 0x3c) << 16) | self.be(2)? as i64)
            }
            b'Y' => {
                self.pos += 1;
                Value::Int(self.be(4)? as u32 as i32 as i64)
            }
            b'L' => {
                self.pos += 1;
                Value::Int(self.be(8)? as i64)
            }
            0x00..=0x1f | 0x30..=0x33 | b'R' | b'S' => match self.read_opt_string()? {
                Some(s) => Value::Str(s),
                None => Value::Null,
            },
            _ => {
                self.skip()?;
                Value::Other
            }
        })
    }

    /// The value under the string key `key` of the map at the cursor (`H`/`M`, or null as
    /// empty); None when absent or when the map is malformed.
    pub fn map_value(&mut self, key: &str) -> Option<Value<'a>> {
        let mut found = None;
        self.walk_map(|k, v| {
            if k == key {
                found = Some(v);
                true
            } else {
                false
            }
        })
        .ok()?;
        found
    }

    /// Walks a map (`H`/`M`, or null as empty), calling `f` for every (key, value) whose key is a
    /// string; `f` returns `true` to stop. Values are decoded only as far as [`Value`] goes.
    pub fn walk_map(&mut self, mut f: impl FnMut(&str, Value<'a>) -> bool) -> R<()> {
        let c = self.byte()?;
        match c {
            b'N' => return Ok(()),
            b'H' => {}
            b'M' if self.draft => self.draft_type()?,
            b'M' => self.skip_type_name(0)?,
            _ => return Err(HessianError::BadCode(c)),
        }
        let end = if self.draft { b'z' } else { b'Z' };
        // An entry whose key is not a string, or whose key or value cannot be decoded (an object,
        // a string that is not UTF-8), is skipped, not an error: the map is still well formed
        // (the skipper accepts it), and the entries after it must still be found.
        while self.peek()? != end {
            let start = self.pos;
            let k = match self.read_value() {
                Ok(Value::Str(k)) => Some(k),
                Ok(_) => None,
                Err(_) => {
                    self.pos = start;
                    self.skip()?;
                    None
                }
            };
            let Some(k) = k else {
                self.skip()?;
                continue;
            };
            let start = self.pos;
            match self.read_value() {
                Ok(v) => {
                    if f(&k, v) {
                        return Ok(());
                    }
                }
                Err(_) => {
                    self.pos = start;
                    self.skip()?;
                }
            }
        }
        self.pos += 1;
        Ok(())
    }
}

/// Where a string field is in a buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StrSpan {
    #[default]
    Null,
    /// Byte range of the UTF-8 text (one chunk).
    Range(u32, u32),
    /// Byte range of the whole chunked encoding (decode again to read it).
    Chunked(u32, u32),
}

impl StrSpan {
    /// The text, borrowed when it is one chunk.
    pub fn get<'a>(&self, buf: &'a [u8]) -> Option<Cow<'a, str>> {
        match *self {
            StrSpan::Null => None,
            StrSpan::Range(a, b) => std::str::from_utf8(buf.get(a as usize..b as usize)?)
                .ok()
                .map(Cow::Borrowed),
            StrSpan::Chunked(a, b) => Reader::new(buf.get(a as usize..b as usize)?)
                .read_opt_string()
                .ok()
                .flatten(),
        }
    }
}

/// Appends a hessian2 string.
pub fn write_string(out: &mut Vec<u8>, s: &str) {
    // Chunks of at most 0x8000 UTF-16 units; count units per char.
    let mut chunk_start = 0;
    let mut units = 0usize;
    let mut chunks: Vec<(usize, usize, usize)> = Vec::new();
    for (i, ch) in s.char_indices() {
        let u = ch.len_utf16();
        if units + u > 0x8000 {
            chunks.push((chunk_start, i, units));
            chunk_start = i;
            units = 0;
        }
        units += u;
    }
    chunks.push((chunk_start, s.len(), units));
    let last = chunks.len() - 1;
    for (i, (a, b, n)) in chunks.into_iter().enumerate() {
        if i < last {
            out.push(b'R');
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else if n < 32 {
            out.push(n as u8);
        } else if n < 1024 {
            out.push(0x30 + (n >> 8) as u8);
            out.push(n as u8);
        } else {
            out.push(b'S');
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        // Java's hessian writes supplementary characters as two 3-byte surrogates; plain UTF-8
        // (4 bytes) is what the other implementations write and what our reader accepts.
        out.extend_from_slice(&s.as_bytes()[a..b]);
    }
}

/// Appends a hessian2 int.
pub fn write_int(out: &mut Vec<u8>, v: i32) {
    if (-16..=47).contains(&v) {
        out.push((0x90 + v) as u8);
    } else if (-2048..=2047).contains(&v) {
        out.push((0xc8 + (v >> 8)) as u8);
        out.push(v as u8);
    } else if (-262_144..=262_143).contains(&v) {
        out.push((0xd4 + (v >> 16)) as u8);
        out.extend_from_slice(&(v as u16).to_be_bytes());
    } else {
        out.push(b'I');
        out.extend_from_slice(&v.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip_and_skip() {
        for s in [
            "",
            "a",
            "héllo wörld",
            &"x".repeat(40),
            &"y".repeat(2000),
            &"z".repeat(70_000),
            "😀 emoji",
        ] {
            let mut b = Vec::new();
            write_string(&mut b, s);
            b.push(b'N');
            let mut r = Reader::new(&b);
            assert_eq!(r.read_opt_string().unwrap().as_deref(), Some(s));
            assert_eq!(r.peek().unwrap(), b'N');
            let mut r = Reader::new(&b);
            r.skip().unwrap();
            assert_eq!(r.pos(), b.len() - 1);
        }
    }

    #[test]
    fn ints_round_trip() {
        for v in [
            0,
            1,
            -16,
            47,
            48,
            -17,
            2047,
            -2048,
            2048,
            262_143,
            -262_144,
            262_144,
            i32::MAX,
            i32::MIN,
        ] {
            let mut b = Vec::new();
            write_int(&mut b, v);
            let mut r = Reader::new(&b);
            assert_eq!(r.read_value().unwrap(), Value::Int(v as i64), "{v}");
            assert!(r.at_end());
            let mut r = Reader::new(&b);
            r.skip().unwrap();
            assert!(r.at_end());
        }
    }

    #[test]
    fn skips_containers_and_objects() {
        // class def "P" with 2 fields "a","b"; object; typed fixed list of 2; untyped map; Z-lists.
        let mut b = vec![b'C', 0x01, b'P', 0x92, 0x01, b'a', 0x01, b'b', 0x60, 0x91, b'T'];
        b.extend_from_slice(&[0x72, 0x01, b't', 0x91, 0x92]);
        b.extend_from_slice(&[b'H', 0x01, b'k', b'N', 0x91, b'F', b'Z']);
        b.extend_from_slice(&[b'W', 0x91, b'N', b'Z']);
        b.extend_from_slice(&[b'O', 0x90, 0x91, 0x92]);
        b.extend_from_slice(&[b'D', 0, 0, 0, 0, 0, 0, 0, 0, 0x5d, 1, 0x5e, 1, 2]);
        let mut r = Reader::new(&b);
        let mut n = 0;
        while !r.at_end() {
            r.skip().unwrap();
            n += 1;
        }
        assert_eq!(n, 8); // a class def and its object count as one
    }

    #[test]
    fn refuses_garbage_without_panicking() {
        for b in [
            &[b'X', 0xd7, 0xff, 0xff][..],
            &[b'O', 0x90],
            &[0x1f, b'a'],
            &[b'H', 0x01],
            &[0x40],
            &[b'W'; 200],
        ] {
            assert!(Reader::new(b).skip().is_err(), "{b:?}");
        }
        let deep = vec![0x79u8; 1000];
        assert_eq!(Reader::new(&deep).skip(), Err(HessianError::TooDeep));
    }
}
