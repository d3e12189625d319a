"""The ``diffbench`` command: a thin layer over the Python API.

Exit codes: 0 ok, 1 regression, failed check or a run that finished with failed cells, 2 usage or
configuration error (one line, no traceback), 3 internal error, 4 compare: samples changed beyond
round-off with no regression, 130 interrupted by Ctrl-C, 143 by SIGTERM (every finished cell kept in both).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import click

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERNAL, EXIT_CHANGED = 0, 1, 2, 3, 4
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143


class UserError(Exception):
    """A problem with what the user asked for: reported in one line, exit 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from diffbench.registry import UnknownComponentError
    from diffbench.run.executors import ExecutorError
    from diffbench.run.rundir import RunDirError
    from diffbench.run.suite import SuiteError

    return (UserError, SuiteError, RunDirError, UnknownComponentError, FileNotFoundError, ExecutorError)


def handled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map exceptions to the exit-code convention."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from diffbench.run.runner import RunInterrupted

        try:
            return fn(*args, **kwargs)
        except click.exceptions.Exit:
            raise
        except RunInterrupted as exc:
            click.echo(f"diffbench: {exc}", err=True)
            sys.exit(EXIT_TERMINATED if exc.terminated else EXIT_INTERRUPTED)
        except KeyboardInterrupt:
            click.echo("diffbench: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:  # output piped into `head` and the reader closed: not an error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except _user_errors() as exc:
            click.echo(f"diffbench: error: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except Exception as exc:
            traceback.print_exc()
            click.echo(
                f"diffbench: internal error: {type(exc).__name__}: {exc} (a bug; please report it "
                "with the traceback above)",
                err=True,
            )
            sys.exit(EXIT_INTERNAL)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="diffbench")
def cli() -> None:
    """Benchmark diffusion samplers: quality against counted NFE and wall-clock."""


# Consent, given outside the suite file, for code the suite names (diffbench.util.trust).
TRUST_CODE = click.option(
    "--trust-code",
    is_flag=True,
    help="Let the suite name code to import and run (a python model's factory: "
    "'module:function' or 'file.py:function'); same as DIFFBENCH_TRUST_CODE=1. "
    "Only for suite files you trust.",
)


def _say(line: str) -> None:
    """The plan on stdout (the run's own output); warnings on stderr."""
    click.echo(f"diffbench: {line}", err=line.startswith("warning"))


@cli.command()
@click.argument("suite", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run directory (default: results/<suite>/<run-id>/).",
)
@click.option("--resume", is_flag=True, help="Continue a run: keep its finished cells (default: the newest run).")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Reference-statistics cache (default: $DIFFBENCH_CACHE_DIR or ~/.cache/diffbench).",
)
@click.option(
    "--time-limit",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Fail a cell that takes longer than this (overrides the suite's time_limit; default: none).",
)
@click.option(
    "--allow-large",
    is_flag=True,
    help="Run a plan beyond the size limits (10,000 cells, 10 million samples, 10^10 network "
    "evaluations, 8 GiB of noise per batch).",
)
@click.option("--progress/--no-progress", default=True, help="Progress bars on stderr.")
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help='Where cells run: this process, or one Ray task per cell (pip install "diffbench[ray]").',
)
@click.option(
    "--address",
    default=None,
    metavar="ADDR",
    help="Ray cluster to join (e.g. auto, or ray://head:10001); default: start a local Ray instance.",
)
@click.option(
    "--cell-parts",
    type=int,
    default=1,
    show_default=True,
    metavar="K",
    help="With --executor ray: split each cell's samples into K index ranges, one Ray task each; "
    "features are gathered and every metric scored once (same numbers as unsplit).",
)
@click.option(
    "--shard",
    default=None,
    metavar="I/N",
    help="Run only shard I of N (1-based) into the shared --out directory; merge with 'diffbench report'.",
)
@TRUST_CODE
@handled
def run(
    suite: Path,
    out: Path | None,
    resume: bool,
    cache_dir: Path | None,
    time_limit: float | None,
    allow_large: bool,
    progress: bool,
    executor: str,
    address: str | None,
    cell_parts: int,
    shard: str | None,
    trust_code: bool,
) -> None:
    """Run every cell of SUITE and write cells.csv, plots and report.md (exit 1 if any cell failed)."""
    from diffbench.analysis import report
    from diffbench.api import run_suite
    from diffbench.run.executors import make_executor

    result = run_suite(
        suite,
        out,
        resume=resume,
        cache_dir=cache_dir,
        progress=progress,
        time_limit=time_limit,
        allow_large=allow_large,
        announce=_say,
        shard=shard,
        trust_code=trust_code or None,
        executor=make_executor(executor, address=address, cell_parts=cell_parts),
    )
    skipped = f", {result.skipped} kept from before" if result.skipped else ""
    if shard is not None:
        click.echo(
            f"shard {shard}: {result.ran} cells run ({result.failed} failed){skipped} → {result.path}; "
            f"when every shard is done: diffbench report {result.path}"
        )
    else:
        click.echo(report.text_table(result.cells, report.directions(result.run.read_manifest())))
        click.echo(f"\n{result.ran} cells run ({result.failed} failed){skipped} → {result.path}/report.md")
    if result.failed_cells:
        click.echo(
            f"diffbench: {result.failed_cells} of {len(result.cells)} cells failed (see 'Failed cells' in "
            f"{result.path}/report.md)",
            err=True,
        )
        sys.exit(EXIT_FAILED)


@cli.command()
@click.argument("suites", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--allow-large", is_flag=True, help="Accept a plan beyond the size limits, as run --allow-large.")
@click.option(
    "--no-load",
    is_flag=True,
    help="Only the checks that need no model, weights or data (suite file, plugins, options, grid size): "
    "for a suite whose checkpoint or reference data is not on this machine.",
)
@TRUST_CODE
@handled
def validate(suites: tuple[Path, ...], allow_large: bool, no_load: bool, trust_code: bool) -> None:
    """Run every check 'run' makes before sampling, on each suite file (each file, one line).

    That is the schema and the installed plugins, then the models: σ grids, guidance, the plan's size
    limits, one batch of 2 through each model and each sampler given option values, and a warm-up
    batch on which every metric is tried once. With --no-load, only the first part.
    """
    from diffbench.registry import default_registry
    from diffbench.run.preparation import preflight, static_checks
    from diffbench.run.rundir import RunDirError
    from diffbench.run.suite import SuiteError

    bad = 0
    for path in suites:
        try:
            if no_load:
                _, cells = static_checks(
                    path, default_registry(), allow_large=allow_large, trust_code=trust_code or None
                )
                summary = f"{len(cells)} cells; --no-load: models, grids, plan and warm-up not checked"
            else:
                summary = preflight(
                    path, default_registry(), allow_large=allow_large, trust_code=trust_code or None, dry_run=True
                ).plan.describe()
        except (SuiteError, RunDirError) as exc:
            msg = str(exc)
            click.echo(f"diffbench: error: {msg if msg.startswith(str(path)) else f'{path}: {msg}'}", err=True)
            bad += 1
            continue
        click.echo(f"{path}: ok ({summary})")
    if bad:
        sys.exit(EXIT_USAGE)


@cli.command()
@handled
def schema() -> None:
    """Print the JSON Schema of suite files, with every installed plugin's options."""
    from diffbench.registry import default_registry
    from diffbench.run.suite import json_schema

    click.echo(json.dumps(json_schema(default_registry()), indent=2))


@cli.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False, path_type=Path))
@handled
def show(run_dir: Path) -> None:
    """Print a run's table (RUN: a run directory, or a suite's results folder for its newest run)."""
    from diffbench.analysis import report
    from diffbench.run.rundir import find_run

    run = find_run(run_dir)
    if not run.csv_path.exists():
        raise UserError(f"{run.path}: no cells.csv yet")
    manifest = run.read_manifest()
    click.echo(f"{manifest.get('suite')} · {run.path} · {manifest.get('status')}")
    click.echo(report.text_table(run.read_csv(), report.directions(manifest)))


@cli.command(name="report")
@click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False, path_type=Path))
@handled
def report_cmd(run_dir: Path) -> None:
    """Redraw a run's plots and rewrite its report.md; a run made by shards is merged first.

    Merging writes the whole suite's manifest.json, cells.csv, plots and report.md and lists the
    cells no shard has finished (exit 1 while any is missing).
    """
    from diffbench.analysis import plots, report
    from diffbench.api import merge_shards as merge
    from diffbench.run.rundir import find_run
    from diffbench.run.shards import is_sharded

    if is_sharded(run_dir):
        merged = merge(run_dir)
        click.echo(merged.run.path / "report.md")
        if merged.missing:
            click.echo(
                f"diffbench: {len(merged.missing)} cells missing (no shard has finished them): "
                + ", ".join(merged.missing),
                err=True,
            )
            sys.exit(EXIT_FAILED)
        return
    run = find_run(run_dir)
    frame = run.read_csv()
    files = plots.make_plots(frame, run.path, report.directions(run.read_manifest()))
    click.echo(report.write_report(run, frame, files))


@cli.command(name="compare")
@click.argument("baseline", type=click.Path(path_type=Path))
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option(
    "--metric-tol",
    multiple=True,
    metavar="[METRIC=]TOL",
    help="Allowance beyond noise, absolute (0.5) or relative to the baseline (5%); repeatable, "
    "METRIC= for one metric (default 0).",
)
@click.option(
    "--time-tol",
    default=None,
    metavar="TOL",
    help="Allowed growth of machine-normalised sampling time, 0.25 or 25% (default 25%); 'off' skips it.",
)
@click.option(
    "--harness-tol",
    default=None,
    metavar="TOL",
    help="Allowed growth of harness CPU time per network call, 0.5 or 50% (default 50%); 'off' skips it.",
)
@click.option(
    "--drift-floor",
    default=None,
    metavar="RTOL",
    help="Relative RMS change of the first samples beyond which a cell is 'changed' (default 1e-4); 'off' skips it.",
)
@click.option("--z", type=float, default=None, help="Standard errors a metric may move (default 2).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "markdown", "json"]),
    default="text",
    show_default=True,
    help="Output: the terminal report, Markdown (a CI job summary), or JSON.",
)
@click.option("--json", "as_json", is_flag=True, help="The comparison as JSON (same as --format json).")
@click.option(
    "--junit",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE",
    help="Also write JUnit XML to FILE: one test case per cell and check.",
)
@click.option(
    "--require-all",
    is_flag=True,
    help="Fail (exit 1) when any check could not be made (e.g. a baseline too old to hold its field).",
)
@handled
def compare_cmd(
    baseline: Path,
    run_dir: Path,
    metric_tol: tuple[str, ...],
    time_tol: str | None,
    harness_tol: str | None,
    drift_floor: str | None,
    z: float | None,
    fmt: str,
    as_json: bool,
    junit: Path | None,
    require_all: bool,
) -> None:
    """Compare RUN with BASELINE cell by cell; exit 1 when any cell regressed, 4 when samples only changed."""
    from diffbench.analysis import compare
    from diffbench.run.rundir import write_atomic

    try:
        floor = compare.parse_time_tol(drift_floor, compare.drift.FLOOR)
        rule = compare.Thresholds(
            z=compare.DEFAULT_Z if z is None else z,
            metric_tol=compare.parse_metric_tols(metric_tol),
            time_tol=compare.parse_time_tol(time_tol),
            harness_tol=compare.parse_time_tol(harness_tol, compare.HARNESS_TOL),
            drift_floor=floor,
        )
        result = compare.compare(baseline, run_dir, rule)
    except compare.CompareError as exc:
        raise UserError(str(exc)) from None
    fmt = "json" if as_json else fmt
    click.echo(
        {"json": result.to_json, "markdown": lambda: compare.markdown(result), "text": lambda: compare.text(result)}[
            fmt
        ](),
        nl=fmt == "text",
    )
    if junit is not None:
        try:
            write_atomic(junit, compare.junit(result))
        except OSError as exc:
            raise UserError(f"--junit {junit}: cannot write ({exc.strerror or exc})") from None
    code = result.exit_code(require_all)
    if require_all and code == EXIT_FAILED and not result.regressions:
        click.echo(
            f"diffbench: --require-all: {len(result.not_compared())} check(s) not compared (listed above); "
            f"refresh the baseline: {result.refresh}",
            err=True,
        )
    if code:
        sys.exit(code)


@cli.command(name="baseline")
@click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False, path_type=Path))
@click.argument("dest", metavar="DEST", type=click.Path(path_type=Path))
@handled
def baseline_cmd(run_dir: Path, dest: Path) -> None:
    """Copy a finished run's results to DEST (a new folder) to commit as a baseline, without its lock files
    and temporaries."""
    from diffbench.run.rundir import copy_results

    copied = copy_results(run_dir, dest)
    click.echo(f"{dest}: {len(copied)} files")


@cli.group()
def history() -> None:
    """A history of runs in one SQLite file: append runs, show each series and where it stepped."""


DB_OPTION = click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="History database (default: $DIFFBENCH_HISTORY or ./diffbench-history.sqlite).",
)


def _db(db: Path | None) -> Path:
    from diffbench.analysis.history import DEFAULT_DB

    return db or Path(os.environ.get("DIFFBENCH_HISTORY") or DEFAULT_DB)


@history.command(name="add")
@click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False, path_type=Path))
@DB_OPTION
@click.option(
    "--branch", default=None, help="Branch to record (default: the run's, else $GITHUB_REF_NAME / $CI_COMMIT_REF_NAME)."
)
@click.option("--machine", default=None, help="Machine name to record (default: the run's, else this host's).")
@handled
def history_add(run_dir: Path, db: Path | None, branch: str | None, machine: str | None) -> None:
    """Append RUN's cells (commit, date, machine, metrics with s.e., NFE, time, harness, drift) to the history."""
    from diffbench.analysis import history as hist

    try:
        run_id = hist.add(run_dir, _db(db), branch=branch, machine=machine)
    except hist.HistoryError as exc:
        raise UserError(str(exc)) from None
    click.echo(f"{_db(db)}: run #{run_id} added from {run_dir}")


@history.command(name="show")
@DB_OPTION
@click.option("--cell", default=None, metavar="PATTERN", help="Only cells whose label or id matches this glob.")
@click.option(
    "--metric",
    default=None,
    metavar="NAME",
    help="Only this series: a metric, or nfe, seconds_per_sample, harness, drift.",
)
@click.option("--z", "z_step", type=float, default=None, help="z beyond which a split is a step (default 4).")
@click.option(
    "--plot",
    "plot_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE",
    help="Also draw the series to FILE (png, svg, pdf).",
)
@click.option("--json", "as_json", is_flag=True, help="The series and their steps as JSON.")
@handled
def history_show(
    db: Path | None, cell: str | None, metric: str | None, z_step: float | None, plot_file: Path | None, as_json: bool
) -> None:
    """Print each series of the history, run by run, and the runs (commits) where it stepped."""
    from diffbench.analysis import history as hist

    try:
        found = hist.series(_db(db), cell, metric, z_step=hist.Z_STEP if z_step is None else z_step)
        if plot_file is not None:
            hist.plot(found, plot_file)
    except hist.HistoryError as exc:
        raise UserError(str(exc)) from None
    click.echo(json.dumps([s.as_dict() for s in found], indent=2) if as_json else hist.text(found))


@cli.command(name="score")
@click.argument("samples", required=False, type=click.Path(path_type=Path))
@click.option(
    "--features",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE.npz",
    help="Score precomputed features (array 'features', N × D, from the metrics' extractor) instead of SAMPLES.",
)
@click.option(
    "--reference",
    "reference",
    required=True,
    metavar="SPEC",
    help="What a suite's reference: takes, as inline YAML: digits, or '{name: npz-stats, options: {path: ref.npz}}'.",
)
@click.option(
    "--metric",
    "metrics",
    multiple=True,
    required=True,
    metavar="SPEC",
    help="A metric as a suite's metrics: entry takes it, inline YAML: fid, or "
    "'{name: kid, options: {subsets: 50}}' (repeatable).",
)
@click.option(
    "--device", default="auto", show_default=True, help="Where features are extracted and the bootstrap runs."
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Reference-statistics cache (default: $DIFFBENCH_CACHE_DIR or ~/.cache/diffbench).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of resampling and subset draws.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Images per feature-extraction batch.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object keyed by value name: value, se, method, seconds."
)
@handled
def score_cmd(
    samples: Path | None,
    features: Path | None,
    reference: str,
    metrics: tuple[str, ...],
    device: str,
    cache_dir: Path | None,
    seed: int,
    batch_size: int,
    as_json: bool,
) -> None:
    """Score samples made elsewhere (SAMPLES: an image folder or an .npz of images) with a suite's metrics."""
    from diffbench.metrics.stream import MetricError
    from diffbench.run.scoring import ScoreError, score
    from diffbench.run.suitefile import SuiteFileError, parse_yaml

    def inline(text: str, what: str) -> Any:
        try:
            return parse_yaml(text.encode())
        except SuiteFileError as exc:
            raise UserError(f"{what} {text!r}: {exc}") from None

    try:
        out = score(
            inline(reference, "--reference"),
            [inline(m, "--metric") for m in metrics],
            samples=samples,
            features=features,
            device=device,
            cache_dir=cache_dir,
            seed=seed,
            batch_size=batch_size,
        )
    except (ScoreError, MetricError, ValueError) as exc:
        raise UserError(str(exc)) from None
    if as_json:
        click.echo(json.dumps({name: v.as_dict() for name, v in out.items()}, indent=2))
        return
    for name, v in out.items():
        se = "" if v.se is None else f" ± {v.se:.6g}"
        click.echo(f"{name}: {v.value:.6g}{se}  ({v.seconds:.2f} s; {v.method})")


@cli.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="A JSON list of components.")
@handled
def plugins(name: str | None, as_json: bool) -> None:
    """List every registered component (kind, name, plugin, distribution, version, description) and every
    plugin that failed to load or register; exit 1 when one did. With NAME: that component's options (type,
    default, meaning), nested option blocks and the feature extractors it accepts."""
    from diffbench import plugin_help
    from diffbench.registry import default_registry
    from diffbench.util.text import shorten

    registry = default_registry()  # load errors also go to stderr as warnings
    if name is not None:
        found = plugin_help.matching(registry, name)
        if not found:
            known = ", ".join(sorted({c.name for c in registry}))
            raise UserError(f"no component named {name!r}; components: {known}")
        if as_json:
            click.echo(json.dumps([plugin_help.as_json(c) for c in found], indent=2))
        else:
            click.echo("\n\n".join(plugin_help.describe(c) for c in found))
        return
    rows = [c.as_row() for c in registry]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        cols = ("kind", "name", "plugin", "distribution", "version", "description")
        cells = [[str(r[c] or "-") for c in cols] for r in rows]
        for row in cells:
            row[-1] = shorten(row[-1], 72)
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        click.echo("  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip())
        for row in cells:
            click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
        from diffbench.metrics.extractors import extractor_names

        click.echo(
            "\nfeature extractors (metric option 'extractor' of fid, fid-inf, kid, prc): "
            + ", ".join(extractor_names())
        )
        click.echo("options of one component: diffbench plugins NAME")
        if registry.errors:
            click.echo(
                f"\n{len(registry.errors)} plugin(s) failed to load or register (their components are not listed):"
            )
            for err in registry.errors:
                click.echo(f"  {err}")
    if registry.errors:
        sys.exit(EXIT_FAILED)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="diffbench")


if __name__ == "__main__":  # python -m diffbench.cli
    main()
