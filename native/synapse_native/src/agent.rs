//! Loading agents into a worker (`SynapseCore.Worker`).

use rustler::{Encoder, Env, NifMap, ResourceArc, Term};
use synapse_client::proto::{
    load_agent_request, methods, AgentSpec, LoadAgentRequest, LoadAgentResponse,
};

use crate::atoms;
use crate::call::{self, Started};
use crate::channel::ChannelResource;
use crate::error::{Error, NifError};
use crate::json;

#[derive(NifMap)]
pub struct SpecArgs<'a> {
    model: String,
    instructions: String,
    name: String,
    /// A JSON Schema map, or `nil` for text output.
    output_schema: Term<'a>,
    /// pydantic-ai `AgentSpec` fields (a map with string keys), or `nil`.
    fields: Term<'a>,
    /// A spec file's text, format (`"yaml"`, `"json"`) and path; `""` for none.
    file_text: String,
    file_format: String,
    file_path: String,
}

#[derive(NifMap)]
pub struct LoadArgs<'a> {
    agent_id: String,
    /// `"module:attr"`; exactly one of `reference` and `spec` is set.
    reference: Option<String>,
    spec: Option<SpecArgs<'a>>,
    /// Model override, `""` for none.
    model: String,
    /// `"module:function"` making each run's deps, `""` for none.
    deps_factory: String,
}

/// Asks the worker to load an agent; answers
/// `{:ok, %{agent_id:, name:, output_kind:}}` by message.
#[rustler::nif]
fn agent_load<'a>(
    env: Env<'a>,
    channel: ResourceArc<ChannelResource>,
    tag: Term<'a>,
    request: LoadArgs<'a>,
    timeout: Term<'a>,
) -> Started {
    let source = match (request.reference, request.spec) {
        (Some(reference), None) => load_agent_request::Source::Ref(reference),
        (None, Some(spec)) => load_agent_request::Source::Spec(AgentSpec {
            model: spec.model,
            instructions: spec.instructions,
            name: spec.name,
            output_schema_json: match json::encode_optional(spec.output_schema) {
                Ok(schema) => schema,
                Err(e) => return Ok(Err(NifError(e))),
            },
            spec_json: match json::encode_optional(spec.fields) {
                Ok(fields) => fields,
                Err(e) => return Ok(Err(NifError(e))),
            },
            spec_file_text: spec.file_text,
            spec_file_format: spec.file_format,
            spec_file_path: spec.file_path,
        }),
        _ => {
            return Ok(Err(NifError(Error::InvalidArgument(
                "give exactly one of an agent reference and a spec".into(),
            ))))
        }
    };
    let request = LoadAgentRequest {
        agent_id: request.agent_id,
        source: Some(source),
        model: request.model,
        deps_factory: request.deps_factory,
    };
    call::unary_method(
        env,
        channel,
        tag,
        timeout,
        methods::AGENT_SERVICE_LOAD_AGENT,
        request,
        encode_loaded,
    )
}

fn encode_loaded(env: Env<'_>, loaded: LoadAgentResponse) -> Result<Term<'_>, Error> {
    Term::map_from_pairs(
        env,
        &[
            (atoms::agent_id(), json::string(env, &loaded.agent_id)),
            (atoms::name(), json::string(env, &loaded.name)),
            (atoms::output_kind(), json::string(env, &loaded.output_kind)),
        ],
    )
    .map_err(|_| Error::Internal("cannot build the load reply".into()))
    .map(|t| t.encode(env))
}
