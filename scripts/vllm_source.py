"""A vLLM release's Python source, parsed without installing or importing it (for scripts/vllm_api_check.py).

``Source``: the ``vllm/`` tree of a wheel (read as a zip) or an installed copy. ``Resolver``: what a name in a
module is bound to, following imports inside vLLM, star imports, a module's ``__getattr__`` and class bases (C3).
"""
from __future__ import annotations

import ast
import re
import zipfile
from functools import lru_cache
from pathlib import Path


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

    def definitions(self, module: str, name: str, depth: int = 0) -> set:
        """Every definition ``module.name`` can be bound to, over all import branches (``if``/``try``, real or
        TYPE_CHECKING): {(module, name, line)} of classes/functions; an unresolvable branch adds ("?", ...)."""
        if depth > 30 or self.src.parse(module) is None:
            return {("?", f"{module}.{name}", 0)}
        found = set()
        for st, _ in _top_statements(self.src.parse(module)[1].body):
            if isinstance(st, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and st.name == name:
                found.add((module, name, st.lineno))
            elif isinstance(st, ast.ImportFrom) and any((a.asname or a.name) == name for a in st.names):
                a = next(a for a in st.names if (a.asname or a.name) == name)
                base = st.module or ""
                if st.level:
                    parts = self._package(module).split(".")
                    base = ".".join(parts[: len(parts) - st.level + 1] + ([st.module] if st.module else []))
                found |= self.definitions(base, a.name, depth + 1) if base.startswith("vllm") else {("?", base, 0)}
            elif isinstance(st, (ast.Assign, ast.AnnAssign)) and any(
                    isinstance(t, ast.Name) and t.id == name
                    for t in (st.targets if isinstance(st, ast.Assign) else [st.target])):
                found.add(("?", f"{module}.{name} (assigned)", st.lineno))
        return found or {("?", f"{module}.{name} (unbound)", 0)}

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
