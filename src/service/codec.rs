//! The protobuf codec of `fugo.v1.Codes`: prost's, except that a message
//! that cannot be decoded (invalid UTF-8 in a string field, a wrong wire
//! type, a truncated field) is the caller's error, `INVALID_ARGUMENT`, as
//! the proto promises, not tonic's default `INTERNAL`.
//!
//! The generated client uses the same codec (tonic-prost-build sets one
//! codec per service), so a response fugo's client cannot decode is also
//! reported as `INVALID_ARGUMENT`; the message says which message and field.

use std::marker::PhantomData;

use prost::Message;
use prost::bytes::Buf;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// prost's codec with decode errors answered `INVALID_ARGUMENT`.
#[derive(Debug)]
pub struct StrictCodec<T, U> {
    prost: ProstCodec<T, U>,
}

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        StrictCodec {
            prost: ProstCodec::default(),
        }
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.prost.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder {
            prost: self.prost.decoder(),
            _message: PhantomData,
        }
    }
}

/// Decodes one message as the service does: prost's decoding, any failure
/// `INVALID_ARGUMENT`. prost's messages name the message, the field and the
/// problem, never the bytes. (The fuzz targets decode through this too.)
pub fn decode<U: Message + Default>(bytes: impl Buf) -> Result<U, Status> {
    U::decode(bytes).map_err(|error| {
        Status::invalid_argument(format!("the message cannot be decoded: {error}"))
    })
}

/// prost's decoder with decode errors answered `INVALID_ARGUMENT`.
#[derive(Debug)]
pub struct StrictDecoder<U> {
    prost: ProstDecoder<U>,
    _message: PhantomData<U>,
}

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        decode(buf).map(Some)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.prost.buffer_settings()
    }
}
