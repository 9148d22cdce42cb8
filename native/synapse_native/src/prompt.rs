//! A prompt made of parts (`SynapseCore.Prompt`) as the wire contract's
//! `PromptPart`s. `SynapseCore.Prompt` validates the parts and gives them
//! here as tagged tuples: `{:text, text}`, `{:binary, data, media_type,
//! identifier | nil, vendor_metadata | nil}` and `{:content, map}` (any
//! other part, in pydantic-ai's JSON form). A binary's data is copied into
//! the request's bytes as it is.

use rustler::{Atom, Binary, Term};
use synapse_client::proto::{prompt_part, BinaryPart, PromptPart};

use crate::atoms;
use crate::error::Error;
use crate::json;

/// The `PromptPart`s of `parts`, in order.
pub fn parts(parts: &[Term<'_>]) -> Result<Vec<PromptPart>, Error> {
    parts
        .iter()
        .enumerate()
        .map(|(index, part)| {
            decode(*part)
                .map(|part| PromptPart { part: Some(part) })
                .map_err(|e| Error::InvalidArgument(format!("prompt part {index}: {e}")))
        })
        .collect()
}

fn decode(term: Term<'_>) -> Result<prompt_part::Part, String> {
    if let Ok((tag, text)) = term.decode::<(Atom, String)>() {
        if tag == atoms::text() {
            return Ok(prompt_part::Part::Text(text));
        }
    }
    if let Ok((tag, content)) = term.decode::<(Atom, Term<'_>)>() {
        if tag == atoms::content() {
            let content_json = json::encode(content).map_err(|e| e.to_string())?;
            return Ok(prompt_part::Part::ContentJson(content_json));
        }
    }
    if let Ok((tag, data, media_type, identifier, vendor_metadata)) =
        term.decode::<(Atom, Binary<'_>, String, Option<String>, Term<'_>)>()
    {
        if tag == atoms::binary() {
            let vendor_metadata_json = json::encode_optional(vendor_metadata)
                .map_err(|e| format!("vendor_metadata: {e}"))?;
            return Ok(prompt_part::Part::Binary(BinaryPart {
                data: data.as_slice().to_vec(),
                media_type,
                identifier,
                vendor_metadata_json,
            }));
        }
    }
    Err("not a part of a prompt (see SynapseCore.Prompt)".into())
}
