//! From tokens to a compiled condition: a recursive-descent parser that resolves paths, enum
//! symbols and functions as it goes, and checks that the result is a condition.
//!
//! Precedence, loosest first, as in OTTL: `or`, `and`, `not`, comparisons, `+ -`, `* /`.
//! Everything the evaluator would otherwise have to find out per span is settled here: which
//! field a path reads, which context it belongs to, each function's arguments, the regular
//! expressions of `IsMatch`.

use regex::Regex;

use super::lex::{Tok, Token};
use super::{CompileError, Context};

/// Deepest nesting of parentheses, calls and `not` accepted, so no condition can exhaust the
/// stack while it is parsed or evaluated.
const MAX_DEPTH: usize = 64;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// An arithmetic operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MathOp {
    Add,
    Sub,
    Mul,
    Div,
}

/// A literal.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Lit {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Box<str>),
    Bytes(Box<[u8]>),
}

/// A field a path reads, resolved for its context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Path {
    Name,
    Kind,
    KindString,
    StatusCode,
    StatusMessage,
    Attribute(Box<str>),
    ResourceAttribute(Box<str>),
    ScopeName,
    ScopeVersion,
    TraceId,
    TraceIdString,
    SpanId,
    SpanIdString,
    ParentSpanId,
    ParentSpanIdString,
    StartTimeUnixNano,
    EndTimeUnixNano,
    TraceState(Box<str>),
    EventName,
    EventTimeUnixNano,
    EventAttribute(Box<str>),
}

/// A compiled expression. Conditions (`Or` to `IsRootSpan`, and boolean literals) yield a
/// boolean; the others yield a value.
#[derive(Debug)]
pub(super) enum Node {
    Or(Box<[Node]>),
    And(Box<[Node]>),
    Not(Box<Node>),
    Cmp(CmpOp, Box<(Node, Node)>),
    IsMatch(Box<Node>, Box<Regex>),
    IsString(Box<Node>),
    IsInt(Box<Node>),
    IsBool(Box<Node>),
    IsDouble(Box<Node>),
    IsRootSpan,
    Lit(Lit),
    Path(Path),
    Math(MathOp, Box<(Node, Node)>),
    Len(Box<Node>),
    Concat(Box<[Node]>, Box<Node>),
    /// A list literal: only as `Concat`'s first argument.
    List(Box<[Node]>),
}

impl Node {
    /// True for nodes that yield a boolean by construction.
    pub(super) fn is_condition(&self) -> bool {
        matches!(
            self,
            Node::Or(_)
                | Node::And(_)
                | Node::Not(_)
                | Node::Cmp(..)
                | Node::IsMatch(..)
                | Node::IsString(_)
                | Node::IsInt(_)
                | Node::IsBool(_)
                | Node::IsDouble(_)
                | Node::IsRootSpan
                | Node::Lit(Lit::Bool(_))
        )
    }

    /// True for nodes built from `and`, `or`, `not` or a comparison: these can only be combined
    /// with each other, never compared or computed with.
    fn is_logic(&self) -> bool {
        matches!(
            self,
            Node::Or(_) | Node::And(_) | Node::Not(_) | Node::Cmp(..)
        )
    }
}

/// The converters a condition may call.
pub(super) const FUNCTIONS: &str =
    "IsMatch, IsString, IsInt, IsBool, IsDouble, IsRootSpan, Len, Concat, TraceID, SpanID";

/// Span paths, as listed in errors.
const SPAN_PATHS: &str = "name, kind, kind.string, status.code, status.message, \
attributes[\"key\"], resource.attributes[\"key\"], instrumentation_scope.name, \
instrumentation_scope.version, trace_id, trace_id.string, span_id, span_id.string, \
parent_span_id, parent_span_id.string, start_time_unix_nano, end_time_unix_nano, \
trace_state[\"key\"]";

/// Span event paths, as listed in errors.
const EVENT_PATHS: &str = "name, time_unix_nano, attributes[\"key\"], span.<any span path>, \
resource.attributes[\"key\"], instrumentation_scope.name, instrumentation_scope.version";

/// Parses one condition.
/// `end` is the column just past the condition's text, where "the end of the condition" is.
pub(super) fn condition(
    tokens: &[Token],
    end: usize,
    context: Context,
) -> Result<Node, CompileError> {
    let mut p = Parser {
        tokens,
        pos: 0,
        depth: 0,
        end,
        context,
    };
    if tokens.is_empty() {
        return Err(CompileError::whole("the condition is empty"));
    }
    let node = p.or()?;
    if let Some(t) = p.peek() {
        return Err(CompileError::at(
            t.at,
            format!("unexpected {} after a complete condition", t.tok.describe()),
        ));
    }
    if !node.is_condition() {
        return Err(CompileError::whole(
            "the condition is a value, not a condition: compare it (`== true`, `!= nil`) or \
             call a converter that tests it",
        ));
    }
    Ok(node)
}

struct Parser<'t> {
    tokens: &'t [Token],
    pos: usize,
    depth: usize,
    end: usize,
    context: Context,
}

/// One step of a path: a field name or a `["key"]`.
enum Segment {
    Field(String),
    Key(String),
}

impl<'t> Parser<'t> {
    fn peek(&self) -> Option<&'t Token> {
        self.tokens.get(self.pos)
    }

    fn peek_tok(&self) -> Option<&'t Tok> {
        self.peek().map(|t| &t.tok)
    }

    /// Column of the next token, or just past the text.
    fn here(&self) -> usize {
        self.peek().map_or(self.end, |t| t.at)
    }

    fn bump(&mut self) -> Option<&'t Token> {
        let t = self.tokens.get(self.pos);
        self.pos += 1;
        t
    }

    fn is_ident(&self, word: &str) -> bool {
        matches!(self.peek_tok(), Some(Tok::Ident(w)) if w == word)
    }

    fn expect(&mut self, want: &Tok, what: &str) -> Result<(), CompileError> {
        match self.peek() {
            Some(t) if &t.tok == want => {
                self.pos += 1;
                Ok(())
            }
            Some(t) => Err(CompileError::at(
                t.at,
                format!("expected {what}, found {}", t.tok.describe()),
            )),
            None => Err(CompileError::at(
                self.here(),
                format!("expected {what}, found the end of the condition"),
            )),
        }
    }

    fn enter(&mut self) -> Result<(), CompileError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(CompileError::at(
                self.here(),
                format!("the condition nests more than {MAX_DEPTH} levels deep"),
            ));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Node, CompileError> {
        let at = self.here();
        let mut items = vec![self.and()?];
        while self.is_ident("or") {
            self.pos += 1;
            items.push(self.and()?);
        }
        logic(items, at, "or", Node::Or)
    }

    fn and(&mut self) -> Result<Node, CompileError> {
        let at = self.here();
        let mut items = vec![self.not()?];
        while self.is_ident("and") {
            self.pos += 1;
            items.push(self.not()?);
        }
        logic(items, at, "and", Node::And)
    }

    fn not(&mut self) -> Result<Node, CompileError> {
        if self.is_ident("not") {
            let at = self.here();
            self.pos += 1;
            self.enter()?;
            let inner = self.not()?;
            self.depth -= 1;
            if !inner.is_condition() {
                return Err(CompileError::at(
                    at,
                    "`not` applies to a condition, not a value",
                ));
            }
            return Ok(Node::Not(Box::new(inner)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Node, CompileError> {
        let left_at = self.here();
        let left = self.sum()?;
        let op = match self.peek_tok() {
            Some(Tok::Eq) => CmpOp::Eq,
            Some(Tok::Ne) => CmpOp::Ne,
            Some(Tok::Lt) => CmpOp::Lt,
            Some(Tok::Le) => CmpOp::Le,
            Some(Tok::Gt) => CmpOp::Gt,
            Some(Tok::Ge) => CmpOp::Ge,
            Some(Tok::Assign) => {
                return Err(CompileError::at(
                    self.here(),
                    "unexpected `=` (compare with `==`)",
                ))
            }
            _ => return Ok(left),
        };
        self.pos += 1;
        let right_at = self.here();
        let right = self.sum()?;
        for (node, at) in [(&left, left_at), (&right, right_at)] {
            if node.is_logic() {
                return Err(CompileError::at(
                    at,
                    "a comparison's operands are values; a condition cannot be compared",
                ));
            }
            operand(node, at)?;
        }
        if matches!(
            self.peek_tok(),
            Some(Tok::Eq | Tok::Ne | Tok::Lt | Tok::Le | Tok::Gt | Tok::Ge)
        ) {
            return Err(CompileError::at(
                self.here(),
                "comparisons do not chain: join them with `and`",
            ));
        }
        Ok(Node::Cmp(op, Box::new((left, right))))
    }

    fn sum(&mut self) -> Result<Node, CompileError> {
        let mut left = self.product()?;
        loop {
            let op = match self.peek_tok() {
                Some(Tok::Plus) => MathOp::Add,
                Some(Tok::Minus) => MathOp::Sub,
                _ => return Ok(left),
            };
            let at = self.here();
            self.pos += 1;
            let right = self.product()?;
            left = math(op, left, right, at)?;
        }
    }

    fn product(&mut self) -> Result<Node, CompileError> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek_tok() {
                Some(Tok::Star) => MathOp::Mul,
                Some(Tok::Slash) => MathOp::Div,
                _ => return Ok(left),
            };
            let at = self.here();
            self.pos += 1;
            let right = self.unary()?;
            left = math(op, left, right, at)?;
        }
    }

    fn unary(&mut self) -> Result<Node, CompileError> {
        let negative = match self.peek_tok() {
            Some(Tok::Minus) => true,
            Some(Tok::Plus) => false,
            _ => return self.primary(),
        };
        let at = self.here();
        self.pos += 1;
        match self.bump().map(|t| &t.tok) {
            Some(Tok::Int(i)) => Ok(Node::Lit(Lit::Int(if negative {
                i.wrapping_neg()
            } else {
                *i
            }))),
            Some(Tok::Float(f)) => Ok(Node::Lit(Lit::Float(if negative { -f } else { *f }))),
            _ => Err(CompileError::at(
                at,
                "a sign applies only to a number literal (write `0 - x` to negate a value)",
            )),
        }
    }

    fn primary(&mut self) -> Result<Node, CompileError> {
        let Some(token) = self.bump() else {
            return Err(CompileError::at(
                self.here(),
                "expected a value, found the end of the condition",
            ));
        };
        let at = token.at;
        match &token.tok {
            Tok::LParen => {
                self.enter()?;
                let inner = self.or()?;
                self.depth -= 1;
                self.expect(&Tok::RParen, "`)`")?;
                Ok(inner)
            }
            Tok::LBracket => {
                self.enter()?;
                let items = self.list(&Tok::RBracket, "`,` or `]`")?;
                self.depth -= 1;
                Ok(Node::List(items.into_iter().map(|(n, _)| n).collect()))
            }
            Tok::Str(s) => Ok(Node::Lit(Lit::Str(s.as_str().into()))),
            Tok::Int(i) => Ok(Node::Lit(Lit::Int(*i))),
            Tok::Float(f) => Ok(Node::Lit(Lit::Float(*f))),
            Tok::Bytes(b) => Ok(Node::Lit(Lit::Bytes(b.as_slice().into()))),
            Tok::Ident(word) => self.word(word, at),
            other => Err(CompileError::at(
                at,
                format!("expected a value, found {}", other.describe()),
            )),
        }
    }

    /// Values separated by commas up to `close` (already past the opening token).
    fn list(&mut self, close: &Tok, what: &str) -> Result<Vec<(Node, usize)>, CompileError> {
        let mut items = Vec::new();
        if self.peek_tok() == Some(close) {
            self.pos += 1;
            return Ok(items);
        }
        loop {
            let at = self.here();
            if matches!(self.peek_tok(), Some(Tok::Ident(_)))
                && matches!(
                    self.tokens.get(self.pos + 1).map(|t| &t.tok),
                    Some(Tok::Assign)
                )
            {
                return Err(CompileError::at(
                    at,
                    "named arguments are not supported: pass arguments in order",
                ));
            }
            items.push((self.or()?, at));
            match self.peek_tok() {
                Some(Tok::Comma) => self.pos += 1,
                Some(t) if t == close => {
                    self.pos += 1;
                    return Ok(items);
                }
                _ => {
                    return Err(match self.peek() {
                        Some(t) => CompileError::at(
                            t.at,
                            format!("expected {what}, found {}", t.tok.describe()),
                        ),
                        None => CompileError::at(
                            self.here(),
                            format!("expected {what}, found the end of the condition"),
                        ),
                    })
                }
            }
        }
    }

    /// A keyword, enum symbol, function call or path starting with `word`.
    fn word(&mut self, word: &str, at: usize) -> Result<Node, CompileError> {
        match word {
            "true" => return Ok(Node::Lit(Lit::Bool(true))),
            "false" => return Ok(Node::Lit(Lit::Bool(false))),
            "nil" => return Ok(Node::Lit(Lit::Nil)),
            "and" | "or" | "not" => {
                return Err(CompileError::at(
                    at,
                    format!("expected a value, found `{word}`"),
                ))
            }
            _ => {}
        }
        let call = self.peek_tok() == Some(&Tok::LParen);
        let upper = word.starts_with(|c: char| c.is_ascii_uppercase());
        if call {
            self.pos += 1;
            if !upper {
                return Err(CompileError::at(
                    at,
                    format!(
                        "`{word}` is an editor; a condition can only call converters ({FUNCTIONS})"
                    ),
                ));
            }
            self.enter()?;
            let args = self.list(&Tok::RParen, "`,` or `)`")?;
            self.depth -= 1;
            return self.function(word, args, at);
        }
        if upper {
            return enum_symbol(word, at);
        }
        let segments = self.path_segments(word, at)?;
        resolve(self.context, &segments, at)
    }

    fn path_segments(&mut self, first: &str, at: usize) -> Result<Vec<Segment>, CompileError> {
        let mut segments = vec![Segment::Field(first.to_owned())];
        loop {
            match self.peek_tok() {
                Some(Tok::Dot) => {
                    self.pos += 1;
                    match self.bump().map(|t| &t.tok) {
                        Some(Tok::Ident(f)) => segments.push(Segment::Field(f.clone())),
                        _ => {
                            return Err(CompileError::at(
                                at,
                                "a `.` in a path must be followed by a field name",
                            ))
                        }
                    }
                }
                Some(Tok::LBracket) => {
                    self.pos += 1;
                    let key_at = self.here();
                    match self.bump().map(|t| &t.tok) {
                        Some(Tok::Str(k)) => segments.push(Segment::Key(k.clone())),
                        _ => return Err(CompileError::at(
                            key_at,
                            "a path's key must be a string literal, as in `attributes[\"key\"]`",
                        )),
                    }
                    self.expect(&Tok::RBracket, "`]`")?;
                }
                _ => return Ok(segments),
            }
        }
    }

    fn function(
        &mut self,
        name: &str,
        args: Vec<(Node, usize)>,
        at: usize,
    ) -> Result<Node, CompileError> {
        let count = args.len();
        let arity = |n: usize| {
            if count == n {
                Ok(())
            } else {
                Err(CompileError::at(
                    at,
                    format!(
                        "`{name}` takes {n} argument{}, got {}",
                        if n == 1 { "" } else { "s" },
                        count
                    ),
                ))
            }
        };
        let mut args = args.into_iter();
        let value = |args: &mut std::vec::IntoIter<(Node, usize)>| -> Result<Node, CompileError> {
            let (node, at) = args.next().expect("arity checked");
            if node.is_logic() {
                return Err(CompileError::at(
                    at,
                    format!("`{name}` takes a value here, not a condition"),
                ));
            }
            operand(&node, at)?;
            Ok(node)
        };
        match name {
            "IsMatch" => {
                arity(2)?;
                let target = value(&mut args)?;
                let (pattern, pattern_at) = args.next().expect("arity checked");
                let Node::Lit(Lit::Str(pattern)) = pattern else {
                    return Err(CompileError::at(
                        pattern_at,
                        "`IsMatch` takes its pattern as a string literal",
                    ));
                };
                let regex = Regex::new(&pattern).map_err(|e| {
                    CompileError::at(
                        pattern_at,
                        format!("`IsMatch` pattern is not a valid regular expression: {e}"),
                    )
                })?;
                Ok(Node::IsMatch(Box::new(target), Box::new(regex)))
            }
            "IsString" | "IsInt" | "IsBool" | "IsDouble" | "Len" => {
                arity(1)?;
                let v = Box::new(value(&mut args)?);
                Ok(match name {
                    "IsString" => Node::IsString(v),
                    "IsInt" => Node::IsInt(v),
                    "IsBool" => Node::IsBool(v),
                    "IsDouble" => Node::IsDouble(v),
                    _ => Node::Len(v),
                })
            }
            "IsRootSpan" => {
                arity(0)?;
                if self.context != Context::Span {
                    return Err(CompileError::at(
                        at,
                        "`IsRootSpan` is only available in span conditions",
                    ));
                }
                Ok(Node::IsRootSpan)
            }
            "Concat" => {
                arity(2)?;
                let (values, values_at) = args.next().expect("arity checked");
                let Node::List(values) = values else {
                    return Err(CompileError::at(
                        values_at,
                        "`Concat` takes a list literal first, as in `Concat([name, \"x\"], \"-\")`",
                    ));
                };
                for v in values.iter() {
                    if v.is_logic() || matches!(v, Node::List(_)) {
                        return Err(CompileError::at(
                            values_at,
                            "`Concat` takes values, not conditions or lists",
                        ));
                    }
                }
                let delimiter = value(&mut args)?;
                Ok(Node::Concat(values, Box::new(delimiter)))
            }
            "TraceID" | "SpanID" => {
                arity(1)?;
                let len = if name == "TraceID" { 16 } else { 8 };
                let (bytes, bytes_at) = args.next().expect("arity checked");
                match bytes {
                    Node::Lit(Lit::Bytes(b)) if b.len() == len => Ok(Node::Lit(Lit::Bytes(b))),
                    _ => Err(CompileError::at(
                        bytes_at,
                        format!(
                            "`{name}` takes a {len}-byte literal, as in `{name}(0x{})`",
                            "00".repeat(len)
                        ),
                    )),
                }
            }
            _ => Err(CompileError::at(
                at,
                format!("function `{name}` is not supported (supported: {FUNCTIONS})"),
            )),
        }
    }
}

/// Refuses a list where a value is expected.
fn operand(node: &Node, at: usize) -> Result<(), CompileError> {
    if matches!(node, Node::List(_)) {
        return Err(CompileError::at(
            at,
            "a list literal is only accepted as the first argument of `Concat`",
        ));
    }
    Ok(())
}

fn math(op: MathOp, left: Node, right: Node, at: usize) -> Result<Node, CompileError> {
    for node in [&left, &right] {
        if node.is_condition() || matches!(node, Node::List(_)) {
            return Err(CompileError::at(
                at,
                "arithmetic takes numbers, not conditions or lists",
            ));
        }
    }
    Ok(Node::Math(op, Box::new((left, right))))
}

fn logic(
    mut items: Vec<Node>,
    at: usize,
    word: &str,
    build: fn(Box<[Node]>) -> Node,
) -> Result<Node, CompileError> {
    if items.len() == 1 {
        return Ok(items.remove(0));
    }
    if items.iter().any(|n| !n.is_condition()) {
        return Err(CompileError::at(
            at,
            format!("`{word}` joins conditions; one side is a value (compare it first)"),
        ));
    }
    Ok(build(items.into_boxed_slice()))
}

fn enum_symbol(word: &str, at: usize) -> Result<Node, CompileError> {
    let value = match word {
        "SPAN_KIND_UNSPECIFIED" | "STATUS_CODE_UNSET" => 0,
        "SPAN_KIND_INTERNAL" | "STATUS_CODE_OK" => 1,
        "SPAN_KIND_SERVER" | "STATUS_CODE_ERROR" => 2,
        "SPAN_KIND_CLIENT" => 3,
        "SPAN_KIND_PRODUCER" => 4,
        "SPAN_KIND_CONSUMER" => 5,
        _ => {
            return Err(CompileError::at(
                at,
                format!(
                    "unknown enum `{word}` (known: SPAN_KIND_UNSPECIFIED, SPAN_KIND_INTERNAL, \
                     SPAN_KIND_SERVER, SPAN_KIND_CLIENT, SPAN_KIND_PRODUCER, SPAN_KIND_CONSUMER, \
                     STATUS_CODE_UNSET, STATUS_CODE_OK, STATUS_CODE_ERROR)"
                ),
            ))
        }
    };
    Ok(Node::Lit(Lit::Int(value)))
}

/// How a path is written, for errors: `attributes["k"].x`.
fn written(segments: &[Segment]) -> String {
    let mut out = String::new();
    for s in segments {
        match s {
            Segment::Field(f) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(f);
            }
            Segment::Key(k) => out.push_str(&format!("[{k:?}]")),
        }
    }
    out
}

/// The field `segments` read in `context`.
fn resolve(context: Context, segments: &[Segment], at: usize) -> Result<Node, CompileError> {
    let unsupported = || {
        let (which, list) = match context {
            Context::Span => ("span", SPAN_PATHS),
            Context::SpanEvent => ("span event", EVENT_PATHS),
        };
        CompileError::at(
            at,
            format!(
                "path `{}` is not supported in {which} conditions (supported: {list})",
                written(segments)
            ),
        )
    };
    let path = match (field(segments, 0), field(segments, 1)) {
        (Some("resource"), Some("attributes")) => key(segments, 2).map(Path::ResourceAttribute),
        (Some("instrumentation_scope"), Some("name")) if segments.len() == 2 => {
            Some(Path::ScopeName)
        }
        (Some("instrumentation_scope"), Some("version")) if segments.len() == 2 => {
            Some(Path::ScopeVersion)
        }
        (Some("span"), _) => span_path(&segments[1..]),
        (Some("spanevent"), _) if context == Context::SpanEvent => event_path(&segments[1..]),
        _ => match context {
            Context::Span => span_path(segments),
            Context::SpanEvent => event_path(segments),
        },
    };
    path.map(Node::Path).ok_or_else(unsupported)
}

/// The field name at `i`, if that segment is one.
fn field(segments: &[Segment], i: usize) -> Option<&str> {
    match segments.get(i) {
        Some(Segment::Field(f)) => Some(f.as_str()),
        _ => None,
    }
}

/// The key at `i`, if that segment is a key and the last one (nested keys are not supported).
fn key(segments: &[Segment], i: usize) -> Option<Box<str>> {
    match segments.get(i) {
        Some(Segment::Key(k)) if segments.len() == i + 1 => Some(k.as_str().into()),
        _ => None,
    }
}

fn span_path(segments: &[Segment]) -> Option<Path> {
    let only = |n: usize, p: Path| (segments.len() == n).then_some(p);
    match (field(segments, 0)?, field(segments, 1)) {
        ("name", None) => only(1, Path::Name),
        ("kind", None) => only(1, Path::Kind),
        ("kind", Some("string")) => only(2, Path::KindString),
        ("status", Some("code")) => only(2, Path::StatusCode),
        ("status", Some("message")) => only(2, Path::StatusMessage),
        ("attributes", None) => key(segments, 1).map(Path::Attribute),
        ("trace_state", None) => key(segments, 1).map(Path::TraceState),
        ("trace_id", None) => only(1, Path::TraceId),
        ("trace_id", Some("string")) => only(2, Path::TraceIdString),
        ("span_id", None) => only(1, Path::SpanId),
        ("span_id", Some("string")) => only(2, Path::SpanIdString),
        ("parent_span_id", None) => only(1, Path::ParentSpanId),
        ("parent_span_id", Some("string")) => only(2, Path::ParentSpanIdString),
        ("start_time_unix_nano", None) => only(1, Path::StartTimeUnixNano),
        ("end_time_unix_nano", None) => only(1, Path::EndTimeUnixNano),
        _ => None,
    }
}

fn event_path(segments: &[Segment]) -> Option<Path> {
    match field(segments, 0)? {
        "name" if segments.len() == 1 => Some(Path::EventName),
        "time_unix_nano" if segments.len() == 1 => Some(Path::EventTimeUnixNano),
        "attributes" => key(segments, 1).map(Path::EventAttribute),
        _ => None,
    }
}
