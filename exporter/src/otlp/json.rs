//! OTLP/JSON to protobuf, one span at a time.
//!
//! Why streaming: deserializing a whole `ExportTraceServiceRequest` into owned structs costs
//! about 90 times the JSON for small spans (a 16 KB gzip body of `{}` spans took 1.5 GB before
//! it was refused). Here the request, resource and scope levels are walked by hand, and each
//! span, resource and scope is deserialized alone and encoded at once, so memory is the
//! protobuf output (smaller than the JSON) plus one span's structs. The output is then split and
//! validated as any protobuf request.

use std::fmt;

use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserializer;

use super::wire;

/// Transcodes an OTLP/JSON `ExportTraceServiceRequest` to its protobuf encoding.
pub(crate) fn transcode(body: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(body.len() / 2);
    let mut de = serde_json::Deserializer::from_slice(body);
    Object {
        kind: Level::Request,
        out: &mut out,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(out)
}

/// The three hand-walked message levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Request,
    ResourceSpans,
    ScopeSpans,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Request => "an ExportTraceServiceRequest object",
            Level::ResourceSpans => "a ResourceSpans object",
            Level::ScopeSpans => "a ScopeSpans object",
        }
    }
}

/// One JSON object of a hand-walked level, written into `out` as that message's fields.
struct Object<'a> {
    kind: Level,
    out: &'a mut Vec<u8>,
}

/// A JSON array (or `null`) whose elements are written into `out` as repeated field `field`.
struct List<'a> {
    /// The level of the elements; `None` for spans (deserialized whole).
    element: Option<Level>,
    field: u32,
    out: &'a mut Vec<u8>,
}

fn encode_field<M: Message, E: de::Error>(out: &mut Vec<u8>, field: u32, m: &M) -> Result<(), E> {
    wire::put_len_header(out, field, m.encoded_len());
    m.encode(out)
        .map_err(|e| E::custom(format!("encoding: {e}")))
}

impl<'de> DeserializeSeed<'de> for Object<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Object<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.name())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let out = self.out;
        while let Some(key) = map.next_key::<String>()? {
            match (self.kind, key.as_str()) {
                (Level::Request, "resourceSpans" | "resource_spans") => {
                    map.next_value_seed(List {
                        element: Some(Level::ResourceSpans),
                        field: 1,
                        out,
                    })?;
                }
                (Level::ResourceSpans, "resource") => {
                    if let Some(r) = map.next_value::<Option<Resource>>()? {
                        encode_field(out, 1, &r)?;
                    }
                }
                (Level::ResourceSpans, "scopeSpans" | "scope_spans") => {
                    map.next_value_seed(List {
                        element: Some(Level::ScopeSpans),
                        field: 2,
                        out,
                    })?;
                }
                (Level::ScopeSpans, "scope") => {
                    if let Some(s) = map.next_value::<Option<InstrumentationScope>>()? {
                        encode_field(out, 1, &s)?;
                    }
                }
                (Level::ScopeSpans, "spans") => {
                    map.next_value_seed(List {
                        element: None,
                        field: 2,
                        out,
                    })?;
                }
                (Level::ResourceSpans | Level::ScopeSpans, "schemaUrl" | "schema_url") => {
                    if let Some(url) = map.next_value::<Option<String>>()? {
                        if !url.is_empty() {
                            wire::put_len_field(out, 3, url.as_bytes());
                        }
                    }
                }
                // Unknown fields are ignored, as OTLP/JSON receivers must.
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for List<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for List<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(()) // `null`: an empty list
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut element = Vec::new();
        loop {
            element.clear();
            let more = match self.element {
                Some(kind) => seq
                    .next_element_seed(Object {
                        kind,
                        out: &mut element,
                    })?
                    .is_some(),
                None => match seq.next_element::<Span>()? {
                    Some(span) => {
                        span.encode(&mut element)
                            .map_err(|e| de::Error::custom(format!("encoding: {e}")))?;
                        true
                    }
                    None => false,
                },
            };
            if !more {
                return Ok(());
            }
            wire::put_len_field(self.out, self.field, &element);
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

    use super::*;

    fn via_structs(json: &str) -> ExportTraceServiceRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn transcoding_should_match_decoding_into_structs() {
        let json = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"api"}}]},
            "scopeSpans":[{"scope":{"name":"lib","version":"1"},"spans":[
              {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"a","kind":2,
               "startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000",
               "attributes":[{"key":"n","value":{"intValue":"7"}}],"status":{"code":2}},
              {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b175","name":"b"}],
              "schemaUrl":"https://s"}],"schemaUrl":"https://r","unknownField":{"x":[1,2]}}]}"#;
        let ours =
            ExportTraceServiceRequest::decode(&transcode(json.as_bytes()).unwrap()[..]).unwrap();
        assert_eq!(ours, via_structs(json));
    }

    #[test]
    fn nulls_and_empty_objects_should_be_empty_messages() {
        // `null` is a field's default in proto3 JSON; the structs' own decoder refuses it for
        // lists, so the expectation is written out.
        let empty_scope = r#"{"resourceSpans":[{"scopeSpans":[{}]}]}"#;
        for (json, expected) in [
            (r#"{}"#, r#"{}"#),
            (r#"{"resourceSpans":null}"#, r#"{}"#),
            (
                r#"{"resourceSpans":[{"resource":null,"scopeSpans":[{"scope":null,"spans":null}]}]}"#,
                empty_scope,
            ),
        ] {
            let ours = ExportTraceServiceRequest::decode(&transcode(json.as_bytes()).unwrap()[..])
                .unwrap();
            assert_eq!(ours, via_structs(expected), "{json}");
        }
    }

    #[test]
    fn malformed_json_should_be_an_error() {
        for json in [
            "",
            "[]",
            r#"{"resourceSpans":{}}"#,
            r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}]}"#,
            r#"{"resourceSpans":[]} trailing"#,
        ] {
            assert!(transcode(json.as_bytes()).is_err(), "{json}");
        }
    }

    #[test]
    fn empty_spans_should_cost_bytes_not_structs() {
        // 100,000 `{}` spans: the output holds two bytes per span.
        let spans = vec!["{}"; 100_000].join(",");
        let json = format!(r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{spans}]}}]}}]}}"#);
        let out = transcode(json.as_bytes()).unwrap();
        assert!(out.len() < 3 * 100_000, "{}", out.len());
    }
}
