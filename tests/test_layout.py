"""The package's shape: no import cycles (lazy imports inside functions count too: they are how a cycle hides),
and no source file over the size a reader takes in at once."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "tango_prune"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (anywhere in its body), by name."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in mods}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                # `from pkg import sub` imports the module pkg.sub; `from pkg import name` imports pkg
                subs = {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods}
                edges |= subs or ({target} if target in mods else set())
        graph[name] = edges - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_lazy_and_relative_imports():
    g = import_graph()
    assert "tango_prune.cli.demo" in g["tango_prune.cli"]  # imported inside main()
    assert "tango_prune.types" in g["tango_prune.pruner"]


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, f"import cycles: {found}"


def test_no_file_over_the_limit():
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def _edges(graph: dict[str, set[str]], src: str, dst: str) -> list[tuple[str, str]]:
    """Imports from modules of package ``src`` (e.g. "eval") of modules of package ``dst``."""
    def inside(m: str, pkg: str) -> bool:
        return m == f"tango_prune.{pkg}" or m.startswith(f"tango_prune.{pkg}.")

    return sorted((m, t) for m, targets in graph.items() if inside(m, src) for t in targets if inside(t, dst))


def test_eval_and_testbed_depend_one_way():
    """eval/ holds harnesses for any model, testbed/ one model built on them (or the other way): never both, which
    is how a two-way dependency starts before it becomes a cycle."""
    g = import_graph()
    both = _edges(g, "eval", "testbed"), _edges(g, "testbed", "eval")
    assert not all(both), f"eval -> testbed {both[0]} and testbed -> eval {both[1]}"


def test_the_engine_plugins_do_not_import_the_testbed():
    """An engine integration (lmms-eval, vLLM) runs real checkpoints; the testbed is ours alone."""
    found = _edges(import_graph(), "integrations", "testbed")
    assert not found, f"integrations import the testbed: {found}"
