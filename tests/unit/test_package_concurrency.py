"""The package keys of parallel units: max_concurrency, concurrency, writes (model, builder, hash)."""

from __future__ import annotations

import hashlib
import json

import pytest

from orchestrator.errors import PackageInvalid
from orchestrator.packages.builder import PackageBuilder
from orchestrator.packages.model import DEFAULT_MAX_CONCURRENCY
from orchestrator.packages.validation import parse_package

BASE = {
    "name": "p",
    "variables": {"x": {"type": "int", "default": 0}},
    "tasks": [
        {"id": "a", "python": "m:f"},
        {"id": "b", "python": "m:f", "foreach": [1, 2], "depends_on": ["a"]},
        {"id": "c", "shell": "echo hi"},
    ],
}


def test_defaults() -> None:
    package = parse_package(BASE)
    assert package.max_concurrency == DEFAULT_MAX_CONCURRENCY == 4
    assert [(t.concurrency, t.writes) for t in package.tasks] == [(1, None)] * 3


def test_a_package_not_using_the_new_keys_keeps_its_definition_hash() -> None:
    """The hash the previous version computed: its format-1 checkpoints must still match."""
    previous = parse_package(BASE).model_dump(mode="json", exclude={"description": True})
    del previous["max_concurrency"], previous["connections"]  # connections, sql, copy: issue 14's keys
    del previous["on_error"], previous["on_success"], previous["on_finish"]  # issue 13's
    for task in previous["tasks"]:
        del task["concurrency"], task["writes"], task["description"], task["sql"], task["copy"]
        del task["depends_on_mode"], task["when"]
    del previous["variables"]["x"]["description"]
    expected = hashlib.sha256(json.dumps(previous, sort_keys=True).encode()).hexdigest()
    assert parse_package(BASE).definition_hash == expected
    assert parse_package({**BASE, "max_concurrency": 4}).definition_hash == expected  # the default
    assert parse_package({**BASE, "max_concurrency": 8}).definition_hash != expected


def test_the_builder_sets_the_new_keys() -> None:
    package = (
        PackageBuilder("p")
        .max_concurrency(8)
        .variable("rows", type="int", default=0)
        .python("list", "m:f")
        .python("load", "m:g", foreach=["a", "b"], concurrency=2, depends_on=["list"])
        .python("count", "m:h", writes=("rows",), depends_on=["load"])
        .build()
    )
    assert package.max_concurrency == 8
    assert package.task("load").concurrency == 2 and package.task("count").writes == ["rows"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"max_concurrency": 0}, "max_concurrency: 0 should be greater than or equal to 1"),
        ({"max_concurrency": True}, "max_concurrency: expected an integer"),
        ({"tasks": [{"id": "a", "python": "m:f", "concurrency": 2}]}, "it needs 'foreach'"),
        ({"tasks": [{"id": "a", "shell": "x", "writes": ["x"]}]}, "a shell task cannot assign variables"),
        ({"tasks": [{"id": "a", "python": "m:f", "writes": ["x", "x"]}]}, "'writes' names a variable twice"),
        ({"tasks": [{"id": "a", "python": "m:f", "writes": ["1x"]}]}, "a variable name is"),
    ],
)
def test_bad_values_are_reported_with_their_path(change: dict[str, object], message: str) -> None:
    with pytest.raises(PackageInvalid, match=message):
        parse_package({**BASE, **change})


def test_may_overlap_follows_the_graph_and_the_limits() -> None:
    package = parse_package(
        {
            **BASE,
            "tasks": [
                {"id": "a", "python": "m:f"},
                {"id": "b", "python": "m:f", "depends_on": ["a"]},
                {"id": "c", "python": "m:f"},
                {"id": "d", "python": "m:f", "foreach": [1, 2], "concurrency": 2, "depends_on": ["b"]},
                {"id": "e", "python": "m:f", "foreach": [1, 2], "depends_on": ["d"]},
            ],
        }
    )
    assert not package.may_overlap("a", "b") and not package.may_overlap("a", "d")
    assert package.may_overlap("a", "c") and package.may_overlap("c", "e")
    assert package.may_overlap("d", "d") and not package.may_overlap("e", "e")
    sequential = package.model_copy(update={"max_concurrency": 1})
    assert not sequential.may_overlap("a", "c") and not sequential.may_overlap("d", "d")
