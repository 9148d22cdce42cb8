//! Calls to Bridge services (`SynapseCore.Bridge`): gRPC methods known only
//! at run time, from the FileDescriptorSet the Bridge generated. Requests
//! and responses are dynamic protobuf messages, converted from and to
//! Elixir terms in [`dynamic`].

mod dynamic;

use std::collections::HashMap;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor};
use rustler::{Binary, Encoder, Env, NifMap, Resource, ResourceArc, Term};
use synapse_client::lane::Answerer;

use crate::call::{self, fits, ServerStream, Started};
use crate::channel::ChannelResource;
use crate::error::{Error, NifError};

/// The methods of one generated Bridge module's descriptors, found once,
/// when they load, rather than on each call: by their name as calls give it
/// (`"package.Service/Method"`). Each descriptor keeps the pool alive.
pub struct PoolResource {
    methods: HashMap<String, Method>,
}

/// A method of the pool, with its gRPC path (`/package.Service/Method`).
struct Method {
    descriptor: MethodDescriptor,
    path: String,
}

impl PoolResource {
    fn new(pool: DescriptorPool) -> Self {
        let methods = pool
            .services()
            .flat_map(|service| service.methods().collect::<Vec<_>>())
            .map(|descriptor| {
                let path = path(&descriptor);
                (path[1..].to_owned(), Method { descriptor, path })
            })
            .collect();
        Self { methods }
    }
}

#[rustler::resource_impl]
impl Resource for PoolResource {}

/// Loads a FileDescriptorSet (as the Bridge writes it, imports included).
#[rustler::nif(schedule = "DirtyCpu")]
fn bridge_pool<'a>(env: Env<'a>, descriptor_set: Binary<'a>) -> Term<'a> {
    DescriptorPool::decode(descriptor_set.as_slice())
        .map(|pool| ResourceArc::new(PoolResource::new(pool)))
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
    let (method, message) = match prepare(&pool, &method, request, false, &channel) {
        Ok(prepared) => prepared,
        Err(e) => return Ok(Err(NifError(e))),
    };
    let descriptor = method.descriptor.clone();
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
        method.path.clone(),
        message.encode_to_vec(),
        answerer,
        move |response| decode(&descriptor, response),
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
    let (method, message) = match prepare(&pool, &method, request, true, &channel) {
        Ok(prepared) => prepared,
        Err(e) => return Ok(Err(NifError(e))),
    };
    let descriptor = method.descriptor.clone();
    call::server_stream(
        env,
        channel,
        tag,
        (options.timeout, options.window),
        ServerStream {
            method: method.path.clone(),
            request: move || message.encode_to_vec(),
            decode: move |bytes| decode(&descriptor, bytes),
            to_term: dynamic::message_to_term,
        },
    )
}

/// Finds the method and builds its request message, on the caller's
/// scheduler (the term is only readable there).
fn prepare<'p>(
    pool: &'p PoolResource,
    method: &str,
    request: Term<'_>,
    streaming: bool,
    channel: &ChannelResource,
) -> Result<(&'p Method, DynamicMessage), Error> {
    let found = pool.methods.get(method).ok_or_else(|| missing(method))?;
    let descriptor = &found.descriptor;
    if descriptor.is_client_streaming() || descriptor.is_server_streaming() != streaming {
        return Err(Error::InvalidArgument(format!(
            "{} is {}a server-streaming method",
            descriptor.full_name(),
            if descriptor.is_server_streaming() {
                ""
            } else {
                "not "
            }
        )));
    }
    let message = fits(
        dynamic::term_to_message(&descriptor.input(), request, 0)?,
        channel.max_message_bytes,
    )?;
    Ok((found, message))
}

/// Why `method` names no method of the pool.
fn missing(method: &str) -> Error {
    Error::InvalidArgument(match method.split_once('/') {
        None => format!("{method:?} is not of the form \"package.Service/Method\""),
        Some((service, name)) => format!("no method {name} in service {service}"),
    })
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
