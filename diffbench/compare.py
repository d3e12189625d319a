"""Compare a run with a baseline run, cell by cell: better, same within noise, or worse.

Quality: a metric is worse when it moved in its bad direction by more than ``z`` combined standard
errors √(se_base² + se_run²) plus the metric's tolerance. Cost: counted NFE may not grow. Speed:
sampling time is expressed in evaluations of the model's own network timed on the same machine
(inside the timed call, else the run's calibration), so a baseline from another machine compares
fairly; it is worse when that grew by more than the time tolerance. Harness: the sampler's and
wrapper's own work per network call, probed with a zero network outside the timed sampling and
expressed in units of a CPU reference timed in the same moments (calibration.harness_probe); worse when
it grew by more than the harness tolerance and by more than a floor, so a sampler loop that got twice as
slow is seen even when the network takes 99 % of the time. Drift: the relative RMS change of the cell's
first samples (same noise, same indices) against the baseline's; beyond the round-off floor the cell is
"changed", a verdict of its own. See docs/regression.md.
"""
from __future__ import annotations

import math
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from diffbench import drift
from diffbench.calibration import HARNESS_METHOD, HARNESS_REPEATS
from diffbench.metrics.base import conventional_direction
from diffbench.results import SCHEMA_VERSION, STATUS_OK, DamagedFileError, RunDir, dumps, find_run
from diffbench.text import shorten

Z = 2.0
TIME_TOL = 0.25  # in-call normalised time varied ≤ 4.3% over 8 smoke runs on a loaded 2-core CPU
HARNESS_TOL = 0.5  # under load on every core: no false alarm in 30 reruns, ×2 flagged in every cell: docs/regression.md
HARNESS_FLOOR = 5e-6  # seconds per call: a change below this is timing noise whatever its ratio
ROUND_OFF_RTOL = 1e-6  # allowance of a metric without standard error: about 8 float32 ulps of its value
NFE_RTOL = 1e-9
BETTER, SAME, WORSE, CHANGED = "better", "same", "worse", "changed"


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
    harness_tol: float | None = HARNESS_TOL  # relative; None: harness time not compared
    harness_floor: float = HARNESS_FLOOR  # seconds per network call
    drift_floor: float | None = drift.FLOOR  # relative RMS change of the first samples; None: not compared

    def __post_init__(self) -> None:
        if isinstance(self.z, bool) or not isinstance(self.z, (int, float)) or not 0 <= self.z < math.inf:
            raise CompareError(f"z {self.z!r}: must be a finite non-negative number (nan or inf would switch "
                               "the quality gate off)")

    def tolerance(self, metric: str) -> Tolerance:
        return self.metric_tol.get(metric, self.metric_tol.get("", Tolerance()))

    def describe(self) -> str:
        tols = ", ".join(f"{k or 'default'} {v}" for k, v in sorted(self.metric_tol.items())) or "0"
        speed = "not compared" if self.time_tol is None else f"worse beyond {100 * self.time_tol:g}%"
        harness = "not compared" if self.harness_tol is None else (
            f"worse beyond {100 * self.harness_tol:g}% and {1e6 * self.harness_floor:g} µs per call")
        drifted = "not compared" if self.drift_floor is None else f"changed beyond {self.drift_floor:g}"
        return (f"quality worse beyond z = {self.z:g} combined standard errors √(se_base² + se_run²) + tolerance "
                f"({tols}), or {ROUND_OFF_RTOL:g}·|baseline| for a metric without standard error; NFE may not "
                f"grow; speed (sampling time in network evaluations on the run's own machine) {speed}; harness "
                f"(CPU time per call between calls with a zero network, in units of a CPU reference timed in "
                f"the same moments) {harness}; drift (relative RMS change of the first {drift.SAMPLES} samples "
                f"from the same noise) {drifted}")


def parse_metric_tols(items: list[str] | tuple[str, ...]) -> dict[str, Tolerance]:
    """``['0.1', 'fid=0.5', 'kid=5%']`` → tolerances by metric ('' for the default)."""
    out = {}
    for item in items:
        name, _, value = item.rpartition("=")
        out[name.strip()] = Tolerance.parse(value)
    return out


def parse_time_tol(text: str | None, default: float = TIME_TOL) -> float | None:
    """'0.5' or '50%' → 0.5; 'off' → None (not compared); None → ``default``."""
    if text is None:
        return default
    if text.strip().lower() == "off":
        return None
    return Tolerance.parse(text).value


@dataclass
class Check:
    """One comparison inside a cell: a metric, NFE or normalised time."""

    what: str
    baseline: float | None
    run: float | None
    delta: float | None  # run − baseline (time, harness: relative change, run / baseline − 1)
    threshold: float | None  # the allowance: how far the bad direction may go before "worse" (same unit as delta)
    verdict: str
    note: str = ""

    def describe(self) -> str:
        """'baseline → run (change, allowed ±allowance)' in the check's unit, for the log."""
        if self.delta is None:
            return f"{self.what}: {self.note or 'not compared'}"
        if self.what == "drift":
            return (f"drift: the first {drift.SAMPLES} samples moved by {self.delta:.3g} (relative RMS change; "
                    f"round-off floor {self.threshold:.3g})")
        if self.what == "time":
            values = f"{self.baseline:.4g} → {self.run:.4g} network evaluations"
        elif self.what == "harness":
            values = f"{1e6 * self.baseline:.3g} → {1e6 * self.run:.3g} µs CPU per network call"
        else:
            values = f"{self.baseline:.6g} → {self.run:.6g}"
        if self.what in ("time", "harness"):
            change = f"{100 * self.delta:+.1f}%, allowed ±{100 * self.threshold:.3g}%"
        else:
            change = f"{self.delta:+.3g}, allowed ±{self.threshold:.3g}"
        note = f"; {self.note}" if self.note else ""
        return f"{self.what}: {values} ({change}{note})"


@dataclass
class CellComparison:
    """A cell's checks and its verdict: worse if any check is worse, else changed if its samples drifted,
    else better if any is better, else same."""

    cell_id: str
    label: str
    checks: list[Check]
    note: str = ""

    @property
    def verdict(self) -> str:
        verdicts = {c.verdict for c in self.checks}
        for verdict in (WORSE, CHANGED, BETTER):
            if verdict in verdicts:
                return verdict
        return SAME

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
    context: list[dict[str, Any]] = field(default_factory=list)  # what ran, baseline vs run (see run_context)

    refresh: str = ""  # the command that re-records the baseline

    @property
    def regressions(self) -> list[CellComparison]:
        return [c for c in self.cells if c.verdict == WORSE]

    @property
    def changed(self) -> list[CellComparison]:
        """Cells whose samples drifted beyond the round-off floor and that are not worse."""
        return [c for c in self.cells if c.verdict == CHANGED]

    def not_compared(self) -> list[str]:
        """Every check that could not be made, and every run cell the baseline lacks, one line each."""
        out = [f"{cell.label}: {c.what}: {c.note or 'not compared'}"
               for cell in self.cells for c in cell.checks if c.delta is None]
        out += [f"{cell.label}: {cell.note}" for cell in self.cells if not cell.checks]
        out += [f"{_label(c)}: not in the baseline" for c in self.new_cells]
        return out

    def exit_code(self, require_all: bool = False) -> int:
        """0 ok; 1 a cell is worse (or, with ``require_all``, a check was not made); 4 samples changed."""
        if self.regressions or (require_all and self.not_compared()):
            return 1
        return 4 if self.changed else 0

    def as_dict(self) -> dict[str, Any]:
        return {"baseline": str(self.baseline), "run": str(self.run), "z": self.rule.z,
                "metric_tol": {k or "default": str(v) for k, v in self.rule.metric_tol.items()},
                "time_tol": self.rule.time_tol, "harness_tol": self.rule.harness_tol,
                "harness_floor_seconds": self.rule.harness_floor, "round_off_rtol": ROUND_OFF_RTOL,
                "rule": self.rule.describe(), "context": self.context,
                "drift_floor": self.rule.drift_floor, "harness_method": HARNESS_METHOD.format(k=HARNESS_REPEATS),
                "schema_version": SCHEMA_VERSION, "refresh": self.refresh,
                "regressions": len(self.regressions), "changed": len(self.changed),
                "not_compared": self.not_compared(), "cells": [c.as_dict() for c in self.cells],
                "regressed_cells": [{"cell_id": c.cell_id, "label": c.label, "note": c.note,
                                     "worse": [k.describe() for k in c.checks if k.verdict == WORSE]}
                                    for c in self.regressions],
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
        return Check(name, b, r, None, None, SAME, f"the baseline lacks metrics.{name}.value")
    if r is None or not math.isfinite(r):
        return Check(name, b, r, None, None, WORSE, "no value in the run")
    ses = [s for s in (base.get("uncertainty"), run.get("uncertainty")) if s is not None and math.isfinite(s)]
    se = math.sqrt(sum(s * s for s in ses))
    noise = rule.z * se if ses else ROUND_OFF_RTOL * abs(b)  # no standard error: round-off only
    threshold = noise + rule.tolerance(name).of(b)
    delta = r - b
    note = "" if ses else f"no standard error: round-off allowance {ROUND_OFF_RTOL:g}·|baseline|"
    return Check(name, b, r, delta, threshold, _verdict(-delta if higher else delta, threshold), note)


def nfe_check(base: dict[str, Any], run: dict[str, Any]) -> Check:
    """Counted NFE per sample may not grow (it is exact, so no noise allowance)."""
    b, r = base.get("nfe"), run.get("nfe")
    if b is None or r is None:
        return Check("nfe", b, r, None, None, SAME, f"the {'baseline' if b is None else 'run'} lacks nfe")
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
        return Check("time", b, r, None, None, SAME, f"the {'baseline' if b is None else 'run'} lacks network_seconds "
                     "and calibration.<model>.network_seconds_per_call: speed not compared")
    ratio = r / b - 1.0
    return Check("time", b, r, ratio, rule.time_tol, _verdict(ratio, rule.time_tol), f"per {basis}")


def _positive(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    return float(value) if ok else None


def harness_ratio(record: dict[str, Any]) -> float | None:
    """The cell's harness probe: CPU time per network call in units of the CPU reference (harness.ratio)."""
    probe = record.get("harness")
    return _positive(probe.get("ratio")) if isinstance(probe, dict) else None


def schema_version(record: dict[str, Any]) -> int:
    """A record's or manifest's schema version (1 when it has none, as before versions were written)."""
    version = record.get("schema_version", 1)
    return version if isinstance(version, int) and not isinstance(version, bool) else 1


def _lacks(field_name: str, record: dict[str, Any]) -> str:
    version = schema_version(record)
    older = f" (schema {version}, older than {SCHEMA_VERSION})" if version < SCHEMA_VERSION else ""
    return f"{field_name}{older}"


def harness_check(base: dict[str, Any], run: dict[str, Any], rule: Rule) -> Check | None:
    """Worse when the harness CPU time per network call grew by more than the harness tolerance and the floor.

    Both runs' figures are harness probes (``calibration.harness_probe``): the sampler and σ-space wrapper
    with a zero network, their CPU time per call divided by a CPU reference timed in the same moments,
    minimum over repetitions. The baseline's ratio times the run's reference is what the harness should
    cost on the run's machine now; the check is shown in µs of the run's machine.
    """
    if rule.harness_tol is None:
        return None
    b, r = harness_ratio(base), harness_ratio(run)
    if b is None or r is None:
        rec, which = (base, "baseline") if b is None else (run, "run")
        why = "a sampler with fewer than two network calls, or a failed probe" if schema_version(rec) >= 2 \
            else "records written before the harness probe"
        return Check("harness", None, None, None, None, SAME,
                     f"the {which} lacks {_lacks('harness.ratio', rec)}: {why}")
    ref = _positive(run["harness"].get("reference_seconds"))
    if ref is None:
        return Check("harness", None, None, None, None, SAME, "the run's harness probe lacks reference_seconds")
    expected, got = b * ref, r * ref  # µs on the run's machine now; the ratio r / b is what is judged
    allowance = max(rule.harness_tol, rule.harness_floor / expected)
    return Check("harness", expected, got, r / b - 1.0, allowance, _verdict(r / b - 1.0, allowance), "")


def drift_check(base: dict[str, Any], run: dict[str, Any], rule: Rule) -> Check | None:
    """Changed when the first samples moved by more than the round-off floor (relative RMS change)."""
    if rule.drift_floor is None:
        return None
    b, r = base.get("drift_fingerprint"), run.get("drift_fingerprint")
    if not isinstance(b, dict) or not isinstance(r, dict):
        rec, which = (base, "baseline") if not b else (run, "run")
        return Check("drift", None, None, None, None, SAME, f"the {which} lacks {_lacks('drift_fingerprint', rec)}")
    try:
        change = drift.relative_rms_change(b, r)
    except ValueError as exc:
        return Check("drift", None, None, None, None, SAME, f"fingerprints cannot be paired: {exc}")
    return Check("drift", 0.0, change, change, rule.drift_floor, CHANGED if change > rule.drift_floor else SAME)


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
    for extra in (time_check(base, run, base_manifest, run_manifest, rule), harness_check(base, run, rule),
                  drift_check(base, run, rule)):
        if extra is not None:
            checks.append(extra)
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


def _git(manifest: dict[str, Any]) -> str | None:
    git = manifest.get("git") or {}
    if not git.get("sha"):
        return None
    return str(git["sha"])[:10] + (" (uncommitted changes)" if git.get("dirty") else "")


def _device(manifest: dict[str, Any]) -> str | None:
    device, name = manifest.get("device"), manifest.get("device_name")
    return f"{device} ({name})" if device and name else device


def run_context(base: dict[str, Any], run: dict[str, Any]) -> list[dict[str, Any]]:
    """What ran, in both runs: diffbench, each plugin distribution, git commit, device, torch; flags changes."""
    def version(m: dict[str, Any], key: str) -> Any:
        return (m.get("versions") or {}).get(key)

    items: list[tuple[str, Any, Any]] = [("diffbench", version(base, "diffbench"), version(run, "diffbench"))]
    plugins = sorted(set(base.get("plugins") or {}) | set(run.get("plugins") or {}))
    items += [(f"plugin {d}", (base.get("plugins") or {}).get(d, "absent"), (run.get("plugins") or {}).get(d, "absent"))
              for d in plugins if d != "diffbench"]
    items += [("git commit", _git(base), _git(run)), ("device", _device(base), _device(run)),
              ("torch", version(base, "torch"), version(run, "torch"))]
    return [{"what": what, "baseline": b, "run": r, "changed": b != r} for what, b, r in items]


def refresh_command(baseline: Path, manifest: dict[str, Any]) -> str:
    """The commands that re-record ``baseline``: its suite run afresh, then copied in by ``diffbench baseline``."""
    try:
        words = shlex.split(str(manifest.get("command") or ""))
    except ValueError:
        words = []
    suite = next((shlex.quote(words[i + 1]) for i, w in enumerate(words[:-1]) if w == "run"), None)
    if suite is None:
        suite = f"<the suite file of {manifest.get('suite')!r}>"
    new = f"/tmp/{manifest.get('suite') or 'baseline'}-new"
    return (f"diffbench run {suite} --out {new} --no-progress && rm -rf {shlex.quote(str(baseline))} "
            f"&& diffbench baseline {new} {shlex.quote(str(baseline))}")


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
                      machines(base_manifest, run_manifest), run_context(base_manifest, run_manifest),
                      refresh_command(base_dir.path, base_manifest))


# --- display -----------------------------------------------------------------------------------

NOTE_WIDTH = 60


def _fmt_check(c: Check) -> str:
    if c.delta is None:
        return "not compared" if c.note else "-"  # why: under the table
    if c.what in ("time", "harness"):
        text = f"{100 * c.delta:+.0f}% (±{100 * c.threshold:.3g}%)"
    elif c.what == "drift":
        text = f"{c.delta:.2g} (≤{c.threshold:.2g})"
    elif c.what == "nfe":
        text = f"{c.baseline:g}→{c.run:g}"
    else:
        text = f"{c.delta:+.3g} (±{c.threshold:.2g})"
    return text if c.verdict == SAME else f"{text} {c.verdict}"


PLAIN_CHECKS = ("nfe", "time", "harness", "drift", "status")  # shown under their own name, not as "Δmetric"


def _column(what: str) -> str:
    return what if what in PLAIN_CHECKS else "Δ" + what


def table(result: Comparison) -> pd.DataFrame:
    """One row per cell: its verdict, then each check's change and allowance (Δ metric ±allowance, time %)."""
    rows = []
    for cell in result.cells:
        row = {"cell": cell.label, "verdict": cell.verdict}
        for c in cell.checks:
            row[_column(c.what)] = _fmt_check(c)
        if cell.note:
            row["note"] = shorten(cell.note, NOTE_WIDTH)  # in full under "regressions"
        rows.append(row)
    return pd.DataFrame(rows).fillna("")


def _context_lines(result: Comparison) -> list[str]:
    if not result.context:
        return []
    width = max(len(c["what"]) for c in result.context)
    bw = max(len(str(c["baseline"])) for c in result.context)
    lines = ["what ran (baseline → run):"]
    for c in result.context:
        mark = f"→ {c['run']}   CHANGED" if c["changed"] else "(same)"
        lines.append(f"  {c['what']:<{width}}  {str(c['baseline']):<{bw}}  {mark}".rstrip())
    return lines


def text(result: Comparison) -> str:
    """The terminal report: what changed between the runs, the table, each regression in full, the rule,
    a summary, and last the regressed cells."""
    lines = [f"baseline {result.baseline}", f"run      {result.run}", *_context_lines(result)]
    if result.machines:
        lines.append(result.machines)
    lines += ["", table(result).to_string(index=False, max_colwidth=NOTE_WIDTH + 1)]
    if result.regressions:
        lines += ["", "regressions (baseline → run, change, allowance):"]
        for cell in result.regressions:
            lines.append(f"  {cell.label}" + (f": {cell.note}" if cell.note else ""))
            lines += [f"    {c.describe()}" for c in cell.checks if c.verdict == WORSE and c.what != "status"]
    if result.changed:
        lines += ["", "changed (samples moved beyond round-off; metrics within noise):"]
        lines += [f"  {cell.label}: {c.describe()}" for cell in result.changed for c in cell.checks
                  if c.verdict == CHANGED]
    lines += ["", f"rule: {result.rule.describe()}",
              f"harness measure: {HARNESS_METHOD.format(k=HARNESS_REPEATS)}"]
    if result.new_cells:
        lines.append(f"not in the baseline (not compared): {', '.join(_label(c) for c in result.new_cells)}")
    lines += [f"warning: {w}" for w in result.warnings]
    skipped = sorted({f"{c.what}: {c.note}" for cell in result.cells for c in cell.checks
                      if c.delta is None and c.note})
    lines += [f"not compared: {note}" for note in skipped]
    if skipped:
        lines.append(f"to record every check, refresh the baseline: {result.refresh}")
    lines.append(summary(result))
    if result.regressions:
        lines.append("regressed cells:")
        lines += [f"  {c.label}: " + ", ".join(k.what for k in c.checks if k.verdict == WORSE)
                  for c in result.regressions]
    return "\n".join(lines)


def summary(result: Comparison) -> str:
    """'N cells: … better, … same within noise, [… changed,] … worse' and the gate's outcome."""
    n, counts = len(result.regressions), {v: sum(c.verdict == v for c in result.cells)
                                          for v in (BETTER, SAME, CHANGED, WORSE)}
    outcome = (f" → REGRESSION in {n} cell(s)" if n else
               f" → CHANGED: samples of {counts[CHANGED]} cell(s) moved beyond round-off" if counts[CHANGED] else "")
    changed = f"{counts[CHANGED]} changed, " if counts[CHANGED] else ""
    return (f"{len(result.cells)} cells: {counts[BETTER]} better, {counts[SAME]} same within noise, "
            f"{changed}{counts[WORSE]} worse{outcome}")


def markdown(result: Comparison) -> str:
    """The comparison as GitHub-flavoured Markdown (a CI job summary): outcome, table, regressions, what was not compared."""
    def cell_text(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    frame = table(result)
    icon = {WORSE: "❌", CHANGED: "⚠️", BETTER: "✅", SAME: "✅"}
    lines = [f"### diffbench compare: {summary(result)}", "",
             f"baseline `{result.baseline}` → run `{result.run}`", ""]
    changed = [c for c in result.context if c["changed"]]
    if changed:
        lines += ["what changed: " + "; ".join(f"{c['what']} {c['baseline']} → {c['run']}" for c in changed), ""]
    if len(frame):
        frame.insert(0, "", [icon.get(v, "") for v in frame["verdict"]])
        lines.append("| " + " | ".join(cell_text(c) for c in frame.columns) + " |")
        lines.append("|" + "---|" * len(frame.columns))
        lines += ["| " + " | ".join(cell_text(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    for title, cells, verdict in (("Regressions", result.regressions, WORSE), ("Changed", result.changed, CHANGED)):
        if cells:
            lines += ["", f"**{title}**", ""]
            for cell in cells:
                lines += [f"- {cell.label}" + (f": {cell.note}" if cell.note else "")]
                lines += [f"  - `{c.describe()}`" for c in cell.checks if c.verdict == verdict and c.what != "status"]
    missing = result.not_compared()
    if missing:
        lines += ["", f"**Not compared** ({len(missing)}); refresh the baseline with `{result.refresh}`", ""]
        lines += [f"- {m}" for m in missing]
    lines += ["", f"<sub>rule: {result.rule.describe()}</sub>", ""]
    return "\n".join(lines)


def junit(result: Comparison) -> str:
    """JUnit XML: one test case per cell and check (classname the cell, name the check); worse is a failure,
    changed a failure of type 'changed', a check not made is skipped."""
    from xml.etree import ElementTree as ET

    suite = ET.Element("testsuite", name="diffbench compare", tests="0", failures="0", skipped="0", errors="0")
    tests = failures = skipped = 0
    for cell in result.cells:
        checks = cell.checks or [Check("cell", None, None, None, None, SAME, cell.note or "not compared")]
        for c in checks:
            case = ET.SubElement(suite, "testcase", classname=cell.label, name=c.what)
            tests += 1
            if c.verdict in (WORSE, CHANGED):
                failures += 1
                detail = c.describe() if c.what != "status" else cell.note
                ET.SubElement(case, "failure", type=c.verdict, message=detail).text = detail
            elif c.delta is None and c.what != "status":
                skipped += 1
                ET.SubElement(case, "skipped", message=c.note or "not compared")
            else:
                ET.SubElement(case, "system-out").text = c.describe()
    for cid in result.new_cells:
        case = ET.SubElement(suite, "testcase", classname=_label(cid), name="baseline")
        ET.SubElement(case, "skipped", message="not in the baseline")
        tests, skipped = tests + 1, skipped + 1
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))
    suite.set("skipped", str(skipped))
    ET.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"
