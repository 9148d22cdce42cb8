//! How errors cross into Elixir: as `%SynapseCore.Error{kind:, message:,
//! details:}`, built here so that messages sent to any process (a stream's
//! receiver included) carry the final struct.
//!
//! `kind` is one of a closed set of atoms, `message` a binary for humans,
//! `details` a map with atom keys (Python's exception type, its traceback,
//! the gRPC status, and what a failed run did).

use rustler::{Atom, Encoder, Env, Term};
use synapse_client::error::code_name;
pub use synapse_client::Error;

use crate::atoms;
use crate::json;
use crate::messages;
use crate::run::encode_usage;
use crate::terms::elixir_struct;

/// [`Error`] as a NIF return value.
pub struct NifError(pub Error);

impl From<Error> for NifError {
    fn from(error: Error) -> Self {
        Self(error)
    }
}

impl Encoder for NifError {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        encode(env, &self.0)
    }
}

/// Keys of the worker's failure data that become keys of `details`, as
/// atoms (a fixed set: atoms are never made from the worker's strings).
/// Other keys stay in `details.data`.
fn data_keys() -> [Atom; 8] {
    [
        atoms::errors(),
        atoms::status_code(),
        atoms::body(),
        atoms::retry_after(),
        atoms::model_name(),
        atoms::provider_error_code(),
        atoms::provider_error_type(),
        atoms::phase(),
    ]
}

pub fn encode<'a>(env: Env<'a>, error: &Error) -> Term<'a> {
    let mut details = Term::map_new(env);
    if let Error::Remote {
        code,
        python_type,
        traceback,
        data,
        run,
        ..
    } = error
    {
        if let Some(data) = data
            .as_deref()
            .and_then(|bytes| json::decode(env, bytes).ok())
        {
            details = put_data(env, details, data);
        }
        details = put(
            details,
            atoms::grpc_status(),
            known_atom(env, code_name(*code)),
        );
        if let Some(t) = python_type {
            details = put(details, atoms::type_(), t.as_str().encode(env));
        }
        if let Some(tb) = traceback {
            details = put(details, atoms::traceback(), tb.as_str().encode(env));
        }
        if let Some(run) = run {
            details = put(
                details,
                atoms::messages(),
                messages::encode(env, &run.messages_json, run.message_count),
            );
            details = put(
                details,
                atoms::new_message_index(),
                run.new_message_index.encode(env),
            );
            // Only what pydantic-ai gave (a cancelled or timed-out run's):
            // a usage or run id the worker did not send is not made up.
            if let Some(usage) = &run.usage {
                details = put(details, atoms::usage(), encode_usage(env, usage.clone()));
            }
            if let Some(run_id) = &run.run_id {
                details = put(details, atoms::run_id(), json::string(env, run_id));
            }
        }
    }
    elixir_struct(
        env,
        atoms::error_module(),
        &[
            (atoms::__exception__(), true.encode(env)),
            (atoms::kind(), known_atom(env, &error.kind_name())),
            (atoms::message(), error.to_string().encode(env)),
            (atoms::details(), details),
        ],
    )
}

/// The known keys of the failure's data as `details` keys; the rest (if
/// any) as `details.data`.
fn put_data<'a>(env: Env<'a>, mut details: Term<'a>, data: Term<'a>) -> Term<'a> {
    let mut rest = data;
    for key in data_keys() {
        let name = json::string(env, &key.to_term(env).atom_to_string().unwrap_or_default());
        if let Ok(value) = data.map_get(name) {
            details = put(details, key, value);
            rest = rest.map_remove(name).unwrap_or(rest);
        }
    }
    if rest.map_size().is_ok_and(|size| size > 0) || rest.map_size().is_err() {
        details = put(details, atoms::data(), rest);
    }
    details
}

/// Kind and status-code names come from fixed tables (the proto's
/// `ErrorKind`, tonic's codes), never from the worker's strings, so making
/// atoms of them is safe.
fn known_atom<'a>(env: Env<'a>, name: &str) -> Term<'a> {
    Atom::from_str(env, name)
        .map(|atom| atom.encode(env))
        .unwrap_or_else(|_| atoms::internal().encode(env))
}

fn put<'a>(map: Term<'a>, key: Atom, value: Term<'a>) -> Term<'a> {
    map.map_put(key, value).unwrap_or(map)
}
