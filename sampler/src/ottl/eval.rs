//! Evaluating a compiled condition against one span or one span event.
//!
//! Values borrow from the span (the collector's encoded bytes) and from the compiled condition;
//! only `Concat`, and `IsMatch` on a number, build a string (ids' `.string` forms are spelled
//! out on the stack). Comparisons follow OTTL's rules:
//! numbers compare across int and float, strings and byte slices compare in byte order,
//! booleans and `nil` only for equality, and values of different types are never equal (so
//! `!=` is true) and never ordered.

use std::cmp::Ordering;
use std::fmt::Write as _;

use opentelemetry::KeyValue;

use super::parse::{CmpOp, Lit, MathOp, Node, Path};
use super::EvalError;
use crate::span::{find_attribute, unix_nanos, AttrValue, EventView, SpanView, StatusKind};

/// Lower-case hex digits of an id, on the stack.
fn hex<'b>(bytes: &[u8], buf: &'b mut [u8; 32]) -> &'b str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let n = bytes.len().min(16);
    for (i, b) in bytes[..n].iter().enumerate() {
        buf[2 * i] = DIGITS[usize::from(b >> 4)];
        buf[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
    // Only ASCII hex digits were written.
    std::str::from_utf8(&buf[..2 * n]).unwrap_or_default()
}

/// A value during evaluation: 24 bytes, borrowed from the span or the condition. The
/// `.string` forms of ids keep the id and are spelled out in hex only where a string is read.
#[derive(Debug, Clone)]
pub(super) enum Val<'a> {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
    Owned(Box<str>),
    Bytes(&'a [u8]),
    Id16([u8; 16]),
    Id8([u8; 8]),
    Hex16([u8; 16]),
    Hex8([u8; 8]),
}

impl Val<'_> {
    /// Calls `f` with the value's text if it is a string.
    fn text<R>(&self, f: impl FnOnce(&str) -> R) -> Option<R> {
        let mut buf = [0; 32];
        match self {
            Val::Str(s) => Some(f(s)),
            Val::Owned(s) => Some(f(s)),
            Val::Hex16(id) => Some(f(hex(id, &mut buf))),
            Val::Hex8(id) => Some(f(hex(id, &mut buf))),
            _ => None,
        }
    }

    fn is_string(&self) -> bool {
        matches!(
            self,
            Val::Str(_) | Val::Owned(_) | Val::Hex16(_) | Val::Hex8(_)
        )
    }

    fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Val::Bytes(b) => Some(b),
            Val::Id16(b) => Some(b),
            Val::Id8(b) => Some(b),
            _ => None,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Val::Nil => "nil",
            Val::Bool(_) => "a bool",
            Val::Int(_) => "an int",
            Val::Float(_) => "a double",
            Val::Str(_) | Val::Owned(_) | Val::Hex16(_) | Val::Hex8(_) => "a string",
            Val::Bytes(_) | Val::Id16(_) | Val::Id8(_) => "a byte slice",
        }
    }

    /// Appends the value as OTTL's string-like getters read it; false (nothing written) for
    /// nil.
    fn write_string_like(&self, out: &mut String) -> bool {
        match self {
            Val::Nil => return false,
            Val::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Val::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Val::Float(f) => {
                let _ = write!(out, "{f}");
            }
            Val::Bytes(_) | Val::Id16(_) | Val::Id8(_) => {
                for b in self.as_bytes().unwrap_or_default() {
                    let _ = write!(out, "{b:02x}");
                }
            }
            text => {
                text.text(|s| out.push_str(s));
            }
        }
        true
    }
}

fn attr(v: Option<AttrValue<'_>>) -> Val<'_> {
    match v {
        Some(AttrValue::Str(s)) => Val::Str(s),
        Some(AttrValue::I64(i)) => Val::Int(i),
        Some(AttrValue::F64(f)) => Val::Float(f),
        Some(AttrValue::Bool(b)) => Val::Bool(b),
        None => Val::Nil,
    }
}

/// What a condition reads: one span, or one event of it, with the resource attributes the
/// sampler was given (the SDK's provider resource; empty in the collector, whose spans carry
/// their own).
pub(super) struct Env<'a, S, E> {
    pub(super) span: &'a S,
    pub(super) event: Option<&'a E>,
    pub(super) resource: &'a [KeyValue],
}

impl<'a, S: SpanView, E: EventView> Env<'a, S, E> {
    fn path(&self, path: &'a Path) -> Val<'a> {
        let s = self.span;
        match path {
            Path::Name => Val::Str(s.name()),
            Path::Kind => Val::Int(s.kind() as i64),
            Path::KindString => Val::Str(s.kind().name()),
            Path::StatusCode => Val::Int(match s.status() {
                StatusKind::Unset => 0,
                StatusKind::Ok => 1,
                StatusKind::Error => 2,
            }),
            Path::StatusMessage => Val::Str(s.status_message()),
            Path::Attribute(k) => attr(s.span_attribute(k)),
            Path::ResourceAttribute(k) => attr(
                s.resource_attribute(k)
                    .or_else(|| find_attribute(self.resource, k)),
            ),
            Path::ScopeName => Val::Str(s.scope_name()),
            Path::ScopeVersion => Val::Str(s.scope_version()),
            Path::TraceId => Val::Id16(s.trace_id().to_bytes()),
            Path::TraceIdString => Val::Hex16(s.trace_id().to_bytes()),
            Path::SpanId => Val::Id8(s.span_id()),
            Path::SpanIdString => Val::Hex8(s.span_id()),
            Path::ParentSpanId => Val::Id8(s.parent_span_id()),
            Path::ParentSpanIdString => Val::Hex8(s.parent_span_id()),
            Path::StartTimeUnixNano => Val::Int(nanos_i64(unix_nanos(s.start_time()))),
            Path::EndTimeUnixNano => Val::Int(nanos_i64(unix_nanos(s.end_time()))),
            Path::TraceState(k) => s.trace_state(k).map_or(Val::Nil, Val::Str),
            Path::EventName => self.event.map_or(Val::Nil, |e| Val::Str(e.name())),
            Path::EventTimeUnixNano => self
                .event
                .map_or(Val::Nil, |e| Val::Int(nanos_i64(e.time_unix_nano()))),
            Path::EventAttribute(k) => self.event.map_or(Val::Nil, |e| attr(e.attribute(k))),
        }
    }

    /// Evaluates a condition node (the parser guarantees it is one).
    pub(super) fn test(&self, node: &'a Node) -> Result<bool, EvalError> {
        Ok(match node {
            Node::Or(items) => {
                for n in items.iter() {
                    if self.test(n)? {
                        return Ok(true);
                    }
                }
                false
            }
            Node::And(items) => {
                for n in items.iter() {
                    if !self.test(n)? {
                        return Ok(false);
                    }
                }
                true
            }
            Node::Not(n) => !self.test(n)?,
            Node::Cmp(op, sides) => {
                let (l, r) = (self.operand(&sides.0)?, self.operand(&sides.1)?);
                compare(*op, &l, &r)
            }
            Node::IsMatch(target, regex) => {
                let v = self.operand(target)?;
                match v.text(|s| regex.is_match(s)) {
                    Some(hit) => hit,
                    None if matches!(v, Val::Nil) => false,
                    None => {
                        let mut s = String::new();
                        v.write_string_like(&mut s);
                        regex.is_match(&s)
                    }
                }
            }
            Node::IsString(v) => self.operand(v)?.is_string(),
            Node::IsInt(v) => matches!(self.value(v)?, Val::Int(_)),
            Node::IsBool(v) => matches!(self.value(v)?, Val::Bool(_)),
            Node::IsDouble(v) => matches!(self.value(v)?, Val::Float(_)),
            Node::IsRootSpan => self.span.parent_span_id() == [0; 8],
            Node::Lit(Lit::Bool(b)) => *b,
            _ => match self.value(node)? {
                Val::Bool(b) => b,
                other => {
                    return Err(EvalError(format!(
                        "expected a condition, got {}",
                        other.type_name()
                    )))
                }
            },
        })
    }

    /// A comparison's operand: paths and literals (nearly every operand) without the call to
    /// [`Self::value`], which the compiler cannot inline into a recursion.
    #[inline(always)]
    fn operand(&self, node: &'a Node) -> Result<Val<'a>, EvalError> {
        match node {
            Node::Lit(lit) => Ok(literal(lit)),
            Node::Path(p) => Ok(self.path(p)),
            _ => self.value(node),
        }
    }

    /// Evaluates a value node; a condition node yields its boolean.
    pub(super) fn value(&self, node: &'a Node) -> Result<Val<'a>, EvalError> {
        Ok(match node {
            Node::Lit(lit) => literal(lit),
            Node::Path(p) => self.path(p),
            Node::Math(op, sides) => {
                let (l, r) = (self.value(&sides.0)?, self.value(&sides.1)?);
                math(*op, &l, &r)?
            }
            Node::Len(v) => {
                let v = self.value(v)?;
                match v.text(str::len) {
                    Some(len) => Val::Int(len as i64),
                    None => {
                        return Err(EvalError(format!(
                            "`Len` takes a string, got {}",
                            v.type_name()
                        )))
                    }
                }
            }
            Node::Concat(values, delimiter) => {
                let delimiter = self.value(delimiter)?;
                let Some(delimiter) = delimiter.text(str::to_owned) else {
                    return Err(EvalError(format!(
                        "`Concat` takes a string delimiter, got {}",
                        delimiter.type_name()
                    )));
                };
                let mut out = String::new();
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&delimiter);
                    }
                    if !self.value(v)?.write_string_like(&mut out) {
                        out.push_str("<nil>");
                    }
                }
                Val::Owned(out.into_boxed_str())
            }
            Node::List(_) => return Err(EvalError("a list is not a value".to_owned())),
            condition => Val::Bool(self.test(condition)?),
        })
    }
}

#[inline(always)]
fn literal(lit: &Lit) -> Val<'_> {
    match lit {
        Lit::Nil => Val::Nil,
        Lit::Bool(b) => Val::Bool(*b),
        Lit::Int(i) => Val::Int(*i),
        Lit::Float(f) => Val::Float(*f),
        Lit::Str(s) => Val::Str(s),
        Lit::Bytes(b) => Val::Bytes(b),
    }
}

fn nanos_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// OTTL's comparison of two values (see the module docs).
pub(super) fn compare(op: CmpOp, l: &Val<'_>, r: &Val<'_>) -> bool {
    // The common case first: a string attribute tested for equality (lengths first).
    if let (Val::Str(a), Val::Str(b), CmpOp::Eq | CmpOp::Ne) = (l, r, op) {
        return bytes_eq(a.as_bytes(), b.as_bytes()) == (op == CmpOp::Eq);
    }
    let order = match (l, r) {
        (Val::Nil, Val::Nil) => {
            Some(Ordering::Equal).filter(|_| matches!(op, CmpOp::Eq | CmpOp::Ne))
        }
        (Val::Bool(a), Val::Bool(b)) => {
            if !matches!(op, CmpOp::Eq | CmpOp::Ne) {
                return false;
            }
            Some(a.cmp(b))
        }
        (Val::Int(a), Val::Int(b)) => Some(a.cmp(b)),
        (Val::Int(a), Val::Float(b)) => (*a as f64).partial_cmp(b),
        (Val::Float(a), Val::Int(b)) => a.partial_cmp(&(*b as f64)),
        (Val::Float(a), Val::Float(b)) => a.partial_cmp(b),
        _ => match (l.as_bytes(), r.as_bytes()) {
            (Some(a), Some(b)) => Some(a.cmp(b)),
            _ => l.text(|a| r.text(|b| a.cmp(b))).flatten(),
        },
    };
    match (op, order) {
        (CmpOp::Eq, o) => o == Some(Ordering::Equal),
        (CmpOp::Ne, o) => o != Some(Ordering::Equal),
        (CmpOp::Lt, o) => o == Some(Ordering::Less),
        (CmpOp::Le, o) => matches!(o, Some(Ordering::Less | Ordering::Equal)),
        (CmpOp::Gt, o) => o == Some(Ordering::Greater),
        (CmpOp::Ge, o) => matches!(o, Some(Ordering::Greater | Ordering::Equal)),
    }
}

/// Byte equality that compares short values (most attribute values) in registers: a call to
/// the C library's `memcmp` for them cost more than the rest of a comparison.
#[inline]
pub(super) fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| {
        let mut w = [0; 8];
        w.copy_from_slice(&s[at..at + 8]);
        u64::from_ne_bytes(w)
    };
    match n {
        0 => true,
        1..=7 => a.iter().zip(b).all(|(x, y)| x == y),
        // Two words that overlap when n < 16 cover every byte.
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        _ => a == b,
    }
}

/// OTTL arithmetic: both sides ints, or both doubles.
fn math<'a>(op: MathOp, l: &Val<'_>, r: &Val<'_>) -> Result<Val<'a>, EvalError> {
    let sign = match op {
        MathOp::Add => "+",
        MathOp::Sub => "-",
        MathOp::Mul => "*",
        MathOp::Div => "/",
    };
    match (l, r) {
        (Val::Int(a), Val::Int(b)) => Ok(Val::Int(match op {
            MathOp::Add => a.wrapping_add(*b),
            MathOp::Sub => a.wrapping_sub(*b),
            MathOp::Mul => a.wrapping_mul(*b),
            MathOp::Div => {
                if *b == 0 {
                    return Err(EvalError("division by zero".to_owned()));
                }
                a.wrapping_div(*b)
            }
        })),
        (Val::Float(a), Val::Float(b)) => Ok(Val::Float(match op {
            MathOp::Add => a + b,
            MathOp::Sub => a - b,
            MathOp::Mul => a * b,
            MathOp::Div => {
                if *b == 0.0 {
                    return Err(EvalError("division by zero".to_owned()));
                }
                a / b
            }
        })),
        _ => Err(EvalError(format!(
            "cannot compute {} {sign} {}: both sides must be ints or both doubles",
            l.type_name(),
            r.type_name()
        ))),
    }
}
