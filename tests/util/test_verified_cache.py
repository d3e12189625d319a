"""Cache entries are verified against their recorded sha256 on load; a bad entry is recomputed, never used."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import diffbench
from diffbench.datasets import digits
from diffbench.metrics import reference
from diffbench.metrics.base import MetricContext
from diffbench.metrics.fidelity import METRICS
from diffbench.metrics.trajectory import TrajectoryError
from diffbench.models.gmm import gmm
from diffbench.util import verified_cache

pytestmark = pytest.mark.usefixtures("single_thread")


def tamper(path, change):
    """Rewrite a safetensors cache file with its tensors changed but its metadata (key, sha256) kept."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file({k: change(v) for k, v in tensors.items()}, str(path), metadata=meta)


def test_an_entry_round_trips_and_any_damage_is_refused_with_a_warning_naming_the_file(tmp_path):
    path = tmp_path / "e.safetensors"
    t = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64)}
    sha = verified_cache.save(path, t, key="k1", info={"steps": 64})
    warned = []
    entry = verified_cache.load(path, key="k1", warn=warned.append)
    assert entry.sha256 == sha == verified_cache.content_sha256(t) and entry.info == {"steps": 64}
    assert all(torch.equal(entry.tensors[k], t[k]) for k in t) and warned == []
    assert verified_cache.load(tmp_path / "missing.safetensors", key="k1", warn=warned.append) is None
    assert warned == []  # a missing entry is simply computed
    assert verified_cache.load(path, key="k2", warn=warned.append) is None
    assert "written for another key" in warned[-1] and str(path) in warned[-1]
    tamper(path, lambda v: v + 1)
    assert verified_cache.load(path, key="k1", warn=warned.append) is None
    assert "does not match its recorded sha256" in warned[-1] and str(path) in warned[-1]
    verified_cache.save(path, t, key="k1")
    path.write_bytes(path.read_bytes()[:-7])  # truncated
    assert verified_cache.load(path, key="k1", warn=warned.append) is None
    assert "is unreadable" in warned[-1] and str(path) in warned[-1] and all("\n" not in w for w in warned)


def test_the_hash_covers_names_dtypes_and_shapes_not_only_bytes():
    x = torch.arange(4, dtype=torch.float32)
    hashes = {
        verified_cache.content_sha256(d)
        for d in ({"a": x}, {"b": x}, {"a": x.reshape(2, 2)}, {"a": x.view(torch.int32)}, {"a": x, "b": x[:0]})
    }
    assert len(hashes) == 5


@pytest.mark.parametrize("damage", ["tampered", "truncated"])
def test_a_damaged_reference_feature_cache_is_recomputed_and_the_manifest_hash_is_of_what_was_used(
    tmp_path, capsys, damage
):
    samples = digits("train").images[:100]
    model = type("M", (), {"name": "stub", "dataset": {"name": "digits", "split": "test"}, "data_range": (-1.0, 1.0)})

    def fid():
        reference.clear_memo()
        ctx = MetricContext(cache_dir=tmp_path / "cache", seed=0)
        value = METRICS["fid"].compute(samples, model=model, context=ctx, extractor="digits-cnn", bootstrap=0)
        return value["fid"].value, ctx.info["reference_hash"]

    clean, sha = fid()
    (path,) = (tmp_path / "cache").glob("ref-*.safetensors")
    if damage == "tampered":
        tamper(path, lambda v: v * 0.9)
    else:
        path.write_bytes(path.read_bytes()[:1000])
    capsys.readouterr()
    again, sha_again = fid()
    assert again == clean and sha_again == sha
    err = capsys.readouterr().err
    assert str(path) in err and err.count("\n") == 1 and err.endswith("recomputing it\n")
    assert fid() == (clean, sha) and capsys.readouterr().err == ""  # rewritten: clean from now on


def test_a_tampered_trajectory_reference_is_recomputed(tmp_path, capsys):
    model = gmm()
    res = diffbench.sample(model, "euler", steps=6, num_samples=8, dtype="float64")
    first = TrajectoryError().compute(res.samples, model=model, result=res, context=MetricContext(tmp_path))
    (path,) = (tmp_path / "trajectory-references").glob("*.safetensors")
    (sidecar,) = (tmp_path / "trajectory-references").glob("*.json")
    recorded = json.loads(sidecar.read_text())["sha256"]
    tamper(path, lambda v: v + 0.01)
    ctx = MetricContext(tmp_path)
    assert TrajectoryError().compute(res.samples, model=model, result=res, context=ctx) == first
    (log,) = ctx.info["trajectory_references"].values()
    assert log["from_cache"] is False and log["sha256"] == recorded
    assert str(path) in capsys.readouterr().err


def test_an_entry_whose_info_does_not_match_its_hash_is_recomputed(tmp_path):
    path, key = tmp_path / "e.safetensors", "k"
    t = {"x": torch.arange(4.0)}
    verified_cache.save(path, t, key=key, info={"stops": [[0.5, True]], "nfe": 10})
    assert verified_cache.load(path, key=key).info == {"stops": [[0.5, True]], "nfe": 10}
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    save_file(t, str(path), metadata={**meta, "info": json.dumps({"stops": [[0.5, True]], "nfe": 1})})
    warnings = []
    assert verified_cache.load(path, key=key, warn=warnings.append) is None
    assert "info sha256" in warnings[0]
    # an entry written before info was hashed, with no info, still loads
    save_file(t, str(path), metadata={"key": key, "sha256": verified_cache.content_sha256(t)})
    assert verified_cache.load(path, key=key).info == {}


def test_read_info_gives_key_and_info_from_the_header_and_refuses_info_that_does_not_match_its_hash(tmp_path):
    path = tmp_path / "e.safetensors"
    verified_cache.save(path, {"a": torch.zeros(3)}, key="k1", info={"steps": 64, "stops": [[0.5, True]]})
    assert verified_cache.read_info(path) == ("k1", {"steps": 64, "stops": [[0.5, True]]})
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(path), metadata={**meta, "info": json.dumps({"steps": 1, "stops": [[0.5, True]]})})
    assert verified_cache.read_info(path) is None  # changed info: not used, even for an estimate
    path.write_bytes(b"\xff" * 4)
    assert verified_cache.read_info(path) is None
    assert verified_cache.read_info(tmp_path / "missing.safetensors") is None
