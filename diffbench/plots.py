"""PNG plots of a run: metric vs NFE, metric vs wall-clock with the Pareto front, sample grids."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from diffbench.results import STATUS_OK, UNCERTAINTY_SUFFIX, atomic_path, metric_names  # noqa: E402

MARKERS = "os^vDPX<>*"  # lines that coincide (ddim and euler are one method) stay visible
NFE_PLOT, TIME_PLOT, GUIDANCE_PLOT = "metric_vs_nfe.png", "metric_vs_time.png", "metric_vs_guidance.png"


# --- per-cell sample pictures ------------------------------------------------------------------

MAX_PREVIEW = 100  # images in a cell's preview grid


def save_samples(samples: torch.Tensor, path: str | Path, *, data_range: tuple[float, float] = (-1.0, 1.0),
                 reference: torch.Tensor | None = None, max_images: int = MAX_PREVIEW) -> Path | None:
    """A grid of the first samples (images) or a scatter (2-D points); None for other shapes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if samples.ndim == 4:
        with atomic_path(path) as tmp:
            _image_grid(samples[:max_images], tmp, data_range)
    elif samples.ndim == 2 and samples.shape[1] == 2:
        with atomic_path(path) as tmp:
            _scatter(samples, tmp, reference)
    else:
        return None
    return path


def _image_grid(images: torch.Tensor, path: Path, data_range: tuple[float, float]) -> None:
    from PIL import Image
    from torchvision.utils import make_grid

    lo, hi = data_range
    x = ((images.float() - lo) / (hi - lo)).clamp(0, 1)
    nrow = int(math.ceil(math.sqrt(len(x))))
    grid = make_grid(x, nrow=nrow, padding=1, pad_value=1.0)
    arr = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    img = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 or (arr[..., 0] == arr[..., 1]).all() else arr)
    scale = max(1, 512 // max(img.size))  # tiny images (8×8 digits) are upscaled to stay readable
    img.resize((img.size[0] * scale, img.size[1] * scale), Image.NEAREST).save(path)


def _scatter(points: torch.Tensor, path: Path, reference: torch.Tensor | None, size: int = 320) -> None:
    """Points drawn straight into a bitmap (matplotlib costs ~0.3 s a figure; a run draws one per cell)."""
    from PIL import Image, ImageDraw

    pts = points.double()[:, :2]
    both = pts if reference is None else torch.cat([pts, reference.double()[:, :2]])
    both = both[torch.isfinite(both).all(1)]
    lo, hi = both.min(0).values, both.max(0).values
    span = float((hi - lo).max()) or 1.0
    centre = (lo + hi) / 2
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, size - 1, size - 1), outline=(160, 160, 160))

    def plot(xy: torch.Tensor, colour: tuple[int, int, int]) -> None:
        pix = ((xy - centre) / span * 0.92 + 0.5) * (size - 1)
        for x, y in pix[torch.isfinite(pix).all(1)].tolist():
            draw.ellipse((x - 1.2, size - 1 - y - 1.2, x + 1.2, size - 1 - y + 1.2), fill=colour)

    if reference is not None:
        plot(reference.double()[:, :2], (190, 190, 190))
    plot(pts, (31, 119, 180))
    draw.text((6, 4), "blue: sampler" + ("   grey: exact" if reference is not None else ""), fill=(60, 60, 60))
    draw.text((6, size - 14), f"x, y in [{float(centre[0]) - span / 2:.2g}, {float(centre[0]) + span / 2:.2g}] x "
              f"[{float(centre[1]) - span / 2:.2g}, {float(centre[1]) + span / 2:.2g}]", fill=(60, 60, 60))
    img.save(path)


# --- run plots ---------------------------------------------------------------------------------

def varies(frame: pd.DataFrame, column: str) -> bool:
    """Whether a column takes more than one value (missing counts as a value: no guidance)."""
    return frame[column].nunique(dropna=False) > 1


def guidance_text(value: Any) -> str:
    return "none" if value is None or pd.isna(value) else f"{float(value):g}"


def series_labels(frame: pd.DataFrame) -> pd.Series:
    """One line per sampler × scheduler (× model and guidance when the suite varies them)."""
    label = frame["sampler"].astype(str) + " / " + frame["scheduler"].astype(str)
    if varies(frame, "model"):
        label = frame["model"].astype(str) + " / " + label
    if varies(frame, "guidance"):
        label = label + " / w=" + frame["guidance"].map(guidance_text)
    return label


def _ok(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    out = frame[(frame["status"] == STATUS_OK) & frame[metric].notna()].copy()
    out["series"] = series_labels(out)
    return out


def _errors(df: pd.DataFrame, metric: str) -> np.ndarray | None:
    se = pd.to_numeric(df[metric + UNCERTAINTY_SUFFIX], errors="coerce").to_numpy(dtype=float)
    return None if np.isnan(se).all() else np.nan_to_num(se)


def is_error_metric(metric: str) -> bool:
    """Error metrics (trajectory-error, solver-error, ...) are read on log axes: their orders are slopes there."""
    return "error" in metric.lower()


def _log_y(values: Iterable[float], metric: str = "") -> bool:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    return len(v) > 1 and bool((v > 0).all()) and (is_error_metric(metric) or v.max() / v.min() > 100)


def _log_axis(ax: Any, which: str, values: pd.Series) -> None:
    """Log scale with plain-number labels at 1, 2, 5 × 10^k while that stays readable."""
    getattr(ax, f"set_{which}scale")("log")
    axis = getattr(ax, f"{which}axis")
    v = pd.to_numeric(values, errors="coerce")
    v = v[v > 0]
    plain = FuncFormatter(lambda t, _: f"{t:g}")
    axis.set_major_formatter(plain)
    if len(v) and v.max() / v.min() < 30:  # within ~1.5 decades, label 2× and 5× too
        axis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        axis.set_minor_formatter(plain)
    else:
        axis.set_minor_formatter(NullFormatter())


def pareto_front(cost: np.ndarray, value: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Indices of points no other point beats on both cost (lower) and value, ordered by cost."""
    v = -value if higher_is_better else value
    order = np.lexsort((v, cost))
    front, best = [], math.inf
    for i in order:
        if v[i] < best:
            front.append(i)
            best = v[i]
    return np.asarray(front, dtype=int)


def _figure(n: int) -> tuple[Any, list[Any]]:
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4.2), dpi=110, squeeze=False)
    fig.subplots_adjust(left=0.55 / n ** 0.5 / 4, right=0.97, bottom=0.13, top=0.92, wspace=0.3)
    return fig, list(axes[0])


def _finish(fig: Any, axes: list[Any], path: Path) -> Path:
    handles, labels = axes[0].get_legend_handles_labels()
    rows = 0
    if handles:  # below the panels; bbox_inches="tight" grows the canvas to fit it
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, len(labels)),
                   fontsize=8, frameon=False)
        rows = math.ceil(len(labels) / min(4, len(labels)))
    if caption(path.name):  # the caption travels with the picture
        import textwrap

        fig.text(0.5, -0.02 - 0.045 * rows, textwrap.fill(caption(path.name), 110), ha="center", va="top",
                 fontsize=7.5, color="0.25")
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path


def plot_vs(frame: pd.DataFrame, metrics: list[str], x: str, path: Path, *, xlabel: str, log_x: bool = True,
            directions: dict[str, bool] | None = None, pareto: bool = False,
            order: tuple[str, ...] = ("nfe",)) -> Path | None:
    """One panel per metric: metric against column ``x`` with error bars, one line per series."""
    metrics = [m for m in metrics if not _ok(frame, m).empty]
    if not metrics:
        return None
    fig, axes = _figure(len(metrics))
    for ax, metric in zip(axes, metrics):
        df = _ok(frame, metric)
        for i, (label, s) in enumerate(df.groupby("series", sort=False)):
            s = s.sort_values([*order, x])  # a line follows step count (by default), whatever the x axis
            ax.errorbar(s[x], s[metric], yerr=_errors(s, metric), marker=MARKERS[i % len(MARKERS)], ms=4,
                        capsize=2, lw=1.2, color=f"C{i % 10}", ls="-" if i < 10 else "--", label=label)
        if pareto:
            higher = (directions or {}).get(metric, False)
            idx = pareto_front(df[x].to_numpy(float), df[metric].to_numpy(float), higher)
            front = df.iloc[idx]
            ax.step(front[x], front[metric], where="post", color="k", lw=1, alpha=0.6, zorder=0)
            ax.scatter(front[x], front[metric], s=90, facecolors="none", edgecolors="k", zorder=3,
                       label="Pareto front" if ax is axes[0] else None)
        if log_x:
            _log_axis(ax, "x", df[x])
        if _log_y(df[metric], metric):
            _log_axis(ax, "y", df[metric])
        better = "higher" if (directions or {}).get(metric, False) else "lower"
        ax.set(xlabel=xlabel, ylabel=f"{metric} ({better} is better)", title=metric)
        ax.grid(True, which="both", alpha=0.3)
    return _finish(fig, axes, path)


CAPTIONS = {
    NFE_PLOT: "Each metric (y, ± 1 standard error; log scale for error metrics and for values spanning over "
              "100×) against NFE, network evaluations per sample as counted (x, log scale); one line per "
              "sampler / scheduler, points at each step count.",
    TIME_PLOT: "Each metric (y, ± 1 standard error; log scale as in the NFE plot) against sampling time per "
               "sample (x, log scale): counted NFE × the calibrated bare network call + the measured harness "
               "CPU time per call, so it does not follow the machine's load (runs without calibration: "
               "wall-clock). Circled points: the Pareto front over all cells.",
    GUIDANCE_PLOT: "Each metric (y, ± 1 standard error) against the guidance scale w (x, linear; no guidance "
                   "drawn at w = 1); one line per sampler and step count.",
}


def caption(name: str) -> str:
    """What a run plot's axes mean (report.md prints it under the plot)."""
    return CAPTIONS.get(name, "")


def time_column(frame: pd.DataFrame) -> tuple[str, str]:
    """The time axis: counted seconds per sample when the run recorded them, else wall-clock."""
    if "counted_seconds_per_sample" in frame and frame["counted_seconds_per_sample"].notna().any():
        return "counted_seconds_per_sample", "seconds per sample (counted NFE × calibrated call + harness)"
    return "seconds_per_sample", "wall-clock seconds per sample"


def make_plots(frame: pd.DataFrame, out_dir: str | Path, directions: dict[str, bool] | None = None) -> list[Path]:
    """All run plots that the data supports; returns the files written."""
    out_dir = Path(out_dir)
    metrics = metric_names(frame)
    time_col, time_label = time_column(frame)
    made = [
        plot_vs(frame, metrics, "nfe", out_dir / NFE_PLOT, xlabel="NFE (counted network evaluations per sample)",
                directions=directions),
        plot_vs(frame, metrics, time_col, out_dir / TIME_PLOT, xlabel=time_label, directions=directions, pareto=True),
    ]
    if varies(frame, "guidance"):
        g = frame.copy()
        g["guidance"] = pd.to_numeric(g["guidance"], errors="coerce").fillna(1.0)  # no guidance = w 1
        g["sampler"] = g["sampler"].astype(str) + " / n=" + g["steps"].astype(str)
        g["guidance_axis"], g["guidance"] = g["guidance"], 0  # series by sampler × steps, not by w
        made.append(plot_vs(g, metrics, "guidance_axis", out_dir / GUIDANCE_PLOT,
                            xlabel="guidance scale w (no guidance plotted as 1)", log_x=False,
                            directions=directions, order=()))
    return [p for p in made if p is not None]
