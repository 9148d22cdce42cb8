//! Agent runs: `SynapseCore.Agent.run/3` and `run_sync/3` (one reply) and
//! `run_stream/3` (events, then one final message).

use rustler::{Atom, Binary, Encoder, Env, LocalPid, NifMap, Resource, ResourceArc, Term};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use synapse_client::lane::Answerer;
use synapse_client::proto::{
    approval_decision, methods, run_event, run_input, run_result, tool_result, ApprovalAnswer,
    ApprovalDecision, ApprovalRequest, Denied, RunEvent, RunInput, RunRequest, RunResult, ToolDef,
    ToolRequest, ToolResult, Usage,
};
use synapse_client::worker::Requests;
use synapse_client::Responses;
use tonic::Status;

use crate::approval;
use crate::atoms;
use crate::call::{self, fits, fits_input, CallError, CallHandle, Started};
use crate::channel::ChannelResource;
use crate::error::{Error, NifError};
use crate::event::{self, lenient_json, map};
use crate::json;
use crate::messages;
use crate::prompt;
use crate::reply::{Events, Reply, Runner, Style};
use crate::terms::{self, elixir_struct};

/// How much longer than the run's own timeout its call may take: the
/// worker's pydantic-ai run stops at the timeout and answers with what it
/// did (its messages and usage), which takes a moment to arrive.
const ANSWER_GRACE: Duration = Duration::from_secs(1);

#[derive(NifMap)]
pub struct RunArgs<'a> {
    agent_id: String,
    /// `nil` for no new user message (a list of parts, or none at all).
    prompt: Option<String>,
    /// pydantic-ai's JSON of a history (a binary: sent as it is), a list of
    /// message maps (encoded to JSON), or `nil`.
    message_history: Term<'a>,
    model_settings: Term<'a>,
    usage_limits: Term<'a>,
    /// Tools executed in Elixir (streaming runs only).
    tools: Vec<ToolArgs<'a>>,
    /// No display events and no streamed model requests: only tool
    /// requests and the result.
    quiet: bool,
    /// Any term: sent to the worker as JSON when it has a JSON form.
    deps: Term<'a>,
    output_tool_return_content: Option<String>,
    /// Whether the result carries the run's messages.
    messages: bool,
    /// The caller's trace context headers (validated in Elixir).
    trace_context: std::collections::HashMap<String, String>,
    /// `nil` or the normalised decisions of `SynapseCore.DeferredToolResults`.
    deferred_tool_results: Term<'a>,
    /// Calls needing approval are asked of the runner during the run.
    inline_approvals: bool,
    /// Streamed runs: the kinds of events to send (`RunEvent` field names).
    events: Vec<String>,
    /// A prompt made of parts (`crate::prompt`); `prompt` is then `nil`.
    prompt_parts: Vec<Term<'a>>,
}

#[derive(NifMap)]
pub struct ToolArgs<'a> {
    name: String,
    description: String,
    /// Its parameters' JSON Schema, as JSON (`SynapseCore.Tool.definition/1`
    /// encodes it once per tool, not with every run).
    parameters_json: Binary<'a>,
    max_retries: Option<i32>,
    requires_approval: bool,
}

/// How a streaming run is delivered.
#[derive(NifMap)]
pub struct StreamOptions<'a> {
    /// Gets the events and the final answer.
    receiver: LocalPid,
    /// Executes the run's tools: gets `{:synapse_tool_request, tag, request}`.
    runner: Option<LocalPid>,
    timeout: Term<'a>,
    /// Events sent ahead of acknowledgements: a count or `:infinity`.
    window: Term<'a>,
    /// `:stream` (events, then `{:result, _}`) or `:unary` (one
    /// `{:synapse_reply, ...}`, as `run_start`).
    reply: Atom,
}

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

/// Starts a run on the `Run` stream: the receiver gets its events (with
/// `reply: :stream`) or only its result (`reply: :unary`), and the runner,
/// if any, its tool requests. At most `window` events are sent ahead of the
/// receiver's acknowledgements (`run_ack`); the final message does not count.
#[rustler::nif]
fn run_stream_start<'a>(
    env: Env<'a>,
    channel: ResourceArc<ChannelResource>,
    tag: Term<'a>,
    request: RunArgs<'a>,
    options: StreamOptions<'a>,
) -> Started {
    start_stream(env, channel, tag, request, options)
}

#[rustler::nif(schedule = "DirtyCpu")]
fn run_stream_start_dirty<'a>(
    env: Env<'a>,
    channel: ResourceArc<ChannelResource>,
    tag: Term<'a>,
    request: RunArgs<'a>,
    options: StreamOptions<'a>,
) -> Started {
    start_stream(env, channel, tag, request, options)
}

/// A tool request's claim: whoever answers it first, through
/// [`run_tool_result`], takes it, and only they answer. Taken inside the NIF
/// that sends the answer, so that a claim taken is an answer sent: a process
/// cannot be stopped between the two (an exit signal waits for a NIF to
/// return, a dirty one included).
pub struct ToolClaim {
    taken: AtomicBool,
}

#[rustler::resource_impl]
impl Resource for ToolClaim {}

/// A new claim, for one tool request.
#[rustler::nif]
fn run_tool_claim() -> ResourceArc<ToolClaim> {
    ResourceArc::new(ToolClaim {
        taken: AtomicBool::new(false),
    })
}

/// Answers a tool request of a run, unless its `claim` was taken:
/// `{:ok, value}` (sent to the model as JSON) or `{:retry, message}` (sent
/// back to the model as a retry prompt). Returns `:ok` once sent, `:claimed`
/// (nothing sent) when the request was answered already, or
/// `{:error, error}` (nothing sent, the claim left untaken) when the value
/// has no JSON form, the message is not UTF-8, or either is over the
/// channel's `max_message_bytes`: the runner then answers a retry prompt
/// saying so. Never raises on the outcome, whatever it holds. For small
/// outcomes (`SynapseCore.ToolRunner` tells); `run_tool_result_dirty` takes
/// the others.
#[rustler::nif]
fn run_tool_result<'a>(
    env: Env<'a>,
    handle: ResourceArc<CallHandle>,
    request_id: String,
    outcome: Term<'a>,
    claim: ResourceArc<ToolClaim>,
) -> Term<'a> {
    tool_result(env, &handle, request_id, outcome, &claim)
}

/// `run_tool_result` on a dirty scheduler: encoding a large outcome may take
/// longer than a normal scheduler slot.
#[rustler::nif(schedule = "DirtyCpu")]
fn run_tool_result_dirty<'a>(
    env: Env<'a>,
    handle: ResourceArc<CallHandle>,
    request_id: String,
    outcome: Term<'a>,
    claim: ResourceArc<ToolClaim>,
) -> Term<'a> {
    tool_result(env, &handle, request_id, outcome, &claim)
}

fn tool_result<'a>(
    env: Env<'a>,
    handle: &CallHandle,
    request_id: String,
    outcome: Term<'a>,
    claim: &ToolClaim,
) -> Term<'a> {
    // Encoded first: a refused outcome leaves the claim to the answer that
    // replaces it.
    let input = match tool_outcome(outcome, request_id, handle.max_message_bytes) {
        Ok(input) => input,
        Err(error) => return (atoms::error(), NifError(error)).encode(env),
    };
    if claim.taken.swap(true, Ordering::AcqRel) {
        return atoms::claimed().encode(env);
    }
    handle.send_input(input);
    atoms::ok().encode(env)
}

/// A tool call's outcome as the Elixir side gives it (an Elixir tool's
/// answer, a deferred call's result): pydantic-ai's return value,
/// `ModelRetry` or `ToolFailed`.
pub enum Outcome<'a> {
    Value(Term<'a>),
    Retry(String),
    Failed(String),
}

/// Reads `{:ok, value}`, `{:retry, message}` or `{:failed, message}`;
/// `what` names the term in errors.
pub fn read_outcome<'a>(term: Term<'a>, what: &str) -> Result<Outcome<'a>, Error> {
    let shape = || {
        Error::InvalidArgument(format!(
            "{what} is {{:ok, value}}, {{:retry, message}} or {{:failed, message}}"
        ))
    };
    let (kind, value) = term.decode::<(Atom, Term<'a>)>().map_err(|_| shape())?;
    let message = || {
        terms::text(value).ok_or_else(|| {
            Error::InvalidArgument(format!("the message of {what} must be a UTF-8 string"))
        })
    };
    if kind == atoms::ok() {
        Ok(Outcome::Value(value))
    } else if kind == atoms::retry() {
        Ok(Outcome::Retry(message()?))
    } else if kind == atoms::failed() {
        Ok(Outcome::Failed(message()?))
    } else {
        Err(shape())
    }
}

/// The request's answer, as the run's stream carries it.
fn tool_outcome(
    outcome: Term<'_>,
    request_id: String,
    max_message_bytes: usize,
) -> Result<run_input::Input, Error> {
    let outcome = match read_outcome(outcome, "a tool outcome")? {
        Outcome::Value(value) => tool_result::Outcome::ReturnJson(json::encode(value)?),
        Outcome::Retry(message) => tool_result::Outcome::RetryMessage(message),
        Outcome::Failed(message) => tool_result::Outcome::FailedMessage(message),
    };
    // The whole message the worker gets, its request id and envelope
    // included, so that a result let through is never refused later (by
    // gRPC, which would fail the whole run).
    fits_input(
        run_input::Input::ToolResult(ToolResult {
            request_id,
            outcome: Some(outcome),
        }),
        max_message_bytes,
    )
}

/// Lets a stream send `count` more events.
#[rustler::nif]
fn run_ack(handle: ResourceArc<CallHandle>, count: usize) -> Atom {
    let room = call::MAX_CREDIT.saturating_sub(handle.credit.available_permits());
    handle.credit.add_permits(count.min(room));
    atoms::ok()
}

/// The back-pressure a stream met so far: `{waits, nanoseconds waited}`.
#[rustler::nif]
fn run_waits(handle: ResourceArc<CallHandle>) -> (u64, u64) {
    handle.waits.get()
}

/// Cancels a call; its receiver gets a `:cancelled` error unless the call
/// already answered. A run on the `Run` stream is asked to stop first, and
/// its error then carries what it did (see `CallHandle::stop`). Returns
/// `:over` when the call had answered already (its answer is in its
/// receiver's mailbox, or was taken: nothing more comes), else `:ok`.
#[rustler::nif]
fn run_cancel(handle: ResourceArc<CallHandle>) -> Atom {
    if handle.answered.load(Ordering::Acquire) {
        return atoms::over();
    }
    handle.stop();
    atoms::ok()
}

/// Whether the call's final answer was sent to its receiver: it is then in
/// the receiver's mailbox, or was taken from it. Set after the send, so a
/// receiver that reads `true` and then finds no answer knows it was taken.
#[rustler::nif]
fn run_answered(handle: ResourceArc<CallHandle>) -> bool {
    handle.answered.load(Ordering::Acquire)
}

fn start_unary<'a>(
    env: Env<'a>,
    channel: ResourceArc<ChannelResource>,
    tag: Term<'a>,
    request: RunArgs<'a>,
    timeout: Term<'a>,
) -> Started {
    let timeout = call::decode_timeout(timeout)?;
    let request = request_from(request, timeout);
    let timeout = timeout.map(|t| t + ANSWER_GRACE);
    let request = match request.and_then(|r| fits(r, channel.max_message_bytes)) {
        Ok(request) => request,
        Err(e) => return Ok(Err(NifError(e))),
    };
    call::unary(
        env,
        channel,
        tag,
        timeout,
        methods::AGENT_SERVICE_RUN_SYNC.to_owned(),
        prost::Message::encode_to_vec(&request),
        Answerer::Loop,
        // The answer is a result or the run's failure (in band).
        |response| {
            let last: RunEvent = call::decode(response)?;
            match last.event {
                Some(run_event::Event::Result(result)) => Ok(result),
                Some(run_event::Event::Failure(failure)) => Err(Error::from_failure(failure)),
                _ => Err(Error::Protocol(
                    "RunSync answered neither a result nor a failure".into(),
                )),
            }
        },
        encode_result,
    )
}

fn start_stream<'a>(
    env: Env<'a>,
    channel: ResourceArc<ChannelResource>,
    tag: Term<'a>,
    request: RunArgs<'a>,
    options: StreamOptions<'a>,
) -> Started {
    let timeout = call::decode_timeout(options.timeout)?;
    let request = request_from(request, timeout);
    let timeout = timeout.map(|t| t + ANSWER_GRACE);
    let window = call::decode_window(options.window)?;
    let style = if options.reply == atoms::stream() {
        Style::Stream
    } else if options.reply == atoms::unary() {
        Style::Unary
    } else {
        return Err(rustler::Error::BadArg);
    };
    let request = match request.and_then(|r| fits(r, channel.max_message_bytes)) {
        Ok(request) => request,
        Err(e) => return Ok(Err(NifError(e))),
    };
    // The run is cancelled if any of these exits: who started it, who gets
    // its events, and who executes its tools (whose requests would
    // otherwise wait for the deadline).
    let caller = env.pid();
    let mut owners = vec![caller];
    for pid in std::iter::once(options.receiver).chain(options.runner) {
        if !owners.contains(&pid) {
            owners.push(pid);
        }
    }
    let handle = call::with_limit(env, &owners, window, channel.max_message_bytes);
    let mut reply = Reply::new(options.receiver, tag, style).noting(&handle.answered);
    let runner = options
        .runner
        .map(|pid| reply.with_runner(pid, usage_of_result));
    // The request stream: the start request, then tool results until the
    // run ends. It opens on this thread (on the lane, the start is on its
    // way before the NIF returns); tool results are sent by the threads
    // that call `run_tool_result`.
    let start = prost::Message::encode_to_vec(&RunInput {
        input: Some(run_input::Input::Start(request)),
    });
    // A quiet run sends its caller nothing but tool requests and its end:
    // on the lane, each is consumed where it is read, with no task.
    if let (Style::Unary, Some(lane)) = (style, channel.worker.lane()) {
        let quiet = Quiet { runner };
        let inputs = call::stream_on_lane(
            channel.clone(),
            lane,
            &handle,
            reply,
            timeout,
            (methods::AGENT_SERVICE_RUN, start),
            quiet,
            encode_result,
        );
        if let Some(inputs) = inputs {
            handle.set_inputs(inputs);
        }
        return Ok(Ok(handle));
    }
    let events = reply.events();
    let credit = handle.credit.clone();
    let waits = handle.waits.clone();
    let stopping = handle.stopping();
    let inputs_of = handle.clone();
    let target = channel.clone();
    call::spawn(
        channel,
        &handle,
        reply,
        timeout,
        move |deadline| {
            let (inputs, responses) =
                target
                    .worker
                    .streaming(methods::AGENT_SERVICE_RUN, start, deadline);
            inputs_of.set_inputs(inputs.clone());
            let relay = Relay {
                events,
                runner,
                inputs,
                credit,
                waits,
                stopping,
            };
            stream(responses, relay)
        },
        encode_result,
    );
    Ok(Ok(handle))
}

/// Where a streaming run's messages go.
struct Relay {
    events: Events,
    runner: Option<Runner>,
    /// To answer tool requests nobody can execute.
    inputs: Requests,
    credit: std::sync::Arc<tokio::sync::Semaphore>,
    waits: std::sync::Arc<call::Waits>,
    /// Cancelled once the run is asked to stop.
    stopping: tokio_util::sync::CancellationToken,
}

/// Relays a run's events while the receiver has credit. Without credit it
/// stops reading, so flow control (HTTP/2's, or the lane's credit) slows the
/// worker down instead of events piling up in the receiver's mailbox. Only
/// events take credit: the run's final answer is read and sent whatever the
/// receiver acknowledged, as are its tool and approval requests when they
/// come.
///
/// The future lives as long as the run (boxed, in the task of
/// `call::spawn`), so what it holds across its waits is kept small: the
/// relay once (an `async fn` would hold its argument and a copy of it), and
/// an event only while it waits for credit, boxed (a decoded event has room
/// for the largest, a result).
#[allow(clippy::manual_async_fn)] // an `async fn` would hold the relay twice
fn stream(
    responses: impl Future<Output = Result<Responses, Status>>,
    mut relay: Relay,
) -> impl Future<Output = Result<RunResult, CallError>> {
    async move {
        let mut responses = responses.await?;
        loop {
            let message = responses.message().await?.ok_or_else(|| {
                Error::Protocol("the worker ended the stream without a result".into())
            })?;
            let waiting = match call::decode::<RunEvent>(message)?.event {
                Some(run_event::Event::ToolRequest(request)) => {
                    request_tool(&mut relay.runner, &relay.inputs, request);
                    continue;
                }
                Some(run_event::Event::ApprovalRequest(request)) => {
                    request_approval(&mut relay.runner, &relay.inputs, request);
                    continue;
                }
                Some(run_event::Event::Result(result)) => return Ok(result),
                Some(run_event::Event::Failure(failure)) => {
                    return Err(Error::from_failure(failure).into());
                }
                // Every other message is an event for the receiver
                // (`crate::event`), sent at once when there is credit.
                Some(shown) => {
                    if take_spare_credit(&relay.credit) {
                        send_event(&mut relay.events, shown);
                        continue;
                    }
                    Box::new(shown)
                }
                None => {
                    return Err(Error::Protocol("the worker sent an empty event".into()).into());
                }
            };
            if credit_for_event(&relay).await? {
                send_event(&mut relay.events, *waiting);
            }
        }
    }
}

/// Sends an event to the run's receiver. (`encode` has a term for each.)
fn send_event(events: &mut Events, shown: run_event::Event) {
    events.send(move |env| event::encode(env, shown).unwrap_or_else(|| atoms::nil().encode(env)));
}

/// Takes the credit to send one event; false when the event is dropped.
/// Once the run is asked to stop, the events the worker sends before its
/// answer go only while credit lasts: waiting for a receiver that does not
/// acknowledge would hold back the answer (what the run did) until the stop's
/// grace ran out, and the answer carries all they said.
async fn credit_for_event(relay: &Relay) -> Result<bool, CallError> {
    if relay.stopping.is_cancelled() {
        return Ok(take_spare_credit(&relay.credit));
    }
    tokio::select! {
        biased;
        taken = call::take_credit(&relay.credit, &relay.waits) => taken.map(|()| true),
        () = relay.stopping.cancelled() => Ok(take_spare_credit(&relay.credit)),
    }
}

fn take_spare_credit(credit: &tokio::sync::Semaphore) -> bool {
    credit.try_acquire().map(|permit| permit.forget()).is_ok()
}

/// Where a quiet run's responses go on the lane (`call::stream_on_lane`):
/// its tool and approval requests to its runner, as [`stream`] sends them.
struct Quiet {
    runner: Option<Runner>,
}

impl call::Consume<RunResult> for Quiet {
    fn response(
        &mut self,
        response: prost::bytes::Bytes,
        inputs: &Requests,
    ) -> Option<Result<RunResult, Error>> {
        let event: RunEvent = match call::decode(response) {
            Ok(event) => event,
            Err(error) => return Some(Err(error)),
        };
        match event.event {
            Some(run_event::Event::ToolRequest(request)) => {
                request_tool(&mut self.runner, inputs, request);
                None
            }
            Some(run_event::Event::ApprovalRequest(request)) => {
                request_approval(&mut self.runner, inputs, request);
                None
            }
            Some(run_event::Event::Result(result)) => Some(Ok(result)),
            Some(run_event::Event::Failure(failure)) => Some(Err(Error::from_failure(failure))),
            Some(_) => Some(Err(Error::Protocol(
                "the worker sent an event to a run that asked for none".into(),
            ))),
            None => Some(Err(Error::Protocol(
                "the worker sent an empty event".into(),
            ))),
        }
    }
}

/// Hands an approval request to the run's runner, or denies it when there
/// is none.
fn request_approval(runner: &mut Option<Runner>, inputs: &Requests, request: ApprovalRequest) {
    let delivered = match runner {
        Some(runner) => runner.send_approval(|env| approval::encode_request(env, &request)),
        None => false,
    };
    if !delivered {
        // Nobody can decide: the call is denied, and the model told why.
        let _ = inputs.send(prost::Message::encode_to_vec(&RunInput {
            input: Some(run_input::Input::Approval(ApprovalAnswer {
                request_id: request.request_id,
                decision: Some(ApprovalDecision {
                    decision: Some(approval_decision::Decision::Denied(Denied {
                        message: Some("Nobody can approve this tool call.".into()),
                    })),
                }),
            })),
        }));
    }
}

/// Hands a tool request to the run's runner; without one (or once it has
/// exited) the call can only fail, and the model is told so.
fn request_tool(runner: &mut Option<Runner>, inputs: &Requests, request: ToolRequest) {
    let delivered = match runner {
        Some(runner) => runner.send(|env| encode_tool_request(env, &request)),
        None => false,
    };
    if !delivered {
        let _ = inputs.send(prost::Message::encode_to_vec(&RunInput {
            input: Some(run_input::Input::ToolResult(ToolResult {
                request_id: request.request_id,
                outcome: Some(tool_result::Outcome::RetryMessage(format!(
                    "the tool {:?} is not available",
                    request.name
                ))),
            })),
        }));
    }
}

/// `%{request_id:, name:, args:, tool_call_id:, run_id:, retry:, max_retries:}`
fn encode_tool_request<'a>(env: Env<'a>, request: &ToolRequest) -> Term<'a> {
    map(
        env,
        &[
            (atoms::request_id(), json::string(env, &request.request_id)),
            (atoms::name(), json::string(env, &request.name)),
            (atoms::args(), lenient_json(env, &request.args_json)),
            (
                atoms::tool_call_id(),
                json::string(env, &request.tool_call_id),
            ),
            (atoms::run_id(), json::string(env, &request.run_id)),
            (atoms::retry(), request.retry.encode(env)),
            (atoms::max_retries(), request.max_retries.encode(env)),
        ],
    )
}

fn request_from(args: RunArgs<'_>, timeout: Option<Duration>) -> Result<RunRequest, Error> {
    let tools = args
        .tools
        .into_iter()
        .map(|tool| ToolDef {
            parameters_json: tool.parameters_json.as_slice().to_vec(),
            name: tool.name,
            description: tool.description,
            max_retries: tool.max_retries,
            requires_approval: tool.requires_approval,
        })
        .collect();
    // Deps with no JSON form are for the Elixir tools only; the worker
    // fails the run with the reason if its agent needs them.
    let (deps_json, deps_error) = if is_nil(args.deps) {
        (None, String::new())
    } else {
        match json::encode(args.deps) {
            Ok(bytes) => (Some(bytes), String::new()),
            Err(e) => (None, e.to_string()),
        }
    };
    Ok(RunRequest {
        tools,
        quiet: args.quiet,
        agent_id: args.agent_id,
        prompt: args.prompt,
        message_history_json: history_json(args.message_history)
            .map_err(|e| context("message_history", e))?,
        deps_json,
        deps_error,
        timeout_ms: timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        output_tool_return_content: args.output_tool_return_content,
        omit_messages: !args.messages,
        trace_context: args.trace_context,
        events: args.events,
        prompt_parts: prompt::parts(&args.prompt_parts)?,
        model_settings_json: json::encode_optional(args.model_settings)
            .map_err(|e| context("model_settings", e))?,
        usage_limits_json: json::encode_optional(args.usage_limits)
            .map_err(|e| context("usage_limits", e))?,
        deferred_tool_results: approval::results_from(args.deferred_tool_results)?,
        inline_approvals: args.inline_approvals,
    })
}

/// A history given as pydantic-ai's own JSON (a binary) goes as it is, byte
/// for byte; a list of maps is encoded.
fn history_json(history: Term<'_>) -> Result<Vec<u8>, Error> {
    match history.decode::<rustler::Binary<'_>>() {
        Ok(bytes) => Ok(bytes.as_slice().to_vec()),
        Err(_) => json::encode_optional(history),
    }
}

pub(crate) fn is_nil(term: Term<'_>) -> bool {
    term.decode::<Atom>().is_ok_and(|atom| atom == atoms::nil())
}

pub(crate) fn context(what: &str, error: Error) -> Error {
    match error {
        Error::InvalidArgument(message) => Error::InvalidArgument(format!("{what}: {message}")),
        other => other,
    }
}

/// `%SynapseCore.Result{output:, output_type:, usage: %SynapseCore.Usage{},
/// messages: %SynapseCore.Messages{} | nil, new_message_index:, run_id:}`:
/// `messages` is `nil` when the run left them out (`omit_messages`; a run
/// that kept them has at least one, never empty JSON).
fn encode_result(env: Env<'_>, result: RunResult) -> Result<Term<'_>, Error> {
    let output = match result.output {
        Some(run_result::Output::Text(text)) => json::string(env, &text),
        Some(run_result::Output::Json(bytes)) => json::decode(env, &bytes)?,
        Some(run_result::Output::Deferred(deferred)) => approval::encode_output(env, &deferred)?,
        Some(run_result::Output::Binary(bytes)) => json::bytes(env, &bytes),
        None => return Err(Error::Protocol("the worker's result has no output".into())),
    };
    let usage = encode_usage(env, result.usage.unwrap_or_default());
    let messages = if result.messages_json.is_empty() {
        atoms::nil().encode(env)
    } else {
        messages::encode(env, &result.messages_json, result.message_count)
    };
    Ok(elixir_struct(
        env,
        atoms::result_module(),
        &[
            (atoms::output(), output),
            (atoms::output_type(), json::string(env, &result.output_type)),
            (atoms::usage(), usage),
            (atoms::messages(), messages),
            (
                atoms::new_message_index(),
                result.new_message_index.encode(env),
            ),
            (atoms::run_id(), json::string(env, &result.run_id)),
        ],
    ))
}

/// The usage of a run's result, for its runner: `%SynapseCore.Usage{}`.
fn usage_of_result<'a>(env: Env<'a>, value: &dyn std::any::Any) -> Term<'a> {
    let usage = value
        .downcast_ref::<RunResult>()
        .and_then(|result| result.usage.as_ref());
    encode_usage(env, usage.cloned().unwrap_or_default())
}

pub fn encode_usage(env: Env<'_>, usage: Usage) -> Term<'_> {
    let count = |n: i64| n.encode(env);
    let by_request: Vec<Term<'_>> = usage
        .by_request
        .iter()
        .map(|request| {
            let mut fields = usage_counts(env, request.usage.as_ref());
            // One response, whose tool calls are counted by the run.
            fields.push((atoms::requests(), count(1)));
            fields.push((atoms::tool_calls(), count(0)));
            fields.push((atoms::by_request(), Vec::<Term<'_>>::new().encode(env)));
            let usage = elixir_struct(env, atoms::usage_module(), &fields);
            elixir_struct(
                env,
                atoms::request_usage_module(),
                &[
                    (atoms::model_name(), json::string(env, &request.model_name)),
                    (
                        atoms::provider_name(),
                        json::string(env, &request.provider_name),
                    ),
                    (atoms::usage(), usage),
                ],
            )
        })
        .collect();
    let mut fields = usage_counts(env, Some(&usage));
    fields.push((atoms::requests(), count(usage.requests)));
    fields.push((atoms::tool_calls(), count(usage.tool_calls)));
    fields.push((atoms::by_request(), by_request.encode(env)));
    elixir_struct(env, atoms::usage_module(), &fields)
}

/// The fields a run's usage and a model response's share: counts, cost
/// (a decimal string, or `nil` when pydantic-ai could not price the model)
/// and details (a map of string keys).
fn usage_counts<'a>(env: Env<'a>, usage: Option<&Usage>) -> Vec<(Atom, Term<'a>)> {
    let default = Usage::default();
    let usage = usage.unwrap_or(&default);
    let count = |n: i64| n.encode(env);
    let details: Vec<(Term<'a>, Term<'a>)> = {
        // A protobuf map has no order: sorted, so that equal usages encode alike.
        let mut entries: Vec<(&String, &i64)> = usage.details.iter().collect();
        entries.sort();
        entries
            .into_iter()
            .map(|(key, value)| (json::string(env, key), value.encode(env)))
            .collect()
    };
    let details = Term::map_from_pairs(env, &details).unwrap_or_else(|_| Term::map_new(env));
    vec![
        (atoms::input_tokens(), count(usage.input_tokens)),
        (atoms::output_tokens(), count(usage.output_tokens)),
        (atoms::cache_read_tokens(), count(usage.cache_read_tokens)),
        (atoms::cache_write_tokens(), count(usage.cache_write_tokens)),
        (
            atoms::cache_write_1h_tokens(),
            count(usage.cache_write_1h_tokens),
        ),
        (atoms::input_audio_tokens(), count(usage.input_audio_tokens)),
        (
            atoms::cache_audio_read_tokens(),
            count(usage.cache_audio_read_tokens),
        ),
        (
            atoms::output_audio_tokens(),
            count(usage.output_audio_tokens),
        ),
        (
            atoms::output_reasoning_tokens(),
            count(usage.output_reasoning_tokens),
        ),
        (atoms::audio_seconds(), usage.audio_seconds.encode(env)),
        (
            atoms::unmeasured_requests(),
            count(usage.unmeasured_requests),
        ),
        (
            atoms::cost(),
            match &usage.cost {
                Some(cost) => json::string(env, cost),
                None => atoms::nil().encode(env),
            },
        ),
        (atoms::details(), details),
    ]
}
