"""The ComfyUI API contract: which ComfyUI symbols the pack and its scripts use, read from their source, and a check
of a recorded list of them (tests/data/comfyui_api.toml) against the ComfyUI that is installed.

Three kinds of entries:
- symbol: a module-level name or a dotted name inside a module (`comfy.samplers` / `CFGGuider`,
  `comfy_api.v0_0_2` / `io.Int.Input`), with the keyword arguments the pack passes when it calls it (`params`);
- override: a method of a ComfyUI class that a pack class overrides, with the override's parameter names;
- attribute: an instance attribute or method the pack reads on objects ComfyUI hands it (these cannot be found by
  reading the pack's source, so they are listed by hand; checked in the class or its bases);
- optional: a newer symbol the pack uses only where it exists (looked up with getattr, with a fallback), listed by
  hand; absence is fine, but where it exists it must still take the listed parameters.
Symbols and overrides are found by reading the pack's source (imports of ComfyUI's modules, attribute chains on them,
keyword arguments of calls, methods of subclasses), so the recorded list cannot fall behind the code.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = ROOT / "tests" / "data" / "comfyui_api.toml"
# What users run: the pack itself and the scripts the README documents (tests and benchmarks are not shipped paths).
SOURCES = ("__init__.py", "controlnext", "dwpose", "nodes", "scripts")
# ComfyUI's top-level modules (see pyproject's isort list); `utils` is ComfyUI's utils package.
PASS_THROUGH = "*"  # in an override's params: it takes *args/**kwargs, so parameters core adds reach it
COMFY_TOP = frozenset({"comfy", "comfy_api", "comfy_extras", "comfy_execution", "comfyui_version", "execution",
                       "folder_paths", "latent_preview", "node_helpers", "nodes", "server", "utils", "app"})


@dataclass(frozen=True)
class Use:
    kind: str  # "symbol" or "override"
    module: str
    name: str


@dataclass
class Scan:
    """What the source uses: symbol/override -> keyword or parameter names, and where each was seen."""

    params: dict[Use, set[str]] = field(default_factory=dict)
    where: dict[Use, str] = field(default_factory=dict)

    def add(self, use: Use, names: Iterable[str], where: str) -> None:
        self.params.setdefault(use, set()).update(names)
        self.where.setdefault(use, where)


def source_files(root: Path = ROOT) -> list[Path]:
    files: list[Path] = []
    for entry in SOURCES:
        path = root / entry
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return files


def _split_module(dotted: str) -> tuple[str, str]:
    """("comfy.model_management", "get_torch_device") for "comfy.model_management.get_torch_device": the longest
    importable prefix is the module."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if found:
            return module, ".".join(parts[cut:])
    return parts[0], ".".join(parts[1:])


def _chain(node: ast.AST) -> list[str] | None:
    """["io", "Int", "Input"] for the expression io.Int.Input; None if it is not a plain name/attribute chain."""
    names: list[str] = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    names.append(node.id)
    return names[::-1]


class _Scanner(ast.NodeVisitor):
    def __init__(self, scan: Scan, where: str) -> None:
        self.scan = scan
        self.where = where
        self.aliases: dict[str, str] = {}  # local name -> dotted ComfyUI path it stands for

    def visit_Import(self, node: ast.Import) -> None:  # noqa: N802 (ast visitor names)
        for alias in node.names:
            if alias.name.split(".")[0] in COMFY_TOP:
                if alias.asname:
                    self.aliases[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    self.aliases[top] = top
                    self._use(alias.name, (), node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:  # noqa: N802
        if node.level or not node.module or node.module.split(".")[0] not in COMFY_TOP:
            return
        for alias in node.names:
            self.aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            self._use(f"{node.module}.{alias.name}", (), node)

    def _resolve(self, expr: ast.AST) -> str | None:
        chain = _chain(expr)
        if not chain or chain[0] not in self.aliases:
            return None
        return ".".join([self.aliases[chain[0]], *chain[1:]])

    def _use(self, dotted: str, keywords: Iterable[str], node: ast.AST) -> None:
        module, name = _split_module(dotted)
        if name:
            self.scan.add(Use("symbol", module, name), keywords, f"{self.where}:{node.lineno}")

    def visit_Attribute(self, node: ast.Attribute) -> None:  # noqa: N802
        dotted = self._resolve(node)
        if dotted is not None:
            self._use(dotted, (), node)
            return  # the longest chain only: io.Int.Input, not also io.Int
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:  # noqa: N802
        dotted = self._resolve(node.func)
        if dotted is not None:
            self._use(dotted, [k.arg for k in node.keywords if k.arg], node)
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:  # noqa: N802
        for base in node.bases:
            dotted = self._resolve(base)
            if dotted is None:
                continue
            module, name = _split_module(dotted)
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    args = item.args
                    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)][1:]  # no self/cls
                    if item.name.startswith("__"):
                        names = []  # a constructor or dunder: the pack calls it itself, only its presence matters
                    elif args.vararg or args.kwarg:
                        names.append(PASS_THROUGH)  # passes on whatever else core gives it
                    use = Use("override", module, f"{name}.{item.name}")
                    self.scan.add(use, names, f"{self.where}:{item.lineno}")
        self.generic_visit(node)


def scan_sources(files: Iterable[Path] | None = None) -> Scan:
    scan = Scan()
    for path in files if files is not None else source_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        _Scanner(scan, str(path.relative_to(ROOT))).visit(tree)
    return scan


def _resolve_object(module: str, name: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in name.split(".") if name else ():
        obj = getattr(obj, part)
    return obj


def used_contract(scan: Scan) -> dict[Use, set[str]]:
    """The scan's symbols, and its overrides of methods the ComfyUI base class really has (a pack class's own new
    methods are not part of the contract)."""
    used: dict[Use, set[str]] = {}
    for use, names in scan.params.items():
        if use.kind == "override":
            cls_name, method = use.name.rsplit(".", 1)
            try:
                base = _resolve_object(use.module, cls_name)
            except (ImportError, AttributeError):
                used[use] = names  # a missing base is reported by the host check
                continue
            if not hasattr(base, method):
                continue
            signature = _parameters(getattr(base, method))
            if signature is not None and signature[1]:
                names = set()  # the base takes **kwargs (e.g. ComfyNode.execute): any parameters fit
        used[use] = names
    return used


@dataclass
class Contract:
    entries: dict[Use, set[str]]  # symbols, overrides and optional symbols -> params (newer_params included)
    attributes: list[dict[str, Any]]
    newer: dict[Use, set[str]]  # a symbol's keyword arguments passed only where the host has them


def load_contract(path: Path = CONTRACT) -> Contract:
    """The recorded contract."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    entries: dict[Use, set[str]] = {}
    newer: dict[Use, set[str]] = {}
    for kind in ("symbol", "override", "optional"):
        for item in data.get(kind, []):
            use = Use(kind, item["module"], item["name"])
            newer[use] = set(item.get("newer_params", []))
            entries[use] = set(item.get("params", [])) | newer[use]
    return Contract(entries, list(data.get("attribute", [])), newer)


def as_toml(entries: dict[Use, set[str]]) -> str:
    """Entries in the contract file's format (what a failing test prints for copying)."""
    out = []
    for use in sorted(entries, key=lambda u: (u.kind, u.module, u.name)):
        out.append(f'[[{use.kind}]]\nmodule = "{use.module}"\nname = "{use.name}"')
        if entries[use]:
            out.append("params = [" + ", ".join(f'"{p}"' for p in sorted(entries[use])) + "]")
        out.append("")
    return "\n".join(out)


def _parameters(obj: Any) -> tuple[set[str], bool] | None:
    """(parameter names, takes **kwargs) of a callable, None when it has no signature (builtins)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    names = {p.name for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return names, any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def _assigned_in_class(cls: type, attr: str) -> bool:
    name = re.escape(attr)  # `self.x = ...`, `self.x: T = ...`, or a tuple target `self.x, self.y = ...`
    pattern = re.compile(rf"\bself\.{name}\s*(?::[^=\n]+)?=(?!=)|\bself\.{name}\s*,[^\n=]*=(?!=)")
    for klass in inspect.getmro(cls):
        if attr in getattr(klass, "__annotations__", {}):  # a dataclass / NamedTuple field
            return True
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        if pattern.search(source):
            return True
    return False


def check_host(entries: dict[Use, set[str]], attributes: list[dict[str, Any]],
               newer: dict[Use, set[str]] | None = None) -> list[str]:
    """Problems of the installed ComfyUI against the contract, one readable line each (empty: all there).

    newer: keyword arguments of a symbol that the pack passes only on hosts that have them (recorded as
    `newer_params`): not required here."""
    newer = newer or {}
    problems = []
    for use, params in sorted(entries.items(), key=lambda kv: (kv[0].kind, kv[0].module, kv[0].name)):
        label = f"{use.module}.{use.name}"
        try:
            obj = _resolve_object(use.module, use.name)
        except (ImportError, AttributeError) as exc:
            if use.kind != "optional":
                problems.append(f"{use.kind} {label}: missing ({exc})")
            continue
        if not params:
            continue
        signature = _parameters(obj)
        if signature is None:
            continue
        names, var_keyword = signature
        if use.kind == "override":
            names -= {"self", "cls"}  # the base method, read from its class: unbound
            own = params - {PASS_THROUGH}
            missing = sorted(p for p in own if p not in names and not var_keyword)
            extra = [] if PASS_THROUGH in params else sorted(p for p in names if p not in own)
            if missing or extra:
                problems.append(f"override {label}: the pack's parameters {sorted(own)} no longer match ComfyUI's "
                                f"{sorted(names)}")
        else:
            missing = sorted(p for p in params - newer.get(use, set()) if p not in names)
            if missing and not var_keyword:
                problems.append(f"{use.kind} {label}: no longer takes {', '.join(missing)} (takes {sorted(names)})")
    for item in attributes:
        label = f"{item['module']}.{item['name']}"
        cls_name, attr = item["name"].rsplit(".", 1)
        try:
            cls = _resolve_object(item["module"], cls_name)
        except (ImportError, AttributeError) as exc:
            problems.append(f"attribute {label}: class missing ({exc})")
            continue
        if not (hasattr(cls, attr) or _assigned_in_class(cls, attr)):
            problems.append(f"attribute {label}: neither defined on the class nor assigned as self.{attr}")
    return problems
