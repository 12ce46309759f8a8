"""The Redis side of cluster state against a real server: claims, leases, fencing, heartbeats.

Every decision is one Lua script; these tests drive the scripts directly,
with TTLs of half a second, and wait for deadlines with
:func:`~tests.support.cli.wait_until` rather than sleeping.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from orchestrator.control.liveness import Claim, Expired, Liveness
from orchestrator.runtime.broker import RUN_QUEUE
from tests.support.cli import wait_until
from workers.lease import LeaseKeeper

TTL = 0.5
RUN = "run-1"


@pytest.fixture
def clients(redis_url: str) -> Iterator[Callable[[], redis.Redis]]:
    """Make Redis clients on the test's (flushed) server; all are closed afterwards."""
    made: list[redis.Redis] = []

    def make() -> redis.Redis:
        client = redis.Redis.from_url(redis_url)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def namespace() -> str:
    """This test's key prefix: tests sharing one Redis server cannot see each other's keys."""
    return f"orch-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def new_liveness(namespace: str) -> Callable[[redis.Redis], Liveness]:
    def make(client: redis.Redis) -> Liveness:
        return Liveness(
            client, lease_ttl=TTL, claim_timeout=TTL, prefix=namespace, run_queue=f"{RUN_QUEUE}.{namespace}"
        )

    return make


@pytest.fixture
def liveness(clients: Callable[[], redis.Redis], new_liveness: Callable[[redis.Redis], Liveness]) -> Liveness:
    return new_liveness(clients())


def lose_data(liveness: Liveness) -> None:
    """What FLUSHALL does to this test's keys (other tests may share the server)."""
    liveness.client.delete(*liveness.client.scan_iter(match=f"{liveness.prefix}:*"), liveness.run_queue)


def in_zset(liveness: Liveness, name: str, member: str) -> bool:
    return liveness.client.zscore(liveness._key(name), member) is not None


def wait_expired(liveness: Liveness, run_id: str = RUN) -> None:
    wait_until(
        lambda: run_id in liveness.expired_leases(), timeout=5, what=f"the lease of {run_id} to expire"
    )


def claimed(liveness: Liveness, *, node: str = "n1", attempt: int = 1) -> int:
    """Dispatch and claim the run; return the epoch it runs under."""
    epoch = liveness.fence_for_dispatch(RUN)
    assert liveness.claim(RUN, epoch, node, attempt).status is Claim.OK
    return epoch


# -- claims ----------------------------------------------------------------------------------


def test_claim_succeeds_once_per_epoch(liveness: Liveness) -> None:
    epoch = liveness.fence_for_dispatch(RUN)
    assert epoch == 1
    assert in_zset(liveness, "pending", RUN)

    first = liveness.claim(RUN, epoch, "n1", 1)
    assert first.status is Claim.OK
    assert first.server_ms > 0
    assert liveness.lease_owner(RUN) == {"node": "n1", "epoch": "1", "attempt": "1"}
    assert in_zset(liveness, "leases", RUN)
    assert not in_zset(liveness, "pending", RUN), "a claimed attempt is no longer waiting for a worker"

    # A redelivered message (same epoch), on this node or another, is refused and changes nothing.
    assert liveness.claim(RUN, epoch, "n2", 1).status is Claim.DUPLICATE
    assert liveness.lease_owner(RUN)["node"] == "n1"


def test_claim_of_an_older_epoch_is_stale(liveness: Liveness) -> None:
    old = liveness.fence_for_dispatch(RUN)
    new = liveness.fence_for_dispatch(RUN)
    assert new == old + 1

    assert liveness.claim(RUN, old, "n1", 1).status is Claim.STALE
    assert liveness.lease_owner(RUN) == {}
    assert liveness.claim(RUN, new, "n2", 2).status is Claim.OK
    assert liveness.claim(RUN, old, "n1", 1).status is Claim.STALE
    assert liveness.lease_owner(RUN)["node"] == "n2"
    assert liveness.epoch(RUN) == new


def test_claim_of_a_cancelled_run_is_refused(liveness: Liveness) -> None:
    epoch = liveness.fence_for_dispatch(RUN)
    liveness.request_cancel(RUN)
    assert liveness.cancel_requested(RUN)

    assert liveness.claim(RUN, epoch, "n1", 1).status is Claim.CANCELLED
    assert liveness.lease_owner(RUN) == {}
    assert not in_zset(liveness, "leases", RUN)

    liveness.clear_cancel(RUN)
    assert liveness.claim(RUN, epoch, "n1", 1).status is Claim.OK


# -- renewal and fencing ----------------------------------------------------------------------


def test_a_renewed_lease_outlives_its_ttl_and_expires_once_renewals_stop(liveness: Liveness) -> None:
    epoch = claimed(liveness)
    first_deadline = liveness.client.zscore(liveness._key("leases"), RUN)
    assert first_deadline is not None
    keeper = LeaseKeeper(
        liveness,
        run_id=RUN,
        epoch=epoch,
        attempt=1,
        node="n1",
        interval=TTL / 5,
        ttl=TTL,
        stop=threading.Event(),
    )
    keeper.start()

    def two_ttls_past_the_first_deadline() -> bool:
        assert RUN not in liveness.expired_leases()
        assert liveness.fence_expired(RUN) is None
        return liveness.server_ms() > first_deadline + 2 * TTL * 1000

    try:
        wait_until(two_ttls_past_the_first_deadline, timeout=5, what="two TTLs of renewals")
    finally:
        keeper.stop()
    assert not keeper.lost
    keeper.check()  # the guard passes: renewed within the TTL
    assert liveness.epoch(RUN) == epoch
    wait_expired(liveness)


def test_renew_reports_a_cancellation_and_keeps_the_lease(liveness: Liveness) -> None:
    epoch = claimed(liveness)
    liveness.request_cancel(RUN)
    assert liveness.renew(RUN, epoch, "n1", 1) is Claim.CANCELLED
    assert liveness.lease_owner(RUN)["epoch"] == str(epoch)


def test_fence_expired_only_fences_a_lease_whose_deadline_passed(liveness: Liveness) -> None:
    epoch = claimed(liveness)
    assert liveness.expired_leases() == []
    assert liveness.fence_expired(RUN) is None, "a live lease must not be fenced"
    assert liveness.renew(RUN, epoch, "n1", 1) is Claim.OK

    wait_expired(liveness)
    expired = liveness.fence_expired(RUN)
    assert isinstance(expired, Expired)
    assert (expired.run_id, expired.epoch, expired.node, expired.old_epoch) == (RUN, epoch + 1, "n1", epoch)
    assert expired.deadline_ms <= expired.server_ms
    assert liveness.epoch(RUN) == epoch + 1
    assert liveness.lease_owner(RUN) == {}
    assert not in_zset(liveness, "leases", RUN)
    # The new attempt must be claimed within the claim timeout, or it is a lost dispatch.
    assert in_zset(liveness, "pending", RUN)

    # The lost attempt is fenced for good: renewing and claiming again are refused.
    assert liveness.renew(RUN, epoch, "n1", 1) is Claim.STALE
    assert liveness.claim(RUN, epoch, "n1", 1).status is Claim.STALE
    assert liveness.lease_owner(RUN) == {}
    assert liveness.fence_expired(RUN) is None
    assert liveness.claim(RUN, epoch + 1, "n2", 2).status is Claim.OK


def test_renew_after_the_run_was_fenced_is_stale(liveness: Liveness) -> None:
    epoch = claimed(liveness)
    newer = liveness.fence_for_dispatch(RUN)  # a newer attempt was dispatched
    assert liveness.renew(RUN, epoch, "n1", 1) is Claim.STALE

    assert liveness.claim(RUN, newer, "n2", 2).status is Claim.OK
    assert liveness.renew(RUN, epoch, "n1", 1) is Claim.STALE
    assert liveness.lease_owner(RUN) == {"node": "n2", "epoch": str(newer), "attempt": "2"}
    assert liveness.renew(RUN, newer, "n2", 2) is Claim.OK

    assert liveness.fence_run(RUN) == newer + 1
    assert liveness.renew(RUN, newer, "n2", 2) is Claim.STALE
    assert liveness.lease_owner(RUN) == {}
    assert not in_zset(liveness, "leases", RUN)


def test_release_only_drops_the_owners_lease(liveness: Liveness) -> None:
    epoch = claimed(liveness)
    assert not liveness.release(RUN, epoch - 1)
    assert liveness.lease_owner(RUN)["epoch"] == str(epoch)
    assert liveness.release(RUN, epoch)
    assert liveness.lease_owner(RUN) == {}
    assert not in_zset(liveness, "leases", RUN)


@pytest.mark.parametrize("contenders", [2, 8])
def test_racing_fencers_exactly_one_wins(
    clients: Callable[[], redis.Redis], new_liveness: Callable[[redis.Redis], Liveness], contenders: int
) -> None:
    schedulers = [new_liveness(clients()) for _ in range(contenders)]
    epoch = claimed(schedulers[0])
    wait_expired(schedulers[0])

    barrier = threading.Barrier(contenders)
    results: list[Expired | None] = [None] * contenders

    def fence(index: int) -> None:
        barrier.wait(timeout=10)
        results[index] = schedulers[index].fence_expired(RUN)

    threads = [threading.Thread(target=fence, args=(i,)) for i in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    winners = [r for r in results if r is not None]
    assert len(winners) == 1, results
    assert winners[0].epoch == epoch + 1
    assert schedulers[0].epoch(RUN) == epoch + 1, "the epoch moved exactly once"


# -- lost dispatches ----------------------------------------------------------------------------


def test_take_lost_dispatch_waits_while_the_run_queue_is_not_empty(liveness: Liveness) -> None:
    epoch = liveness.fence_for_dispatch(RUN)
    assert liveness.take_lost_dispatch(RUN) is None, "the claim deadline has not passed"
    wait_until(lambda: RUN in liveness.overdue_dispatches(), timeout=5, what="the claim deadline")

    # A message still waits in the queue (all workers busy): the dispatch is not lost.
    liveness.client.lpush(liveness.run_queue, b"another run's message")
    before = liveness.client.zscore(liveness._key("pending"), RUN)
    assert liveness.take_lost_dispatch(RUN) is None
    after = liveness.client.zscore(liveness._key("pending"), RUN)
    assert before is not None and after is not None
    assert after > before, "the claim deadline moves on"
    assert RUN not in liveness.overdue_dispatches()
    assert liveness.epoch(RUN) == epoch

    liveness.client.delete(liveness.run_queue)
    wait_until(lambda: RUN in liveness.overdue_dispatches(), timeout=5, what="the new claim deadline")
    lost = liveness.take_lost_dispatch(RUN)
    assert lost is not None
    assert (lost.run_id, lost.epoch) == (RUN, epoch + 1)
    assert lost.deadline_ms <= lost.server_ms
    assert liveness.take_lost_dispatch(RUN) is None, "taken once; the next claim deadline is ahead"
    assert liveness.claim(RUN, epoch, "n1", 1).status is Claim.STALE, "the lost message is fenced"


# -- heartbeats -----------------------------------------------------------------------------------


def test_heartbeats_alive_and_lost_nodes(liveness: Liveness) -> None:
    liveness.heartbeat("n1", {"pid": 11})
    liveness.heartbeat("n2", {"pid": 22})
    alive = liveness.alive_nodes()
    assert set(alive) == {"n1", "n2"}
    assert alive["n1"]["pid"] == 11
    assert alive["n1"]["deadline_ms"] > liveness.server_ms()
    assert liveness.lost_nodes() == []
    assert not liveness.take_lost_node("n1"), "a live node is not lost"

    # n1 keeps beating, n2 stops: only n2 is lost, and it is taken once.
    def n2_lost() -> bool:
        liveness.heartbeat("n1", {"pid": 11})
        return "n2" in liveness.lost_nodes()

    wait_until(n2_lost, timeout=5, what="n2's heartbeat to expire")
    assert set(liveness.alive_nodes()) == {"n1"}
    assert liveness.lost_nodes() == ["n2"]
    assert liveness.take_lost_node("n2")
    assert not liveness.take_lost_node("n2")
    assert liveness.lost_nodes() == []

    liveness.node_gone("n1")
    assert liveness.alive_nodes() == {}
    assert liveness.lost_nodes() == []


def test_a_node_is_ready_once_it_says_so(liveness: Liveness) -> None:
    liveness.heartbeat("starting", {"pid": 1, "ready": False})  # alive, its pool still forking
    liveness.heartbeat("serving", {"pid": 2, "ready": True})
    liveness.heartbeat("older", {"pid": 3})  # a node of a version that does not say
    assert set(liveness.alive_nodes()) == {"starting", "serving", "older"}
    assert liveness.ready_nodes() == {"serving", "older"}
    liveness.heartbeat("starting", {"pid": 1, "ready": True})
    assert liveness.ready_nodes() == {"starting", "serving", "older"}
    liveness.node_gone("serving")
    assert liveness.ready_nodes() == {"starting", "older"}


# -- the clock ----------------------------------------------------------------------------------


def test_deadlines_use_the_redis_servers_clock(liveness: Liveness, monkeypatch: pytest.MonkeyPatch) -> None:
    """A host whose clock is off by an hour either way decides exactly as one whose clock is right."""
    real = time.time
    epoch = claimed(liveness)
    liveness.heartbeat("n1", {})
    for skew in (3600.0, -3600.0):
        monkeypatch.setattr(time, "time", lambda skew=skew: real() + skew)
        assert liveness.expired_leases() == []
        assert liveness.fence_expired(RUN) is None
        assert liveness.overdue_dispatches() == []
        assert liveness.lost_nodes() == []
        assert set(liveness.alive_nodes()) == {"n1"}
        assert liveness.renew(RUN, epoch, "n1", 1) is Claim.OK
        liveness.heartbeat("n1", {})
        deadline = liveness.client.zscore(liveness._key("leases"), RUN)
        assert deadline is not None
        assert abs(deadline - liveness.server_ms() - TTL * 1000) < 1000, "deadline = server time + TTL"

    monkeypatch.setattr(time, "time", lambda: real() - 3600)
    wait_expired(liveness)  # the lease expires after its TTL on the server's clock regardless
    assert liveness.fence_expired(RUN) is not None


# -- Redis lost its data ----------------------------------------------------------------------


def test_restore_after_data_loss(liveness: Liveness) -> None:
    # "running" was claimed at epoch 3; "waiting" was dispatched and never claimed;
    # "renewed" was renewed by its worker before the scheduler rebuilt.
    for _ in range(3):
        liveness.fence_for_dispatch("running")
    assert liveness.claim("running", 3, "n1", 3).status is Claim.OK
    liveness.fence_for_dispatch("waiting")
    liveness.set_marker()

    lose_data(liveness)  # Redis lost its data
    assert not liveness.marker_present()
    assert liveness.renew("renewed", 2, "n3", 2) is Claim.OK
    renewed_deadline = liveness.client.zscore(liveness._key("leases"), "renewed")

    liveness.restore_run("running", 3, "n1", 3, running=True)
    liveness.restore_run("waiting", 1, "", 1, running=False)
    liveness.restore_run("renewed", 2, "n3-as-sql-remembers", 2, running=True)
    liveness.set_marker()
    assert liveness.marker_present()

    # The running run has a fresh lease that its owner can renew, and an older epoch cannot.
    assert liveness.lease_owner("running") == {"node": "n1", "epoch": "3", "attempt": "3"}
    assert liveness.epoch("running") == 3
    assert "running" not in liveness.expired_leases(), "a fresh lease, not an expired one"
    assert liveness.renew("running", 2, "n0", 2) is Claim.STALE
    assert liveness.claim("running", 3, "n9", 3).status is Claim.DUPLICATE
    assert liveness.renew("running", 3, "n1", 3) is Claim.OK

    # The dispatched run is overdue at once: its message was lost with the data.
    assert liveness.epoch("waiting") == 1
    assert "waiting" in liveness.overdue_dispatches()
    assert liveness.lease_owner("waiting") == {}

    # A lease that exists already is left alone: owner and deadline unchanged.
    assert liveness.lease_owner("renewed")["node"] == "n3"
    assert liveness.client.zscore(liveness._key("leases"), "renewed") == renewed_deadline
    liveness.restore_run("renewed", 2, "", 2, running=False)
    assert "renewed" not in liveness.overdue_dispatches(), "a held run is not a lost dispatch"


def test_restore_never_lowers_an_epoch(liveness: Liveness) -> None:
    liveness.client.set(liveness._key("epoch", RUN), 5)
    liveness.restore_run(RUN, 4, "n1", 4, running=True)
    assert liveness.epoch(RUN) == 5
    assert liveness.renew(RUN, 4, "n1", 4) is Claim.STALE


def test_owner_renews_after_data_loss_and_older_epochs_stay_fenced(liveness: Liveness) -> None:
    old = claimed(liveness, node="n1", attempt=1)
    new = liveness.fence_for_dispatch(RUN)
    assert liveness.claim(RUN, new, "n2", 2).status is Claim.OK

    lose_data(liveness)
    assert liveness.epoch(RUN) == 0
    assert liveness.renew(RUN, new, "n2", 2) is Claim.OK, "the legitimate owner recreates its lease"
    assert liveness.lease_owner(RUN) == {"node": "n2", "epoch": str(new), "attempt": "2"}
    assert liveness.epoch(RUN) == new
    assert liveness.renew(RUN, old, "n1", 1) is Claim.STALE
    assert liveness.claim(RUN, old, "n1", 1).status is Claim.STALE
    assert liveness.lease_owner(RUN)["node"] == "n2"


def test_a_dispatch_after_data_loss_starts_above_the_epoch_sql_knows(liveness: Liveness) -> None:
    """An ended run's epoch is not rebuilt; resuming it must not reuse an epoch SQL recorded."""
    assert liveness.fence_for_dispatch(RUN, after=4) == 5
    assert liveness.fence_for_dispatch(RUN, after=2) == 6, "a floor never lowers the epoch"
    assert liveness.fence_for_dispatch(RUN) == 7
