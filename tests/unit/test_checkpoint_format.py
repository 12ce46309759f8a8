"""The checkpoint document, its on-disk encoding and the encryption of sensitive variables."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from checkpoints import (
    FORMAT_VERSION,
    Checkpoint,
    CheckpointCorrupt,
    CheckpointError,
    SecretBox,
    TaskRecord,
    decode,
    encode,
)
from checkpoints.format import canonical_json

SOURCE = "/checkpoints/etl/run-1/checkpoint.json"
CLEAR_SECRET = "hunter2-correct-horse-battery-staple"


def full_checkpoint() -> Checkpoint:
    """A checkpoint with every field populated, including non-ASCII and nested values."""
    started = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    box = SecretBox("test-key")
    return Checkpoint(
        package="etl-daily",
        definition_hash=hashlib.sha256(b"definition v1").hexdigest(),
        run_id="Run_2024-05-01",
        epoch=3,
        attempt=2,
        tasks={
            "extract": TaskRecord(
                state="succeeded",
                output={"rows": 1200, "files": ["a.csv", "b.csv"], "ratio": 0.25},
                finished_at=started + timedelta(seconds=5),
            ),
            "notify": TaskRecord(state="failed", error="smtp: connection refused", finished_at=started),
        },
        items={"load": {"2024-05-01": {"inserted": 10}, "Zürich": None, "42": [1, 2, 3]}},
        variables={"date": "2024-05-01", "limit": 500, "dry_run": False, "tags": ["x", "ÿ"]},
        secrets={"db_password": box.encrypt(CLEAR_SECRET)},
        progress={"transform": {"offset": 900}, "load:2024-05-02": 17},
        created_at=started,
        updated_at=started + timedelta(minutes=1),
    )


def frame(body: bytes, *, version: int = FORMAT_VERSION, digest: str | None = None) -> bytes:
    """Build file bytes around ``body`` exactly as :func:`encode` lays them out."""
    digest = hashlib.sha256(body).hexdigest() if digest is None else digest
    return b'{"format":%d,"sha256":"%s","body":' % (version, digest.encode()) + body + b"}\n"


def split(data: bytes) -> tuple[int, str, bytes]:
    match = re.match(rb'\{"format":(\d+),"sha256":"([0-9a-f]{64})","body":', data)
    assert match is not None, data[:80]
    assert data.endswith(b"}\n")
    return int(match.group(1)), match.group(2).decode(), data[match.end() : -2]


# -- round trip and layout -------------------------------------------------------


def test_full_checkpoint_round_trips_unchanged() -> None:
    checkpoint = full_checkpoint()
    restored = decode(encode(checkpoint))
    assert restored == checkpoint
    assert restored.tasks["extract"].output == {
        "rows": 1200,
        "files": ["a.csv", "b.csv"],
        "ratio": 0.25,
    }
    assert restored.tasks["notify"].error == "smtp: connection refused"
    assert restored.items["load"]["Zürich"] is None
    assert restored.progress == {"transform": {"offset": 900}, "load:2024-05-02": 17}
    assert restored.created_at == datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert restored.created_at.utcoffset() == timedelta(0)
    assert SecretBox("test-key").decrypt("db_password", restored.secrets["db_password"]) == (CLEAR_SECRET)


def test_encoding_has_header_checksum_and_canonical_body() -> None:
    checkpoint = full_checkpoint()
    data = encode(checkpoint)
    version, digest, body = split(data)
    assert version == FORMAT_VERSION == 2
    assert digest == hashlib.sha256(body).hexdigest()
    # The body is canonical (sorted, compact) so the digest is reproducible.
    assert body == canonical_json(json.loads(body))
    assert b": " not in body[:200] and b", " not in body[:200]
    # The whole file is ordinary JSON a human can read.
    document = json.loads(data)
    assert list(document) == ["format", "sha256", "body"]
    assert document["body"] == checkpoint.model_dump(mode="json")
    assert document["body"]["format_version"] == FORMAT_VERSION
    assert encode(checkpoint) == data  # deterministic


def test_sensitive_value_never_appears_in_clear_in_the_file() -> None:
    data = encode(full_checkpoint())
    assert CLEAR_SECRET.encode() not in data
    assert b"hunter2" not in data


@pytest.mark.parametrize(
    "value",
    [object(), "lone surrogate \udcff from a badly decoded argv"],
    ids=["unknown-type", "lone-surrogate"],
)
def test_a_value_that_is_not_json_is_a_checkpoint_error(value: object) -> None:
    checkpoint = Checkpoint(package="etl", definition_hash="h", run_id="r1", epoch=1, variables={"v": value})
    with pytest.raises(CheckpointError, match=r"run 'r1' cannot be encoded.*JSON"):
        encode(checkpoint)


# -- decode refuses damage ----------------------------------------------------


def test_every_truncation_is_refused() -> None:
    data = encode(full_checkpoint())
    for length in range(len(data)):
        with pytest.raises(CheckpointCorrupt) as caught:
            decode(data[:length], source=SOURCE)
        message = str(caught.value)
        assert message.startswith(SOURCE + ": "), (length, message)
        assert "truncated or malformed" in message or "checksum mismatch" in message, (
            length,
            message,
        )


def test_torn_tail_is_reported_as_truncated() -> None:
    data = encode(full_checkpoint())
    with pytest.raises(CheckpointCorrupt, match="truncated or malformed"):
        decode(data[: len(data) // 2], source=SOURCE)
    with pytest.raises(CheckpointCorrupt, match="truncated or malformed"):
        decode(b"", source=SOURCE)


@pytest.mark.parametrize("mask", [0x01, 0x20, 0x80])
def test_a_flipped_byte_anywhere_is_refused(mask: int) -> None:
    data = encode(full_checkpoint())
    _, _, body = split(data)
    body_start = data.index(body)
    for position in range(len(data)):
        damaged = bytearray(data)
        damaged[position] ^= mask
        with pytest.raises(CheckpointCorrupt) as caught:
            decode(bytes(damaged), source=SOURCE)
        if body_start <= position < body_start + len(body):
            assert "checksum mismatch (the file was damaged or edited)" in str(caught.value)


def test_hand_edited_body_with_stale_checksum_is_refused() -> None:
    data = encode(full_checkpoint())
    edited = data.replace(b'"epoch":3', b'"epoch":9')
    assert edited != data
    with pytest.raises(CheckpointCorrupt, match=rf"^{re.escape(SOURCE)}: checksum mismatch"):
        decode(edited, source=SOURCE)


def test_wrong_format_version_is_refused_even_with_valid_checksum() -> None:
    _, _, body = split(encode(full_checkpoint()))
    with pytest.raises(CheckpointCorrupt) as caught:
        decode(frame(body, version=3), source=SOURCE)
    message = str(caught.value)
    assert "format version 3 is not supported" in message
    assert f"reads {FORMAT_VERSION}" in message


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (canonical_json({"package": "etl"}), "definition_hash"),
        (
            canonical_json(
                {
                    "package": "etl",
                    "definition_hash": "h",
                    "run_id": "r",
                    "epoch": -1,
                }
            ),
            "epoch",
        ),
        (
            canonical_json(
                {
                    "package": "etl",
                    "definition_hash": "h",
                    "run_id": "r",
                    "epoch": 1,
                    "surprise": True,
                }
            ),
            "surprise",
        ),
        (
            canonical_json(
                {
                    "package": "etl",
                    "definition_hash": "h",
                    "run_id": "r",
                    "epoch": 1,
                    "tasks": {"t": {"state": "sort-of"}},
                }
            ),
            "tasks.t.state",
        ),
        (b"[1, 2, 3]", "Checkpoint"),
        (b'{"package": ', "Invalid JSON"),
    ],
    ids=["missing-fields", "negative-epoch", "extra-field", "bad-task-state", "array", "bad-json"],
)
def test_body_not_matching_the_schema_is_refused(body: bytes, field: str) -> None:
    with pytest.raises(CheckpointCorrupt) as caught:
        decode(frame(body), source=SOURCE)
    message = str(caught.value)
    assert message.startswith(f"{SOURCE}: body does not match the checkpoint schema")
    assert field in message


def test_decode_names_the_default_source() -> None:
    with pytest.raises(CheckpointCorrupt, match=r"^checkpoint: not a checkpoint file"):
        decode(b'{"format":1}')


# -- SecretBox -----------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [CLEAR_SECRET, {"user": "etl", "password": CLEAR_SECRET}, 12345, None, ["ä", 1.5]],
)
def test_secret_box_round_trip(value: object) -> None:
    box = SecretBox("key-one")
    token = box.encrypt(value)
    assert SecretBox("key-one").decrypt("v", token) == value
    assert box.encrypt(value) != token  # a fresh IV each time: equal values are not linkable


def test_secret_token_does_not_contain_the_clear_text() -> None:
    token = SecretBox("key-one").encrypt(CLEAR_SECRET)
    raw = base64.urlsafe_b64decode(token)
    for haystack in (token.encode(), raw):
        assert CLEAR_SECRET.encode() not in haystack
        assert b"hunter2" not in haystack
    assert "key-one" not in token


def test_decrypt_with_another_key_names_the_variable_and_the_key() -> None:
    token = SecretBox("key-one").encrypt(CLEAR_SECRET)
    with pytest.raises(CheckpointError) as caught:
        SecretBox("key-two").decrypt("db_password", token)
    message = str(caught.value)
    assert "'db_password'" in message
    assert "ORCHESTRATOR_SECRET_KEY differs" in message
    assert CLEAR_SECRET not in message


@pytest.mark.parametrize("token", ["not a token", "gAAAA" + "A" * 80, "tök€n"])
def test_decrypt_of_a_damaged_token_is_a_checkpoint_error(token: str) -> None:
    with pytest.raises(CheckpointError, match="'api_key'"):
        SecretBox("key-one").decrypt("api_key", token)


def test_secret_box_refuses_an_empty_key() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        SecretBox("")
