//! How errors cross into Elixir: as `%SynapseCore.Error{kind:, message:,
//! details:}`, built here so that messages sent to any process (a stream's
//! receiver included) carry the final struct.
//!
//! `kind` is one of a closed set of atoms, `message` a binary for humans,
//! `details` a map with atom keys (Python's exception type, its traceback,
//! the gRPC status).

use rustler::{Atom, Encoder, Env, Term};
use synapse_client::error::code_name;
pub use synapse_client::Error;

use crate::atoms;
use crate::json;
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

pub fn encode<'a>(env: Env<'a>, error: &Error) -> Term<'a> {
    let mut details = Term::map_new(env);
    if let Error::Remote {
        code,
        python_type,
        traceback,
        data,
        ..
    } = error
    {
        if let Some(data) = data
            .as_deref()
            .and_then(|bytes| json::decode(env, bytes).ok())
        {
            // A validation error's per-field errors get a key of their own.
            match data.map_get(json::string(env, "errors")) {
                Ok(errors) => details = put(details, atoms::errors(), errors),
                Err(_) => details = put(details, atoms::data(), data),
            }
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
    }
    elixir_struct(
        env,
        atoms::error_module(),
        &[
            (atoms::__exception__(), true.encode(env)),
            (atoms::kind(), known_atom(env, error.kind_name())),
            (atoms::message(), error.to_string().encode(env)),
            (atoms::details(), details),
        ],
    )
}

/// Kind and status-code names come from fixed tables in `synapse_client`,
/// never from the worker, so making atoms of them is safe.
fn known_atom<'a>(env: Env<'a>, name: &'static str) -> Term<'a> {
    Atom::from_str(env, name)
        .map(|atom| atom.encode(env))
        .unwrap_or_else(|_| atoms::internal().encode(env))
}

fn put<'a>(map: Term<'a>, key: Atom, value: Term<'a>) -> Term<'a> {
    map.map_put(key, value).unwrap_or(map)
}
