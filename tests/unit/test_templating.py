"""``{{ vars.x }}`` / ``{{ outputs.task.key }}`` templates: lookups only, typed, quotable."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.packages.templating import Reference, TemplateError, parse_expression, references, render

VARS: dict[str, Any] = {
    "rows": 42,
    "ratio": 0.5,
    "flag": False,
    "name": "eu-west",
    "items": ["eu", "us"],
    "config": {"depth": 3, "mode": "fast"},
    "empty": "",
}
OUTPUTS: dict[str, Any] = {"extract": {"rows": 7, "files": ["a.csv"], "meta": {"ok": True}}}


# --- whole expressions keep their type ----------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ vars.rows }}", 42),
        ("{{vars.rows}}", 42),
        ("{{   vars.ratio   }}", 0.5),
        ("{{ vars.flag }}", False),
        ("{{ vars.items }}", ["eu", "us"]),
        ("{{ vars.config }}", {"depth": 3, "mode": "fast"}),
        ("{{ vars.config.depth }}", 3),
        ("{{ outputs.extract.rows }}", 7),
        ("{{ outputs.extract.meta.ok }}", True),
        ("{{ outputs.extract }}", OUTPUTS["extract"]),
    ],
)
def test_whole_expression_keeps_the_type(template: str, expected: Any) -> None:
    result = render(template, VARS, OUTPUTS)
    assert result == expected and type(result) is type(expected)


# --- embedded expressions are formatted -------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("loaded {{ vars.rows }} rows", "loaded 42 rows"),
        ("region={{ vars.name }}", "region=eu-west"),  # a string as-is, not JSON-quoted
        ("flag={{ vars.flag }}", "flag=false"),  # everything else as JSON
        ("{{ vars.ratio }}x", "0.5x"),
        ("items={{ vars.items }}", 'items=["eu", "us"]'),
        ("cfg={{ vars.config }}", 'cfg={"depth": 3, "mode": "fast"}'),
        ("{{ vars.rows }}{{ vars.name }}", "42eu-west"),  # two adjacent expressions
        ("{{ vars.rows }} {{ vars.rows }}", "42 42"),
        ("[{{ vars.empty }}]", "[]"),
        ("{{ outputs.extract.rows }}/{{ vars.rows }}", "7/42"),
    ],
)
def test_embedded_expressions_are_formatted(template: str, expected: str) -> None:
    assert render(template, VARS, OUTPUTS) == expected


def test_render_walks_nested_params_and_leaves_other_values_alone() -> None:
    params = {
        "path": "data/{{ vars.name }}.csv",
        "limit": "{{ vars.rows }}",
        "nested": {"list": ["{{ vars.flag }}", 3, None, "plain"]},
        "tuple": ("{{ outputs.extract.rows }}",),
        "number": 1.5,
    }
    assert render(params, VARS, OUTPUTS) == {
        "path": "data/eu-west.csv",
        "limit": 42,
        "nested": {"list": [False, 3, None, "plain"]},
        "tuple": [7],
        "number": 1.5,
    }


def test_text_without_expressions_is_returned_unchanged() -> None:
    assert render("no {braces} here", {}, {}) == "no {braces} here"


def test_render_does_not_modify_its_input() -> None:
    params = {"a": ["{{ vars.rows }}"]}
    render(params, VARS, OUTPUTS)
    assert params == {"a": ["{{ vars.rows }}"]}


def test_substituted_text_is_not_expanded_again() -> None:
    # A value that looks like a template stays text: no second round, no lookups from data.
    assert render("x={{ vars.evil }}", {"evil": "{{ vars.secret }}"}, {}) == "x={{ vars.secret }}"


# --- shell quoting -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "x; rm -rf /",
        "$(touch pwned)",
        "`touch pwned`",
        "a && touch pwned",
        'it\'s "quoted"',
        "line\nbreak",
        "*",
        "",
        "--flag",
    ],
)
def test_quoted_value_stays_one_argument(value: str) -> None:
    command = render("printf '%s|' {{ vars.v }}", {"v": value}, {}, quote=shlex.quote)
    assert shlex.split(command) == ["printf", "%s|", value]


def test_quoted_injection_does_not_run_in_a_real_shell(tmp_path: Path) -> None:
    value = "x; touch pwned; $(touch pwned2) `touch pwned3`"
    command = render("printf '%s' {{ vars.v }}", {"v": value}, {}, quote=shlex.quote)
    done = subprocess.run(["sh", "-c", command], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert done.stdout == value
    assert list(tmp_path.iterdir()) == []


def test_unquoted_text_would_split_which_is_why_quote_exists() -> None:
    command = render("echo {{ vars.v }}", {"v": "x; rm -rf /"}, {})
    assert shlex.split(command) != ["echo", "x; rm -rf /"]


def test_quote_applies_to_whole_expressions_and_non_strings() -> None:
    assert render("{{ vars.v }}", {"v": "a b"}, {}, quote=shlex.quote) == "'a b'"
    assert render("n={{ vars.items }}", VARS, {}, quote=shlex.quote) == 'n=\'["eu", "us"]\''


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(exclude_characters="\x00"), max_size=30))
def test_any_quoted_text_round_trips_through_shell_splitting(value: str) -> None:
    command = render("cmd {{ vars.v }} --end", {"v": value}, {}, quote=shlex.quote)
    assert shlex.split(command) == ["cmd", value, "--end"]


# --- unknown lookups -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ vars.missing }}", "{{ vars.missing }}: vars has no 'missing'"),
        ("x {{ vars.config.color }}", "{{ vars.config.color }}: vars.config has no 'color'"),
        ("{{ vars.rows.digits }}", "{{ vars.rows.digits }}: vars.rows has no 'digits'"),
        ("{{ outputs.load.rows }}", "{{ outputs.load.rows }}: outputs has no 'load'"),
        (
            "{{ outputs.extract.meta.nope }}",
            "{{ outputs.extract.meta.nope }}: outputs.extract.meta has no 'nope'",
        ),
    ],
)
def test_unknown_lookup_names_the_path(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        render(template, VARS, OUTPUTS)
    assert str(caught.value) == message


def test_unknown_lookup_inside_params_is_raised() -> None:
    with pytest.raises(TemplateError, match="vars has no 'nope'"):
        render({"a": {"b": ["ok", "{{ vars.nope }}"]}}, VARS, OUTPUTS)


# --- only lookups ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression",
    [
        "vars.rows | int",
        "vars.rows + 1",
        "1 + 1",
        "vars",
        "outputs",
        "",
        "vars.items[0]",
        "vars.name.upper()",
        "os.system('id')",
        "settings.secret_key",
        "vars..rows",
        "vars.rows.",
    ],
)
def test_anything_but_a_lookup_is_refused(expression: str) -> None:
    message = f"unsupported template expression {{{{ {expression} }}}}"
    with pytest.raises(TemplateError, match=r"^unsupported template expression"):
        render("{{ " + expression + " }}", VARS, OUTPUTS)
    with pytest.raises(TemplateError) as caught:
        references("echo {{ " + expression + " }}")
    assert str(caught.value).startswith(message)


def test_parse_expression() -> None:
    assert parse_expression("outputs.extract-1.files") == Reference("outputs", ("extract-1", "files"))
    assert str(parse_expression("vars.batch_date")) == "vars.batch_date"


# --- references ------------------------------------------------------------------------------


def test_references_finds_nested_ones_in_order() -> None:
    value = {
        "a": "{{ vars.x }}",
        "b": ["plain", {"c": "pre {{ outputs.t.k }} mid {{vars.y}} post"}],
        "d": ("{{ outputs.u }}",),
        "e": 5,
        "f": None,
    }
    assert references(value) == [
        Reference("vars", ("x",)),
        Reference("outputs", ("t", "k")),
        Reference("vars", ("y",)),
        Reference("outputs", ("u",)),
    ]


def test_references_of_plain_values_is_empty() -> None:
    assert references({"a": "no template", "b": [1, 2.5, True, None]}) == []
    assert references(None) == []


def test_references_ignores_mapping_keys() -> None:
    # Keys are never rendered either, so a key is not a reference.
    assert references({"{{ vars.x }}": 1}) == []
