//! Tool calls that wait for a decision (pydantic-ai's deferred tools), both
//! ways Synapse has them:
//!
//! * a run that ends with them: its output, `DeferredOutput`, becomes a
//!   `%SynapseCore.DeferredToolRequests{}`, and the next run's
//!   `deferred_tool_results:` (normalised by `SynapseCore.DeferredToolResults`)
//!   becomes the request's `DeferredToolResults`;
//! * a run that asks while it waits (`inline_approvals`): each
//!   `ApprovalRequest` goes to the run's tool runner (see `run.rs`), and
//!   `run_approval_result` sends the decision back on the run's stream.
//!
//! Decisions arrive from Elixir normalised: `{:approve, args | nil}` or
//! `{:deny, message | nil}`; a deferred call's result is `{:ok, value}`,
//! `{:retry, message}` or `{:failed, message}`.

use rustler::{Atom, Encoder, Env, ResourceArc, Term};

use synapse_client::proto::{
    approval_decision, deferred_call_result, run_input, ApprovalAnswer, ApprovalDecision,
    ApprovalRequest, Approved, DeferredCall, DeferredCallResult, DeferredOutput,
    DeferredToolResults, Denied,
};

use crate::atoms;
use crate::call::{fits_input, CallHandle};
use crate::error::{Error, NifError};
use crate::event::{lenient_json, map};
use crate::json;
use crate::run::{context as within, is_nil, read_outcome, Outcome};
use crate::terms::{elixir_struct, text};

/// Answers an approval request of a run: `{:approve, args | nil}` or
/// `{:deny, message | nil}`. Returns `{:error, error}`, and sends nothing,
/// when the arguments have no JSON form, the message is not UTF-8, or the
/// answer is over the channel's `max_message_bytes`. A dirty NIF: edited
/// arguments can be large.
#[rustler::nif(schedule = "DirtyCpu")]
fn run_approval_result<'a>(
    env: Env<'a>,
    handle: ResourceArc<CallHandle>,
    request_id: String,
    decision: Term<'a>,
) -> Term<'a> {
    // Checked as the worker gets it, in the `RunInput` around it.
    let answer = decision_from(decision).and_then(|decision| {
        fits_input(
            run_input::Input::Approval(ApprovalAnswer {
                request_id,
                decision: Some(decision),
            }),
            handle.max_message_bytes,
        )
    });
    match answer {
        Ok(input) => {
            handle.send_input(input);
            atoms::ok().encode(env)
        }
        Err(error) => (atoms::error(), NifError(error)).encode(env),
    }
}

/// The decision of a `{:approve, args | nil}` or `{:deny, message | nil}`.
fn decision_from(term: Term<'_>) -> Result<ApprovalDecision, Error> {
    let invalid = || {
        Error::InvalidArgument(
            "a decision is {:approve, args | nil} or {:deny, message | nil}".into(),
        )
    };
    let (kind, value) = term.decode::<(Atom, Term<'_>)>().map_err(|_| invalid())?;
    let decision = if kind == atoms::approve() {
        let override_args_json = if is_nil(value) {
            None
        } else {
            Some(json::encode(value).map_err(|e| within("the edited arguments", e))?)
        };
        approval_decision::Decision::Approved(Approved { override_args_json })
    } else if kind == atoms::deny() {
        let message = if is_nil(value) {
            None
        } else {
            Some(text(value).ok_or_else(|| {
                Error::InvalidArgument("a denial's message must be a UTF-8 string".into())
            })?)
        };
        approval_decision::Decision::Denied(Denied { message })
    } else {
        return Err(invalid());
    };
    Ok(ApprovalDecision {
        decision: Some(decision),
    })
}

/// The request's `DeferredToolResults` of a run's `deferred_tool_results`:
/// `nil`, or `%{approvals: [{id, decision}], calls: [{id, outcome}],
/// metadata: [{id, map}]}`.
pub fn results_from(term: Term<'_>) -> Result<Option<DeferredToolResults>, Error> {
    if is_nil(term) {
        return Ok(None);
    }
    let field = |key: Atom| -> Result<Vec<(String, Term<'_>)>, Error> {
        term.map_get(key)
            .and_then(|list| list.decode::<Vec<(String, Term<'_>)>>())
            .map_err(|_| {
                Error::InvalidArgument(
                    "deferred_tool_results: expected %{approvals: [{id, decision}], calls: \
                     [{id, outcome}], metadata: [{id, map}]}"
                        .into(),
                )
            })
    };
    let mut results = DeferredToolResults::default();
    for (id, decision) in field(atoms::approvals())? {
        let decision =
            decision_from(decision).map_err(|e| within(&format!("approval {id:?}"), e))?;
        results.approvals.insert(id, decision);
    }
    for (id, outcome) in field(atoms::calls())? {
        let outcome = call_result(outcome).map_err(|e| within(&format!("call {id:?}"), e))?;
        results.calls.insert(id, outcome);
    }
    for (id, metadata) in field(atoms::metadata())? {
        let metadata =
            json::encode(metadata).map_err(|e| within(&format!("the metadata of {id:?}"), e))?;
        results.metadata_json.insert(id, metadata);
    }
    Ok(Some(results))
}

/// `{:ok, value}`, `{:retry, message}` or `{:failed, message}`.
fn call_result(term: Term<'_>) -> Result<DeferredCallResult, Error> {
    let outcome = match read_outcome(term, "a deferred call's result")? {
        Outcome::Value(value) => deferred_call_result::Outcome::ReturnJson(json::encode(value)?),
        Outcome::Retry(message) => deferred_call_result::Outcome::RetryMessage(message),
        Outcome::Failed(message) => deferred_call_result::Outcome::FailedMessage(message),
    };
    Ok(DeferredCallResult {
        outcome: Some(outcome),
    })
}

/// `%SynapseCore.DeferredToolRequests{approvals: [...], calls: [...]}`.
pub fn encode_output<'a>(env: Env<'a>, output: &DeferredOutput) -> Result<Term<'a>, Error> {
    let calls = |list: &[DeferredCall]| -> Result<Term<'a>, Error> {
        let terms = list
            .iter()
            .map(|call| encode_call(env, call))
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(terms.encode(env))
    };
    Ok(elixir_struct(
        env,
        atoms::deferred_tool_requests_module(),
        &[
            (atoms::approvals(), calls(&output.approvals)?),
            (atoms::calls(), calls(&output.calls)?),
        ],
    ))
}

/// `%SynapseCore.DeferredToolRequests.Call{tool_call_id:, tool_name:, args:, metadata:, kind:}`
fn encode_call<'a>(env: Env<'a>, call: &DeferredCall) -> Result<Term<'a>, Error> {
    let kind = match call.kind.as_str() {
        "approval" => atoms::approval().encode(env),
        "external" => atoms::external().encode(env),
        "question" => atoms::question().encode(env),
        other => json::string(env, other),
    };
    Ok(elixir_struct(
        env,
        atoms::deferred_call_module(),
        &[
            (atoms::tool_call_id(), json::string(env, &call.tool_call_id)),
            (atoms::tool_name(), json::string(env, &call.tool_name)),
            (atoms::args(), lenient_json(env, &call.args_json)),
            (atoms::metadata(), optional_json(env, &call.metadata_json)?),
            (atoms::kind(), kind),
        ],
    ))
}

/// `%{request_id:, tool_name:, args:, tool_call_id:, metadata:}`, for the runner.
pub fn encode_request<'a>(env: Env<'a>, request: &ApprovalRequest) -> Term<'a> {
    let pairs = [
        (atoms::request_id(), json::string(env, &request.request_id)),
        (atoms::tool_name(), json::string(env, &request.tool_name)),
        (atoms::args(), lenient_json(env, &request.args_json)),
        (
            atoms::tool_call_id(),
            json::string(env, &request.tool_call_id),
        ),
        (
            atoms::metadata(),
            // Metadata that does not decode is left out rather than failing the run.
            optional_json(env, &request.metadata_json).unwrap_or_else(|_| atoms::nil().encode(env)),
        ),
    ];
    map(env, &pairs)
}

fn optional_json<'a>(env: Env<'a>, bytes: &[u8]) -> Result<Term<'a>, Error> {
    if bytes.is_empty() {
        Ok(atoms::nil().encode(env))
    } else {
        json::decode(env, bytes)
    }
}
