"""The package's layers: imports point down only, no circle, no private name taken across modules.

Layers, lowest first (a module belongs to the longest prefix listed):

0. ``shmbus.errors``, ``shmbus.records``, ``shmbus.layout``: names and byte layouts
1. ``shmbus.kernels``: the numba verbs
2. ``shmbus.core``: shared-memory objects, paths, configuration, the compiled verbs
3. ``shmbus.log``: the files on disk and their policies
4. ``shmbus.client``: what a user's process runs (Bus, Producer, Consumer, group membership)
   and ``shmbus.cluster``: the same API on a Kafka cluster (librdkafka)
5. ``shmbus.kafka``: the Kafka protocol listener (the supervisor runs it)
   and ``shmbus.bridge``: copying records between a bus and a Kafka cluster (the supervisor runs it)
   and ``shmbus.aio``: the asyncio clients, over the client's Producer and Consumer
6. ``shmbus.supervisor``: the daemon
7. ``shmbus.cli``: the command line
8. ``shmbus`` itself (``__init__``, ``__main__``)

Every import counts, also one inside a function (it is a dependency all the same).
"""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "shmbus")
LAYERS = {
    "shmbus.errors": 0, "shmbus.records": 0, "shmbus.layout": 0,
    "shmbus.kernels": 1,
    "shmbus.core": 2,
    "shmbus.log": 3,
    "shmbus.client": 4, "shmbus.cluster": 4,
    "shmbus.kafka": 5, "shmbus.bridge": 5, "shmbus.aio": 5,
    "shmbus.supervisor": 6,
    "shmbus.cli": 7,
    "shmbus": 8,
}


def modules() -> dict[str, str]:
    out = {}
    for dp, _dn, fn in os.walk(ROOT):
        for f in fn:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(dp, f), os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(dp, f)
    return out


MODULES = modules()


def compiled() -> set[str]:
    """The compiled modules: a C source with its type stub beside it (``_native.c`` and ``_native.pyi``)."""
    out = set()
    for dp, _dn, fn in os.walk(ROOT):
        for f in fn:
            if f.endswith(".pyi") and f[:-4] + ".c" in fn:
                out.add(os.path.relpath(os.path.join(dp, f), os.path.dirname(ROOT))[:-4].replace(os.sep, "."))
    return out


COMPILED = compiled()


def layer(mod: str) -> int:
    best = max((p for p in LAYERS if mod == p or mod.startswith(p + ".")), key=len)
    return LAYERS[best]


def package(mod: str) -> str:
    path = MODULES.get(mod, "")
    return mod if path.endswith("__init__.py") else mod.rsplit(".", 1)[0]


def imports(mod: str):
    """(imported module, names taken from it, line) for every import of a shmbus module in ``mod``."""
    with open(MODULES[mod]) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "shmbus":
                    yield a.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "shmbus":
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                if sub in MODULES or sub in COMPILED:
                    yield sub, [], node.lineno  # a module, taken from its package
                else:
                    yield node.module, [a.name], node.lineno


def edges():
    for mod in MODULES:
        for target, names, line in imports(mod):
            yield mod, target, names, line


def test_the_layers_are_known():
    assert all(any(m == p or m.startswith(p + ".") for p in LAYERS) for m in MODULES)
    assert "shmbus.core.native" in MODULES and "shmbus.client.consumer" in MODULES
    assert COMPILED == {"shmbus.core._native", "shmbus.bridge._rdk"}


def test_imports_point_down_only():
    up = [f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)}) at line {line}"
          for m, t, _n, line in edges() if t != m and layer(t) > layer(m)]
    assert not up, "\n".join(up)


def test_no_import_circle():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m, t, _n, _line in edges():
        t = t if t in MODULES else t.rsplit(".", 1)[0] if t.rsplit(".", 1)[0] in MODULES else t
        if t in MODULES and t != m and not MODULES[t].endswith("__init__.py"):
            graph[m].add(t)
    # Tarjan's strongly connected components
    index, low, stack, on, comps = {}, {}, [], set(), []

    def visit(v, counter=[0]):  # noqa: B006 (the counter is this search's own)
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not comps, f"import circles: {comps}"


def test_no_private_name_is_taken_across_modules():
    bad = []
    for m, t, names, line in edges():
        if t == m:
            continue
        leaf = t.rsplit(".", 1)[1]
        if leaf.startswith("_") and not leaf.startswith("__") and package(t) != package(m):
            bad.append(f"{m} imports the private module {t} at line {line}")
        bad += [f"{m} imports the private name {t}.{n} at line {line}" for n in names
                if n.startswith("_") and not n.startswith("__")]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("planted, test", [
    ("from shmbus.client.bus import Bus\n", test_imports_point_down_only),
])
def test_the_checks_fail_on_a_planted_import(planted, test, monkeypatch, tmp_path):
    """The walk sees a planted up-arrow (a core module importing the client)."""
    path = tmp_path / "planted.py"
    path.write_text(planted)
    monkeypatch.setitem(MODULES, "shmbus.core.planted", str(path))
    with pytest.raises(AssertionError):
        test()
