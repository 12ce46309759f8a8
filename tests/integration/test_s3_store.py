"""The S3 checkpoint store against a real SeaweedFS: conditional writes, races, zombies, bad buckets.

The shared store contract runs in tests/unit/test_checkpoint_store.py and test_checkpoint_writer.py
(parametrised over the S3 store too); this file holds what only object storage has: the server's
own enforcement of ``If-None-Match`` / ``If-Match``, compare-and-swap races between many writers,
and the messages of a bucket that cannot be reached.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from checkpoints import Change, Checkpoint, CheckpointCorrupt, CheckpointUnavailable, Fenced, S3Options, apply
from checkpoints.s3 import Manifest, S3CheckpointStore, journal_key
from tests.support.cli import run_cli
from tests.support.seaweed import SeaweedServer, SeaweedUnavailable, objects
from tests.support.servers import free_port

PACKAGE, RUN = "etl-daily", "run-0001"
HASH = hashlib.sha256(b"definition").hexdigest()
WRITERS = 16


def make(epoch: int = 1, **fields: object) -> Checkpoint:
    return Checkpoint.model_validate(
        {"package": PACKAGE, "definition_hash": HASH, "run_id": RUN, "epoch": epoch, **fields}
    )


def status(exc: ClientError) -> int:
    return int(exc.response["ResponseMetadata"]["HTTPStatusCode"])


def test_the_server_enforces_if_none_match_and_if_match(seaweed: SeaweedServer) -> None:
    store = seaweed.store()
    client, bucket, key = store.client, store.bucket, store.prefix + "probe"
    first = client.put_object(Bucket=bucket, Key=key, Body=b"one", IfNoneMatch="*")
    with pytest.raises(ClientError) as exists:
        client.put_object(Bucket=bucket, Key=key, Body=b"two", IfNoneMatch="*")
    assert status(exists.value) == 412
    second = client.put_object(Bucket=bucket, Key=key, Body=b"three", IfMatch=first["ETag"])
    with pytest.raises(ClientError) as stale:
        client.put_object(Bucket=bucket, Key=key, Body=b"four", IfMatch=first["ETag"])
    assert status(stale.value) == 412
    with pytest.raises(ClientError) as missing:
        client.put_object(Bucket=bucket, Key=key + "-absent", Body=b"five", IfMatch=second["ETag"])
    assert status(missing.value) in (404, 412)  # AWS: 404; SeaweedFS, MinIO: 412
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"three"


def _race(store: S3CheckpointStore, rounds: int) -> list[int]:
    """``rounds`` times, WRITERS threads swap the same manifest at once; the winners of each round."""
    run = store.run_prefix(PACKAGE, RUN)
    winners = []
    for _ in range(rounds):
        current = store._manifest(run)
        barrier = threading.Barrier(WRITERS)
        won: list[int] = []

        def swap(i: int, current: Manifest = current, barrier: threading.Barrier = barrier) -> None:
            barrier.wait(timeout=10)
            if store._swap(run, current, current.next(epoch=current.epoch + 1)) is not None:
                won.append(i)

        threads = [threading.Thread(target=swap, args=(i,)) for i in range(WRITERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
            assert not thread.is_alive()
        winners.append(len(won))
    return winners


def test_exactly_one_of_16_concurrent_writers_wins_each_compare_and_swap(seaweed: SeaweedServer) -> None:
    store = seaweed.store()
    store.fence(PACKAGE, RUN, 1)  # the manifest exists: every round is an If-Match race
    assert _race(store, rounds=10) == [1] * 10
    assert store.epoch(PACKAGE, RUN) == 11


def test_exactly_one_creator_wins_a_fresh_manifest(seaweed: SeaweedServer) -> None:
    store = seaweed.store()
    assert _race(store, rounds=1) == [1]  # If-None-Match race on a run that has no manifest yet
    assert store.epoch(PACKAGE, RUN) == 1


def test_concurrent_attempts_claim_distinct_epochs(seaweed: SeaweedServer) -> None:
    root = seaweed.root()
    stores = [seaweed.store(root) for _ in range(WRITERS)]
    claimed: list[int] = []
    barrier = threading.Barrier(WRITERS)

    def claim(store: S3CheckpointStore) -> None:
        barrier.wait(timeout=10)
        claimed.append(store.next_epoch(PACKAGE, RUN))

    threads = [threading.Thread(target=claim, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive()
    assert sorted(claimed) == list(range(1, WRITERS + 1))


def test_a_zombie_attempt_cannot_overwrite_the_new_attempts_checkpoint(seaweed: SeaweedServer) -> None:
    root = seaweed.root()
    zombie_store, new_store = seaweed.store(root), seaweed.store(root)
    zombie = zombie_store.open(make(epoch=1))
    zombie.append([Change(items={"load": {"eu": 1}})])
    # The scheduler fences the run; the new attempt resumes from what the zombie saved.
    assert new_store.fence(PACKAGE, RUN, 2) == 2
    resumed = new_store.load(PACKAGE, RUN)
    assert resumed is not None and resumed.items == {"load": {"eu": 1}}
    resumed.epoch = 2
    writer = new_store.open(resumed)
    writer.append([Change(items={"load": {"us": 2}})])
    before = objects(new_store)
    with pytest.raises(Fenced, match="epoch 1 is older than the stored epoch 2"):
        zombie.append([Change(items={"load": {"eu": "overwritten"}})])
    with pytest.raises(Fenced):
        zombie.compact(make(epoch=1, items={"load": {"eu": "overwritten"}}))
    with pytest.raises(Fenced):
        zombie_store.save(make(epoch=1))
    with pytest.raises(Fenced):
        zombie_store.delete(PACKAGE, RUN, epoch=1)
    assert objects(new_store) == before  # nothing written, nothing left behind
    loaded = new_store.load(PACKAGE, RUN)
    assert loaded is not None and loaded.items == {"load": {"eu": 1, "us": 2}}
    writer.append([Change(items={"load": {"apac": 3}})])  # the new attempt carries on
    assert new_store.load(PACKAGE, RUN).items["load"] == {"eu": 1, "us": 2, "apac": 3}  # type: ignore[union-attr]


def test_loads_racing_compactions_always_see_a_whole_recent_state(seaweed: SeaweedServer) -> None:
    root = seaweed.root()
    writer_store, reader_store = seaweed.store(root), seaweed.store(root)
    state = make(epoch=1)
    writer = writer_store.open(state)
    done = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            while not done.is_set():
                loaded = reader_store.load(PACKAGE, RUN)
                assert loaded is not None
                items = loaded.items.get("load", {})
                assert set(items) == {f"i{n:03d}" for n in range(len(items))}, "a gap in the state"
                seen.append(len(items))
        except BaseException as exc:
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(60):
            change = Change(items={"load": {f"i{n:03d}": n}})
            writer.append([change])
            apply(state, change)
            if n % 4 == 3:  # compactions drop old generations under the reader's feet
                writer.compact(state)
    finally:
        done.set()
        reader.join(timeout=60)
    assert not reader.is_alive() and errors == []
    assert seen and seen == sorted(seen), "a load went back in time"
    final = reader_store.load(PACKAGE, RUN)
    assert final is not None and len(final.items["load"]) == 60


def _snapshot_keys(store: S3CheckpointStore) -> list[str]:
    run = store.run_prefix(PACKAGE, RUN)
    keys = [store.prefix + k for k in objects(store) if k.startswith(run[len(store.prefix) :] + "snapshot-")]
    return sorted(keys, key=lambda k: int(k.rsplit("/", 1)[1].split("-")[1]))


@pytest.mark.parametrize("damage", ["flipped", "missing"])
def test_a_damaged_newest_snapshot_falls_back_to_the_previous_generation(
    seaweed: SeaweedServer, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = seaweed.store()
    store.save(make(epoch=1, progress={"t": 1}))
    writer = store.open(make(epoch=1, progress={"t": 2}))
    writer.append([Change(items={"load": {"eu": 1}})])
    older, newest = _snapshot_keys(store)
    if damage == "missing":
        store.client.delete_object(Bucket=store.bucket, Key=newest)
    else:  # objects are immutable to the store, not to a hand or a faulty disk
        data = bytearray(store.client.get_object(Bucket=store.bucket, Key=newest)["Body"].read())
        data[len(data) // 2] ^= 0x04
        store.client.put_object(Bucket=store.bucket, Key=newest, Body=bytes(data))
    with caplog.at_level("WARNING", logger="checkpoints.s3"):
        loaded = store.load(PACKAGE, RUN)
    # The previous snapshot, with the newer generation's journal replayed on it (records are absolute).
    assert loaded is not None and loaded.progress == {"t": 1} and loaded.items == {"load": {"eu": 1}}
    assert "using the previous generation" in caplog.text and newest in caplog.text
    store.client.delete_object(Bucket=store.bucket, Key=older)
    with pytest.raises(CheckpointCorrupt, match="no readable checkpoint generation is left"):
        store.load(PACKAGE, RUN)


def test_a_batch_the_manifest_does_not_count_is_ignored(seaweed: SeaweedServer) -> None:
    store = seaweed.store()
    writer = store.open(make(epoch=1))
    writer.append([Change(items={"load": {"eu": 1}})])
    # What a writer killed between its two requests leaves: a batch nothing acknowledged.
    manifest = store._manifest(store.run_prefix(PACKAGE, RUN))
    generation = manifest.generations[-1]
    orphan = journal_key(store.run_prefix(PACKAGE, RUN), generation, generation.batches + 1)
    store.client.put_object(Bucket=store.bucket, Key=orphan, Body=b"not even a record\n")
    loaded = store.load(PACKAGE, RUN)
    assert loaded is not None and loaded.items == {"load": {"eu": 1}}
    assert store.purge(PACKAGE, RUN) and objects(store) == {}


def test_a_save_costs_the_size_of_the_change(seaweed: SeaweedServer) -> None:
    store = seaweed.store()
    big = {str(n): "x" * 100 for n in range(2000)}
    writer = store.open(make(items={"load": big}))
    assert writer.snapshot_bytes > 200_000
    small = writer.append([Change(items={"load": {"new": 1}})])
    assert small < 200
    run = store.run_prefix(PACKAGE, RUN)
    sizes = {k: len(v) for k, v in objects(store).items()}
    journal = [k for k in sizes if k.startswith(run[len(store.prefix) :] + "journal-")]
    assert [sizes[k] for k in journal] == [small]
    assert sizes[run[len(store.prefix) :] + "manifest"] < 300


def test_delete_keeps_the_fence_and_purge_removes_everything(seaweed: SeaweedServer) -> None:
    store = seaweed.store()
    writer = store.open(make(epoch=3))
    writer.append([Change(progress={"t": 1})])
    store.delete(PACKAGE, RUN, epoch=3)
    run = store.run_prefix(PACKAGE, RUN)[len(store.prefix) :]
    assert set(objects(store)) == {run + "manifest"}
    assert store.epoch(PACKAGE, RUN) == 3 and store.load(PACKAGE, RUN) is None
    with pytest.raises(Fenced):
        store.save(make(epoch=2))
    assert store.purge(PACKAGE, RUN) is True
    assert objects(store) == {}
    assert store.purge(PACKAGE, RUN) is False


def test_an_unreachable_endpoint_is_a_clear_error_without_credentials() -> None:
    secret = "s3cr3t-" + "k" * 20
    options = S3Options(
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region="us-east-1",
        access_key_id="AKIATESTING",
        secret_access_key=secret,
        max_attempts=1,
        connect_timeout=1,
        retry_timeout=0.5,
    )
    store = S3CheckpointStore("s3://no-such-bucket/prefix", options=options)
    with pytest.raises(CheckpointUnavailable) as caught:
        store.check()
    message = str(caught.value)
    assert "s3://no-such-bucket/prefix/" in message and options.endpoint_url in message  # type: ignore[operator]
    assert secret not in message and secret not in repr(store) and secret not in repr(options)


def test_a_missing_bucket_is_a_clear_error(seaweed: SeaweedServer) -> None:
    store = seaweed.store("s3://no-such-bucket-here/p")
    with pytest.raises(
        CheckpointUnavailable, match=r"s3://no-such-bucket-here/p/ at http://127\.0\.0\.1:\d+"
    ):
        store.check()
    with pytest.raises(CheckpointUnavailable, match="NoSuchBucket|does not exist"):
        store.epoch(PACKAGE, RUN)


@pytest.mark.parametrize("command", ["run", "worker"])
def test_the_cli_exits_non_zero_naming_the_endpoint_and_bucket(
    tmp_path: Path, command: str, redis_url: str
) -> None:
    package = tmp_path / "tiny.yaml"
    package.write_text("name: tiny\ntasks:\n  - id: a\n    shell: 'true'\n")
    endpoint, secret = f"http://127.0.0.1:{free_port()}", "s3cr3t-" + "q" * 24
    env = {
        "ORCHESTRATOR_CHECKPOINT_ROOT": "s3://unreachable-bucket/runs",
        "ORCHESTRATOR_BROKER_URL": redis_url,
        "ORCHESTRATOR_DATABASE_URL": f"sqlite:///{tmp_path / 'state.db'}",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "AKIATESTING",
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_MAX_ATTEMPTS": "1",
        "ORCHESTRATOR_S3_RETRY_TIMEOUT": "1",
    }
    args = ["run", str(package)] if command == "run" else ["worker", "--node", "s3-check"]
    result = run_cli(*args, cwd=tmp_path, env=env, timeout=90)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "s3://unreachable-bucket/runs/" in output and endpoint in output, output
    assert secret not in output


@pytest.fixture
def own_seaweed(tmp_path: Path) -> Iterator[SeaweedServer]:
    """A SeaweedFS of this test alone, which it may stop and start (the session's stays up)."""
    try:
        server = SeaweedServer(tmp_path)
        server.start()
    except SeaweedUnavailable as exc:
        pytest.skip(f"SeaweedFS S3 server unavailable: {exc}")
    try:
        yield server
    finally:
        server.stop()


def test_a_save_waits_for_a_restarting_store_and_nothing_is_lost(own_seaweed: SeaweedServer) -> None:
    store = own_seaweed.store(retry_timeout=60.0)
    writer = store.open(make(epoch=1))
    writer.append([Change(items={"load": {"eu": 1}})])
    own_seaweed.stop()  # the object server goes away mid-run (SIGKILL)
    outcome: list[object] = []

    def save() -> None:
        try:
            outcome.append(writer.append([Change(items={"load": {"us": 2}})]))
        except Exception as exc:
            outcome.append(exc)

    saving = threading.Thread(target=save)
    saving.start()
    own_seaweed.start()  # back within the save's retry window: the save goes through
    saving.join(timeout=90)
    assert not saving.is_alive()
    assert outcome and isinstance(outcome[0], int), outcome
    writer.append([Change(items={"load": {"apac": 3}})])
    loaded = store.load(PACKAGE, RUN)
    assert loaded is not None and loaded.items == {"load": {"eu": 1, "us": 2, "apac": 3}}


def test_a_store_down_too_long_fails_clearly_in_bounded_time_and_the_run_resumes(
    own_seaweed: SeaweedServer,
) -> None:
    root = own_seaweed.root()
    store = own_seaweed.store(root, retry_timeout=2.0)
    writer = store.open(make(epoch=1))
    writer.append([Change(items={"load": {"eu": 1}})])
    own_seaweed.stop()
    started = time.monotonic()
    with pytest.raises(CheckpointUnavailable) as caught:
        writer.append([Change(items={"load": {"us": 2}})])
    assert time.monotonic() - started < 15  # 2 s of retries, plus botocore's own attempts
    message = str(caught.value)
    assert f"s3://{own_seaweed.bucket}/" in message and own_seaweed.endpoint in message
    assert own_seaweed.secret_key not in message
    own_seaweed.start()
    # The next attempt (epoch 2) resumes from every save that was acknowledged.
    resumed_store = own_seaweed.store(root)
    assert resumed_store.fence(PACKAGE, RUN, 2) == 2
    resumed = resumed_store.load(PACKAGE, RUN)
    assert resumed is not None and resumed.items == {"load": {"eu": 1}}
    resumed.epoch = 2
    resumed_store.open(resumed).append([Change(items={"load": {"us": 2}})])
    final = resumed_store.load(PACKAGE, RUN)
    assert final is not None and final.items == {"load": {"eu": 1, "us": 2}}
