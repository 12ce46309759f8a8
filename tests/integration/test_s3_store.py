"""The S3 checkpoint store against a real SeaweedFS and moto's server: conditional writes, races,
zombies, seals, bad buckets.

The shared store contract runs in tests/unit/test_checkpoint_store.py and test_checkpoint_writer.py
(parametrised over the S3 store too); this file holds what only object storage has: the server's
own enforcement of ``If-None-Match`` / ``If-Match``, compare-and-swap races between many writers,
the seal that refuses a fenced writer's next append, and the messages of a bucket that cannot be
reached. The ``s3`` fixture runs each test on both servers (moto answers as AWS documents); the
races skip on moto, whose conditional writes are not atomic (tests/support/moto.py says why).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from checkpoints import (
    Change,
    Checkpoint,
    CheckpointCorrupt,
    CheckpointError,
    CheckpointUnavailable,
    Fenced,
    S3Options,
    apply,
)
from checkpoints.s3 import Manifest, S3CheckpointStore, journal_key
from checkpoints.s3layout import ManifestGeneration, is_seal, seal
from checkpoints.s3writer import S3CheckpointWriter
from tests.support.cli import run_cli
from tests.support.moto import NOT_ATOMIC, MotoS3
from tests.support.seaweed import SeaweedServer, SeaweedUnavailable, objects
from tests.support.servers import free_port

S3Server = SeaweedServer | MotoS3

PACKAGE, RUN = "etl-daily", "run-0001"
HASH = hashlib.sha256(b"definition").hexdigest()
WRITERS = 16


def make(epoch: int = 1, **fields: object) -> Checkpoint:
    return Checkpoint.model_validate(
        {"package": PACKAGE, "definition_hash": HASH, "run_id": RUN, "epoch": epoch, **fields}
    )


def status(exc: ClientError) -> int:
    return int(exc.response["ResponseMetadata"]["HTTPStatusCode"])


@pytest.fixture(params=["seaweed", "moto"])
def s3(request: pytest.FixtureRequest) -> S3Server:
    """The test's S3 server: the session's SeaweedFS, then the session's moto."""
    server: S3Server = request.getfixturevalue("seaweed" if request.param == "seaweed" else "moto_s3")
    return server


def atomic(server: S3Server) -> None:
    """Skip a race test where conditional writes are not atomic (moto), saying why."""
    if isinstance(server, MotoS3):
        pytest.skip(NOT_ATOMIC)


def test_the_server_enforces_if_none_match_and_if_match(s3: S3Server) -> None:
    store = s3.store()
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


def test_exactly_one_of_16_concurrent_writers_wins_each_compare_and_swap(s3: S3Server) -> None:
    atomic(s3)
    store = s3.store()
    store.fence(PACKAGE, RUN, 1)  # the manifest exists: every round is an If-Match race
    assert _race(store, rounds=10) == [1] * 10
    assert store.epoch(PACKAGE, RUN) == 11


def test_exactly_one_creator_wins_a_fresh_manifest(s3: S3Server) -> None:
    atomic(s3)
    store = s3.store()
    assert _race(store, rounds=1) == [1]  # If-None-Match race on a run that has no manifest yet
    assert store.epoch(PACKAGE, RUN) == 1


def test_concurrent_attempts_claim_distinct_epochs(s3: S3Server) -> None:
    atomic(s3)
    root = s3.root()
    stores = [s3.store(root) for _ in range(WRITERS)]
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


def test_a_zombie_attempt_cannot_overwrite_the_new_attempts_checkpoint(s3: S3Server) -> None:
    root = s3.root()
    zombie_store, new_store = s3.store(root), s3.store(root)
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


def test_loads_racing_compactions_always_see_a_whole_recent_state(s3: S3Server) -> None:
    root = s3.root()
    writer_store, reader_store = s3.store(root), s3.store(root)
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
    s3: S3Server, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = s3.store()
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


def _journal_keys(store: S3CheckpointStore) -> list[str]:
    """The run's journal objects (relative to the store's prefix), in batch order."""
    run = store.run_prefix(PACKAGE, RUN)[len(store.prefix) :]
    keys = [k for k in objects(store) if k.startswith(run + "journal-")]
    return sorted(keys, key=lambda k: (int(k.split("-")[-3]), int(k.rsplit("-", 1)[1][: -len(".log")])))


def _seals(store: S3CheckpointStore) -> list[str]:
    return [k for k, body in objects(store).items() if is_seal(body)]


@pytest.mark.parametrize("damage", ["missing", "torn"])
def test_a_missing_or_torn_batch_in_the_middle_stops_the_replay_as_a_gap(
    s3: S3Server, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = s3.store()
    writer = store.open(make(epoch=1))
    for region in ("eu", "us", "apac"):
        writer.append([Change(items={"load": {region: 1}})])
    middle = store.prefix + _journal_keys(store)[1]
    if damage == "missing":
        store.client.delete_object(Bucket=store.bucket, Key=middle)
    else:
        store.client.put_object(Bucket=store.bucket, Key=middle, Body=b'{"crc32":"0000')
    with caplog.at_level("WARNING", logger="checkpoints.s3"):
        loaded = store.load(PACKAGE, RUN)
    # Batch 3 follows a gap: its record is not applied, and the damage is reported.
    assert loaded is not None and loaded.items == {"load": {"eu": 1}}
    after = f"batch 2 is {damage}; 1 batch(es) after it are ignored"
    assert "checkpoint journal damaged" in caplog.text and after in caplog.text


def test_a_torn_last_batch_is_dropped_silently(s3: S3Server, caplog: pytest.LogCaptureFixture) -> None:
    store = s3.store()
    writer = store.open(make(epoch=1))
    writer.append([Change(items={"load": {"eu": 1}})])
    run = store.run_prefix(PACKAGE, RUN)
    generation = store._manifest(run).generations[-1]
    # No server leaves half an object, but a batch that is not a record is treated like a torn tail.
    store.client.put_object(Bucket=store.bucket, Key=journal_key(run, generation, 2), Body=b'{"crc3')
    with caplog.at_level("WARNING", logger="checkpoints.s3"):
        loaded = store.load(PACKAGE, RUN)
    assert loaded is not None and loaded.items == {"load": {"eu": 1}} and "damaged" not in caplog.text


def test_an_append_is_one_conditional_put(s3: S3Server) -> None:
    store = s3.store()
    writer = store.open(make(epoch=1))
    sent: list[tuple[str, str]] = []

    def count(request: object, **_: object) -> None:
        headers = getattr(request, "headers", {})
        condition = headers.get("If-None-Match", b"")
        sent.append(
            (
                getattr(request, "method", ""),
                condition.decode() if isinstance(condition, bytes) else condition,
            )
        )

    store.client.meta.events.register("before-send.s3", count)
    try:
        writer.append([Change(items={"load": {"eu": 1}}), Change(items={"load": {"us": 2}})])
    finally:
        store.client.meta.events.unregister("before-send.s3", count)
    assert sent == [("PUT", "*")]
    manifest = store._manifest(store.run_prefix(PACKAGE, RUN))
    assert manifest.etag == writer._manifest.etag, "an append leaves the manifest alone"


def test_a_save_costs_the_size_of_the_change(s3: S3Server) -> None:
    store = s3.store()
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


def test_delete_keeps_the_fence_and_purge_removes_everything(s3: S3Server) -> None:
    store = s3.store()
    writer = store.open(make(epoch=3))
    writer.append([Change(progress={"t": 1})])
    store.delete(PACKAGE, RUN, epoch=3)
    run = store.run_prefix(PACKAGE, RUN)[len(store.prefix) :]
    # What stays: the manifest (the fence) and the seal of the journal its writer appended to.
    assert set(objects(store)) == {run + "manifest", *_seals(store)} and len(_seals(store)) == 1
    assert store.epoch(PACKAGE, RUN) == 3 and store.load(PACKAGE, RUN) is None
    with pytest.raises(Fenced):
        store.save(make(epoch=2))
    assert store.purge(PACKAGE, RUN) is True
    assert objects(store) == {}
    assert store.purge(PACKAGE, RUN) is False


def test_an_append_after_delete_is_refused_and_writes_nothing(s3: S3Server) -> None:
    root = s3.root()
    store, other = s3.store(root), s3.store(root)
    writer = store.open(make(epoch=1))
    writer.append([Change(progress={"t": 1})])
    other.delete(PACKAGE, RUN, epoch=1)
    before = objects(store)
    with pytest.raises(CheckpointError, match="deleted"):
        writer.append([Change(progress={"t": 2})])
    assert objects(store) == before and store.load(PACKAGE, RUN) is None
    other.delete(PACKAGE, RUN, epoch=1)  # repeated: the seal is found, not doubled
    assert objects(store) == before


def test_the_seal_is_idempotent_and_a_fence_repeated_after_a_failed_seal_seals(s3: S3Server) -> None:
    root = s3.root()
    store, scheduler = s3.store(root), s3.store(root)
    zombie = store.open(make(epoch=1))
    zombie.append([Change(items={"load": {"eu": 1}})])
    # A fence that raised the epoch and died before sealing: the zombie still appends, and
    # those records happened before the fence took effect, so they count.
    run = scheduler.run_prefix(PACKAGE, RUN)
    manifest = scheduler._manifest(run)
    assert scheduler._swap(run, manifest, manifest.next(epoch=2)) is not None
    zombie.append([Change(items={"load": {"us": 2}})])
    assert scheduler.fence(PACKAGE, RUN, 2) == 2  # the repeated fence seals
    assert scheduler.fence(PACKAGE, RUN, 2) == 2  # and again: nothing more
    assert scheduler.next_epoch(PACKAGE, RUN) == 3
    assert len(_seals(store)) == 1 and _journal_keys(store)[-1] in _seals(store)
    with pytest.raises(Fenced, match="epoch 1 is older than the stored epoch 3"):
        zombie.append([Change(items={"load": {"apac": 3}})])
    loaded = scheduler.load(PACKAGE, RUN)
    assert loaded is not None and loaded.items == {"load": {"eu": 1, "us": 2}}


def _fence_racing(
    s3: S3Server,
    monkeypatch: pytest.MonkeyPatch,
    race: Callable[[S3CheckpointWriter, S3CheckpointStore, ManifestGeneration], None],
) -> tuple[S3CheckpointStore, S3CheckpointStore, S3CheckpointWriter, list[int]]:
    """Fence epoch 1's writer while ``race(zombie, sealer, generation)`` runs once, between the sealer's
    LIST of the journal and its first creates; return the store, the sealer, the zombie and
    how many batches that LIST found."""
    root = s3.root()
    store, scheduler = s3.store(root), s3.store(root)
    zombie = store.open(make(epoch=1))
    real = scheduler._batches
    listed: list[int] = []

    def stale_listing(run: str, generation: ManifestGeneration) -> list[int]:
        numbers: list[int] = real(run, generation)
        if not listed:
            listed.append(len(numbers))
            race(zombie, scheduler, generation)
        return numbers

    monkeypatch.setattr(scheduler, "_batches", stale_listing)
    assert scheduler.fence(PACKAGE, RUN, 2) == 2
    return store, scheduler, zombie, listed


def _fenced_with_only_its_first_batch(scheduler: S3CheckpointStore, zombie: S3CheckpointWriter) -> None:
    with pytest.raises(Fenced):
        zombie.append([Change(items={"load": {"us": 2}})])
    loaded = scheduler.load(PACKAGE, RUN)
    assert loaded is not None and loaded.items == {"load": {"eu": 1}}


def test_a_batch_that_wins_the_seals_name_counts_and_the_seal_goes_after_it(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    def batch(zombie: S3CheckpointWriter, sealer: S3CheckpointStore, generation: ManifestGeneration) -> None:
        zombie.append([Change(items={"load": {"eu": 1}})])

    store, scheduler, zombie, listed = _fence_racing(s3, monkeypatch, batch)
    assert listed == [0]
    keys = _journal_keys(store)
    assert len(keys) == 2 and _seals(store) == [keys[1]]
    _fenced_with_only_its_first_batch(scheduler, zombie)


def test_a_seal_that_finds_another_operations_seal_before_its_own_keeps_only_the_first(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    def batch_then_another_seal(
        zombie: S3CheckpointWriter, sealer: S3CheckpointStore, generation: ManifestGeneration
    ) -> None:
        zombie.append([Change(items={"load": {"eu": 1}})])
        other = journal_key(sealer.run_prefix(PACKAGE, RUN), generation, 2)
        sealer.client.put_object(Bucket=sealer.bucket, Key=other, Body=seal(generation.epoch))

    store, scheduler, zombie, listed = _fence_racing(s3, monkeypatch, batch_then_another_seal)
    assert listed == [0]
    keys = _journal_keys(store)
    # Name 1 is the batch, 2 the other seal; this fence won name 3, read back to 2 and removed 3.
    assert len(keys) == 2 and _seals(store) == [keys[1]] and keys[1].endswith("-2.log")
    _fenced_with_only_its_first_batch(scheduler, zombie)


def test_a_zombie_appending_through_a_fence_loses_no_acknowledged_record(s3: S3Server) -> None:
    atomic(s3)  # the seal and the zombie's batch race for one name
    root = s3.root()
    zombie_store, scheduler = s3.store(root), s3.store(root)
    zombie = zombie_store.open(make(epoch=1))
    acknowledged: list[str] = []
    refused: list[BaseException] = []
    started = threading.Event()

    def append_until_refused() -> None:
        for n in range(10_000):
            key = f"i{n:05d}"
            try:
                zombie.append([Change(items={"load": {key: n}})])
            except BaseException as exc:
                refused.append(exc)
                return
            acknowledged.append(key)
            if n == 2:
                started.set()

    appender = threading.Thread(target=append_until_refused)
    appender.start()
    assert started.wait(timeout=30)
    assert scheduler.fence(PACKAGE, RUN, 2) == 2
    appender.join(timeout=60)
    assert not appender.is_alive()
    assert len(refused) == 1 and isinstance(refused[0], Fenced), refused
    loaded = scheduler.load(PACKAGE, RUN)
    assert loaded is not None
    # Every append that returned is in the state, and nothing after the refusal is.
    assert sorted(loaded.items["load"]) == acknowledged
    with pytest.raises(Fenced):
        zombie.append([Change(items={"load": {"late": 1}})])
    assert scheduler.load(PACKAGE, RUN) == loaded


def test_a_format_1_manifest_is_read_as_closed_generations(s3: S3Server) -> None:
    store = s3.store()
    writer = store.open(make(epoch=1))
    writer.append([Change(items={"load": {"eu": 1}})])
    writer.append([Change(items={"load": {"us": 2}})])
    run = store.run_prefix(PACKAGE, RUN)
    generation = store._manifest(run).generations[-1]
    # What the two-request store wrote: every batch counted; here only the first one was.
    old = {"format": 1, "epoch": 1, "version": 9, "generations": [[1, generation.token, 1]], "nonce": "n"}
    store.client.put_object(Bucket=store.bucket, Key=run + "manifest", Body=json.dumps(old).encode())
    loaded = store.load(PACKAGE, RUN)
    assert loaded is not None and loaded.items == {"load": {"eu": 1}}
    assert store.fence(PACKAGE, RUN, 2) == 2 and store._manifest(run).generations[-1].batches == 1


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


def test_a_missing_bucket_is_a_clear_error(s3: S3Server) -> None:
    store = s3.store("s3://no-such-bucket-here/p")
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
