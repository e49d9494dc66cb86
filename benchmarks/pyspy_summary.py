"""Summarise a py-spy profile (`py-spy record --format raw`, folded stacks) into where the time goes.

    python benchmarks/pyspy_summary.py profile.folded [--top 12]

Stdlib only. Three views, in % of the samples (py-spy leaves out those where the process was idle):
- *self time by module*: the innermost frame of each sample, by source module (`gateway.responses.events`,
  `redis.asyncio.connection`, `asyncio.tasks`, …);
- *innermost gateway function*: the deepest frame of the gateway's own code (`gateway.*`, `policies.*`,
  `config.*`) in each sample: its own time plus that of the libraries it calls, i.e. whose work it is;
- *inclusive by gateway module*: a sample counts once for every own module on its stack.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
OWN = ("gateway", "policies", "config")


def module_of(path: str) -> str:
    """`…/site-packages/redis/asyncio/client.py` → `redis.asyncio.client`; `…/gateway/chat.py` → `gateway.chat`."""
    path = path.replace("\\", "/")
    if path.startswith("<"):
        return path
    parts = [p for p in path.split("/") if p]
    # An absolute path is cut to its import root; a relative one is py-spy's short form ("starlette/routing.py").
    if path.startswith("/") and "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1:]
    elif path.startswith("/"):
        own = next((i for i, p in enumerate(parts) if p in OWN), None)
        std = next((i for i, p in enumerate(parts) if re.fullmatch(r"python3\.\d+", p)), None)
        parts = parts[own:] if own is not None else parts[std + 1:] if std is not None else parts[-1:]
    mod = ".".join(parts)
    for suffix in (".py", ".pyx", ".so"):
        mod = mod.removesuffix(suffix)
    return mod.removesuffix(".__init__") or path


def parse(folded: str) -> tuple[int, dict[str, Counter[str]]]:
    """(samples, {view: Counter}) for the three views described in the module's docstring."""
    total = 0
    views: dict[str, Counter[str]] = {"self_by_module": Counter(), "under_own": Counter(), "own_modules": Counter()}
    for line in folded.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        total += count
        parsed = [m for m in (FRAME.match(f) for f in stack.split(";") if f) if m]
        if not parsed:
            continue
        views["self_by_module"][module_of(parsed[-1]["file"])] += count
        own = [(module_of(m["file"]), m["func"]) for m in parsed]
        own = [(mod, func) for mod, func in own if mod.split(".", 1)[0] in OWN and mod != "gateway.__main__"]
        if own:
            views["under_own"][f"{own[-1][0]}.{own[-1][1]}"] += count
        for mod in {mod for mod, _ in own}:
            views["own_modules"][mod] += count
    return total, views


def summarize(path: Path, top: int = 12) -> dict:
    total, views = parse(path.read_text(errors="replace"))
    out: dict = {"samples": total}
    for name, counter in views.items():
        out[name] = [(k, round(100.0 * n / total, 1)) for k, n in counter.most_common(top)] if total else []
    return out


HEADS = {
    "self_by_module": "self time, by module",
    "under_own": "innermost gateway function (with the libraries it calls)",
    "own_modules": "inclusive, by gateway module",
}


def markdown(summary: dict) -> str:
    views = [v for v in HEADS if summary.get(v)]
    rows = max((len(summary[v]) for v in views), default=0)
    lines = ["| " + " | ".join(f"{HEADS[v]} | %" for v in views) + " |", "|" + "---|---|" * len(views)]
    for i in range(rows):
        cells = []
        for v in views:
            name, pct = summary[v][i] if i < len(summary[v]) else ("", "")
            cells += [f"`{name}`" if name else "", str(pct)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folded", type=Path)
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args(argv)
    s = summarize(args.folded, args.top)
    print(f"{s['samples']} samples\n")
    print(markdown(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
