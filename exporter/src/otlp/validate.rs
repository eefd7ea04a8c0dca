//! Validation of received messages against the OTLP schema, as strictly as a strict protobuf
//! decoder (prost) checks them, plus limits of our own.
//!
//! Why: the collector forwards spans byte for byte. A span that our walker let through but a
//! strict decoder refuses (a string sent as a varint, invalid UTF-8) would make the downstream,
//! or our own file exporter, reject the whole batch it travels in, costing every other sender's
//! spans. So every message a request carries is checked here once, at the receiver, and a
//! request with one bad field is refused whole with the protocol's error.
//!
//! What "as strict as prost" means: every known field must have its declared wire type; `string`
//! fields must be UTF-8; nested messages must themselves be valid; unknown fields are skipped (as
//! prost skips them) but must be well-formed; nesting stays far below prost's recursion limit
//! of 100. On top, lists are bounded ([`MAX_LIST_ITEMS`]) so a request cannot make per-span work
//! grow without limit, and `AnyValue` nesting is bounded ([`MAX_VALUE_DEPTH`]).

use std::fmt;

use super::wire::{Fields, Value};

/// Most items in one repeated field of one message: attributes of a span, resource, scope,
/// event or link; events or links of a span; values of an array or key-value list.
pub const MAX_LIST_ITEMS: usize = 10_000;
/// Most levels of `AnyValue` nested in arrays and key-value lists (prost refuses messages nested
/// more than 100 deep; one level of value nesting costs two message levels).
pub const MAX_VALUE_DEPTH: usize = 32;

/// A field or message that does not conform: what and where, for the client to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid(pub(crate) String);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The protobuf type of a field, as far as decoding cares.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    /// `bytes`: any length-delimited payload.
    Bytes,
    /// `string`: length-delimited UTF-8.
    Str,
    /// Integers, booleans and enums: a varint.
    Varint,
    /// `fixed64` and `double`.
    Fixed64,
    /// `fixed32`.
    Fixed32,
    /// A nested message.
    Message(&'static Schema),
}

/// One known field of a message.
#[derive(Debug)]
pub(crate) struct Field {
    number: u32,
    name: &'static str,
    kind: Kind,
    repeated: bool,
}

/// The known fields of one message type.
#[derive(Debug)]
pub(crate) struct Schema {
    pub(crate) name: &'static str,
    fields: &'static [Field],
    /// Whether nesting this message counts as one more level of `AnyValue` depth.
    value_level: bool,
}

impl Schema {
    fn field(&self, number: u32) -> Option<&'static Field> {
        self.fields.iter().find(|f| f.number == number)
    }
}

const fn one(number: u32, name: &'static str, kind: Kind) -> Field {
    Field {
        number,
        name,
        kind,
        repeated: false,
    }
}

const fn many(number: u32, name: &'static str, kind: Kind) -> Field {
    Field {
        number,
        name,
        kind,
        repeated: true,
    }
}

pub(crate) static ANY_VALUE: Schema = Schema {
    name: "AnyValue",
    fields: &[
        one(1, "string_value", Kind::Str),
        one(2, "bool_value", Kind::Varint),
        one(3, "int_value", Kind::Varint),
        one(4, "double_value", Kind::Fixed64),
        one(5, "array_value", Kind::Message(&ARRAY_VALUE)),
        one(6, "kvlist_value", Kind::Message(&KEY_VALUE_LIST)),
        one(7, "bytes_value", Kind::Bytes),
        one(8, "string_value_strindex", Kind::Varint),
    ],
    value_level: true,
};

static ARRAY_VALUE: Schema = Schema {
    name: "ArrayValue",
    fields: &[many(1, "values", Kind::Message(&ANY_VALUE))],
    value_level: false,
};

static KEY_VALUE_LIST: Schema = Schema {
    name: "KeyValueList",
    fields: &[many(1, "values", Kind::Message(&KEY_VALUE))],
    value_level: false,
};

pub(crate) static KEY_VALUE: Schema = Schema {
    name: "KeyValue",
    fields: &[
        one(1, "key", Kind::Str),
        one(2, "value", Kind::Message(&ANY_VALUE)),
        one(3, "key_strindex", Kind::Varint),
    ],
    value_level: false,
};

static ENTITY_REF: Schema = Schema {
    name: "EntityRef",
    fields: &[
        one(1, "schema_url", Kind::Str),
        one(2, "type", Kind::Str),
        many(3, "id_keys", Kind::Str),
        many(4, "description_keys", Kind::Str),
    ],
    value_level: false,
};

/// `opentelemetry.proto.resource.v1.Resource`.
pub(crate) static RESOURCE: Schema = Schema {
    name: "Resource",
    fields: &[
        many(1, "attributes", Kind::Message(&KEY_VALUE)),
        one(2, "dropped_attributes_count", Kind::Varint),
        many(3, "entity_refs", Kind::Message(&ENTITY_REF)),
    ],
    value_level: false,
};

/// `opentelemetry.proto.common.v1.InstrumentationScope`.
pub(crate) static SCOPE: Schema = Schema {
    name: "InstrumentationScope",
    fields: &[
        one(1, "name", Kind::Str),
        one(2, "version", Kind::Str),
        many(3, "attributes", Kind::Message(&KEY_VALUE)),
        one(4, "dropped_attributes_count", Kind::Varint),
    ],
    value_level: false,
};

static EVENT: Schema = Schema {
    name: "Span.Event",
    fields: &[
        one(1, "time_unix_nano", Kind::Fixed64),
        one(2, "name", Kind::Str),
        many(3, "attributes", Kind::Message(&KEY_VALUE)),
        one(4, "dropped_attributes_count", Kind::Varint),
    ],
    value_level: false,
};

static LINK: Schema = Schema {
    name: "Span.Link",
    fields: &[
        one(1, "trace_id", Kind::Bytes),
        one(2, "span_id", Kind::Bytes),
        one(3, "trace_state", Kind::Str),
        many(4, "attributes", Kind::Message(&KEY_VALUE)),
        one(5, "dropped_attributes_count", Kind::Varint),
        one(6, "flags", Kind::Fixed32),
    ],
    value_level: false,
};

static STATUS: Schema = Schema {
    name: "Status",
    fields: &[one(2, "message", Kind::Str), one(3, "code", Kind::Varint)],
    value_level: false,
};

/// `opentelemetry.proto.trace.v1.Span`.
pub(crate) static SPAN: Schema = Schema {
    name: "Span",
    fields: &[
        one(1, "trace_id", Kind::Bytes),
        one(2, "span_id", Kind::Bytes),
        one(3, "trace_state", Kind::Str),
        one(4, "parent_span_id", Kind::Bytes),
        one(5, "name", Kind::Str),
        one(6, "kind", Kind::Varint),
        one(7, "start_time_unix_nano", Kind::Fixed64),
        one(8, "end_time_unix_nano", Kind::Fixed64),
        many(9, "attributes", Kind::Message(&KEY_VALUE)),
        one(10, "dropped_attributes_count", Kind::Varint),
        many(11, "events", Kind::Message(&EVENT)),
        one(12, "dropped_events_count", Kind::Varint),
        many(13, "links", Kind::Message(&LINK)),
        one(14, "dropped_links_count", Kind::Varint),
        one(15, "status", Kind::Message(&STATUS)),
        one(16, "flags", Kind::Fixed32),
    ],
    value_level: false,
};

/// Checks one encoded message of type `schema`, `depth` levels of `AnyValue` deep.
pub(crate) fn check(buf: &[u8], schema: &'static Schema, depth: usize) -> Result<(), Invalid> {
    check_with(buf, schema, depth, |_, _| Ok(()))
}

/// [`check`], handing each top-level field to `visit` once it is checked (so a caller that
/// reads some fields walks the message once).
pub(crate) fn check_with<'a>(
    buf: &'a [u8],
    schema: &'static Schema,
    depth: usize,
    mut visit: impl FnMut(u32, Value<'a>) -> Result<(), Invalid>,
) -> Result<(), Invalid> {
    let depth = depth + usize::from(schema.value_level);
    if depth > MAX_VALUE_DEPTH {
        return Err(Invalid(format!(
            "attribute values nested more than {MAX_VALUE_DEPTH} deep"
        )));
    }
    // Counts per repeated field; a message type has at most 16 known fields.
    let mut counts = [0usize; 17];
    for field in Fields::new(buf) {
        let (number, value) = field.map_err(|e| Invalid(format!("{}: {e}", schema.name)))?;
        let Some(spec) = schema.field(number) else {
            continue; // unknown: skipped, as a protobuf decoder skips it
        };
        if spec.repeated {
            let slot = &mut counts[(number as usize).min(16)];
            *slot += 1;
            if *slot > MAX_LIST_ITEMS {
                return Err(Invalid(format!(
                    "{}.{} has more than {MAX_LIST_ITEMS} items",
                    schema.name, spec.name
                )));
            }
        }
        check_value(schema, spec, value, depth)?;
        visit(number, value)?;
    }
    Ok(())
}

/// Checks one field's value against its declared type.
fn check_value(
    schema: &Schema,
    spec: &Field,
    value: Value<'_>,
    depth: usize,
) -> Result<(), Invalid> {
    let wrong = |expected: &str| {
        Invalid(format!(
            "{}.{} (field {}) must be {expected}",
            schema.name, spec.name, spec.number
        ))
    };
    match (spec.kind, value) {
        (Kind::Bytes, Value::Bytes(_)) | (Kind::Varint, Value::Varint(_)) => Ok(()),
        (Kind::Fixed64, Value::Fixed64(_)) | (Kind::Fixed32, Value::Fixed32(_)) => Ok(()),
        (Kind::Str, Value::Bytes(b)) => std::str::from_utf8(b)
            .map(drop)
            .map_err(|_| wrong("valid UTF-8")),
        (Kind::Message(inner), Value::Bytes(b)) => check(b, inner, depth),
        (Kind::Bytes | Kind::Str | Kind::Message(_), _) => Err(wrong("length-delimited")),
        (Kind::Varint, _) => Err(wrong("a varint")),
        (Kind::Fixed64, _) => Err(wrong("a fixed64")),
        (Kind::Fixed32, _) => Err(wrong("a fixed32")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire;
    use super::*;

    fn kv(key: &[u8], any: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        wire::put_len_field(&mut out, 1, key);
        wire::put_len_field(&mut out, 2, any);
        out
    }

    #[test]
    fn a_string_field_sent_as_a_varint_should_be_refused() {
        let mut span = Vec::new();
        wire::put_varint(&mut span, 5 << 3); // name, as a varint
        wire::put_varint(&mut span, 7);
        let err = check(&span, &SPAN, 0).unwrap_err();
        assert!(err.0.contains("Span.name"), "{err}");
    }

    #[test]
    fn invalid_utf8_in_a_nested_string_should_be_refused() {
        let mut any = Vec::new();
        wire::put_len_field(&mut any, 1, b"\xff\xfe");
        let mut span = Vec::new();
        wire::put_len_field(&mut span, 9, &kv(b"k", &any));
        let err = check(&span, &SPAN, 0).unwrap_err();
        assert!(err.0.contains("AnyValue.string_value"), "{err}");
        // bytes_value may hold anything
        let mut any = Vec::new();
        wire::put_len_field(&mut any, 7, b"\xff\xfe");
        let mut span = Vec::new();
        wire::put_len_field(&mut span, 9, &kv(b"k", &any));
        check(&span, &SPAN, 0).unwrap();
    }

    #[test]
    fn unknown_fields_should_be_skipped_but_must_be_well_formed() {
        let mut span = Vec::new();
        wire::put_len_field(&mut span, 99, b"future");
        check(&span, &SPAN, 0).unwrap();
        span.extend_from_slice(&[0x98, 0x06, 0xff]); // field 99, varint, truncated
        assert!(check(&span, &SPAN, 0).is_err());
    }

    #[test]
    fn values_nested_too_deep_should_be_refused() {
        let mut any = Vec::new();
        wire::put_len_field(&mut any, 1, b"leaf");
        for _ in 0..MAX_VALUE_DEPTH {
            let mut array = Vec::new();
            wire::put_len_field(&mut array, 1, &any);
            any.clear();
            wire::put_len_field(&mut any, 5, &array);
        }
        let err = check(&any, &ANY_VALUE, 0).unwrap_err();
        assert!(err.0.contains("nested"), "{err}");
    }

    #[test]
    fn lists_over_the_limit_should_be_refused() {
        let one = kv(b"k", b"");
        let mut span = Vec::new();
        for _ in 0..=MAX_LIST_ITEMS {
            wire::put_len_field(&mut span, 9, &one);
        }
        let err = check(&span, &SPAN, 0).unwrap_err();
        assert!(err.0.contains("Span.attributes"), "{err}");
    }
}
