//! A worker as calls see it: where its methods are called, over gRPC or
//! over its local lane, behind one interface.
//!
//! Calls take and give serialized messages (each method's gRPC request and
//! response), so that typed messages (`RunRequest`, ...) and the Bridge's
//! dynamic ones go the same way, and the code that makes a call does not
//! depend on the transport. Failures are [`Status`]es either way, classified
//! by [`Error::from_status`](crate::Error::from_status).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_channel::mpsc;
use prost::bytes::{Buf, BufMut, Bytes};
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use crate::address::{connect_lazy, Address, Tls};
use crate::error::Error;
use crate::lane::{self, Lane};

/// How calls reach a worker.
pub struct Worker {
    grpc: tonic::client::Grpc<Channel>,
    /// Set for a local worker reached over its lane.
    lane: Option<Lane>,
    /// `Bearer <token>`, for workers that require one.
    authorization: Option<MetadataValue<Ascii>>,
}

/// Where a worker listens and how to reach it.
pub struct WorkerOptions<'a> {
    pub address: &'a Address,
    /// The worker's lane socket: when set, every call takes the lane.
    pub lane: Option<std::path::PathBuf>,
    pub tls: Option<&'a Tls>,
    pub authorization: Option<MetadataValue<Ascii>>,
    /// Largest message, either way, in bytes.
    pub max_message_bytes: usize,
    /// Reads the connections of the lane's unary calls (see
    /// [`Lane::with_reader`]); without one a task does.
    pub lane_reader: Option<std::sync::Arc<dyn lane::Reader>>,
}

impl Worker {
    /// Connects lazily: nothing waits until the first call. Must be called
    /// within a tokio runtime.
    pub fn connect(options: WorkerOptions<'_>) -> Result<Self, Error> {
        let channel = connect_lazy(options.address, options.tls)?;
        let grpc = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(options.max_message_bytes)
            .max_encoding_message_size(options.max_message_bytes);
        let lane = options.lane.map(|path| {
            let authorization = options
                .authorization
                .as_ref()
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            let lane = Lane::new(path, authorization, options.max_message_bytes);
            // Read by the VM, the loop's calls go on pipes: cheaper than the socket.
            match options.lane_reader {
                Some(reader) => lane.with_reader(reader).with_pipes(),
                None => lane,
            }
        });
        Ok(Self {
            grpc,
            lane,
            authorization: options.authorization,
        })
    }

    /// Whether calls take the lane.
    pub fn on_lane(&self) -> bool {
        self.lane.is_some()
    }

    /// The lane, for a local worker reached over it.
    pub fn lane(&self) -> Option<&Lane> {
        self.lane.as_ref()
    }

    /// Lets go of the lane's connection: it closes once the calls on it
    /// have ended (a later call would connect again).
    pub fn close(&self) {
        if let Some(lane) = &self.lane {
            lane.close();
        }
    }

    /// Calls a method with one request and one response. On the lane the
    /// request is sent now, by the calling thread (which must be within a
    /// tokio runtime's context), and the returned future only waits for the
    /// answer; over gRPC the call starts when the future is first polled.
    pub fn unary(
        &self,
        method: &str,
        request: Vec<u8>,
        deadline: Option<Duration>,
    ) -> Pin<Box<dyn Future<Output = Result<Bytes, Status>> + Send + 'static>> {
        match &self.lane {
            Some(lane) => {
                let call = lane.start_unary(method, request, deadline);
                Box::pin(async move { call?.answer().await })
            }
            None => {
                let grpc = self.grpc.clone();
                let request = self.request(request, deadline);
                let path = path(method);
                Box::pin(async move {
                    let mut grpc = ready(grpc).await?;
                    Ok(grpc.unary(request, path?, RawCodec).await?.into_inner())
                })
            }
        }
    }

    /// Calls a method with one request and streamed responses.
    pub async fn server_streaming(
        &self,
        method: &str,
        request: Vec<u8>,
        deadline: Option<Duration>,
    ) -> Result<Responses, Status> {
        match &self.lane {
            Some(lane) => Ok(Responses::Lane(
                lane.server_streaming(method, request, deadline)?,
            )),
            None => {
                let mut grpc = ready(self.grpc.clone()).await?;
                let response = grpc
                    .server_streaming(self.request(request, deadline), path(method)?, RawCodec)
                    .await?;
                Ok(Responses::Grpc(response.into_inner()))
            }
        }
    }

    /// Calls a method whose requests and responses both stream, `first`
    /// being its first request; later ones go with the returned
    /// [`Requests`], and the requests end when every clone of it is gone.
    /// On the lane the call and `first` are sent now, by the calling thread
    /// (which must be within a tokio runtime's context), and later requests
    /// are written by the threads that send them; over gRPC the call starts
    /// when the future is first polled.
    pub fn streaming(
        &self,
        method: &str,
        first: Vec<u8>,
        deadline: Option<Duration>,
    ) -> (Requests, Opening) {
        match &self.lane {
            Some(lane) => match lane.streaming(method, first, deadline) {
                Ok((requests, responses)) => (
                    Requests::Lane(requests),
                    Box::pin(std::future::ready(Ok(Responses::Lane(responses)))),
                ),
                Err(status) => (Requests::Refused, Box::pin(std::future::ready(Err(status)))),
            },
            None => {
                // futures' channel rather than tokio's: a run's request side
                // is open for the whole run, and tokio's channel holds 1.3 KB
                // from its first message on (its state padded to cache lines,
                // and a block of 32 slots), futures' a node per message
                // waiting.
                let (sender, receiver) = mpsc::unbounded();
                // The receiver is still here: this cannot fail.
                let _ = sender.unbounded_send(first);
                let grpc = self.grpc.clone();
                let request = self.request(receiver, deadline);
                let path = path(method);
                let responses = Box::pin(async move {
                    let mut grpc = ready(grpc).await?;
                    let response = grpc.streaming(request, path?, RawCodec).await?;
                    Ok(Responses::Grpc(response.into_inner()))
                });
                (Requests::Grpc(sender), responses)
            }
        }
    }

    fn request<T>(&self, message: T, deadline: Option<Duration>) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(deadline) = deadline {
            request.set_timeout(deadline);
        }
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        request
    }
}

/// The responses of a call made with [`Worker::streaming`], once it is open.
pub type Opening = Pin<Box<dyn Future<Output = Result<Responses, Status>> + Send + 'static>>;

/// The requests of a call made with [`Worker::streaming`], sent from any
/// thread, in order.
#[derive(Clone)]
pub enum Requests {
    Grpc(mpsc::UnboundedSender<Vec<u8>>),
    Lane(lane::Requests),
    /// The call could not start: nothing is sent.
    Refused,
}

impl Requests {
    /// Sends a request; false when the call is over (nobody would read it).
    pub fn send(&self, message: Vec<u8>) -> bool {
        match self {
            Self::Grpc(sender) => sender.unbounded_send(message).is_ok(),
            Self::Lane(requests) => requests.send(message),
            Self::Refused => false,
        }
    }
}

/// The responses of a streamed call, whichever way it went.
pub enum Responses {
    Grpc(Streaming<Bytes>),
    Lane(lane::Responses),
}

impl Responses {
    /// The next response, `None` at the end, or the call's failure.
    pub async fn message(&mut self) -> Result<Option<Bytes>, Status> {
        match self {
            Self::Grpc(stream) => stream.message().await,
            Self::Lane(stream) => stream.message().await,
        }
    }
}

async fn ready(
    mut grpc: tonic::client::Grpc<Channel>,
) -> Result<tonic::client::Grpc<Channel>, Status> {
    grpc.ready()
        .await
        .map_err(|e| Status::from_error(Box::new(e)))?;
    Ok(grpc)
}

fn path(method: &str) -> Result<PathAndQuery, Status> {
    PathAndQuery::try_from(method)
        .map_err(|e| Status::internal(format!("bad method path {method:?}: {e}")))
}

/// Messages that are already serialized, both ways.
#[derive(Clone, Copy)]
struct RawCodec;

/// What each call's encoding and decoding buffers start at, in bytes.
/// tonic's default, 8 KiB each way, is held for as long as a call's stream
/// is open, and a run's `Run` stream is open for the whole run: about 7 of
/// the 29 KiB a run in flight over gRPC held in the VM's process (every
/// allocated byte counted, see `bench/in_flight_memory.exs`). Most messages
/// are a few hundred bytes; a larger one grows its buffer as it needs.
const CODEC_BUFFER_BYTES: usize = 512;

/// tonic's default: how much is encoded before a stream's buffer is sent.
const CODEC_YIELD_BYTES: usize = 32 * 1024;

fn codec_buffers() -> BufferSettings {
    BufferSettings::new(CODEC_BUFFER_BYTES, CODEC_YIELD_BYTES)
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        codec_buffers()
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }

    fn buffer_settings(&self) -> BufferSettings {
        codec_buffers()
    }
}
