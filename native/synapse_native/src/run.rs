//! Agent runs (`SynapseCore.Agent.run_sync/3`).

use rustler::{Atom, Encoder, Env, LocalPid, NifMap, NifResult, ResourceArc, Term};

use crate::atoms;
use crate::call::{self, CallHandle};
use crate::channel::ChannelResource;
use crate::error::{Error, NifError};
use crate::json;
use crate::reply::Reply;
use synapse_client::proto::{run_result, RunRequest, RunResult, Usage};

#[derive(NifMap)]
pub struct RunArgs<'a> {
    agent_id: String,
    prompt: String,
    message_history: Term<'a>,
    model_settings: Term<'a>,
}

/// Starts a run and returns its handle at once; the result arrives as
/// `{:synapse_reply, tag, {:ok, map} | {:error, error}}`.
#[rustler::nif]
fn run_start<'a>(
    channel: ResourceArc<ChannelResource>,
    pid: LocalPid,
    tag: Term<'a>,
    request: RunArgs<'a>,
    timeout: Term<'a>,
) -> NifResult<Result<ResourceArc<CallHandle>, NifError>> {
    start(channel, pid, tag, request, timeout)
}

/// `run_start` for requests with large payloads (long message histories):
/// converting them to JSON may take longer than a normal scheduler slot.
#[rustler::nif(schedule = "DirtyCpu")]
fn run_start_dirty<'a>(
    channel: ResourceArc<ChannelResource>,
    pid: LocalPid,
    tag: Term<'a>,
    request: RunArgs<'a>,
    timeout: Term<'a>,
) -> NifResult<Result<ResourceArc<CallHandle>, NifError>> {
    start(channel, pid, tag, request, timeout)
}

/// Cancels a call; its caller gets `{:error, {:cancelled, ...}}` unless the
/// call already answered.
#[rustler::nif]
fn run_cancel(handle: ResourceArc<CallHandle>) -> Atom {
    handle.cancel();
    atoms::ok()
}

fn start<'a>(
    channel: ResourceArc<ChannelResource>,
    pid: LocalPid,
    tag: Term<'a>,
    args: RunArgs<'a>,
    timeout: Term<'a>,
) -> NifResult<Result<ResourceArc<CallHandle>, NifError>> {
    let timeout = call::decode_timeout(timeout)?;
    let request = match request(args) {
        Ok(request) => request,
        Err(e) => return Ok(Err(NifError(e))),
    };
    let mut client = channel.client.clone();
    let reply = Reply::new(pid, tag);
    Ok(Ok(call::spawn(
        channel,
        reply,
        timeout,
        move |deadline| async move {
            let mut request = tonic::Request::new(request);
            if let Some(deadline) = deadline {
                request.set_timeout(deadline);
            }
            client
                .run_sync(request)
                .await
                .map(tonic::Response::into_inner)
        },
        encode_result,
    )))
}

fn request(args: RunArgs<'_>) -> Result<RunRequest, Error> {
    Ok(RunRequest {
        agent_id: args.agent_id,
        prompt: args.prompt,
        message_history_json: json::encode_optional(args.message_history)
            .map_err(|e| context("message_history", e))?,
        model_settings_json: json::encode_optional(args.model_settings)
            .map_err(|e| context("model_settings", e))?,
    })
}

fn context(what: &str, error: Error) -> Error {
    match error {
        Error::InvalidArgument(message) => Error::InvalidArgument(format!("{what}: {message}")),
        other => other,
    }
}

/// `%{output: {:text, binary} | {:json, term}, usage: map, messages: list, run_id: binary}`
fn encode_result(env: Env<'_>, result: RunResult) -> Result<Term<'_>, Error> {
    let output = match result.output {
        Some(run_result::Output::Text(text)) => {
            (atoms::text(), json::string(env, &text)).encode(env)
        }
        Some(run_result::Output::Json(bytes)) => {
            (atoms::json(), json::decode(env, &bytes)?).encode(env)
        }
        None => return Err(Error::Protocol("the worker's result has no output".into())),
    };
    let messages = if result.messages_json.is_empty() {
        Vec::<Term<'_>>::new().encode(env)
    } else {
        json::decode(env, &result.messages_json)?
    };
    let usage = encode_usage(env, result.usage.unwrap_or_default());
    Term::map_from_pairs(
        env,
        &[
            (atoms::output().encode(env), output),
            (atoms::usage().encode(env), usage),
            (atoms::messages().encode(env), messages),
            (
                atoms::run_id().encode(env),
                json::string(env, &result.run_id),
            ),
        ],
    )
    .map_err(|_| Error::Internal("cannot build the result map".into()))
}

fn encode_usage(env: Env<'_>, usage: Usage) -> Term<'_> {
    let pairs = [
        (atoms::input_tokens(), usage.input_tokens),
        (atoms::output_tokens(), usage.output_tokens),
        (atoms::requests(), usage.requests),
        (atoms::tool_calls(), usage.tool_calls),
        (atoms::cache_read_tokens(), usage.cache_read_tokens),
        (atoms::cache_write_tokens(), usage.cache_write_tokens),
    ];
    Term::map_from_pairs(env, &pairs).unwrap_or_else(|_| Term::map_new(env))
}
