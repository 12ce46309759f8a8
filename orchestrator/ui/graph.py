"""The package graph as SVG, laid out on the server (no JavaScript, no layout library).

A layered (Sugiyama-style) drawing, left to right: each task sits one layer
right of its deepest dependency; an edge that spans several layers passes
through placeholder points so that it bends around the tasks in between;
within a layer the tasks are ordered by a few barycenter sweeps, which removes
most crossings of ETL-shaped graphs. Every text is escaped here, since the
result is inserted into the page as markup.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from markupsafe import Markup

NODE_W, NODE_H = 180, 48
GAP_X, GAP_Y, PAD = 60, 18, 12
SWEEPS = 4
NAME_CHARS = 22


@dataclass(frozen=True)
class GraphTask:
    """One task to draw: its id, dependencies, state and an optional progress text."""

    id: str
    depends_on: Sequence[str]
    state: str
    progress: str | None = None
    kinds: Mapping[str, str] = field(default_factory=dict)  # dependency -> failure|completion (else success)


@dataclass
class _Layout:
    """Layers of node keys (task ids, or ``(source, target, n)`` placeholders) and edge paths."""

    layers: list[list[object]] = field(default_factory=list)
    paths: list[tuple[str, str, list[object]]] = field(default_factory=list)


def layers_of(tasks: Sequence[GraphTask]) -> dict[str, int]:
    """Layer of each task: 0 without dependencies, else one more than its deepest dependency.

    Dependencies on unknown tasks are ignored; a cycle (a validated package has none)
    puts its tasks after everything else rather than looping.
    """
    known = {t.id: [d for d in t.depends_on if d != t.id] for t in tasks}
    known = {k: [d for d in deps if d in known] for k, deps in known.items()}
    layer: dict[str, int] = {}
    pending = [t.id for t in tasks]
    while pending:
        ready = [k for k in pending if all(d in layer for d in known[k])]
        if not ready:  # a cycle: place the rest after everything
            base = max(layer.values(), default=-1) + 1
            layer.update(dict.fromkeys(pending, base))
            break
        for key in ready:
            layer[key] = max((layer[d] + 1 for d in known[key]), default=0)
        pending = [k for k in pending if k not in layer]
    return layer


def _build(tasks: Sequence[GraphTask]) -> _Layout:
    layer = layers_of(tasks)
    layout = _Layout([[] for _ in range(max(layer.values(), default=-1) + 1)])
    for task in tasks:
        layout.layers[layer[task.id]].append(task.id)
    for task in tasks:
        for dep in task.depends_on:
            if dep not in layer or dep == task.id:
                continue
            points: list[object] = [dep]
            for step in range(layer[dep] + 1, layer[task.id]):
                placeholder = (dep, task.id, step)
                layout.layers[step].append(placeholder)
                points.append(placeholder)
            layout.paths.append((dep, task.id, [*points, task.id]))
    return layout


def _neighbours(layout: _Layout) -> tuple[dict[object, list[object]], dict[object, list[object]]]:
    up: dict[object, list[object]] = {}
    down: dict[object, list[object]] = {}
    for _, _, points in layout.paths:
        for a, b in itertools.pairwise(points):
            down.setdefault(a, []).append(b)
            up.setdefault(b, []).append(a)
    return up, down


def _order(layout: _Layout) -> None:
    """Barycenter sweeps: sort each layer by the mean position of its neighbours in the previous one."""
    up, down = _neighbours(layout)
    for sweep in range(SWEEPS):
        forward = sweep % 2 == 0
        indices = range(1, len(layout.layers)) if forward else range(len(layout.layers) - 2, -1, -1)
        for i in indices:
            previous = layout.layers[i - 1] if forward else layout.layers[i + 1]
            where = {key: n for n, key in enumerate(previous)}
            links = up if forward else down
            keyed = [(_barycenter(links.get(k, []), where, n), n, k) for n, k in enumerate(layout.layers[i])]
            layout.layers[i] = [k for _, _, k in sorted(keyed, key=lambda entry: entry[:2])]


def _barycenter(near: list[object], where: Mapping[object, int], own: int) -> float:
    """Mean position of the ``near`` nodes in the neighbouring layer; a node without any keeps its place."""
    found = [where[n] for n in near if n in where]
    return sum(found) / len(found) if found else float(own)


def _positions(layout: _Layout) -> tuple[dict[object, tuple[int, int]], int, int]:
    """Top-left corner of every node key; the drawing's width and height."""
    tallest = max((len(layer) for layer in layout.layers), default=0)
    height = 2 * PAD + tallest * NODE_H + max(0, tallest - 1) * GAP_Y
    width = 2 * PAD + len(layout.layers) * NODE_W + max(0, len(layout.layers) - 1) * GAP_X
    at: dict[object, tuple[int, int]] = {}
    for i, layer in enumerate(layout.layers):
        used = len(layer) * NODE_H + max(0, len(layer) - 1) * GAP_Y
        top = PAD + (height - 2 * PAD - used) // 2
        for n, key in enumerate(layer):
            at[key] = (PAD + i * (NODE_W + GAP_X), top + n * (NODE_H + GAP_Y))
    return at, width, height


def _edge(points: list[object], at: Mapping[object, tuple[int, int]]) -> str:
    """A smooth path from the right side of the first node through placeholders to the last's left."""
    anchors: list[tuple[int, int]] = []
    for n, key in enumerate(points):
        x, y = at[key]
        mid = y + NODE_H // 2
        if n == 0:
            anchors.append((x + NODE_W, mid))
        elif n == len(points) - 1:
            anchors.append((x, mid))
        else:  # a placeholder: pass straight through its slot
            anchors.extend([(x, mid), (x + NODE_W, mid)])
    d = f"M{anchors[0][0]},{anchors[0][1]}"
    for (x1, y1), (x2, y2) in itertools.pairwise(anchors):
        if y1 == y2:
            d += f" L{x2},{y2}"
        else:
            bend = (x2 - x1) // 2
            d += f" C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}"
    return d


def _short(name: str) -> str:
    return name if len(name) <= NAME_CHARS else name[: NAME_CHARS - 1] + "…"


_NODE = Markup(
    '<g class="task state-{state}" id="task-{id}" data-task="{id}" data-state="{state}">'
    "<title>{tip}</title>"
    '<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="6"></rect>'
    '<text class="name" x="{tx}" y="{ny}">{name}</text>'
    '<text class="detail" x="{tx}" y="{dy}">{detail}</text>'
    "</g>"
)
_EDGE = Markup(
    '<path class="edge from-{state} on-{kind}" data-from="{source}" data-to="{target}" d="{d}" '
    'marker-end="url(#arrow)"></path>'
)
_SVG = Markup(
    '<svg xmlns="http://www.w3.org/2000/svg" class="graph" role="img" aria-label="package graph" '
    'width="{w}" height="{h}" viewBox="0 0 {w} {h}">'
    '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
    'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z"></path></marker></defs>'
    "{edges}{nodes}</svg>"
)


def _node(task: GraphTask, x: int, y: int) -> Markup:
    detail = task.state.replace("_", " ") + (f" · {task.progress}" if task.progress else "")
    return _NODE.format(
        state=task.state,
        id=task.id,
        tip=f"{task.id}: {detail}",
        x=x,
        y=y,
        w=NODE_W,
        h=NODE_H,
        tx=x + 10,
        ny=y + 20,
        dy=y + 38,
        name=_short(task.id),
        detail=detail,
    )


def render_svg(tasks: Sequence[GraphTask]) -> Markup:
    """The graph of ``tasks`` as an ``<svg>`` element; every value is escaped by the templates."""
    layout = _build(tasks)
    _order(layout)
    at, width, height = _positions(layout)
    states = {t.id: t.state for t in tasks}
    kinds = {(source, t.id): kind for t in tasks for source, kind in t.kinds.items()}
    edges = [
        _EDGE.format(
            state=states.get(src, "pending"),
            kind=kinds.get((src, dst), "success"),
            source=src,
            target=dst,
            d=_edge(points, at),
        )
        for src, dst, points in layout.paths
    ]
    nodes = [_node(t, *at[t.id]) for t in tasks]
    return _SVG.format(w=width, h=height, edges=Markup("").join(edges), nodes=Markup("").join(nodes))
