//! Tokens of an OTTL condition.
//!
//! The lexer follows the OTTL grammar's token classes: identifiers (paths, keywords, enum symbols
//! and function names), double-quoted strings with Go's escapes, integers, floats, byte slices
//! (`0x0102`), and the punctuation of comparisons, math and calls. Positions are character
//! columns, counted from 1, so an error can point at what it refuses.

use super::CompileError;

/// One token and the column it starts at.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Token {
    pub(super) tok: Tok,
    pub(super) at: usize,
}

/// What a token is.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    Float(f64),
    Bytes(Vec<u8>),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Dot,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Plus,
    Minus,
    Star,
    Slash,
    Assign,
}

impl Tok {
    /// How the token is written, for error messages.
    pub(super) fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Str(s) => format!("the string {s:?}"),
            Tok::Int(i) => format!("`{i}`"),
            Tok::Float(f) => format!("`{f}`"),
            Tok::Bytes(_) => "a byte literal".to_owned(),
            Tok::LParen => "`(`".to_owned(),
            Tok::RParen => "`)`".to_owned(),
            Tok::LBracket => "`[`".to_owned(),
            Tok::RBracket => "`]`".to_owned(),
            Tok::Comma => "`,`".to_owned(),
            Tok::Dot => "`.`".to_owned(),
            Tok::Eq => "`==`".to_owned(),
            Tok::Ne => "`!=`".to_owned(),
            Tok::Lt => "`<`".to_owned(),
            Tok::Le => "`<=`".to_owned(),
            Tok::Gt => "`>`".to_owned(),
            Tok::Ge => "`>=`".to_owned(),
            Tok::Plus => "`+`".to_owned(),
            Tok::Minus => "`-`".to_owned(),
            Tok::Star => "`*`".to_owned(),
            Tok::Slash => "`/`".to_owned(),
            Tok::Assign => "`=`".to_owned(),
        }
    }
}

/// Splits `text` into tokens.
pub(super) fn tokens(text: &str) -> Result<Vec<Token>, CompileError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let at = i + 1;
        let single = |tok| Token { tok, at };
        let next = chars.get(i + 1).copied();
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '(' | ')' | '[' | ']' | ',' | '.' | '+' | '-' | '*' | '/' => {
                out.push(single(match c {
                    '(' => Tok::LParen,
                    ')' => Tok::RParen,
                    '[' => Tok::LBracket,
                    ']' => Tok::RBracket,
                    ',' => Tok::Comma,
                    '.' => Tok::Dot,
                    '+' => Tok::Plus,
                    '-' => Tok::Minus,
                    '*' => Tok::Star,
                    _ => Tok::Slash,
                }));
                i += 1;
            }
            '=' | '!' | '<' | '>' => {
                let two = next == Some('=');
                let tok = match (c, two) {
                    ('=', true) => Tok::Eq,
                    ('=', false) => Tok::Assign,
                    ('!', true) => Tok::Ne,
                    ('!', false) => {
                        return Err(CompileError::at(at, "unexpected `!` (write `not` or `!=`)"))
                    }
                    ('<', true) => Tok::Le,
                    ('<', false) => Tok::Lt,
                    ('>', true) => Tok::Ge,
                    _ => Tok::Gt,
                };
                out.push(single(tok));
                i += if two { 2 } else { 1 };
            }
            '"' => {
                let (s, end) = string(&chars, i)?;
                out.push(single(Tok::Str(s)));
                i = end;
            }
            '0' if matches!(next, Some('x' | 'X')) => {
                let start = i + 2;
                let mut end = start;
                while chars.get(end).is_some_and(char::is_ascii_hexdigit) {
                    end += 1;
                }
                let digits: String = chars[start..end].iter().collect();
                if digits.is_empty() || !digits.len().is_multiple_of(2) {
                    return Err(CompileError::at(
                        at,
                        "a byte literal needs an even number of hex digits after `0x`",
                    ));
                }
                let bytes = (0..digits.len())
                    .step_by(2)
                    .map(|k| u8::from_str_radix(&digits[k..k + 2], 16))
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(|_| CompileError::at(at, "invalid byte literal"))?;
                out.push(single(Tok::Bytes(bytes)));
                i = end;
            }
            c if c.is_ascii_digit() => {
                let (tok, end) = number(&chars, i)?;
                out.push(single(tok));
                i = end;
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut end = i;
                while chars
                    .get(end)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
                {
                    end += 1;
                }
                out.push(single(Tok::Ident(chars[i..end].iter().collect())));
                i = end;
            }
            other => {
                return Err(CompileError::at(
                    at,
                    format!("unexpected character `{other}`"),
                ));
            }
        }
    }
    Ok(out)
}

/// An integer or a float starting at `i`: digits, then optionally a fraction and an exponent.
fn number(chars: &[char], i: usize) -> Result<(Tok, usize), CompileError> {
    let digits = |mut k: usize| {
        while chars.get(k).is_some_and(char::is_ascii_digit) {
            k += 1;
        }
        k
    };
    let mut end = digits(i);
    let mut float = false;
    if chars.get(end) == Some(&'.') && chars.get(end + 1).is_some_and(char::is_ascii_digit) {
        end = digits(end + 1);
        float = true;
    }
    if matches!(chars.get(end), Some('e' | 'E')) {
        let mut k = end + 1;
        if matches!(chars.get(k), Some('+' | '-')) {
            k += 1;
        }
        if chars.get(k).is_some_and(char::is_ascii_digit) {
            end = digits(k);
            float = true;
        }
    }
    let text: String = chars[i..end].iter().collect();
    let tok = if float {
        Tok::Float(
            text.parse()
                .map_err(|_| CompileError::at(i + 1, format!("invalid number `{text}`")))?,
        )
    } else {
        Tok::Int(text.parse().map_err(|_| {
            CompileError::at(i + 1, format!("integer `{text}` does not fit in 64 bits"))
        })?)
    };
    Ok((tok, end))
}

/// A double-quoted string starting at `start` (the quote), unescaped as Go unquotes it.
fn string(chars: &[char], start: usize) -> Result<(String, usize), CompileError> {
    let mut out = String::new();
    let mut i = start + 1;
    loop {
        let Some(&c) = chars.get(i) else {
            return Err(CompileError::at(start + 1, "unterminated string"));
        };
        match c {
            '"' => return Ok((out, i + 1)),
            '\\' => {
                let at = i + 1;
                let Some(&e) = chars.get(i + 1) else {
                    return Err(CompileError::at(start + 1, "unterminated string"));
                };
                i += 2;
                let simple = match e {
                    'n' => Some('\n'),
                    't' => Some('\t'),
                    'r' => Some('\r'),
                    'a' => Some('\u{7}'),
                    'b' => Some('\u{8}'),
                    'f' => Some('\u{c}'),
                    'v' => Some('\u{b}'),
                    '\\' => Some('\\'),
                    '"' => Some('"'),
                    _ => None,
                };
                if let Some(c) = simple {
                    out.push(c);
                    continue;
                }
                let width = match e {
                    'x' => 2,
                    'u' => 4,
                    'U' => 8,
                    _ => {
                        return Err(CompileError::at(
                            at,
                            format!(
                            "unknown escape `\\{e}` in a string (write `\\\\{e}` for a backslash)"
                        ),
                        ))
                    }
                };
                let hex: String = chars.get(i..i + width).unwrap_or_default().iter().collect();
                let code = (hex.len() == width)
                    .then(|| u32::from_str_radix(&hex, 16).ok())
                    .flatten()
                    .ok_or_else(|| {
                        CompileError::at(at, format!("`\\{e}` needs {width} hex digits"))
                    })?;
                if e == 'x' {
                    // Go's `\x` is a byte; only ASCII bytes make valid UTF-8 on their own.
                    if code > 0x7f {
                        return Err(CompileError::at(
                            at,
                            "`\\x` above 7f is not valid UTF-8 on its own",
                        ));
                    }
                }
                out.push(char::from_u32(code).ok_or_else(|| {
                    CompileError::at(at, format!("`\\{e}{hex}` is not a character"))
                })?);
                i += width;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
}
