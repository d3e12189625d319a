"""Conditions by sample index: labels and prompts repeat every ``period`` indices (the stratified design)."""

from types import SimpleNamespace

import torch

from diffbench.core.conditioning import ClassLabels, Prompts, condition_period


def test_each_block_of_period_indices_holds_every_condition_once():
    labels = ClassLabels(7)
    got = labels.for_indices(list(range(35)), torch.device("cpu")).view(5, labels.period)
    assert labels.period == 7 and all(sorted(row.tolist()) == list(range(7)) for row in got)
    prompts = Prompts(["a", "b", "c"], encode=lambda ps: torch.tensor([[ord(p[0]) if p else 0] for p in ps]))
    rows = prompts.for_indices(list(range(9)), torch.device("cpu")).view(3, prompts.period)
    assert prompts.period == 3 and all(sorted(r.tolist()) == [97, 98, 99] for r in rows)


def test_condition_period_of_models():
    assert condition_period(SimpleNamespace(condition=ClassLabels(10))) == 10
    assert condition_period(SimpleNamespace(condition=None)) == 1
    assert condition_period(SimpleNamespace()) == 1  # a stand-in model (diffbench score): independent samples
