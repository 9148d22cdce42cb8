//! Connections to workers: one tonic channel per worker, shared by every
//! call on it (HTTP/2 multiplexes them; cloning the client is cheap).

use std::sync::Arc;
use std::time::Duration;

use rustler::{Atom, Binary, Encoder, Env, NifMap, Resource, ResourceArc, Term};
use synapse_client::proto::agent_service_client::AgentServiceClient;
use synapse_client::proto::health::health_check_response::ServingStatus;
use synapse_client::proto::health::health_client::HealthClient;
use synapse_client::proto::health::{HealthCheckRequest, HealthCheckResponse};
use synapse_client::proto::{EchoReply, EchoRequest, EchoStreamRequest};
use synapse_client::{Address, Error, Tls};
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use crate::atoms;
use crate::call::{self, CallError, Started};
use crate::error::NifError;
use crate::reply::{Reply, Style};
use crate::runtime::RUNTIME;
use synapse_client::session;

/// A worker's channel. `closed` is cancelled when the worker is known to be
/// gone, which fails every call in flight on it at once.
pub struct ChannelResource {
    /// `Bearer <token>` for workers that require one. Kept here, in Rust
    /// only: it never reaches a term, a log line or an error.
    authorization: Option<MetadataValue<Ascii>>,
    /// The worker's session, started by the first call that uses it.
    session: std::sync::Mutex<Option<session::Sender>>,
    /// Calls in flight on this channel, for least-loaded routing.
    pub in_flight: std::sync::atomic::AtomicUsize,
    pub client: AgentServiceClient<Channel>,
    /// The same connection, for calls to services known only at run time
    /// (the Bridge).
    pub channel: Channel,
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
    /// PEM of the CA that signed a TCP worker's certificate; `nil` for no TLS.
    pub ca_pem: Option<Binary<'a>>,
    /// The name the worker's certificate must be valid for.
    pub server_name: Option<String>,
    /// The bearer token the worker requires, if any (see [`channel_token`]).
    pub token: Option<ResourceArc<TokenResource>>,
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
    let authorization = options.token.map(|token| token.0.clone());
    let channel = synapse_client::connect_lazy(&Address::parse(&address)?, tls.as_ref())?;
    let client = synapse_client::agent_client(
        channel.clone(),
        synapse_client::ConnectOptions {
            max_message_bytes: options.max_message_bytes,
        },
    );
    Ok(ResourceArc::new(ChannelResource {
        session: std::sync::Mutex::new(None),
        authorization,
        in_flight: std::sync::atomic::AtomicUsize::new(0),
        client,
        channel,
        max_message_bytes: options.max_message_bytes,
        closed: CancellationToken::new(),
        address,
    }))
}

/// Asks the worker's health service whether it serves; answers
/// `{:synapse_reply, tag, {:ok, :serving | :not_serving | :unknown} | {:error, error}}`.
#[rustler::nif]
fn channel_health<'a>(
    env: Env<'a>,
    channel: ResourceArc<ChannelResource>,
    tag: Term<'a>,
    timeout: Term<'a>,
) -> Started {
    let timeout = call::decode_timeout(timeout)?;
    let caller = env.pid();
    let handle = call::handle(env, &[caller], 0, None);
    let mut client = HealthClient::new(channel.channel.clone());
    let request = request_builder(&channel);
    call::spawn(
        channel,
        &handle,
        Reply::new(caller, tag, Style::Unary),
        timeout,
        move |deadline| async move {
            let request = request(HealthCheckRequest::default(), deadline);
            Ok(client.check(request).await?.into_inner())
        },
        |env, response: HealthCheckResponse| {
            Ok(match ServingStatus::try_from(response.status) {
                Ok(ServingStatus::Serving) => atoms::serving(),
                Ok(ServingStatus::NotServing) => atoms::not_serving(),
                _ => atoms::unknown(),
            }
            .encode(env))
        },
    );
    Ok(Ok(handle))
}

/// Echo: the worker answers `payload`; the caller gets
/// `{:synapse_reply, tag, {:ok, payload} | {:error, error}}`.
#[rustler::nif]
fn channel_echo<'a>(
    env: Env<'a>,
    channel: ResourceArc<ChannelResource>,
    tag: Term<'a>,
    payload: Binary<'a>,
    timeout: Term<'a>,
) -> Started {
    let timeout = call::decode_timeout(timeout)?;
    let caller = env.pid();
    let handle = call::handle(env, &[caller], 0, None);
    let request = EchoRequest {
        payload: payload.as_slice().to_vec(),
    };
    let session = session_of(&channel);
    call::spawn(
        channel,
        &handle,
        Reply::new(caller, tag, Style::Unary),
        timeout,
        // The deadline is enforced around the call (call::spawn): a frame
        // on the session has no deadline of its own.
        move |_deadline| async move { Ok(session::echo(&session, request.payload).await?) },
        |env, reply: EchoReply| Ok(bytes_term(env, &reply.payload)),
    );
    Ok(Ok(handle))
}

/// EchoStream: `count` replies of `payload`, as events `{:message, payload}`
/// then `{:result, nil}`, at most `window` ahead of `run_ack`.
#[rustler::nif]
fn channel_echo_stream<'a>(
    env: Env<'a>,
    channel: ResourceArc<ChannelResource>,
    tag: Term<'a>,
    payload: Binary<'a>,
    count: i32,
    timeout: Term<'a>,
    window: Term<'a>,
) -> Started {
    let timeout = call::decode_timeout(timeout)?;
    let caller = env.pid();
    let handle = call::handle(env, &[caller], call::decode_window(window)?, None);
    let reply = Reply::new(caller, tag, Style::Stream);
    let mut events = reply.events();
    let credit = handle.credit.clone();
    let waits = handle.waits.clone();
    let mut client = channel.client.clone();
    let build = request_builder(&channel);
    let request = EchoStreamRequest {
        payload: payload.as_slice().to_vec(),
        count,
    };
    call::spawn(
        channel,
        &handle,
        reply,
        timeout,
        move |deadline| async move {
            let mut replies = client
                .echo_stream(build(request, deadline))
                .await?
                .into_inner();
            loop {
                call::take_credit(&credit, &waits).await?;
                match replies.message().await? {
                    Some(reply) => {
                        events.send(|env| {
                            (atoms::message(), bytes_term(env, &reply.payload)).encode(env)
                        });
                    }
                    None => return Ok::<(), CallError>(()),
                }
            }
        },
        |env, ()| Ok(atoms::nil().encode(env)),
    );
    Ok(Ok(handle))
}

/// The channel's session, started on first use or after the last one broke.
fn session_of(channel: &ResourceArc<ChannelResource>) -> session::Sender {
    let mut slot = channel
        .session
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match slot.as_ref() {
        Some(sender) if !sender.is_closed() => sender.clone(),
        _ => {
            let _runtime = RUNTIME.enter();
            let sender = session::start(channel.client.clone(), channel.authorization.clone());
            *slot = Some(sender.clone());
            sender
        }
    }
}

fn bytes_term<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    let mut binary = rustler::NewBinary::new(env, bytes.len());
    binary.as_mut_slice().copy_from_slice(bytes);
    binary.into()
}

/// Builds requests for a call's future, which cannot borrow the channel.
pub fn request_builder<T>(
    channel: &ResourceArc<ChannelResource>,
) -> impl Fn(T, Option<Duration>) -> tonic::Request<T> + Send + 'static {
    let authorization = Arc::new(channel.authorization.clone());
    move |message, deadline| {
        let mut request = tonic::Request::new(message);
        if let Some(deadline) = deadline {
            request.set_timeout(deadline);
        }
        if let Some(authorization) = authorization.as_ref() {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        request
    }
}

/// The number of calls in flight on the channel.
#[rustler::nif]
fn channel_load(channel: ResourceArc<ChannelResource>) -> usize {
    channel.in_flight.load(std::sync::atomic::Ordering::Relaxed)
}

/// Marks the worker gone: every call in flight on the channel, and every
/// later one, answers `:worker_exited`. The channel's session stream ends
/// too (its last sender dropped, it half-closes): a worker that is stopping
/// does not wait for it through its whole grace period.
#[rustler::nif]
fn channel_close(channel: ResourceArc<ChannelResource>) -> Atom {
    channel.closed.cancel();
    channel
        .session
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    atoms::ok()
}
