//! A streamed run's events as Elixir terms (`SynapseCore.Event` documents
//! each one). Payloads that are pydantic-ai's own JSON (parts, deltas,
//! deferred requests, other events) become Elixir data with binary keys, as
//! `SynapseCore.Messages.decode/1` gives a history's; Synapse's own keys are
//! atoms.

use rustler::{Atom, Encoder, Env, Term};
use synapse_client::proto::{
    partial_output, run_event, tool_call_delta, PartEvent, PartialOutput, ToolCall, ToolCallDelta,
    ToolReturn,
};

use crate::atoms;
use crate::json;

/// The term of an event for the stream's receiver; `None` for the messages
/// that are not events (tool and approval requests, the result, a failure).
pub fn encode<'a>(env: Env<'a>, event: run_event::Event) -> Option<Term<'a>> {
    use run_event::Event;
    let term = match event {
        Event::TextDelta(text) => (atoms::text_delta(), json::string(env, &text)).encode(env),
        Event::ThinkingDelta(text) => {
            (atoms::thinking_delta(), json::string(env, &text)).encode(env)
        }
        Event::PartStart(part) => tagged(
            env,
            atoms::part_start(),
            part_event(env, &part, atoms::previous_part_kind()),
        ),
        Event::PartEnd(part) => tagged(
            env,
            atoms::part_end(),
            part_event(env, &part, atoms::next_part_kind()),
        ),
        Event::ToolCallDelta(delta) => {
            tagged(env, atoms::tool_call_delta(), call_delta(env, delta))
        }
        Event::PartDelta(delta) => tagged(
            env,
            atoms::part_delta(),
            map(
                env,
                &[
                    (atoms::index(), delta.index.encode(env)),
                    (atoms::delta(), lenient_json(env, &delta.delta_json)),
                ],
            ),
        ),
        Event::FinalResult(result) => tagged(
            env,
            atoms::final_result(),
            map(
                env,
                &[
                    (
                        atoms::tool_name(),
                        optional(env, result.tool_name.as_deref()),
                    ),
                    (
                        atoms::tool_call_id(),
                        optional(env, result.tool_call_id.as_deref()),
                    ),
                ],
            ),
        ),
        Event::ToolCall(call) => tagged(env, atoms::tool_call(), tool_call(env, &call)),
        Event::OutputToolCall(call) => {
            tagged(env, atoms::output_tool_call(), tool_call(env, &call))
        }
        Event::ToolReturn(returned) => {
            tagged(env, atoms::tool_result(), tool_return(env, &returned))
        }
        Event::OutputToolReturn(returned) => tagged(
            env,
            atoms::output_tool_result(),
            tool_return(env, &returned),
        ),
        Event::DeferredToolRequestsJson(bytes) => tagged(
            env,
            atoms::deferred_tool_requests(),
            deferred_requests(env, &bytes),
        ),
        Event::Output(output) => tagged(env, atoms::output(), partial(env, output)),
        Event::Other(other) => tagged(
            env,
            atoms::event(),
            map(
                env,
                &[
                    (atoms::kind(), json::string(env, &other.kind)),
                    (atoms::data(), lenient_json(env, &other.json)),
                ],
            ),
        ),
        Event::ToolRequest(_)
        | Event::ApprovalRequest(_)
        | Event::Result(_)
        | Event::Failure(_) => return None,
    };
    Some(term)
}

fn tagged<'a>(env: Env<'a>, tag: Atom, details: Term<'a>) -> Term<'a> {
    (tag, details).encode(env)
}

/// `%{index:, part:, previous_part_kind: | next_part_kind:}`
fn part_event<'a>(env: Env<'a>, part: &PartEvent, neighbour: Atom) -> Term<'a> {
    let kind = (!part.neighbour_kind.is_empty()).then_some(part.neighbour_kind.as_str());
    map(
        env,
        &[
            (atoms::index(), part.index.encode(env)),
            (atoms::part(), lenient_json(env, &part.part_json)),
            (neighbour, optional(env, kind)),
        ],
    )
}

/// `%{index:, tool_call_id:, tool_name_delta:, args_delta:}`: the arguments'
/// text fragment, or a map of arguments to merge, or `nil`.
fn call_delta<'a>(env: Env<'a>, delta: ToolCallDelta) -> Term<'a> {
    let args = match &delta.args {
        Some(tool_call_delta::Args::ArgsText(text)) => json::string(env, text),
        Some(tool_call_delta::Args::ArgsJson(bytes)) => lenient_json(env, bytes),
        None => atoms::nil().encode(env),
    };
    map(
        env,
        &[
            (atoms::index(), delta.index.encode(env)),
            (
                atoms::tool_call_id(),
                optional(env, delta.tool_call_id.as_deref()),
            ),
            (
                atoms::tool_name_delta(),
                optional(env, delta.tool_name_delta.as_deref()),
            ),
            (atoms::args_delta(), args),
        ],
    )
}

/// `%{id:, name:, args:, args_valid:}`
pub fn tool_call<'a>(env: Env<'a>, call: &ToolCall) -> Term<'a> {
    map(
        env,
        &[
            (atoms::id(), json::string(env, &call.id)),
            (atoms::name(), json::string(env, &call.name)),
            (atoms::args(), lenient_json(env, &call.args_json)),
            (atoms::args_valid(), call.args_valid.encode(env)),
        ],
    )
}

/// `%{id:, name:, content:, retry:, outcome:}`
fn tool_return<'a>(env: Env<'a>, returned: &ToolReturn) -> Term<'a> {
    map(
        env,
        &[
            (atoms::id(), json::string(env, &returned.id)),
            (atoms::name(), json::string(env, &returned.name)),
            (atoms::content(), lenient_json(env, &returned.content_json)),
            (atoms::retry(), returned.retry.encode(env)),
            (atoms::outcome(), json::string(env, &returned.outcome)),
            (
                atoms::user_content(),
                returned
                    .user_content_json
                    .as_deref()
                    .map_or_else(|| atoms::nil().encode(env), |json| lenient_json(env, json)),
            ),
        ],
    )
}

/// `%{calls:, approvals:, metadata:}` of pydantic-ai's `DeferredToolRequests`.
fn deferred_requests<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    let requests = lenient_json(env, bytes);
    let field = |name: &str, default: Term<'a>| {
        requests.map_get(json::string(env, name)).unwrap_or(default)
    };
    map(
        env,
        &[
            (
                atoms::calls(),
                field("calls", Vec::<Term<'a>>::new().encode(env)),
            ),
            (
                atoms::approvals(),
                field("approvals", Vec::<Term<'a>>::new().encode(env)),
            ),
            (atoms::metadata(), field("metadata", Term::map_new(env))),
        ],
    )
}

/// `%{output:, output_type:, partial:}`
fn partial<'a>(env: Env<'a>, output: PartialOutput) -> Term<'a> {
    let value = match &output.output {
        Some(partial_output::Output::Text(text)) => json::string(env, text),
        Some(partial_output::Output::Json(bytes)) => lenient_json(env, bytes),
        Some(partial_output::Output::Binary(bytes)) => json::bytes(env, bytes),
        None => atoms::nil().encode(env),
    };
    map(
        env,
        &[
            (atoms::output(), value),
            (atoms::output_type(), json::string(env, &output.output_type)),
            (atoms::partial(), output.partial.encode(env)),
        ],
    )
}

fn optional<'a>(env: Env<'a>, value: Option<&str>) -> Term<'a> {
    match value {
        Some(text) => json::string(env, text),
        None => atoms::nil().encode(env),
    }
}

/// JSON from the worker, or the raw text when it is not valid JSON (a
/// model's tool arguments can be malformed).
pub fn lenient_json<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    json::decode(env, bytes).unwrap_or_else(|_| json::string(env, &String::from_utf8_lossy(bytes)))
}

/// A map with atom keys.
pub fn map<'a>(env: Env<'a>, pairs: &[(Atom, Term<'a>)]) -> Term<'a> {
    let keys: Vec<Term<'a>> = pairs.iter().map(|(k, _)| k.encode(env)).collect();
    let values: Vec<Term<'a>> = pairs.iter().map(|(_, v)| *v).collect();
    Term::map_from_term_arrays(env, &keys, &values).unwrap_or_else(|_| Term::map_new(env))
}
