"""A run's user prompt: a string, or pydantic-ai user content made of parts.

A prompt of parts (`RunRequest.prompt_parts`) becomes the list a Python caller
passes as `user_prompt`: a text part a `str`, a binary part a `BinaryContent`
built from its bytes as a caller builds one (`BinaryContent(data,
media_type=..., identifier=..., vendor_metadata=...)`), and any other part
pydantic-ai's own JSON form of it, validated into its class (`ImageUrl`,
`AudioUrl`, `VideoUrl`, `DocumentUrl`, `UploadedFile`, `TextContent`,
`StructuredContent`, `CachePoint`) by its "kind" (a structured content's
`format` is applied as its constructor applies it).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Annotated, Any

import pydantic
from pydantic_ai.messages import (
    AudioUrl,
    BinaryContent,
    CachePoint,
    DocumentUrl,
    ImageUrl,
    StructuredContent,
    TextContent,
    UploadedFile,
    UserContent,
    VideoUrl,
)

from synapse_python._errors import invalid_argument, summarize_validation_error
from synapse_python._proto.synapse.v1 import agent_pb2

# The parts that travel as pydantic-ai's JSON; `kind` says which class.
_JsonContent = Annotated[
    ImageUrl
    | AudioUrl
    | VideoUrl
    | DocumentUrl
    | UploadedFile
    | TextContent
    | StructuredContent
    | CachePoint,
    pydantic.Discriminator("kind"),
]


@functools.cache
def _content_adapter() -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(_JsonContent)


def user_prompt(request: agent_pb2.RunRequest) -> str | Sequence[UserContent] | None:
    """The `user_prompt` of the run `request` asks for; None (no prompt set)
    continues from the history with no new user message, and an empty
    string is an empty one, as in pydantic-ai."""
    if request.prompt_parts:
        return [_part(index, part) for index, part in enumerate(request.prompt_parts)]
    return request.prompt if request.HasField("prompt") else None


def _part(index: int, part: agent_pb2.PromptPart) -> UserContent:
    match part.WhichOneof("part"):
        case "text":
            return part.text
        case "binary":
            binary = part.binary
            return BinaryContent(
                binary.data,
                media_type=binary.media_type,
                identifier=binary.identifier if binary.HasField("identifier") else None,
                vendor_metadata=_vendor_metadata(index, binary.vendor_metadata_json),
            )
        case "content_json":
            try:
                return _content_adapter().validate_json(part.content_json)
            except pydantic.ValidationError as exc:
                raise invalid_argument(
                    f"prompt part {index}: {summarize_validation_error(exc)}", cause=exc
                ) from exc
        case _:
            raise invalid_argument(f"prompt part {index} is empty")


def _vendor_metadata(index: int, data: bytes) -> dict[str, Any] | None:
    if not data:
        return None
    try:
        metadata = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise invalid_argument(
            f"prompt part {index}: vendor_metadata is not valid JSON: {exc}", cause=exc
        ) from exc
    if not isinstance(metadata, dict):
        raise invalid_argument(f"prompt part {index}: vendor_metadata must be a JSON object")
    return metadata
