//! Bridge messages as Elixir terms (wire maps), both ways: dynamic protobuf
//! messages (prost-reflect) built from terms and read into terms.
//!
//! A message is a map with string keys, its field names. On the way out
//! every field is present: an unset field with presence (optional scalar,
//! message, oneof member) is `nil`, other scalars their default; repeated
//! fields are lists, maps are maps, enums are their value's name. On the way
//! in keys may be atoms or strings, absent or `nil` means unset, and enums
//! are given by name (an atom or a string). Not by number: the client's
//! enum values are not their numbers (`Literal[10, 20]` is 10 and 20 in
//! Elixir, 1 and 2 on the wire), so a number taken as one would pick the
//! value at that position; nor the `_UNSPECIFIED` value 0, which is no value
//! of the Python type.

use std::collections::HashMap;

use prost_reflect::{
    DynamicMessage, EnumDescriptor, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    ReflectMessage, Value,
};
use rustler::{Atom, Binary, Encoder, Env, Term, TermType};

use crate::atoms;
use crate::error::Error;
use crate::json::{self, MAX_DEPTH};

// ---- Elixir -> protobuf ----

pub fn term_to_message(
    desc: &MessageDescriptor,
    term: Term<'_>,
    depth: usize,
) -> Result<DynamicMessage, Error> {
    json::with_stack(|| term_to_message_inner(desc, term, depth))
}

fn term_to_message_inner(
    desc: &MessageDescriptor,
    term: Term<'_>,
    depth: usize,
) -> Result<DynamicMessage, Error> {
    if depth > MAX_DEPTH {
        return Err(invalid(format!(
            "data nested deeper than {MAX_DEPTH} levels cannot be sent"
        )));
    }
    let entries = rustler::MapIterator::new(term)
        .ok_or_else(|| invalid(format!("{} must be given as a map", desc.full_name())))?;
    let mut message = DynamicMessage::new(desc.clone());
    for (key, value) in entries {
        let name = key_name(key)?;
        let field = desc
            .get_field_by_name(&name)
            .ok_or_else(|| invalid(format!("{} has no field {name:?}", desc.full_name())))?;
        if is_nil(value) {
            continue;
        }
        let value = field_value(&field, value, depth)
            .map_err(|e| prefix(&format!("{}.{name}", desc.name()), e))?;
        message
            .try_set_field(&field, value)
            .map_err(|e| invalid(format!("{}.{name}: {e}", desc.name())))?;
    }
    Ok(message)
}

fn field_value(field: &FieldDescriptor, term: Term<'_>, depth: usize) -> Result<Value, Error> {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            return Err(Error::Internal("a map field without an entry type".into()));
        };
        let (key_field, value_field) = (entry.map_entry_key_field(), entry.map_entry_value_field());
        let entries =
            rustler::MapIterator::new(term).ok_or_else(|| invalid("expected a map".into()))?;
        let mut map = HashMap::new();
        for (key, value) in entries {
            let key = map_key(&key_field.kind(), key)?;
            map.insert(key, scalar(&value_field.kind(), value, depth + 1)?);
        }
        Ok(Value::Map(map))
    } else if field.is_list() {
        let items = json::proper_list(term).map_err(|_| invalid("expected a list".into()))?;
        items
            .into_iter()
            .map(|item| scalar(&field.kind(), item, depth + 1))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::List)
    } else {
        scalar(&field.kind(), term, depth)
    }
}

fn scalar(kind: &Kind, term: Term<'_>, depth: usize) -> Result<Value, Error> {
    let wrong = |expected: &str| invalid(format!("expected {expected}, got {}", describe(term)));
    Ok(match kind {
        Kind::Double => Value::F64(number(term).ok_or_else(|| wrong("a number"))?),
        Kind::Float => Value::F32(number(term).ok_or_else(|| wrong("a number"))? as f32),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(term.decode().map_err(|_| wrong("a 32-bit integer"))?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(term.decode().map_err(|_| wrong("a 64-bit integer"))?)
        }
        Kind::Uint32 | Kind::Fixed32 => Value::U32(
            term.decode()
                .map_err(|_| wrong("an unsigned 32-bit integer"))?,
        ),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(
            term.decode()
                .map_err(|_| wrong("an unsigned 64-bit integer"))?,
        ),
        Kind::Bool => Value::Bool(term.decode().map_err(|_| wrong("a boolean"))?),
        Kind::String => {
            let binary: Binary<'_> = term.decode().map_err(|_| wrong("a string"))?;
            Value::String(
                std::str::from_utf8(binary.as_slice())
                    .map_err(|_| invalid("a string is not valid UTF-8".into()))?
                    .to_owned(),
            )
        }
        Kind::Bytes => {
            let binary: Binary<'_> = term.decode().map_err(|_| wrong("a binary"))?;
            Value::Bytes(prost::bytes::Bytes::copy_from_slice(binary.as_slice()))
        }
        Kind::Enum(desc) => Value::EnumNumber(enum_number(desc, term)?),
        Kind::Message(desc) => Value::Message(term_to_message(desc, term, depth + 1)?),
    })
}

fn number(term: Term<'_>) -> Option<f64> {
    term.decode::<f64>()
        .ok()
        .or_else(|| term.decode::<i64>().ok().map(|i| i as f64))
}

fn enum_number(desc: &EnumDescriptor, term: Term<'_>) -> Result<i32, Error> {
    let name = key_name(term).map_err(|_| {
        invalid(format!(
            "expected a value of {}, got {}",
            desc.name(),
            describe(term)
        ))
    })?;
    desc.get_value_by_name(&name)
        .map(|v| v.number())
        .filter(|&number| number != 0)
        .ok_or_else(|| invalid(format!("{name:?} is not a value of {}", desc.name())))
}

fn map_key(kind: &Kind, term: Term<'_>) -> Result<MapKey, Error> {
    Ok(match scalar(kind, term, 0)? {
        Value::Bool(b) => MapKey::Bool(b),
        Value::I32(i) => MapKey::I32(i),
        Value::I64(i) => MapKey::I64(i),
        Value::U32(u) => MapKey::U32(u),
        Value::U64(u) => MapKey::U64(u),
        Value::String(s) => MapKey::String(s),
        _ => return Err(invalid("unsupported map key type".into())),
    })
}

fn key_name(term: Term<'_>) -> Result<String, Error> {
    match term.get_type() {
        TermType::Atom => term
            .atom_to_string()
            .map_err(|_| invalid("unreadable atom".into())),
        TermType::Binary => {
            let binary: Binary<'_> = term.decode().map_err(|_| invalid("bad key".into()))?;
            String::from_utf8(binary.as_slice().to_vec())
                .map_err(|_| invalid("a key is not valid UTF-8".into()))
        }
        _ => Err(invalid(format!(
            "keys must be atoms or strings, got {}",
            describe(term)
        ))),
    }
}

fn is_nil(term: Term<'_>) -> bool {
    term.decode::<Atom>().is_ok_and(|atom| atom == atoms::nil())
}

fn describe(term: Term<'_>) -> &'static str {
    match term.get_type() {
        TermType::Atom => "an atom",
        // The type of every bitstring: a binary only if whole bytes.
        TermType::Binary if term.is_binary() => "a binary",
        TermType::Binary => "a bitstring that is not whole bytes",
        TermType::Float => "a float",
        TermType::Integer => "an integer",
        TermType::List => "a list",
        TermType::Map => "a map",
        TermType::Tuple => "a tuple",
        _ => "a term of another type",
    }
}

fn invalid(message: String) -> Error {
    Error::InvalidArgument(message)
}

fn prefix(path: &str, error: Error) -> Error {
    match error {
        Error::InvalidArgument(message)
            if !message.contains(": ") || message.starts_with("expected") =>
        {
            Error::InvalidArgument(format!("{path}: {message}"))
        }
        other => other,
    }
}

// ---- protobuf -> Elixir ----

pub fn message_to_term<'a>(env: Env<'a>, message: &DynamicMessage) -> Term<'a> {
    json::with_stack(|| message_to_term_inner(env, message))
}

fn message_to_term_inner<'a>(env: Env<'a>, message: &DynamicMessage) -> Term<'a> {
    let desc = message.descriptor();
    let mut keys = Vec::new();
    let mut values = Vec::new();
    for field in desc.fields() {
        keys.push(json::string(env, field.name()));
        let value = if field.supports_presence() && !message.has_field(&field) {
            atoms::nil().encode(env)
        } else {
            value_to_term(env, &message.get_field(&field), &field.kind())
        };
        values.push(value);
    }
    // Field names are unique within a message.
    Term::map_from_term_arrays(env, &keys, &values).unwrap_or_else(|_| Term::map_new(env))
}

fn value_to_term<'a>(env: Env<'a>, value: &Value, kind: &Kind) -> Term<'a> {
    match value {
        Value::Bool(b) => b.encode(env),
        Value::I32(i) => i.encode(env),
        Value::I64(i) => i.encode(env),
        Value::U32(u) => u.encode(env),
        Value::U64(u) => u.encode(env),
        Value::F32(f) => f64::from(*f).encode(env),
        Value::F64(f) => f.encode(env),
        Value::String(s) => json::string(env, s),
        Value::Bytes(b) => {
            let mut binary = rustler::NewBinary::new(env, b.len());
            binary.as_mut_slice().copy_from_slice(b);
            binary.into()
        }
        Value::EnumNumber(n) => match kind {
            Kind::Enum(desc) => match desc.get_value(*n) {
                Some(v) => json::string(env, v.name()),
                None => n.encode(env),
            },
            _ => n.encode(env),
        },
        Value::Message(m) => message_to_term(env, m),
        Value::List(items) => items
            .iter()
            .map(|item| value_to_term(env, item, kind))
            .collect::<Vec<_>>()
            .encode(env),
        Value::Map(map) => {
            let value_kind = match kind {
                Kind::Message(entry) => entry.map_entry_value_field().kind(),
                other => other.clone(),
            };
            let mut entries: Vec<(&MapKey, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let keys: Vec<Term<'a>> = entries.iter().map(|(k, _)| map_key_term(env, k)).collect();
            let values: Vec<Term<'a>> = entries
                .iter()
                .map(|(_, v)| value_to_term(env, v, &value_kind))
                .collect();
            Term::map_from_term_arrays(env, &keys, &values).unwrap_or_else(|_| Term::map_new(env))
        }
    }
}

fn map_key_term<'a>(env: Env<'a>, key: &MapKey) -> Term<'a> {
    match key {
        MapKey::Bool(b) => b.encode(env),
        MapKey::I32(i) => i.encode(env),
        MapKey::I64(i) => i.encode(env),
        MapKey::U32(u) => u.encode(env),
        MapKey::U64(u) => u.encode(env),
        MapKey::String(s) => json::string(env, s),
    }
}
