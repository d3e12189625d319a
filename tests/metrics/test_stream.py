"""The streaming metric flow: shared extraction, scores equal to the in-memory form, gathering in index order."""

from types import SimpleNamespace

import pytest
import torch

from diffbench.datasets import digits
from diffbench.metrics import extractors, fidelity
from diffbench.metrics.base import Batch, MetricContext, MetricValue
from diffbench.metrics.stream import FeatureRows, MetricError, MetricPlan
from diffbench.registry import Registry

DIGITS_MODEL = SimpleNamespace(name="stub", dataset="digits", data_range=(-1.0, 1.0))


@pytest.fixture
def context(tmp_path):
    return MetricContext(cache_dir=tmp_path / "cache", seed=0)


class Collect:
    """An in-memory (compute-only) metric: the mean of the first coordinate and the order it saw."""

    name = "collect"
    options = {}

    def compute(self, samples, *, model, result, context, **options):
        self.seen = samples.clone()
        return {"first-mean": MetricValue(float(samples[:, 0].mean()), None, "mean")}


def plan_of(*metrics, context, model=DIGITS_MODEL):
    reg = Registry()
    for obj, opts in metrics:
        reg.add("metric", obj.name, obj)
    return MetricPlan([(reg.get("metric", obj.name), {**obj.options, **opts}) for obj, opts in metrics], model, context)


def batches(images, size, seed=0):
    for start in range(0, len(images), size):
        x = images[start : start + size]
        yield Batch(x, torch.arange(start, start + len(x)), None, seed)


def test_fid_kid_prc_share_one_extraction_per_batch_and_match_the_in_memory_values(context, monkeypatch):
    samples = digits("test").images  # 300 images, streamed as 3 batches of 100
    metrics = [(fidelity.FID(), {"bootstrap": 10}), (fidelity.KID(), {"subsets": 5}), (fidelity.PRC(), {})]
    plan = plan_of(*metrics, context=context)
    assert len(plan.extractors) == 1
    calls = []
    real = extractors.extract_features
    monkeypatch.setattr(extractors, "extract_features", lambda x, *a, **k: calls.append(len(x)) or real(x, *a, **k))
    rows = plan.rows()
    for b in batches(samples, 100):
        rows.add(b)
    streamed = {k: v for _, out in plan.score(rows, None) for k, v in out.items()}
    assert calls[:3] == [100, 100, 100]  # one extraction per batch; then the reference split (cached after)
    direct = {}
    for obj, opts in metrics:
        direct.update(obj.compute(samples, model=DIGITS_MODEL, result=None, context=context, **opts))
    assert set(streamed) == {"fid", "kid", "precision", "recall"}
    for name, v in direct.items():
        # the extractor sees batches of 100 instead of 256 + 44: equal up to float32 rounding of the network
        assert streamed[name].value == pytest.approx(v.value, rel=1e-5, abs=1e-9), name


def test_rows_from_several_workers_are_scored_in_sample_index_order(context):
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    metric = Collect()
    plan = plan_of((metric, {}), context=context)
    parts = []
    for lo, hi in ((6, 10), (0, 3), (3, 6)):  # workers finish in any order
        part = plan.rows()
        part.add(Batch(x[lo:hi], torch.arange(lo, hi), None, 0))
        parts.append(part.export())
    rows = plan.rows()
    for p in parts:
        rows.absorb(p)
    ((_, out),) = plan.score(rows, None)
    assert torch.equal(metric.seen, x)
    assert out["first-mean"].value == pytest.approx(float(x[:, 0].mean()))
    rows.absorb(parts[0])
    with pytest.raises(ValueError, match="twice"):
        rows.gathered()


def test_an_extractor_that_returns_the_wrong_number_of_rows_names_its_metric(context):
    class Bad:
        name, options = "bad", {}
        key = ("bad",)

        def features(self, *, model, context, **options):
            return self

        def __call__(self, batch):
            return batch.samples[:1]

        def score(self, features, **kwargs):
            return {}

    plan = plan_of((Bad(), {}), context=context)
    with pytest.raises(MetricError, match="metric 'bad'.*one row for each of 4 samples"):
        plan.rows().add(Batch(torch.zeros(4, 2), torch.arange(4), None, 0))


def test_a_metric_that_cannot_run_fails_when_planned_before_any_sampling(context):
    no_data = SimpleNamespace(name="gmm", dataset=None, data_range=(-1.0, 1.0))
    with pytest.raises(MetricError, match="metric 'fid'.*needs reference data: add 'reference:'"):
        plan_of((fidelity.FID(), {}), context=context, model=no_data)


def test_add_later_extracts_the_held_batch_when_read_on_the_thread_count_it_was_held_with():
    """Rows from ``add_later`` equal rows from ``add``; the last batch waits until the rows are read, and is then
    extracted with the torch thread count of the thread that held it (here 1), whoever reads it."""
    threads_seen = []

    class Extractor:
        key = "count-threads"

        def __call__(self, batch):
            threads_seen.append(torch.get_num_threads())
            return batch.samples.flatten(1)[:, :3] * 2.0

    images = torch.linspace(-1, 1, 10 * 64).reshape(10, 1, 8, 8)
    now, later = FeatureRows({"count-threads": Extractor()}), FeatureRows({"count-threads": Extractor()})
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for batch in batches(images, 4):
            now.add(batch)
            later.add_later(batch)
        assert len(threads_seen) == 3 + 2 and len(later) == 10  # the last batch is held, and counted
    finally:
        torch.set_num_threads(before)
    got = later.gathered()["count-threads"]
    assert threads_seen[-1] == 1 and torch.get_num_threads() == before
    torch.testing.assert_close(got, now.gathered()["count-threads"], rtol=0, atol=0)
    assert later.extract_seconds > 0
