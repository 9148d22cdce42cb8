//! Building Elixir structs from Rust, and reading Elixir text.

use rustler::{Atom, Encoder, Env, Term};

use crate::atoms;

/// `%module{key => value, ...}`. The keys must be exactly the struct's
/// fields: the Elixir side has a test that compares them.
pub fn elixir_struct<'a>(env: Env<'a>, module: Atom, fields: &[(Atom, Term<'a>)]) -> Term<'a> {
    let mut keys = Vec::with_capacity(fields.len() + 1);
    let mut values = Vec::with_capacity(fields.len() + 1);
    keys.push(atoms::__struct__().encode(env));
    values.push(module.encode(env));
    for (key, value) in fields {
        keys.push(key.encode(env));
        values.push(*value);
    }
    // The keys are distinct atoms, so building the map cannot fail.
    Term::map_from_term_arrays(env, &keys, &values).unwrap_or_else(|_| Term::map_new(env))
}

/// A binary's text, if it is UTF-8.
pub fn text(term: Term<'_>) -> Option<String> {
    term.decode::<rustler::Binary>().ok().and_then(|bytes| {
        std::str::from_utf8(bytes.as_slice())
            .ok()
            .map(str::to_owned)
    })
}
