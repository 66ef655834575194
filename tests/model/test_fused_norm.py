"""The fused dropout + residual + LayerNorm steps (model/fused_norm.py).

The Triton kernels themselves are checked in ``interpreted_fused_norm.py``, which has to run in a process
that set ``TRITON_INTERPRET=1`` before importing Triton; the first test here starts that process.
"""
import copy
import os
import re
import subprocess
import sys

import pytest
import torch
from imagebert_testlib import REPO, random_batch, tiny_config

from model import fused_norm
from model.imagebert import ImageBert


@pytest.mark.slow
def test_kernels_pass_their_checks_under_the_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             os.path.join("tests", "model", "interpreted_fused_norm.py")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-2000:]
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 11 and "skipped" not in summary, summary


@pytest.mark.skipif(fused_norm.INTERPRETED, reason="this process runs the kernels themselves")
def test_without_a_gpu_the_fused_model_is_the_plain_model_dropout_included():
    config = tiny_config(dropout=0.1, attention_dropout=0.0)
    torch.manual_seed(0)
    plain = ImageBert(config).train()
    fused = copy.deepcopy(plain)
    fused.fused_norm = True
    batch = random_batch(config)
    assert not fused_norm.kernels_available(batch["region_features"])
    torch.manual_seed(5)
    expected, _ = plain.encode(batch)
    torch.manual_seed(5)
    got, _ = fused.encode(batch)
    assert torch.equal(got, expected)  # same ops, same generator draws in the same order
    torch.manual_seed(6)
    other, _ = fused.encode(batch)
    assert not torch.equal(other, expected)  # and dropout is really on

