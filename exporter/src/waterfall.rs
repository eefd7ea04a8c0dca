//! A trace drawn as a waterfall in the terminal: one row per span, indented by depth, with a bar
//! scaled to the trace's duration.
//!
//! Plain ASCII when the output is not a terminal (so it can be diffed and tested), colour
//! (errors in red) and block characters when it is.

use crate::record::{SpanRecord, TraceRecord};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

/// Default width of the name column, indentation included.
pub const DEFAULT_NAME_WIDTH: usize = 36;
/// Default width of the bar column.
pub const DEFAULT_BAR_WIDTH: usize = 40;
/// Deeper spans are not indented further, so the bars stay in view.
const MAX_INDENT_DEPTH: usize = 12;

const RED: &str = "\x1b[31m";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

/// How to draw traces.
///
/// # Examples
/// ```
/// use traceq_exporter::{traces, Waterfall};
/// # let spans = Vec::new();
/// for trace in traces(spans) {
///     print!("{}", Waterfall::plain().render(&trace));
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waterfall {
    /// Width of the name column, indentation included.
    pub name_width: usize,
    /// Width of the bar column.
    pub bar_width: usize,
    /// ANSI colour and block characters (for a terminal).
    pub color: bool,
}

impl Default for Waterfall {
    fn default() -> Self {
        Self::plain()
    }
}

impl Waterfall {
    /// Plain ASCII, no colour: for files, pipes and tests.
    #[must_use]
    pub fn plain() -> Self {
        Self {
            name_width: DEFAULT_NAME_WIDTH,
            bar_width: DEFAULT_BAR_WIDTH,
            color: false,
        }
    }

    /// Colour and block characters, for a terminal.
    #[must_use]
    pub fn terminal() -> Self {
        Self {
            color: true,
            ..Self::plain()
        }
    }

    /// Draws `trace`: a header line, then one row per span (depth first, children by start
    /// time), each followed by a line per span link. Ends with a newline.
    pub fn render(&self, trace: &TraceRecord) -> String {
        let mut out = String::new();
        let t0 = trace.start_unix_nano();
        let total = trace.end_unix_nano().saturating_sub(t0).max(1);
        let errors = trace.spans.iter().filter(|s| s.error.is_some()).count();
        let _ = write!(
            out,
            "trace {}  {} span{}  {}",
            trace.trace_id,
            trace.spans.len(),
            if trace.spans.len() == 1 { "" } else { "s" },
            format_duration(total)
        );
        if let Some(service) = trace.spans.iter().find_map(|s| s.service.as_deref()) {
            let _ = write!(out, "  service {service}");
        }
        if errors > 0 {
            let _ = write!(
                out,
                "  {errors} error{}",
                if errors == 1 { "" } else { "s" }
            );
        }
        out.push('\n');
        for (span, depth) in depth_first(trace) {
            self.row(&mut out, span, depth, t0, total, trace);
        }
        out
    }

    fn row(
        &self,
        out: &mut String,
        span: &SpanRecord,
        depth: usize,
        t0: u64,
        total: u64,
        trace: &TraceRecord,
    ) {
        let indent = "  ".repeat(depth.min(MAX_INDENT_DEPTH));
        let name = fit(&format!("{indent}{}", span.name), self.name_width);
        let w = self.bar_width as u128;
        let (total, rel_start, rel_end) = (
            u128::from(total),
            u128::from(span.start_unix_nano.saturating_sub(t0)),
            u128::from(span.end_unix_nano.saturating_sub(t0)),
        );
        let from = (rel_start * w / total).min(w.saturating_sub(1)) as usize;
        let to = (rel_end * w).div_ceil(total).clamp(from as u128 + 1, w) as usize;
        let fill = match (self.color, span.error.is_some()) {
            (true, _) => '█',
            (false, true) => '#',
            (false, false) => '=',
        };
        let bar: String = (0..self.bar_width)
            .map(|i| if (from..to).contains(&i) { fill } else { ' ' })
            .collect();
        let mut line = format!(
            "{name} |{bar}| {:>10}",
            format_duration(span.duration_nanos())
        );
        if let Some(message) = &span.error {
            line.push_str("  ERROR");
            if !message.is_empty() {
                let _ = write!(line, ": {message}");
            }
        }
        let orphan = span
            .parent_span_id
            .as_ref()
            .is_some_and(|p| !trace.spans.iter().any(|s| &s.span_id == p));
        if orphan {
            line.push_str("  (parent not in this file)");
        }
        if self.color && span.error.is_some() {
            line = format!("{RED}{line}{RESET}");
        }
        out.push_str(&line);
        out.push('\n');
        for link in &span.links {
            let what = match link.kind.as_deref() {
                Some("previous_segment") => format!("continues trace {}", link.trace_id),
                Some("next_segment") => format!("continued in trace {}", link.trace_id),
                Some(kind) => format!("linked to trace {} ({kind})", link.trace_id),
                None => format!("linked to trace {}", link.trace_id),
            };
            let line = format!("{indent}  -> {what}");
            if self.color {
                let _ = writeln!(out, "{DIM}{line}{RESET}");
            } else {
                let _ = writeln!(out, "{line}");
            }
        }
    }
}

/// The spans in drawing order with their depth: roots by start time, each followed by its
/// children (by start time), depth first. Spans caught in a parent cycle come last, at depth 0.
fn depth_first(trace: &TraceRecord) -> Vec<(&SpanRecord, usize)> {
    let ids: HashSet<&str> = trace.spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: HashMap<&str, Vec<&SpanRecord>> = HashMap::new();
    let mut roots = Vec::new();
    for s in &trace.spans {
        match s.parent_span_id.as_deref() {
            Some(p) if ids.contains(p) && p != s.span_id => {
                children.entry(p).or_default().push(s);
            }
            _ => roots.push(s),
        }
    }
    let mut out = Vec::with_capacity(trace.spans.len());
    let mut seen = HashSet::new();
    // `trace.spans` is sorted by start, so roots and children lists are too.
    let mut stack: Vec<(&SpanRecord, usize)> = roots.into_iter().rev().map(|s| (s, 0)).collect();
    while let Some((s, depth)) = stack.pop() {
        if !seen.insert(s.span_id.as_str()) {
            continue;
        }
        out.push((s, depth));
        if let Some(kids) = children.get(s.span_id.as_str()) {
            stack.extend(kids.iter().rev().map(|k| (*k, depth + 1)));
        }
    }
    for s in &trace.spans {
        if seen.insert(s.span_id.as_str()) {
            out.push((s, 0));
        }
    }
    out
}

/// Pads or cuts `text` to exactly `width` characters (a cut ends in `~`).
fn fit(text: &str, width: usize) -> String {
    let len = text.chars().count();
    if len <= width {
        format!("{text}{}", " ".repeat(width - len))
    } else {
        let mut s: String = text.chars().take(width.saturating_sub(1)).collect();
        s.push('~');
        s
    }
}

/// A duration in nanoseconds as short text: `850 ns`, `12.5 us`, `3.25 ms`, `1.50 s`.
pub fn format_duration(nanos: u64) -> String {
    let n = nanos as f64;
    if nanos < 1_000 {
        format!("{nanos} ns")
    } else if nanos < 1_000_000 {
        format!("{:.1} us", n / 1e3)
    } else if nanos < 1_000_000_000 {
        format!("{:.2} ms", n / 1e6)
    } else {
        format!("{:.2} s", n / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{traces, LinkRecord};

    fn span(id: &str, parent: Option<&str>, start: u64, end: u64) -> SpanRecord {
        SpanRecord {
            trace_id: "t1".into(),
            span_id: id.into(),
            parent_span_id: parent.map(Into::into),
            name: format!("span {id}"),
            service: None,
            start_unix_nano: start,
            end_unix_nano: end,
            error: None,
            attributes: Vec::new(),
            links: Vec::new(),
        }
    }

    #[test]
    fn waterfall_should_indent_children_and_scale_bars() {
        let mut failed = span("c", Some("a"), 50, 100);
        failed.error = Some("boom".into());
        failed.links.push(LinkRecord {
            trace_id: "t0".into(),
            span_id: "x".into(),
            kind: Some("previous_segment".into()),
        });
        let trace = &traces(vec![
            failed,
            span("a", None, 0, 100),
            span("b", Some("a"), 0, 50),
        ])[0];
        let w = Waterfall {
            name_width: 10,
            bar_width: 10,
            color: false,
        };
        let text = w.render(trace);
        let expected = "\
trace t1  3 spans  100 ns  1 error
span a     |==========|     100 ns
  span b   |=====     |      50 ns
  span c   |     #####|      50 ns  ERROR: boom
    -> continues trace t0
";
        assert_eq!(text, expected);
    }

    #[test]
    fn waterfall_should_survive_parent_cycles_and_cut_long_names() {
        let trace = &traces(vec![span("a", Some("b"), 0, 1), span("b", Some("a"), 0, 1)])[0];
        let text = Waterfall {
            name_width: 4,
            bar_width: 2,
            color: false,
        }
        .render(trace);
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.contains("spa~"), "{text}");
    }

    #[test]
    fn durations_should_read_naturally() {
        assert_eq!(format_duration(850), "850 ns");
        assert_eq!(format_duration(12_500), "12.5 us");
        assert_eq!(format_duration(3_250_000), "3.25 ms");
        assert_eq!(format_duration(1_500_000_000), "1.50 s");
    }
}
