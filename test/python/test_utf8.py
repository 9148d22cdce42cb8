"""Python text that UTF-8 cannot carry: escaped when diagnostic, named when data."""

from __future__ import annotations

import os

from synapse_python._utf8 import escaped, unencodable

NAME = os.fsdecode(b"caf\xe9")  # "caf\udce9"


def test_escaped_writes_lone_surrogates_as_their_escape() -> None:
    assert escaped(f"no such file: {NAME}") == "no such file: caf\\udce9"
    assert escaped(f"no such file: {NAME}").encode("utf-8")


def test_escaped_leaves_text_utf8_can_carry_untouched() -> None:
    text = "café \U0001f600 \\udce9"
    assert escaped(text) is text


def test_unencodable_names_the_first_character_utf8_cannot_encode() -> None:
    assert unencodable(f"ok {NAME}") == "\\udce9"
    assert unencodable("café") is None
