"""Run directories on disk: one JSON record per cell written atomically, cells.csv and manifest.json.

Layout of a run directory::

    manifest.json         what ran, where, with which versions; run status
    suite.json            the validated suite
    cells.csv             one row per cell: while the run goes, a row appended as each cell finishes
                          (completion order); rewritten in grid order when the run closes
    cells/<cell-id>.json  a cell's record: σ list, timesteps, every option, per-seed numbers
    cells/<cell-id>.png   a sample grid (image models) or scatter (2-D models)
    .lock                 held (fcntl) by the run writing here; shards lock names of their own

Every file is written atomically (a temporary file renamed over it) with the permissions the umask
gives a new file, but for the rows appended to cells.csv while a run goes (``CellsCsv``): each is one
write of whole lines, so a reader, or a run killed mid-way, always finds a parseable file. A record
that cannot be read names its file in one line (DamagedFileError).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pandas as pd

STATUS_OK, STATUS_FAILED = "ok", "failed"
# Version of the cell record and manifest layout, written into both as ``schema_version``. Records without
# the field are version 1. 2: ``schema_version``, ``drift_fingerprint`` and the ``harness`` probe in cell
# records. ``compare`` names the field an older baseline lacks for each check it cannot make.
SCHEMA_VERSION = 2
ID_COLUMNS = [
    "suite",
    "cell_id",
    "model",
    "sampler",
    "scheduler",
    "steps",
    "nfe",
    "declared_nfe",
    "guidance",
    "seeds",
    "num_samples",
]
TAIL_COLUMNS = [
    "sample_seconds",
    "seconds_per_sample",
    "counted_seconds_per_sample",
    "network_share",
    "status",
    "error",
]
UNCERTAINTY_SUFFIX = "_se"
NUMBER_COLUMNS = [
    "steps",
    "nfe",
    "declared_nfe",
    "guidance",
    "num_samples",
    "sample_seconds",
    "seconds_per_sample",
    "network_share",
]


LOCK_NAME = ".lock"


class RunDirError(ValueError):
    """A run directory that cannot be used as asked; the message is one line naming the path."""


class DamagedFileError(RunDirError):
    """A file of a run directory that cannot be read (truncated, not JSON, not a record)."""


class RunBusyError(RunDirError):
    """Another process holds the run directory's lock."""


def file_mode() -> int:
    """The mode a new file gets under the current umask (mkstemp's own 0600 is not 'normal')."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix) to write to; renamed over ``path`` when the block ends.

    Readers see the old file or the whole new one, never a part; on an exception (KeyboardInterrupt
    too) the temporary is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())


def _json_safe(v: Any) -> Any:
    """NaN/inf become null so the files are strict JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def dumps(obj: Any) -> str:
    return json.dumps(_json_safe(obj), indent=2, default=str) + "\n"


def as_written(obj: Any) -> Any:
    """``obj`` as ``write_json`` stores it and ``read_json`` gives it back (NaN → None, tuples → lists)."""
    return json.loads(dumps(obj))


def write_json(path: str | Path, obj: Any) -> None:
    write_atomic(path, dumps(obj))


def read_json(path: str | Path) -> Any:
    """A JSON file's data; DamagedFileError naming the file when it is truncated or not JSON."""
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DamagedFileError(f"{path}: unreadable ({_reason(exc)})") from None
    except IsADirectoryError:
        raise DamagedFileError(f"{path}: a directory, not a file") from None
    except RecursionError:
        raise DamagedFileError(f"{path}: unreadable (JSON nested too deeply)") from None
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise DamagedFileError(f"{path}: unreadable ({exc.strerror or type(exc).__name__})") from None


def _reason(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"truncated or not JSON: {exc.msg} at line {exc.lineno}" if exc.msg else "not JSON"
    return f"not UTF-8 text at byte {getattr(exc, 'start', '?')}"


# Fields of a cell record that readers (compare, report, resume) compute with: their JSON types.
_NUMBER_FIELDS = (
    "nfe",
    "declared_nfe",
    "sample_seconds",
    "network_seconds",
    "seconds_per_sample",
    "network_share",
    "harness_seconds_per_call",
    "metric_seconds",
    "steps",
    "guidance",
)
_TEXT_FIELDS = ("status", "model", "sampler", "scheduler", "error", "config_hash")
_MAPPING_FIELDS = ("metrics", "config", "model_identity")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_record_fields(rec: dict[str, Any], path: str | Path) -> None:
    """DamagedFileError naming the file and field when a field readers compute with has the wrong JSON type
    (a metric value that is a string, metrics that are a list, ...)."""

    def bad(field: str, want: str, got: Any) -> DamagedFileError:
        return DamagedFileError(f"{path}: field {field} must be {want}, got {type(got).__name__} {shorten_repr(got)}")

    for key in _NUMBER_FIELDS:
        if rec.get(key) is not None and not _is_number(rec[key]):
            raise bad(key, "a number or null", rec[key])
    for key in _TEXT_FIELDS:
        if rec.get(key) is not None and not isinstance(rec[key], str):
            raise bad(key, "text or null", rec[key])
    for key in _MAPPING_FIELDS:
        if rec.get(key) is not None and not isinstance(rec[key], dict):
            raise bad(key, "a JSON object", rec[key])
    for name, m in (rec.get("metrics") or {}).items():
        if not isinstance(m, dict):
            raise bad(f"metrics[{name!r}]", "a JSON object", m)
        for key in ("value", "uncertainty"):
            if m.get(key) is not None and not _is_number(m[key]):
                raise bad(f"metrics[{name!r}].{key}", "a number or null", m[key])
        if m.get("higher_is_better") is not None and not isinstance(m["higher_is_better"], bool):
            raise bad(f"metrics[{name!r}].higher_is_better", "true, false or null", m["higher_is_better"])


# Manifest fields readers look into: objects, and for some, objects of objects.
_MANIFEST_OBJECTS = ("git", "versions", "plugins", "metric_info", "executor", "plan", "cells", "shard")
_MANIFEST_NESTED = ("models", "calibration", "metric_values", "metrics")


def check_manifest_fields(manifest: dict[str, Any], path: str | Path) -> None:
    """DamagedFileError naming the file and field when a manifest field readers look into has the wrong JSON type."""

    def bad(field: str, want: str, got: Any) -> DamagedFileError:
        return DamagedFileError(f"{path}: field {field} must be {want}, got {type(got).__name__} {shorten_repr(got)}")

    for key in (*_MANIFEST_OBJECTS, *_MANIFEST_NESTED):
        if manifest.get(key) is not None and not isinstance(manifest[key], dict):
            raise bad(key, "a JSON object", manifest[key])
    for key in _MANIFEST_NESTED:
        for name, value in (manifest.get(key) or {}).items():
            if not isinstance(value, dict):
                raise bad(f"{key}[{name!r}]", "a JSON object", value)
    for name, cal in (manifest.get("calibration") or {}).items():
        for field, value in cal.items():
            if value is not None and not isinstance(value, str) and not _is_number(value):
                raise bad(f"calibration[{name!r}].{field}", "a number", value)
    for key in ("suite", "status", "command", "device", "dtype"):
        if manifest.get(key) is not None and not isinstance(manifest[key], str):
            raise bad(key, "text", manifest[key])


def shorten_repr(v: Any, limit: int = 40) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_record(path: str | Path) -> dict[str, Any]:
    """A cell record; DamagedFileError unless it is a JSON object with a cell_id and fields of the right types."""
    rec = read_json(path)
    if not isinstance(rec, dict) or not isinstance(rec.get("cell_id"), str):
        raise DamagedFileError(f"{path}: not a cell record (no cell_id)")
    check_record_fields(rec, path)
    return rec


def check_writable(path: str | Path, what: str) -> None:
    """RunDirError unless ``path`` is, or could be created as, a directory this process can write."""
    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        if probe.is_symlink():  # a dangling link would make mkdir fail later
            raise RunDirError(f"{what} {path}: {probe} is a broken symbolic link")
        probe = probe.parent
    if not probe.is_dir():
        raise RunDirError(f"{what} {path}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunDirError(f"{what} {path}: {probe} is not writable")
    try:  # access() says yes to root where the file system says no (/sys, /proc, read-only mounts): try it
        os.rmdir(tempfile.mkdtemp(prefix=".diffbench-probe-", dir=probe))
    except OSError as exc:
        raise RunDirError(f"{what} {path}: cannot create anything in {probe} ({exc.strerror or exc})") from None


def cell_row(record: dict[str, Any]) -> dict[str, Any]:
    """The cells.csv row of a cell record: identity, cost, each metric with its uncertainty, status."""
    row = {k: record.get(k) for k in ID_COLUMNS}
    row["seeds"] = ";".join(str(s) for s in record.get("seeds", []))
    for name, m in record.get("metrics", {}).items():
        row[name] = m.get("value")
        row[name + UNCERTAINTY_SUFFIX] = m.get("uncertainty")
    row.update({k: record.get(k) for k in TAIL_COLUMNS})
    return row


def table_columns(rows: list[dict[str, Any]], first: list[str] | None = None) -> list[str]:
    """cells.csv's columns for ``rows``: identity, then metric columns (those of ``first`` in its order, then
    the others in order of first appearance), then cost and status."""
    metric_cols = [c for c in first or [] if c not in ID_COLUMNS + TAIL_COLUMNS]
    for r in rows:
        metric_cols += [k for k in r if k not in ID_COLUMNS + TAIL_COLUMNS and k not in metric_cols]
    return ID_COLUMNS + metric_cols + TAIL_COLUMNS


def cells_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per cell in grid order; metric columns in order of first appearance."""
    rows = [cell_row(r) for r in sorted(records, key=lambda r: r.get("index", 0))]
    return pd.DataFrame(rows, columns=table_columns(rows))


def metric_names(frame: pd.DataFrame) -> list[str]:
    """Metric columns of a cells frame (those that have an uncertainty column beside them)."""
    return [c for c in frame.columns if c + UNCERTAINTY_SUFFIX in frame.columns]


class RunDir:
    """A run's output directory."""

    owns_table = True  # writes cells.csv, plots and report.md (a shard's view leaves them to the merge)

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.cells_dir = self.path / "cells"
        self.manifest_path = self.path / "manifest.json"
        self.csv_path = self.path / "cells.csv"
        self.suite_path = self.path / "suite.json"

    def exists(self) -> bool:
        """Whether a run started here: its manifest, or its suite.json when killed before the manifest."""
        return self.manifest_path.exists() or self.suite_path.exists()

    def is_empty(self, ignore: Path | None = None) -> bool:
        """No entries but lock files and temporaries (a run killed before writing anything), and the
        folder holding ``ignore`` (a cache directory the user put inside the run directory)."""
        if not self.path.is_dir():
            return True
        here, kept = self.path.resolve(), Path(ignore).resolve() if ignore is not None else None
        top = kept.relative_to(here).parts[:1] if kept is not None and kept.is_relative_to(here) else ()
        return all(
            p.name.startswith(LOCK_NAME) or (p.name.startswith(".") and ".tmp" in p.name) or (p.name,) == top
            for p in self.path.iterdir()
        )

    @contextlib.contextmanager
    def lock(self, name: str = LOCK_NAME, *, shared: bool = False) -> Iterator[None]:
        """Hold ``RUN/<name>`` (fcntl: a killed process releases it), exclusively or ``shared``; RunBusyError if
        another process holds it in a way that excludes this. Released on every way out of the block.

        A whole run locks ``.lock`` exclusively; a shard locks ``.lock`` shared and a name of its own
        (``.lock-shard-3-of-4``) exclusively, so shards share one directory and no whole run joins them.
        """
        if "/" in name or not name.startswith(LOCK_NAME):
            raise ValueError(f"lock name {name!r} must start with {LOCK_NAME!r} and name no directory")
        path = self.path / name
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, file_mode())
        except OSError as exc:
            raise RunDirError(
                f"{self.path}: cannot create the run directory or its lock ({exc.strerror or type(exc).__name__})"
            ) from None
        try:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunBusyError(
                    f"{self.path}: in use by {self._holders(fd, name)}; wait for it or choose another --out"
                ) from None
            if not shared:  # the holder's pid, for the message another process gives
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _holders(self, fd: int, name: str) -> str:
        """Who holds lock ``name``: the shards running here, else the pid the exclusive holder wrote."""
        shards = sorted(
            p.name.removeprefix(f"{LOCK_NAME}-shard-")
            for p in self.path.glob(f"{LOCK_NAME}-shard-*")
            if lock_is_held(p)
        )
        if name == LOCK_NAME and shards:
            return f"diffbench shard{'s' if len(shards) > 1 else ''} {', '.join(shards)} of a sharded run"
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        return f"another diffbench run (pid {holder}, {name})"

    def cell_path(self, cell_id: str, suffix: str = ".json") -> Path:
        return self.cells_dir / f"{cell_id}{suffix}"

    def write_cell(self, record: dict[str, Any]) -> None:
        write_json(self.cell_path(record["cell_id"]), record)

    def read_cell(self, cell_id: str) -> dict[str, Any] | None:
        """The cell's record, None when there is none; DamagedFileError when it cannot be read."""
        path = self.cell_path(cell_id)
        return read_record(path) if path.exists() else None

    def read_cells(self, on_damaged: Callable[[DamagedFileError], None] | None = None) -> list[dict[str, Any]]:
        """Every cell record; a damaged one raises DamagedFileError, or is passed to ``on_damaged`` and skipped."""
        if not self.cells_dir.is_dir():
            return []
        out = []
        for p in sorted(self.cells_dir.glob("*.json")):
            if p.name.startswith("."):
                continue  # a temporary of an interrupted write
            try:
                out.append(read_record(p))
            except DamagedFileError as exc:
                if on_damaged is None:
                    raise
                on_damaged(exc)
        return out

    def write_csv(self, records: list[dict[str, Any]] | None = None) -> pd.DataFrame:
        """cells.csv rebuilt whole, in grid order, from ``records`` (default: every record in cells/); atomic."""
        frame = cells_frame(self.read_cells() if records is None else records)
        write_atomic(self.csv_path, frame.to_csv(index=False))
        return frame

    def read_csv(self) -> pd.DataFrame:
        """cells.csv as a frame; DamagedFileError naming the file when it cannot be parsed."""
        try:
            frame = pd.read_csv(self.csv_path, keep_default_na=False, na_values=[""])
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DamagedFileError(f"{self.csv_path}: unreadable ({reason})") from None
        numeric = [c for c in NUMBER_COLUMNS if c in frame.columns]
        numeric += [c for m in metric_names(frame) for c in (m, m + UNCERTAINTY_SUFFIX)]
        for col in numeric:
            if not (pd.api.types.is_numeric_dtype(frame[col]) and not pd.api.types.is_bool_dtype(frame[col])):
                values = pd.to_numeric(frame[col], errors="coerce")
                row = int(values.isna().to_numpy().nonzero()[0][0]) if values.isna().any() else 0
                raise DamagedFileError(
                    f"{self.csv_path}: column {col!r} must hold numbers; row {row + 1} holds "
                    f"{shorten_repr(frame[col].iloc[row])}"
                )
        return frame

    def read_manifest(self) -> dict[str, Any]:
        """manifest.json; DamagedFileError when it is missing or not a JSON object."""
        if not self.manifest_path.exists() and self.suite_path.exists():
            raise DamagedFileError(
                f"{self.manifest_path}: missing (the run stopped before writing it; "
                "'diffbench run --resume' finishes it)"
            )
        manifest = read_json(self.manifest_path)
        if not isinstance(manifest, dict):
            raise DamagedFileError(f"{self.manifest_path}: not a run manifest (not a JSON object)")
        check_manifest_fields(manifest, self.manifest_path)
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_json(self.manifest_path, manifest)


class CellsCsv:
    """cells.csv kept as a run's cells finish: one appended row per cell, not a rebuild of the whole table.

    A finished cell's row is appended (one write of whole lines, then flushed) when the file already
    has every column the row fills; the file is rewritten atomically when the row brings a column it
    lacks (the first cell with a new metric value: older rows get an empty value there), when a cell
    finishes again, and on the first row this object adds (with the rows it was given: the kept cells
    of a resumed run). Rows appear in completion order; closing the run (``run/closing.py``) rewrites
    the file in grid order. A reader sees a parseable file at every moment.
    """

    def __init__(self, path: str | Path, records: Sequence[dict[str, Any]] = ()) -> None:
        self.path = Path(path)
        self.rows = {r["cell_id"]: cell_row(r) for r in sorted(records, key=lambda r: r.get("index", 0))}
        self.columns: list[str] | None = None  # the file's columns, once this object has written it

    def add(self, record: dict[str, Any]) -> None:
        """Put ``record``'s row into the file: appended, or the file rewritten (see the class)."""
        row = cell_row(record)
        again = self.rows.pop(record["cell_id"], None) is not None
        self.rows[record["cell_id"]] = row
        if self.columns is None or again or any(k not in self.columns for k in row):
            self._rewrite()
        else:
            self._append(row)

    def _rewrite(self) -> None:
        rows = list(self.rows.values())
        self.columns = table_columns(rows, self.columns)
        write_atomic(self.path, pd.DataFrame(rows, columns=self.columns).to_csv(index=False))

    def _append(self, row: dict[str, Any]) -> None:
        data = pd.DataFrame([row], columns=self.columns).to_csv(index=False, header=False).encode()
        with open(self.path, "ab", buffering=0) as f:  # unbuffered: the line goes out in one write
            written = f.write(data)
            while written < len(data):  # a short write (a signal, a full disk) finishes the line
                written += f.write(data[written:])


def is_result_file(relative: Path) -> bool:
    """Whether a file of a run directory is part of its results: not a lock, not an interrupted write's temporary."""
    return not any(part.startswith(LOCK_NAME) or (part.startswith(".") and ".tmp" in part) for part in relative.parts)


def copy_results(source: str | Path, dest: str | Path) -> list[Path]:
    """Copy a finished run directory's result files to ``dest`` (a baseline), leaving out locks and temporaries.

    ``dest`` must not exist (RunDirError); returns the copied paths relative to the run directory.
    """
    run, dest = find_run(source), Path(dest)
    manifest = run.read_manifest()
    if manifest.get("status") != "complete":
        raise RunDirError(
            f"{run.path}: run status is {manifest.get('status')!r}, not 'complete': a baseline must be a finished run"
        )
    if dest.exists():
        raise RunDirError(f"{dest}: exists; remove it first (the baseline is replaced whole)")
    copied = []
    for path in sorted(p for p in run.path.rglob("*") if p.is_file()):
        rel = path.relative_to(run.path)
        if is_result_file(rel):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / rel)
            copied.append(rel)
    return copied


def lock_is_held(path: str | Path) -> bool:
    """Whether some process holds the lock file ``path`` (False when there is no such file)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def find_run(path: str | Path) -> RunDir:
    """A run directory, or the newest run inside a suite's results folder; FileNotFoundError if none."""
    path = Path(path)
    if RunDir(path).exists():
        return RunDir(path)
    if path.is_dir():
        runs = sorted(p for p in path.iterdir() if RunDir(p).exists())
        if runs:
            return RunDir(runs[-1])
    raise FileNotFoundError(f"{path}: not a diffbench run directory (no manifest.json)")
