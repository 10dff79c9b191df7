"""Runs `python -m lspos_sync ARGS` and writes to stderr, at exit, how much CPU the garbage collector took.

    python bench/gc_stats.py sync --json --env-file FILE

A pause of the cyclic collector shows up in a profile on whatever line allocated last; this counts the
collections themselves (gc.callbacks, CPU time), by generation.
"""

from __future__ import annotations

import atexit
import gc
import runpy
import sys
import time

_started = [0.0]
_seconds = [0.0, 0.0, 0.0]
_collections = [0, 0, 0]


def _on_collection(phase: str, info: dict) -> None:
    if phase == "start":
        _started[0] = time.process_time()
    else:
        _seconds[info["generation"]] += time.process_time() - _started[0]
        _collections[info["generation"]] += 1


def _report() -> None:
    parts = ", ".join(f"gen{g} {_collections[g]}x {_seconds[g]:.2f} s" for g in range(3))
    sys.stderr.write(f"gc: {sum(_seconds):.2f} CPU s in all ({parts})\n")


def main() -> None:
    gc.callbacks.append(_on_collection)
    atexit.register(_report)
    sys.argv = ["lspos-sync", *sys.argv[1:]]
    runpy.run_module("lspos_sync", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
