"""Run the benchmarks and print medians, ratios and the issue's goals as a Markdown table.

    python benchmarks/report.py                      # run the suite, then print the report
    python benchmarks/report.py --json out.json      # same, keeping pytest-benchmark's JSON
    python benchmarks/report.py --from out.json      # only print a report from an earlier run
    python benchmarks/report.py -- -k echo           # pass extra arguments to pytest
    python benchmarks/report.py --from out.json --plots docs/img   # also draw the PNG plots

These machines are small and noisy: read the ratios, not the absolute times. Each figure is the
median of many rounds; contenders of one row run in the same pytest session.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# Rows of the table, in order, and the contenders of each in the order they are shown.
ITEMS = [
    "invoke add",
    "echo 11 B",
    "echo 1 MiB",
    "guest→host call",
    "echo 11 B, awaited",
    "fresh instance + call",
    "load again, same process",
    "load from disk cache, warm process",
    "load, fresh process",
    "compute loop",
    "2 threads vs 1",
    "invoke add, interleaved",
    "echo 11 B, interleaved",
    "load a compiled C program",
    "cold start (import, load from cache, call)",
    "first call on a new plugin",
    "1,000 plugins round-robin",
    "fresh instance + call, interleaved",
    "precheck, worst case (i32.const 2; drop)",
    "load a compiled C program, CPU",
    "cold start, CPU (import, load from cache, call)",
    "fresh instance + call, CPU",
    "echo 11 B, input buffer, interleaved",
    "first call on a new plugin, input buffer",
]
BASE = "plugsafe"
# The plugsafe figure each row's ratios are taken against, where it is not plain "plugsafe".
ROW_BASE = {
    "compute loop": "plugsafe unlimited",
    "2 threads vs 1": "plugsafe 1T",
    "first call on a new plugin": "plugsafe later call",
    "1,000 plugins round-robin": "plugsafe, one plugin",
    "precheck, worst case (i32.const 2; drop)": "plugsafe, 4 MiB",
    "first call on a new plugin, input buffer": "plugsafe later call",
}

Medians = dict[tuple[str, str], float]


@dataclass
class Goal:
    text: str
    measure: Callable[[Medians], tuple[float, str] | None]  # value and how it was formed
    ok: Callable[[float], bool]
    show: Callable[[float], str]


def _ratio(m: Medians, item: str, num: str, den: str) -> float | None:
    a, b = m.get((item, num)), m.get((item, den))
    if a is None or b is None or b == 0:
        return None
    return a / b


def _ratio_goal(item: str, num: str, den: str) -> Callable[[Medians], tuple[float, str] | None]:
    def f(m: Medians) -> tuple[float, str] | None:
        r = _ratio(m, item, num, den)
        return None if r is None else (r, f"{num} ÷ {den}")

    return f


def _abs_goal(item: str, who: str) -> Callable[[Medians], tuple[float, str] | None]:
    def f(m: Medians) -> tuple[float, str] | None:
        v = m.get((item, who))
        return None if v is None else (v * 1e6, f"{who} median")

    return f


def _speedup(item: str, one: str, two: str) -> Callable[[Medians], tuple[float, str] | None]:
    def f(m: Medians) -> tuple[float, str] | None:
        r = _ratio(m, item, one, two)
        return None if r is None else (2 * r, f"2 x t({one}) ÷ t({two})")

    return f


def _x(v: float) -> str:
    return f"{v:.2f}x"


def _us(v: float) -> str:
    return f"{v:.1f} µs"


GOALS = [
    Goal(
        "`invoke` ≥ 20x faster than wasmtime-py's `Func.__call__`",
        _ratio_goal("invoke add", "wasmtime-py", BASE),
        lambda v: v >= 20,
        _x,
    ),
    Goal(
        "11-byte echo ≥ 10x faster than Extism",
        _ratio_goal("echo 11 B", "extism", BASE),
        lambda v: v >= 10,
        _x,
    ),
    Goal(
        "guest→host call ≥ 8x faster than wasmtime-py's",
        _ratio_goal("guest→host call", "wasmtime-py", BASE),
        lambda v: v >= 8,
        _x,
    ),
    Goal(
        "1 MiB echo within 1.5x of two memcpy of 1 MiB",
        _ratio_goal("echo 1 MiB", BASE, "2x memmove"),
        lambda v: v <= 1.5,
        _x,
    ),
    Goal(
        "fresh instance + small call ≤ 60 µs",
        _abs_goal("fresh instance + call", BASE),
        lambda v: v <= 60,
        _us,
    ),
    Goal(
        "load of a cached plugin (fresh process) ≤ 300 µs",
        _abs_goal("load, fresh process", BASE),
        lambda v: v <= 300,
        _us,
    ),
    Goal(
        "timeout-only policy ≤ 1.2x unlimited on a compute loop",
        _ratio_goal("compute loop", "plugsafe timeout", "plugsafe unlimited"),
        lambda v: v <= 1.2,
        _x,
    ),
    Goal(
        "(same, against wasmtime with no epoch checks at all)",
        _ratio_goal("compute loop", "plugsafe timeout", "wasmtime-py plain"),
        lambda v: v <= 1.2,
        _x,
    ),
    Goal(
        "2 threads on 2 plugins ≥ 1.7x one thread",
        _speedup("2 threads vs 1", "plugsafe 1T", "plugsafe 2T"),
        lambda v: v >= 1.7,
        _x,
    ),
    Goal(
        "(same, `PluginPool(size=2)` from 2 threads)",
        _speedup("2 threads vs 1", "plugsafe 1T", "PluginPool 2T"),
        lambda v: v >= 1.7,
        _x,
    ),
    Goal(
        "(the machine's ceiling: sha256 without the GIL, 2 threads vs 1)",
        _speedup("2 threads vs 1", "sha256 (ceiling) 1T", "sha256 (ceiling) 2T"),
        lambda v: v >= 1.7,
        _x,
    ),
]

# Issue 14: speed where users feel it. Every ratio is plugsafe's time over the peer's, both
# measured in the same interleaved rounds (benchmarks/test_bench_issue14.py).
GOALS_14 = [
    Goal(
        "1. load of a compiled C program (WASI) ≤ 3x wasmtime-py's Store + Linker.instantiate",
        _ratio_goal("load a compiled C program", BASE, "wasmtime-py"),
        lambda v: v <= 3,
        _x,
    ),
    Goal(
        "(1. the same in CPU time: each load's thread_time, interleaved)",
        _ratio_goal("load a compiled C program, CPU", BASE, "wasmtime-py"),
        lambda v: v <= 3,
        _x,
    ),
    Goal(
        "(1. the precheck is linear: 16 MiB ÷ 4 MiB of its worst case ≤ 4.5)",
        _ratio_goal(
            "precheck, worst case (i32.const 2; drop)", "plugsafe, 16 MiB", "plugsafe, 4 MiB"
        ),
        lambda v: v <= 4.5,
        _x,
    ),
    Goal(
        "2. cold start (fresh python: import, load from cache_dir, call) ≤ 1.3x wasmtime-py",
        _ratio_goal("cold start (import, load from cache, call)", BASE, "wasmtime-py"),
        lambda v: v <= 1.3,
        _x,
    ),
    Goal(
        "(2. the same in CPU time: each fresh process's own, interleaved)",
        _ratio_goal("cold start, CPU (import, load from cache, call)", BASE, "wasmtime-py"),
        lambda v: v <= 1.3,
        _x,
    ),
    Goal(
        "4. first call on a new plugin ≤ 2x a later call",
        _ratio_goal("first call on a new plugin", "plugsafe first call", "plugsafe later call"),
        lambda v: v <= 2,
        _x,
    ),
    Goal(
        "(4. the same with `Host(pooling=...)`: the first input lands in a resident page)",
        _ratio_goal(
            "first call on a new plugin",
            "plugsafe, Host(pooling=...), first call",
            "plugsafe, Host(pooling=...), later call",
        ),
        lambda v: v <= 2,
        _x,
    ),
    Goal(
        "5. `invoke` ≥ 20x faster than wasmtime-py's `Func.__call__`",
        _ratio_goal("invoke add, interleaved", "wasmtime-py", BASE),
        lambda v: v >= 20,
        _x,
    ),
    Goal(
        "5. 11-byte echo ≥ 10x faster than Extism's zero-copy echo",
        _ratio_goal("echo 11 B, interleaved", "extism", BASE),
        lambda v: v >= 10,
        _x,
    ),
    Goal(
        "(5. the same with a v1 guest: no `plugsafe_input_buffer`, alloc called per call)",
        _ratio_goal("echo 11 B, input buffer, interleaved", "extism", "plugsafe, v1 guest"),
        lambda v: v >= 10,
        _x,
    ),
    Goal(
        "6. fresh instance + call with `Host(pooling=...)` ≤ 60 µs",
        _abs_goal("fresh instance + call, interleaved", "plugsafe, Host(pooling=...)"),
        lambda v: v <= 60,
        _us,
    ),
    Goal(
        "(6. the same in CPU time)",
        _abs_goal("fresh instance + call, CPU", "plugsafe, Host(pooling=...)"),
        lambda v: v <= 60,
        _us,
    ),
    Goal(
        "7. 1,000 plugins round-robin ≤ 1.3x calling one",
        _ratio_goal("1,000 plugins round-robin", "plugsafe, round-robin", "plugsafe, one plugin"),
        lambda v: v <= 1.3,
        _x,
    ),
    Goal(
        "(7. the same for wasmtime-py: 1,000 stores round-robin ÷ one)",
        _ratio_goal(
            "1,000 plugins round-robin", "wasmtime-py, round-robin", "wasmtime-py, one store"
        ),
        lambda v: v <= 1.3,
        _x,
    ),
]


# -- collecting ----------------------------------------------------------------------------------


def run_suite(json_path: Path, extra: list[str]) -> int:
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(HERE),
        "-q",
        "-p",
        "no:cacheprovider",
        f"--benchmark-json={json_path}",
        "--benchmark-disable-gc",
        "--benchmark-max-time=0.5",
        "--benchmark-columns=median,iqr,rounds",
        *extra,
    ]
    print("$", " ".join(cmd), file=sys.stderr)
    return subprocess.run(cmd, cwd=ROOT, stdout=sys.stderr).returncode


Points = dict[str, dict[str, list[tuple[float, float]]]]  # plot -> contender -> (x, seconds)


def points(data: dict[str, Any]) -> Points:
    """What the plots show: (size, seconds) per contender, for the "echo" and "load" plots."""
    out: Points = {}
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        if info.get("plot") and info.get("points"):
            series = out.setdefault(info["plot"], {})
            series[info["contender"]] = [(float(x), float(y)) for x, y in info["points"]]
    return out


def plot(data: dict[str, Any], directory: Path) -> list[Path]:
    """Draw the plots as PNGs in ``directory`` (needs matplotlib: ``pip install -e .[plots]``).

    Returns the files written; none (and a note on stderr) without matplotlib or data.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plots: matplotlib is not installed (pip install -e '.[plots]')", file=sys.stderr)
        return []
    series = points(data)
    specs = {
        "echo": ("echo-cost-by-size.png", "payload (bytes)", "cost per call (µs)",
                 "ABI echo: cost per call against payload size"),
        "load": ("load-time-by-size.png", "module size (bytes)", "load time (µs)",
                 "loading a compiled module: time against module size"),
    }  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (filename, xlabel, ylabel, title) in specs.items():
        if name not in series:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        for contender, pts in sorted(series[name].items()):
            xs, ys = zip(*sorted(pts), strict=True)
            ax.plot(xs, [y * 1e6 for y in ys], marker="o", label=contender)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = directory / filename
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def load(
    data: dict[str, Any],
) -> tuple[list[dict[str, Any]], Medians, dict[tuple[str, str], str]]:
    rows: list[dict[str, Any]] = []
    medians: Medians = {}
    notes: dict[tuple[str, str], str] = {}
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        if "item" not in info:
            continue
        inner = info.get("inner_median_s")
        value = inner if inner is not None else b["stats"]["median"] / info.get("per", 1)
        key = (info["item"], info["contender"])
        medians[key] = value
        extra = [info["note"]] if info.get("note") else []
        if info.get("import_median_s") is not None:
            extra.append(f"import {_fmt_time(info['import_median_s'])}")
        if info.get("setup_median_s"):
            extra.append(f"Host()/Engine() {_fmt_time(info['setup_median_s'])}")
        if extra:
            notes[key] = "; ".join(extra)
        rows.append({"item": info["item"], "contender": info["contender"], "median": value})
    return rows, medians, notes


# -- printing ------------------------------------------------------------------------------------


def machine(env: dict[str, Any] | None) -> list[str]:
    """The machine and versions, as recorded by benchmarks/conftest.py during the run."""
    if not env:
        return ["- (this JSON has no plugsafe_env record: machine unknown)"]
    loads = [env.get("load_average_start"), env.get("load_average_end")]
    load_text = "/".join("?" if v is None else f"{v:.2f}" for v in loads)
    return [
        f"- date: {env['date']}",
        f"- machine: {env['nproc']} CPUs (`nproc`), {env['cpu']}, {env['platform']}; "
        f"1-minute load average {load_text} at the start/end of the run",
        f"- {env['python']}, wasmtime {env['wasmtime']}, plugsafe {env['plugsafe']} "
        f"(call path: {env['plugsafe_backend']}), extism {env['extism']} "
        f"(extism-sys {env['extism_sys']}), pytest-benchmark {env['pytest_benchmark']}",
    ]


def _fmt_time(seconds: float) -> str:
    us = seconds * 1e6
    if us >= 10_000:
        return f"{us / 1000:.1f} ms"
    if us >= 100:
        return f"{us:.0f} µs"
    return f"{us:.2f} µs"


def table(rows: list[dict[str, Any]], medians: Medians, notes: dict[tuple[str, str], str]) -> str:
    out = [
        "| work | contender | median | vs plugsafe |",
        "| --- | --- | ---: | ---: |",
    ]
    by_item: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_item.setdefault(r["item"], []).append(r)
    order = [i for i in ITEMS if i in by_item] + [i for i in by_item if i not in ITEMS]
    for item in order:
        base_name = ROW_BASE.get(item, BASE)
        base = medians.get((item, base_name))
        for r in by_item[item]:
            rel = ""
            if r["contender"] == base_name:
                rel = "1x"
            elif base:
                rel = f"{r['median'] / base:.2f}x"
            note = notes.get((item, r["contender"]))
            who = r["contender"] + (f" ({note})" if note else "")
            out.append(f"| {item} | {who} | {_fmt_time(r['median'])} | {rel} |")
    return "\n".join(out)


def goals(medians: Medians, which: list[Goal] = GOALS) -> tuple[str, int, int]:
    out = ["| goal | measured | how | verdict |", "| --- | ---: | --- | --- |"]
    met = missed = 0
    for g in which:
        got = g.measure(medians)
        if got is None:
            out.append(f"| {g.text} | — | — | not measured (feature or peer missing) |")
            continue
        value, how = got
        ok = g.ok(value)
        if not g.text.startswith("("):
            met += ok
            missed += not ok
        out.append(f"| {g.text} | {g.show(value)} | {how} | {'met' if ok else '**not met**'} |")
    return "\n".join(out), met, missed


def report(json_path: Path) -> str:
    data = json.loads(json_path.read_text())
    rows, medians, notes = load(data)
    goal_table, met, missed = goals(medians)
    goal_table_14, met_14, missed_14 = goals(medians, GOALS_14)
    parts = [
        "## Machine",
        "",
        *machine(data.get("plugsafe_env")),
        "",
        "## Medians (per operation) and ratios",
        "",
        "`vs plugsafe` is the contender's median divided by plugsafe's (for the compute loop, by "
        "`plugsafe unlimited`; for threads, by `plugsafe 1T`): above 1x means slower.",
        "",
        table(rows, medians, notes),
        "",
        "## Goals (issue 6)",
        "",
        goal_table,
        "",
        f"{met} goal(s) met, {missed} not met (rows in parentheses are context, not counted).",
        "",
        "## Goals (issue 14)",
        "",
        goal_table_14,
        "",
        f"{met_14} goal(s) met, {missed_14} not met (rows in parentheses are context, not "
        "counted).",
    ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--json", type=Path, help="where to keep pytest-benchmark's JSON")
    ap.add_argument("--from", dest="from_json", type=Path, help="report on this JSON; run nothing")
    ap.add_argument("--plots", type=Path, help="also draw the PNG plots into this directory")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = ap.parse_args(argv)
    if args.from_json:
        print(report(args.from_json))
        if args.plots:
            plot(json.loads(args.from_json.read_text()), args.plots)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        json_path = args.json or Path(tmp) / "bench.json"
        rc = run_suite(json_path, args.pytest_args)
        if not json_path.exists():
            print(f"pytest exited {rc} without writing {json_path}", file=sys.stderr)
            return rc or 1
        print(report(json_path))
        if args.plots:
            plot(json.loads(json_path.read_text()), args.plots)
    return rc


if __name__ == "__main__":
    sys.exit(main())
