"""One generic registry (a dict, a decorator, ``get``/``create``/``list``) for every kind of component.

Datasets, models and attacks each have one :class:`Registry`. Components come in two ways,
both public:

* the ``register`` decorator, for code in the user's own project;
* an entry-point group (``advbench.attacks``, ``advbench.models``, ``advbench.datasets``) for
  installed packages. advbench's own built-ins are declared in its
  ``pyproject.toml`` under the same groups and are loaded through the same path.

Entry points are loaded lazily (on the first lookup or listing) and once. An entry point may name
an object (registered under the entry point's name) or a module (imported; its decorators register
what it defines). A plugin that fails to import is a warning naming the entry point and the error,
never a crash. Two distributions claiming one name is a :class:`DuplicateNameError` naming both.
"""

from __future__ import annotations

import builtins
import contextlib
import contextvars
import difflib
import fnmatch
import importlib.metadata
import logging
import types
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from advbench.errors import DuplicateNameError, UnknownNameError

__all__ = ["Entry", "PluginWarning", "Registry"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The distribution (package) whose entry point is being loaded, so that registrations made while
#: importing a plugin module are credited to it.
_current_source: contextvars.ContextVar[str | None] = contextvars.ContextVar("_current_source", default=None)


class PluginWarning(UserWarning):
    """A plugin entry point could not be loaded; the rest of advbench keeps working."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered component with where it came from."""

    name: str
    obj: T
    source: str  # distribution name, "advbench" for built-ins, "user" for decorator use in scripts
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """A named collection of components of one kind.

    >>> attacks = Registry("attack", group=None)
    >>> @attacks.register("noop")
    ... def noop(): ...
    >>> attacks.list("no*")
    ['noop']
    """

    def __init__(self, kind: str, *, group: str | None) -> None:
        self.kind = kind
        self.group = group
        self._entries: dict[str, Entry[T]] = {}
        self._loaded = group is None
        self._loading = False
        self.failed_plugins: dict[str, str] = {}
        self._conflict: DuplicateNameError | None = None

    def __repr__(self) -> str:
        return f"Registry(kind={self.kind!r}, group={self.group!r}, n={len(self._entries)})"

    # -- registration -------------------------------------------------------------------------
    def add(self, name: str, obj: T, *, source: str | None = None, **meta: Any) -> T:
        """Register ``obj`` under ``name``; raises :class:`DuplicateNameError` if it is taken."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        src = source or _current_source.get() or _caller_source(obj)
        old = self._entries.get(name)
        if old is not None and old.obj is not obj:
            raise DuplicateNameError(
                f"{self.kind} {name!r} is registered twice: by {old.source!r} and by {src!r}. "
                f"Rename one of them or uninstall one of the packages."
            )
        self._entries[name] = Entry(name, obj, src, dict(meta))
        return obj

    def register(self, name: str | None = None, **meta: Any) -> Callable[[T], T]:
        """Decorator: ``@registry.register("name", **meta)``; the name defaults to the object's ``__name__``.

        ``meta`` is kept with the entry and read back with :meth:`metadata`.
        """

        def deco(obj: T) -> T:
            self.add(name or str(getattr(obj, "__name__", "")), obj, **meta)
            return obj

        return deco

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests and interactive use)."""
        self._entries.pop(name, None)

    # -- lookup -------------------------------------------------------------------------------
    def get(self, name: str) -> T:
        """The component registered as ``name``; unknown names raise with close matches."""
        return self.entry(name).obj

    def metadata(self, name: str) -> Mapping[str, Any]:
        """The metadata ``name`` was registered with (read-only), without calling or building it.

        Whatever keyword arguments were given to :meth:`register` or :meth:`add` besides the name,
        e.g. a model's layer names (``@register_model("cnn", layers=(...))``) or an attack's norm.
        """
        return types.MappingProxyType(self.entry(name).meta)

    def entry(self, name: str) -> Entry[T]:
        self.load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            names = sorted(self._entries)
            close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
            lower = {n.lower(): n for n in names}
            if name.lower() in lower and lower[name.lower()] not in close:
                close.insert(0, lower[name.lower()])
            raise UnknownNameError(self.kind, name, close, names) from None

    def create(self, name: str, /, **kwargs: Any) -> Any:
        """Call the registered factory ``name`` with keyword arguments."""
        factory = self.get(name)
        if not callable(factory):
            raise TypeError(f"{self.kind} {name!r} is not callable; it is {type(factory).__name__}")
        return factory(**kwargs)

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted names matching a glob ``pattern`` (case-insensitive)."""
        self.load_plugins()
        return sorted(n for n in self._entries if fnmatch.fnmatch(n.lower(), pattern.lower()))

    def entries(self, pattern: str = "*") -> builtins.list[Entry[T]]:  # `list` is the method here
        return [self._entries[n] for n in self.list(pattern)]

    def __contains__(self, name: object) -> bool:
        self.load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        self.load_plugins()
        return len(self._entries)

    # -- plugins ------------------------------------------------------------------------------
    def load_plugins(self) -> None:
        """Load the entry-point group once. Broken plugins warn; duplicates raise.

        Every entry point is tried even when one of them clashes with another, so the error names
        all the clashes at once; the registry keeps raising it until the clash is resolved.
        """
        if self._conflict is not None:
            raise self._conflict
        if self._loaded or self._loading or self.group is None:
            return
        self._loading = True
        clashes: list[str] = []
        try:
            eps = sorted(
                importlib.metadata.entry_points(group=self.group),
                key=lambda ep: (_dist_name(ep) != "advbench", _dist_name(ep), ep.name),
            )
            for ep in eps:
                try:
                    self._load_entry_point(ep)
                except DuplicateNameError as exc:
                    clashes.append(str(exc))
        finally:
            self._loading = False
            self._loaded = True
        if clashes:
            self._conflict = DuplicateNameError(
                f"the {self.group!r} entry points clash: " + " ".join(clashes) if len(clashes) > 1 else clashes[0]
            )
            raise self._conflict

    def _load_entry_point(self, ep: importlib.metadata.EntryPoint) -> None:
        dist = _dist_name(ep)
        token = _current_source.set(dist)
        try:
            try:
                obj = ep.load()
            except DuplicateNameError:
                raise  # a module plugin registering a taken name: a clash, not a broken plugin
            except (
                Exception,
                SystemExit,
            ) as exc:  # a broken plugin (even one calling sys.exit) must not take advbench down
                msg = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, SystemExit):
                    msg = f"it called sys.exit({exc.code!r}) while being imported"
                self.failed_plugins[f"{ep.name} ({dist})"] = msg
                warnings.warn(
                    f"advbench could not load the {self.kind} plugin {ep.name!r} = {ep.value!r} "
                    f"from the package {dist!r}: {msg}. It is skipped; fix or uninstall that package.",
                    PluginWarning,
                    stacklevel=4,
                )
                return
            if not isinstance(obj, types.ModuleType):
                self.add(ep.name, obj, source=dist)
        finally:
            _current_source.reset(token)


def _dist_name(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return getattr(dist, "name", None) or "unknown"


def _caller_source(obj: Any) -> str:
    # an object wrapping user code (a claim wraps its statistic) is credited to the code it wraps
    module = getattr(getattr(obj, "__wrapped__", obj), "__module__", "") or ""
    return "advbench" if module.split(".")[0] == "advbench" else "user"


@contextlib.contextmanager
def source(name: str) -> Iterator[None]:
    """Credit registrations made inside the block to the distribution ``name``."""
    token = _current_source.set(name)
    try:
        yield
    finally:
        _current_source.reset(token)
