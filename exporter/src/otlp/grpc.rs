//! OTLP/gRPC plumbing shared by the collector's receiver and the OTLP client: the method path,
//! and a tonic codec that sends an already encoded request.

use bytes::{BufMut as _, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message as _;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// The path of the unary `TraceService/Export` method.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Sends `Bytes` holding an encoded `ExportTraceServiceRequest` as they are (tonic adds the
/// framing and compression), and decodes the response with prost. Why: kept spans and
/// pre-built load are already protobuf; decoding them only for tonic to encode them again
/// would cost an allocation per string.
#[derive(Debug, Clone, Copy, Default)]
pub struct EncodedRequestCodec;

impl Codec for EncodedRequestCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self::Encoder {
        Self
    }

    fn decoder(&mut self) -> Self::Decoder {
        Self
    }
}

impl Encoder for EncodedRequestCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for EncodedRequestCodec {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    /// The call's outcome is its gRPC status (in the trailers); the response only carries an
    /// optional partial success. An undecodable response to an `OK` call is read as a full
    /// success rather than failing a request the server has taken.
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        Ok(Some(
            ExportTraceServiceResponse::decode(src).unwrap_or_default(),
        ))
    }
}
