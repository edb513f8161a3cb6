//! PTX text to a syntax tree: module directives, variables, entry points and their statements.
//!
//! The grammar is the subset NVRTC emits (PTX ISA §4 "Syntax", §5 "State spaces, types and
//! variables", §11 "Directives"), parsed without interpreting opcodes: `decode` gives them
//! meaning. Whatever this parser does not recognise is an error naming the PTX line; `.func`
//! (device functions, i.e. calls) is refused here because the executor has no call stack.

use std::collections::HashMap;

use crate::error::{EmuError, Result};

/// A state space of a variable or a memory access (PTX ISA §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Space {
    Global,
    Shared,
    Local,
    Param,
    Const,
}

/// One parsed module.
#[derive(Debug, Default)]
pub struct Module {
    pub version: String,
    pub target: Vec<String>,
    pub address_size: u32,
    /// `.file` index → path.
    pub files: HashMap<u32, String>,
    pub variables: Vec<Variable>,
    pub entries: Vec<Entry>,
}

/// A `.global`, `.const`, `.shared` or `.local` variable.
#[derive(Clone, Debug)]
pub struct Variable {
    pub space: Space,
    pub align: Option<u32>,
    /// The element type as written (`b8`, `u32`, `f32`, ...).
    pub ty: String,
    pub name: String,
    /// `None`: a scalar; `Some(None)`: `name[]` (only for `.extern .shared`); `Some(Some(n))`.
    pub array: Option<Option<u64>>,
    pub init: Vec<Operand>,
    pub external: bool,
    pub line: u32,
}

#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub ty: String,
    pub align: Option<u32>,
    pub array: Option<u64>,
}

#[derive(Debug)]
pub struct Entry {
    pub name: String,
    pub params: Vec<Param>,
    pub maxntid: Option<[u32; 3]>,
    pub reqntid: Option<[u32; 3]>,
    pub body: Vec<Stmt>,
    pub line: u32,
}

#[derive(Clone, Debug)]
pub struct RegDecl {
    /// The type as written: `pred`, `b16`, `u32`, `f32`, `b64`, ...
    pub ty: String,
    /// `%r<10>` is (`%r`, Some(10)), `t` is (`t`, None).
    pub names: Vec<(String, Option<u32>)>,
}

/// A source position from `.loc`: file index, line, and the call site it was inlined at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Loc {
    pub file: u32,
    pub line: u32,
    pub inlined_at: Option<(u32, u32)>,
}

#[derive(Debug)]
pub enum Stmt {
    Reg(RegDecl),
    Var(Variable),
    Loc(Loc),
    Label(String),
    /// `{`: a nested scope (inline assembly's local `.reg`s).
    Open,
    Close,
    Inst(Instruction),
}

#[derive(Clone, Debug)]
pub struct Instruction {
    /// `@%p` / `@!%p`: the predicate register name and whether it is negated.
    pub guard: Option<(String, bool)>,
    pub opcode: String,
    pub operands: Vec<Operand>,
    /// 1-based line in the PTX text.
    pub line: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    /// A register, special register, symbol or label.
    Name(String),
    Int(i128),
    /// `0fXXXXXXXX`: the bits of an f32.
    F32(u32),
    /// `0dXXXXXXXXXXXXXXXX` or a decimal literal: the bits of an f64.
    F64(u64),
    /// `{a, b, ...}`.
    Vector(Vec<Operand>),
    /// `[base+offset]`: base is a register or symbol name, or absent for an absolute address.
    Address {
        base: Option<String>,
        offset: i64,
    },
    /// `%r|%p`: the second destination of `setp` and `shfl`.
    Pair(String, String),
    /// `_`: a discarded result.
    Sink,
}

struct Lexer<'a> {
    s: &'a [u8],
    pos: usize,
    line: u32,
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b'$' || c == b'%'
}

fn is_ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$'
}

impl<'a> Lexer<'a> {
    fn err(&self, msg: impl Into<String>) -> EmuError {
        EmuError::Parse {
            line: self.line,
            msg: msg.into(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    /// Skips blanks and comments; with `newlines` false, stops at the end of the line.
    fn skip(&mut self, newlines: bool) {
        while let Some(c) = self.peek() {
            match c {
                b'\n' if !newlines => return,
                b'\n' => {
                    self.line += 1;
                    self.pos += 1;
                }
                b' ' | b'\t' | b'\r' => self.pos += 1,
                b'/' if self.s.get(self.pos + 1) == Some(&b'/') => {
                    while self.peek().is_some_and(|c| c != b'\n') {
                        self.pos += 1;
                    }
                }
                b'/' if self.s.get(self.pos + 1) == Some(&b'*') => {
                    self.pos += 2;
                    while self.pos < self.s.len()
                        && !(self.s[self.pos] == b'*' && self.s.get(self.pos + 1) == Some(&b'/'))
                    {
                        if self.s[self.pos] == b'\n' {
                            self.line += 1;
                        }
                        self.pos += 1;
                    }
                    self.pos = (self.pos + 2).min(self.s.len());
                }
                _ => return,
            }
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip(true);
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Result<()> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.err(format!(
                "expected `{}`, found {}",
                c as char,
                self.describe_next()
            )))
        }
    }

    fn describe_next(&self) -> String {
        let rest = &self.s[self.pos..];
        let end = rest
            .iter()
            .position(|&c| c == b'\n')
            .unwrap_or(rest.len())
            .min(40);
        if end == 0 {
            "the end of the line".into()
        } else {
            format!("`{}`", String::from_utf8_lossy(&rest[..end]))
        }
    }

    /// An identifier or directive word: `.entry`, `%r12`, `$L__BB0_2`, `add.s64`, `%tid.x`.
    fn word(&mut self) -> Option<&'a str> {
        self.skip(true);
        let start = self.pos;
        match self.peek() {
            Some(b'.') => self.pos += 1,
            Some(c) if is_ident_start(c) => self.pos += 1,
            _ => return None,
        }
        while let Some(c) = self.peek() {
            if is_ident_char(c) || c == b'.' || c == b':' && self.s.get(self.pos + 1) == Some(&b':')
            {
                // `::` appears in qualifiers such as `.shared::cta`.
                self.pos += if c == b':' { 2 } else { 1 };
            } else {
                break;
            }
        }
        Some(std::str::from_utf8(&self.s[start..self.pos]).expect("ASCII"))
    }

    fn expect_word(&mut self, what: &str) -> Result<&'a str> {
        self.word()
            .ok_or_else(|| self.err(format!("expected {what}, found {}", self.describe_next())))
    }

    fn integer(&mut self) -> Result<i128> {
        self.skip(true);
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric()) {
            self.pos += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.pos]).expect("ASCII");
        parse_int(text).ok_or_else(|| self.err(format!("`{text}` is not an integer")))
    }

    fn string(&mut self) -> Result<String> {
        self.skip(true);
        if self.peek() != Some(b'"') {
            return Err(self.err(format!("expected a string, found {}", self.describe_next())));
        }
        self.pos += 1;
        let start = self.pos;
        while self.peek().is_some_and(|c| c != b'"' && c != b'\n') {
            self.pos += 1;
        }
        let text = String::from_utf8_lossy(&self.s[start..self.pos]).into_owned();
        self.expect(b'"')?;
        Ok(text)
    }

    /// The rest of the current line (for directives that end at the line's end).
    fn rest_of_line(&mut self) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(|c| c != b'\n') {
            self.pos += 1;
        }
        std::str::from_utf8(&self.s[start..self.pos]).expect("ASCII")
    }

    /// Everything up to the next `;` at bracket depth 0, which is consumed.
    fn statement(&mut self) -> Result<&'a str> {
        let (start, first_line) = (self.pos, self.line);
        let mut depth = 0i32;
        while let Some(c) = self.peek() {
            match c {
                b'{' | b'[' | b'(' => depth += 1,
                b'}' | b']' | b')' => depth -= 1,
                b';' if depth == 0 => {
                    let text = std::str::from_utf8(&self.s[start..self.pos]).expect("ASCII");
                    self.pos += 1;
                    return Ok(text);
                }
                // No statement has a `;` inside brackets: one that is not closed is the error.
                b';' => {
                    return Err(EmuError::Parse {
                        line: first_line,
                        msg: "a `[`, `{` or `(` is not closed before the `;`".into(),
                    })
                }
                b'\n' => self.line += 1,
                _ => {}
            }
            self.pos += 1;
        }
        Err(EmuError::Parse {
            line: first_line,
            msg: "this statement is missing its `;` (or a bracket is not closed)".into(),
        })
    }

    /// Skips a `{ ... }` block (a `.section`).
    fn skip_block(&mut self) -> Result<()> {
        self.expect(b'{')?;
        let mut depth = 1;
        while let Some(c) = self.peek() {
            self.pos += 1;
            match c {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                b'\n' => self.line += 1,
                _ => {}
            }
        }
        Err(self.err("an unterminated `{` block"))
    }
}

/// A PTX integer literal: decimal, `0x` hex, `0b` binary, leading-0 octal, optional `U` suffix.
pub fn parse_int(text: &str) -> Option<i128> {
    let (neg, t) = match text.strip_prefix('-') {
        Some(t) => (true, t),
        None => (false, text),
    };
    let t = t.strip_suffix('U').unwrap_or(t);
    let v = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        i128::from_str_radix(h, 16).ok()?
    } else if let Some(b) = t.strip_prefix("0b").or_else(|| t.strip_prefix("0B")) {
        i128::from_str_radix(b, 2).ok()?
    } else if t.len() > 1 && t.starts_with('0') {
        i128::from_str_radix(&t[1..], 8).ok()?
    } else {
        t.parse::<i128>().ok()?
    };
    Some(if neg { -v } else { v })
}

/// Splits at commas that are not inside brackets or braces.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.bytes().enumerate() {
        match c {
            b'{' | b'[' | b'(' => depth += 1,
            b'}' | b']' | b')' => depth -= 1,
            b',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    let last = s[start..].trim();
    if !last.is_empty() || !out.is_empty() {
        out.push(last);
    }
    out
}

fn parse_operand(text: &str, line: u32) -> Result<Operand> {
    let err = |msg: String| EmuError::Parse { line, msg };
    let t = text.trim();
    if t.is_empty() {
        return Err(err("an empty operand".into()));
    }
    if t == "_" {
        return Ok(Operand::Sink);
    }
    if let Some(rest) = t.strip_prefix('!') {
        // A negated predicate (setp's combining operand).
        if let Operand::Name(n) = parse_operand(rest, line)? {
            return Ok(Operand::Name(format!("!{n}")));
        }
        return Err(err(format!("`{t}` is not a negated predicate")));
    }
    if let Some(inner) = t.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
        let items = split_top(inner)
            .into_iter()
            .map(|o| parse_operand(o, line))
            .collect::<Result<Vec<_>>>()?;
        return Ok(Operand::Vector(items));
    }
    if let Some(inner) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        let inner: String = inner.chars().filter(|c| !c.is_whitespace()).collect();
        // [base], [base+off], [base+-off], [base-off], [off]
        let split = inner
            .char_indices()
            .skip(1)
            .find(|&(_, c)| c == '+' || c == '-')
            .map(|(i, _)| i);
        let (base, off) = match split {
            Some(i) => (&inner[..i], &inner[i..]),
            None => (inner.as_str(), ""),
        };
        if let Some(v) = parse_int(base) {
            if !off.is_empty() {
                return Err(err(format!("address `{t}` is not understood")));
            }
            return Ok(Operand::Address {
                base: None,
                offset: v as i64,
            });
        }
        let offset = if off.is_empty() {
            0
        } else {
            let o = off.strip_prefix('+').unwrap_or(off);
            parse_int(o).ok_or_else(|| err(format!("address offset in `{t}`")))? as i64
        };
        return Ok(Operand::Address {
            base: Some(base.to_string()),
            offset,
        });
    }
    if let Some((a, b)) = t.split_once('|') {
        return Ok(Operand::Pair(a.trim().to_string(), b.trim().to_string()));
    }
    let b = t.as_bytes();
    if t.len() == 10 && (t.starts_with("0f") || t.starts_with("0F")) {
        if let Ok(bits) = u32::from_str_radix(&t[2..], 16) {
            return Ok(Operand::F32(bits));
        }
    }
    if t.len() == 18 && (t.starts_with("0d") || t.starts_with("0D")) {
        if let Ok(bits) = u64::from_str_radix(&t[2..], 16) {
            return Ok(Operand::F64(bits));
        }
    }
    if b[0].is_ascii_digit() || b[0] == b'-' {
        if let Some(v) = parse_int(t) {
            return Ok(Operand::Int(v));
        }
        if let Ok(f) = t.parse::<f64>() {
            return Ok(Operand::F64(f.to_bits()));
        }
        return Err(err(format!("`{t}` is not a number")));
    }
    if is_ident_start(b[0]) && b[1..].iter().all(|&c| is_ident_char(c) || c == b'.') {
        return Ok(Operand::Name(t.to_string()));
    }
    Err(err(format!("operand `{t}` is not understood")))
}

fn parse_instruction(text: &str, line: u32) -> Result<Instruction> {
    let t = text.trim();
    let (guard, rest) = if let Some(r) = t.strip_prefix('@') {
        let r = r.trim_start();
        let (neg, r) = match r.strip_prefix('!') {
            Some(r) => (true, r),
            None => (false, r),
        };
        let end = r.find(char::is_whitespace).unwrap_or(r.len());
        (Some((r[..end].to_string(), neg)), r[end..].trim_start())
    } else {
        (None, t)
    };
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    let opcode = rest[..end].to_string();
    if opcode.is_empty() {
        return Err(EmuError::Parse {
            line,
            msg: "an instruction without an opcode".into(),
        });
    }
    let operands = split_top(&rest[end..])
        .into_iter()
        .map(|o| parse_operand(o, line))
        .collect::<Result<Vec<_>>>()?;
    Ok(Instruction {
        guard,
        opcode,
        operands,
        line,
    })
}

/// `.align 4 .b8 name[24] = {...}` after the state space word; `text` is the statement.
fn parse_variable(space: Space, external: bool, text: &str, line: u32) -> Result<Variable> {
    let err = |msg: String| EmuError::Parse { line, msg };
    let (decl, init) = match text.split_once('=') {
        Some((d, i)) => (d.trim(), Some(i.trim())),
        None => (text.trim(), None),
    };
    let mut words = decl.split_whitespace().peekable();
    let mut align = None;
    let mut ty = None;
    let mut name = None;
    while let Some(w) = words.next() {
        match w {
            ".align" => {
                let v = words
                    .next()
                    .and_then(parse_int)
                    .ok_or_else(|| err(".align".into()))?;
                align = Some(v as u32);
            }
            ".v2" | ".v4" => {
                return Err(err(format!("vector variables (`{w}`) are not supported")))
            }
            w if w.starts_with('.') => ty = Some(w[1..].to_string()),
            w => name = Some(w.to_string()),
        }
    }
    let ty = ty.ok_or_else(|| err("a variable without a type".into()))?;
    let mut name = name.ok_or_else(|| err("a variable without a name".into()))?;
    let mut array = None;
    if let Some(open) = name.find('[') {
        let dims = name[open..].to_string();
        name.truncate(open);
        if dims.matches('[').count() > 1 {
            return Err(err("multi-dimensional variables are not supported".into()));
        }
        let inner = dims.trim_start_matches('[').trim_end_matches(']').trim();
        array = Some(if inner.is_empty() {
            None
        } else {
            Some(parse_int(inner).ok_or_else(|| err(format!("array size `{inner}`")))? as u64)
        });
    }
    let init = match init {
        None => Vec::new(),
        Some(i) => {
            let inner = i
                .strip_prefix('{')
                .and_then(|r| r.strip_suffix('}'))
                .unwrap_or(i);
            split_top(inner)
                .into_iter()
                .map(|o| parse_operand(o, line))
                .collect::<Result<Vec<_>>>()?
        }
    };
    Ok(Variable {
        space,
        align,
        ty,
        name,
        array,
        init,
        external,
        line,
    })
}

fn space_of(word: &str) -> Option<Space> {
    Some(match word {
        ".global" => Space::Global,
        ".shared" => Space::Shared,
        ".local" => Space::Local,
        ".param" => Space::Param,
        ".const" => Space::Const,
        _ => return None,
    })
}

fn parse_params(lx: &mut Lexer) -> Result<Vec<Param>> {
    let mut params = Vec::new();
    lx.expect(b'(')?;
    if lx.eat(b')') {
        return Ok(params);
    }
    loop {
        let line = lx.line;
        let start = lx.pos;
        let mut depth = 0;
        while let Some(c) = lx.peek() {
            match c {
                b'[' => depth += 1,
                b']' => depth -= 1,
                b',' | b')' if depth == 0 => break,
                b'\n' => lx.line += 1,
                _ => {}
            }
            lx.pos += 1;
        }
        let text = std::str::from_utf8(&lx.s[start..lx.pos]).expect("ASCII");
        let v = parse_variable(
            Space::Param,
            false,
            text.trim().trim_start_matches(".param"),
            line,
        )?;
        params.push(Param {
            name: v.name,
            ty: v.ty,
            align: v.align,
            array: v.array.map(|a| a.unwrap_or(0)),
        });
        if lx.eat(b')') {
            return Ok(params);
        }
        lx.expect(b',')?;
    }
}

fn parse_dims(text: &str, line: u32) -> Result<[u32; 3]> {
    let mut d = [1u32; 3];
    for (i, part) in text.split(',').enumerate() {
        if i >= 3 {
            return Err(EmuError::Parse {
                line,
                msg: "more than three dimensions".into(),
            });
        }
        d[i] = parse_int(part.trim()).ok_or_else(|| EmuError::Parse {
            line,
            msg: format!("`{part}` is not a dimension"),
        })? as u32;
    }
    Ok(d)
}

fn parse_loc(text: &str, line: u32) -> Result<Loc> {
    let err = || EmuError::Parse {
        line,
        msg: format!("`.loc {text}` is not understood"),
    };
    let mut parts = text.split(',');
    let head: Vec<&str> = parts.next().unwrap_or("").split_whitespace().collect();
    if head.len() < 2 {
        return Err(err());
    }
    let num = |s: &str| parse_int(s).map(|v| v as u32).ok_or_else(err);
    let mut loc = Loc {
        file: num(head[0])?,
        line: num(head[1])?,
        inlined_at: None,
    };
    for p in parts {
        let w: Vec<&str> = p.split_whitespace().collect();
        if w.first() == Some(&"inlined_at") && w.len() >= 3 {
            loc.inlined_at = Some((num(w[1])?, num(w[2])?));
        }
    }
    Ok(loc)
}

fn parse_body(lx: &mut Lexer) -> Result<Vec<Stmt>> {
    let mut body = Vec::new();
    lx.expect(b'{')?;
    let mut depth = 1;
    loop {
        lx.skip(true);
        let line = lx.line;
        match lx.peek() {
            None => return Err(lx.err("the function body is not closed")),
            Some(b'{') => {
                lx.pos += 1;
                depth += 1;
                body.push(Stmt::Open);
                continue;
            }
            Some(b'}') => {
                lx.pos += 1;
                depth -= 1;
                if depth == 0 {
                    return Ok(body);
                }
                body.push(Stmt::Close);
                continue;
            }
            _ => {}
        }
        let save = (lx.pos, lx.line);
        let word = lx.word();
        match word {
            Some(".reg") => {
                let text = lx.statement()?;
                let mut words = text.split_whitespace();
                let ty = words
                    .next()
                    .and_then(|t| t.strip_prefix('.'))
                    .ok_or_else(|| lx.err(".reg without a type"))?;
                if ty == "v2" || ty == "v4" {
                    return Err(lx.err("vector registers are not supported"));
                }
                let rest: String = words.collect::<Vec<_>>().join(" ");
                let mut names = Vec::new();
                for n in rest.split(',') {
                    let n = n.trim();
                    if let Some((base, count)) = n.split_once('<') {
                        let c = parse_int(count.trim_end_matches('>'))
                            .ok_or_else(|| lx.err(format!("register range `{n}`")))?;
                        names.push((base.to_string(), Some(c as u32)));
                    } else if !n.is_empty() {
                        names.push((n.to_string(), None));
                    }
                }
                body.push(Stmt::Reg(RegDecl {
                    ty: ty.to_string(),
                    names,
                }));
            }
            Some(w @ (".local" | ".shared" | ".global" | ".const")) => {
                let text = lx.statement()?;
                let space = space_of(w).expect("a space");
                body.push(Stmt::Var(parse_variable(space, false, text, line)?));
            }
            Some(".loc") => {
                lx.skip(false);
                let text = lx.rest_of_line();
                body.push(Stmt::Loc(parse_loc(text, line)?));
            }
            Some(".pragma") => {
                lx.statement()?;
            }
            Some(w) if w.starts_with('.') => {
                return Err(lx.err(format!(
                    "directive `{w}` inside a function is not supported"
                )));
            }
            Some(w) if lx.peek() == Some(b':') => {
                lx.pos += 1;
                body.push(Stmt::Label(w.to_string()));
            }
            _ => {
                (lx.pos, lx.line) = save;
                let text = lx.statement()?;
                body.push(Stmt::Inst(parse_instruction(text, line)?));
            }
        }
    }
}

/// Parses a whole PTX module.
pub fn parse(text: &str) -> Result<Module> {
    let mut lx = Lexer {
        s: text.as_bytes(),
        pos: 0,
        line: 1,
    };
    let mut m = Module::default();
    loop {
        lx.skip(true);
        if lx.peek().is_none() {
            return Ok(m);
        }
        let line = lx.line;
        let word = lx.expect_word("a directive")?;
        match word {
            ".version" => {
                lx.skip(false);
                m.version = lx.rest_of_line().trim().to_string();
            }
            ".target" => {
                lx.skip(false);
                m.target = lx
                    .rest_of_line()
                    .split(',')
                    .map(|t| t.trim().to_string())
                    .collect();
            }
            ".address_size" => m.address_size = lx.integer()? as u32,
            ".file" => {
                let index = lx.integer()? as u32;
                let path = lx.string()?;
                lx.skip(false);
                lx.rest_of_line(); // optional timestamp and size
                m.files.insert(index, path);
            }
            ".section" => {
                lx.expect_word("a section name")?;
                lx.skip_block()?;
            }
            ".visible" | ".weak" | ".extern" => {
                let external = word == ".extern";
                let next = lx.expect_word("a declaration")?;
                declaration(&mut lx, &mut m, next, external, line)?;
            }
            w => declaration(&mut lx, &mut m, w, false, line)?,
        }
    }
}

fn declaration(
    lx: &mut Lexer,
    m: &mut Module,
    word: &str,
    external: bool,
    line: u32,
) -> Result<()> {
    match word {
        ".entry" => {
            let name = lx.expect_word("the kernel's name")?.to_string();
            let params = parse_params(lx)?;
            let mut e = Entry {
                name,
                params,
                maxntid: None,
                reqntid: None,
                body: Vec::new(),
                line,
            };
            loop {
                lx.skip(true);
                if lx.peek() == Some(b'{') {
                    break;
                }
                let dline = lx.line;
                match lx.expect_word("a performance directive or `{`")? {
                    ".maxntid" => {
                        lx.skip(false);
                        e.maxntid = Some(parse_dims(lx.rest_of_line(), dline)?);
                    }
                    ".reqntid" => {
                        lx.skip(false);
                        e.reqntid = Some(parse_dims(lx.rest_of_line(), dline)?);
                    }
                    ".minnctapersm" | ".maxnreg" | ".maxclusterrank" | ".noreturn" => {
                        lx.skip(false);
                        lx.rest_of_line();
                    }
                    d => return Err(lx.err(format!("entry directive `{d}` is not supported"))),
                }
            }
            e.body = parse_body(lx)?;
            m.entries.push(e);
            Ok(())
        }
        ".func" => Err(
            lx.err("device functions (`.func`) are not supported: the executor has no call stack")
        ),
        w => match space_of(w) {
            Some(space) if space != Space::Param && space != Space::Local => {
                let text = lx.statement()?;
                m.variables
                    .push(parse_variable(space, external, text, line)?);
                Ok(())
            }
            _ => Err(lx.err(format!("module directive `{w}` is not supported"))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = r#"
//
// Generated by NVIDIA NVVM Compiler
.version 8.8
.target sm_80
.address_size 64

.global .align 4 .b8 tab[3] = {1, 2, 3};
.extern .shared .align 16 .b8 smem[];

.visible .entry k(
	.param .u64 k_param_0,
	.param .align 8 .b8 k_param_1[16]
)
.maxntid 128, 1, 1
{
	.reg .pred 	%p<3>;
	.reg .b32 	%r<5>;
	.local .align 4 .b8 	__local_depot0[28];
	.loc	1 12 5, function_name $L__info_string0, inlined_at 1 40 1
	mov.u32 	%r1, %tid.x;
	@!%p1 bra 	$L__BB0_2;
	{ .reg .u64 t; cvta.to.shared.u64 t, %rd1; cvt.u32.u64 %r2, t; }
	ld.param.v2.u32 	{%r3, %r4}, [k_param_1+8];
	st.local.u32 	[%rd58+-4], %r1;
	shfl.sync.bfly.b32 	%r2|%p2, %r1, 16, 31, -1;
	mov.f32 	%f1, 0fBF800000;
$L__BB0_2:
	ret;
}
	.file	1 "/work/main/k.cu"
	.section	.debug_str
	{
$L__info_string0:
.b8 95,90,0
	}
"#;

    #[test]
    fn parses_what_nvrtc_writes() {
        let m = parse(SMALL).unwrap();
        assert_eq!(m.version, "8.8");
        assert_eq!(m.target, ["sm_80"]);
        assert_eq!(m.files[&1], "/work/main/k.cu");
        assert_eq!(m.variables.len(), 2);
        assert_eq!(m.variables[0].init.len(), 3);
        assert_eq!(m.variables[1].array, Some(None));
        assert!(m.variables[1].external);
        let e = &m.entries[0];
        assert_eq!(e.name, "k");
        assert_eq!(e.params[1].array, Some(16));
        assert_eq!(e.params[1].align, Some(8));
        assert_eq!(e.maxntid, Some([128, 1, 1]));
        let insts: Vec<&Instruction> = e
            .body
            .iter()
            .filter_map(|s| match s {
                Stmt::Inst(i) => Some(i),
                _ => None,
            })
            .collect();
        assert_eq!(insts[1].guard, Some(("%p1".into(), true)));
        assert_eq!(insts[1].operands, [Operand::Name("$L__BB0_2".into())]);
        assert_eq!(insts[2].opcode, "cvta.to.shared.u64");
        assert_eq!(
            insts[4].operands[1],
            Operand::Address {
                base: Some("k_param_1".into()),
                offset: 8
            }
        );
        assert_eq!(
            insts[4].operands[0],
            Operand::Vector(vec![
                Operand::Name("%r3".into()),
                Operand::Name("%r4".into())
            ])
        );
        assert_eq!(
            insts[5].operands[0],
            Operand::Address {
                base: Some("%rd58".into()),
                offset: -4
            }
        );
        assert_eq!(
            insts[6].operands[0],
            Operand::Pair("%r2".into(), "%p2".into())
        );
        assert_eq!(insts[6].operands[4], Operand::Int(-1));
        assert_eq!(insts[7].operands[1], Operand::F32(0xBF80_0000));
        let loc = e.body.iter().find_map(|s| match s {
            Stmt::Loc(l) => Some(*l),
            _ => None,
        });
        assert_eq!(
            loc,
            Some(Loc {
                file: 1,
                line: 12,
                inlined_at: Some((1, 40))
            })
        );
        assert!(e.body.iter().any(|s| matches!(s, Stmt::Open)));
    }

    #[test]
    fn refuses_calls_and_unknown_directives() {
        let e = parse(".version 8.8\n.func f() { ret; }").unwrap_err();
        assert!(e.to_string().contains(".func"), "{e}");
        let e = parse(".version 8.8\n.bogus 3;").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn integer_literals() {
        assert_eq!(parse_int("0x10"), Some(16));
        assert_eq!(parse_int("-4294967296"), Some(-4294967296));
        assert_eq!(parse_int("010"), Some(8));
        assert_eq!(parse_int("0b101"), Some(5));
        assert_eq!(parse_int("7U"), Some(7));
        assert_eq!(parse_int("x"), None);
    }
}
