"""Fault injection: stop a command at a chosen step, as a kill would, so interrupted-save cases are tested.

In a test (`monkeypatch`): `fault(monkeypatch, "genrec_hf.data.vocab:ItemVocab.save")` makes the first call of that
callable raise `Killed` before it runs (`call=N`: the N-th call; `after=True`: once it has returned).
`Killed` is a `BaseException`, so code that cleans up after ordinary errors (`except Exception`) does not run, as
after a kill; `finally` blocks and `with` exits still do (a real kill runs neither).

In a subprocess, a real signal: `python -m tests.faults TARGET CALL [--after] [--signal TERM] -- genrec-hf args...`
runs `genrec_hf.cli.main(args)` and sends the process the signal at that call. SIGTERM's default action ends the
process at once: nothing after that point runs, not even `finally` blocks.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Callable
from typing import Any


class Killed(BaseException):
    """Stands for a kill at the chosen step."""


def _owner(target: str) -> tuple[Any, str]:
    """`"package.module:Name.attr"` → (the object holding the attribute, the attribute's name)."""
    module_name, _, path = target.partition(":")
    owner: Any = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for part in parents:
        owner = getattr(owner, part)
    getattr(owner, name)  # fails early on a typo
    return owner, name


def _raise_killed(target: str) -> Callable[[], None]:
    def action() -> None:
        raise Killed(target)

    return action


def fault(monkeypatch: Any, target: str, call: int = 1, *, after: bool = False,
          action: Callable[[], None] | None = None) -> list[int]:
    """Make the `call`-th call of `target` run `action` (default: raise `Killed`) before it (or `after` it returns);
    returns the list that counts the calls. `monkeypatch` is pytest's (or anything with its `setattr`)."""
    owner, name = _owner(target)
    real = getattr(owner, name)
    act = action or _raise_killed(target)
    calls: list[int] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == call and not after:
            act()
        result = real(*args, **kwargs)
        if len(calls) == call and after:
            act()
        return result

    monkeypatch.setattr(owner, name, wrapper)
    return calls


class _Patch:
    """`monkeypatch.setattr` for a process that never undoes it."""

    @staticmethod
    def setattr(owner: Any, name: str, value: Any) -> None:
        setattr(owner, name, value)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m tests.faults")
    parser.add_argument("target")
    parser.add_argument("call", type=int)
    parser.add_argument("--after", action="store_true")
    parser.add_argument("--signal", default="TERM", help="signal name without SIG (default TERM)")
    args = parser.parse_args(argv[:split])
    number = getattr(signal, f"SIG{args.signal}")
    fault(_Patch, args.target, args.call, after=args.after, action=lambda: os.kill(os.getpid(), number))
    from genrec_hf.cli import main as cli_main

    return cli_main(argv[split + 1:])


if __name__ == "__main__":
    sys.exit(main())
