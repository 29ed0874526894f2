"""The grading table tests itself: for every exercise of every lab, the reference passes, every
misconception fails with its own hint on every audited seed, each exercise has at least three,
and the solutions' graded cells name exactly the table's exercises, with the table's points."""

from __future__ import annotations

import math

import nbformat
import pytest
import torch

from gptcourse import labs
from gptcourse.grading import check, harness

SPECS = harness.all_specs()


def test_every_lab_has_specs():
    assert sorted({s.id.split(".")[0] for s in SPECS.values()}) == list(harness.LABS)


@pytest.mark.parametrize("exercise", sorted(SPECS))
def test_spec_audits_clean(exercise):
    problems = harness.audit(SPECS[exercise])
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("lab", harness.LABS)
def test_graded_cells_match_the_table(lab):
    (path,) = labs.ROOT.joinpath("solutions").glob(f"{lab}_*.ipynb")
    cells = labs.graded_cells(nbformat.read(path, as_version=4))
    named = [(c.metadata["gptcourse"]["exercise"], float(c.metadata["gptcourse"]["points"])) for c in cells]
    assert named == [(s.id, s.points) for s in harness.lab_specs(lab)]
    for cell, spec in zip(cells, harness.lab_specs(lab)):
        assert "from gptcourse.grading import check" in cell.source
        assert f'check("{spec.id}", {spec.name})' in cell.source


def test_a_spec_without_misconceptions_is_a_defect():
    spec = SPECS["lab04.scores"]
    import dataclasses

    bare = dataclasses.replace(spec, misconceptions=spec.misconceptions[:1])
    assert any("at least 3 needed" in p for p in harness.audit(bare, seeds=(0,)))
    swapped = dataclasses.replace(spec, misconceptions=(spec.misconceptions[0],) * 2 + spec.misconceptions[1:])
    assert any("share a name" in p for p in harness.audit(swapped, seeds=(0,)))


class NanoGPTStyleGQA(torch.nn.Module):
    """A correct answer in nanoGPT's style: a causal-mask buffer and a dropout module beside the
    parameters (the old checks rejected it), grouped heads by repeat_interleave, the package's interface."""

    def __init__(self, n_embd: int, n_head: int, n_kv_head=None, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        if n_embd % n_head or n_head % n_kv_head:
            raise ValueError("n_embd must be a multiple of n_head, and n_head of n_kv_head")
        self.n_head, self.n_kv_head, self.hd = n_head, n_kv_head, n_embd // n_head
        self.c_attn = torch.nn.Linear(n_embd, (n_head + 2 * n_kv_head) * self.hd, bias=bias)
        self.c_proj = torch.nn.Linear(n_embd, n_embd, bias=bias)
        self.attn_dropout = torch.nn.Dropout(dropout)
        self.resid_dropout = torch.nn.Dropout(dropout)
        self.register_buffer("bias", torch.tril(torch.ones(64, 64, dtype=torch.bool)))

    def qkv(self, x: torch.Tensor):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split([self.n_head * self.hd] + [self.n_kv_head * self.hd] * 2, dim=-1)
        return tuple(t.view(B, T, -1, self.hd).transpose(1, 2) for t in (q, k, v))

    def forward(self, x: torch.Tensor, cache=None, mask=None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x)
        if cache is not None:
            k, v = cache.update(k, v)
        S = k.size(2)
        k, v = (t.repeat_interleave(self.n_head // self.n_kv_head, dim=1) for t in (k, v))
        mask = self.bias[S - T : S, :S] if mask is None else mask
        att = (q @ k.transpose(-2, -1) / math.sqrt(self.hd)).masked_fill(~mask, float("-inf"))
        y = self.attn_dropout(att.softmax(-1)) @ v
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, C)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_module_with_a_causal_mask_buffer_is_accepted(seed):
    for exercise in ("lab06.qkv", "lab06.gqa", "lab06.cache_decode"):
        check(exercise, NanoGPTStyleGQA, seed=seed)
