//! Message histories (`SynapseCore.Messages`): pydantic-ai's JSON bytes,
//! kept opaque so that a history goes back to the worker exactly as it came.

use rustler::{Binary, Encoder, Env, NewBinary, Term};

use crate::atoms;
use crate::error::{Error, NifError};
use crate::json;
use crate::terms::elixir_struct;

/// `%SynapseCore.Messages{json: json, count: count}`, the bytes copied once.
pub fn encode<'a>(env: Env<'a>, json: &[u8], count: i32) -> Term<'a> {
    let mut binary = NewBinary::new(env, json.len());
    binary.as_mut_slice().copy_from_slice(json);
    elixir_struct(
        env,
        atoms::messages_module(),
        &[
            (atoms::json(), Term::from(binary)),
            (atoms::count(), count.encode(env)),
        ],
    )
}

/// `{:ok, %SynapseCore.Messages{}}` of the messages of `json` from index
/// `from` on: each message's bytes as they are, in an array written as
/// pydantic writes one, so the slice of an `all_messages_json()` is what
/// `new_messages_json()` gives. Also checks and counts a history stored by
/// the application (`from` 0).
#[rustler::nif(schedule = "DirtyCpu")]
fn messages_slice<'a>(env: Env<'a>, json: Binary<'a>, from: usize) -> Term<'a> {
    match json::array_elements(json.as_slice()) {
        Ok(elements) => {
            let kept = elements.get(from..).unwrap_or_default();
            let count = i32::try_from(kept.len()).unwrap_or(i32::MAX);
            let slice = if from == 0 {
                json.as_slice().to_vec()
            } else {
                json::array_of(kept)
            };
            (atoms::ok(), encode(env, &slice, count)).encode(env)
        }
        Err(Error::Protocol(message)) => {
            let message = message.replace(
                "the worker sent invalid JSON",
                "not a JSON array of messages",
            );
            (atoms::error(), NifError(Error::InvalidArgument(message))).encode(env)
        }
        Err(e) => (atoms::error(), NifError(e)).encode(env),
    }
}
