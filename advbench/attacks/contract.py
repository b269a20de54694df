"""What an attack plugin may not do, checked around every call: the guard behind ``Attack.__call__``.

A plugin runs in advbench's process with the model, the inputs and torch's global state within
reach. The contract does not trust it:

* it gets copies of the clean inputs and labels; the contract keeps its own and refuses a batch
  whose inputs or labels were changed in place (:func:`check_unchanged`);
* the model's weights and buffers (persistent or not) are compared before and after, and restored;
* torch's global state that a plugin can change (grad mode, inference mode, default dtype, thread
  count, deterministic-algorithms mode, cuDNN/TF32/matmul-precision flags, anomaly detection) and
  the hooks on the model and the global module hooks are snapshotted before the call and restored
  after it; a change is that attack's failure (:class:`AttackContractError` naming the attack and
  what changed), so a later, innocent cell is never blamed. Using torch's RNG is fine;
* ``sys.exit`` inside a plugin is that attack's failure, not the end of the run; ``KeyboardInterrupt``
  still propagates (the user pressed Ctrl-C);
* a time limit the plugin cannot swallow: :func:`run_with_time_limit` runs a callable in a child
  process and kills it (SIGKILL) when the time is up. Tensors come back through a safetensors file
  the child writes, errors as JSON; nothing the child produces is unpickled.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advbench.errors import AdvbenchError, ThreatModelError

__all__ = [
    "CHILD_THREADS",
    "AttackContractError",
    "AttackTimeoutError",
    "GlobalState",
    "call_plugin",
    "check_unchanged",
    "guard_global_state",
    "run_with_time_limit",
]

log = logging.getLogger(__name__)

#: torch's thread count inside a :func:`run_with_time_limit` child (see ``_child_main``).
CHILD_THREADS = 1


class AttackContractError(ThreatModelError):
    """An attack broke the plugin contract (changed its inputs, the model or torch's global state, or exited)."""


class AttackTimeoutError(AdvbenchError):
    """An attack ran past its time limit and its child process was killed."""


# -- global state -------------------------------------------------------------------------------

#: Per-module hook dictionaries a plugin could add to (or remove from); restored after each call.
_MODULE_HOOKS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
)
#: Global (every-module) hook dictionaries in torch.nn.modules.module.
_GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
    "_global_forward_hooks_always_called",
    "_global_forward_hooks_with_kwargs",
)


def _flags() -> dict[str, Any]:
    """torch's global switches a plugin can flip, by name (only the ones this torch has)."""
    out: dict[str, Any] = {
        "grad mode (torch.is_grad_enabled)": torch.is_grad_enabled(),
        "inference mode": torch.is_inference_mode_enabled(),
        "default dtype (torch.set_default_dtype)": torch.get_default_dtype(),
        "thread count (torch.set_num_threads)": torch.get_num_threads(),
        "deterministic algorithms (torch.use_deterministic_algorithms)": (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
        ),
        "anomaly detection": torch.is_anomaly_enabled(),
        "float32 matmul precision": torch.get_float32_matmul_precision(),
        "torch.backends.cudnn.enabled": torch.backends.cudnn.enabled,
        "torch.backends.cudnn.deterministic": torch.backends.cudnn.deterministic,
        "torch.backends.cudnn.benchmark": torch.backends.cudnn.benchmark,
        "torch.backends.cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "torch.backends.cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "torch.backends.mkldnn.enabled": torch.backends.mkldnn.enabled,
    }
    return out


def _set_flag(name: str, value: Any) -> None:
    if name.startswith("grad mode"):
        torch.set_grad_enabled(value)
    elif name == "inference mode":
        # inference mode cannot be switched off globally from outside its context manager; report only
        log.error("inference mode was left on by a plugin; it cannot be restored from here")
    elif name.startswith("default dtype"):
        torch.set_default_dtype(value)
    elif name.startswith("thread count"):
        torch.set_num_threads(value)
    elif name.startswith("deterministic algorithms"):
        torch.use_deterministic_algorithms(value[0], warn_only=value[1])
    elif name == "anomaly detection":
        torch.set_anomaly_enabled(value)
    elif name == "float32 matmul precision":
        torch.set_float32_matmul_precision(value)
    else:  # torch.backends.<...>.<attr>
        *path, attr = name.split(".")
        obj: Any = torch
        for part in path[1:]:
            obj = getattr(obj, part)
        setattr(obj, attr, value)


@dataclass
class GlobalState:
    """A snapshot of torch's global switches and of the hooks on ``model`` and on every module."""

    flags: dict[str, Any]
    module_hooks: dict[tuple[int, str], dict[Any, Any]] = field(default_factory=dict)
    global_hooks: dict[str, dict[Any, Any]] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    modules: dict[int, nn.Module] = field(default_factory=dict)
    #: this process's descendant processes when taken (``None``: not watched); see :func:`descendant_processes`
    processes: dict[int, str] | None = None

    @classmethod
    def take(cls, model: nn.Module, *, processes: bool = False) -> GlobalState:
        """The snapshot; with ``processes``, also this process's descendants, so that one a guest leaves running
        is found, killed and reported by :meth:`restore` (a cell's snapshot; an attack call's does not scan)."""
        state = cls(flags=_flags(), processes=descendant_processes() if processes else None)
        for name, m in model.named_modules():
            state.names[id(m)] = name or type(model).__name__
            state.modules[id(m)] = m
            for attr in _MODULE_HOOKS:
                d = getattr(m, attr, None)
                if isinstance(d, dict):
                    state.module_hooks[(id(m), attr)] = dict(d)
        mod = torch.nn.modules.module
        for attr in _GLOBAL_HOOKS:
            d = getattr(mod, attr, None)
            if isinstance(d, dict):
                state.global_hooks[attr] = dict(d)
        return state

    def restore(self) -> list[str]:
        """Put everything back; returns what had changed, in words (empty when nothing had)."""
        changed: list[str] = []
        now = _flags()
        for name, value in self.flags.items():
            if now.get(name) != value:
                changed.append(f"{name} changed from {value!r} to {now.get(name)!r}")
                try:
                    _set_flag(name, value)
                except Exception as exc:  # a flag torch refuses to set back: report, keep going
                    log.error("could not restore %s: %s", name, exc)
        for (mid, attr), saved in self.module_hooks.items():
            d = getattr(self.modules[mid], attr)
            if list(d.keys()) != list(saved.keys()) or any(d[k] is not v for k, v in saved.items() if k in d):
                if not attr.endswith(("_with_kwargs", "_always_called")):
                    added, removed = len(set(d) - set(saved)), len(set(saved) - set(d))
                    changed.append(
                        f"{attr.strip('_').replace('_', ' ')} on module {self.names[mid]!r} changed "
                        f"({added} added, {removed} removed)"
                    )
                d.clear()
                d.update(saved)
        mod = torch.nn.modules.module
        for attr, saved in self.global_hooks.items():
            d = getattr(mod, attr)
            if list(d.keys()) != list(saved.keys()):
                if not attr.endswith(("_with_kwargs", "_always_called")):
                    changed.append(f"global module hooks {attr.strip('_')} changed")
                d.clear()
                d.update(saved)
        if self.processes is not None:
            left = {pid: cmd for pid, cmd in descendant_processes().items() if pid not in self.processes}
            if left:
                for pid in left:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                for pid in left:  # reap the direct children (a grandchild is reaped by its own parent or init)
                    with contextlib.suppress(OSError):
                        os.waitpid(pid, 0)
                shown = ", ".join(f"pid {pid}: {cmd[:80]}" for pid, cmd in sorted(left.items())[:3])
                more = f" and {len(left) - 3} more" if len(left) > 3 else ""
                changed.append(f"left {len(left)} process(es) running ({shown}{more}); killed")
        return changed


#: Processes the Python runtime itself starts and keeps (multiprocessing's helpers), never a guest's leftover.
_RUNTIME_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver", "multiprocessing.semaphore")


def descendant_processes() -> dict[int, str]:
    """This process's live descendants (pid -> command line), multiprocessing's own helpers left out.

    Read from ``/proc`` (Linux; elsewhere none are known, and nothing is checked). A process a guest detaches
    from its parent (a double fork, ``setsid``) is re-parented and no longer a descendant: the check catches
    the processes a plugin starts and forgets, not one built to hide.
    """
    root = Path("/proc")
    parent: dict[int, int] = {}
    try:
        entries = list(root.iterdir())
    except OSError:
        return {}
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ...
        if len(fields) > 1 and fields[0] != "Z":
            parent[int(entry.name)] = int(fields[1])
    found, frontier = {}, [os.getpid()]
    while frontier:
        nxt = [pid for pid, ppid in parent.items() if ppid in frontier and pid not in found]
        for pid in nxt:
            try:
                cmd = (root / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            if not any(helper in cmd for helper in _RUNTIME_HELPERS):
                found[pid] = cmd
        frontier = nxt
    return found


@contextlib.contextmanager
def guard_global_state(model: nn.Module, attack: str) -> Iterator[None]:
    """Snapshot torch's global state and ``model``'s hooks; restore them after the block.

    A change made by the block raises :class:`AttackContractError` naming ``attack`` and each change
    (after restoring). If the block raised, its exception propagates and the state is still restored.
    """
    state = GlobalState.take(model)
    try:
        yield
    except BaseException:
        changed = state.restore()
        if changed:
            log.warning("%s failed and also changed torch's global state (restored): %s", attack, "; ".join(changed))
        raise
    changed = state.restore()
    if changed:
        raise AttackContractError(
            f"{attack} changed global state it must leave alone: {'; '.join(changed)}. It was restored, and "
            f"this attack's results are refused; a plugin must undo any change it makes (use context "
            f"managers such as torch.enable_grad()) and must not leave hooks on the model"
        )


def call_plugin(attack: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a plugin's ``fn``; ``sys.exit`` inside it becomes :class:`AttackContractError` naming ``attack``.

    ``KeyboardInterrupt`` propagates (the user asked to stop); other exceptions propagate unchanged.
    """
    try:
        return fn(*args, **kwargs)
    except SystemExit as exc:
        raise AttackContractError(
            f"{attack} called sys.exit({exc.code!r}) (or raised SystemExit); a plugin may not end the run. "
            f"This attack's cell fails; the rest of the run goes on. Raise an exception instead"
        ) from exc


def check_unchanged(original: Tensor, given: Tensor, *, what: str, attack: str, batch: int) -> None:
    """Refuse the batch if the copy the attack was given (``given``) no longer equals ``original``."""
    if given.shape == original.shape and given.dtype == original.dtype and torch.equal(given, original):
        return
    detail = ""
    if given.shape == original.shape and given.dtype == original.dtype and given.is_floating_point():
        diff = (given.detach() - original).abs().flatten(1) if given.ndim > 1 else (given - original).abs()[:, None]
        per = diff.amax(1)
        i = int(per.argmax())
        detail = f" (example {i} moved by up to {float(per[i]):.6g}; {int((per > 0).sum())} example(s) changed)"
    elif given.shape == original.shape and given.dtype == original.dtype:
        detail = f" ({int((given != original).sum())} value(s) changed)"
    else:
        detail = f" (now shape {tuple(given.shape)} {given.dtype}, was {tuple(original.shape)} {original.dtype})"
    raise AttackContractError(
        f"attack {attack} changed its {what} in place in batch {batch}{detail}; an attack may only read its inputs "
        f"and must return a new tensor. The batch is refused (it was checked against advbench's own copy)"
    )


# -- a time limit a plugin cannot swallow -------------------------------------------------------


def _child_main(fn: Callable[[], dict[str, Tensor]], out: str, err: str) -> None:
    code = 1
    try:
        # A forked child inherits OpenMP's state but not its worker threads: a parallel kernel (seen:
        # batch_norm) deadlocks in the child once the parent has used more than one thread. One
        # thread never enters a parallel region, so it is safe; cells run this way record
        # CHILD_THREADS as their thread count (it is part of their cache key).
        torch.set_num_threads(CHILD_THREADS)
        result = fn()
        if not isinstance(result, dict) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in result.items()
        ):
            raise TypeError(f"expected a dict of str -> Tensor, got {type(result).__name__}")
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in result.items()}, out)
        code = 0
    except BaseException as exc:  # SystemExit, KeyboardInterrupt too: report them, never hang
        with contextlib.suppress(BaseException):
            Path(err).write_text(json.dumps({"type": type(exc).__name__, "message": str(exc)[:4000]}))
    finally:
        os._exit(code)  # no atexit handlers or buffers inherited from the parent


def run_with_time_limit(
    fn: Callable[[], dict[str, Tensor]], *, timeout_s: float, name: str, start_method: str = "fork"
) -> dict[str, Tensor]:
    """Run ``fn()`` in a child process; kill it (SIGKILL) if it has not finished after ``timeout_s`` seconds.

    ``fn`` runs with :data:`CHILD_THREADS` torch threads (forking a multi-threaded OpenMP runtime is
    only safe that way), so a cell run like this must record that thread count in its key.
    ``fn`` returns a dict of named tensors; they come back through a safetensors file the child
    writes in a private temporary folder (never through pickle). The default ``"fork"`` context
    lets ``fn`` be any closure (the model and data are inherited, not copied through pipes); it is
    not usable once CUDA is initialised in this process, where ``"spawn"`` is needed and ``fn``
    must be picklable (it is the parent's own code and data, never something the child sent).

    Raises :class:`AttackTimeoutError` on a timeout, :class:`AdvbenchError` naming ``name`` when
    the child raised (its type and message), exited, or died without a result. ``KeyboardInterrupt``
    in the parent kills the child and propagates.
    """
    if not timeout_s > 0:
        raise ValueError(f"expected timeout_s > 0, got {timeout_s!r}")
    if start_method == "fork" and torch.cuda.is_available() and torch.cuda.is_initialized():
        raise AdvbenchError(
            f"{name}: cannot fork a time-limited child after CUDA was initialised; use start_method='spawn' "
            f"with a picklable callable, or run without a time limit"
        )
    ctx: Any = multiprocessing.get_context(start_method)  # typeshed: BaseContext lacks Process
    with tempfile.TemporaryDirectory(prefix="advbench-child-") as d:
        out, err = Path(d) / "result.safetensors", Path(d) / "error.json"
        proc = ctx.Process(target=_child_main, args=(fn, str(out), str(err)), daemon=True, name=f"advbench {name}")
        proc.start()
        try:
            proc.join(timeout_s)
        finally:
            if proc.is_alive():
                proc.kill()
                proc.join(10)
                timed_out = True
            else:
                timed_out = False
        if timed_out:
            raise AttackTimeoutError(
                f"{name} ran past its time limit of {timeout_s:g} s and was killed. To fix: raise --time-limit, "
                f"or make the attack cheaper (fewer steps or examples)"
            )
        if err.is_file():
            try:
                info = json.loads(err.read_text())
                what = f"{info.get('type', 'error')}: {info.get('message', '')}"
            except (OSError, ValueError):
                what = "an error it could not report"
            raise AdvbenchError(f"{name} failed in its time-limited child process with {what}")
        if proc.exitcode != 0 or not out.is_file():
            how = f"was killed by signal {-proc.exitcode}" if (proc.exitcode or 0) < 0 else f"exited ({proc.exitcode})"
            raise AdvbenchError(f"{name}: its time-limited child process {how} without a result")
        from safetensors.torch import load_file

        return load_file(out)
