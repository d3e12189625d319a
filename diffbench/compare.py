"""Compare a run with a baseline run, cell by cell: better, same within noise, or worse.

Quality: a metric is worse when it moved in its bad direction by more than ``z`` combined standard
errors √(se_base² + se_run²) plus the metric's tolerance. Cost: counted NFE may not grow. Speed:
sampling time is expressed in evaluations of the model's own network timed on the same machine
(inside the timed call, else the run's calibration), so a baseline from another machine compares
fairly; it is worse when that grew by more than the time tolerance. See docs/regression.md.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from diffbench.metrics.base import conventional_direction
from diffbench.results import STATUS_OK, DamagedFileError, RunDir, dumps, find_run

Z = 2.0
TIME_TOL = 0.25  # in-call normalised time varied ≤ 4.3% over 8 smoke runs on a loaded 2-core CPU
NFE_RTOL = 1e-9
BETTER, SAME, WORSE = "better", "same", "worse"


class CompareError(Exception):
    """Runs that cannot be compared (missing, unreadable, different suites or configurations)."""


@dataclass(frozen=True)
class Tolerance:
    """An allowance beyond noise: absolute, or relative to the baseline value."""

    value: float = 0.0
    relative: bool = False

    @classmethod
    def parse(cls, text: str) -> Tolerance:
        """'0.5' (absolute) or '5%' (relative to the baseline)."""
        text = text.strip()
        relative = text.endswith("%")
        try:
            value = float(text[:-1] if relative else text)
        except ValueError:
            raise CompareError(f"tolerance {text!r}: expected a number or a percentage like 5%") from None
        if not 0 <= value < math.inf:  # nan and inf would switch the gate off
            raise CompareError(f"tolerance {text!r}: must be a finite non-negative number")
        return cls(value / 100 if relative else value, relative)

    def of(self, baseline: float) -> float:
        return self.value * abs(baseline) if self.relative else self.value

    def __str__(self) -> str:
        return f"{100 * self.value:g}%" if self.relative else f"{self.value:g}"


@dataclass
class Rule:
    """The thresholds a comparison uses."""

    z: float = Z
    metric_tol: dict[str, Tolerance] = field(default_factory=dict)  # by metric name; "" is the default
    time_tol: float | None = TIME_TOL  # relative; None: speed not compared

    def __post_init__(self) -> None:
        if isinstance(self.z, bool) or not isinstance(self.z, (int, float)) or not 0 <= self.z < math.inf:
            raise CompareError(f"z {self.z!r}: must be a finite non-negative number (nan or inf would switch "
                               "the quality gate off)")

    def tolerance(self, metric: str) -> Tolerance:
        return self.metric_tol.get(metric, self.metric_tol.get("", Tolerance()))

    def describe(self) -> str:
        tols = ", ".join(f"{k or 'default'} {v}" for k, v in sorted(self.metric_tol.items())) or "0"
        speed = "not compared" if self.time_tol is None else f"worse beyond {100 * self.time_tol:g}%"
        return (f"quality worse beyond z = {self.z:g} combined standard errors √(se_base² + se_run²) + tolerance "
                f"({tols}); NFE may not grow; speed (sampling time in network evaluations on the run's own machine) "
                f"{speed}")


def parse_metric_tols(items: list[str] | tuple[str, ...]) -> dict[str, Tolerance]:
    """``['0.1', 'fid=0.5', 'kid=5%']`` → tolerances by metric ('' for the default)."""
    out = {}
    for item in items:
        name, _, value = item.rpartition("=")
        out[name.strip()] = Tolerance.parse(value)
    return out


def parse_time_tol(text: str | None) -> float | None:
    """'0.5' or '50%' → 0.5; 'off' → None (speed not compared); None → the default."""
    if text is None:
        return TIME_TOL
    if text.strip().lower() == "off":
        return None
    return Tolerance.parse(text).value


@dataclass
class Check:
    """One comparison inside a cell: a metric, NFE or normalised time."""

    what: str
    baseline: float | None
    run: float | None
    delta: float | None  # run − baseline (time: relative change, run / baseline − 1)
    threshold: float | None  # how far the bad direction may go before "worse"
    verdict: str
    note: str = ""


@dataclass
class CellComparison:
    """A cell's checks and its verdict: worse if any check is worse, better if any is better, else same."""

    cell_id: str
    label: str
    checks: list[Check]
    note: str = ""

    @property
    def verdict(self) -> str:
        verdicts = {c.verdict for c in self.checks}
        return WORSE if WORSE in verdicts else BETTER if BETTER in verdicts else SAME

    def as_dict(self) -> dict[str, Any]:
        return {"cell_id": self.cell_id, "label": self.label, "verdict": self.verdict, "note": self.note,
                "checks": [asdict(c) for c in self.checks]}


@dataclass
class Comparison:
    """Every matched cell's comparison, plus cells only the run has."""

    baseline: Path
    run: Path
    rule: Rule
    cells: list[CellComparison]
    new_cells: list[str]
    warnings: list[str]
    machines: str | None = None

    @property
    def regressions(self) -> list[CellComparison]:
        return [c for c in self.cells if c.verdict == WORSE]

    def as_dict(self) -> dict[str, Any]:
        return {"baseline": str(self.baseline), "run": str(self.run), "z": self.rule.z,
                "metric_tol": {k or "default": str(v) for k, v in self.rule.metric_tol.items()},
                "time_tol": self.rule.time_tol, "rule": self.rule.describe(),
                "regressions": len(self.regressions), "cells": [c.as_dict() for c in self.cells],
                "new_cells": self.new_cells, "warnings": self.warnings, "machines": self.machines}

    def to_json(self) -> str:
        return dumps(self.as_dict())


# --- reading -----------------------------------------------------------------------------------

def _load(path: str | Path, role: str) -> tuple[RunDir, dict[str, Any], dict[str, dict[str, Any]]]:
    """A run's directory, manifest and cell records by cell id; CompareError if it cannot be read."""
    try:
        run = find_run(path)
        manifest = run.read_manifest()
        records = {r["cell_id"]: r for r in run.read_cells()}
    except FileNotFoundError as exc:
        raise CompareError(f"{role}: {exc}") from None
    except DamagedFileError as exc:
        raise CompareError(f"{role}: {exc}") from None
    except (ValueError, KeyError, TypeError) as exc:  # bad JSON, a record without cell_id
        raise CompareError(f"{role} {path}: unreadable run ({type(exc).__name__}: {exc})") from None
    if not records:
        raise CompareError(f"{role} {run.path}: no cell records")
    return run, manifest, records


def _label(cell_id: str) -> str:
    """The readable part of a cell id (model__sampler__scheduler__nN__gW), without the config hash."""
    return cell_id.rsplit("-", 1)[0]


def _display(record: dict[str, Any], models: int) -> str:
    """'sampler scheduler n=steps [w=guidance]', prefixed by the model where a run has several."""
    text = f"{record.get('sampler')} {record.get('scheduler')} n={record.get('steps')}"
    if record.get("guidance") is not None:
        text += f" w={record['guidance']:g}"
    return f"{record.get('model')} {text}" if models > 1 else text


def _config_difference(base: dict[str, Any], run: dict[str, Any]) -> str:
    """The first configuration key that differs, as 'key: a vs b'."""
    for key in sorted(set(base) | set(run)):
        if base.get(key) != run.get(key):
            return f"{key}: {base.get(key)!r} vs {run.get(key)!r}"
    return "configuration hash differs"


def _match(base: dict[str, dict[str, Any]], run: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Baseline cell ids all present in the run, and the run's extra ids; CompareError otherwise."""
    by_label = {_label(cid): rec for cid, rec in run.items()}
    for cid, rec in base.items():
        if cid in run:
            continue
        other = by_label.get(_label(cid))
        if other is not None:
            diff = _config_difference(rec.get("config") or {}, other.get("config") or {})
            raise CompareError(f"cell {_label(cid)} was run with another configuration ({diff}); "
                               "compare runs of the same suite, or refresh the baseline")
        missing = sorted(_label(c) for c in base if c not in run)
        raise CompareError(f"run lacks {len(missing)} baseline cell(s), e.g. {missing[0]}")
    return list(base), [cid for cid in run if cid not in base]


# --- the checks --------------------------------------------------------------------------------

def higher_is_better(name: str, *records: dict[str, Any], warnings: list[str]) -> bool:
    """A metric value's direction: as recorded by the runner, else the naming convention the runner uses."""
    for rec in records:
        declared = (rec.get("metrics", {}).get(name) or {}).get("higher_is_better")
        if isinstance(declared, bool):
            return declared
    conventional = conventional_direction(name)
    if conventional is not None:
        return conventional
    warnings.append(f"metric {name!r}: direction not recorded; assuming lower is better")
    return False


def _verdict(worse_by: float, threshold: float) -> str:
    if worse_by > threshold:
        return WORSE
    return BETTER if -worse_by > threshold else SAME


def metric_check(name: str, base: dict[str, Any], run: dict[str, Any], higher: bool, rule: Rule) -> Check:
    """Worse when the metric moved the bad way by more than z·√(se_b² + se_r²) + tolerance."""
    b, r = base.get("value"), run.get("value")
    if b is None or not math.isfinite(b):
        return Check(name, b, r, None, None, SAME, "no baseline value")
    if r is None or not math.isfinite(r):
        return Check(name, b, r, None, None, WORSE, "no value in the run")
    ses = [s for s in (base.get("uncertainty"), run.get("uncertainty")) if s is not None and math.isfinite(s)]
    se = math.sqrt(sum(s * s for s in ses))
    threshold = rule.z * se + rule.tolerance(name).of(b)
    delta = r - b
    note = "" if ses else "no uncertainty recorded"
    return Check(name, b, r, delta, threshold, _verdict(-delta if higher else delta, threshold), note)


def nfe_check(base: dict[str, Any], run: dict[str, Any]) -> Check:
    """Counted NFE per sample may not grow (it is exact, so no noise allowance)."""
    b, r = base.get("nfe"), run.get("nfe")
    if b is None or r is None:
        return Check("nfe", b, r, None, None, SAME, "not recorded")
    threshold = NFE_RTOL * abs(b)
    return Check("nfe", b, r, r - b, threshold, _verdict(r - b, threshold))


def in_call_time(record: dict[str, Any]) -> float | None:
    """Sampling time in network evaluations timed inside the same call: NFE × sample / network seconds."""
    nfe, sample_s, network_s = record.get("nfe"), record.get("sample_seconds"), record.get("network_seconds")
    if not nfe or not sample_s or not network_s:
        return None
    return nfe * sample_s / network_s


def calibrated_time(record: dict[str, Any], manifest: dict[str, Any]) -> float | None:
    """Sampling time per batch in bare network calls timed by the run's calibration (start of the run)."""
    cal = (manifest.get("calibration") or {}).get(record.get("model")) or {}
    bare, batch, per_sample = cal.get("network_seconds_per_call"), cal.get("batch_size"), record.get("seconds_per_sample")
    if not bare or not batch or per_sample is None:
        return None
    return per_sample * batch / bare


def time_check(base: dict[str, Any], run: dict[str, Any], base_manifest: dict[str, Any],
               run_manifest: dict[str, Any], rule: Rule) -> Check | None:
    """Worse when the machine-normalised sampling time grew by more than the time tolerance.

    The yardstick is the network's own time inside the timed call when both runs recorded it (it sees
    the same machine load as the call), else each run's calibration (docs/regression.md says why).
    """
    if rule.time_tol is None:
        return None
    b, r, basis = in_call_time(base), in_call_time(run), "in-call network time"
    if b is None or r is None:
        b, r, basis = calibrated_time(base, base_manifest), calibrated_time(run, run_manifest), "calibration"
    if b is None or r is None:
        return Check("time", b, r, None, None, SAME, "no network time or calibration recorded: speed not compared")
    ratio = r / b - 1.0
    return Check("time", b, r, ratio, rule.time_tol, _verdict(ratio, rule.time_tol), f"per {basis}")


def compare_cell(cid: str, base: dict[str, Any], run: dict[str, Any], base_manifest: dict[str, Any],
                 run_manifest: dict[str, Any], rule: Rule, warnings: list[str]) -> CellComparison:
    """Every check of one matched cell."""
    label = _display(base, len(base_manifest.get("models") or {}))
    if base.get("status") != STATUS_OK:
        return CellComparison(cid, label, [], "baseline cell failed: not compared")
    if run.get("status") != STATUS_OK:
        return CellComparison(cid, label, [Check("status", None, None, None, None, WORSE)],
                              f"failed: {run.get('error')}")
    checks = [metric_check(name, m, run.get("metrics", {}).get(name) or {},
                           higher_is_better(name, base, run, warnings=warnings), rule)
              for name, m in base.get("metrics", {}).items()]
    checks.append(nfe_check(base, run))
    timed = time_check(base, run, base_manifest, run_manifest, rule)
    if timed is not None:
        checks.append(timed)
    return CellComparison(cid, label, checks)


def model_changes(base: dict[str, Any], run: dict[str, Any]) -> list[str]:
    """Warnings for models whose checkpoint differs between the runs (a change the gate is judging)."""
    out = []
    for key, ident in (base.get("models") or {}).items():
        b, r = ident.get("checkpoint_hash"), ((run.get("models") or {}).get(key) or {}).get("checkpoint_hash")
        if b != r:
            out.append(f"model {key!r}: checkpoint differs (baseline {str(b)[:12]}, run {str(r)[:12]})")
    return out


def machines(base: dict[str, Any], run: dict[str, Any]) -> str | None:
    """One line on the two machines' bare network speed, from the runs' calibrations."""
    parts = []
    for key, cal in (base.get("calibration") or {}).items():
        other = (run.get("calibration") or {}).get(key) or {}
        b, r = cal.get("network_seconds_per_call"), other.get("network_seconds_per_call")
        if b and r:
            parts.append(f"{key} bare network call {1e3 * b:.3g} ms (baseline) vs {1e3 * r:.3g} ms (run), "
                         f"batch {cal.get('batch_size')}")
    return "calibration: " + "; ".join(parts) if parts else None


def compare(baseline: str | Path, run: str | Path, rule: Rule | None = None) -> Comparison:
    """Compare every baseline cell with the same cell of ``run`` (each a run directory or a suite folder)."""
    rule = rule or Rule()
    base_dir, base_manifest, base_records = _load(baseline, "baseline")
    run_dir, run_manifest, run_records = _load(run, "run")
    if base_manifest.get("suite") != run_manifest.get("suite"):
        raise CompareError(f"baseline is suite {base_manifest.get('suite')!r}, run is suite "
                           f"{run_manifest.get('suite')!r}")
    ids, new = _match(base_records, run_records)
    warnings = model_changes(base_manifest, run_manifest)
    cells = [compare_cell(cid, base_records[cid], run_records[cid], base_manifest, run_manifest, rule, warnings)
             for cid in sorted(ids, key=lambda c: base_records[c].get("index", 0))]
    return Comparison(base_dir.path, run_dir.path, rule, cells, sorted(new), list(dict.fromkeys(warnings)),
                      machines(base_manifest, run_manifest))


# --- display -----------------------------------------------------------------------------------

def _fmt_check(c: Check) -> str:
    if c.delta is None:
        return c.note or "-"
    if c.what == "time":
        text = f"{c.baseline:.3g}→{c.run:.3g} ({100 * c.delta:+.0f}%)"
    elif c.what == "nfe":
        text = f"{c.baseline:g}→{c.run:g}"
    else:
        text = f"{c.delta:+.3g} (±{c.threshold:.2g})"
    return text if c.verdict == SAME else f"{text} {c.verdict}"


def table(result: Comparison) -> pd.DataFrame:
    """One row per cell: its verdict, then each check's delta (metrics: Δ and the allowance ±threshold)."""
    rows = []
    for cell in result.cells:
        row = {"cell": cell.label, "verdict": cell.verdict}
        for c in cell.checks:
            row["Δ" + c.what if c.what not in ("nfe", "time", "status") else c.what] = _fmt_check(c)
        if cell.note:
            row["note"] = cell.note
        rows.append(row)
    return pd.DataFrame(rows).fillna("")


def text(result: Comparison) -> str:
    """The terminal report: table, rule, and a one-line summary."""
    lines = [f"baseline {result.baseline}", f"run      {result.run}"]
    if result.machines:
        lines.append(result.machines)
    lines += ["", table(result).to_string(index=False, max_colwidth=60), "", f"rule: {result.rule.describe()}"]
    if result.new_cells:
        lines.append(f"not in the baseline (not compared): {', '.join(_label(c) for c in result.new_cells)}")
    lines += [f"warning: {w}" for w in result.warnings]
    n = len(result.regressions)
    counts = {v: sum(c.verdict == v for c in result.cells) for v in (BETTER, SAME, WORSE)}
    lines.append(f"{len(result.cells)} cells: {counts[BETTER]} better, {counts[SAME]} same within noise, "
                 f"{counts[WORSE]} worse" + (f" → REGRESSION in {n} cell(s)" if n else ""))
    return "\n".join(lines)
