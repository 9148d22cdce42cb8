//! JSON <-> Erlang terms. The Elixir side has no JSON library, so every
//! dynamic payload (message histories, model settings, structured output) is
//! converted here.
//!
//! Elixir -> JSON: `nil` is null, `true`/`false` are booleans, other atoms
//! are strings, integers (of any size) and floats are numbers, binaries must
//! be UTF-8 strings, lists are arrays, maps (binary or atom keys) are
//! objects. Tuples, pids, refs and functions have no JSON form and are
//! refused, and so is a map with two keys of one name (`:a` and `"a"`).
//!
//! JSON -> Elixir: null is `nil`, objects are maps with *binary* keys (a
//! payload from Python never creates atoms), strings are binaries, integers
//! of any size are integers (never floats). NaN and infinities (which Python
//! writes but JSON does not have, and Elixir floats cannot hold) are an
//! `Unrepresentable` error.

use std::str::FromStr;

use rustler::{BigInt, Binary, Encoder, Env, NewBinary, Term, TermType};

use serde_json::value::RawValue;
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

/// Who wrote the JSON being decoded: what its errors blame.
#[derive(Clone, Copy)]
pub enum Origin {
    /// A worker's reply: invalid JSON is a protocol error.
    Worker,
    /// The caller's own input (`SynapseCore.JSON`): invalid JSON is an
    /// invalid argument.
    Caller,
}

/// Decodes JSON bytes from a worker into a term.
pub fn decode<'a>(env: Env<'a>, bytes: &[u8]) -> Result<Term<'a>, Error> {
    decode_from(env, bytes, Origin::Worker)
}

/// Decodes JSON bytes written by `origin` into a term.
pub fn decode_from<'a>(env: Env<'a>, bytes: &[u8], origin: Origin) -> Result<Term<'a>, Error> {
    stacker::maybe_grow(256 * 1024, 2 * 1024 * 1024, || {
        decode_inner(env, bytes, origin)
    })
}

fn decode_inner<'a>(env: Env<'a>, bytes: &[u8], origin: Origin) -> Result<Term<'a>, Error> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| parse_error(bytes, &e, origin))?;
    from_value(env, &value)
}

fn parse_error(bytes: &[u8], e: &serde_json::Error, origin: Origin) -> Error {
    let data = match origin {
        Origin::Worker => "the worker's data",
        Origin::Caller => "the data",
    };
    if e.to_string().starts_with("recursion limit exceeded") {
        Error::LimitExceeded(format!("{data} is nested deeper than {MAX_DEPTH} levels"))
    } else if let Some(token) = non_finite_at(bytes, e.line(), e.column()) {
        Error::Unrepresentable(format!(
            "{data} holds {token}, which neither JSON nor an Elixir float can hold"
        ))
    } else {
        match origin {
            Origin::Worker => Error::Protocol(format!("the worker sent invalid JSON: {e}")),
            Origin::Caller => Error::InvalidArgument(format!("invalid JSON: {e}")),
        }
    }
}

/// Python's `json` writes NaN and infinities as bare `NaN`, `Infinity` and
/// `-Infinity`, which are not JSON: the token where parsing stopped (line
/// and 1-based column, as serde_json reports them), if it is one of those.
fn non_finite_at(bytes: &[u8], line: usize, column: usize) -> Option<&'static str> {
    let line_start: usize = bytes
        .split(|b| *b == b'\n')
        .take(line.saturating_sub(1))
        .map(|l| l.len() + 1)
        .sum();
    let at = (line_start + column).saturating_sub(1);
    // The error points at the token, or a byte into it (after a '-').
    (at.saturating_sub(2)..=at).find_map(|from| {
        let rest = bytes.get(from..)?;
        ["NaN", "Infinity", "-Infinity"]
            .into_iter()
            .find(|token| rest.starts_with(token.as_bytes()))
    })
}

/// The elements of a JSON array, each exactly as its bytes are in `bytes`.
pub fn array_elements(bytes: &[u8]) -> Result<Vec<&RawValue>, Error> {
    serde_json::from_slice(bytes).map_err(|e| parse_error(bytes, &e, Origin::Worker))
}

/// The JSON array of `elements`, written as pydantic writes arrays (no
/// spaces): a slice of an array pydantic wrote is what it would write for
/// that slice.
pub fn array_of(elements: &[&RawValue]) -> Vec<u8> {
    let size = elements.iter().map(|e| e.get().len() + 1).sum::<usize>() + 1;
    let mut out = Vec::with_capacity(size);
    out.push(b'[');
    for (index, element) in elements.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(element.get().as_bytes());
    }
    out.push(b']');
    out
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
        TermType::Map if term.map_get(atoms::__struct__()).is_ok() => struct_value(term),
        TermType::Map => {
            let iter = rustler::MapIterator::new(term)
                .ok_or_else(|| Error::InvalidArgument("unreadable map".into()))?;
            let mut object = Map::new();
            for (key, value) in iter {
                let name = key_string(key)?;
                if object.contains_key(&name) {
                    return Err(Error::InvalidArgument(format!(
                        "a map has two keys named {name:?} (e.g. :{name} and \"{name}\"); \
                         JSON objects have one value per name"
                    )));
                }
                object.insert(name, to_value(value, depth + 1)?);
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

/// A struct has no JSON form of its own: a date or time of `Calendar.ISO`
/// becomes the ISO 8601 text its module writes (which Python's `date`,
/// `time` and `datetime` read back exactly); any other struct is refused by
/// name rather than sent as its internals.
fn struct_value(term: Term<'_>) -> Result<Value, Error> {
    let module = term
        .map_get(atoms::__struct__())
        .and_then(|m| m.atom_to_string())
        .map_err(|_| {
            Error::InvalidArgument("a map with a __struct__ key that is no atom".into())
        })?;
    let shown = module.strip_prefix("Elixir.").unwrap_or(&module).to_owned();
    let refused = || {
        Error::InvalidArgument(format!(
            "a %{shown}{{}} struct has no JSON form: give a map (Map.from_struct/1), \
             a list or a string"
        ))
    };
    let field = |name: &str| -> Result<Term<'_>, Error> {
        rustler::Atom::from_str(term.get_env(), name)
            .and_then(|key| term.map_get(key))
            .map_err(|_| refused())
    };
    let int =
        |name: &str| -> Result<i64, Error> { field(name)?.decode::<i64>().map_err(|_| refused()) };
    let iso = field("calendar")
        .ok()
        .and_then(|c| c.atom_to_string().ok())
        .is_some_and(|c| c == "Elixir.Calendar.ISO");
    if !iso {
        return Err(refused());
    }
    let date = || -> Result<String, Error> {
        let year = int("year")?;
        let sign = if year < 0 { "-" } else { "" };
        Ok(format!(
            "{sign}{:04}-{:02}-{:02}",
            year.abs(),
            int("month")?,
            int("day")?
        ))
    };
    let time = || -> Result<String, Error> {
        let (micro, precision) = field("microsecond")?
            .decode::<(u32, usize)>()
            .map_err(|_| refused())?;
        let fraction = format!("{micro:06}");
        let fraction = match fraction.get(..precision.min(6)) {
            Some("") | None => String::new(),
            Some(digits) => format!(".{digits}"),
        };
        Ok(format!(
            "{:02}:{:02}:{:02}{fraction}",
            int("hour")?,
            int("minute")?,
            int("second")?
        ))
    };
    let text = match module.as_str() {
        "Elixir.Date" => date()?,
        "Elixir.Time" => time()?,
        "Elixir.NaiveDateTime" => format!("{}T{}", date()?, time()?),
        "Elixir.DateTime" => {
            let utc = field("time_zone")?
                .decode::<String>()
                .map_err(|_| refused())?
                == "Etc/UTC";
            let offset = int("utc_offset")? + int("std_offset")?;
            let zone = if utc && offset == 0 {
                "Z".to_owned()
            } else {
                let sign = if offset < 0 { '-' } else { '+' };
                let (hours, minutes, seconds) = (
                    offset.abs() / 3600,
                    offset.abs() % 3600 / 60,
                    offset.abs() % 60,
                );
                if seconds == 0 {
                    format!("{sign}{hours:02}:{minutes:02}")
                } else {
                    format!("{sign}{hours:02}:{minutes:02}:{seconds:02}")
                }
            };
            format!("{}T{}{zone}", date()?, time()?)
        }
        _ => return Err(refused()),
    };
    Ok(Value::String(text))
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
        // Beyond 64 bits: JSON numbers have no size limit, and Python reads them exactly.
        let big: BigInt = term
            .decode()
            .map_err(|_| Error::InvalidArgument("cannot read an integer".into()))?;
        Number::from_str(&big.to_string())
            .map(Value::Number)
            .map_err(|e| Error::Internal(format!("an integer has no JSON form: {e}")))
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
pub fn from_value<'a>(env: Env<'a>, value: &Value) -> Result<Term<'a>, Error> {
    with_stack(|| from_value_inner(env, value))
}

fn from_value_inner<'a>(env: Env<'a>, value: &Value) -> Result<Term<'a>, Error> {
    Ok(match value {
        Value::Null => atoms::nil().encode(env),
        Value::Bool(b) => b.encode(env),
        Value::Number(n) => number(env, n)?,
        Value::String(s) => string(env, s),
        Value::Array(items) => {
            let terms = items
                .iter()
                .map(|v| from_value(env, v))
                .collect::<Result<Vec<_>, _>>()?;
            terms.encode(env)
        }
        Value::Object(object) => {
            let keys: Vec<Term<'a>> = object.keys().map(|k| string(env, k)).collect();
            let values = object
                .values()
                .map(|v| from_value(env, v))
                .collect::<Result<Vec<_>, _>>()?;
            // serde_json's map has unique keys, so building the map cannot fail.
            Term::map_from_term_arrays(env, &keys, &values).unwrap_or_else(|_| Term::map_new(env))
        }
    })
}

/// A JSON number as an integer when it is written as one (of any size),
/// else as a float.
fn number<'a>(env: Env<'a>, n: &Number) -> Result<Term<'a>, Error> {
    if let Some(i) = n.as_i64() {
        return Ok(i.encode(env));
    }
    if let Some(u) = n.as_u64() {
        return Ok(u.encode(env));
    }
    let text = n.to_string();
    if !text.contains(['.', 'e', 'E']) {
        let big = BigInt::from_str(&text)
            .map_err(|e| Error::Protocol(format!("the worker sent a malformed integer: {e}")))?;
        return Ok(big.encode(env));
    }
    match n.as_f64() {
        Some(f) if f.is_finite() => Ok(f.encode(env)),
        _ => Err(Error::Unrepresentable(format!(
            "the number {text} is beyond the range of an Elixir float"
        ))),
    }
}

/// A binary term holding `s`.
pub fn string<'a>(env: Env<'a>, s: &str) -> Term<'a> {
    bytes(env, s.as_bytes())
}

/// A binary term holding `b`.
pub fn bytes<'a>(env: Env<'a>, b: &[u8]) -> Term<'a> {
    let mut binary = NewBinary::new(env, b.len());
    binary.as_mut_slice().copy_from_slice(b);
    binary.into()
}
