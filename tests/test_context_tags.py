"""posthog-python's context tags as they travel with a Celery task or an RQ job
(integrations._headers): posthog-python's encoding, cleaned and bounded both ways."""

from __future__ import annotations

import json

from posthog import contexts

from posthog_errors.integrations._headers import (
    MAX_TAGS,
    MAX_TAGS_JSON,
    TAGS_HEADER,
    apply_tags,
    clean_tags,
    current_tags,
    decode_tags,
    encode_tags,
)


def test_the_header_is_posthog_pythons() -> None:
    from posthog.integrations.celery import CONTEXT_TAGS_HEADER

    assert TAGS_HEADER == CONTEXT_TAGS_HEADER == "X-POSTHOG-CONTEXT-TAGS"
    tags = {"tenant": "acme", "n": 3, "ok": True, "none": None, "list": [1, "é"]}
    assert encode_tags(tags) == json.dumps(tags, default=str)  # as posthog-python writes it
    assert decode_tags(json.dumps(tags)) == tags
    assert decode_tags(json.dumps(tags).encode()) == tags
    assert decode_tags(tags) == tags  # an RQ job's meta holds the dict


def test_names_and_values_are_cleaned() -> None:
    cleaned = clean_tags(
        {
            " \x00region\n": "eu\x07\tx\ny",  # tab and newline kept in a value
            "   ": "an empty name: dropped",
            3: "a name that is not a string",
            "long": "v" * 5000,
            "k" * 500: 1,
            "obj": object(),
        }
    )
    assert cleaned["region"] == "eu\tx\ny"
    assert cleaned["3"] == "a name that is not a string"
    assert cleaned["long"] == "v" * 1000
    assert cleaned["k" * 200] == 1
    assert cleaned["obj"].startswith("<object object")  # str(), as posthog-python's default=str
    assert len(cleaned) == 5


def test_bounded_in_count_and_size() -> None:
    many = {f"t{i}": i for i in range(500)}
    assert list(clean_tags(many)) == [f"t{i}" for i in range(MAX_TAGS)]
    big = {"a": "x" * 900, **{f"big{i}": ["y" * 900] for i in range(20)}, "z": 1}
    kept = clean_tags(big)
    assert len(json.dumps(kept)) <= MAX_TAGS_JSON
    assert kept["a"] == "x" * 900 and kept["z"] == 1  # a tag that does not fit is left out
    assert len(encode_tags(big) or "") <= MAX_TAGS_JSON
    assert encode_tags({}) is None


def test_what_is_not_tags_is_none() -> None:
    for raw in (None, 3, "", "not json", "[1, 2]", '"text"', b"\xff", "{" * 100_000, ["a"]):
        assert decode_tags(raw) == {}
    assert decode_tags(json.dumps({"a": "b" * 70_000})) == {}  # over 64 KiB: not parsed


def test_applied_as_posthog_context_tags_and_undone() -> None:
    assert current_tags() == {}
    assert apply_tags({}) is None
    with contexts.new_context(fresh=True, capture_exceptions=False):
        contexts.tag("outer", 1)
        undo = apply_tags({"tenant": "acme", "outer": 2})
        assert undo is not None
        assert current_tags() == {"outer": 2, "tenant": "acme"}
        undo()
        assert current_tags() == {"outer": 1}
    assert current_tags() == {}
