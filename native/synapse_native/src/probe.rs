//! Probes (`SynapseCore.Probe`, and the worker's health checks): round
//! trips to a worker with no agent in them.

use rustler::{Binary, Encoder, Env, ResourceArc, Term};
use synapse_client::proto::health::health_check_response::ServingStatus;
use synapse_client::proto::health::{HealthCheckRequest, HealthCheckResponse};
use synapse_client::proto::{methods, EchoReply, EchoRequest, EchoStreamRequest};

use crate::atoms;
use crate::call::{self, ServerStream, Started};
use crate::channel::ChannelResource;

/// Asks the worker's health service whether it serves `service` (`""`:
/// the worker as a whole); answers `{:synapse_reply, tag, {:ok, :serving |
/// :not_serving | :unknown} | {:error, error}}`, a `:not_found` error for a
/// service the worker does not have.
#[rustler::nif]
fn probe_health<'a>(
    env: Env<'a>,
    channel: ResourceArc<ChannelResource>,
    tag: Term<'a>,
    service: String,
    timeout: Term<'a>,
) -> Started {
    call::unary_method(
        env,
        channel,
        tag,
        timeout,
        methods::HEALTH_CHECK,
        HealthCheckRequest { service },
        |env, response: HealthCheckResponse| {
            Ok(match ServingStatus::try_from(response.status) {
                Ok(ServingStatus::Serving) => atoms::serving(),
                Ok(ServingStatus::NotServing) => atoms::not_serving(),
                _ => atoms::unknown(),
            }
            .encode(env))
        },
    )
}

/// Echo: the worker answers `payload`; the caller gets
/// `{:synapse_reply, tag, {:ok, payload} | {:error, error}}`.
#[rustler::nif]
fn probe_echo<'a>(
    env: Env<'a>,
    channel: ResourceArc<ChannelResource>,
    tag: Term<'a>,
    payload: Binary<'a>,
    timeout: Term<'a>,
) -> Started {
    let request = EchoRequest {
        payload: payload.as_slice().to_vec(),
    };
    call::unary_method(
        env,
        channel,
        tag,
        timeout,
        methods::PROBE_SERVICE_ECHO,
        request,
        |env, reply: EchoReply| Ok(bytes_term(env, &reply.payload)),
    )
}

/// EchoStream: `count` replies of `payload`, as events `{:message, payload}`
/// then `{:result, nil}`, at most `window` ahead of `run_ack`.
#[rustler::nif]
fn probe_echo_stream<'a>(
    env: Env<'a>,
    channel: ResourceArc<ChannelResource>,
    tag: Term<'a>,
    payload: Binary<'a>,
    count: i32,
    timeout: Term<'a>,
    window: Term<'a>,
) -> Started {
    let request = EchoStreamRequest {
        payload: payload.as_slice().to_vec(),
        count,
    };
    call::server_stream(
        env,
        channel,
        tag,
        (timeout, window),
        ServerStream {
            method: methods::PROBE_SERVICE_ECHO_STREAM.to_owned(),
            request: move || prost::Message::encode_to_vec(&request),
            decode: call::decode::<EchoReply>,
            to_term: echo_term,
        },
    )
}

fn echo_term<'a>(env: Env<'a>, reply: &EchoReply) -> Term<'a> {
    bytes_term(env, &reply.payload)
}

fn bytes_term<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    let mut binary = rustler::NewBinary::new(env, bytes.len());
    binary.as_mut_slice().copy_from_slice(bytes);
    binary.into()
}
