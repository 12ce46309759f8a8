"""The deployment files, checked against the code they deploy.

Dockerfile, docker-compose.yml, deploy/ (Prometheus, alert rules, Grafana,
Kubernetes) and docs/deployment.md must agree with the CLI (command names and
options, parsed by the real Typer app), the settings, the metric contract
(names with their ``_total``/``_bucket``/``_sum``/``_count`` suffixes) and with
each other (scrape targets, ports, job names, datasource, mounts).

Each ``check_*`` function returns the problems it finds under a root: the
repository, or a mutated copy (``test_a_broken_copy_is_caught``), which shows
that the checks bite. promtool, when on PATH, checks the configurations and
runs alert scenarios; otherwise those tests are skipped.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
import shutil
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.contract import METRICS

ROOT = Path(__file__).resolve().parents[2]
K8S = "deploy/kubernetes"
PROMETHEUS = "deploy/prometheus"
IMAGE_NAME = "checkpoint-orchestrator"
JOBS = {"scheduler": "orchestrator-scheduler", "worker": "orchestrator-worker"}
CONTRACT = METRICS
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
EXPOSED = {base + suffix for base, kind in CONTRACT.items() for suffix in SUFFIXES[kind]}
NOT_OURS = {"up"}  # Prometheus' own series the rules may use
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless"}
PROMQL_WORDS |= {"offset", "bool", "inf", "nan"}


# -- reading the files -------------------------------------------------------------------------


LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built with it; safe either way


@functools.cache
def _parsed(text: str) -> list[Any]:
    return list(yaml.load_all(text, Loader=LOADER))


def parse(text: str) -> Any:
    """The first YAML document of a text (parsed once per content; the caller gets its own copy)."""
    return copy.deepcopy(_parsed(text)[0])


def load(root: Path, name: str) -> Any:
    return parse((root / name).read_text())


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in copy.deepcopy(_parsed(path.read_text())) if doc]


def interpolate(value: str) -> str:
    """A compose value with every ``${VAR:-default}`` replaced by its default."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)


def settings_fields() -> set[str]:
    from orchestrator.runtime.settings import Settings

    return {f"ORCHESTRATOR_{name.upper()}" for name in Settings.model_fields}


def default_metrics_port() -> int:
    from orchestrator.runtime.settings import Settings

    return int(Settings.model_fields["metrics_port"].default)


@functools.cache
def cli_group() -> Any:
    import typer.main

    from orchestrator.cli import app  # importing the package registers every command

    return typer.main.get_command(app)


def parse_cli(args: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse ``orchestrator ARGS`` with the real CLI: the command's name and its parameters."""
    group = cli_group()
    index = next((i for i, arg in enumerate(args) if arg in group.commands), None)
    if index is None:
        raise ValueError(f"no orchestrator command in {args} (known: {sorted(group.commands)})")
    name = args[index]
    try:
        if index:
            group.make_context("orchestrator", args[:index])
        context = group.commands[name].make_context(name, args[index + 1 :])
    except Exception as exc:  # the CLI's usage errors (Typer's own click)
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        raise ValueError(f"`orchestrator {shlex.join(args)}`: {message}") from exc
    return name, context.params


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (strings, matchers, ranges and label lists removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    words = re.findall(r"(?<![\w$.])([a-zA-Z_:][\w:]*)\b(?!\s*\()", text)
    return {word for word in words if word.lower() not in PROMQL_WORDS}


def metric_problems(where: str, expr: str) -> list[str]:
    problems = []
    for name in sorted(promql_metric_names(expr)):
        if name in EXPOSED or name in NOT_OURS:
            continue
        base = next((b for b in CONTRACT if name == b or name.startswith(b + "_")), None)
        hint = ""
        if base is not None:
            kind = CONTRACT[base]
            hint = f" ({base} is a {kind}: {', '.join(base + s for s in SUFFIXES[kind])})"
        problems.append(f"{where}: {name} is not a contract metric name{hint}")
    return problems


def anchors(markdown: str) -> set[str]:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}


# -- compose -----------------------------------------------------------------------------------


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def orchestrator_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in compose["services"].items()
        if "build" in svc or str(svc.get("image", "")).startswith(IMAGE_NAME)
    }


def process(command: list[str]) -> tuple[str, dict[str, Any]]:
    return parse_cli([str(arg) for arg in command])


def metrics_port(kind: str, params: dict[str, Any], env: dict[str, str]) -> int | None:
    """Where a scheduler or worker process serves /metrics (None: it serves none)."""
    if kind == "scheduler":
        return int(env.get("ORCHESTRATOR_METRICS_PORT", default_metrics_port()))
    if kind == "worker":
        return params.get("metrics_port")
    return None


def compose_listeners(compose: dict[str, Any]) -> dict[str, tuple[str, int | None]]:
    """Orchestrator service -> (command, metrics port)."""
    found = {}
    for name, svc in orchestrator_services(compose).items():
        try:
            kind, params = process(svc.get("command") or [])
        except ValueError:  # check_compose reports it
            kind, params = "", {}
        found[name] = (kind, metrics_port(kind, params, environment(svc)))
    return found


def bind_source(svc: dict[str, Any], container_path: str) -> str | None:
    """The host path (relative to the compose file) that a bind mount puts at container_path."""
    for volume in svc.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if source.startswith("./") and (container_path + "/").startswith(target.rstrip("/") + "/"):
            return source[2:] + container_path[len(target.rstrip("/")) :]
    return None


def check_compose(root: Path) -> list[str]:
    compose = load(root, "docker-compose.yml")
    services = compose["services"]
    required = ["redis", "postgres", "prometheus", "grafana", "scheduler-1", "scheduler-2"]
    required += ["worker-1", "worker-2", "worker-3"]
    problems = [f"compose: no service {name}" for name in required if name not in services]
    problems += _compose_backends(compose)
    ours = orchestrator_services(compose)
    if len({json.dumps([svc.get("build"), svc.get("image")], sort_keys=True) for svc in ours.values()}) != 1:
        problems.append("compose: the orchestrator services do not all use the same build and image")
    for name, svc in ours.items():
        try:
            problems += _compose_process(compose, name, svc, *process(svc.get("command") or []))
        except ValueError as exc:
            problems.append(f"compose: {name}: {exc}")
    secrets = re.findall(
        r"\$\{(\w*(?:PASSWORD|KEY|SECRET)\w*):-([^}]*)\}", (root / "docker-compose.yml").read_text()
    )
    problems += [
        f"compose: ${{{var}}} defaults to {value!r}, not dev-only-..."
        for var, value in secrets
        if not value.startswith("dev-only-")
    ]
    return problems


def _compose_backends(compose: dict[str, Any]) -> list[str]:
    services, problems = compose["services"], []
    redis, postgres = services.get("redis", {}), services.get("postgres", {})
    command = " ".join(map(str, redis.get("command", [])))
    if not str(redis.get("image", "")).startswith("redis:7") or "--appendonly yes" not in command:
        problems.append("compose: redis must be redis:7 with --appendonly yes")
    if "ping" not in str(redis.get("healthcheck", {}).get("test")):
        problems.append("compose: redis has no redis-cli ping healthcheck")
    if not str(postgres.get("image", "")).startswith("postgres:16"):
        problems.append("compose: postgres must be postgres:16")
    if "pg_isready" not in str(postgres.get("healthcheck", {}).get("test")):
        problems.append("compose: postgres has no pg_isready healthcheck")
    for name in ("redis", "postgres"):
        if not services.get(name, {}).get("volumes"):
            problems.append(f"compose: {name} keeps its data in no volume")
    return problems


def _compose_process(
    compose: dict[str, Any], name: str, svc: dict[str, Any], kind: str, params: dict[str, Any]
) -> list[str]:
    env, problems = environment(svc), []
    expected = (
        "worker" if name.startswith("worker") else "scheduler" if name.startswith("scheduler") else None
    )
    if expected and kind != expected:
        problems.append(f"compose: {name} runs `orchestrator {kind}`, not {expected}")
    if kind == "worker" and params.get("node") != name:
        problems.append(f"compose: {name} runs worker node {params.get('node')!r}, not {name!r}")
    port = metrics_port(kind, params, env)
    if kind in JOBS and port is None:
        problems.append(f"compose: {name} serves no /metrics (worker without --metrics-port)")
    health = [str(part) for part in (svc.get("healthcheck") or {}).get("test", [])]
    if port is not None and health and health[-1] != str(port) and "orchestrator-healthcheck" in health:
        problems.append(f"compose: {name}'s healthcheck probes port {health[-1]}, it serves {port}")
    known = settings_fields()
    problems += [
        f"compose: {name}: {key} is not a setting"
        for key in env
        if key.startswith("ORCHESTRATOR_") and key not in known
    ]
    for dependency in ("redis", "postgres"):
        condition = (svc.get("depends_on") or {}).get(dependency, {}).get("condition")
        if condition != "service_healthy":
            problems.append(f"compose: {name} does not wait for {dependency} to be healthy")
    problems += _compose_urls(compose, name, env)
    if kind == "worker":
        root = env.get("ORCHESTRATOR_CHECKPOINT_ROOT", "")
        mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in svc.get("volumes", [])}
        if mounts.get(root) not in (compose.get("volumes") or {}):
            problems.append(
                f"compose: {name} mounts no named volume at ORCHESTRATOR_CHECKPOINT_ROOT ({root})"
            )
    return problems


def _compose_urls(compose: dict[str, Any], name: str, env: dict[str, str]) -> list[str]:
    problems, services = [], compose["services"]
    broker = urllib.parse.urlsplit(interpolate(env.get("ORCHESTRATOR_BROKER_URL", "")))
    if broker.scheme not in ("redis", "rediss") or broker.hostname not in services or broker.port != 6379:
        problems.append(f"compose: {name}'s ORCHESTRATOR_BROKER_URL is not redis://...@<redis service>:6379")
    redis_command = " ".join(map(str, services.get("redis", {}).get("command", [])))
    if broker.password and f"--requirepass {broker.password}" not in interpolate(redis_command):
        problems.append(f"compose: {name}'s broker password is not redis' --requirepass")
    database = urllib.parse.urlsplit(interpolate(env.get("ORCHESTRATOR_DATABASE_URL", "")))
    postgres = {k: interpolate(str(v)) for k, v in environment(services.get("postgres", {})).items()}
    if database.scheme != "postgresql+psycopg" or database.hostname not in services or database.port != 5432:
        problems.append(f"compose: {name}'s ORCHESTRATOR_DATABASE_URL is not postgresql+psycopg://...:5432")
    elif (database.username, database.password, database.path.lstrip("/")) != (
        postgres.get("POSTGRES_USER"),
        postgres.get("POSTGRES_PASSWORD"),
        postgres.get("POSTGRES_DB"),
    ):
        problems.append(f"compose: {name}'s database user, password or name differ from postgres'")
    return problems


# -- Prometheus --------------------------------------------------------------------------------


def sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def relabel(labels: dict[str, str], configs: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus relabelling (keep, drop, replace): the target's labels, or None if dropped."""
    labels = dict(labels)
    for config in configs:
        action = config.get("action", "replace")
        value = config.get("separator", ";").join(labels.get(s, "") for s in config.get("source_labels", []))
        match = re.fullmatch(config.get("regex", "(.*)"), value)
        if action in ("keep", "drop"):
            if (match is None) == (action == "keep"):
                return None
        elif action == "replace":
            if match is not None:
                groups = [match.group(0), *match.groups()]
                replacement = config.get("replacement", "$1")
                labels[config["target_label"]] = re.sub(
                    r"\$(\d+)|\$\{(\d+)\}", lambda m: groups[int(m.group(1) or m.group(2))] or "", replacement
                )
        else:
            raise ValueError(f"relabel action {action!r} is not simulated here")
    return labels


def pod_targets(root: Path, prometheus: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    """Deployment -> (job, address, metrics path) that the pod-discovery job gives its pods."""
    found = {}
    for deployment, container in deployments(root):
        template = deployment["spec"]["template"]
        meta = {
            "__address__": f"10.1.2.3:{container['ports'][0]['containerPort']}",
            "__meta_kubernetes_namespace": deployment["metadata"]["namespace"],
            "__meta_kubernetes_pod_name": deployment["metadata"]["name"] + "-abc12",
            "__meta_kubernetes_pod_phase": "Running",
        }
        for key, value in template["metadata"].get("annotations", {}).items():
            meta[f"__meta_kubernetes_pod_annotation_{sanitize(key)}"] = str(value)
        for key, value in template["metadata"].get("labels", {}).items():
            meta[f"__meta_kubernetes_pod_label_{sanitize(key)}"] = str(value)
        for job in prometheus["scrape_configs"]:
            if not any(sd.get("role") == "pod" for sd in job.get("kubernetes_sd_configs", [])):
                continue
            meta.update({"job": job["job_name"], "__metrics_path__": job.get("metrics_path", "/metrics")})
            labels = relabel(meta, job.get("relabel_configs", []))
            if labels is not None:
                found[deployment["metadata"]["name"]] = (
                    labels["job"],
                    labels["__address__"],
                    labels["__metrics_path__"],
                )
    return found


def k8s_prometheus(root: Path) -> dict[str, str]:
    docs = load_all(root / K8S / "prometheus-config.yaml")
    return next(doc["data"] for doc in docs if doc["kind"] == "ConfigMap")


def check_prometheus(root: Path) -> list[str]:
    config, problems = load(root, f"{PROMETHEUS}/prometheus.yml"), []
    for rule_file in config.get("rule_files", []):
        if not (root / PROMETHEUS / rule_file).is_file():
            problems.append(f"prometheus.yml: rule file {rule_file} does not exist")
    if "alerts.yml" not in config.get("rule_files", []):
        problems.append("prometheus.yml: rule_files does not load alerts.yml")
    compose = load(root, "docker-compose.yml")
    listeners = compose_listeners(compose)
    scraped = set()
    for job in config["scrape_configs"]:
        for target in (t for static in job.get("static_configs", []) for t in static["targets"]):
            host, _, port = target.rpartition(":")
            kind, listens = listeners.get(host, ("", None))
            if host not in compose["services"]:
                problems.append(f"prometheus.yml: target {target} is no compose service")
            elif listens != int(port):
                problems.append(f"prometheus.yml: target {target}: {host} serves /metrics on {listens}")
            elif JOBS.get(kind) != job["job_name"]:
                problems.append(
                    f"prometheus.yml: {target} ({kind}) is in job {job['job_name']}, not {JOBS.get(kind)}"
                )
            scraped.add(host)
    problems += [
        f"prometheus.yml: {name} is not scraped"
        for name, (kind, _) in listeners.items()
        if kind in JOBS and name not in scraped
    ]
    return problems + _check_k8s_prometheus(root)


def _check_k8s_prometheus(root: Path) -> list[str]:
    data, problems = k8s_prometheus(root), []
    config = parse(data["prometheus.yml"])
    if parse(data.get("alerts.yml", "{}")) != load(root, f"{PROMETHEUS}/alerts.yml"):
        problems.append("prometheus-config.yaml: its alerts.yml differs from deploy/prometheus/alerts.yml")
    if "alerts.yml" not in config.get("rule_files", []):
        problems.append("prometheus-config.yaml: rule_files does not load alerts.yml")
    targets = pod_targets(root, config)
    for deployment, container in deployments(root):
        name = deployment["metadata"]["name"]
        want = (
            JOBS.get(parse_cli(container_args(container))[0]),
            f"10.1.2.3:{serving_port(root, container)}",
            "/metrics",
        )
        if targets.get(name) != want:
            problems.append(
                f"prometheus-config.yaml: pods of {name} are scraped as {targets.get(name)}, not {want}"
            )
    return problems


# -- alert rules and dashboard -----------------------------------------------------------------


def alert_rules(root: Path) -> list[dict[str, Any]]:
    return [rule for group in load(root, f"{PROMETHEUS}/alerts.yml")["groups"] for rule in group["rules"]]


def prometheus_jobs(root: Path) -> set[str]:
    compose = {job["job_name"] for job in load(root, f"{PROMETHEUS}/prometheus.yml")["scrape_configs"]}
    kubernetes = {
        job for job, _, _ in pod_targets(root, parse(k8s_prometheus(root)["prometheus.yml"])).values()
    }
    return compose & kubernetes


def check_alerts(root: Path) -> list[str]:
    rules, problems = alert_rules(root), []
    docs = anchors((root / "docs/deployment.md").read_text())
    jobs = prometheus_jobs(root)
    names = [rule.get("alert") for rule in rules]
    problems += [f"alerts.yml: {name} is defined twice" for name in {n for n in names if names.count(n) > 1}]
    for rule in rules:
        name = rule.get("alert", "?")
        if not rule.get("expr"):
            problems.append(f"alerts.yml: {name} has no expr")
            continue
        if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
            problems.append(f"alerts.yml: {name} has no severity label (critical, warning, info)")
        for annotation in ("summary", "description", "runbook"):
            if not rule.get("annotations", {}).get(annotation):
                problems.append(f"alerts.yml: {name} has no {annotation} annotation")
        runbook = rule.get("annotations", {}).get("runbook", "")
        if runbook and runbook.partition("#")[2] not in docs:
            problems.append(f"alerts.yml: {name}'s runbook {runbook} is no heading of docs/deployment.md")
        problems += metric_problems(f"alerts.yml: {name}", rule["expr"])
        problems += [
            f"alerts.yml: {name} selects job {job!r}, scraped by no job"
            for job in re.findall(r'job="([^"]+)"', rule["expr"])
            if job not in jobs
        ]
    exprs = "\n".join(rule.get("expr", "") for rule in rules)
    for needed in (
        "orchestrator_worker_nodes_alive",
        "orchestrator_run_restarts_total",
        'orchestrator_runs_finished_total{job="orchestrator-scheduler", state="failed"}',
        'orchestrator_checkpoint_writes_total{result="error"}',
        "histogram_quantile(0.99, sum by (le) (rate(orchestrator_checkpoint_write_seconds_bucket",
        'queue="orchestrator.runs"',
        "histogram_quantile(0.95, sum by (le) (rate(orchestrator_recovery_seconds_bucket",
        'orchestrator_schedule_runs_total{job="orchestrator-scheduler", result=~"missed|caught_up"}',
    ):
        if needed not in exprs:
            problems.append(f"alerts.yml: no rule uses {needed}")
    return problems


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels += [panel, *panel.get("panels", [])]
    return [panel for panel in panels if panel.get("type") != "row"]


REQUIRED_PANELS = {  # what each required panel's queries must contain
    "runs by state": ["by (state) (orchestrator_runs{"],
    "restarts by reason": ["by (reason)", "orchestrator_run_restarts_total"],
    "recovery time": [
        f"histogram_quantile({q}, sum by (le) (rate(orchestrator_recovery_seconds_bucket"
        for q in ("0.5", "0.95", "0.99")
    ],
    "task duration p95 by task": [
        "histogram_quantile(0.95, sum by (package, task, le)",
        "orchestrator_task_duration_seconds_bucket",
    ],
    "checkpoint write latency": [
        f"histogram_quantile({q}, sum by (le) (rate(orchestrator_checkpoint_write_seconds_bucket"
        for q in ("0.5", "0.99")
    ],
    "checkpoint writes by result": ["by (result)", "orchestrator_checkpoint_writes_total"],
    "nodes alive": ["orchestrator_worker_nodes_alive"],
    "queue depth": ["by (queue)", "orchestrator_queue_depth"],
    "schedule runs by result": ["by (schedule, result)", "orchestrator_schedule_runs_total"],
    "schedule lag": ["histogram_quantile(0.95, sum by (le) (rate(orchestrator_schedule_lag_seconds_bucket"],
    "purged by kind": ["by (kind)", "orchestrator_purged_total"],
}


def check_dashboard(root: Path) -> list[str]:
    dashboard = json.loads((root / "deploy/grafana/dashboards/orchestrator.json").read_text())
    datasources = load(root, "deploy/grafana/provisioning/datasources/prometheus.yml")["datasources"]
    uids, problems = {ds["uid"] for ds in datasources if ds["type"] == "prometheus"}, []
    panels = dashboard_panels(dashboard)
    ids = [panel.get("id") for panel in panels]
    if len(set(ids)) != len(ids):
        problems.append("dashboard: panel ids are not unique")
    for panel in panels:
        title = panel.get("title", "?")
        for thing in (panel, *panel.get("targets", [])):
            if thing.get("datasource", {}).get("uid") not in uids:
                problems.append(
                    f"dashboard: {title}: datasource {thing.get('datasource')} is not the provisioned one {uids}"
                )
        for target in panel.get("targets", []):
            problems += metric_problems(f"dashboard: {title}", target.get("expr", ""))
    for wanted, fragments in REQUIRED_PANELS.items():
        found = [p for p in panels if wanted in p.get("title", "").lower()]
        exprs = "\n".join(t.get("expr", "") for p in found for t in p.get("targets", []))
        if not found or any(fragment not in exprs for fragment in fragments):
            problems.append(f"dashboard: no panel {wanted!r} querying {fragments}")
    return problems + _check_grafana_wiring(root, datasources)


def _check_grafana_wiring(root: Path, datasources: list[dict[str, Any]]) -> list[str]:
    compose, problems = load(root, "docker-compose.yml"), []
    grafana, prometheus = compose["services"]["grafana"], compose["services"]["prometheus"]
    url = urllib.parse.urlsplit(datasources[0]["url"])
    if (
        url.hostname != "prometheus"
        or url.port != 9090
        or "web.listen-address" in str(prometheus.get("command"))
    ):
        problems.append(f"grafana datasource: {datasources[0]['url']} is not the prometheus service on 9090")
    config = next(arg.split("=", 1)[1] for arg in prometheus["command"] if arg.startswith("--config.file="))
    if bind_source(prometheus, config) != f"{PROMETHEUS}/prometheus.yml":
        problems.append(f"compose: prometheus' {config} is not deploy/prometheus/prometheus.yml")
    if bind_source(grafana, "/etc/grafana/provisioning") != "deploy/grafana/provisioning":
        problems.append("compose: grafana does not mount deploy/grafana/provisioning")
    for provider in load(root, "deploy/grafana/provisioning/dashboards/orchestrator.yml")["providers"]:
        source = bind_source(grafana, provider["options"]["path"])
        if source is None or not (root / source / "orchestrator.json").is_file():
            problems.append(
                f"grafana provider: {provider['options']['path']} holds no orchestrator.json in compose"
            )
    return problems


# -- Kubernetes --------------------------------------------------------------------------------


def k8s_docs(root: Path) -> list[dict[str, Any]]:
    docs = []
    for path in sorted((root / K8S).glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += load_all(path)
    return docs


def deployments(root: Path) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [
        (doc, doc["spec"]["template"]["spec"]["containers"][0])
        for doc in k8s_docs(root)
        if doc["kind"] == "Deployment"
    ]


def k8s_settings(root: Path) -> dict[str, str]:
    return next(
        doc["data"]
        for doc in k8s_docs(root)
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "orchestrator-settings"
    )


def container_args(container: dict[str, Any]) -> list[str]:
    """The container's args with $(VAR) expanded as the kubelet would (downward API: a pod name)."""
    env = {e["name"]: "orchestrator-worker-7d9c-abcde" for e in container.get("env", []) if "valueFrom" in e}
    return [
        re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), str(a))
        for a in container.get("args", [])
    ]


def serving_port(root: Path, container: dict[str, Any]) -> int | None:
    kind, params = parse_cli(container_args(container))
    return metrics_port(kind, params, k8s_settings(root))


def check_kubernetes(root: Path) -> list[str]:
    problems = []
    listed = set(load(root, f"{K8S}/kustomization.yaml").get("resources", []))
    files = {p.name for p in (root / K8S).glob("*.yaml")} - {"kustomization.yaml"}
    problems += [f"kustomization.yaml does not list {name}" for name in sorted(files - listed)]
    problems += [f"kustomization.yaml lists {name}, which does not exist" for name in sorted(listed - files)]
    docs = k8s_docs(root)
    for doc in docs:
        if not (doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name")):
            problems.append(
                f"kubernetes: a document lacks apiVersion, kind or metadata.name: {str(doc)[:80]}"
            )
        elif doc["kind"] != "Namespace" and doc["metadata"].get("namespace") != "orchestrator":
            problems.append(
                f"kubernetes: {doc['kind']} {doc['metadata']['name']} is not in namespace orchestrator"
            )
    problems += _check_k8s_config(root, docs)
    for deployment, container in deployments(root):
        try:
            problems += _check_deployment(root, docs, deployment, container)
        except ValueError as exc:
            problems.append(f"kubernetes: {deployment['metadata']['name']}: {exc}")
    images = {container["image"] for _, container in deployments(root)}
    if len(images) != 1:
        problems.append(f"kubernetes: the Deployments run different images {images}")
    return problems


def _check_k8s_config(root: Path, docs: list[dict[str, Any]]) -> list[str]:
    problems, known = [], settings_fields()
    secrets = [doc for doc in docs if doc["kind"] == "Secret"]
    for doc in docs:
        if doc["kind"] in ("ConfigMap", "Secret") and doc["metadata"]["name"].startswith(
            "orchestrator-settings"
        ):
            problems += [
                f"kubernetes: ConfigMap key {key} is not a setting" for key in doc["data"] if key not in known
            ]
    for secret in secrets:
        if secret.get("data"):
            problems.append(
                f"kubernetes: Secret {secret['metadata']['name']} has base64 data: use stringData placeholders"
            )
        for key, value in (secret.get("stringData") or {}).items():
            if key not in known:
                problems.append(f"kubernetes: Secret key {key} is not a setting")
            if "REPLACE_ME" not in str(value):
                problems.append(
                    f"kubernetes: Secret {key} holds a real-looking value, not a REPLACE_ME placeholder"
                )
    external = {
        doc["metadata"]["name"]
        for doc in docs
        if doc["kind"] == "Service" and doc["spec"].get("type") == "ExternalName"
    }
    for secret in secrets:
        for key in ("ORCHESTRATOR_BROKER_URL", "ORCHESTRATOR_DATABASE_URL"):
            host = urllib.parse.urlsplit(str(secret.get("stringData", {}).get(key, ""))).hostname
            if host not in external:
                problems.append(f"kubernetes: {key} names host {host!r}, no ExternalName Service")
    return problems


def _check_deployment(
    root: Path, docs: list[dict[str, Any]], deployment: dict[str, Any], container: dict[str, Any]
) -> list[str]:
    name, problems = deployment["metadata"]["name"], []
    kind, _ = parse_cli(container_args(container))
    replicas = {"scheduler": 2, "worker": 3}.get(kind)
    if deployment["spec"].get("replicas") != replicas:
        problems.append(
            f"kubernetes: {name} has {deployment['spec'].get('replicas')} replicas, not {replicas}"
        )
    pod = deployment["spec"]["template"]
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    annotations = pod["metadata"].get("annotations", {})
    serving = serving_port(root, container)
    if (
        annotations.get("prometheus.io/scrape") != "true"
        or int(annotations.get("prometheus.io/port", 0)) not in ports.values()
    ):
        problems.append(
            f"kubernetes: {name}'s prometheus.io annotations do not name a container port {ports}"
        )
    if serving not in ports.values():
        problems.append(f"kubernetes: {name} serves /metrics on {serving}, no container port {ports}")
    for probe in ("livenessProbe", "readinessProbe"):
        port = container.get(probe, {}).get("httpGet", {}).get("port")
        if ports.get(port, port) != serving:
            problems.append(f"kubernetes: {name}'s {probe} does not fetch /metrics on {serving}")
    for bound in ("requests", "limits"):
        if not container.get("resources", {}).get(bound):
            problems.append(f"kubernetes: {name} has no resource {bound}")
    refs = {
        ref.get("configMapRef", ref.get("secretRef", {})).get("name") for ref in container.get("envFrom", [])
    }
    problems += [
        f"kubernetes: {name} reads {ref}, which is not defined"
        for ref in refs
        if ref not in {d["metadata"]["name"] for d in docs}
    ]
    if kind == "worker":
        problems += _check_worker_pod(root, docs, name, container, pod)
    return problems


def _check_worker_pod(
    root: Path,
    docs: list[dict[str, Any]],
    name: str,
    container: dict[str, Any],
    pod: dict[str, Any],
) -> list[str]:
    problems = []
    node_env = re.fullmatch(r"\$\((\w+)\)", str(container["args"][container["args"].index("--node") + 1]))
    fields = {
        e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        for e in container.get("env", [])
    }
    if not node_env or fields.get(node_env.group(1)) != "metadata.name":
        problems.append(f"kubernetes: {name}'s --node is not the pod name (downward API metadata.name)")
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod["spec"].get("volumes", [])
        if "persistentVolumeClaim" in v
    }
    root_path = k8s_settings(root).get("ORCHESTRATOR_CHECKPOINT_ROOT")
    mounted = [
        claims.get(m["name"])
        for m in container.get("volumeMounts", [])
        if m["mountPath"] == root_path and not m.get("subPath")
    ]
    pvcs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    if not mounted or mounted[0] not in pvcs:
        problems.append(
            f"kubernetes: {name} mounts no PersistentVolumeClaim at ORCHESTRATOR_CHECKPOINT_ROOT {root_path}"
        )
    elif "ReadWriteMany" not in pvcs[mounted[0]]["spec"].get("accessModes", []):
        problems.append(f"kubernetes: the checkpoint claim {mounted[0]} is not ReadWriteMany")
    return problems


# -- Dockerfile and docs -----------------------------------------------------------------------


def dockerfile(root: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n(?:\s*#[^\n]*\n)*", " ", (root / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def dockerignored(root: Path, path: str) -> bool:
    """Whether the build context leaves path out (.dockerignore, Docker's last-match-wins rules)."""
    ignored, parts = False, path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for line in (root / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate, pattern = pattern.startswith("!"), pattern.lstrip("!").strip("/")
        regex = (
            re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        )
        regex = regex.replace(r"\?", "[^/]").replace(r"\[", "[").replace(r"\]", "]")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def check_dockerfile(root: Path) -> list[str]:
    instructions, problems = dockerfile(root), []

    def get(kind: str) -> list[str]:
        return [args for k, args in instructions if k == kind]

    if not any(args.split()[0].startswith("python:3.11-slim") for args in get("FROM")):
        problems.append("Dockerfile: not based on python:3.11-slim")
    if [json.loads(args) for args in get("ENTRYPOINT")][-1:] != [["orchestrator"]]:
        problems.append(f'Dockerfile: ENTRYPOINT is {get("ENTRYPOINT")}, not ["orchestrator"]')
    if not get("USER") or get("USER")[-1].split(":")[0] in ("root", "0"):
        problems.append("Dockerfile: runs as root (no USER, or USER root)")
    if not get("HEALTHCHECK") or "orchestrator-healthcheck" not in get("HEALTHCHECK")[-1]:
        problems.append("Dockerfile: no HEALTHCHECK running orchestrator-healthcheck")
    if not any(re.search(r"pip install [^&]*\.\[postgres\]", args) for args in get("RUN")):
        problems.append("Dockerfile: does not pip install .[postgres]")
    copies = [args.split() for args in get("COPY") if "--from" not in args]
    sources = [src.rstrip("/") for args in copies for src in args[:-1] if not src.startswith("--")]
    if "examples" not in sources:
        problems.append("Dockerfile: does not COPY examples/ into the image")
    if not any(args[-1] == "/usr/local/bin/orchestrator-healthcheck" for args in copies):
        problems.append("Dockerfile: orchestrator-healthcheck is not installed")
    for source in sources:
        files = (
            [source]
            if (root / source).is_file()
            else [
                str(p.relative_to(root))
                for p in (root / source).rglob("*")
                if p.is_file() and "__pycache__" not in p.parts
            ]
        )
        if not files:
            problems.append(f"Dockerfile: COPY {source}: nothing there")
        problems += [
            f"Dockerfile: COPY {source}: .dockerignore leaves out {f}"
            for f in files
            if dockerignored(root, f)
        ]
    problems += [
        f".dockerignore: {path} is sent to the build"
        for path in (".git", ".venv", ".orchestrator", "tests")
        if not dockerignored(root, path)
    ]
    return problems


def shell_lines(markdown: str) -> list[list[str]]:
    """The commands of a page: lines of its shell code blocks, and inline code naming a command.

    Usage synopses (``[--option X]``, ``...``) are left out: they are not commands.
    """
    lines, language = [], None
    for line in markdown.splitlines():
        if line.startswith("```"):
            language = line[3:].strip() if language is None else None
        elif language in ("", "bash", "sh", "shell", "console") and line.strip():
            lines.append(line)
        elif language is None:
            lines += re.findall(r"`((?:orchestrator|docker compose|kubectl) [^`]+)`", line)
    commands = [shlex.split(line, comments=True) for line in lines]
    return [tokens for tokens in commands if not any(t.startswith("[") or t.endswith("...") for t in tokens)]


def orchestrator_invocations(tokens: list[str], services: set[str]) -> list[list[str]]:
    """The arguments of each ``orchestrator`` a shell line runs.

    That is: at its start, after ``--`` (``kubectl exec ... --``) or after ``docker compose exec SERVICE``.
    """
    found = []
    for i, token in enumerate(tokens):
        before = tokens[i - 1] if i else None
        after_exec = i >= 2 and before in services and "exec" in tokens[: i - 1]
        if token == "orchestrator" and (i == 0 or before == "--" or after_exec):
            found.append(tokens[i + 1 :])
    return found


COMPOSE_SERVICE_VERBS = set("exec logs kill stop start restart run pause unpause rm top up".split())


def check_docs(root: Path) -> list[str]:
    services, problems = set(load(root, "docker-compose.yml")["services"]), []
    deployment = (root / "docs/deployment.md").read_text()
    table = re.search(r"^### Services\n(.*?)(?=^#)", deployment, re.MULTILINE | re.DOTALL)
    named = set(re.findall(r"^\| `([\w-]+)` \|", table.group(1) if table else "", re.MULTILINE))
    problems += [
        f"docs/deployment.md: service {name} is not in docker-compose.yml"
        for name in sorted(named - services)
    ]
    problems += [
        f"docs/deployment.md: compose service {name} is not described" for name in sorted(services - named)
    ]
    for doc in ("docs/deployment.md", "README.md"):
        for tokens in shell_lines((root / doc).read_text()):
            if tokens[:2] == ["docker", "compose"] and len(tokens) > 2 and tokens[2] in COMPOSE_SERVICE_VERBS:
                rest = [t for t in tokens[3:] if not t.startswith("-")]
                mentioned = rest[:1] if tokens[2] in ("exec", "run") else rest
                problems += [
                    f"{doc}: `{shlex.join(tokens)}` names {s}, no compose service"
                    for s in mentioned
                    if s not in services
                ]
            for args in orchestrator_invocations(tokens, services):
                try:
                    parse_cli(args)
                except ValueError as exc:
                    problems.append(f"{doc}: {exc}")
    for needed in (
        "docker compose up --build",
        "kubectl apply -k deploy/kubernetes",
        ":9090",
        ":3000",
        "flock",
        "ReadWriteMany",
    ):
        if needed not in deployment:
            problems.append(f"docs/deployment.md: does not mention {needed}")
    return problems


CHECKS = [check_compose, check_prometheus, check_alerts, check_dashboard, check_kubernetes, check_dockerfile]
CHECKS += [check_docs]


# -- the tests ---------------------------------------------------------------------------------


def test_the_metric_contract_is_what_metrics_py_creates() -> None:
    from prometheus_client import CollectorRegistry

    from orchestrator.observability.metrics import _create, _create_gauges

    registry = CollectorRegistry()
    made = {**vars(_create(registry)), **vars(_create_gauges(registry))}
    found = {m.name: m.type for collector in made.values() for m in collector.describe()}
    assert found == CONTRACT


def test_promql_names_are_parsed_out_of_expressions() -> None:
    expr = 'sum by (le) (rate(x_bucket{job="a", q="b.c"}[5m] offset 1h)) / on (p) group_left y_total > 0.5 and up'
    assert promql_metric_names(expr) == {"x_bucket", "y_total", "up"}
    assert metric_problems("e", "rate(orchestrator_run_restarts[5m])") == [
        "e: orchestrator_run_restarts is not a contract metric name (orchestrator_run_restarts "
        "is a counter: orchestrator_run_restarts_total)"
    ]


def test_the_cli_parser_refuses_what_the_cli_refuses() -> None:
    assert parse_cli(["worker", "--node", "w", "--metrics-port", "9809"])[1]["metrics_port"] == 9809
    for bad in (["wrker"], ["worker", "--port", "1"], ["worker", "--concurrency", "0"], ["scheduler", "x"]):
        with pytest.raises(ValueError):
            parse_cli(bad)


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_the_repository_passes(check: Any) -> None:
    assert check(ROOT) == []


SOURCES = ["orchestrator", "workers", "checkpoints", "examples"]
TREE = [
    "Dockerfile",
    ".dockerignore",
    "docker-compose.yml",
    "README.md",
    "pyproject.toml",
    "deploy",
    "docs",
    *SOURCES,
]
PROM, ALERTS = f"{PROMETHEUS}/prometheus.yml", f"{PROMETHEUS}/alerts.yml"
BOARD, COMPOSE = "deploy/grafana/dashboards/orchestrator.json", "docker-compose.yml"
WORKER = '"--metrics-port", "9809"]\n    ports:\n      - "127.0.0.1:9813'
MUTATIONS = [  # (file, old, new, a fragment of the problem expected)
    (PROM, "worker-3:9809", "worker-3:9810", "target worker-3:9810: worker-3 serves /metrics on 9809"),
    (PROM, "- scheduler-2:9808\n", "", "scheduler-2 is not scraped"),
    (
        ALERTS,
        "rate(orchestrator_run_restarts_total{",
        "rate(orchestrator_run_restarts{",
        "run_restarts is not",
    ),
    (ALERTS, "severity: critical", "priority: high", "has no severity label"),
    (ALERTS, 'job="orchestrator-worker"', 'job="workers"', "selects job 'workers'"),
    (BOARD, '"uid": "prometheus"', '"uid": "prom"', "is not the provisioned one"),
    (BOARD, "orchestrator_queue_depth{", "orchestrator_queue_size{", "orchestrator_queue_size is not"),
    (f"{K8S}/checkpoints-pvc.yaml", "- ReadWriteMany", "- ReadWriteOnce", "is not ReadWriteMany"),
    (f"{K8S}/secret.yaml", "REPLACE_ME_SECRET_KEY", "9f8e7d6c5b4a3928170f5e4d3c2b1a09", "real-looking"),
    (f"{K8S}/scheduler-deployment.yaml", "replicas: 2", "replicas: 1", "has 1 replicas, not 2"),
    (f"{K8S}/worker-deployment.yaml", 'io/port: "9809"', 'io/port: "9808"', "annotations do not name"),
    (
        f"{K8S}/worker-deployment.yaml",
        "mountPath: /var/lib/orchestrator/checkpoints",
        "mountPath: /c",
        "no Persis",
    ),
    (f"{K8S}/kustomization.yaml", "  - metrics-services.yaml\n", "", "does not list metrics-services.yaml"),
    (COMPOSE, '"worker", "--node", "worker-2"', '"wokrer", "--node", "worker-2"', "no orchestrator command"),
    (COMPOSE, WORKER, WORKER.replace("metrics-port", "metrics-prot"), "No such option: --metrics-prot"),
    (COMPOSE, "condition: service_healthy", "condition: service_started", "to be healthy"),
    (
        COMPOSE,
        "@postgres:5432/orchestrator",
        "@postgres:5432/orchestrator_db",
        "database user, password or name",
    ),
    (
        "Dockerfile",
        'ENTRYPOINT ["orchestrator"]',
        'ENTRYPOINT ["python", "-m", "orchestrator"]',
        "ENTRYPOINT is",
    ),
    (".dockerignore", "!examples/\n", "", "leaves out examples/"),
    ("docs/deployment.md", "docker compose kill worker-2", "docker compose kill worker-9", "names worker-9"),
    (
        "docs/deployment.md",
        "orchestrator runs --state failed",
        "orchestrator runs --status failed",
        "--status",
    ),
]


@pytest.mark.parametrize(("path", "old", "new", "expected"), MUTATIONS, ids=[m[3] for m in MUTATIONS])
def test_a_broken_copy_is_caught(tmp_path: Path, path: str, old: str, new: str, expected: str) -> None:
    for name in TREE:
        if name in SOURCES:  # never mutated: the Dockerfile's COPY checks only read them
            (tmp_path / name).symlink_to(ROOT / name)
        elif (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, tmp_path / name)
        else:
            shutil.copy2(ROOT / name, tmp_path / name)
    text = (tmp_path / path).read_text()
    assert old in text, f"the mutation no longer applies to {path}"
    (tmp_path / path).write_text(text.replace(old, new, 1))
    problems = [problem for check in CHECKS for problem in check(tmp_path)]
    assert any(expected in problem for problem in problems), problems


def test_the_healthcheck_answers_for_a_live_metrics_endpoint() -> None:
    import importlib.util

    from prometheus_client import CollectorRegistry, start_http_server

    spec = importlib.util.spec_from_file_location("healthcheck", ROOT / "deploy/docker/healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=CollectorRegistry())
    port = server.server_address[1]
    try:
        assert module.main(["orchestrator-healthcheck", str(port)]) == 0
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert module.main(["orchestrator-healthcheck", str(port)]) == 1


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not on PATH")
def test_kustomize_builds_the_manifests() -> None:
    result = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    built = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert {(doc["kind"], doc["metadata"]["name"]) for doc in built} == {
        (doc["kind"], doc["metadata"]["name"]) for doc in k8s_docs(ROOT)
    }
    assert all(
        doc["metadata"].get("namespace") == "orchestrator" for doc in built if doc["kind"] != "Namespace"
    )


# -- promtool ----------------------------------------------------------------------------------

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not on PATH (Debian: apt-get install prometheus); the pure-Python checks still run",
)


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


@needs_promtool
def test_promtool_accepts_the_compose_config_and_rules() -> None:
    result = promtool("check", "config", ROOT / PROMETHEUS / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    result = promtool("check", "rules", ROOT / PROMETHEUS / "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_accepts_the_kubernetes_config(tmp_path: Path) -> None:
    for name, text in k8s_prometheus(ROOT).items():
        (tmp_path / name).write_text(text)
    result = promtool("check", "config", tmp_path / "prometheus.yml")
    if result.returncode == 0:
        return
    assert "kubernetes_sd_configs not found" in result.stderr + result.stdout, result.stdout + result.stderr
    # This promtool was built without Kubernetes discovery (Debian's): check the rest with static targets.
    config = yaml.safe_load((tmp_path / "prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        job.pop("kubernetes_sd_configs", None)
        job["static_configs"] = [{"targets": ["10.1.2.3:9808"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = promtool("check", "config", tmp_path / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    pytest.skip(
        "this promtool lacks kubernetes_sd_configs (Debian's build): checked with static targets instead"
    )


SCENARIOS = yaml.safe_load(
    """
# input: [metric, s (a scheduler) or w (a worker node), values, labels]
# expect: [minute, alert, the labels of each alert firing then]
- input:
  - [orchestrator_worker_nodes_alive, s, "3 3 3 0x10"]
  - [orchestrator_worker_nodes_alive, w, "0x13"]   # worker nodes expose the gauge unset
  expect:
  - [2, OrchestratorNoLiveWorkerNodes, []]
  - [6, OrchestratorNoLiveWorkerNodes, [{severity: critical}]]
- input:   # no scheduler at all: no "no nodes" from the workers' zeros, but scheduler down
  - [orchestrator_worker_nodes_alive, w, "0x10"]
  - [up, w, "1x10"]
  expect:
  - [5, OrchestratorNoLiveWorkerNodes, []]
  - [5, OrchestratorSchedulerDown, [{severity: critical, job: orchestrator-scheduler}]]
- input:
  - [up, s, "1 1 1 0x10"]
  - [up, w, "1 1 1 0x10"]
  expect:
  - [6, OrchestratorSchedulerDown, [{severity: critical}]]
  - [9, OrchestratorWorkerMetricsDown, [{severity: warning, job: orchestrator-worker, instance: "w:9809"}]]
- input:
  - [orchestrator_node_loss_detected_total, s, "0x5 1x20"]
  expect:
  - [3, OrchestratorWorkerNodeLost, []]
  - [7, OrchestratorWorkerNodeLost, [{severity: warning}]]
- input:   # labelled counters are born at 1 on their first increment
  - [orchestrator_runs_finished_total, s, "_x20 1x40", {package: orders, state: failed}]
  - [orchestrator_runs_finished_total, w, "1x30 2x30", {package: etl, state: failed}]
  - [orchestrator_runs_finished_total, w, "0+1x60", {package: orders, state: succeeded}]
  expect:
  - [10, OrchestratorRunRestartsExhausted, []]
  - [25, OrchestratorRunRestartsExhausted, [{severity: critical, package: orders}]]
  - [25, OrchestratorRunsFailing, []]
  - [33, OrchestratorRunsFailing, [{severity: warning, package: etl}]]
  - [40, OrchestratorRunRestartsExhausted, []]
  - [50, OrchestratorRunsFailing, []]
- input:
  - [orchestrator_run_restarts_total, s, "0+5x20", {package: orders, reason: node_lost}]
  - [orchestrator_run_restarts_total, s, "0+10x20", {package: orders, reason: manual}]
  expect:
  - [12, OrchestratorRestartStorm, [{severity: warning, reason: node_lost}]]
- input:
  - [orchestrator_queue_depth, s, "0+2x60", {queue: orchestrator.runs}]
  - [orchestrator_queue_depth, s, "50x60", {queue: orchestrator.control}]
  expect:
  - [10, OrchestratorRunQueueGrowing, []]
  - [30, OrchestratorRunQueueGrowing, [{severity: warning, queue: orchestrator.runs}]]
  - [12, OrchestratorControlQueueStuck, [{severity: warning}]]
- input:   # a long but steady queue, a control queue that empties
  - [orchestrator_queue_depth, s, "40x60", {queue: orchestrator.runs}]
  - [orchestrator_queue_depth, s, "0 3 0 3 0 3 0 3 0 3 0 3 0 3 0 3", {queue: orchestrator.control}]
  expect:
  - [30, OrchestratorRunQueueGrowing, []]
  - [14, OrchestratorControlQueueStuck, []]
- input:
  - [orchestrator_recovery_seconds_bucket, w, "0x20", {le: "15"}]
  - [orchestrator_recovery_seconds_bucket, w, "0+1x20", {le: "20"}]
  - [orchestrator_recovery_seconds_bucket, w, "0+1x20", {le: "+Inf"}]
  expect:
  - [10, OrchestratorRecoverySlow, [{severity: warning}]]
- input:
  - [orchestrator_submissions_refused_total, s, "0x5 2x20"]
  expect:
  - [8, OrchestratorSubmissionsRefused, [{severity: warning}]]
  - [20, OrchestratorSubmissionsRefused, []]
- input:   # fenced writes are no failure
  - [orchestrator_checkpoint_writes_total, w, "0x10 1x10", {result: error}]
  - [orchestrator_checkpoint_writes_total, w, "0+1x20", {result: fenced}]
  expect:
  - [5, OrchestratorCheckpointWritesFailing, []]
  - [12, OrchestratorCheckpointWritesFailing, [{severity: critical, instance: "w:9809"}]]
  - [20, OrchestratorCheckpointWritesFailing, []]
- input:
  - [orchestrator_checkpoint_write_seconds_bucket, w, "0x30", {le: "0.25"}]
  - [orchestrator_checkpoint_write_seconds_bucket, w, "0+10x30", {le: "1"}]
  - [orchestrator_checkpoint_write_seconds_bucket, w, "0+10x30", {le: "+Inf"}]
  expect:
  - [8, OrchestratorCheckpointWritesSlow, []]
  - [20, OrchestratorCheckpointWritesSlow, [{severity: warning}]]
- input:   # a scheduler back after downtime counts its missed slots at once (born at 7)
  - [orchestrator_schedule_runs_total, s, "_x10 7x30", {schedule: nightly, result: missed}]
  - [orchestrator_schedule_runs_total, s, "0x40", {schedule: nightly, result: fired}]
  - [orchestrator_schedule_runs_total, s, "0x10 1x30", {schedule: hourly, result: caught_up}]
  - [orchestrator_schedule_runs_total, s, "0+1x40", {schedule: hourly, result: fired}]
  expect:
  - [5, OrchestratorScheduleMissedSlot, []]
  - [12, OrchestratorScheduleMissedSlot, [{severity: warning, schedule: hourly}, {severity: warning, schedule: nightly}]]
  - [30, OrchestratorScheduleMissedSlot, []]
"""
)


def promtool_series(
    name: str, kind: str, values: str, labels: dict[str, str] | None = None
) -> dict[str, str]:
    job = {"s": "orchestrator-scheduler", "w": "orchestrator-worker"}[kind]
    merged = {"job": job, "instance": f"{kind}:{9808 if kind == 's' else 9809}", **(labels or {})}
    return {"series": name + "{" + ",".join(f'{k}="{v}"' for k, v in merged.items()) + "}", "values": values}


@needs_promtool
def test_the_alerts_fire_when_they_should_and_only_then(tmp_path: Path) -> None:
    """Scenarios run by `promtool test rules` on the real expressions (annotations left out)."""
    groups = load(ROOT, f"{PROMETHEUS}/alerts.yml")["groups"]
    for rule in (rule for group in groups for rule in group["rules"]):
        rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump({"groups": groups}))
    tests = [
        {
            "interval": "1m",
            "input_series": [promtool_series(*row) for row in scenario["input"]],
            "alert_rule_test": [
                {
                    "eval_time": f"{minute}m",
                    "alertname": alert,
                    "exp_alerts": [{"exp_labels": labels} for labels in expected],
                }
                for minute, alert, expected in scenario["expect"]
            ],
        }
        for scenario in SCENARIOS
    ]
    (tmp_path / "tests.yml").write_text(
        yaml.safe_dump({"rule_files": ["alerts.yml"], "evaluation_interval": "1m", "tests": tests})
    )
    fired = {alert for scenario in SCENARIOS for _, alert, expected in scenario["expect"] if expected}
    assert fired == {rule["alert"] for rule in alert_rules(ROOT)}, (
        "every alert needs a scenario in which it fires"
    )
    result = promtool("test", "rules", tmp_path / "tests.yml")
    assert result.returncode == 0, result.stdout + result.stderr


# -- the S3 checkpoint store variants -----------------------------------------------------------

K8S_S3 = "deploy/kubernetes-s3"


def test_the_s3_compose_file_points_every_process_at_its_bucket() -> None:
    base = load(ROOT, "docker-compose.yml")
    override = load(ROOT, "docker-compose.s3.yml")
    store = override["services"]["seaweedfs"]
    command = interpolate(" ".join(store["command"]))
    bucket = re.search(r"-bucket=(\S+)", command)
    port = re.search(r"-s3\.port=(\d+)", command)
    assert bucket and port, command
    known = settings_fields()
    processes = orchestrator_services(base)
    assert set(override["services"]) == set(processes) | {"seaweedfs"}
    for name in processes:
        env = {k: interpolate(v) for k, v in environment(override["services"][name]).items()}
        assert set(env) <= known, f"{name}: {set(env) - known} are not settings"
        root = urllib.parse.urlsplit(env["ORCHESTRATOR_CHECKPOINT_ROOT"])
        assert (root.scheme, root.netloc) == ("s3", bucket.group(1)), name
        endpoint = urllib.parse.urlsplit(env["ORCHESTRATOR_S3_ENDPOINT_URL"])
        assert (endpoint.hostname, endpoint.port) == ("seaweedfs", int(port.group(1))), name
        assert override["services"][name]["depends_on"]["seaweedfs"]["condition"] == "service_healthy"
        # The keys the orchestrator signs with are the identity the store is started with.
        store_env = {k: interpolate(v) for k, v in environment(store).items()}
        assert env["ORCHESTRATOR_S3_ACCESS_KEY_ID"] == store_env["S3_ACCESS_KEY_ID"]
        assert env["ORCHESTRATOR_S3_SECRET_ACCESS_KEY"] == store_env["S3_SECRET_ACCESS_KEY"]
    text = (ROOT / "docker-compose.s3.yml").read_text()
    defaults = re.findall(r"\$\{(\w*(?:PASSWORD|KEY|SECRET)\w*):-([^}]*)\}", text)
    assert defaults and all(value.startswith("dev-only-") for _, value in defaults)
    assert "9333" in str(store["healthcheck"]["test"])  # weed mini's master answers there


def _s3_overlay() -> list[dict[str, Any]]:
    result = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / K8S_S3)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not on PATH")
def test_the_s3_kubernetes_overlay_needs_no_read_write_many_volume() -> None:
    built = _s3_overlay()
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in built}
    base = {(doc["kind"], doc["metadata"]["name"]) for doc in k8s_docs(ROOT)}
    assert kinds == base - {("PersistentVolumeClaim", "orchestrator-checkpoints")} | {
        ("Secret", "orchestrator-s3")
    }
    settings = next(
        d["data"]
        for d in built
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "orchestrator-settings"
    )
    assert settings["ORCHESTRATOR_CHECKPOINT_ROOT"].startswith("s3://")
    secret = next(d for d in built if d["kind"] == "Secret" and d["metadata"]["name"] == "orchestrator-s3")
    known = settings_fields()
    assert set(settings) | set(secret["stringData"]) <= known
    assert all(value.startswith("REPLACE_ME") for value in secret["stringData"].values())
    for doc in (d for d in built if d["kind"] == "Deployment"):
        pod = doc["spec"]["template"]["spec"]
        claims = [
            v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
        ]
        assert "orchestrator-checkpoints" not in claims, doc["metadata"]["name"]
        container = pod["containers"][0]
        mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
        assert "/var/lib/orchestrator/checkpoints" not in mounts
        sources = [next(iter(s.values()))["name"] for s in container["envFrom"]]
        assert sources == ["orchestrator-settings", "orchestrator-secrets", "orchestrator-s3"]
        volumes = {v["name"] for v in pod["volumes"]}
        assert {m["name"] for m in container.get("volumeMounts", [])} <= volumes
