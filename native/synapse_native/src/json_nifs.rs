//! The NIFs of `SynapseCore.JSON`: the conversions every payload goes
//! through (`crate::json`), for Elixir code that needs JSON itself. Each has
//! a twin on a dirty scheduler, which `SynapseCore.JSON` takes for payloads
//! that are not surely small.

use rustler::{Binary, Encoder, Env, NewBinary, Term};

use crate::atoms;
use crate::error::NifError;
use crate::json;

/// `{:ok, json_binary} | {:error, error}`: the conversion every request
/// payload goes through, exposed for `SynapseCore.JSON`.
#[rustler::nif]
fn json_encode<'a>(env: Env<'a>, term: Term<'a>) -> Term<'a> {
    encode(env, term)
}

#[rustler::nif(schedule = "DirtyCpu")]
fn json_encode_dirty<'a>(env: Env<'a>, term: Term<'a>) -> Term<'a> {
    encode(env, term)
}

/// `{:ok, term} | {:error, error}`: the conversion every reply payload goes
/// through, exposed for `SynapseCore.JSON`.
#[rustler::nif]
fn json_decode<'a>(env: Env<'a>, json: Binary<'a>) -> Term<'a> {
    decode(env, json)
}

#[rustler::nif(schedule = "DirtyCpu")]
fn json_decode_dirty<'a>(env: Env<'a>, json: Binary<'a>) -> Term<'a> {
    decode(env, json)
}

fn encode<'a>(env: Env<'a>, term: Term<'a>) -> Term<'a> {
    match json::encode(term) {
        Ok(bytes) => {
            let mut binary = NewBinary::new(env, bytes.len());
            binary.as_mut_slice().copy_from_slice(&bytes);
            (atoms::ok(), Term::from(binary)).encode(env)
        }
        Err(e) => (atoms::error(), NifError(e)).encode(env),
    }
}

fn decode<'a>(env: Env<'a>, json: Binary<'a>) -> Term<'a> {
    match json::decode_from(env, json.as_slice(), json::Origin::Caller) {
        Ok(term) => (atoms::ok(), term).encode(env),
        Err(e) => (atoms::error(), NifError(e)).encode(env),
    }
}
