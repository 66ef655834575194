"""Helpers shared by the ImageBERT tests (imported by name: tests/model is on sys.path under pytest)."""
import os

import torch

from model.config import ModelConfig

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_config(**overrides) -> ModelConfig:
    fields = dict(vocab_size=50, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, dropout=0.0,
                  attention_dropout=0.0, feature_dim=8, num_classes=6, max_text_len=12, max_regions=6,
                  max_position=32)
    fields.update(overrides)
    return ModelConfig(**fields)


def random_batch(config: ModelConfig, size: int = 4, text_len: int = 7, regions: int = 5, seed: int = 0) -> dict:
    """A collated batch as the data loader makes it, with some padding in text and regions."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, config.vocab_size, (size, text_len), generator=g)
    ids[:, 0] = 2  # [CLS]
    text_mask = torch.ones(size, text_len, dtype=torch.bool)
    text_mask[0, -2:] = False
    ids[0, -2:] = 0
    ids[0, -3] = 3  # [SEP]
    ids[1:, -1] = 3
    special = (ids == 2) | (ids == 3)
    region_mask = torch.ones(size, regions, dtype=torch.bool)
    region_mask[1, -2:] = False
    return {
        "input_ids": ids, "text_mask": text_mask, "special_mask": special,
        "region_features": torch.randn(size, regions, config.feature_dim, generator=g) * region_mask.unsqueeze(-1),
        "region_locations": torch.rand(size, regions, 5, generator=g),
        "region_mask": region_mask,
        "region_classes": torch.randint(0, config.num_classes, (size, regions), generator=g).masked_fill(~region_mask, -100),
        "region_topk_ids": torch.randint(0, config.num_classes, (size, regions, 2), generator=g),
        "region_topk_probs": torch.full((size, regions, 2), 0.5),
        "image_keys": torch.arange(size) + 100,
        "caption_keys": torch.arange(size) + 200,
    }


def eval_split(model, tokenizer_json: str, synth_dir: str):
    """The synthetic data's test split as ``model.eval.EvalSet`` for this model's shape (model put in eval mode)."""
    from model.eval import EvalSet

    model.eval()
    c = model.config
    return EvalSet(f"{synth_dir}/regions", f"{synth_dir}/captions", "test", tokenizer_json, c.max_text_len,
                   c.max_regions, c.feature_dim)


def train_config_dict(synth_dir: str, out_dir: str, **extra) -> dict:
    """A tiny two-stage training config (pretrain stage1, then finetune) on the synthetic dataset, as a dict;
    ``extra`` replaces top-level keys."""
    data = {"regions": f"{synth_dir}/regions", "captions": f"{synth_dir}/captions", "split": "train"}
    config = {
        "out_dir": out_dir,
        "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "dropout": 0.1,
                  "attention_dropout": 0.1, "max_text_len": 20, "max_regions": 8},
        "tokenizer_vocab_size": 120,
        "log_every": 1,
        "pretrain": [{"name": "stage1", "datasets": [data], "steps": 4, "batch_size": 8, "lr": 1e-3}],
        "finetune": {"name": "finetune", "datasets": [data], "steps": 3, "batch_size": 8, "lr": 1e-3, "negatives": 2},
    }
    config.update(extra)
    return config


def read_loss_log(path) -> dict[int, dict]:
    """A stage's loss log (OUT/logs/<stage>.csv) by step."""
    import csv

    with open(path, newline="") as handle:
        return {int(row["step"]): row for row in csv.DictReader(handle)}


def loss_columns(row: dict) -> dict:
    """A loss-log row without its timing columns (which differ between runs)."""
    return {k: v for k, v in row.items() if k not in ("samples_per_s", "elapsed_s")}


#: A script for torchrun that runs several ``lait`` commands one after another in each of its processes, so that
#: one launch serves several runs: a launch starts three Python processes that each import torch (seconds each on
#: a busy 2-core machine), the runs themselves take less. Its first argument is a JSON list of [arguments, stdout]
#: pairs: each run's printed output goes to ``stdout.RANK``, so a test can tell which process reported what. The
#: runs share one process group: each command leaves it at its end, and a group made again under torchrun meets
#: the first one's rendezvous keys in the launcher's store and hangs, so it is left once, after the last run. A
#: process still running after the seconds of its second argument prints its stack and exits (a hung process
#: outlives the launcher, which a test's timeout kills).
LAIT_RUNS = '''\
import contextlib
import faulthandler
import json
import os
import sys

import torch.distributed as dist

from lait.cli import main

faulthandler.dump_traceback_later(float(sys.argv[2]), exit=True)
leave = dist.destroy_process_group
dist.destroy_process_group = lambda group=None: None
try:
    for argv, stdout in json.loads(sys.argv[1]):
        with open(f"{stdout}.{os.environ.get('RANK', '0')}", "w") as out, contextlib.redirect_stdout(out):
            status = main(argv)
        if status:
            sys.exit(status)
finally:
    if dist.is_initialized():
        leave()
'''


def lait_runs_command(folder, runs: list[tuple[list[str], str]], processes: int = 2,
                      give_up_s: float = 240) -> list[str]:
    """The torchrun command line for ``processes`` processes that run ``lait`` with each of ``runs`` (arguments,
    stdout path) in turn, written to ``folder`` (see ``LAIT_RUNS``): one launch for several runs. Each process
    gives up after ``give_up_s`` seconds: less than the test waits for the launch."""
    import json

    from tests.torchrun import torchrun

    script = os.path.join(str(folder), "lait_runs.py")
    with open(script, "w") as handle:
        handle.write(LAIT_RUNS)
    return [*torchrun(processes), script, json.dumps([[list(argv), str(stdout)] for argv, stdout in runs]),
            str(give_up_s)]
