"""The run's table (terminal and Markdown) and report.md, saying which differences are beyond noise.

The rule: a cell is compared with the best cell at similar cost, i.e. among the finished cells
whose counted NFE is within a factor ``NFE_WINDOW`` of its own. The difference is beyond noise
when it exceeds ``NOISE_Z`` combined standard errors, √(se_cell² + se_best²). Cells share their
starting noise, so their errors are positively correlated and this test is conservative.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diffbench.analysis import plots
from diffbench.run.calibration import COUNTED_TIME_METHOD
from diffbench.run.rundir import STATUS_OK, UNCERTAINTY_SUFFIX, RunDir, metric_names, write_atomic

NFE_WINDOW = 1.25
NOISE_Z = 2.0
RULE = (
    f"`vs best ≤{NFE_WINDOW:g}× NFE` compares each cell with the best cell whose counted NFE is within a "
    f"factor {NFE_WINDOW:g} of its own (`no peer`: no other cell is that close in cost, so nothing is "
    f"claimed). A difference is called beyond noise when it exceeds {NOISE_Z:g} combined standard errors "
    f"(√(se_cell² + se_best²)); cells share their starting noise, so this test is conservative. "
    f"`front (all NFE)` says whether a cell is on the Pareto front of metric against NFE over all cells "
    f"(no cell is both cheaper or as cheap and better), judged on the estimates, without noise."
)


def fmt_pm(value: Any, se: Any) -> str:
    """'value ± se' with the digits the uncertainty supports."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    value = float(value)
    se = float(se) if se is not None and not (isinstance(se, float) and math.isnan(se)) else None
    if se is None or se <= 0 or not math.isfinite(se):
        return f"{value:.4g}"
    if not 1e-3 <= se < 1e4 or abs(value) >= 1e6:  # the error sets the digits; outside that, significant figures
        return f"{value:.3g} ± {se:.2g}"
    digits = min(6, max(0, 1 - math.floor(math.log10(se))))
    return f"{value:.{digits}f} ± {se:.{digits}f}"


def directions(manifest: dict[str, Any]) -> dict[str, bool]:
    """Metric value name → higher is better, as recorded by the runner."""
    return {k: bool(v.get("higher_is_better")) for k, v in manifest.get("metric_values", {}).items()}


def verdict_column(metric: str) -> str:
    return f"{metric} vs best ≤{NFE_WINDOW:g}× NFE"


def front_column(metric: str) -> str:
    return f"{metric} front (all NFE)"


def noise_verdicts(
    frame: pd.DataFrame, metric: str, higher_is_better: bool = False, *, window: float = NFE_WINDOW, z: float = NOISE_Z
) -> pd.Series:
    """Per cell: 'best', 'within noise' or 'worse (k.k σ)' against the best cell within a factor ``window``
    of its NFE; 'no peer' when no other cell is that close in cost."""
    out = pd.Series("", index=frame.index, dtype=object)
    ok = frame[(frame["status"] == STATUS_OK) & frame[metric].notna()]
    vals = ok[metric].astype(float)
    ses = pd.to_numeric(ok[metric + UNCERTAINTY_SUFFIX], errors="coerce")
    nfe = ok["nfe"].astype(float)
    sign = -1.0 if higher_is_better else 1.0
    for i in ok.index:
        peers = ok.index[(nfe / nfe[i]).between(1 / window, window)]
        if len(peers) == 1:
            out[i] = "no peer"
            continue
        best = min(peers, key=lambda j: sign * vals[j])
        if best == i or vals[best] == vals[i]:
            out[i] = "best"
            continue
        combined = math.hypot(ses[i], ses[best]) if np.isfinite([ses[i], ses[best]]).all() else math.nan
        if not combined > 0:
            out[i] = "no uncertainty"
        else:
            k = abs(vals[i] - vals[best]) / combined
            out[i] = f"worse ({k:.1f}σ)" if k > z else "within noise"
    return out


def pareto_verdicts(frame: pd.DataFrame, metric: str, higher_is_better: bool = False) -> pd.Series:
    """Per cell: 'front' when no cell has NFE ≤ its own and a better value, else 'dominated by <cell>'."""
    out = pd.Series("", index=frame.index, dtype=object)
    ok = frame[(frame["status"] == STATUS_OK) & frame[metric].notna() & frame["nfe"].notna()]
    vals, nfe = ok[metric].astype(float), ok["nfe"].astype(float)
    sign = -1.0 if higher_is_better else 1.0
    labels = plots.series_labels(ok) if len(ok) else pd.Series(dtype=object)
    for i in ok.index:
        better = ok.index[(nfe <= nfe[i]) & (sign * vals < sign * vals[i])]
        if not len(better):
            out[i] = "front"
            continue
        j = min(better, key=lambda k: (sign * vals[k], nfe[k]))
        out[i] = f"dominated by {labels[j]} ({vals[j]:.3g} at {nfe[j]:g} NFE)"
    return out


def has_uncertainty(frame: pd.DataFrame, metric: str) -> bool:
    return bool(pd.to_numeric(frame[metric + UNCERTAINTY_SUFFIX], errors="coerce").notna().any())


def convergence_orders(frame: pd.DataFrame, metric: str, records: list[dict[str, Any]]) -> pd.DataFrame:
    """Per line: the declared order; the measured one, −slope of log(metric) against log(steps) fitted
    over the finer half of its step counts (at least two points); the local order between neighbours."""
    declared = {(r.get("model"), r.get("sampler")): r.get("sampler_order") for r in records}
    ok = frame[(frame["status"] == STATUS_OK) & (pd.to_numeric(frame[metric], errors="coerce") > 0)].copy()
    ok["series"] = plots.series_labels(ok)
    rows = []
    for label, s in ok.groupby("series", sort=False):
        s = s.sort_values("steps")
        fine = s[s["steps"] >= s["steps"].median()] if len(s) > 3 else s
        if len(fine) < 2:
            continue
        log_n, log_e = np.log(s["steps"].astype(float)).to_numpy(), np.log(s[metric].astype(float)).to_numpy()
        slope = np.polyfit(np.log(fine["steps"].astype(float)), np.log(fine[metric].astype(float)), 1)[0]
        local = -np.diff(log_e) / np.diff(log_n)
        order = declared.get((s["model"].iloc[0], s["sampler"].iloc[0]))
        rows.append(
            {
                "line": label,
                "declared order": "-" if order is None else order,
                "measured order": f"{-slope:.2f}",
                "fitted over steps": ", ".join(str(n) for n in fine["steps"]),
                "local orders (coarse → fine)": ", ".join(f"{v:.2f}" for v in local),
            }
        )
    return pd.DataFrame(rows)


def display_table(frame: pd.DataFrame, dirs: dict[str, bool] | None = None) -> pd.DataFrame:
    """The display table: identity, NFE, each metric ± se with its verdict, timing, status."""
    dirs = dirs or {}
    t = pd.DataFrame(index=frame.index)
    if plots.varies(frame, "model"):
        t["model"] = frame["model"]
    t["sampler"], t["scheduler"], t["steps"] = frame["sampler"], frame["scheduler"], frame["steps"]
    t["NFE"] = frame["nfe"].map(lambda v: "" if pd.isna(v) else f"{v:g}")
    if plots.varies(frame, "guidance"):
        t["w"] = frame["guidance"].map(plots.guidance_text)
    for m in metric_names(frame):
        t[m] = [fmt_pm(v, s) for v, s in zip(frame[m], frame[m + UNCERTAINTY_SUFFIX])]
        if has_uncertainty(frame, m):  # no verdicts for a metric without errors (solver-error-max)
            t[verdict_column(m)] = noise_verdicts(frame, m, dirs.get(m, False))
            t[front_column(m)] = pareto_verdicts(frame, m, dirs.get(m, False))
    t["s/sample"] = frame["seconds_per_sample"].map(lambda v: "" if pd.isna(v) else f"{v:.3g}")
    if "counted_seconds_per_sample" in frame and frame["counted_seconds_per_sample"].notna().any():
        t["counted s/sample"] = frame["counted_seconds_per_sample"].map(lambda v: "" if pd.isna(v) else f"{v:.3g}")
    t["net %"] = frame["network_share"].map(lambda v: "" if pd.isna(v) else f"{100 * v:.0f}")
    t["status"] = [
        s if s == STATUS_OK else f"{s}: {e if isinstance(e, str) else ''}"
        for s, e in zip(frame["status"], frame["error"])
    ]
    return t


def markdown(t: pd.DataFrame) -> str:
    """A pipe table (no extra dependency)."""

    def cells(row):
        return "| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |"

    lines = [cells(t.columns), "|" + "|".join("---" for _ in t.columns) + "|"]
    lines += [cells(row) for row in t.itertuples(index=False)]
    return "\n".join(lines)


def text_table(frame: pd.DataFrame, dirs: dict[str, bool] | None = None) -> str:
    """The table for a terminal."""
    return display_table(frame, dirs).to_string(index=False, max_colwidth=100)


def _methods(records: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in records:
        for name, m in r.get("metrics", {}).items():
            if m.get("method") and m["method"] not in out.setdefault(name, []):
                out[name].append(m["method"])
    return out


def _header(manifest: dict[str, Any]) -> list[str]:
    git = manifest.get("git") or {}
    counts = manifest.get("cells", {})
    models = ", ".join(
        f"`{key}` ({m.get('target')} target, {m.get('schedule')} schedule, checkpoint {m.get('checkpoint_hash')})"
        for key, m in (manifest.get("models") or {}).items()
    )
    lines = [
        f"- **model**: {models or 'unknown'}; reference data: {manifest.get('reference') or 'none'}",
        f"- **samples**: {manifest.get('num_samples')} per seed × seeds {manifest.get('seeds')}; "
        f"batch size {manifest.get('batch_size')}",
        f"- **device**: {manifest.get('device')} ({manifest.get('device_name')}), dtype {manifest.get('dtype')}, "
        f"torch {manifest.get('versions', {}).get('torch')}",
        f"- **code**: diffbench {manifest.get('versions', {}).get('diffbench')}, git {git.get('sha') or 'unknown'}"
        + (" (dirty)" if git.get("dirty") else ""),
        f"- **run**: {manifest.get('status')}, started {manifest.get('started')}, "
        f"{manifest.get('wall_seconds', 0):.0f} s wall-clock; cells ok {counts.get('ok', 0)}, "
        f"failed {counts.get('failed', 0)} of {counts.get('total', 0)}",
        f"- **command**: `{manifest.get('command')}`",
    ]
    if manifest.get("missing_cells"):  # a merged sharded run that no shard has finished yet
        lines.append(
            f"- **missing cells** ({len(manifest['missing_cells'])}, no record yet): "
            + ", ".join(f"`{c}`" for c in manifest["missing_cells"])
        )
    for key, value in (manifest.get("metric_info") or {}).items():
        if key != TRAJECTORY_REFERENCES:  # a section of its own
            lines.append(f"- **{key}**: {value}")
    return lines


TRAJECTORY_REFERENCES = "trajectory_references"


def _reference_section(manifest: dict[str, Any]) -> list[str]:
    """The trajectory-error references: what each cost, where it stopped and how it was solved, one row each."""
    refs = (manifest.get("metric_info") or {}).get(TRAJECTORY_REFERENCES) or {}
    if not refs:
        return []
    rows = []
    for digest, info in refs.items():
        stops = info.get("stops") or []
        rows.append(
            {
                "reference": f"`{digest[:12]}`",
                "model": info.get("model", "?"),
                "from σ": f"{info['sigma_start']:.4g}" if "sigma_start" in info else "?",
                "stops (σ_last; → 0: then D)": ", ".join(f"{s:.4g}" + (" → 0" if z else "") for s, z in stops) or "?",
                "samples": info.get("samples"),
                "NFE/sample": _fmt_count(info.get("nfe_per_sample")),
                "NFE": _fmt_count(info.get("nfe")),
                "steps/sample": _fmt_count(info.get("steps")),
                "rejected/sample": _fmt_count(info.get("rejected")),
                "tolerance": f"rtol {info.get('rtol', float('nan')):g}, atol {info.get('atol', float('nan')):g}",
                "this run": "cached" if info.get("from_cache") else f"computed, {info.get('seconds', 0):.1f} s",
            }
        )
    computed = sum(float(i.get("nfe") or 0) for i in refs.values() if not i.get("from_cache"))
    return [
        "## trajectory-error references",
        "",
        "Each reference solves the model's probability-flow ODE in float64 with "
        + str(next(iter(refs.values())).get("method", "an error-controlled solver"))
        + ", once for every cell from the same starting noise: "
        "it stops at each cell's last positive σ (then takes D there when the grid ends at 0). "
        f"Computed in this run: {computed:,.0f} network evaluations.",
        "",
        markdown(pd.DataFrame(rows)),
        "",
    ]


def _fmt_count(value: Any) -> str:
    return "?" if value is None else f"{float(value):,.0f}"


def write_report(
    run: RunDir,
    frame: pd.DataFrame | None = None,
    plot_files: list[Path] | None = None,
    records: list[dict[str, Any]] | None = None,
) -> Path:
    """Write report.md into the run directory: header, table, noise rule, plots, failures, samples."""
    manifest = run.read_manifest()
    frame = run.read_csv() if frame is None else frame
    records = sorted(run.read_cells() if records is None else records, key=lambda r: r.get("index", 0))
    dirs = directions(manifest)
    plot_files = (
        plot_files
        if plot_files is not None
        else [run.path / n for n in (plots.NFE_PLOT, plots.TIME_PLOT, plots.GUIDANCE_PLOT) if (run.path / n).exists()]
    )
    out = [f"# {manifest.get('suite')}", ""]
    if manifest.get("description"):
        out += [manifest["description"].strip(), ""]
    out += [
        *_header(manifest),
        "",
        "## Results",
        "",
        markdown(display_table(frame, dirs)) if len(frame) else "_no cells finished_",
        "",
    ]
    out += [
        "**Reading the table.** NFE is counted network evaluations per sample (guidance counts both "
        "halves); `s/sample` is sampling wall-clock per sample after a warm-up, metrics excluded (it follows "
        "the machine's load); `counted s/sample` is " + COUNTED_TIME_METHOD + ": the same for the same "
        "work whatever else the machine runs, and the time axis of the plots; `net %` is the share of "
        "wall-clock spent inside the network. " + RULE,
        "",
    ]
    for name, methods in _methods(records).items():
        better = "higher" if dirs.get(name) else "lower"
        out.append(f"- `{name}` ({better} is better): uncertainty is {'; '.join(methods)}")
    out.append("")
    for metric in [m for m in metric_names(frame) if "error" in m and not dirs.get(m) and has_uncertainty(frame, m)]:
        orders = convergence_orders(frame, metric, records)
        if len(orders):
            out += [
                f"## Convergence order from `{metric}`",
                "",
                "Measured order = −slope of log error against log steps, least squares over the finer half "
                "of each line's step counts; local orders are the same slope between neighbouring step "
                "counts, so a line settling at its declared order, or flattening on an error floor, shows. "
                "Stochastic samplers have no order to declare.",
                "",
                markdown(orders),
                "",
            ]
    out += _reference_section(manifest)
    if plot_files:
        out += ["## Plots", ""]
        for p in plot_files:
            out += [f"![{p.stem}]({p.name})", "", f"*{plots.caption(p.name)}*", ""]
    failed = [r for r in records if r.get("status") != STATUS_OK]
    if failed:
        out += ["## Failed cells", ""] + [f"- `{r['cell_id']}`: {r.get('error')}" for r in failed] + [""]
    warned = [r for r in records if r.get("warnings")]
    if warned:
        out += [
            "## Warnings",
            "",
            "What a cell's sampling or scoring reported: a plugin sampler whose counted NFE "
            "differs from what it declares (its cells use the counted NFE, but the declaration is wrong), or a "
            "metric left absent and why (trajectory-error for a stochastic sampler).",
            "",
        ]
        out += [f"- `{r['cell_id']}`: {w}" for r in warned for w in r["warnings"]] + [""]
    pictures = [r for r in records if r.get("sample_image")]
    if pictures:
        out += [
            "## Samples",
            "",
            f"<details><summary>one picture per cell (seed {manifest.get('seeds', [0])[0]})</summary>",
            "",
        ]
        out += [
            f"**{r['sampler']} / {r['scheduler']} / {r['steps']} steps**\n\n![{r['cell_id']}]"
            f"(cells/{r['sample_image']})\n"
            for r in pictures
        ]
        out += ["</details>", ""]
    path = run.path / "report.md"
    write_atomic(path, "\n".join(out))
    return path
