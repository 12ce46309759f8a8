"""The executor against the SSIS checkpoint parity table and what goes beyond it."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from checkpoints import (
    CheckpointMismatch,
    CheckpointNotFound,
    InMemoryCheckpointStore,
)
from orchestrator.errors import VariableInvalid
from orchestrator.packages.model import Package
from orchestrator.state.states import RunState, TaskState
from tests.support import tasks as T
from tests.support.executor import Killed, kill_in, package, run, task
from workers.context import TaskContext
from workers.errors import AttemptFenced
from workers.executor import ExecutionHooks, ExecutionOptions, RunRequest, RunResult, execute


@pytest.fixture(autouse=True)
def _log(task_log: Path) -> Path:
    """Every test logs its executions and starts with no task hooks (tests/support/executor.py)."""
    return task_log


CHAIN = (task("a"), task("b", "a"), task("c", "b"), task("d", "c"))


def crash(pkg: Package, store: Any, task_id: str, **kwargs: Any) -> None:
    kill_in(task_id)
    with pytest.raises(Killed):
        run(pkg, store, **kwargs)
    T.HOOKS.pop(task_id)


def starts(entries: list[dict[str, Any]], task_id: str, item: Any = None) -> int:
    return T.count(entries, "start", task_id, item)


# -- the SSIS parity table ---------------------------------------------------------------


def test_usage_never_ignores_an_existing_checkpoint(store: Any, log: Any) -> None:
    pkg = package(*CHAIN)
    crash(pkg, store, "c")
    assert store.load("pkg", "r1") is not None
    result = run(pkg, store, usage="never")
    assert result.succeeded and not result.resumed
    assert starts(log(), "a") == 2 and starts(log(), "b") == 2


def test_usage_if_exists_resumes_when_present(store: Any, log: Any) -> None:
    pkg = package(*CHAIN, checkpoint={"usage": "if_exists"})
    crash(pkg, store, "c")
    result = run(pkg, store)
    assert result.succeeded and result.resumed and result.skipped == ["a", "b"]
    assert [starts(log(), t) for t in "abcd"] == [1, 1, 2, 1]


def test_usage_if_exists_starts_fresh_when_absent(store: Any, log: Any) -> None:
    result = run(package(*CHAIN), store)
    assert result.succeeded and not result.resumed and result.skipped == []
    assert [starts(log(), t) for t in "abcd"] == [1, 1, 1, 1]


def test_usage_always_fails_clearly_when_absent(store: Any, log: Any) -> None:
    pkg = package(*CHAIN, checkpoint={"usage": "always"})
    with pytest.raises(CheckpointNotFound, match="usage is 'always'.*no checkpoint"):
        run(pkg, store)
    assert log() == []


def test_usage_always_resumes_when_present(store: Any, log: Any) -> None:
    pkg = package(*CHAIN, checkpoint={"usage": "always"})
    crash(pkg, store, "b", usage="if_exists")
    assert run(pkg, store).skipped == ["a"]


def test_save_false_writes_nothing(tmp_path: Path, store: Any, log: Any) -> None:
    pkg = package(*CHAIN, checkpoint={"save": False})
    kill_in("c")
    with pytest.raises(Killed):
        execute(RunRequest(pkg, "r1"), ExecutionOptions(store=store))
    assert not (tmp_path / "checkpoints").exists()
    T.HOOKS.clear()
    result = execute(RunRequest(pkg, "r1"), ExecutionOptions(store=store))
    assert result.succeeded and not result.resumed and starts(log(), "a") == 2


def test_changed_package_refuses_the_old_checkpoint(store: Any, log: Any) -> None:
    crash(package(*CHAIN), store, "c")
    changed = package(*CHAIN[:3], task("d", "c", params={"new": 1}))
    with pytest.raises(CheckpointMismatch) as caught:
        run(changed, store)
    stored = store.load("pkg", "r1")
    assert stored.definition_hash[:16] in str(caught.value)
    assert changed.definition_hash[:16] in str(caught.value)


def test_checkpoint_is_deleted_after_success(store: Any, tmp_path: Path) -> None:
    pkg = package(*CHAIN)
    crash(pkg, store, "c")
    result = run(pkg, store)
    assert result.succeeded and not result.checkpoint_kept
    assert store.load("pkg", "r1") is None
    assert {p.name for p in (tmp_path / "checkpoints/pkg/r1").iterdir()} == {"epoch", ".lock"}


def test_checkpoint_kept_after_success_when_asked(store: Any) -> None:
    result = run(package(*CHAIN), store, keep_checkpoint=True)
    assert result.checkpoint_kept and store.load("pkg", "r1") is not None


def test_cancelled_run_keeps_its_checkpoint_and_resumes(store: Any, log: Any) -> None:
    pkg = package(*CHAIN)

    def interrupt(ctx: TaskContext) -> None:
        raise KeyboardInterrupt

    T.HOOKS["c"] = interrupt
    result = run(pkg, store)
    assert result.state is RunState.CANCELLED and result.checkpoint_kept
    assert result.tasks == {
        "a": TaskState.SUCCEEDED,
        "b": TaskState.SUCCEEDED,
        "c": TaskState.CANCELLED,
        "d": TaskState.CANCELLED,
    }
    T.HOOKS.clear()
    resumed = run(pkg, store)
    assert resumed.succeeded and resumed.skipped == ["a", "b"]
    assert [starts(log(), t) for t in "abcd"] == [1, 1, 2, 1]


def test_stop_during_a_task_cancels_and_the_task_is_not_recorded_done(store: Any, log: Any) -> None:
    stop = threading.Event()
    T.HOOKS["b"] = lambda ctx: stop.set()  # b returns normally, but after the stop request
    result = run(package(*CHAIN), store, stop=stop)
    assert result.state is RunState.CANCELLED and result.tasks["b"] is TaskState.CANCELLED
    assert starts(log(), "c") == 0 and store.load("pkg", "r1").tasks.keys() == {"a"}


# -- beyond SSIS ---------------------------------------------------------------------------


def test_foreach_resumes_at_the_first_unfinished_item(store: Any, log: Any) -> None:
    pkg = package(task("load", foreach=["eu", "us", "apac", "latam"]), task("after", "load"))

    def die_on_apac(ctx: TaskContext) -> None:
        if ctx.item == "apac":
            raise Killed

    T.HOOKS["load"] = die_on_apac
    with pytest.raises(Killed):
        run(pkg, store)
    assert set(store.load("pkg", "r1").items["load"]) == {"eu", "us"}
    T.HOOKS.clear()
    result = run(pkg, store)
    assert result.succeeded
    entries = log()
    assert [starts(entries, "load", i) for i in ("eu", "us", "apac", "latam")] == [1, 1, 2, 1]
    assert set(result.outputs["load"]) == {"eu", "us", "apac", "latam"}


def test_foreach_over_an_upstream_output(store: Any, log: Any) -> None:
    T.HOOKS["make"] = lambda ctx: None
    pkg = package(
        {"id": "make", "python": "tests.support.tasks:units", "params": {"units": 0}},
        task("each", "make", foreach="{{ outputs.make.task }}"),
    )
    result = run(pkg, store)
    assert result.state is RunState.FAILED
    assert "not a list" in (result.error or "")


def test_task_resumes_from_its_last_progress_save(store: Any, log: Any) -> None:
    pkg = package(task("work", fn="units", params={"units": 10}), task("after", "work"))

    def die_at_unit_6(ctx: TaskContext) -> None:
        if (ctx.progress.get() or {"done": 0})["done"] == 6:
            raise Killed

    T.HOOKS["work:unit"] = die_at_unit_6
    with pytest.raises(Killed):
        run(pkg, store)
    assert store.load("pkg", "r1").progress == {"work": {"done": 6}}
    T.HOOKS.clear()
    result = run(pkg, store)
    assert result.succeeded and result.outputs["work"]["resumed_at"] == 6
    units = [e["unit"] for e in log() if e["event"] == "unit"]
    assert units == list(range(10))  # every unit exactly once across both attempts


def test_failed_branch_does_not_lose_the_other_branch(store: Any, log: Any) -> None:
    pkg = package(
        task("a"),
        task("bad", "a", params={"fail": True}),
        task("bad_child", "bad"),
        task("good", "a"),
        task("good_child", "good"),
    )
    result = run(pkg, store)
    assert result.state is RunState.FAILED
    assert "task 'bad' failed: RuntimeError: bad failed on purpose" in (result.error or "")
    assert result.tasks["good_child"] is TaskState.SUCCEEDED
    assert result.tasks["bad_child"] is TaskState.UPSTREAM_FAILED
    assert set(store.load("pkg", "r1").tasks) == {"a", "good", "good_child"}


def test_failed_branch_resume_runs_only_the_failed_work(store: Any, log: Any) -> None:
    def fail_once(ctx: TaskContext) -> None:
        if T.count(T.read_log(T.log_path(ctx)), "start", "bad") == 1:
            raise RuntimeError("first run of bad fails")

    T.HOOKS["bad"] = fail_once
    pkg = package(
        task("a"),
        task("bad", "a"),
        task("bad_child", "bad"),
        task("good", "a"),
        task("good_child", "good"),
    )
    assert run(pkg, store).state is RunState.FAILED
    result = run(pkg, store)
    assert result.succeeded and sorted(result.skipped) == ["a", "good", "good_child"]
    entries = log()
    assert [starts(entries, t) for t in ("a", "good", "good_child", "bad", "bad_child")] == [
        1,
        1,
        1,
        2,
        1,
    ]


def test_sensitive_variables_never_reach_the_checkpoint_in_clear(store: Any, tmp_path: Path) -> None:
    secret = "s3cr3t-Pa55word"
    pkg = package(
        task("a"),
        task("b", "a"),
        variables={
            "password": {"type": "str", "sensitive": True},
            "counter": {"type": "int", "default": 0},
        },
    )
    seen: list[str] = []
    T.HOOKS["b"] = lambda ctx: seen.append(ctx.vars["password"])
    crash(pkg, store, "b", variables={"password": secret})
    files = [f for f in (tmp_path / "checkpoints").rglob("*") if f.is_file()]  # snapshots and journals
    assert files and all(secret.encode() not in f.read_bytes() for f in files)
    assert "password" not in store.load("pkg", "r1").variables
    # without a key the secret is not stored: a resume must be given it again
    with pytest.raises(VariableInvalid, match="password"):
        run(pkg, store)
    T.HOOKS["b"] = lambda ctx: seen.append(ctx.vars["password"])
    assert run(pkg, store, variables={"password": secret}).succeeded
    assert seen == [secret]


def test_sensitive_variables_are_encrypted_with_a_key(store: Any, tmp_path: Path) -> None:
    secret = "another-s3cret"
    pkg = package(task("a"), task("b", "a"), variables={"password": {"sensitive": True}})
    crash(pkg, store, "b", variables={"password": secret}, secret_key="k" * 20)
    stored = store.load("pkg", "r1")
    assert set(stored.secrets) == {"password"} and secret not in stored.secrets["password"]
    files = [f for f in (tmp_path / "checkpoints").rglob("*") if f.is_file()]
    assert files and all(secret.encode() not in f.read_bytes() for f in files)
    seen: list[str] = []
    T.HOOKS["b"] = lambda ctx: seen.append(ctx.vars["password"])
    result = run(pkg, store, secret_key="k" * 20)  # restored from the checkpoint, not given again
    assert result.succeeded and seen == [secret] and result.variables["password"] == "***"


def test_sensitive_values_are_masked_in_errors(store: Any) -> None:
    secret = "masked-value-123"

    def leak(ctx: TaskContext) -> None:
        raise RuntimeError(f"cannot log in with {ctx.vars['password']}")

    T.HOOKS["a"] = leak
    pkg = package(task("a"), variables={"password": {"sensitive": True}})
    result = run(pkg, store, variables={"password": secret})
    assert result.error is not None and secret not in result.error and "***" in result.error


# -- retries, timeouts, failure policies -------------------------------------------------------


def test_retries_with_delay_then_success(store: Any, log: Any) -> None:
    pkg = package(task("flaky", fn="fail_times", params={"times": 2}, retries=2, retry_delay=0.05))
    result = run(pkg, store)
    assert result.succeeded and result.outputs["flaky"] == {"tries": 3}


def test_retries_exhausted_fail_the_package(store: Any, log: Any) -> None:
    pkg = package(task("flaky", fn="fail_times", params={"times": 5}, retries=1), task("next", "flaky"))
    result = run(pkg, store)
    assert result.state is RunState.FAILED and "transient failure 2" in (result.error or "")
    assert starts(log(), "flaky") == 2 and starts(log(), "next") == 0


def test_python_timeout_fails_the_task_and_cancels_its_context(store: Any, log: Any) -> None:
    pkg = package(task("slow", fn="sleepy", params={"seconds": 30}, timeout=0.2))
    result = run(pkg, store)
    assert result.state is RunState.FAILED and "timed out after 0.2 s" in (result.error or "")
    ends = [e for e in log() if e["event"] == "end"]
    assert ends and ends[0]["cancelled"] is True  # the abandoned body saw ctx.cancelled


def test_shell_task_timeout_kills_the_command(store: Any, tmp_path: Path) -> None:
    marker = tmp_path / "never"
    pkg = package({"id": "sh", "shell": f"sleep 30 && touch {marker}", "timeout": 0.3})
    result = run(pkg, store)
    assert result.state is RunState.FAILED and "timed out" in (result.error or "")
    assert not marker.exists()


def test_shell_failure_reports_exit_status_and_output(store: Any) -> None:
    pkg = package({"id": "sh", "shell": "echo boom >&2; exit 3"})
    result = run(pkg, store)
    assert (
        "exit" in (result.error or "")
        and "status 3" in (result.error or "")
        and "boom" in (result.error or "")
    )


def test_shell_values_are_quoted(store: Any, tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    pkg = package(
        {"id": "sh", "shell": "printf %s {{ vars.text }} > " + str(target)},
        variables={"text": {"default": "a; touch injected"}},
    )
    assert run(pkg, store).succeeded
    assert target.read_text() == "a; touch injected" and not Path("injected").exists()


def test_non_fatal_failure_is_recorded_and_the_package_goes_on(store: Any, log: Any) -> None:
    pkg = package(
        task("a"),
        task("optional", "a", params={"fail": True}, fail_package_on_failure=False),
        task("z", "optional"),
    )
    result = run(pkg, store)
    assert result.succeeded and result.tasks["optional"] is TaskState.FAILED
    # SSIS: fail_package_on_failure decides whether the package fails, never whether a success
    # constraint is met: z depends on optional's success, so it is skipped (issue 13, point 3).
    assert result.tasks["z"] is TaskState.SKIPPED


def test_always_rerun_runs_again_on_restart(store: Any, log: Any) -> None:
    pkg = package(task("setup", always_rerun=True), task("b", "setup"), task("c", "b"))
    crash(pkg, store, "c")
    result = run(pkg, store)
    assert result.succeeded and result.skipped == ["b"]
    assert [starts(log(), t) for t in ("setup", "b", "c")] == [2, 1, 2]


def test_params_are_templated_from_variables_and_outputs(store: Any) -> None:
    seen: dict[str, Any] = {}
    T.HOOKS["b"] = lambda ctx: seen.update(ctx.params)
    pkg = package(
        task("a"),
        task(
            "b",
            "a",
            params={
                "n": "{{ vars.counter }}",
                "s": "from {{ outputs.a.task }} #{{ vars.counter }}",
            },
        ),
        variables={"counter": {"type": "int", "default": 7}},
    )
    assert run(pkg, store).succeeded
    assert seen == {"n": 7, "s": "from a #7"}


def test_variables_flow_between_tasks_and_survive_a_restart(store: Any) -> None:
    variables = {"counter": {"type": "int", "default": 0}}
    pkg = package(
        task("a", params={"add": 5}),
        task("b", "a", params={"add": 2}),
        task("c", "b"),
        variables=variables,
    )
    crash(pkg, store, "c")
    assert store.load("pkg", "r1").variables == {"counter": 7}
    result = run(pkg, store)
    assert result.variables["counter"] == 7  # restored, not recomputed


def test_progress_save_commits_variables(store: Any) -> None:
    pkg = package(
        task("w", fn="units", params={"units": 3}),
        variables={"counter": {"type": "int", "default": 0}},
    )

    def count_unit(ctx: TaskContext) -> None:
        ctx.vars["counter"] += 1
        if ctx.vars["counter"] == 3:
            raise Killed

    T.HOOKS["w:unit"] = count_unit
    with pytest.raises(Killed):
        run(pkg, store)
    assert store.load("pkg", "r1").variables == {"counter": 2}


def test_assigning_a_wrong_type_fails_the_task(store: Any) -> None:
    def bad(ctx: TaskContext) -> None:
        ctx.vars["counter"] = "many"

    T.HOOKS["a"] = bad
    result = run(package(task("a"), variables={"counter": {"type": "int", "default": 0}}), store)
    assert result.state is RunState.FAILED and "not of type int" in (result.error or "")


@pytest.mark.parametrize(
    ("returned", "message"),
    [({"x": object()}, "not JSON"), ("x" * (1024 * 1024 + 10), "over the limit")],
)
def test_bad_outputs_fail_the_task(store: Any, returned: Any, message: str) -> None:
    pkg = package({"id": "a", "python": "tests.unit.test_executor:return_value", "params": {}})
    RETURNS["a"] = returned
    result = run(pkg, store)
    assert result.state is RunState.FAILED and message in (result.error or "")


RETURNS: dict[str, Any] = {}


def return_value(ctx: TaskContext) -> Any:
    return RETURNS[ctx.task_id]


def test_import_errors_are_task_failures(store: Any) -> None:
    result = run(package({"id": "a", "python": "no_such_module_xyz:run"}), store)
    assert result.state is RunState.FAILED and "cannot import 'no_such_module_xyz'" in (result.error or "")


def test_modules_outside_the_allowed_roots_are_refused(store: Any, log: Any) -> None:
    result = run(package(task("a")), store, allowed_modules=("examples",))
    assert result.state is RunState.FAILED and "outside ORCHESTRATOR_TASK_MODULES" in (result.error or "")
    assert log() == []


def test_shell_tasks_refused_when_disabled(store: Any, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    result = run(package({"id": "sh", "shell": f"touch {marker}"}), store, allow_shell=False)
    assert result.state is RunState.FAILED and "ALLOW_SHELL" in (result.error or "")
    assert not marker.exists()


# -- fencing -----------------------------------------------------------------------------------


def test_fenced_attempt_stops_and_writes_nothing_more(store: Any, log: Any) -> None:
    pkg = package(*CHAIN)
    T.HOOKS["b"] = lambda ctx: store.fence("pkg", "r1", ctx.epoch + 1)
    with pytest.raises(AttemptFenced):
        run(pkg, store)
    assert starts(log(), "c") == 0
    assert set(store.load("pkg", "r1").tasks) == {"a"}  # b's completion was refused


def test_fenced_progress_save_cannot_be_swallowed_by_the_task(store: Any, log: Any) -> None:
    pkg = package(task("w", fn="units", params={"units": 5}), task("after", "w"))

    def fence_and_swallow(ctx: TaskContext) -> None:
        store.fence("pkg", "r1", ctx.epoch + 1)
        try:
            ctx.progress.save({"done": 99})
        except Exception:
            pass

    T.HOOKS["w:unit"] = fence_and_swallow
    with pytest.raises(AttemptFenced):
        run(pkg, store)
    assert starts(log(), "after") == 0


def test_guard_is_checked_before_each_task(store: Any, log: Any) -> None:
    lost = threading.Event()
    T.HOOKS["a"] = lambda ctx: lost.set()

    def guard() -> None:
        if lost.is_set():
            raise AttemptFenced("lease lost")

    with pytest.raises(AttemptFenced, match="lease lost"):
        run(package(*CHAIN), store, guard=guard)
    assert starts(log(), "b") == 0


def test_checkpoint_write_failure_fails_the_run_clearly(tmp_path: Path) -> None:
    class Broken(InMemoryCheckpointStore):
        """Writes the claiming snapshot, then fails every record of a finished task."""

        def open(self, checkpoint: Any) -> Any:
            writer = super().open(checkpoint)
            append = writer.append

            def full_disk(changes: Any) -> int:
                if any(change.tasks for change in changes):
                    raise OSError(28, "No space left on device")
                return append(changes)

            writer.append = full_disk  # type: ignore[method-assign]
            return writer

    result = run(package(*CHAIN), Broken())
    assert result.state is RunState.FAILED
    assert "checkpoint write failed" in (result.error or "") and "No space left" in (result.error or "")


def test_hooks_see_every_event_in_order(store: Any) -> None:
    events: list[tuple[Any, ...]] = []

    class Recorder(ExecutionHooks):
        def run_started(self, run_id: str, resumed: bool, skipped: list[str]) -> None:
            events.append(("run_started", resumed, tuple(skipped)))

        def task_finished(
            self, task_id: str, item: Any, state: TaskState, seconds: float, error: Any
        ) -> None:
            events.append(("task", task_id, state.value))

        def checkpoint_saved(self, size: int, seconds: float, reason: str) -> None:
            events.append(("saved", reason))

        def run_finished(self, result: RunResult) -> None:
            events.append(("finished", result.state.value))

    run(package(task("a"), task("b", "a")), store, hooks=Recorder())
    assert events == [
        ("saved", "start"),
        ("run_started", False, ()),
        ("task", "a", "succeeded"),
        ("saved", "task"),
        ("task", "b", "succeeded"),
        ("saved", "task"),
        ("finished", "succeeded"),
    ]


def test_required_variables_must_be_given(store: Any) -> None:
    pkg = package(task("a"), variables={"date": {"type": "str"}})
    with pytest.raises(VariableInvalid, match="date"):
        run(pkg, store)
