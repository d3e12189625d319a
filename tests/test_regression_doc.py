"""docs/regression.md's CI workflows, run as written: their commands are read out of the doc and run in order.

The GitHub Actions workflow runs twice (two CI runs: fresh working directories, the history cache carried
from the first to the second by its restore/save steps), the GitLab job once, each on a tiny suite with a
baseline recorded here (SUITE and BASELINE are the workflows' own variables). Steps that need a CI service
(checkout, setup-python, the install line) are the only ones not run; upload steps check their paths exist.
The GitLab job is marked slow (its commands are the GitHub workflow's; about a minute on a quiet 2-core CPU
for both, 14 minutes at load average 25).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "regression.md"
TINY = {
    "name": "ci-tiny",
    "model": "digits-eps",
    "metrics": ["fid"],
    "num_samples": 32,
    "batch_size": 32,
    "seeds": [0],
    "device": "cpu",
    "grid": {"sampler": ["euler", "heun"], "scheduler": ["karras"], "steps": [5]},
}


# the workflows' variables this test sets itself: its tiny suite and baseline, and speed allowances wide
# enough that a loaded test machine cannot fail the gate on speed (the checks are still made and reported)
OURS = ("SUITE", "BASELINE", "TIME_TOL", "HARNESS_TOL")
SPEED_ALLOWANCES = {"TIME_TOL": "1000%", "HARNESS_TOL": "1000%"}


def workflows() -> tuple[dict, dict]:
    """The GitHub workflow and the GitLab job: the YAML blocks of the doc's "CI workflows" section, in order."""
    section = DOC.read_text().split("## CI workflows", 1)[1].split("\n## ", 1)[0]
    github, gitlab = (yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", section, re.S))
    return github, gitlab


def is_install(command: str) -> bool:
    return command.strip().startswith("python -m pip install")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """PATH with a `diffbench` that runs this checkout, and a tiny suite with its baseline."""
    root = tmp_path_factory.mktemp("ci")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "diffbench").write_text(
        f'#!/bin/sh\nexec "{sys.executable}" -c "from diffbench.cli import main; main()" "$@"\n'
    )
    (bin_dir / "diffbench").chmod(0o755)
    suite = root / "tiny.yaml"
    suite.write_text(yaml.safe_dump(TINY))
    out = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "SUITE": str(suite),
        "BASELINE": str(root / "baseline"),
        **SPEED_ALLOWANCES,
    }
    first = root / "first"
    subprocess.run(
        ["diffbench", "run", str(suite), "--out", str(first), "--no-progress"], env=out, check=True, capture_output=True
    )
    subprocess.run(["diffbench", "baseline", str(first), out["BASELINE"]], env=out, check=True, capture_output=True)
    return out


def bash(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """A CI shell step: bash -eo pipefail, as GitHub Actions and GitLab run them."""
    return subprocess.run(["bash", "-eo", "pipefail", "-c", command], cwd=cwd, env=env, capture_output=True, text=True)


def run_github(job: dict, cwd: Path, env: dict[str, str], cache: Path) -> list[str]:
    """Every step of ``job`` in order; returns the names of the steps run. Cache steps copy to/from ``cache``."""
    cwd.mkdir()
    env = {
        **env,
        **{k: v for k, v in job["env"].items() if k not in OURS},
        "GITHUB_STEP_SUMMARY": str(cwd / "summary.md"),
    }
    ran = []
    for step in job["steps"]:
        uses, name = step.get("uses", ""), step.get("name", step.get("uses"))
        if uses.startswith("actions/cache/restore"):
            if cache.exists():
                shutil.copytree(cache, cwd / step["with"]["path"])
        elif uses.startswith("actions/cache/save"):
            shutil.rmtree(cache, ignore_errors=True)
            shutil.copytree(cwd / step["with"]["path"], cache)
        elif uses.startswith("actions/upload-artifact"):
            for path in step["with"]["path"].split():
                assert (cwd / path).exists(), f"{name}: {path} was not made"
        elif "run" in step and not is_install(step["run"]):
            done = bash(step["run"], cwd, env)
            assert done.returncode == 0, f"{name}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        else:
            continue
        ran.append(name)
    return ran


def history_runs(cwd: Path, env: dict[str, str]) -> str:
    return bash("diffbench history show --metric nfe", cwd, env).stdout


def test_github_workflow_runs_as_documented(env, tmp_path):
    github, _ = workflows()
    job = github["jobs"]["regression"]
    cache = tmp_path / "cache"
    ran = run_github(job, tmp_path / "ci-1", env, cache)
    assert ran == [
        "Restore the history database",
        "Run the suite",
        "Gate",
        "Append to the history",
        "Save the history database",
        "Upload the report",
    ]
    second = tmp_path / "ci-2"
    run_github(job, second, env, cache)
    summary = (second / "summary.md").read_text()
    assert summary.startswith("### diffbench compare: 2 cells: 0 better, 2 same within noise, 0 worse")
    cases = list(ET.parse(second / "compare.xml").getroot().iter("testcase"))
    assert {c.get("name") for c in cases} == {"fid", "nfe", "time", "harness", "drift"} and len(cases) == 10
    # the history restored from the first run's cache holds both runs: two points per series
    shown = (second / "history.txt").read_text()
    assert shown.count("digits-eps euler karras n=5 · nfe\n  #1 ") == 1 and "\n  #2 " in shown
    assert (second / "history.png").stat().st_size > 1000


@pytest.mark.slow  # the same commands as the GitHub workflow's, which the default run exercises
def test_gitlab_job_runs_as_documented(env, tmp_path):
    _, gitlab = workflows()
    job = gitlab["diffbench-regression"]
    cwd = tmp_path / "ci"
    cwd.mkdir()
    script = "\n".join(line for line in job["script"] if not is_install(line))
    done = bash(script, cwd, {**env, **{k: v for k, v in job["variables"].items() if k not in OURS}})
    assert done.returncode == 0, done.stdout + done.stderr
    for path in job["artifacts"]["paths"] + job["cache"]["paths"]:
        assert (cwd / path).exists(), path
    assert (cwd / "compare.md").read_text().startswith("### diffbench compare: 2 cells")
    assert job["artifacts"]["reports"]["junit"] == "compare.xml"
    assert "digits-eps heun karras n=5 · fid\n  #1 " in (cwd / "history.txt").read_text()
