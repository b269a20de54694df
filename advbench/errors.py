"""Exception types shared by every stage of advbench.

Every error says what was given, what was expected and how to fix it.
"""

from __future__ import annotations


class AdvbenchError(Exception):
    """Base class for errors raised by advbench on bad input or a failed run."""


class UnknownNameError(AdvbenchError, KeyError):
    """A name was looked up in a registry that does not hold it."""

    def __init__(self, kind: str, name: str, close: list[str], available: list[str]) -> None:
        self.kind, self.name, self.close, self.available = kind, name, close, available
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        shown = ", ".join(available[:20]) + (", ..." if len(available) > 20 else "")
        super().__init__(
            f"unknown {kind} {name!r}.{hint} Available: {shown or '(none)'}. "
            f"Run `advbench list {kind}s` to see them all."
        )

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])

    def __reduce__(self) -> tuple[type, tuple[str, str, list[str], list[str]]]:  # picklable (Ray workers)
        return (type(self), (self.kind, self.name, self.close, self.available))


class DuplicateNameError(AdvbenchError):
    """Two registrations claimed one name."""


class ConfigError(AdvbenchError):
    """A suite file is malformed; carries every problem found."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path, self.problems = path, list(problems)
        body = "\n".join(f"  - {p}" for p in self.problems)
        n = len(self.problems)
        super().__init__(f"{path}: {n} problem{'s' if n != 1 else ''} in the suite:\n{body}")

    def __reduce__(self) -> tuple[type, tuple[str, list[str]]]:  # picklable (Ray workers)
        return (type(self), (self.path, self.problems))


class DataError(AdvbenchError):
    """A dataset could not be found, read or verified."""


class ThreatModelError(AdvbenchError):
    """An adversarial batch violates its threat model (eps-ball, box, finiteness, shape)."""


class NonFiniteLossError(AdvbenchError):
    """Training produced a non-finite loss term."""


class CacheError(AdvbenchError):
    """A cache entry is missing, corrupt or does not match what was asked for."""
