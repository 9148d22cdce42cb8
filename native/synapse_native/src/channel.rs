//! Connections to workers (`SynapseCore.Channel`): one per worker, shared by
//! every call on it. A local worker is reached over its lane, unless gRPC is
//! asked for; a remote one over gRPC. Calls do not care which
//! (`synapse_client::Worker`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rustler::{Atom, Binary, Encoder, Env, LocalPid, NifMap, Resource, ResourceArc, Term};
use synapse_client::lane::Reader;
use synapse_client::{Address, Error, Tls, Worker, WorkerOptions};
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};

use crate::atoms;
use crate::error::NifError;
use crate::lane_reader::ProcessReader;
use crate::runtime::RUNTIME;

/// A worker's channel. `closed` is cancelled when the worker is known to be
/// gone, which fails every call in flight on it at once.
pub struct ChannelResource {
    pub worker: Worker,
    /// Calls in flight on this channel, for least-loaded routing.
    pub in_flight: AtomicUsize,
    pub max_message_bytes: usize,
    pub closed: CancellationToken,
    pub address: String,
}

#[rustler::resource_impl]
impl Resource for ChannelResource {}

/// A remote worker's bearer token, as the `authorization` header value.
///
/// The token travels from Elixir in this resource, made by
/// [`channel_token`], so that it is never an argument of a NIF that can
/// raise: a raise's stack frame carries the NIF's arguments into error
/// terms, logs and crash reports.
pub struct TokenResource(MetadataValue<Ascii>);

#[rustler::resource_impl]
impl Resource for TokenResource {}

/// Wraps a token for [`channel_connect`]: `{:ok, token}`, or `{:error,
/// %SynapseCore.Error{kind: :invalid_argument}}` naming no part of it.
///
/// It takes any term and never raises (nothing in it can panic on input):
/// it is the one function the token is ever an argument of.
#[rustler::nif]
fn channel_token<'a>(env: Env<'a>, token: Term<'a>) -> Term<'a> {
    let header = token
        .decode::<Binary>()
        .ok()
        .filter(|bytes| !bytes.is_empty() && bytes.iter().all(|b| (0x21..=0x7e).contains(b)))
        .and_then(|bytes| {
            let mut value = Vec::with_capacity(7 + bytes.len());
            value.extend_from_slice(b"Bearer ");
            value.extend_from_slice(bytes.as_slice());
            MetadataValue::try_from(value).ok()
        });
    match header {
        Some(header) => (atoms::ok(), ResourceArc::new(TokenResource(header))).encode(env),
        None => (
            atoms::error(),
            NifError(Error::InvalidArgument(
                "the token must be a non-empty binary of visible ASCII characters".into(),
            )),
        )
            .encode(env),
    }
}

#[derive(NifMap)]
pub struct ConnectOptions<'a> {
    /// Largest message, either way, in bytes.
    pub max_message_bytes: usize,
    /// The worker's lane (`"unix:PATH"`): every call takes it; `nil` for
    /// gRPC.
    pub lane: Option<String>,
    /// PEM of the CA that signed a TCP worker's certificate; `nil` for no TLS.
    pub ca_pem: Option<Binary<'a>>,
    /// The name the worker's certificate must be valid for.
    pub server_name: Option<String>,
    /// The bearer token the worker requires, if any (see [`channel_token`]).
    pub token: Option<ResourceArc<TokenResource>>,
    /// The process that reads the lane's unary calls (see
    /// [`crate::lane_reader`]); `nil` for a task of the NIF's.
    pub lane_reader: Option<LocalPid>,
}

/// Creates the channel without connecting: the first call connects (and a
/// broken connection is re-established by the next call), so this never
/// waits and can run on a normal scheduler.
#[rustler::nif]
fn channel_connect<'a>(env: Env<'a>, address: String, options: ConnectOptions<'a>) -> Term<'a> {
    // Encoded here rather than returned: tonic's channel is not
    // `RefUnwindSafe`, which the NIF wrapper requires of return values.
    connect(address, options).map_err(NifError).encode(env)
}

fn connect(
    address: String,
    options: ConnectOptions<'_>,
) -> Result<ResourceArc<ChannelResource>, Error> {
    let _runtime = RUNTIME.enter();
    let tls = options.ca_pem.map(|pem| Tls {
        ca_pem: pem.as_slice().to_vec(),
        server_name: options.server_name,
    });
    let lane = options.lane.as_deref().map(lane_path).transpose()?;
    let worker = Worker::connect(WorkerOptions {
        address: &Address::parse(&address)?,
        lane,
        tls: tls.as_ref(),
        authorization: options.token.map(|token| token.0.clone()),
        max_message_bytes: options.max_message_bytes,
        lane_reader: options
            .lane_reader
            .map(|pid| Arc::new(ProcessReader { pid }) as Arc<dyn Reader>),
    })?;
    Ok(ResourceArc::new(ChannelResource {
        worker,
        in_flight: AtomicUsize::new(0),
        max_message_bytes: options.max_message_bytes,
        closed: CancellationToken::new(),
        address,
    }))
}

fn lane_path(address: &str) -> Result<PathBuf, Error> {
    match Address::parse(address)? {
        Address::Unix(path) => Ok(path),
        Address::Tcp(_) => Err(Error::InvalidArgument(format!(
            "a lane is a Unix socket (unix:PATH), not {address:?}"
        ))),
    }
}

/// The number of calls in flight on the channel.
#[rustler::nif]
fn channel_load(channel: ResourceArc<ChannelResource>) -> usize {
    channel.in_flight.load(Ordering::Relaxed)
}

/// Marks the worker gone: every call in flight on the channel, and every
/// later one, answers `:worker_exited`. The lane's connection closes too
/// once those calls have let go of it: a worker that is stopping does not
/// wait for it through its whole grace period.
#[rustler::nif]
fn channel_close(channel: ResourceArc<ChannelResource>) -> Atom {
    channel.closed.cancel();
    // Unary calls on the lane have no task watching `closed`.
    if let Some(lane) = channel.worker.lane() {
        lane.abandon();
    }
    channel.worker.close();
    atoms::ok()
}
