"""A poll's rows become records exactly as the plain constructors would build them, whatever the query bytes."""

from __future__ import annotations

import codecs
from dataclasses import astuple

import pytest

from exporter.core.model import Session
from exporter.pg.rows import QUERY_BYTES, _text
from tests.unit.factory import session


def test_session_build_is_the_constructor() -> None:
    """Session.build fills every field as Session(...) does, and ignores values past the last field."""
    s = session("A:1", query_age=3, xact_age=5)
    values = astuple(s)
    assert Session.build([*values, "now"]) == Session(*values) == s


def _decoded_as_before(data: bytes) -> str:
    return codecs.getincrementaldecoder("utf-8")("replace").decode(data, final=len(data) < QUERY_BYTES)


@pytest.mark.parametrize(
    "data",
    [
        b"SELECT 1",
        "SELECT 'é'".encode(),
        b"SELECT '\xff\xfe'",  # not UTF-8: replaced
        ("x" * (QUERY_BYTES - 1) + "é").encode()[:QUERY_BYTES],  # cut inside the last character: dropped
        ("x" * (QUERY_BYTES - 2) + "é").encode(),  # exactly at the bound, whole
        b"",
    ],
)
def test_query_text_decodes_as_the_incremental_decoder(data: bytes) -> None:
    """Query bytes decode to what a replacing incremental decoder gives: U+FFFD for what is not UTF-8, a character
    cut by the byte bound dropped."""
    assert _text(data) == _decoded_as_before(data)
    assert _text(None) is None
