//! JSON <-> Erlang terms. The Elixir side has no JSON library, so every
//! dynamic payload (message histories, model settings, structured output) is
//! converted here.
//!
//! Elixir -> JSON: `nil` is null, `true`/`false` are booleans, other atoms
//! are strings, integers and floats are numbers, binaries must be UTF-8
//! strings, lists are arrays, maps (binary or atom keys) are objects.
//! Tuples, pids, refs and functions have no JSON form and are refused.
//!
//! JSON -> Elixir: null is `nil`, objects are maps with *binary* keys (a
//! payload from Python never creates atoms), strings are binaries.

use rustler::{Binary, Encoder, Env, NewBinary, Term, TermType};

use serde_json::{Map, Number, Value};

use crate::atoms;
use synapse_client::Error;

/// Deeper terms are refused. It bounds the recursion (and so the native
/// stack used on a scheduler thread); serde_json's own parser stops at 128.
pub const MAX_DEPTH: usize = 128;

/// Encodes a term as JSON bytes.
pub fn encode(term: Term<'_>) -> Result<Vec<u8>, Error> {
    let value = to_value(term, 0)?;
    // Serializing and dropping a deep value recurse too.
    stacker::maybe_grow(256 * 1024, 2 * 1024 * 1024, || {
        serde_json::to_vec(&value).map_err(|e| Error::InvalidArgument(e.to_string()))
    })
}

/// Like [`encode`], but `nil` means "nothing" and gives empty bytes.
pub fn encode_optional(term: Term<'_>) -> Result<Vec<u8>, Error> {
    if term.is_atom() && term == atoms::nil().to_term(term.get_env()) {
        Ok(Vec::new())
    } else {
        encode(term)
    }
}

/// Decodes JSON bytes into a term.
pub fn decode<'a>(env: Env<'a>, bytes: &[u8]) -> Result<Term<'a>, Error> {
    stacker::maybe_grow(256 * 1024, 2 * 1024 * 1024, || decode_inner(env, bytes))
}

fn decode_inner<'a>(env: Env<'a>, bytes: &[u8]) -> Result<Term<'a>, Error> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        if e.to_string().starts_with("recursion limit exceeded") {
            Error::LimitExceeded(format!(
                "the worker's data is nested deeper than {MAX_DEPTH} levels"
            ))
        } else {
            Error::Protocol(format!("the worker sent invalid JSON: {e}"))
        }
    })?;
    Ok(from_value(env, &value))
}

/// Runs `f` with enough native stack for one more level of recursion.
/// Scheduler threads, dirty ones especially, have small stacks; a deep but
/// legal payload grows onto a fresh segment instead of overflowing.
pub fn with_stack<R>(f: impl FnOnce() -> R) -> R {
    stacker::maybe_grow(64 * 1024, 1024 * 1024, f)
}

fn to_value(term: Term<'_>, depth: usize) -> Result<Value, Error> {
    with_stack(|| to_value_inner(term, depth))
}

fn to_value_inner(term: Term<'_>, depth: usize) -> Result<Value, Error> {
    if depth > MAX_DEPTH {
        return Err(Error::LimitExceeded(format!(
            "data nested deeper than {MAX_DEPTH} levels cannot be sent"
        )));
    }
    match term.get_type() {
        TermType::Atom => Ok(atom_value(term)?),
        TermType::Binary => Ok(Value::String(utf8(term)?)),
        TermType::Integer => integer_value(term),
        TermType::Float => {
            let f: f64 = term.decode().map_err(|_| bad(term, "a float"))?;
            Number::from_f64(f)
                .map(Value::Number)
                .ok_or_else(|| Error::InvalidArgument(format!("{f} has no JSON form")))
        }
        TermType::List => {
            let items = proper_list(term)?;
            items
                .into_iter()
                .map(|item| to_value(item, depth + 1))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array)
        }
        TermType::Map => {
            let iter = rustler::MapIterator::new(term)
                .ok_or_else(|| Error::InvalidArgument("unreadable map".into()))?;
            let mut object = Map::new();
            for (key, value) in iter {
                object.insert(key_string(key)?, to_value(value, depth + 1)?);
            }
            Ok(Value::Object(object))
        }
        TermType::Tuple => Err(Error::InvalidArgument(
            "tuples have no JSON form; use a list or a map".into(),
        )),
        other => Err(Error::InvalidArgument(format!(
            "a {} has no JSON form",
            type_name(other)
        ))),
    }
}

/// The elements of a proper list. Improper lists are refused before
/// decoding (rustler's list iterator panics on them).
pub fn proper_list(term: Term<'_>) -> Result<Vec<Term<'_>>, Error> {
    term.list_length()
        .and_then(|_| term.decode())
        .map_err(|_| Error::InvalidArgument("improper lists cannot be sent".into()))
}

fn atom_value(term: Term<'_>) -> Result<Value, Error> {
    let name = term.atom_to_string().map_err(|_| bad(term, "an atom"))?;
    Ok(match name.as_str() {
        "nil" => Value::Null,
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(name),
    })
}

fn integer_value(term: Term<'_>) -> Result<Value, Error> {
    if let Ok(i) = term.decode::<i64>() {
        Ok(Value::Number(i.into()))
    } else if let Ok(u) = term.decode::<u64>() {
        Ok(Value::Number(u.into()))
    } else {
        Err(Error::InvalidArgument(
            "integers beyond 64 bits cannot be sent as JSON".into(),
        ))
    }
}

fn key_string(key: Term<'_>) -> Result<String, Error> {
    match key.get_type() {
        TermType::Binary => utf8(key),
        TermType::Atom => key.atom_to_string().map_err(|_| bad(key, "an atom")),
        TermType::Integer => integer_value(key).map(|v| v.to_string()),
        other => Err(Error::InvalidArgument(format!(
            "map keys must be strings or atoms, got a {}",
            type_name(other)
        ))),
    }
}

fn utf8(term: Term<'_>) -> Result<String, Error> {
    let binary: Binary<'_> = term.decode().map_err(|_| {
        Error::InvalidArgument("bitstrings that are not binaries cannot be sent".into())
    })?;
    std::str::from_utf8(binary.as_slice())
        .map(str::to_owned)
        .map_err(|e| Error::InvalidArgument(format!("a string is not valid UTF-8: {e}")))
}

fn bad(_term: Term<'_>, what: &str) -> Error {
    Error::InvalidArgument(format!("cannot read {what}"))
}

fn type_name(t: TermType) -> &'static str {
    match t {
        TermType::Fun => "function",
        TermType::Pid => "pid",
        TermType::Port => "port",
        TermType::Ref => "reference",
        _ => "term of this type",
    }
}

/// Builds the term for a JSON value. The recursion is bounded because every
/// value comes from `serde_json`, whose parser refuses depths beyond 128.
pub fn from_value<'a>(env: Env<'a>, value: &Value) -> Term<'a> {
    with_stack(|| from_value_inner(env, value))
}

fn from_value_inner<'a>(env: Env<'a>, value: &Value) -> Term<'a> {
    match value {
        Value::Null => atoms::nil().encode(env),
        Value::Bool(b) => b.encode(env),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.encode(env)
            } else if let Some(u) = n.as_u64() {
                u.encode(env)
            } else {
                n.as_f64().unwrap_or_default().encode(env)
            }
        }
        Value::String(s) => string(env, s),
        Value::Array(items) => {
            let terms: Vec<Term<'a>> = items.iter().map(|v| from_value(env, v)).collect();
            terms.encode(env)
        }
        Value::Object(object) => {
            let keys: Vec<Term<'a>> = object.keys().map(|k| string(env, k)).collect();
            let values: Vec<Term<'a>> = object.values().map(|v| from_value(env, v)).collect();
            // serde_json's map has unique keys, so building the map cannot fail.
            Term::map_from_term_arrays(env, &keys, &values).unwrap_or_else(|_| Term::map_new(env))
        }
    }
}

/// A binary term holding `s`.
pub fn string<'a>(env: Env<'a>, s: &str) -> Term<'a> {
    let mut binary = NewBinary::new(env, s.len());
    binary.as_mut_slice().copy_from_slice(s.as_bytes());
    binary.into()
}
