"""Where the CPU goes, from a `py-spy record --gil -f raw` profile (samples of the thread holding the GIL).

    python bench/spy_summary.py PROFILE.txt [RATE]

Prints the CPU seconds by phase of a run, then the functions that hold the CPU themselves (self time) and the
product's functions with what they call (inclusive time). RATE is the sampling rate given to py-spy (default 500).
"""

from __future__ import annotations

import re
import sys
from collections import Counter

# A sample belongs to the first phase one of its frames names (so a lazy import inside an HTTP call counts as
# an import, and the engine's own lines are what is left).
PHASES = (
    ("imports", re.compile(r"^_find_and_load ")),
    ("Lightspeed: validation", re.compile(r"model_validate |lightspeed/models\.py|sale_page ")),
    ("customer matching", re.compile(r"lspos_sync/customers\.py")),
    ("Salesforce lookups: build SOQL", re.compile(r"salesforce/queries\.py")),
    ("Salesforce writes: HTTP + JSON encode", re.compile(r"^CompositeWriter\.")),
    ("Salesforce lookups: HTTP + JSON", re.compile(r"^(SalesforceClient\.|Engine\._run_queries )")),
    ("Lightspeed: HTTP + JSON decode", re.compile(r"^LightspeedClient\.")),
    ("map + hash", re.compile(r"lspos_sync/mapping\.py")),
    ("state store (SQLite)", re.compile(r"lspos_sync/state\.py")),
    ("engine's own lines (GC pauses land here too)",
     re.compile(r"lspos_sync/(engine|reading|resolving|planning|settling|rolling|summary)\.py")),
)


def load(path: str) -> list[tuple[list[str], int]]:
    stacks = []
    with open(path, encoding="utf-8") as raw:
        for line in raw:
            frames, _, count = line.rstrip("\n").rpartition(" ")
            if frames:
                stacks.append((frames.split(";"), int(count)))
    return stacks


def phase_of(frames: list[str]) -> str:
    for name, pattern in PHASES:
        if any(pattern.search(frame) for frame in frames):
            return name
    return "other"


def main() -> None:
    path = sys.argv[1]
    rate = float(sys.argv[2]) if len(sys.argv) > 2 else 500.0
    stacks = load(path)
    total = sum(count for _, count in stacks)
    phases: Counter = Counter()
    own: Counter = Counter()
    inclusive: Counter = Counter()
    for frames, count in stacks:
        phases[phase_of(frames)] += count
        own[frames[-1]] += count
        for function in {_function(frame) for frame in frames if "lspos_sync/" in frame}:
            inclusive[function] += count
    print(f"{total} samples at {rate:g}/s = {total / rate:.2f} CPU s\n")
    print("| phase | CPU s | share |\n|---|---|---|")
    for name, count in phases.most_common():
        print(f"| {name} | {count / rate:.2f} | {100 * count / total:.0f}% |")
    print("\nself time, top 25:")
    for frame, count in own.most_common(25):
        print(f"  {count / rate:6.2f} s {100 * count / total:4.1f}%  {_short(frame)}")
    print("\nlspos_sync functions, inclusive, top 30:")
    for frame, count in inclusive.most_common(30):
        print(f"  {count / rate:6.2f} s {100 * count / total:4.1f}%  {_short(frame)}")


def _function(frame: str) -> str:
    """The frame without its line number: `Engine._write (lspos_sync/engine.py)`."""
    return _short(re.sub(r":\d+\)$", ")", frame))


def _short(frame: str) -> str:
    return re.sub(r"/\S*/(site-packages|lib/python3\.\d+)/", "", frame).replace("/work/main/", "")


if __name__ == "__main__":
    main()
