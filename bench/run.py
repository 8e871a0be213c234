"""`make bench` entry point: run every benchmark, print tables, write bench/results/latest.*."""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Config, Section, fmt_num, machine_line, write_json
from loops import auto_loop

BENCHMARKS = (
    "e2e",
    "qcb",
    "python",
    "intake",
    "clients",
    "latency",
    "matching",
    "rss",
    "crash",
    "inline",
    "policy",
    "fleet",
)
RESULTS = Path(__file__).resolve().parent / "results"
# Metrics where a smaller number is better (latencies, memory); the rest are rates.
LOWER_IS_BETTER = ("ms", "MiB")
# The workloads of issue 16, in the order of its table: a goal whose text starts with one of
# these and a colon goes in the workloads table at the top of the results.
WORKLOADS = ("P", "I", "M", "R", "E", "8 clients")
_WORKLOAD = re.compile(r"^(" + "|".join(re.escape(w) for w in WORKLOADS) + r"): ")


def run_one(name: str, cfg: Config) -> Section:
    t0 = time.monotonic()
    try:
        section: Section = importlib.import_module(f"b_{name}").run(cfg)
    except Exception:
        section = Section(name, f"{name}: FAILED", ["error"])
        section.rows.append([traceback.format_exc().strip().replace("\n", "<br>")])
        section.raw["failed"] = True
    section.seconds = time.monotonic() - t0
    return section


def loop_table(sections: list[Section], auto: str) -> str:
    """asyncio vs uvloop for every metric the benchmarks recorded per loop."""
    out = [
        "### asyncio vs uvloop",
        "",
        f"`--loop auto` picks **{auto}** (read from the daemon's startup log).",
        "",
        "| metric | asyncio | uvloop | uvloop / asyncio | better | auto picks the better |",
        "|---|---|---|---|---|---|",
    ]
    for section in sections:
        for metric, per_loop in section.loops.items():
            a, u = per_loop.get("asyncio", float("nan")), per_loop.get("uvloop", float("nan"))
            lower = metric.endswith(LOWER_IS_BETTER)
            if a != a or u != u:
                continue
            faster = (
                ("uvloop" if u < a else "asyncio") if lower else ("uvloop" if u > a else "asyncio")
            )
            same = abs(u - a) <= 0.03 * max(abs(a), abs(u))
            verdict = "≈ (within 3 %)" if same else ("yes" if faster == auto else "**no**")
            out.append(
                f"| {metric} | {fmt_num(a)} | {fmt_num(u)} | {fmt_num(u / a) if a else 'n/a'} | "
                f"{'≈' if same else faster} | {verdict} |"
            )
    return "\n".join(out) + "\n"


def workloads(sections: list[Section]) -> str:
    """Issue 16's workloads, each against its goal, from every section's goals."""
    found: list[tuple[int, str, str, str, bool | None]] = []
    for section in sections:
        for what, got, met in section.goals:
            hit = _WORKLOAD.match(what)
            if hit:
                found.append((WORKLOADS.index(hit.group(1)), section.name, what, got, met))
    out = [
        "### Issue 16 workloads against their goals",
        "",
        "| workload: goal | measured (same run) | verdict | benchmark |",
        "|---|---|---|---|",
    ]
    for _, name, what, got, met in sorted(found, key=lambda row: row[0]):
        mark = "n/a" if met is None else ("met" if met else "**missed**")
        out.append(f"| {what} | {got} | {mark} | {name} |")
    return "\n".join(out) + "\n"


def summary(sections: list[Section]) -> str:
    out = ["### Goals", "", "| benchmark | goal | measured | verdict |", "|---|---|---|---|"]
    for section in sections:
        for what, got, met in section.goals:
            mark = "n/a" if met is None else ("met" if met else "**missed**")
            out.append(f"| {section.name} | {what} | {got} | {mark} |")
        if section.raw.get("failed"):
            out.append(f"| {section.name} | (benchmark crashed) | — | **failed** |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="the ~2-minute version")
    ap.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these")
    args = ap.parse_args()
    cfg = Config(quick=args.quick)
    t0 = time.monotonic()
    head = f"# qbcallbacks benchmarks ({'quick' if cfg.quick else 'full'})\n\n{machine_line()}\n"
    print(head, flush=True)
    auto = auto_loop()
    sections: list[Section] = []
    for name in args.only or BENCHMARKS:
        section = run_one(name, cfg)
        sections.append(section)
        print(section.markdown(), flush=True)
    total = time.monotonic() - t0
    tail = [workloads(sections), summary(sections), loop_table(sections, auto)]
    tail.append(f"Total: {total:.0f} s\n")
    print("\n".join(tail), flush=True)
    top = [workloads(sections), summary(sections)]
    md = "\n".join([head, *top, *(s.markdown() for s in sections), *tail[2:]])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.md").write_text(md)
    write_json(
        RESULTS / "latest.json",
        {
            "mode": "quick" if cfg.quick else "full",
            "machine": machine_line(),
            "auto_loop": auto,
            "seconds": total,
            "sections": {
                s.name: {
                    "title": s.title,
                    "goals": s.goals,
                    "loops": s.loops,
                    "seconds": s.seconds,
                    "raw": s.raw,
                }
                for s in sections
            },
        },
    )
    try:
        import chart

        chart.draw(sections, RESULTS / "latest.png")
    except Exception:
        traceback.print_exc()
    return 1 if any(s.raw.get("failed") for s in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
