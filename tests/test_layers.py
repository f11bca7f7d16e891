"""The import graph of btok_kernels and btok_model runs one way, down the layers of docs/design.md
(kernels -> backend -> embedder -> inference -> training / evaluation -> command lines), with the
data readers and the small shared helpers below the embedder, and no module-level import cycle.

Only module-level imports count (an import inside a function is how a lower layer may reach an
optional package lazily); the graph is read from the source with ``ast``, nothing is imported.
"""

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The rank of each part: a module may import modules of its own part or of a lower rank.
RANKS = {
    "btok_kernels": 0,
    "btok_model.deprecation": 1,  # leaf helpers any layer may use
    "btok_model.cli": 1,
    "btok_model.backend": 2,
    "btok_model.datasets": 2,  # records, readers and rendering rules: no model
    "btok_model.embedder": 3,
    "btok_model.inference": 4,
    "btok_model.training": 5,
    "btok_model.evaluation": 5,
    "btok_model": 6,  # the package root, the command lines and the integrations (mine, st, mteb, ...)
}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in ("btok_kernels", "btok_model"):
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


MODULES = _modules()


def _targets(module: str, path: Path, node: ast.stmt) -> list[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        if node.level:
            package = package[: len(package) - node.level + 1]
            base = ".".join(package + ([node.module] if node.module else []))
        else:
            base = node.module
        submodules = [f"{base}.{alias.name}" for alias in node.names]
        # "from . import x" names submodules only; "from .m import x" names m (or m.x, a submodule)
        names = submodules if node.module is None else [base, *submodules]
    found = []
    for name in names:
        while name not in MODULES and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in MODULES and name != module:
            found.append(name)
    return found


@functools.cache  # read once for the module's tests (callers that change it take a copy)
def _graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        deps = set()
        for top in ast.parse(path.read_text()).body:
            nested = top.body + getattr(top, "orelse", []) if isinstance(top, ast.If | ast.Try) else [top]
            for node in nested:
                if isinstance(node, ast.Import | ast.ImportFrom):
                    deps.update(_targets(module, path, node))
        graph[module] = deps
    return graph


def _rank(module: str) -> int:
    part = max((p for p in RANKS if module == p or module.startswith(p + ".")), key=len)
    return RANKS[part]


def test_the_graph_is_read():
    graph = _graph()
    # a known edge of each kind, so that a parser that reads nothing cannot pass the tests below
    assert "btok_kernels" in graph["btok_model.backend.attention"] or any(
        d.startswith("btok_kernels") for d in graph["btok_model.backend.attention"]
    )
    assert any(d.startswith("btok_model.embedder") for d in graph["btok_model.training.trainer"])
    assert sum(len(d) for d in graph.values()) > 100


def test_no_import_runs_up_a_layer():
    upward = [
        f"{module} (rank {_rank(module)}) imports {dep} (rank {_rank(dep)})"
        for module, deps in _graph().items()
        for dep in sorted(deps)
        if _rank(dep) > _rank(module)
    ]
    assert not upward, "\n".join(upward)


def test_no_module_level_import_cycle():
    graph = _graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in graph[node]:
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    # a package's __init__ importing its own submodules is not a cycle unless a submodule imports
    # the package back at module level; those count
    assert not cycles, cycles


def test_an_upward_import_fails():
    # The check itself: an embedder module importing the training package is reported.
    assert _rank("btok_model.training.trainer") > _rank("btok_model.embedder.base")
    graph = dict(_graph())
    graph["btok_model.embedder.collate"] = graph["btok_model.embedder.collate"] | {"btok_model.training.trainer"}
    upward = [(m, d) for m, ds in graph.items() for d in ds if _rank(d) > _rank(m)]
    assert ("btok_model.embedder.collate", "btok_model.training.trainer") in upward
