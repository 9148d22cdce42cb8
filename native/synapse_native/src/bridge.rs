//! Calls to Bridge services (`SynapseCore.Bridge`): gRPC methods known only
//! at run time, from the FileDescriptorSet the Bridge generated. Requests
//! and responses are dynamic protobuf messages, converted from and to
//! Elixir terms in [`dynamic`].

mod dynamic;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor};
use rustler::{Binary, Encoder, Env, NifMap, Resource, ResourceArc, Term};
use synapse_client::lane::Answerer;

use crate::call::{self, fits, ServerStream, Started};
use crate::channel::ChannelResource;
use crate::error::{Error, NifError};

/// The descriptors of one generated Bridge module.
pub struct PoolResource {
    pool: DescriptorPool,
}

#[rustler::resource_impl]
impl Resource for PoolResource {}

/// Loads a FileDescriptorSet (as the Bridge writes it, imports included).
#[rustler::nif(schedule = "DirtyCpu")]
fn bridge_pool<'a>(env: Env<'a>, descriptor_set: Binary<'a>) -> Term<'a> {
    DescriptorPool::decode(descriptor_set.as_slice())
        .map(|pool| ResourceArc::new(PoolResource { pool }))
        .map_err(|e| {
            NifError(Error::InvalidArgument(format!(
                "invalid descriptor set: {e}"
            )))
        })
        .encode(env)
}

#[derive(NifMap)]
pub struct BridgeOptions<'a> {
    timeout: Term<'a>,
    /// Streams only: messages sent ahead of acknowledgements.
    window: Term<'a>,
    /// Unary calls on a lane only: the function is a sync one that is not
    /// `on_loop`, whose calls the worker's threads answer on a connection
    /// of their own ([`Answerer::Threads`]). Streams ignore it.
    threads: bool,
}

/// Calls a unary method (`"package.Service/Method"`); the caller gets
/// `{:synapse_reply, tag, {:ok, response} | {:error, error}}`.
#[rustler::nif]
fn bridge_call<'a>(
    env: Env<'a>,
    channel: ResourceArc<ChannelResource>,
    pool: ResourceArc<PoolResource>,
    tag: Term<'a>,
    method: String,
    request: Term<'a>,
    options: BridgeOptions<'a>,
) -> Started {
    start_call(env, channel, pool, tag, method, request, options)
}

/// `bridge_call` for requests that are not surely small: converting them
/// may take longer than a normal scheduler slot (seconds for a list of
/// millions of numbers).
#[rustler::nif(schedule = "DirtyCpu")]
fn bridge_call_dirty<'a>(
    env: Env<'a>,
    channel: ResourceArc<ChannelResource>,
    pool: ResourceArc<PoolResource>,
    tag: Term<'a>,
    method: String,
    request: Term<'a>,
    options: BridgeOptions<'a>,
) -> Started {
    start_call(env, channel, pool, tag, method, request, options)
}

fn start_call<'a>(
    env: Env<'a>,
    channel: ResourceArc<ChannelResource>,
    pool: ResourceArc<PoolResource>,
    tag: Term<'a>,
    method: String,
    request: Term<'a>,
    options: BridgeOptions<'a>,
) -> Started {
    let (method, message) = match prepare(&pool.pool, &method, request, false, &channel) {
        Ok(prepared) => prepared,
        Err(e) => return Ok(Err(NifError(e))),
    };
    let answerer = if options.threads {
        Answerer::Threads
    } else {
        Answerer::Loop
    };
    call::unary(
        env,
        channel,
        tag,
        call::decode_timeout(options.timeout)?,
        path(&method),
        message.encode_to_vec(),
        answerer,
        move |response| decode(&method, response),
        |env, response: DynamicMessage| Ok(dynamic::message_to_term(env, &response)),
    )
}

/// Calls a server-streaming method; the caller gets
/// `{:synapse_event, tag, {:message, response}}` for each response, then
/// `{:synapse_event, tag, {:result, nil} | {:error, error}}`.
#[rustler::nif]
fn bridge_stream_start<'a>(
    env: Env<'a>,
    channel: ResourceArc<ChannelResource>,
    pool: ResourceArc<PoolResource>,
    tag: Term<'a>,
    method: String,
    request: Term<'a>,
    options: BridgeOptions<'a>,
) -> Started {
    stream_start(env, channel, pool, tag, method, request, options)
}

/// `bridge_stream_start` for requests that are not surely small.
#[rustler::nif(schedule = "DirtyCpu")]
fn bridge_stream_start_dirty<'a>(
    env: Env<'a>,
    channel: ResourceArc<ChannelResource>,
    pool: ResourceArc<PoolResource>,
    tag: Term<'a>,
    method: String,
    request: Term<'a>,
    options: BridgeOptions<'a>,
) -> Started {
    stream_start(env, channel, pool, tag, method, request, options)
}

fn stream_start<'a>(
    env: Env<'a>,
    channel: ResourceArc<ChannelResource>,
    pool: ResourceArc<PoolResource>,
    tag: Term<'a>,
    method: String,
    request: Term<'a>,
    options: BridgeOptions<'a>,
) -> Started {
    let (method, message) = match prepare(&pool.pool, &method, request, true, &channel) {
        Ok(prepared) => prepared,
        Err(e) => return Ok(Err(NifError(e))),
    };
    call::server_stream(
        env,
        channel,
        tag,
        (options.timeout, options.window),
        ServerStream {
            method: path(&method),
            request: move || message.encode_to_vec(),
            decode: move |bytes| decode(&method, bytes),
            to_term: dynamic::message_to_term,
        },
    )
}

/// Finds the method and builds its request message, on the caller's
/// scheduler (the term is only readable there).
fn prepare(
    pool: &DescriptorPool,
    method: &str,
    request: Term<'_>,
    streaming: bool,
    channel: &ChannelResource,
) -> Result<(MethodDescriptor, DynamicMessage), Error> {
    let (service, name) = method.split_once('/').ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{method:?} is not of the form \"package.Service/Method\""
        ))
    })?;
    let method = pool
        .get_service_by_name(service)
        .and_then(|s| s.methods().find(|m| m.name() == name))
        .ok_or_else(|| Error::InvalidArgument(format!("no method {name} in service {service}")))?;
    if method.is_client_streaming() || method.is_server_streaming() != streaming {
        return Err(Error::InvalidArgument(format!(
            "{} is {}a server-streaming method",
            method.full_name(),
            if method.is_server_streaming() {
                ""
            } else {
                "not "
            }
        )));
    }
    let message = fits(
        dynamic::term_to_message(&method.input(), request, 0)?,
        channel.max_message_bytes,
    )?;
    Ok((method, message))
}

/// The method's gRPC path, `/package.Service/Method`.
fn path(method: &MethodDescriptor) -> String {
    format!("/{}/{}", method.parent_service().full_name(), method.name())
}

fn decode(
    method: &MethodDescriptor,
    response: prost::bytes::Bytes,
) -> Result<DynamicMessage, Error> {
    DynamicMessage::decode(method.output(), response)
        .map_err(|e| Error::Protocol(format!("cannot decode the response: {e}")))
}
