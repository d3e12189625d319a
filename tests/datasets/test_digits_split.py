"""The digits dataset: shape, range, labels and a fixed, disjoint, stratified split."""

import pytest
import torch

from diffbench.datasets import digits, digits_indices, load_dataset


def test_digits_shapes_range_and_levels():
    train, test, full = digits("train"), digits("test"), digits("all")
    assert (len(train), len(test), len(full)) == (1497, 300, 1797)
    assert train.images.shape == (1497, 1, 8, 8) and train.images.dtype == torch.float32
    assert train.labels.dtype == torch.int64 and set(train.labels.tolist()) == set(range(10))
    assert full.images.min() == -1.0 and full.images.max() == 1.0
    levels = torch.unique(full.images * 8 + 8)  # 17 grey levels 0..16
    assert torch.equal(levels, torch.arange(17, dtype=torch.float32))


def test_split_is_disjoint_stratified_and_fixed():
    idx = digits_indices()
    train, test, full = digits("train"), digits("test"), digits("all")
    assert set(idx["train"].tolist()).isdisjoint(idx["test"].tolist())
    assert sorted(idx["train"].tolist() + idx["test"].tolist()) == list(range(1797))
    assert torch.equal(full.images[idx["test"]], test.images) and torch.equal(full.labels[idx["train"]], train.labels)
    counts = torch.bincount(test.labels, minlength=10)
    assert counts.min() >= 29 and counts.max() <= 31  # stratified: ~30 per class
    assert idx["test"][:5].tolist() == [21, 24, 28, 34, 35]  # the documented split never drifts


def test_loader_returns_copies():
    a = digits("train")
    a.images.zero_()
    assert digits("train").images.min() == -1.0


def test_unknown_names_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown split 'val'"):
        digits("val")
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")


def test_the_digits_reference_streams_each_split_it_declares_and_loads_it_only_when_streamed(monkeypatch):
    import importlib

    digits_module = importlib.import_module("diffbench.datasets.digits")
    calls = []
    real = digits_module.digits
    monkeypatch.setattr(digits_module, "digits", lambda split: calls.append(split) or real(split))
    for split in ("train", "test", "all"):
        ref = digits_module.reference(split)
        assert calls == [] or calls[-1] != split  # opening loads nothing
        images = torch.cat(list(ref.batches(512)))
        assert ref.num_images == len(images) == len(real(split)) and ref.shape == tuple(images.shape[1:])
        assert torch.equal(images, real(split).images)
