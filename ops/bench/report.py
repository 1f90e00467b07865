"""Write ``BENCHMARKS.md`` from the results every bench wrote with ``--out``.

``python -m ops.bench.report`` reads ``ops/bench/results/*.json`` (one file
per bench, the shape :func:`ops.bench.common.emit` writes) and renders, for
each: the command, its parameters, a table of figures and a table of ratios
against their targets.  The machine and versions are taken from the results
themselves, so the report says where the figures came from.  When any result
carries ``distributions`` (label -> latency samples in ms), one PNG compares
them: event-driven against polling, on a log scale.

Results are read as plain JSON and rendered generically, so a new bench needs
no change here as long as it uses ``common.emit``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ops.bench.common import RESULTS_DIR, percentiles

ROOT = Path(__file__).resolve().parents[2]
PNG_NAME = "latency.png"


def load(folder: Path) -> list[dict[str, Any]]:
    results = []
    for path in sorted(folder.glob("*.json")):
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            print(f"skipping {path}: {e}", file=sys.stderr)
            continue
        if isinstance(document, dict) and "bench" in document:
            results.append(document)
    return results


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list) and len(value) <= 5:
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, list):
        return f"{len(value)} values"
    return str(value)


def table(rows: Mapping[str, Any], first: str) -> list[str]:
    """A Markdown table: one row per entry, one column per scalar field."""
    columns: list[str] = []
    for row in rows.values():
        for name in row if isinstance(row, Mapping) else ["value"]:
            if name not in columns:
                columns.append(name)
    lines = [f"| {first} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in rows.items():
        values = row if isinstance(row, Mapping) else {"value": row}
        lines.append(f"| {name} | " + " | ".join(_cell(values.get(c, "")) for c in columns) + " |")
    return lines


def machine_section(results: list[dict[str, Any]]) -> list[str]:
    """Each machine the results came from, with its benches (runs are from different days)."""
    machines: dict[tuple[str, str], list[str]] = {}
    versions: dict[str, str] = {}
    for r in sorted(results, key=lambda r: r["bench"]):
        m = r.get("machine", {})
        described = (f"{m.get('cores')} cores, {m.get('cpu_model')}, {m.get('memory_gib')} GiB memory",
                     f"{m.get('os')}, Python {m.get('python')}")
        machines.setdefault(described, []).append(r["bench"])
        versions.update(r.get("versions", {}))
    lines = ["## Machine", ""]
    for (hardware, system), benches in machines.items():
        lines.append(f"* {hardware}; {system}: " + ", ".join(benches))
    return [
        *lines,
        "* " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())),
        "",
        "Other work may share the machine; that is why every bench compares its",
        "variants side by side in one run and the ratios matter more than the rates.",
        "",
    ]


def bench_section(result: dict[str, Any]) -> list[str]:
    lines = [f"## {result['bench']}", "", f"Run {result.get('finished_at', '?')}:", "",
             "```sh", str(result.get("command", "")).strip(), "```", ""]
    if result.get("parameters"):
        lines += ["Parameters: " + ", ".join(
            f"{k} = {_cell(v)}" for k, v in _flatten(result["parameters"])), ""]
    if result.get("figures"):
        lines += [*table(result["figures"], "variant"), ""]
    other = {k: v for k, v in result.items() if k not in KNOWN}
    if other:  # a result in a shape of its own: its fields, flattened
        lines += ["| figure | value |", "|---|---|",
                  *(f"| {k} | {_cell(v)} |" for k, v in _flatten(other)), ""]
    if result.get("targets"):
        lines += ["Targets:", "", *table(result["targets"], "figure"), ""]
    if result.get("ratios"):
        lines += ["Ratios (against their targets where there is one):", "",
                  *table(result["ratios"], "comparison"), ""]
    if result.get("distributions"):
        summaries = {label: _summary(samples) for label, samples in result["distributions"].items()}
        lines += [*table(summaries, "latency (ms)"), ""]
    notes = [f"* {note}" for note in result.get("notes", [])]
    return [*lines, *notes, ""] if notes else lines


KNOWN = frozenset({"bench", "command", "finished_at", "machine", "versions", "parameters",
                   "figures", "ratios", "targets", "distributions", "notes"})
"""Fields of the shape :func:`ops.bench.common.emit` writes; others are shown as they are."""


def _flatten(fields: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in fields.items():
        if isinstance(v, Mapping):
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _loose_targets(result: dict[str, Any]) -> list[tuple[str, Any, str, bool]]:
    """``target_X: t`` next to a figure ``..._X`` (a rate): the figure must reach t."""
    rows = []
    for name, limit in result.items():
        if not (name.startswith("target_") and isinstance(limit, int | float)):
            continue
        measure = name.removeprefix("target_")
        for figure, value in result.items():
            if figure != name and figure.endswith(measure) and isinstance(value, int | float):
                rows.append((figure, value, f">= {limit:g}", value >= limit))
    return rows


def targets_section(results: list[dict[str, Any]]) -> list[str]:
    """Every target of every bench in one table: figure, value, target, met."""
    rows = []
    for r in sorted(results, key=lambda r: str(r["bench"])):
        for figure, t in (r.get("targets") or {}).items():
            rows.append((r["bench"], figure, t.get("value"), t.get("target"), t.get("met")))
        rows += [(r["bench"], *row) for row in _loose_targets(r)]
        for figure, t in (r.get("ratios") or {}).items():
            if t.get("target") is not None:
                rows.append((r["bench"], figure, t.get("ratio"), f">= {t['target']:g}x", t.get("met")))
    if not rows:
        return []
    lines = ["## Targets", "", "| bench | figure | value | target | met |", "|---|---|---|---|---|"]
    lines += [f"| {b} | {f} | {_cell(v)} | {t} | {_cell(m)} |" for b, f, v, t, m in rows]
    return [*lines, ""]


def _summary(samples: list[float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in percentiles(samples, (50, 90, 99)).items() if k != "mean"}


def distributions(results: Iterable[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """bench -> label -> latency samples (ms), for every bench that has any."""
    out: dict[str, dict[str, list[float]]] = {}
    for r in sorted(results, key=lambda r: str(r["bench"])):
        series = {label: [float(s) for s in samples]
                  for label, samples in (r.get("distributions") or {}).items() if samples}
        if series:
            out[str(r["bench"])] = series
    return out


def draw(series: dict[str, dict[str, list[float]]], path: Path) -> bool:
    """One PNG, one panel per bench: latency ECDFs on a shared log-scale ms axis; polling dashed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'); no figure drawn",
              file=sys.stderr)
        return False
    fig, axes = plt.subplots(len(series), 1, figsize=(13, 3.0 * len(series)), sharex=True,
                             squeeze=False)
    for ax, (bench, curves) in zip(axes[:, 0], series.items(), strict=True):
        for label, samples in curves.items():
            ordered = sorted(max(s, 1e-3) for s in samples)
            ys = [(i + 1) / len(ordered) for i in range(len(ordered))]
            median = percentiles(ordered, (50,))["p50"]
            ax.step(ordered, ys, where="post", linewidth=1.6,
                    label=f"{label} (p50 {_ms(median)}, n={len(ordered)})",
                    linestyle="--" if "poll" in label else "-")
        ax.set_xscale("log")
        ax.set_title(bench, fontsize="medium", loc="left")
        ax.set_ylabel("fraction")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[-1, 0].set_xlabel("latency (ms, log scale)")
    fig.suptitle("Latency per bench: event-driven (solid) vs polling (dashed)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _ms(value: float) -> str:
    return f"{value / 1000:.1f} s" if value >= 1000 else f"{value:.1f} ms"


def render(results: list[dict[str, Any]], figure: str | None) -> str:
    lines = ["# Benchmarks", "",
             "Written by `python -m ops.bench.report` from `ops/bench/results/*.json`;",
             "each bench writes its result there with `reconciler bench NAME --out`.", ""]
    if not results:
        return "\n".join([*lines, "No results yet.", ""])
    lines += machine_section(results)
    lines += targets_section(results)
    if figure:
        lines += ["## Latency distributions", "", f"![latency distributions]({figure})", ""]
    for result in sorted(results, key=lambda r: str(r["bench"])):
        lines += bench_section(result)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ops.bench.report", description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of bench JSON files")
    p.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = p.parse_args(argv)
    results = load(args.results)
    figure = None
    series = distributions(results)
    png = args.results / PNG_NAME
    if series and draw(series, png):
        figure = os.path.relpath(png.resolve(), args.output.resolve().parent)
    args.output.write_text(render(results, figure))
    print(f"wrote {args.output}" + (f" and {png}" if figure else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
