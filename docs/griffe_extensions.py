"""Griffe extensions for the API reference (loaded by ``mkdocs.yml``, mkdocstrings' python handler).

``EquinoxModules`` gives ``equinox.Module`` subclasses their ``__init__``. Equinox turns every
``eqx.Module`` subclass into a dataclass at class-creation time, so the constructor
(``CG(rtol=..., atol=...)``) never appears in the source. Griffe's static analysis only recreates
``__init__`` for ``@dataclasses.dataclass``; without this extension the merged class signatures
would be empty and the ``Args:`` sections of module docstrings would be reported as documenting
unknown parameters. The rules follow equinox: fields are the annotated class attributes, parents'
fields first (a redeclared field keeps its parent's position); ``eqx.AbstractVar`` /
``eqx.AbstractClassVar`` annotations and ``field(init=False)`` are not parameters;
``field(default=...)`` and ``field(default_factory=...)`` give defaults; a class that defines
``__init__`` itself, or inherits a hand-written one, is left alone.

``SphinxRoles`` renders the docstrings' Sphinx roles (``:class:`CG```, ``:func:`~a.b.f```): as a
link where the target is a documented public name, as inline code otherwise (an optional
cross-reference, so an unresolvable target is never a build warning).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_MODULE_BASES = {"equinox.Module", "equinox._module.Module"}
_ABSTRACT = {"AbstractVar", "AbstractClassVar"}
_GENERATED = "equinox-init"  # label put on the __init__ methods made here


def _call_args(call: griffe.ExprCall) -> dict[str, Any]:
    return {arg.name: arg.value for arg in call.arguments if hasattr(arg, "name")}


def _field_call(value: Any) -> griffe.ExprCall | None:
    if isinstance(value, griffe.ExprCall):
        path = value.function.canonical_path if isinstance(value.function, griffe.Expr) else ""
        if path.startswith(("equinox", "dataclasses")) and path.rsplit(".", 1)[-1] == "field":
            return value
    return None


def _is_abstract(annotation: Any) -> bool:
    if not isinstance(annotation, griffe.Expr):
        return False
    path = annotation.canonical_path
    return path.startswith("equinox") and path.rsplit(".", 1)[-1] in _ABSTRACT


def _is_equinox_module(cls: griffe.Class, seen: set[str] | None = None) -> bool:
    seen = set() if seen is None else seen
    if cls.path in seen:
        return False
    seen.add(cls.path)
    for base in cls.bases:
        if isinstance(base, griffe.Expr) and base.canonical_path in _MODULE_BASES:
            return True
    return any(_is_equinox_module(parent, seen) for parent in cls.resolved_bases)


def _has_handwritten_init(cls: griffe.Class) -> bool:
    init = cls.members.get("__init__")
    if init is not None:
        return _GENERATED not in init.labels
    return any(_has_handwritten_init(parent) for parent in cls.resolved_bases)


def _own_parameters(cls: griffe.Class) -> list[griffe.Parameter]:
    parameters = []
    for member in cls.members.values():
        if member.is_alias or not member.is_attribute or member.annotation is None:
            continue
        if "property" in member.labels or _is_abstract(member.annotation):
            continue
        if "class-attribute" in member.labels and "instance-attribute" not in member.labels:
            continue  # ClassVar
        call = _field_call(member.value)
        args = _call_args(call) if call is not None else {}
        if args.get("init") == "False":
            continue
        if "default_factory" in args:
            default: Any = griffe.ExprCall(function=args["default_factory"], arguments=[])
        elif call is not None:
            default = args.get("default")
        else:
            default = member.value
        kind = (
            griffe.ParameterKind.keyword_only
            if args.get("kw_only") == "True"
            else griffe.ParameterKind.positional_or_keyword
        )
        parameters.append(
            griffe.Parameter(member.name, annotation=member.annotation, kind=kind, default=default)
        )
    return parameters


def _all_parameters(cls: griffe.Class) -> dict[str, griffe.Parameter]:
    params: dict[str, griffe.Parameter] = {}
    for parent in reversed(cls.resolved_bases):
        params.update(_all_parameters(parent))
    for param in _own_parameters(cls):
        params[param.name] = param
    return params


def _add_init(cls: griffe.Class) -> None:
    if not _is_equinox_module(cls) or _has_handwritten_init(cls):
        return
    params = list(_all_parameters(cls).values())
    kw_only = [p for p in params if p.kind is griffe.ParameterKind.keyword_only]
    positional = [p for p in params if p.kind is not griffe.ParameterKind.keyword_only]
    self_param = griffe.Parameter(
        "self", annotation=None, kind=griffe.ParameterKind.positional_or_keyword, default=None
    )
    init = griffe.Function(
        "__init__",
        lineno=0,
        endlineno=0,
        parent=cls,
        parameters=griffe.Parameters(self_param, *positional, *kw_only),
        returns="None",
    )
    init.labels.add(_GENERATED)
    cls.set_member("__init__", init)


def _walk(obj: griffe.Module | griffe.Class, seen: set[str]) -> None:
    if obj.path in seen:
        return
    seen.add(obj.path)
    for member in list(obj.members.values()):
        if member.is_alias:
            continue
        if member.is_class:
            _walk(member, seen)  # nested classes first does not matter: each is independent
        elif member.is_module:
            _walk(member, seen)
    if isinstance(obj, griffe.Class):
        _add_init(obj)


class EquinoxModules(griffe.Extension):
    """Create the dataclass ``__init__`` of every ``equinox.Module`` subclass in a package."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:  # griffe >= 2
        _walk(pkg, set())

    def on_package_loaded(self, *, pkg: griffe.Module, **kwargs: Any) -> None:  # griffe 1.x
        _walk(pkg, set())


_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|mod|data|obj|exc):`(~?)([\w.]+)(?:\(\))?`")
_PACKAGES = ("bilevel", "distillation")  # the documented packages: public names are `pkg.Name`


def _exports(collection: Any, package: str) -> set[str]:
    try:
        module = collection[package]
    except Exception:  # noqa: BLE001 - package not loaded (yet)
        return set()
    return {str(name) for name in (module.exports or ())}


def _identifier(target: str, obj: griffe.Object, exports: dict[str, set[str]]) -> str:
    parts = target.split(".")
    if parts[0] in exports:  # dotted path into a documented package: its public alias
        return f"{parts[0]}.{parts[-1]}" if parts[-1] in exports[parts[0]] else target
    if len(parts) > 1:
        return target  # outside the documented packages (jax, equinox, ...)
    own = obj.package.name
    for package in (own, *(p for p in exports if p != own)):
        if target in exports.get(package, ()):
            return f"{package}.{target}"
    cls = obj if obj.is_class else obj.parent
    if cls is not None and cls.is_class and target in cls.members:
        return f"{own}.{cls.name}.{target}"
    return f"{own}.{target}"


def _render_roles(obj: griffe.Object, exports: dict[str, set[str]]) -> None:
    if obj.docstring is not None and ":" in obj.docstring.value:

        def replace(match: re.Match) -> str:
            short, target = match.groups()
            title = target.rsplit(".", 1)[-1] if short else target
            ident = _identifier(target, obj, exports)
            # A Markdown code span (not raw <code>): its text is not parsed as emphasis.
            return f'<autoref identifier="{ident}" optional>`{title}`</autoref>'

        obj.docstring.value = _ROLE.sub(replace, obj.docstring.value)
    for member in list(obj.members.values()):
        if not member.is_alias:
            _render_roles(member, exports)


class SphinxRoles(griffe.Extension):
    """Turn ``:role:`target``` into a cross-reference (optional: plain code if unresolved)."""

    def _run(self, pkg: griffe.Module, loader: Any) -> None:
        collection = loader.modules_collection if loader is not None else {}
        exports = {p: _exports(collection, p) for p in _PACKAGES}
        exports[pkg.name] = {str(name) for name in (pkg.exports or ())}
        _render_roles(pkg, exports)

    def on_package(self, *, pkg: griffe.Module, loader: Any = None, **kwargs: Any) -> None:
        self._run(pkg, loader)

    def on_package_loaded(self, *, pkg: griffe.Module, loader: Any = None, **kwargs: Any) -> None:
        self._run(pkg, loader)
