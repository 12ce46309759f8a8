"""Loading packages from YAML, JSON and Python, and the definition hash."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.errors import Issue, PackageInvalid
from orchestrator.packages.builder import PackageBuilder
from orchestrator.packages.kinds import CheckpointUsage, VariableType
from orchestrator.packages.model import Package
from orchestrator.packages.validation import load_package, parse_package
from tests.support.processes import ROOT

# The example of design.md, "Package format", verbatim.
DESIGN_EXAMPLE = """\
name: orders_nightly              # [a-z0-9][a-z0-9_-]{0,63}
description: Nightly orders load
checkpoint:
  usage: if_exists                # never | if_exists | always   (SSIS CheckpointUsage)
  save: true                      # SSIS SaveCheckpoints
max_restarts: 5                   # node-loss resubmissions before the run fails
variables:
  batch_date: {type: str, default: "2026-11-24"}
  rows_loaded: {type: int, default: 0}
  source_password: {type: str, sensitive: true}   # never written to a checkpoint or log
tasks:
  - id: extract                   # unique, [a-z0-9_-]
    python: examples.orders:extract          # module:function, imported on the worker
    params: {path: data/orders.csv}
    retries: 2                    # task-level retries (application errors)
    retry_delay: 1.0
    timeout: 600
  - id: load_region
    python: examples.orders:load_region
    foreach: [eu, us, apac]       # one checkpoint entry per finished item
    depends_on: [extract]
  - id: report
    shell: "echo loaded {{ vars.rows_loaded }}"
    depends_on: [load_region]
    fail_package_on_failure: false   # SSIS semantics: failure is recorded, the package goes on
    always_rerun: false              # true: run again on restart even if it completed
"""


def example_data() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(DESIGN_EXAMPLE)
    return data


def example_builder() -> PackageBuilder:
    return (
        PackageBuilder("orders_nightly", description="Nightly orders load")
        .checkpoint(usage="if_exists", save=True)
        .max_restarts(5)
        .variable("batch_date", type="str", default="2026-11-24")
        .variable("rows_loaded", type="int", default=0)
        .variable("source_password", type="str", sensitive=True)
        .python(
            "extract",
            "examples.orders:extract",
            params={"path": "data/orders.csv"},
            retries=2,
            retry_delay=1.0,
            timeout=600,
        )
        .python(
            "load_region",
            "examples.orders:load_region",
            foreach=["eu", "us", "apac"],
            depends_on=["extract"],
        )
        .shell(
            "report",
            "echo loaded {{ vars.rows_loaded }}",
            depends_on=["load_region"],
            fail_package_on_failure=False,
            always_rerun=False,
        )
    )


def issues_of(action: Callable[[], object]) -> list[Issue]:
    with pytest.raises(PackageInvalid) as caught:
        action()
    assert caught.value.issues, "PackageInvalid without issues"
    return caught.value.issues


@pytest.fixture
def yaml_file(tmp_path: Path) -> Path:
    path = tmp_path / "orders_nightly.yaml"
    path.write_text(DESIGN_EXAMPLE, encoding="utf-8")
    return path


# --- loading ---------------------------------------------------------------------------


def test_design_example_loads_from_yaml(yaml_file: Path) -> None:
    package = load_package(yaml_file)

    assert package.name == "orders_nightly"
    assert package.checkpoint.usage is CheckpointUsage.IF_EXISTS
    assert package.checkpoint.save is True
    assert package.max_restarts == 5
    assert package.variables["rows_loaded"].type is VariableType.INT
    assert package.variables["rows_loaded"].default == 0
    assert not package.variables["rows_loaded"].required
    assert package.variables["source_password"].required
    assert package.variables["source_password"].sensitive
    assert [t.id for t in package.tasks] == ["extract", "load_region", "report"]
    extract = package.task("extract")
    assert (extract.kind, extract.python) == ("python", "examples.orders:extract")
    assert extract.params == {"path": "data/orders.csv"}
    assert (extract.retries, extract.retry_delay, extract.timeout) == (2, 1.0, 600.0)
    assert package.task("load_region").foreach == ["eu", "us", "apac"]
    assert package.task("load_region").depends_on == ["extract"]
    report = package.task("report")
    assert report.kind == "shell" and report.shell == "echo loaded {{ vars.rows_loaded }}"
    assert report.fail_package_on_failure is False and report.always_rerun is False


def test_json_gives_the_same_model_as_yaml(yaml_file: Path, tmp_path: Path) -> None:
    json_file = tmp_path / "orders_nightly.json"
    json_file.write_text(json.dumps(example_data(), indent=2), encoding="utf-8")

    from_json = load_package(json_file)
    from_yaml = load_package(yaml_file)

    assert from_json == from_yaml
    assert from_json.definition_hash == from_yaml.definition_hash


def test_builder_gives_the_same_model_and_hash_as_yaml(yaml_file: Path) -> None:
    from_yaml = load_package(yaml_file)
    built = example_builder().build()

    assert built == from_yaml
    assert built.definition_hash == from_yaml.definition_hash
    assert built.to_dict() == from_yaml.to_dict()


def test_to_dict_round_trips(yaml_file: Path) -> None:
    package = load_package(yaml_file)
    assert parse_package(package.to_dict()) == package


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_is_the_same_package_from_its_stored_definition(example: Path) -> None:
    """What submissions carry and SQL stores (:meth:`Package.to_dict`) parses to the same package,
    under the same hash (a checkpoint written by one attempt fits the next)."""
    package = load_package(example)
    stored = json.loads(json.dumps(package.to_dict()))
    again = parse_package(stored)
    assert again == package
    assert again.definition_hash == package.definition_hash


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- name: x\n", "a package is a mapping, not a list"),
        ("just a string\n", "a package is a mapping, not a string"),
        ("", "a package is a mapping, not null"),
        ("42\n", "a package is a mapping, not an integer"),
    ],
)
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    assert issues_of(lambda: load_package(path)) == [Issue("", message)]


@pytest.mark.parametrize("data", [[{"name": "x"}], "name: x", None, 3.5])
def test_parse_package_refuses_non_mappings(data: Any) -> None:
    [issue] = issues_of(lambda: parse_package(data))
    assert issue.path == "" and issue.message.startswith("a package is a mapping, not ")


def test_missing_file_is_reported_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(PackageInvalid) as caught:
        load_package(path)
    assert caught.value.source == str(path)
    [issue] = caught.value.issues
    assert issue.message.startswith("cannot read package file:")
    assert "No such file" in issue.message


def test_directory_is_not_a_package_file(tmp_path: Path) -> None:
    [issue] = issues_of(lambda: load_package(tmp_path))
    assert issue.message.startswith("cannot read package file:")


@pytest.mark.parametrize(
    ("suffix", "text", "expected"),
    [
        (".yaml", "name: x\ntasks: [\n", "not valid YAML"),
        (".yml", "name: [unclosed\n  - : :\n", "not valid YAML"),
        (".yaml", "name: !!python/object:os.system x\n", "not valid YAML"),
        (".json", '{"name": "x",', "not valid JSON"),
        (".json", "name: x\n", "not valid JSON"),
    ],
)
def test_unparsable_text_is_an_issue_not_a_crash(
    tmp_path: Path, suffix: str, text: str, expected: str
) -> None:
    path = tmp_path / f"p{suffix}"
    path.write_text(text, encoding="utf-8")
    [issue] = issues_of(lambda: load_package(path))
    assert issue.message.startswith(expected)


def test_file_that_is_not_utf8_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    [issue] = issues_of(lambda: load_package(path))
    assert "not UTF-8" in issue.message


def test_deeply_nested_text_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    [issue] = issues_of(lambda: load_package(path))
    assert issue.message.startswith("not valid JSON")


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,
        "name: x\ntasks:\n  - {id: a, shell: echo, params: &p {x: *p}}\n",
        "name: x\ntasks: &t\n  - {id: a, shell: echo, params: {x: *t}}\n",
    ],
    ids=["deep", "recursive-alias", "recursive-alias-through-tasks"],
)
def test_yaml_that_cannot_be_walked_is_reported(tmp_path: Path, text: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    [issue] = issues_of(lambda: load_package(path))
    assert issue.message.startswith("not valid YAML")


def test_yaml_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    # Nine levels of nine aliases: 9**9 values once expanded, from a few hundred bytes.
    lines = ["name: x", "a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    lines.append("tasks: [{id: t, shell: echo, params: {p: *a8}}]")
    path = tmp_path / "p.yaml"
    path.write_text("\n".join(lines), encoding="utf-8")
    [issue] = issues_of(lambda: load_package(path))
    assert issue.message.startswith("not valid YAML: more than")
    assert "values once aliases are expanded" in issue.message


@pytest.mark.parametrize(
    ("suffix", "text"),
    [
        (
            ".yaml",
            "name: a\nvariables:\n  x: {type: int, default: 1}\n  x: {type: str}\n"
            "tasks: [{id: t, shell: echo}]\n",
        ),
        (".json", '{"name": "a", "name": "b", "tasks": [{"id": "t", "shell": "echo"}]}'),
    ],
)
def test_a_key_given_twice_is_refused(tmp_path: Path, suffix: str, text: str) -> None:
    # Both parsers would otherwise keep the last one silently.
    path = tmp_path / f"p{suffix}"
    path.write_text(text, encoding="utf-8")
    [issue] = issues_of(lambda: load_package(path))
    assert "duplicate key" in issue.message


def test_yaml_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: merged\n"
        "base: &base {python: 'm:f', retries: 3}\n"
        "tasks:\n"
        "  - {<<: *base, id: a}\n"
        "  - {<<: *base, id: b, retries: 1}\n",
        encoding="utf-8",
    )
    # "base" is not a package key: the merge worked, only that key is refused.
    [issue] = issues_of(lambda: load_package(path))
    assert issue.path == "base" and issue.message.startswith("unknown key 'base'")
    data = yaml.safe_load(path.read_text())
    del data["base"]
    package = parse_package(data)
    assert [t.retries for t in package.tasks] == [3, 1]


def test_validation_errors_of_a_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: Bad Name\ntasks: [{id: t, shell: echo}]\n", encoding="utf-8")
    with pytest.raises(PackageInvalid) as caught:
        load_package(path)
    assert str(caught.value).startswith(f"{path}: 1 error\n  - name: bad value 'Bad Name'")


# --- definition hash ---------------------------------------------------------------------


def test_hash_is_a_sha256_hex_digest() -> None:
    digest = parse_package(example_data()).definition_hash
    assert len(digest) == 64 and int(digest, 16) >= 0


def test_hash_ignores_descriptions() -> None:
    data = example_data()
    changed = copy.deepcopy(data)
    changed["description"] = "something else"
    changed["tasks"][0]["description"] = "reads the CSV"
    changed["variables"]["rows_loaded"]["description"] = "a counter"
    del data["description"]

    assert parse_package(changed).definition_hash == parse_package(data).definition_hash


def _set(path: tuple[str | int, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        target: Any = data
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value

    return mutate


def _add_task(data: dict[str, Any]) -> None:
    data["tasks"].append({"id": "extra", "shell": "true"})


@pytest.mark.parametrize(
    "mutate",
    [
        _set(("name",), "orders_weekly"),
        _set(("max_restarts",), 4),
        _set(("checkpoint", "usage"), "always"),
        _set(("checkpoint", "save"), False),
        _set(("variables", "batch_date", "default"), "2026-11-25"),
        _set(("variables", "rows_loaded", "type"), "float"),
        _set(("variables", "source_password", "sensitive"), False),
        _set(("variables", "new_one"), {"type": "bool", "default": True}),
        _set(("tasks", 0, "python"), "examples.orders:extract_all"),
        _set(("tasks", 0, "params", "path"), "data/orders2.csv"),
        _set(("tasks", 0, "params", "limit"), 10),
        # a *param* called "description" is data, unlike the models' descriptions
        _set(("tasks", 0, "params", "description"), "x"),
        _set(("tasks", 0, "retries"), 3),
        _set(("tasks", 0, "retry_delay"), 2.5),
        _set(("tasks", 0, "timeout"), 601),
        _set(("tasks", 1, "foreach"), ["eu", "us"]),
        _set(("tasks", 1, "depends_on"), []),
        _set(("tasks", 2, "shell"), "echo done"),
        _set(("tasks", 2, "fail_package_on_failure"), True),
        _set(("tasks", 2, "always_rerun"), True),
        _add_task,
    ],
)
def test_hash_changes_with_any_definition_change(mutate: Callable[[dict[str, Any]], None]) -> None:
    data = example_data()
    before = parse_package(data).definition_hash
    mutate(data)
    assert parse_package(data).definition_hash != before


def _reordered(value: Any, rnd: Any) -> Any:
    """The same value with every mapping's keys in a random order (lists keep theirs)."""
    if isinstance(value, dict):
        keys = list(value)
        rnd.shuffle(keys)
        return {key: _reordered(value[key], rnd) for key in keys}
    if isinstance(value, list):
        return [_reordered(item, rnd) for item in value]
    return value


@settings(max_examples=25, deadline=None)
@given(st.randoms(use_true_random=False))
def test_hash_is_stable_across_key_order(rnd: Any) -> None:
    data = example_data()
    shuffled = _reordered(data, rnd)
    assert parse_package(shuffled).definition_hash == parse_package(data).definition_hash


def test_equivalent_spellings_hash_the_same() -> None:
    data = example_data()
    spelled = copy.deepcopy(data)
    spelled["tasks"][0]["timeout"] = 600.0  # int and float spellings of one number
    spelled["tasks"][1]["retries"] = 0  # a default written out
    assert parse_package(spelled).definition_hash == parse_package(data).definition_hash


# --- builder -----------------------------------------------------------------------------


def test_builder_defaults_are_the_models() -> None:
    package = PackageBuilder("p").shell("t", "true").build()
    assert package == parse_package({"name": "p", "tasks": [{"id": "t", "shell": "true"}]})
    assert package.checkpoint.usage is CheckpointUsage.IF_EXISTS
    assert package.max_restarts is None


def test_builder_variable_without_default_is_required() -> None:
    package = (
        PackageBuilder("p")
        .variable("needed", type="int")
        .variable("optional", type=VariableType.INT, default=3)
        .shell("t", "echo {{ vars.needed }} {{ vars.optional }}")
        .build()
    )
    assert package.variables["needed"].required
    assert not package.variables["optional"].required


def test_builder_reports_the_same_issues_as_a_file() -> None:
    builder = (
        PackageBuilder("Bad Name")
        .variable("n", type="integer")
        .python("a", "examples.orders:a", depends_on=["b"], retries=-1)
        .python("b", "examples.orders:b", depends_on=["a", "ghost"])
        .shell("c", "echo {{ vars.nn }}")
    )
    built_issues = issues_of(builder.build)
    assert built_issues == issues_of(lambda: parse_package(builder.to_dict()))
    paths = {issue.path for issue in built_issues}
    assert {
        "name",
        "variables.n.type",
        "tasks[0].retries",
        "tasks[1].depends_on[1]",
        "tasks[0].depends_on",
        "tasks[2].shell",
    } <= paths


def test_builder_error_names_the_builder() -> None:
    with pytest.raises(PackageInvalid) as caught:
        PackageBuilder("p").shell("t", "true", depends_on=["t"]).build()
    assert caught.value.source == "PackageBuilder('p')"
    assert caught.value.issues == [Issue("tasks[0].depends_on[0]", "task 't' depends on itself")]


def test_builder_refuses_a_variable_declared_twice_with_the_other_issues() -> None:
    builder = (
        PackageBuilder("p")
        .variable("x", type="int", default=1)
        .variable("x", type="str")
        .shell("t", "true", depends_on=["nope"])
    )
    issues = issues_of(builder.build)
    assert Issue("variables.x", "variable 'x' declared twice") in issues
    assert any(issue.path == "tasks[0].depends_on[0]" for issue in issues)


def test_builder_keeps_a_copy_of_what_it_was_given() -> None:
    items = ["eu", "us"]
    params: dict[str, Any] = {"nested": {"k": [1]}}
    builder = PackageBuilder("p").python("t", "m:f", foreach=items, params=params)
    items.append("apac")
    params["nested"]["k"].append(2)
    package = builder.build()
    assert package.tasks[0].foreach == ["eu", "us"]
    assert package.tasks[0].params == {"nested": {"k": [1]}}


def test_builder_accepts_tuples_like_yaml_lists() -> None:
    package = (
        PackageBuilder("p")
        .variable("xs", type="list", default=(1, 2))
        .shell("a", "true")
        .python("b", "m:f", foreach=("x", "y"), depends_on=("a",))
        .build()
    )
    assert package.variables["xs"].default == [1, 2]
    assert package.tasks[1].foreach == ["x", "y"]
    assert package.tasks[1].depends_on == ["a"]


def test_builder_build_returns_a_package_each_time() -> None:
    builder = example_builder()
    first, second = builder.build(), builder.build()
    assert isinstance(first, Package) and first == second
