#!/usr/bin/env bash
# The GPU check of issue 18, one command: the GPU-marked tests, a 50,000-sample Inception-FID cell of a small
# model (wall, sampling and scoring seconds, peak RSS and CUDA memory), the diffusers adapter's overhead on
# a CIFAR-size UNet (random weights), and the main job's whole run against its sampling (suites/steps.yaml
# twice into one cache, as tests/benchmarks/test_measurement_cost.py runs it; off the CPU a cell's scoring
# overlaps the next cell's sampling), all written to one JSON file.
#
#   scripts/gpu_check.sh [OUT.json] [--small]
#
# --small: 200 samples and a small UNet, so the script can be checked end to end on a CPU (figures from it
# say nothing about a GPU). Run from the repository root with diffbench importable.
set -euo pipefail
out="gpu_check.json"
small=""
for arg in "$@"; do
  case "$arg" in
    --small) small="--small" ;;
    *) out="$arg" ;;
  esac
done
n=50000
[ -n "$small" ] && n=200
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python=${PYTHON:-python}

echo "gpu_check: GPU-marked tests" >&2
set +e
"$python" -m pytest -m gpu -q -p no:cacheprovider --junitxml="$work/gpu-tests.xml" >"$work/gpu-tests.log" 2>&1
tests_rc=$?
set -e
tail -n 3 "$work/gpu-tests.log" >&2

echo "gpu_check: FID cell of $n samples" >&2
"$python" tests/benchmarks/fid_cell.py "$n" "$work/fid" | tail -n 1 >"$work/fid.json"

echo "gpu_check: diffusers adapter overhead" >&2
"$python" scripts/adapter_overhead.py auto $small | tail -n 1 >"$work/adapter.json"

echo "gpu_check: suites/steps.yaml, whole run against sampling" >&2
"$python" -c "import json, sys; from pathlib import Path; sys.path.insert(0, 'tests/benchmarks'); \
from test_measurement_cost import steps_costs; print(json.dumps(steps_costs(Path(sys.argv[1]))))" "$work" \
  | tail -n 1 >"$work/steps.json"

"$python" - "$work" "$tests_rc" "$out" "$small" <<'PY'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path
import torch
work, rc, out, small = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], bool(sys.argv[4])
suite = ET.parse(work / "gpu-tests.xml").getroot()
suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
tests = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
report = {"small": small, "cuda": torch.cuda.is_available(),
          "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
          "torch": torch.__version__, "gpu_tests": {**tests, "exit_code": rc},
          "fid_cell": json.loads((work / "fid.json").read_text()),
          "adapter_overhead": json.loads((work / "adapter.json").read_text()),
          "steps_whole_run": json.loads((work / "steps.json").read_text())}
Path(out).write_text(json.dumps(report, indent=1))
print(json.dumps(report))
PY
