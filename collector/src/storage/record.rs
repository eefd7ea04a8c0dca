//! The log's on-disk format: segment files of checksummed, length-prefixed records.
//!
//! ```text
//! segment  = magic "TRQLOG01" (8 bytes), segment id (u64 LE), record*
//! record   = payload length (u32 LE), CRC-32 of kind and payload (u32 LE), kind (u8), payload
//! request  = seq (u64), arrival in Unix nanoseconds (u64), spans (u32),
//!            an encoded OTLP ExportTraceServiceRequest of the accepted spans
//! decided  = (trace id (16 bytes), 0 = dropped | 1 = kept, [probability (f64),
//!            policy name length (u16), policy name])*
//! settled  = seq (u64)*
//! ```
//!
//! Why length and checksum first: a process killed mid-write leaves a record cut short, and a
//! disk may return garbage after a power loss; a reader checks the length against what is left
//! of the file and the checksum against the bytes before trusting either, and stops reading
//! that segment at the first record that fails (everything after a bad length is unframed).

use std::sync::Arc;

use opentelemetry::trace::TraceId;
use traceq_sampler::KeptDecision;

/// The first bytes of every segment file.
pub(crate) const MAGIC: &[u8; 8] = b"TRQLOG01";
/// Magic and segment id.
pub(crate) const SEGMENT_HEADER: usize = 16;
/// Length, checksum and kind.
pub(crate) const RECORD_HEADER: usize = 9;
/// Sequence number, arrival time and span count before a request's body.
pub(crate) const REQUEST_PREFIX: usize = 20;
/// Largest payload a reader believes: larger lengths are corruption (no request is near it).
pub(crate) const MAX_PAYLOAD: usize = 1 << 30;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// An accepted request's spans.
    Request = 1,
    /// Decisions on traces.
    Decided = 2,
    /// Requests whose every span was decided and delivered.
    Settled = 3,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Request),
            2 => Some(Self::Decided),
            3 => Some(Self::Settled),
            _ => None,
        }
    }
}

/// A segment file's header.
pub(crate) fn segment_header(id: u64) -> [u8; SEGMENT_HEADER] {
    let mut h = [0; SEGMENT_HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..].copy_from_slice(&id.to_le_bytes());
    h
}

/// The file name of segment `id`; ids sort as names do.
pub(crate) fn segment_name(id: u64) -> String {
    format!("{id:020}.log")
}

/// The segment id a file name stands for, if it is a segment's.
pub(crate) fn segment_id(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Starts a record of `kind` in `out`: the header with its length and checksum left to
/// [`finish`]. Returns where the record starts.
pub(crate) fn begin(out: &mut Vec<u8>, kind: Kind) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEADER]);
    out[start + 8] = kind as u8;
    start
}

/// Fills in the length and checksum of the record begun at `start`, which runs to the end of
/// `out`.
pub(crate) fn finish(out: &mut [u8], start: usize) {
    let payload = out.len() - start - RECORD_HEADER;
    let len = u32::try_from(payload).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// A request record's prefix: its sequence number, arrival and span count.
pub(crate) fn put_request_prefix(out: &mut Vec<u8>, seq: u64, arrival_nanos: u64, spans: u32) {
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&arrival_nanos.to_le_bytes());
    out.extend_from_slice(&spans.to_le_bytes());
}

/// A whole `decided` record for `verdicts`.
pub(crate) fn decided(verdicts: &[(TraceId, Option<Arc<KeptDecision>>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER + verdicts.len() * 24);
    let start = begin(&mut out, Kind::Decided);
    for (trace_id, decision) in verdicts {
        out.extend_from_slice(&trace_id.to_bytes());
        match decision {
            None => out.push(0),
            Some(d) => {
                out.push(1);
                out.extend_from_slice(&d.probability.to_le_bytes());
                let name = d.policy.as_bytes();
                let name = &name[..name.len().min(usize::from(u16::MAX))];
                out.extend_from_slice(&(name.len() as u16).to_le_bytes());
                out.extend_from_slice(name);
            }
        }
    }
    finish(&mut out, start);
    out
}

/// A whole `settled` record for `seqs`.
pub(crate) fn settled(seqs: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER + seqs.len() * 8);
    let start = begin(&mut out, Kind::Settled);
    for seq in seqs {
        out.extend_from_slice(&seq.to_le_bytes());
    }
    finish(&mut out, start);
    out
}

/// One record read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record<'a> {
    pub(crate) kind: Kind,
    pub(crate) payload: &'a [u8],
}

/// A request record's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Request<'a> {
    pub(crate) seq: u64,
    pub(crate) arrival_nanos: u64,
    pub(crate) spans: u32,
    pub(crate) body: &'a [u8],
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

impl<'a> Record<'a> {
    /// The fields of a request record (`None` when too short: corrupt).
    pub(crate) fn request(&self) -> Option<Request<'a>> {
        let p = self.payload;
        Some(Request {
            seq: u64_at(p, 0)?,
            arrival_nanos: u64_at(p, 8)?,
            spans: u32::from_le_bytes(p.get(16..20)?.try_into().ok()?),
            body: p.get(REQUEST_PREFIX..)?,
        })
    }

    /// The sequence numbers of a settled record (a trailing partial number is ignored: the
    /// checksum vouched for the bytes, so there is none unless written so).
    pub(crate) fn settled(&self) -> impl Iterator<Item = u64> + 'a {
        self.payload
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
    }

    /// The decisions of a decided record: trace id and, when kept, probability and policy.
    /// Stops at the first malformed entry.
    pub(crate) fn decisions(&self) -> Decisions<'a> {
        Decisions { rest: self.payload }
    }
}

/// Iterator over a decided record's entries.
#[derive(Debug)]
pub(crate) struct Decisions<'a> {
    rest: &'a [u8],
}

/// One decision read back: trace id, and for a kept trace its probability and policy.
pub(crate) type Decision<'a> = ([u8; 16], Option<(f64, &'a str)>);

impl<'a> Iterator for Decisions<'a> {
    type Item = Decision<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        let r = self.rest;
        let trace: [u8; 16] = r.get(..16)?.try_into().ok()?;
        let (decision, used) = match *r.get(16)? {
            0 => (None, 17),
            1 => {
                let p = f64::from_le_bytes(r.get(17..25)?.try_into().ok()?);
                let n = usize::from(u16::from_le_bytes(r.get(25..27)?.try_into().ok()?));
                let name = std::str::from_utf8(r.get(27..27 + n)?).ok()?;
                (Some((p, name)), 27 + n)
            }
            _ => return None,
        };
        self.rest = &r[used..];
        Some((trace, decision))
    }
}

/// How reading a segment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Tail {
    /// A record (or the header) failed its length or checksum: the rest was skipped.
    pub(crate) corrupt: bool,
    /// Bytes skipped from there to the end of the file.
    pub(crate) skipped_bytes: u64,
}

/// Reads the records of one segment file's bytes, stopping at the first that fails its
/// checks (see the module docs).
pub(crate) fn read_segment(bytes: &[u8], id: u64) -> (Vec<Record<'_>>, Tail) {
    let mut records = Vec::new();
    if bytes.len() < SEGMENT_HEADER || bytes[..SEGMENT_HEADER] != segment_header(id) {
        let tail = Tail {
            corrupt: true,
            skipped_bytes: bytes.len() as u64,
        };
        return (records, tail);
    }
    let mut at = SEGMENT_HEADER;
    while at < bytes.len() {
        let Some(record) = read_record(&bytes[at..]) else {
            let tail = Tail {
                corrupt: true,
                skipped_bytes: (bytes.len() - at) as u64,
            };
            return (records, tail);
        };
        at += RECORD_HEADER + record.payload.len();
        records.push(record);
    }
    (records, Tail::default())
}

fn read_record(b: &[u8]) -> Option<Record<'_>> {
    let header = b.get(..RECORD_HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    if len > MAX_PAYLOAD {
        return None;
    }
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let body = b.get(8..RECORD_HEADER + len)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let kind = Kind::from_byte(body[0])?;
    Some(Record {
        kind,
        payload: &body[1..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(id: u64, records: &[Vec<u8>]) -> Vec<u8> {
        let mut out = segment_header(id).to_vec();
        for r in records {
            out.extend_from_slice(r);
        }
        out
    }

    fn request(seq: u64, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let start = begin(&mut out, Kind::Request);
        put_request_prefix(&mut out, seq, 1_000 + seq, 3);
        out.extend_from_slice(body);
        finish(&mut out, start);
        out
    }

    #[test]
    fn records_should_read_back_as_written() {
        let kept = Arc::new(KeptDecision::new(Arc::from("errors"), 0.25));
        let t1 = TraceId::from_bytes([1; 16]);
        let t2 = TraceId::from_bytes([2; 16]);
        let bytes = segment(
            7,
            &[
                request(5, b"body"),
                decided(&[(t1, Some(kept)), (t2, None)]),
                settled(&[5, 9]),
            ],
        );
        let (records, tail) = read_segment(&bytes, 7);
        assert_eq!(tail, Tail::default());
        assert_eq!(records.len(), 3);
        let r = records[0].request().unwrap();
        assert_eq!(
            (r.seq, r.arrival_nanos, r.spans, r.body),
            (5, 1005, 3, &b"body"[..])
        );
        let d: Vec<_> = records[1].decisions().collect();
        assert_eq!(d, vec![([1; 16], Some((0.25, "errors"))), ([2; 16], None)]);
        assert_eq!(records[2].settled().collect::<Vec<_>>(), vec![5, 9]);
    }

    #[test]
    fn a_record_cut_short_anywhere_should_end_the_segment_there() {
        let bytes = segment(1, &[request(1, b"first"), request(2, b"second one")]);
        let first_end = SEGMENT_HEADER + RECORD_HEADER + REQUEST_PREFIX + 5;
        for cut in first_end..bytes.len() {
            let (records, tail) = read_segment(&bytes[..cut], 1);
            assert_eq!(records.len(), 1, "cut at {cut}");
            assert_eq!(tail.corrupt, cut > first_end, "cut at {cut}");
            assert_eq!(tail.skipped_bytes, (cut - first_end) as u64);
        }
    }

    #[test]
    fn a_flipped_bit_should_be_caught_by_the_checksum() {
        let bytes = segment(1, &[request(1, b"first"), request(2, b"second")]);
        let first_end = SEGMENT_HEADER + RECORD_HEADER + REQUEST_PREFIX + 5;
        for at in first_end + 4..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            let (records, tail) = read_segment(&bad, 1);
            assert_eq!(records.len(), 1, "flipped at {at}");
            assert!(tail.corrupt);
        }
    }

    #[test]
    fn a_foreign_or_misnumbered_file_should_be_skipped_whole() {
        let bytes = segment(3, &[request(1, b"x")]);
        let (records, tail) = read_segment(&bytes, 4);
        assert!(records.is_empty());
        assert_eq!(tail.skipped_bytes, bytes.len() as u64);
        assert!(read_segment(b"not a log", 0).1.corrupt);
    }

    #[test]
    fn segment_names_should_sort_as_ids_and_parse_back() {
        assert_eq!(segment_id(&segment_name(42)), Some(42));
        assert!(segment_name(9) < segment_name(10));
        assert_eq!(segment_id("LOCK"), None);
        assert_eq!(segment_id("0000000000000000004x.log"), None);
    }
}
