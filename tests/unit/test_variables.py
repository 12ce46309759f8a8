"""Typed variables from ``--var``, ``ORCHESTRATOR_VAR_<NAME>`` and defaults."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.errors import VariableInvalid
from orchestrator.packages.model import Package
from orchestrator.packages.validation import parse_package
from orchestrator.packages.variables import (
    MAX_VARIABLE_BYTES,
    missing_required,
    parse_assignments,
    resolve,
)

ENV_PREFIX = "ORCHESTRATOR_VAR_"  # a contract (design.md): spelled out, not imported


@pytest.fixture
def package() -> Package:
    return parse_package(
        {
            "name": "typed",
            "variables": {
                "count": {"type": "int", "default": 1},
                "ratio": {"type": "float", "default": 0.5},
                "flag": {"type": "bool", "default": False},
                "regions": {"type": "list", "default": ["eu"]},
                "options": {"type": "dict", "default": {}},
                "label": {"type": "str", "default": "none"},
                "batch_date": {"type": "str"},
                "limit": {"type": "int"},
                "password": {"type": "str", "sensitive": True},
                "pin": {"type": "int", "sensitive": True},
            },
            "tasks": [{"id": "t", "shell": "true"}],
        }
    )


def problems(package: Package, given: dict[str, Any], environ: dict[str, str] | None = None) -> str:
    with pytest.raises(VariableInvalid) as caught:
        resolve(package, given, environ=environ or {})
    return str(caught.value)


# --- parse_assignments -------------------------------------------------------------------


def test_assignments_split_at_the_first_equals_sign() -> None:
    assert parse_assignments(["a=1", "url=http://x?y=z", "empty="]) == {
        "a": "1",
        "url": "http://x?y=z",
        "empty": "",
    }


@pytest.mark.parametrize("pair", ["novalue", "=value", ""])
def test_malformed_assignment_is_refused(pair: str) -> None:
    with pytest.raises(VariableInvalid, match="expected NAME=VALUE"):
        parse_assignments(["ok=1", pair])


# --- conversion ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("count", "42", 42),
        ("count", "-7", -7),
        ("ratio", "2.5", 2.5),
        ("ratio", "3", 3.0),
        ("flag", "true", True),
        ("flag", "YES", True),
        ("flag", " on ", True),
        ("flag", "1", True),
        ("flag", "false", False),
        ("flag", "No", False),
        ("flag", "off", False),
        ("flag", "0", False),
        ("regions", '["eu", "us"]', ["eu", "us"]),
        ("regions", "[]", []),
        ("options", '{"depth": 2, "tags": ["a"]}', {"depth": 2, "tags": ["a"]}),
        ("label", "007", "007"),  # a str stays text, not a number
        ("label", '["not", "a", "list"]', '["not", "a", "list"]'),
    ],
)
def test_command_line_strings_are_converted(package: Package, name: str, text: str, expected: Any) -> None:
    value = resolve(package, {name: text}, environ={})[name]
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("count", 5, 5),
        ("ratio", 2, 2.0),
        ("regions", ["x"], ["x"]),
        ("options", {"a": 1}, {"a": 1}),
    ],
)
def test_json_values_are_checked_not_parsed(package: Package, name: str, value: Any, expected: Any) -> None:
    result = resolve(package, {name: value}, environ={})[name]
    assert result == expected and type(result) is type(expected)


def test_defaults_apply_and_required_ones_stay_missing(package: Package) -> None:
    values = resolve(package, {}, environ={})
    assert values == {
        "count": 1,
        "ratio": 0.5,
        "flag": False,
        "regions": ["eu"],
        "options": {},
        "label": "none",
    }
    assert type(values["ratio"]) is float


def test_every_problem_is_reported_at_once(package: Package) -> None:
    message = problems(
        package,
        {
            "conut": "3",
            "zzz_unknown": "1",
            "count": "three",
            "ratio": "half",
            "flag": "maybe",
            "regions": "[eu",
            "options": "[1, 2]",
            "limit": True,
        },
    )
    for part in [
        "unknown variable 'conut' (did you mean 'count'?)",
        "unknown variable 'zzz_unknown';",  # nothing close: no suggestion
        "variable 'count': cannot read 'three' as int",
        "variable 'ratio': cannot read 'half' as float",
        "variable 'flag': cannot read 'maybe' as bool",
        "variable 'regions': cannot read '[eu' as list",
        "variable 'options': '[1, 2]' is not of type dict",
        "variable 'limit': True is not of type int",
    ]:
        assert part in message, part
    assert message.count("; ") == 7


def test_sensitive_values_never_appear_in_messages(package: Package) -> None:
    message = problems(package, {"pin": "hunter2", "password": ["hunter3"]})
    assert "variable 'pin': cannot read the value as int" in message
    assert "variable 'password': the value is not of type str" in message
    assert "hunter" not in message


# --- environment -------------------------------------------------------------------------------


def test_environment_supplies_values(package: Package) -> None:
    environ = {f"{ENV_PREFIX}count": "9", f"{ENV_PREFIX}batch_date": "2026-11-24"}
    values = resolve(package, {}, environ=environ)
    assert values["count"] == 9 and values["batch_date"] == "2026-11-24"


def test_given_values_win_over_the_environment(package: Package) -> None:
    values = resolve(package, {"count": "2"}, environ={f"{ENV_PREFIX}count": "9"})
    assert values["count"] == 2


def test_environment_problems_are_reported(package: Package) -> None:
    message = problems(package, {}, environ={f"{ENV_PREFIX}count": "nine"})
    assert "variable 'count': cannot read 'nine' as int" in message


def test_only_the_given_environ_is_read(package: Package, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"{ENV_PREFIX}count", "9")
    assert resolve(package, {}, environ={})["count"] == 1
    assert resolve(package, {})["count"] == 9  # without environ=: the process environment


def test_other_environment_variables_are_ignored(package: Package) -> None:
    environ = {"count": "9", f"{ENV_PREFIX}COUNT_X": "1", f"{ENV_PREFIX}nothing": "x"}
    assert resolve(package, {}, environ=environ)["count"] == 1


# --- size limit --------------------------------------------------------------------------------


def test_value_up_to_the_limit_is_accepted(package: Package) -> None:
    text = "a" * (MAX_VARIABLE_BYTES - 2)  # two more bytes for the JSON quotes
    assert resolve(package, {"label": text}, environ={})["label"] == text


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("label", "a" * (MAX_VARIABLE_BYTES - 1)),
        ("label", "é" * (MAX_VARIABLE_BYTES // 2)),  # counted in UTF-8 bytes, not characters
        ("regions", ["x" * 1000] * 70),
        ("regions", "[" + ", ".join(['"' + "x" * 1000 + '"'] * 70) + "]"),
        ("count", "1" * (MAX_VARIABLE_BYTES + 1)),
    ],
)
def test_oversize_value_is_refused_with_the_limit(package: Package, name: str, value: Any) -> None:
    message = problems(package, {name: value})
    assert f"variable {name!r} is " in message
    assert f"over the limit of {MAX_VARIABLE_BYTES} bytes" in message


def test_oversize_sensitive_value_is_not_shown(package: Package) -> None:
    message = problems(package, {"password": "s" * (MAX_VARIABLE_BYTES + 10)})
    assert "over the limit" in message and "sss" not in message


# --- required ------------------------------------------------------------------------------------


def test_missing_required_names_all_missing(package: Package) -> None:
    values = resolve(package, {"limit": "3"}, environ={})
    with pytest.raises(VariableInvalid) as caught:
        missing_required(package, values)
    message = str(caught.value)
    assert message.startswith("required variable(s) without a value: batch_date, password, pin")
    assert "limit" not in message
    assert f"{ENV_PREFIX}NAME" in message


def test_nothing_missing_is_fine(package: Package) -> None:
    given = {"batch_date": "2026-11-24", "limit": "3", "password": "x", "pin": "1234"}
    values = resolve(package, given, environ={})
    missing_required(package, values)
    assert values["pin"] == 1234
