//! Agent runs: `SynapseCore.Agent.run/3` and `run_sync/3` (one reply) and
//! `run_stream/3` (events, then one final message).

use std::time::Duration;

use rustler::{Atom, Encoder, Env, LocalPid, NifMap, NifResult, ResourceArc, Term};
use synapse_client::proto::{
    run_event, run_input, run_result, RunInput, RunRequest, RunResult, Usage,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::atoms;
use crate::call::{self, CallError, CallHandle};
use crate::channel::ChannelResource;
use crate::error::{Error, NifError};
use crate::json;
use crate::reply::{Events, Reply, Style};
use crate::terms::elixir_struct;

#[derive(NifMap)]
pub struct RunArgs<'a> {
    agent_id: String,
    prompt: String,
    message_history: Term<'a>,
    model_settings: Term<'a>,
    usage_limits: Term<'a>,
}

type Started = NifResult<Result<ResourceArc<CallHandle>, NifError>>;

/// Starts a run and returns its handle at once; the caller gets
/// `{:synapse_reply, tag, {:ok, %SynapseCore.Result{}} | {:error, %SynapseCore.Error{}}}`.
#[rustler::nif]
fn run_start<'a>(
    env: Env<'a>,
    channel: ResourceArc<ChannelResource>,
    tag: Term<'a>,
    request: RunArgs<'a>,
    timeout: Term<'a>,
) -> Started {
    start_unary(env, channel, tag, request, timeout)
}

/// `run_start` for requests with large payloads (long message histories):
/// converting them to JSON may take longer than a normal scheduler slot.
#[rustler::nif(schedule = "DirtyCpu")]
fn run_start_dirty<'a>(
    env: Env<'a>,
    channel: ResourceArc<ChannelResource>,
    tag: Term<'a>,
    request: RunArgs<'a>,
    timeout: Term<'a>,
) -> Started {
    start_unary(env, channel, tag, request, timeout)
}

/// Starts a streaming run. `receiver` gets `{:synapse_event, tag, event}`
/// for each event, then `{:synapse_event, tag, {:result, result} | {:error, error}}`.
/// At most `window` events are sent ahead of the receiver's
/// acknowledgements (`run_ack`); the final message does not count.
#[rustler::nif]
fn run_stream_start<'a>(
    env: Env<'a>,
    channel: ResourceArc<ChannelResource>,
    receiver: LocalPid,
    tag: Term<'a>,
    request: RunArgs<'a>,
    timeout: Term<'a>,
    window: Term<'a>,
) -> Started {
    start_stream(env, channel, receiver, tag, request, timeout, window)
}

#[rustler::nif(schedule = "DirtyCpu")]
fn run_stream_start_dirty<'a>(
    env: Env<'a>,
    channel: ResourceArc<ChannelResource>,
    receiver: LocalPid,
    tag: Term<'a>,
    request: RunArgs<'a>,
    timeout: Term<'a>,
    window: Term<'a>,
) -> Started {
    start_stream(env, channel, receiver, tag, request, timeout, window)
}

/// Lets a stream send `count` more events.
#[rustler::nif]
fn run_ack(handle: ResourceArc<CallHandle>, count: usize) -> Atom {
    let room = tokio::sync::Semaphore::MAX_PERMITS - handle.credit.available_permits();
    handle.credit.add_permits(count.min(room));
    atoms::ok()
}

/// Cancels a call; its receiver gets a `:cancelled` error unless the call
/// already answered.
#[rustler::nif]
fn run_cancel(handle: ResourceArc<CallHandle>) -> Atom {
    handle.cancel();
    atoms::ok()
}

fn start_unary<'a>(
    env: Env<'a>,
    channel: ResourceArc<ChannelResource>,
    tag: Term<'a>,
    request: RunArgs<'a>,
    timeout: Term<'a>,
) -> Started {
    let timeout = call::decode_timeout(timeout)?;
    let request = match request_from(request) {
        Ok(request) => request,
        Err(e) => return Ok(Err(NifError(e))),
    };
    let caller = env.pid();
    let handle = call::handle(env, &[caller], 0);
    let mut client = channel.client.clone();
    call::spawn(
        channel,
        &handle,
        Reply::new(caller, tag, Style::Unary),
        timeout,
        move |deadline| async move {
            let response = client.run_sync(with_deadline(request, deadline)).await?;
            Ok(response.into_inner())
        },
        encode_result,
    );
    Ok(Ok(handle))
}

fn start_stream<'a>(
    env: Env<'a>,
    channel: ResourceArc<ChannelResource>,
    receiver: LocalPid,
    tag: Term<'a>,
    request: RunArgs<'a>,
    timeout: Term<'a>,
    window: Term<'a>,
) -> Started {
    let timeout = call::decode_timeout(timeout)?;
    let window = match call::decode_timeout(window)? {
        // The same shape as a timeout: a count or :infinity.
        Some(count) => usize::try_from(count.as_millis()).unwrap_or(usize::MAX),
        None => usize::MAX,
    };
    let request = match request_from(request) {
        Ok(request) => request,
        Err(e) => return Ok(Err(NifError(e))),
    };
    let caller = env.pid();
    let owners = if caller == receiver {
        vec![caller]
    } else {
        vec![caller, receiver]
    };
    let handle = call::handle(env, &owners, window);
    let reply = Reply::new(receiver, tag, Style::Stream);
    let events = reply.events(tag);
    let credit = handle.credit.clone();
    let client = channel.client.clone();
    call::spawn(
        channel,
        &handle,
        reply,
        timeout,
        move |deadline| stream(client, request, deadline, events, credit),
        encode_result,
    );
    Ok(Ok(handle))
}

/// Sends the start request, then relays events while the receiver has
/// credit. Without credit it stops reading, so HTTP/2 flow control slows the
/// worker down instead of events piling up in the receiver's mailbox.
async fn stream(
    mut client: synapse_client::proto::agent_service_client::AgentServiceClient<
        tonic::transport::Channel,
    >,
    request: RunRequest,
    deadline: Option<Duration>,
    mut events: Events,
    credit: std::sync::Arc<tokio::sync::Semaphore>,
) -> Result<RunResult, CallError> {
    // The request side stays open for the whole run: later messages (tool
    // results) go on it. `_inputs` keeps it open until this returns.
    let (_inputs, receiver) = mpsc::channel::<RunInput>(1);
    _inputs
        .send(RunInput {
            input: Some(run_input::Input::Start(request)),
        })
        .await
        .map_err(|_| Error::Internal("the request stream closed before it started".into()))?;
    let mut responses = client
        .run(with_deadline(ReceiverStream::new(receiver), deadline))
        .await?
        .into_inner();
    loop {
        credit
            .acquire()
            .await
            .map_err(|_| Error::Internal("the credit semaphore was closed".into()))?
            .forget();
        let event = responses.message().await?.ok_or_else(|| {
            Error::Protocol("the worker ended the stream without a result".into())
        })?;
        match event.event {
            Some(run_event::Event::TextDelta(text)) => {
                events.send(|env| (atoms::text_delta(), json::string(env, &text)).encode(env));
            }
            Some(run_event::Event::Result(result)) => return Ok(result),
            None => {
                return Err(Error::Protocol("the worker sent an empty event".into()).into());
            }
        }
    }
}

fn with_deadline<T>(message: T, deadline: Option<Duration>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(deadline) = deadline {
        request.set_timeout(deadline);
    }
    request
}

fn request_from(args: RunArgs<'_>) -> Result<RunRequest, Error> {
    Ok(RunRequest {
        agent_id: args.agent_id,
        prompt: args.prompt,
        message_history_json: json::encode_optional(args.message_history)
            .map_err(|e| context("message_history", e))?,
        model_settings_json: json::encode_optional(args.model_settings)
            .map_err(|e| context("model_settings", e))?,
        usage_limits_json: json::encode_optional(args.usage_limits)
            .map_err(|e| context("usage_limits", e))?,
    })
}

fn context(what: &str, error: Error) -> Error {
    match error {
        Error::InvalidArgument(message) => Error::InvalidArgument(format!("{what}: {message}")),
        other => other,
    }
}

/// `%SynapseCore.Result{output:, usage: %SynapseCore.Usage{}, messages:, run_id:}`
fn encode_result(env: Env<'_>, result: RunResult) -> Result<Term<'_>, Error> {
    let output = match result.output {
        Some(run_result::Output::Text(text)) => json::string(env, &text),
        Some(run_result::Output::Json(bytes)) => json::decode(env, &bytes)?,
        None => return Err(Error::Protocol("the worker's result has no output".into())),
    };
    let messages = if result.messages_json.is_empty() {
        Vec::<Term<'_>>::new().encode(env)
    } else {
        json::decode(env, &result.messages_json)?
    };
    let usage = encode_usage(env, result.usage.unwrap_or_default());
    Ok(elixir_struct(
        env,
        atoms::result_module(),
        &[
            (atoms::output(), output),
            (atoms::usage(), usage),
            (atoms::messages(), messages),
            (atoms::run_id(), json::string(env, &result.run_id)),
        ],
    ))
}

fn encode_usage(env: Env<'_>, usage: Usage) -> Term<'_> {
    let count = |n: i64| n.encode(env);
    elixir_struct(
        env,
        atoms::usage_module(),
        &[
            (atoms::input_tokens(), count(usage.input_tokens)),
            (atoms::output_tokens(), count(usage.output_tokens)),
            (atoms::requests(), count(usage.requests)),
            (atoms::tool_calls(), count(usage.tool_calls)),
            (atoms::cache_read_tokens(), count(usage.cache_read_tokens)),
            (atoms::cache_write_tokens(), count(usage.cache_write_tokens)),
        ],
    )
}
