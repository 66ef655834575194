"""Multi-stage ImageBERT training: pretraining stages in order, then retrieval fine-tuning.

Runs on one CPU, one GPU, or under ``torchrun`` with DDP (nccl on GPUs, gloo on CPUs)::

    python -m model.train --config configs/tiny.yaml
    torchrun --nproc_per_node 8 -m model.train --config configs/imagebert-base.yaml

Each stage builds its own AdamW with linear warm-up and decay. Every optimizer step is seeded from
(seed, stage, step, rank), and the data order from (seed, stage, epoch, consumer), so a run resumed
from a checkpoint repeats exactly what the uninterrupted run would have done.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import gc
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from model.config import (INIT_TAKES, ConfigError, DatasetConfig, ModelConfig, StageConfig, TrainConfig,
                          add_train_arguments, check_model_config, init_model_changes, init_refusal, load_config,
                          model_config_from_dict, model_keys_set, override_text, resolved_compile_scope)
from model.data import (DEALING, DEALINGS, PairIndex, empty_split, feature_dim_of, feature_dims, index_pairs,
                        make_loader, num_classes_of)
from model.distributed import collective_device, join_process_group, process_device
from model.imagebert import ImageBert, load_bert_weights, num_parameters, read_bert_config
from model.tasks import FINETUNE_LOSSES, build_retrieval_batch, dual_encoder_loss, prepare_pretrain_batch
from model.tokenizer import SPECIAL_TOKENS, load_tokenizer, special_ids, train_wordpiece
from schemas import write_atomically, write_json_atomically

if TYPE_CHECKING:
    from model.eval import EvalCaptions

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "lait.imagebert/1"


# ---------------------------------------------------------------------------------------------
# Setup


@dataclasses.dataclass
class Runtime:
    """Where this process runs: device, precision and its place in a distributed job."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    bf16: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_runtime(config: TrainConfig) -> Runtime:
    """Pick the device and join the process group when started by torchrun (WORLD_SIZE > 1)."""
    device = process_device(config.device)
    if config.cpu_threads > 0:
        torch.set_num_threads(config.cpu_threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rank, world_size = join_process_group(device)
    bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    return Runtime(device=device, rank=rank, world_size=world_size, bf16=bf16)


def derived_seed(*parts) -> int:
    """A 63-bit seed from any parts, the same in every process."""
    return int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:15], 16)


def training_captions(config: TrainConfig) -> list[str]:
    """Every caption of every training dataset (for the WordPiece trainer)."""
    from model.data import load_captions

    texts, read = [], {}
    for stage in config.stages():
        for entry in stage.datasets:
            key = (entry.captions, entry.split)  # a dataset of several stages: read once, counted each time
            if key not in read:
                read[key] = [caption for captions in load_captions(*key).values() for _, caption in captions]
            texts.extend(read[key])
    return texts


def build_tokenizer(config: TrainConfig):
    """The configured tokenizer, BERT's vocab when starting from BERT, else WordPiece trained on the captions."""
    if config.tokenizer:
        return load_tokenizer(config.tokenizer, config.lowercase)
    if config.bert:
        return load_tokenizer(config.bert, config.lowercase)
    texts = training_captions(config)
    return number_by_first_use(train_wordpiece(texts, config.tokenizer_vocab_size, config.lowercase), texts)


def number_by_first_use(tokenizer, texts: list[str]):
    """The same word pieces renumbered by the data alone: specials, then first use over the sorted captions, then the rest.

    The ``tokenizers`` WordPiece trainer numbers pieces in hash-map order, which changes from one
    process to the next, so the same captions and seed gave differently initialised models.
    """
    from tokenizers import Tokenizer

    state = json.loads(tokenizer.to_str())
    vocab = state["model"]["vocab"]
    order = sorted(SPECIAL_TOKENS, key=vocab.__getitem__)
    seen = set(order)
    for encoding in tokenizer.encode_batch(sorted(set(texts)), add_special_tokens=False):
        for token in encoding.tokens:
            if token not in seen:
                seen.add(token)
                order.append(token)
    order += sorted(set(vocab) - seen)
    # The special tokens keep their ids, so the post-processor and added_tokens entries stay valid.
    if [vocab[t] for t in order[:len(SPECIAL_TOKENS)]] != list(range(len(SPECIAL_TOKENS))):
        return tokenizer
    state["model"]["vocab"] = {token: index for index, token in enumerate(order)}
    return Tokenizer.from_str(json.dumps(state))


def resolve_model_config(config: TrainConfig, vocab_size: int, pad_token_id: int | None = None) -> ModelConfig:
    """Fill in what the data, the tokenizer and the BERT folder decide: feature width, class count, vocabulary and
    padding id (the tokenizer's ``vocab_size`` and [PAD] id ``pad_token_id``), BERT's shape."""
    fields = dataclasses.asdict(config.model)
    if config.bert:
        bert, default = read_bert_config(config.bert), ModelConfig()
        # A value set in the config (other than the default) that BERT's differs from is replaced: said, not silent.
        replaced = [f"model.{key} {fields[key]!r} by {value!r}" for key, value in bert.items()
                    if fields[key] != getattr(default, key) and fields[key] != value]
        if replaced:
            logger.warning("bert: %s/config.json decides the model's shape (its weights have it): it replaces %s",
                           config.bert, ", ".join(replaced))
        fields.update(bert)
        # The tokenizer must fit BERT's word embeddings: a vocabulary of another BERT (uncased's 30522 pieces with a
        # cased model's 28996) failed mid-training on the first id past them (IndexError; a device-side assert on
        # CUDA), and another [PAD] id padded the batches with a word piece the embeddings do not treat as padding.
        words = config.tokenizer or config.bert
        if os.path.isdir(words):  # the file load_tokenizer reads from a folder
            words = next((os.path.join(words, name) for name in ("vocab.txt", "tokenizer.json")
                          if os.path.exists(os.path.join(words, name))), words)
        bert_config = os.path.join(config.bert, "config.json")
        if vocab_size > bert["vocab_size"]:
            raise ConfigError(f"{words}: {vocab_size} word pieces, more than the vocab_size {bert['vocab_size']} of "
                              f"{bert_config}: the tokenizer is not this BERT's (ids from {bert['vocab_size']} on "
                              f"have no embedding)")
        with open(bert_config, encoding="utf-8") as handle:
            stated_pad = json.load(handle).get("pad_token_id")  # read_bert_config took it apart already
        if pad_token_id is not None and stated_pad is not None and stated_pad != pad_token_id:
            raise ConfigError(f"{words}: [PAD] is id {pad_token_id}, but {bert_config} has pad_token_id {stated_pad}: "
                              f"the tokenizer is not this BERT's")
    else:
        fields["vocab_size"] = vocab_size
        # The word embeddings' padding row (zero at the start, no gradient from the inputs) and the id batches pad
        # with: the tokenizer's [PAD], which need not be id 0 (a tokenizer.json whose specials follow the word
        # pieces). Left at 0, [UNK] (or a word piece) took the padding row and filled the batches' padding.
        if pad_token_id is not None and fields["pad_token_id"] != pad_token_id:
            if "pad_token_id" in model_keys_set(config):
                if fields["pad_token_id"] >= vocab_size:  # no id at all: a mistake, refused as before
                    raise ConfigError(f"model.pad_token_id: {fields['pad_token_id']}, need an id below "
                                      f"model.vocab_size ({vocab_size}); the tokenizer's [PAD] is {pad_token_id}, "
                                      f"which the model takes when model.pad_token_id is left out")
                logger.warning("model.pad_token_id %d replaced by %d, the tokenizer's [PAD] id", fields["pad_token_id"],
                               pad_token_id)
            fields["pad_token_id"] = pad_token_id
    first = config.stages()[0].datasets[0]
    if fields["feature_dim"] is None:
        fields["feature_dim"] = feature_dim_of(first.regions)
    if fields["num_classes"] is None:
        fields["num_classes"] = max(num_classes_of(entry.regions) for s in config.stages() for entry in s.datasets)
    # Checked again with the tokenizer's vocabulary and BERT's shape in (pad_token_id below vocab_size...).
    return check_model_config(ModelConfig(**fields))


def init_model_config(state: dict, config: TrainConfig) -> ModelConfig:
    """The model of an ``init`` checkpoint (``state``) with the keys ``config`` sets over it: dropouts and the others
    its weights do not depend on. A ``ConfigError`` naming each key its weights do depend on (``INIT_TAKES``) that is
    set to another value than the checkpoint's (``init_model_changes``; set to the checkpoint's, as a run's config.json
    sets them, it says nothing new), and naming the key when a set key does not fit the checkpoint's sizes
    (``max_text_len`` past its ``max_position``)."""
    fields = dict(state["model_config"])
    written, _ = _written_stages(state)
    changed = init_model_changes(config, fields, written.get("model"))
    if changed:
        raise init_refusal(changed)
    for key in model_keys_set(config):
        if key not in INIT_TAKES and fields.get(key) != getattr(config.model, key):
            logger.info("init: model.%s %r, the checkpoint's %r", key, getattr(config.model, key), fields.get(key))
            fields[key] = getattr(config.model, key)
    try:
        return model_config_from_dict(fields)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (the model of the init checkpoint, {config.init})") from None


def check_data_fits(model_config: ModelConfig, config: TrainConfig, source: str,
                    first_stage: int = 0) -> EvalCaptions | None:
    """A clear error, before any training, when the regions of the stages (from ``first_stage`` on) or of the
    eval do not fit the model (built from ``source``: the config's first dataset, an ``init`` or a resumed
    checkpoint): other feature widths (read anyway, each region would take pieces of its neighbours' features),
    or more detector classes than its object-classification head has; or when the eval split has no caption
    to score. Returns the eval split's captions as ``check_eval_data`` read them (None without an eval)."""
    entries = [(stage.kind, entry) for stage in config.stages()[first_stage:] for entry in stage.datasets]
    for kind, entry in entries + ([("eval", config.eval)] if config.eval is not None else []):
        widths = dict(feature_dims(entry.regions))  # every file's (a dataset merged from two detectors' runs)
        if not widths:
            raise ValueError(f"{entry.regions}: no region features to tell the feature width from")
        other = {file: width for file, width in widths.items() if width != model_config.feature_dim}
        if other:
            file, width = next(iter(other.items()))
            raise ValueError(f"{entry.regions if len(other) == len(widths) else file}: features of width {width}, "
                             f"the model reads {model_config.feature_dim} (from {source})")
        classes = num_classes_of(entry.regions) if kind == "pretrain" else 0
        if classes > model_config.num_classes:
            raise ValueError(f"{entry.regions}: {classes} detector classes, but the model of {source} "
                             f"classifies {model_config.num_classes}")
    return check_eval_data(config.eval) if config.eval is not None else None


def check_eval_data(entry: DatasetConfig) -> EvalCaptions:
    """The eval split's captions exist and some of them have their image in the regions (what ``EvalSet`` needs),
    checked before training rather than after its last stage. Returns the captions read (``EvalCaptions``: a few
    Arrow columns of the split's rows), which the final eval scores instead of reading them again."""
    from model.data import region_image_ids
    from model.eval import read_eval_captions

    captions = read_eval_captions(entry.captions, entry.split, where="eval: ")
    if not set(captions.table.column("image_id").to_pylist()) & set(region_image_ids(entry.regions)):
        raise ValueError(f"eval: none of the {captions.count} captions of split {entry.split!r} "
                         f"has its image in {entry.regions}")
    return captions


# ---------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(path: str, state: dict) -> None:
    """torch.save of plain tensors and containers, written whole or not at all (``schemas.write_atomically``)."""
    write_atomically(path, lambda handle: torch.save(state, handle), binary=True)


#: What every checkpoint holds (``final.pt`` too); a resumed one also the stage and step it stopped at.
CHECKPOINT_KEYS = ("model", "model_config", "tokenizer")
RESUME_KEYS = ("stage_index", "stage_name", "step", "stage_done")


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Load a LAIT checkpoint safely (``weights_only=True``: tensors and plain containers only).

    Anything else (a truncated or text file, another pickle, a folder, a checkpoint of another program) is a
    ``ValueError`` naming the file: ``{path}: not a readable LAIT checkpoint (...)``.
    """
    def unreadable(why) -> ValueError:
        return ValueError(f"{path}: not a readable LAIT checkpoint ({why})")

    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch.load fails its own way on each kind of bad file (truncated, text, JSON...)
        first = (str(exc).splitlines() or [""])[0].split(". ")[0]
        raise unreadable(f"torch.load: {type(exc).__name__}{': ' + first if first else ''}") from None
    if not isinstance(state, dict):
        raise unreadable(f"it holds a {type(state).__name__}, not a checkpoint's dict")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise unreadable(f"format {state.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if missing or not isinstance(state["model"], dict) or not isinstance(state["model_config"], dict) \
            or not isinstance(state["tokenizer"], str):
        raise unreadable(f"missing or malformed {', '.join(missing) or 'model, model_config or tokenizer'}")
    return state


def load_weights(model: ImageBert, state: dict, path: str) -> None:
    """A checkpoint's weights into ``model``; a ``ValueError`` naming the file when they do not fit its shape."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: not a readable LAIT checkpoint ({str(exc).splitlines()[0]})") from None


def model_from_checkpoint(path: str, map_location="cpu") -> tuple[ImageBert, dict]:
    """The trained model (eval mode) and the checkpoint dict, whose ``tokenizer`` is the JSON string."""
    state = load_checkpoint(path, map_location)
    model = ImageBert(model_config_from_dict(state["model_config"]))
    load_weights(model, state, path)
    model.eval()
    return model, state


#: The settings that make the tokenizer (and a BERT start), which a resume takes from its checkpoint instead.
TOKENIZER_KEYS = ("bert", "tokenizer", "tokenizer_vocab_size", "lowercase")


def check_resume_matches(state: dict, path: str, config: TrainConfig, world_size: int = 1) -> None:
    """A checkpoint resumes only the run that wrote it: its stages up to the one it stopped in must be this
    config's first stages, by name; otherwise stages would be skipped as done, or the wrong one continued. The
    stages it had finished must have their settings as they ran (the stages not yet started may change). Resuming a
    stage with other data-order settings (or another number of processes) is warned about, and so is a resume past
    a finished stage with other run-wide settings (``RUN_TRAINING_KEYS``)."""
    needed = RESUME_KEYS + (() if state.get("stage_done", True) else ("optimizer", "scheduler", "rng"))
    missing = [key for key in needed if key not in state]
    if missing:
        raise ValueError(f"{path}: not a readable LAIT checkpoint (missing {', '.join(missing)}, needed to resume)")
    index, name = int(state["stage_index"]), state["stage_name"]
    written, stages = _written_stages(state)
    theirs = [stage.get("name") if isinstance(stage, dict) else None for stage in stages]
    theirs = (theirs + [None] * (index + 1))[: index + 1]
    theirs[index] = name
    ours = [stage.name for stage in config.stages()]
    if len(ours) <= index or any(t is not None and t != o for t, o in zip(theirs, ours[: index + 1])):
        after = f", after {', '.join(map(repr, theirs[:index]))}" if index and None not in theirs else ""
        raise ValueError(f"{path}: a checkpoint of stage {name!r} (stage {index + 1} of the run that wrote it{after}), "
                         f"but this config's stages are {ours}; resume with the config that wrote it, or start a new "
                         f"run from its weights with init:")
    ignored = [f"{key} {getattr(config, key)!r} (the checkpoint's run: {written[key]!r})" for key in TOKENIZER_KEYS
               if key in written and written[key] != getattr(config, key)]
    if ignored:  # the tokenizer is the checkpoint's, whatever these say
        logger.warning("%s: a resume keeps the checkpoint's tokenizer; ignored: %s", path, ", ".join(ignored))
    changed = _model_changes(state, config)
    if changed:
        raise ValueError(f"{path}: a resume continues the checkpoint's model, and this config's model section differs "
                         f"from it: {'; '.join(changed)}; resume with the model section of the run that wrote it "
                         f"(a model of another shape is a new run)")
    done = index + (1 if state.get("stage_done", True) else 0)
    changed = {stage.name: _finished_stage_changes(theirs, stage)
               for stage, theirs in zip(config.stages()[:done], stages)}
    changed = {name: changes for name, changes in changed.items() if changes}
    if changed:  # config.json would claim settings these stages did not train with
        raise ValueError(f"{path}: {'stages' if len(changed) > 1 else 'stage'} {', '.join(map(repr, changed))} "
                         f"finished before this checkpoint with other settings than this config's: "
                         f"{'; '.join(change for changes in changed.values() for change in changes)}; a resume keeps a "
                         f"finished stage as it ran: resume with the settings it ran with (the stages not yet started "
                         f"may change), or start a new run from its weights with init:")
    finished = ", ".join(stage.name for stage in config.stages()[:done])
    # A stage resumed part-way names its own changed data-order and sampling settings in the warnings below: named
    # here as well, a resume past a finished stage with another seed warned of it twice.
    resumed = _resumed_stage_keys(written, config.stages()[index], config) \
        if not state.get("stage_done", True) else set()
    changed = [f"{key} {getattr(config, key)!r}, the checkpoint's {written[key]!r}" for key in RUN_TRAINING_KEYS
               if _run_setting_differs(key, written, getattr(config, key)) and key not in resumed]
    if done and changed:  # run-wide: the stages to come take them (the resumed one with the warnings below)
        logger.warning("%s: stage(s) %s finished before this checkpoint with other run-wide settings than this "
                       "config's, which the stages to come take and config.json records for the whole run: %s", path,
                       finished, "; ".join(changed))
    # What the warnings below add when they name a run-wide setting a finished stage trained with otherwise.
    also = f"; stage(s) {finished} finished before this checkpoint with the checkpoint's, and config.json records " \
           f"this config's for the whole run" if done and resumed else ""
    if not state.get("stage_done", True):
        stage = config.stages()[index]
        written_stage = stages[index] if index < len(stages) else None
        changed = _stage_loss_changes(written_stage, stage, written, config)
        if changed:
            raise ValueError(f"{path}: stage {stage.name!r} resumed at step {state['step']} with other losses than "
                             f"the checkpoint's: {'; '.join(changed)}; resume it with the checkpoint's, or start a new "
                             f"run from its weights with init:")
        # A checkpoint that does not record its stage's losses: the loss log whose rows the resume keeps tells.
        logged = log_column_change(os.path.join(config.out_dir, "logs", f"{stage.name}.csv"), log_columns(stage))
        if logged and int(state["step"]) > 0:
            raise ValueError(f"{path}: stage {stage.name!r} resumed at step {state['step']} with other losses than "
                             f"its loss log's, whose rows up to that step a resume keeps: {logged}; resume it with "
                             f"the losses of the run that wrote them, or start a new run from its weights with init:")
        changed = _stage_setting_changes(written_stage, stage, written, config)
        if changed:  # the same losses, each computed otherwise: the log and the loss window stay valid
            logger.warning("%s: stage %s resumed with other settings than the checkpoint's: %s; the steps after %s do "
                           "not train as its run would have%s", path, stage.name, "; ".join(changed), state.get("step"),
                           also if resumed & set(TASK_SAMPLING_KEYS) else "")
        record = state.get("data") if isinstance(state.get("data"), dict) else {}
        changed = _data_order_changes(written, written_stage, config, index, record, world_size)
        if changed:
            logger.warning("%s: resuming with other %s than the run that wrote it: the batches after step %s are "
                           "not those it would have trained on (resume is exact only with the same settings)%s",
                           path, ", ".join(changed), state.get("step"), also if resumed & set(DATA_ORDER_KEYS) else "")


#: The run-wide settings that decide what a stage trains (its batches, masking, losses and updates): a resume past a
#: finished stage with others is warned about (the stages to come take them; ``config.json`` records one value).
RUN_TRAINING_KEYS = ("seed", "grad_accum", "grad_clip", "weight_decay", "shuffle_buffer", "num_workers",
                     "length_buckets", "masking", "mlm_prob", "region_mask_prob", "region_zero_prob", "itm_neg_prob",
                     "moc_loss")


def _finished_stage_changes(theirs: dict | None, stage: StageConfig) -> list[str]:
    """How this config's ``stage`` differs from the one the checkpoint's run finished (``theirs``, its run's config of
    the stage), each setting with both values: a dataset entry's fields one by one, the others whole. Keys that one
    of them lacks (a checkpoint of an older version) are not compared."""
    if not isinstance(theirs, dict):
        return []
    ours = dataclasses.asdict(stage)
    changed = []
    for key, value in theirs.items():
        if key not in ours or value == ours[key]:
            continue
        if key == "datasets" and isinstance(value, list) and len(value) == len(ours[key]) \
                and all(isinstance(entry, dict) for entry in value):
            changed += [f"{stage.name}.datasets.{i}.{field} {mine.get(field)!r}, the checkpoint's {entry[field]!r}"
                        for i, (entry, mine) in enumerate(zip(value, ours[key])) for field in entry
                        if entry[field] != mine.get(field)]
        else:
            changed.append(f"{stage.name}.{key} {ours[key]!r}, the checkpoint's {value!r}")
    return changed


def _model_changes(state: dict, config: TrainConfig) -> list[str]:
    """The keys of ``config``'s model section that are neither the checkpoint's run's (its ``train_config``) nor its
    model's (``model_config``, with what the data, the tokenizer and BERT decided), each with both values. A resume
    builds the checkpoint's model whatever the section says: a key set otherwise was ignored (and config.json then
    held both shapes). Dropouts included: the checkpoint's model continues, as ``init:`` takes it whole."""
    written, _ = _written_stages(state)
    theirs = written.get("model") if isinstance(written.get("model"), dict) else None
    built = state["model_config"]
    default = dataclasses.asdict(ModelConfig())
    changed = []
    # Without the run's model section, the checkpoint's model is all there is to compare with, and in it the keys
    # resolve_model_config replaces whatever the section says (the tokenizer's vocabulary and [PAD] id; BERT's
    # shape) differ from any value set: they cannot be told apart, so they are not compared.
    if config.bert:
        replaced = set(read_bert_config(config.bert)) if os.path.isdir(config.bert) else set()
    else:
        replaced = {"vocab_size", "pad_token_id"}
    # With init, the model section holds the keys set over the init checkpoint's model (the rest are its: the
    # defaults there say nothing).
    compared = set(model_keys_set(config)) if config.init is not None else set(default)
    for key, value in dataclasses.asdict(config.model).items():
        if key not in compared:
            continue
        if theirs is None and (value == default[key] or key in replaced):
            continue  # a checkpoint without its run's config: only the keys set here can be told apart
        known = [source[key] for source in (theirs or {}, built) if key in source]
        if known and value not in known:
            changed.append(f"model.{key} {value!r}, the checkpoint's {built.get(key, known[0])!r}")
    return changed


#: Top-level settings that make a pretraining task's loss another quantity, by the task whose loss they make:
#: a stage training it, resumed part-way, would log and average two quantities in one column (refused).
TASK_LOSS_KEYS = {"moc_loss": ("moc",)}
#: Top-level settings of the pretraining tasks' masking and sampling (``model.tasks.prepare_pretrain_batch``), by the
#: tasks that read them, and a fine-tuning stage's, by the losses that read them: the same losses, computed on other
#: masked items, negatives or margin (a resume with others is warned about, as one with other loss weights).
TASK_SAMPLING_KEYS = {"masking": ("mlm", "moc", "mrfr"), "mlm_prob": ("mlm",), "region_mask_prob": ("moc", "mrfr"),
                      "region_zero_prob": ("moc", "mrfr"), "itm_neg_prob": ("itm",)}
FINETUNE_SAMPLING_KEYS = {"negatives": tuple(FINETUNE_LOSSES), "margin": ("triplet",)}


def _stage_loss_changes(theirs: dict | None, stage: StageConfig, run_config: dict, config: TrainConfig) -> list[str]:
    """How a stage resumed part-way differs in kind and losses from the checkpoint's (``theirs``, its run's config
    of the stage; ``run_config``, the whole of it): its pretraining tasks, their weights and their order, the loss of
    one of them (``TASK_LOSS_KEYS``), its fine-tuning loss, its dual-encoder weight. Each makes the loss log's
    columns or the loss itself another (and the restored loss window holds the checkpoint's sums, column by column
    in its tasks' order)."""
    if not isinstance(theirs, dict):
        return []
    ours = dataclasses.asdict(stage)
    if "kind" in theirs and theirs["kind"] != ours["kind"]:
        return [f"{stage.name}.kind {ours['kind']!r}, the checkpoint's {theirs['kind']!r}"]
    changed = []
    if stage.kind == "pretrain" and isinstance(theirs.get("tasks"), dict):
        def active(tasks: dict) -> dict:
            return {name: weight for name, weight in tasks.items() if isinstance(weight, (int, float)) and weight > 0}

        mine, written = active(ours["tasks"]), active(theirs["tasks"])
        if list(mine) != list(written):  # the order too: it orders the saved loss window's sums
            order = " (the same tasks in another order)" if set(mine) == set(written) else ""
            changed.append(f"{stage.name}.tasks {mine}, the checkpoint's {written}{order}")
        elif mine != written:  # the same columns, other weights: the rest of the stage weighs its losses anew
            logger.warning("stage %s resumed with other task weights: %s, the checkpoint's %s", stage.name, mine,
                           written)
    if stage.kind == "pretrain":
        changed += [f"{key} {getattr(config, key)!r}, the checkpoint's {run_config[key]!r}"
                    for key, tasks in TASK_LOSS_KEYS.items()
                    if key in run_config and run_config[key] != getattr(config, key)
                    and any(stage.tasks.get(task, 0) > 0 for task in tasks)]
    if stage.kind == "finetune":
        if "loss" in theirs and theirs["loss"] != ours["loss"]:
            changed.append(f"{stage.name}.loss {ours['loss']!r}, the checkpoint's {theirs['loss']!r}")
        if "dual_encoder" in theirs and theirs["dual_encoder"] != ours["dual_encoder"]:
            if (theirs["dual_encoder"] > 0) != (ours["dual_encoder"] > 0):  # a loss column more or less
                changed.append(f"{stage.name}.dual_encoder {ours['dual_encoder']!r}, the checkpoint's "
                               f"{theirs['dual_encoder']!r}")
            else:
                logger.warning("stage %s resumed with another dual_encoder weight: %r, the checkpoint's %r",
                               stage.name, ours["dual_encoder"], theirs["dual_encoder"])
    return changed


def _stage_setting_changes(theirs: dict | None, stage: StageConfig, written: dict, config: TrainConfig) -> list[str]:
    """The masking and sampling settings (``TASK_SAMPLING_KEYS``, ``FINETUNE_SAMPLING_KEYS``) that a stage resumed
    part-way reads and in which ``config`` differs from the checkpoint's run (``written``; ``theirs``, its config of
    the stage), each with both values."""
    if stage.kind == "pretrain":
        return [f"{key} {getattr(config, key)!r}, the checkpoint's {written[key]!r}"
                for key, tasks in TASK_SAMPLING_KEYS.items()
                if key in written and written[key] != getattr(config, key)
                and any(stage.tasks.get(task, 0) > 0 for task in tasks)]
    if not isinstance(theirs, dict):
        return []
    return [f"{stage.name}.{key} {getattr(stage, key)!r}, the checkpoint's {theirs[key]!r}"
            for key, losses in FINETUNE_SAMPLING_KEYS.items()
            if key in theirs and theirs[key] != getattr(stage, key) and stage.loss in losses]


def _resumed_stage_keys(written: dict, stage: StageConfig, config: TrainConfig) -> set[str]:
    """The run-wide settings (``RUN_TRAINING_KEYS``) in which ``config`` differs from the checkpoint's run
    (``written``) and which the warnings of ``stage``, resumed part-way, name: its data order (``DATA_ORDER_KEYS``,
    as ``_data_order_changes`` compares them) and the masking and sampling it reads (``_stage_setting_changes``)."""
    ours = config.to_dict()
    keys = {key for key in DATA_ORDER_KEYS if _run_setting_differs(key, written, ours.get(key))}
    if stage.kind == "pretrain":
        keys |= {key for key, tasks in TASK_SAMPLING_KEYS.items()
                 if key in written and written[key] != getattr(config, key)
                 and any(stage.tasks.get(task, 0) > 0 for task in tasks)}
    return keys & set(RUN_TRAINING_KEYS)


def _written_stages(state: dict) -> tuple[dict, list]:
    """A checkpoint's training config (``{}`` when it has none) and its stages in run order, as written."""
    written = state.get("train_config") if isinstance(state.get("train_config"), dict) else {}
    return written, list(written.get("pretrain") or []) + ([written["finetune"]] if written.get("finetune") else [])


def restored_summaries(state: dict, path: str, config: TrainConfig) -> list[dict]:
    """The ``summary.json`` entries of the stages a resumed checkpoint had finished, marked ``done_before_resume``.

    A checkpoint written before it kept them (no ``stage_summaries``) still names the stage it stopped in, and its
    config the stages before: their entries are rebuilt from those (name, kind, steps where known), marked
    ``without_figures`` (loss null, no seconds or data), and a warning says so; before, they were left out."""
    done = int(state["stage_index"]) + (1 if state["stage_done"] else 0)
    saved = state.get("stage_summaries") if isinstance(state.get("stage_summaries"), list) else []
    _, written = _written_stages(state)
    entries, rebuilt = [], []
    for index, stage in enumerate(config.stages()[:done]):  # their names match (check_resume_matches)
        entry = saved[index] if index < len(saved) else None
        if isinstance(entry, dict) and entry.get("name") == stage.name:
            entries.append(dict(entry, done_before_resume=True))
            continue
        theirs = written[index] if index < len(written) and isinstance(written[index], dict) else {}
        steps = theirs.get("steps") if isinstance(theirs.get("steps"), int) else None
        if index == int(state["stage_index"]):  # the stage it stopped in, at its end (final.pt records step 0)
            steps = next((value for value in (state.get("stage_steps"), state.get("step"))
                          if isinstance(value, int) and value > 0), steps)
        entries.append({"name": stage.name, "kind": stage.kind, "steps": steps, "final_loss": None,
                        "done_before_resume": True, "without_figures": True})
        rebuilt.append(stage.name)
    if rebuilt:
        logger.warning("%s: written before checkpoints kept their stages' summaries: summary.json lists %s as done "
                       "before the resume without figures (loss, seconds, data)", path, ", ".join(map(repr, rebuilt)))
    return entries


def compiled_graphs() -> int:
    """How many graphs torch.compile has compiled in this process (dynamo's count)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


#: The settings that decide which examples the batches of a stage hold, in which order (``model.data``); the
#: number of processes (``world_size``, recorded in a checkpoint's ``data``) too.
DATA_ORDER_KEYS = ("seed", "shuffle_buffer", "num_workers", "grad_accum", "length_buckets")
DATA_ORDER_STAGE_KEYS = ("batch_size", "datasets")


def _run_setting_differs(key: str, written: dict, ours) -> bool:
    """Whether the checkpoint's run (``written``) set the run-wide ``key`` otherwise than ``ours``, as training
    sees it: ``num_workers`` 0 and 1 both give one data consumer per process (``model.data``), the same batches."""
    if key not in written:
        return False
    theirs = written[key]
    if key == "num_workers" and isinstance(theirs, int) and isinstance(ours, int):
        return max(1, theirs) != max(1, ours)
    return theirs != ours
#: The stage settings that shape its learning-rate schedule, which a resumed stage loads with the scheduler.
SCHEDULE_STAGE_KEYS = ("steps", "epochs", "lr", "warmup")


def _data_order_changes(written: dict, stage: dict | None, config: TrainConfig, index: int, record: dict | None = None,
                        world_size: int = 1) -> list[str]:
    """The data-order settings in which ``config`` (run by ``world_size`` processes) differs from the checkpoint's
    ``written`` config and its data ``record``."""
    ours = config.to_dict()
    changed = [f"{key} ({written[key]!r}, now {ours.get(key)!r})" for key in DATA_ORDER_KEYS
               if _run_setting_differs(key, written, ours.get(key))]
    if record and "world_size" in record and record["world_size"] != world_size:  # other consumers, other shards
        changed.append(f"world_size ({record['world_size']} processes, now {world_size})")
    mine = config.stages()[index]
    if isinstance(stage, dict):
        ours = dataclasses.asdict(mine)
        changed += [f"{mine.name}.{key} ({stage[key]!r}, now {ours.get(key)!r})" for key in DATA_ORDER_STAGE_KEYS
                    if key in stage and stage[key] != ours.get(key)]
    return changed


def _schedule_changes(state: dict, stage: StageConfig, index: int, total: int) -> list[str]:
    """How a resumed stage's schedule differs from the one its checkpoint's optimizer and scheduler state
    followed: its step count (recorded as ``stage_steps``; epochs over another number of processes or other
    data change it too), and its configured steps, epochs, lr and warm-up."""
    _, stages = _written_stages(state)
    theirs = stages[index] if index < len(stages) and isinstance(stages[index], dict) else {}
    ours = dataclasses.asdict(stage)
    changed = [f"{stage.name}.{key} ({theirs[key]!r}, now {ours[key]!r})" for key in SCHEDULE_STAGE_KEYS
               if key in theirs and theirs[key] != ours[key]]
    planned = state.get("stage_steps")
    if isinstance(planned, int) and planned != total:
        changed.append(f"the stage's step count ({planned}, now {total})")
    return changed


class TrainingDiverged(RuntimeError):
    """A training loss came out NaN or infinite: every later step would train on NaN weights."""


# ---------------------------------------------------------------------------------------------
# Training


def _warmup_linear(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _optimizer(model: torch.nn.Module, stage: StageConfig, config: TrainConfig, device: torch.device):
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)  # biases and LayerNorms are not decayed
    fused = device.type == "cuda"
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=stage.lr, betas=(0.9, 0.98),
                             eps=1e-6, fused=fused)


def stage_steps(stage: StageConfig, pairs: int, world_size: int, grad_accum: int) -> int:
    """A stage's optimizer steps: as configured, or epochs x pairs / global batch."""
    if stage.steps is not None:
        return int(stage.steps)
    return max(1, math.ceil(stage.epochs * pairs / (stage.batch_size * world_size * grad_accum)))


def log_columns(stage: StageConfig) -> list[str]:
    """The loss columns of a stage's log (``OUT/logs/<stage>.csv``) besides the total: its pretraining tasks (those of
    positive weight, in the config's order), or its fine-tuning loss and, when on, the dual-encoder loss."""
    if stage.kind == "pretrain":
        return [name for name, weight in stage.tasks.items() if weight > 0]
    return [stage.loss] + (["dual_encoder"] if stage.dual_encoder > 0 else [])


def log_header(columns: list[str]) -> list[str]:
    """A loss log's header, around its loss ``columns``."""
    return ["step", "lr", "loss"] + columns + ["samples_per_s", "elapsed_s"]


def read_log_header(path: str) -> list[str] | None:
    """The header of a loss log (None when there is no such file, or it is empty)."""
    if not os.path.isfile(path):
        return None
    with open(path, newline="", encoding="utf-8") as handle:
        return next(csv.reader(handle), None)


def log_column_change(path: str, columns: list[str]) -> str | None:
    """How an existing loss log's columns differ from a stage's (``columns``, its loss columns), or None when they
    are the same set (or there is no log): its rows could not be kept under the new header."""
    header = read_log_header(path)
    if header is None or set(header) == set(log_header(columns)):
        return None
    theirs = [c for c in header if c not in ("step", "lr", "loss", "samples_per_s", "elapsed_s")]
    return f"{path} logs the losses {', '.join(theirs) or 'none'}, this stage {', '.join(columns)}"


class LossLog:
    """Per-stage CSV of losses (rank 0); on resume, rows past the checkpoint are dropped.

    The rows kept are written to a temporary file that then replaces the log, and a log of other columns is refused
    before it is touched (``check_resume_matches`` refuses such a resume earlier, before anything is written): a
    failed resume used to leave only the new header, the rows before the checkpoint lost."""

    def __init__(self, path: str, columns: list[str], resume_step: int):
        self.path, self.columns = path, log_header(columns)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        rows = []
        if resume_step > 0 and os.path.exists(path):
            changed = log_column_change(path, columns)
            if changed:
                raise ValueError(f"cannot keep the loss log's rows up to step {resume_step}: {changed}")
            with open(path, newline="", encoding="utf-8") as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= resume_step]
        tmp = f"{path}.tmp"
        try:
            with open(tmp, "w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, self.columns)
                writer.writeheader()
                writer.writerows(rows)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):  # (open itself failed: its error is the one to see)
                os.remove(tmp)
            raise
        os.replace(tmp, path)

    def write(self, row: dict) -> None:
        with open(self.path, "a", newline="", encoding="utf-8") as handle:
            csv.DictWriter(handle, self.columns).writerow({k: row.get(k, "") for k in self.columns})


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _reduce_mean(values: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """The mean of a host tensor over the processes (NCCL reduces device tensors only: it goes there and back)."""
    if runtime.distributed:
        values = values.to(collective_device(runtime.device), copy=True)
        dist.all_reduce(values)
        values = values.cpu() / runtime.world_size
    return values


def _to_host(losses: torch.Tensor, norm: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The step's losses and gradient norm on the host, in one copy (one wait for the device)."""
    both = torch.cat([losses.float(), norm.detach().float().reshape(1).to(losses.device)]).cpu()
    return both[:-1], float(both[-1])


def stage_report(stage: StageConfig, world_size: int, num_workers: int) -> dict:
    """A stage's data join (``dataset_report``); a ``ValueError`` when it has no (caption, image) pair, or fewer
    images with captions than data consumers (one would have no example; ``train`` checks every stage first)."""
    return check_stage(stage, world_size, num_workers, with_captions=False).report


def check_stage(stage: StageConfig, world_size: int, num_workers: int, with_captions: bool = True) -> PairIndex:
    """``stage_report``'s checks on the stage's join (``index_pairs``), which is returned: ``with_captions``, it
    holds what the stage's stream trains on, which then reads none of it again."""
    index = index_pairs(stage.datasets, with_captions=with_captions)
    report = index.report
    # A dataset whose split filter left no caption (captions imported as another split, or without one), or only
    # blank ones: said so, not as a join that found no image (its images were all counted as images without captions).
    whys = [empty_split(stage.datasets[i]) for i in index.empty]
    empty = list(dict.fromkeys(why for why in whys if why))  # a dataset named twice is said once
    if report["pairs"] == 0:
        if len(whys) == len(stage.datasets) and all(whys):
            raise ValueError(f"stage {stage.name!r}: {'; '.join(empty)}: no (caption, image) pair to train on "
                             f"({report})")
        raise ValueError(f"stage {stage.name!r}: no caption matches an image of its regions datasets ({report})"
                         + "".join(f"; {why}" for why in empty))
    for why in empty:
        logger.warning("stage %s: %s: that dataset adds nothing to the stage", stage.name, why)
    workers = max(1, num_workers)
    if report["images"] < world_size * workers:
        raise ValueError(f"stage {stage.name!r}: {report['images']} image(s) with captions for "
                         f"{world_size * workers} data consumers ({world_size} process(es) x "
                         f"{workers} DataLoader worker(s)), each of which needs one at least: lower num_workers"
                         f"{' or run fewer processes' if world_size > 1 else ''}")
    return index


def check_stages(stages: list[StageConfig], first: int, world_size: int, num_workers: int
                 ) -> tuple[dict[int, dict], PairIndex | None]:
    """Every stage from ``first`` on checked (``check_stage``) before the first of them trains (a later stage
    without pairs used to fail after the earlier ones had run): their reports by stage index, and the join of
    stage ``first``, whose stream trains on it without reading its data again (None when no stage is left).

    The later stages' joins are not kept (their counts are): each of their streams reads its own again as the
    stage starts, so that no more than one stage's captions are held at a time, as before (kept, every later
    stage's would be held from the start, through every earlier stage). They are checked before stage ``first``,
    whose captions are then not held while theirs are read; an error of stage ``first`` still comes before
    theirs, as in the stages' order."""
    reports: dict[int, dict] = {}
    later_error = None
    for index in range(first + 1, len(stages)):
        try:
            reports[index] = stage_report(stages[index], world_size, num_workers)
        except (ValueError, OSError) as exc:  # raised once stage ``first`` is known good
            later_error = exc
            break
    joined = check_stage(stages[first], world_size, num_workers) if first < len(stages) else None
    if later_error is not None:
        raise later_error
    if joined is not None:
        reports[first] = joined.report
    return dict(sorted(reports.items())), joined


def run_stage(model: ImageBert, stage: StageConfig, stage_index: int, config: TrainConfig, runtime: Runtime,
              tokenizer_json: str, ids: dict, checkpoint_base: dict, resume: dict | None,
              progress: bool = False, report: dict | None = None, pairs: PairIndex | None = None) -> dict:
    """Train one stage (pretraining task mix or fine-tuning loss); returns its summary (``report``: its
    ``stage_report``, made here when not given; ``pairs``: its join as ``check_stage`` found it, which its stream
    then trains on instead of reading the data again)."""
    if report is None:
        report = pairs.report if pairs is not None else stage_report(stage, runtime.world_size, config.num_workers)
    total = stage_steps(stage, report["pairs"], runtime.world_size, config.grad_accum)
    warmup = int(stage.warmup * total) if stage.warmup < 1 else int(stage.warmup)
    start = int(resume["step"]) if resume else 0
    logger.info("stage %s (%s): %d steps, %d pairs, %d images; %d captions without regions, %d images without captions",
                stage.name, stage.kind, total, report["pairs"], report["images"],
                report["captions_without_regions"], report["images_without_captions"])
    if report.get("blank_captions"):
        logger.warning("stage %s: %d captions of its split are blank (empty or white space): left out, not trained on",
                       stage.name, report["blank_captions"])
    if report.get("repeated_image_rows"):
        logger.warning("stage %s: %d regions rows repeat an image_id of the same dataset: each image is trained on "
                       "once, with its first row", stage.name, report["repeated_image_rows"])
    if report.get("repeated_caption_rows"):
        logger.warning("stage %s: %d caption rows repeat a caption_id of the same split: each caption is trained on "
                       "once, with its first row", stage.name, report["repeated_caption_rows"])
    if resume:
        changed = _schedule_changes(resume, stage, stage_index, total)
        if changed:
            logger.warning("stage %s: resuming with another schedule than the checkpoint's: %s. The optimizer and "
                           "scheduler state are loaded as the checkpoint has them (its base lr included), so the "
                           "steps after %d follow neither run's learning-rate schedule", stage.name,
                           ", ".join(changed), start)

    optimizer = _optimizer(model, stage, config, runtime.device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_linear(max(warmup, 1), total))
    if resume:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
    task_names = log_columns(stage)
    weights = {k: float(v) for k, v in stage.tasks.items() if v > 0} if stage.kind == "pretrain" else None
    # Heads a stage does not train get no gradient; DDP must be told, or it waits for them.
    unused = stage.kind == "finetune" or len(weights) < 4
    wrapped: torch.nn.Module = model
    if runtime.distributed:
        wrapped = DistributedDataParallel(model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None,
                                          find_unused_parameters=unused)
    model.fused_norm = config.fused_norm  # before compiling: the graph is traced with the fused steps
    if config.compile and config.length_buckets:
        import torch._dynamo.config as dynamo_config

        # One static graph per bucket shape and per stage (the compiled forward outlives the stage; a
        # pretraining stage's tasks and fine-tuning's negatives trace graphs of their own), and a spare.
        shapes = config.length_buckets[0] * config.length_buckets[1] * len(config.stages())
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, shapes + 1)
    # LayerNorms opaque to the compiler while training: inductor's fused LayerNorm backward was the
    # costliest kernel of a compiled step (benchmarks/RESULTS_train.md).
    if config.compile and resolved_compile_scope(config) == "model" and "_compiled_forward" not in model.__dict__:
        model.compile_model(opaque_layer_norm=True, dynamic=False)
    elif config.compile and resolved_compile_scope(config) == "trunk" and "_trunk" not in model.__dict__:
        model.compile_trunk(opaque_layer_norm=True, dynamic=False)
    forward = wrapped

    record = resume.get("data") if resume and isinstance(resume.get("data"), dict) else {}
    dealing = _resumed_dealing(stage, record, start) if resume else DEALING
    loader = make_loader(stage.datasets, tokenizer_json, model.config, stage.batch_size,
                         seed=derived_seed(config.seed, stage_index), rank=runtime.rank, world_size=runtime.world_size,
                         num_workers=config.num_workers, shuffle_buffer=config.shuffle_buffer,
                         fixed_shapes=config.compile, pin_memory=runtime.device.type == "cuda",
                         length_buckets=config.length_buckets, dealing=dealing, index=pairs)
    stream = getattr(loader.dataset, "stream", loader.dataset)
    if resume and "row_groups" not in record and stream.uncaptioned_units \
            and runtime.world_size * max(1, config.num_workers) > 1:
        logger.warning("stage %s: the checkpoint was written when row groups without a captioned image were still "
                       "dealt to the data consumers (%d here): the batches after step %d are not those its run would "
                       "have trained on", stage.name, stream.uncaptioned_units, start)
    batches = iter(loader)
    bucket_shapes = set() if config.compile and config.length_buckets else None  # logged as each compiles
    first_of_bucket = None  # (shape, graphs compiled before, start) of a step on a bucket's first batch
    # Exact resume: the stream is deterministic, so skipping the consumed batches restores the position.
    for _ in range(start * config.grad_accum):
        next(batches)

    log = LossLog(os.path.join(config.out_dir, "logs", f"{stage.name}.csv"), task_names, start) if runtime.is_main else None
    generator = torch.Generator(device=runtime.device)  # masking runs where the batch is
    window = torch.zeros(1 + len(task_names))  # loss sums since the last logged row (restored: same rows)
    window_steps, window_samples, window_start = 0, 0, time.perf_counter()
    saved = resume.get("loss_window") if resume else None  # (absent from older checkpoints)
    if isinstance(saved, dict) and len(saved.get("sums") or ()) == len(window):
        window = torch.tensor(saved["sums"], dtype=window.dtype)
        window_steps, window_samples = int(saved["steps"]), int(saved["samples"])
    stage_start = time.perf_counter()
    last_loss = float("nan")

    def summary_of(done: int) -> dict:
        """This stage's entry of ``summary.json`` (also kept in its last checkpoint, for a resumed run's)."""
        seconds, steps_run = time.perf_counter() - stage_start, done - start
        return {"name": stage.name, "kind": stage.kind, "steps": total, "steps_run": steps_run,
                "final_loss": last_loss, "seconds": round(seconds, 2),
                "samples_per_s": round(steps_run * stage.batch_size * config.grad_accum * runtime.world_size
                                       / max(seconds, 1e-9), 1),
                "data": report, **({"resumed_from_step": start} if start else {})}

    def save_stage_checkpoint(done: int) -> None:
        """Write the checkpoint after step ``done`` (``<stage>.pt`` at the stage's end, else ``<stage>-step<done>.pt``),
        and ``last.pt``."""
        # The loss window (mean over the processes) makes a resumed run log the same rows.
        loss_window = {"sums": _reduce_mean(window, runtime).tolist(), "steps": window_steps,
                       "samples": window_samples}
        finished = list(checkpoint_base.get("stage_summaries", []))
        if done == total:
            finished.append(summary_of(done))
        state = dict(checkpoint_base, model=model.state_dict(), stage_index=stage_index, stage_name=stage.name,
                     step=done, stage_steps=total, stage_done=done == total, optimizer=optimizer.state_dict(),
                     scheduler=scheduler.state_dict(), rng={"torch": torch.get_rng_state()},
                     data={"batches": done * config.grad_accum, "world_size": runtime.world_size,
                           "row_groups": dealing},  # how those with a captioned image are dealt
                     loss_window=loss_window, stage_summaries=finished)
        if runtime.is_main:
            name = f"{stage.name}.pt" if done == total else f"{stage.name}-step{done}.pt"
            path = os.path.join(config.out_dir, "checkpoints", name)
            save_checkpoint(path, state)
            save_checkpoint(os.path.join(config.out_dir, "checkpoints", "last.pt"), state)
        if runtime.distributed:
            dist.barrier()

    bar = None
    if progress and runtime.is_main:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start, desc=stage.name, unit="step", dynamic_ncols=True)
    model.train()
    autocast = torch.autocast(device_type=runtime.device.type, dtype=torch.bfloat16, enabled=runtime.bf16)
    for step in range(start, total):
        seed = derived_seed(config.seed, stage_index, step, runtime.rank)
        torch.manual_seed(seed)  # dropout
        generator.manual_seed(seed)  # masking and negatives
        step_losses = torch.zeros_like(window, device=runtime.device)  # on the device: read back once per step
        for micro in range(config.grad_accum):
            batch = _to_device(next(batches), runtime.device)
            if bucket_shapes is not None:
                shape = (batch["input_ids"].shape[1], batch["region_mask"].shape[1])
                if shape not in bucket_shapes and runtime.is_main:  # a bucket's first batch: compiled unless
                    bucket_shapes.add(shape)  # an earlier stage traced the same graph
                    first_of_bucket = (shape, compiled_graphs(), time.perf_counter())
            window_samples += batch["input_ids"].shape[0] * runtime.world_size
            sync = micro == config.grad_accum - 1 or not runtime.distributed
            with (contextlib.nullcontext() if sync else wrapped.no_sync()):
                if stage.kind == "pretrain":
                    batch = prepare_pretrain_batch(batch, weights, config, model.config, ids, generator)
                    with autocast:
                        outputs, loss = forward(batch, weights)
                    parts = [outputs["losses"][name].float() for name in task_names]
                else:
                    flat, valid = build_retrieval_batch(batch, stage.negatives, generator)
                    single = {"batch": batch, "cls_id": ids["cls"], "sep_id": ids["sep"]} if stage.dual_encoder > 0 else None
                    with autocast:
                        outputs, _ = forward(flat, None, single)
                    scores = outputs["scores"].float().view(valid.shape)
                    loss = FINETUNE_LOSSES[stage.loss](scores, valid, stage.margin)
                    parts = [loss.detach()]
                    if single is not None:
                        dual = dual_encoder_loss(outputs["text_embeddings"], outputs["image_embeddings"],
                                                 batch["image_keys"])
                        loss = loss + stage.dual_encoder * dual
                        parts.append(dual.detach())
                (loss / config.grad_accum).backward()
            step_losses += torch.stack([loss.detach().float()] + [p.detach() for p in parts]) / config.grad_accum
        # The norm is the same in every process (the gradients are all-reduced): all of them stop together. It
        # comes back to the host with the step's losses, one read-back per step (and no clipping when off).
        if config.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
        step_losses, norm = _to_host(step_losses, norm)
        if not math.isfinite(norm):
            _diverged(stage, step + 1, dict(zip(["loss"] + task_names, step_losses.tolist())), config,
                      f"the gradient norm is {norm}")
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if first_of_bucket is not None:
            shape, before, started = first_of_bucket
            first_of_bucket = None
            if compiled_graphs() > before:
                logger.info("%s: compiled the step for the bucket of %d tokens + %d regions in %.1f s (%d of at "
                            "most %d shapes)", stage.name, *shape, time.perf_counter() - started, len(bucket_shapes),
                            config.length_buckets[0] * config.length_buckets[1])
        window += step_losses
        window_steps += 1
        done = step + 1
        if done % config.log_every == 0 or done == total:
            mean = _reduce_mean(window / window_steps, runtime)
            last_loss = float(mean[0])
            if not torch.isfinite(mean).all():  # a process's loss, with finite gradients (an overflow in a loss)
                _diverged(stage, done, dict(zip(["loss"] + task_names, mean.tolist())), config,
                          "the mean loss over the processes is not finite", before_update=False)
            elapsed = time.perf_counter() - window_start
            if log is not None:
                row = {"step": done, "lr": f"{scheduler.get_last_lr()[0]:.6g}", "loss": f"{mean[0]:.6f}",
                       "samples_per_s": f"{window_samples / max(elapsed, 1e-9):.1f}",
                       "elapsed_s": f"{time.perf_counter() - stage_start:.2f}"}
                row.update({name: f"{value:.6f}" for name, value in zip(task_names, mean[1:].tolist())})
                log.write(row)
            if bar is not None:
                bar.set_postfix(loss=f"{last_loss:.4f}")
            window.zero_()
            window_steps, window_samples, window_start = 0, 0, time.perf_counter()
        if bar is not None:
            bar.update(1)
        periodic = config.checkpoint_every > 0 and done % config.checkpoint_every == 0 and done < total
        if periodic or done == total:
            save_stage_checkpoint(done)
    if start == total:
        # Resumed at its last step (the stage's steps lowered to the checkpoint's): nothing left to train, yet it
        # ends here as any stage does, with its stage checkpoint and a final loss (a later resume skips it).
        last_loss = _resumed_final_loss(window, window_steps, log)
        save_stage_checkpoint(total)
    if bar is not None:
        bar.close()
    del batches  # stops the DataLoader workers
    if runtime.distributed:
        # DDP's wrapper and reducer sit in reference cycles: left to the collector they are freed at some later
        # moment, on each rank at another (during the next stage, or as eval starts); here, at the same point on
        # every rank. (A rare SIGABRT of one rank as eval started, seen twice in ~120 loaded 2-process runs, may
        # be this; not reproduced on demand.)
        del wrapped
        gc.collect()
    return summary_of(total)


def _resumed_final_loss(window: torch.Tensor, steps: int, log: LossLog | None) -> float:
    """The final loss of a stage resumed at its last step, which trains none: the mean of the restored loss window
    (its steps since the last logged row, already a mean over the processes), or else the loss of the last row its
    log kept (NaN where this process keeps no log)."""
    if steps:
        return float(window[0] / steps)
    if log is None:
        return float("nan")
    with open(log.path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    try:
        return float(rows[-1]["loss"]) if rows else float("nan")
    except (KeyError, TypeError, ValueError):
        return float("nan")


def check_resume_steps(state: dict, path: str, stage: StageConfig, total: int) -> None:
    """A stage resumed part-way must have steps left, or as many as its checkpoint ran (it then ends at once): with
    fewer, its loop ran none, no stage checkpoint was written and its summary counted negative steps."""
    step = int(state["step"])
    if step <= total:
        return
    made = (f"{stage.name}.steps {stage.steps}" if stage.steps is not None
            else f"{stage.name}.epochs {stage.epochs!r}, which makes {total} steps of this config's data")
    raise ValueError(f"{path}: stage {stage.name!r} resumed at step {step}, past this config's {total} steps "
                     f"({made}); resume it with steps (or epochs) that make {step} steps at least, or start a new "
                     f"run from its weights with init:")


def _resumed_dealing(stage: StageConfig, record: dict, start: int) -> str:
    """How a resumed stage deals its row groups: as its checkpoint's run did (``data.row_groups``), so the batches
    after the checkpoint are those that run would have trained on. Checkpoints that recorded ``captioned`` (or,
    older, nothing) dealt them in turn, whatever their sizes; the stages after the resumed one deal evenly."""
    dealing = record.get("row_groups", "captioned")
    if not isinstance(dealing, str) or dealing not in DEALINGS:
        logger.warning("stage %s: the checkpoint's row groups were dealt %r, a dealing unknown here: the batches "
                       "after step %d are not those its run would have trained on", stage.name, dealing, start)
        return DEALING
    if dealing != DEALING:
        logger.info("stage %s: row groups dealt %r as the checkpoint's run did, not %r, until the stage ends "
                    "(an exact resume)", stage.name, dealing, DEALING)
    return dealing


def _diverged(stage: StageConfig, step: int, losses: dict, config: TrainConfig, what: str,
              before_update: bool = True) -> None:
    """Stop a stage whose training is no longer finite (``what``): before the update that would make every weight
    NaN when the gradients are not finite; after it when only a logged loss is (the update itself was finite)."""
    last = os.path.join(config.out_dir, "checkpoints", "last.pt")
    shown = ", ".join(f"{name} {value:.4g}" for name, value in losses.items())
    when = "before that update" if before_update else "after that step"
    raise TrainingDiverged(f"stage {stage.name!r}, step {step}: {what} (this process's losses: {shown}): training "
                           f"diverged and stopped {when} (the last checkpoint, "
                           f"{last if os.path.exists(last) else 'none yet'}, holds finite weights); lower the stage's "
                           f"lr, raise its warmup, or check the data")


#: What a run writes into its out_dir: a folder holding any of these holds a run (``overwrite`` removes them).
RUN_OUTPUTS = ("checkpoints", "logs", "tokenizer.json", "config.json", "summary.json", "eval.json")


def earlier_run(config: TrainConfig, resume: str | None = None, overwrite: bool = False) -> list[str]:
    """The files of an earlier run in ``config.out_dir`` (to remove when ``overwrite``); a ``ValueError`` when there
    are some and neither ``resume`` nor ``overwrite`` says what to do with them: a new run would overwrite its
    final.pt and last.pt and mix its checkpoints and logs with the new run's."""
    out_dir = config.out_dir
    if resume and overwrite:
        raise ValueError("--resume or --overwrite, not both: --resume continues the run in out_dir, --overwrite "
                         "removes it and starts over")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"out_dir: {out_dir} is a file, not a folder")
    found = [name for name in RUN_OUTPUTS if os.path.lexists(os.path.join(out_dir, name))]
    if found and not resume and not overwrite:
        shown = ", ".join(name + ("/" if os.path.isdir(os.path.join(out_dir, name)) else "") for name in found)
        raise ValueError(f"out_dir: {out_dir} already holds a training run ({shown}); pass --resume to continue it, "
                         f"--overwrite to start over, or choose another out_dir")
    return found if overwrite else []


def train(config: TrainConfig, resume: str | None = None, progress: bool = False, overwrite: bool = False) -> dict:
    """Run every configured stage in order (skipping those a resumed checkpoint finished); returns a summary.

    An out_dir holding an earlier run is refused unless ``resume`` continues it or ``overwrite`` first removes
    its files (``RUN_OUTPUTS``; anything else there stays)."""
    earlier = earlier_run(config, resume, overwrite)
    if resume == "auto" and not os.path.exists(os.path.join(config.out_dir, "checkpoints", "last.pt")):
        # `--resume` without a path: the same command starts a run and continues it after a kill,
        # also when the kill came before the first checkpoint.
        logger.info("no %s yet: starting from scratch", os.path.join(config.out_dir, "checkpoints", "last.pt"))
        resume = None
    init_state = None
    if config.init and not resume:  # its model settings checked against the checkpoint before out_dir is made
        init_state = load_checkpoint(config.init)
        model_config = init_model_config(init_state, config)
    runtime = setup_runtime(config)
    if runtime.distributed:
        dist.barrier()  # every process has looked before the first writes
    os.makedirs(config.out_dir, exist_ok=True)
    stages = config.stages()
    resume_state = None
    if resume:
        if resume == "auto":
            resume = os.path.join(config.out_dir, "checkpoints", "last.pt")
        resume_state = load_checkpoint(resume)
        check_resume_matches(resume_state, resume, config, runtime.world_size)
        tokenizer_json = resume_state["tokenizer"]
        model_config = model_config_from_dict(resume_state["model_config"])
        eval_captions = check_data_fits(model_config, config, resume, first_stage=int(resume_state["stage_index"]))
        logger.info("resuming from %s (stage %s, step %d)", resume, resume_state["stage_name"], resume_state["step"])
    elif init_state is not None:
        tokenizer_json = init_state["tokenizer"]
        eval_captions = check_data_fits(model_config, config, config.init)
        logger.info("starting from %s (%s, step %d)", config.init, init_state.get("stage_name"), init_state.get("step", 0))
    else:
        tokenizer = build_tokenizer(config)
        tokenizer_json = tokenizer.to_str()
        model_config = resolve_model_config(config, tokenizer.get_vocab_size(), tokenizer.token_to_id("[PAD]"))
        source = "model.feature_dim" if config.model.feature_dim is not None else config.stages()[0].datasets[0].regions
        eval_captions = check_data_fits(model_config, config, source)
    done_index = int(resume_state["stage_index"]) + (1 if resume_state["stage_done"] else 0) if resume_state else 0
    # Every stage still to run is checked before the first one trains; that one's join is handed to its stream.
    reports, first_pairs = check_stages(stages, done_index, runtime.world_size, config.num_workers)
    if resume_state is not None and not resume_state["stage_done"]:  # the stage's step count needs its data
        resumed = stages[done_index]
        check_resume_steps(resume_state, resume, resumed, stage_steps(resumed, reports[done_index]["pairs"],
                                                                      runtime.world_size, config.grad_accum))
    from tokenizers import Tokenizer

    ids = special_ids(Tokenizer.from_str(tokenizer_json))
    torch.manual_seed(derived_seed(config.seed, "init"))
    model = ImageBert(model_config, moc_loss=config.moc_loss)
    if resume_state is not None:
        load_weights(model, resume_state, resume)
        if "rng" in resume_state:  # (final.pt has none: every stage of its run is done)
            torch.set_rng_state(resume_state["rng"]["torch"])
    elif init_state is not None:
        load_weights(model, init_state, config.init)
    elif config.bert:
        load_bert_weights(model, config.bert)
    model.to(runtime.device)
    if earlier and runtime.is_main:  # once the new run's config, data and init checkpoint are known good
        logger.warning("--overwrite: removing the earlier run's %s from %s", ", ".join(earlier), config.out_dir)
        for name in earlier:
            path = os.path.join(config.out_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
    if runtime.is_main:
        write_atomically(os.path.join(config.out_dir, "tokenizer.json"), lambda handle: handle.write(tokenizer_json))
        # Replaced whole, never rewritten in place: a resume changes it (the stages not yet started may change), and
        # a copy of the run made with hard links (cp -al) keeps its own.
        write_json_atomically(os.path.join(config.out_dir, "config.json"),
                              {"train": config.to_dict(), "model": dataclasses.asdict(model_config)})
    logger.info("ImageBERT: %.1fM parameters, %d layers, hidden %d, feature_dim %d, %d classes on %s%s",
                num_parameters(model) / 1e6, model_config.num_layers, model_config.hidden_size,
                model_config.feature_dim, model_config.num_classes, runtime.device, " (bf16)" if runtime.bf16 else "")
    base = {"format": CHECKPOINT_FORMAT, "model_config": dataclasses.asdict(model_config),
            "train_config": config.to_dict(), "tokenizer": tokenizer_json}
    # The stages a resumed checkpoint had finished keep their entries (marked), so summary.json lists every stage.
    earlier = restored_summaries(resume_state, resume, config) if resume_state is not None else []
    summary = {"out_dir": config.out_dir, "stages": earlier, "world_size": runtime.world_size,
               "device": str(runtime.device)}
    for index, stage in enumerate(stages):
        stage_resume = None
        if index < done_index:
            continue
        if resume_state is not None and index == resume_state["stage_index"] and not resume_state["stage_done"]:
            stage_resume = resume_state
        base["stage_summaries"] = list(summary["stages"])
        pairs, first_pairs = first_pairs, None  # the first stage's join, for its stream (the others read their own)
        summary["stages"].append(run_stage(model, stage, index, config, runtime, tokenizer_json, ids, base,
                                           stage_resume, progress, reports[index], pairs))
        del pairs  # freed with the stage's stream, before the next stage reads its data
    base["stage_summaries"] = list(summary["stages"])
    # Equal on every rank when DDP kept the replicas in sync (logged so a multi-rank run can be checked).
    checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
    logger.info("rank %d: final parameter checksum %.10e", runtime.rank, checksum)
    summary["parameter_checksum"] = checksum
    final = os.path.join(config.out_dir, "checkpoints", "final.pt")
    if runtime.is_main:
        save_checkpoint(final, dict(base, model=model.state_dict(), stage_index=len(stages) - 1,
                                    stage_name=stages[-1].name, step=0, stage_done=True))
    summary["checkpoint"] = final
    if config.eval is not None:  # every process scores a share of the pairs (model.eval._score)
        from model.eval import evaluate, write_eval

        model.eval()
        model.drop_compiled()  # eval batches vary in shape: the static compiled graphs would recompile
        # The captions check_data_fits read before training: not read again.
        result = evaluate(model, tokenizer_json, config.eval.regions, eval_captions, config.eval.split,
                          batch_size=config.eval_batch_size, device=runtime.device, bf16=runtime.bf16,
                          progress=progress and runtime.is_main)
        if runtime.is_main:
            write_eval(result, os.path.join(config.out_dir, "eval.json"))
        summary["eval"] = result
    if runtime.is_main:
        write_json_atomically(os.path.join(config.out_dir, "summary.json"), summary)
    if runtime.distributed:
        dist.barrier()
    return summary


def main(argv: list[str] | None = None) -> int:
    """``python -m model.train --config FILE [--set key=value ...] [--resume [CKPT] | --overwrite]`` (also under
    torchrun)."""
    parser = argparse.ArgumentParser(prog="python -m model.train", description=__doc__.split("\n\n")[0])
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        status, summary = run_reported(args, parser.prog)
    except KeyboardInterrupt:  # as `lait train` reports it (lait.cli): one line, the shell's status for SIGINT
        print(f"{parser.prog}: interrupted; rerun the same command with --resume to continue from the last "
              f"checkpoint", file=sys.stderr)
        return 130
    if summary is not None:
        print(json.dumps({k: v for k, v in summary.items() if k != "eval"}, indent=2))
    return status


#: What a training command reports as bad input (a config or override, data, a checkpoint, a path): one line on
#: stderr and exit status 2, in ``lait train`` and ``python -m model.train`` alike (``run_reported``).
BAD_INPUT = (ConfigError, ValueError, OSError)


def run_reported(args: argparse.Namespace, prog: str) -> tuple[int, dict | None]:
    """``run_from_args`` with its failures reported as one line on stderr, ``PROG: ...``: the exit status and the
    summary (None on failure): 2 for bad input (``BAD_INPUT``), 1 for a run that diverged (``TrainingDiverged``)."""
    try:
        return 0, run_from_args(args)
    except BAD_INPUT as exc:
        message = " ".join(line.strip() for line in str(exc).splitlines())  # a YAML error spans several lines
        print(f"{prog}: {message}", file=sys.stderr)
        return 2, None
    except TrainingDiverged as exc:  # not bad input: the run itself failed
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1, None


def run_from_args(args: argparse.Namespace) -> dict:
    """Load the config with its overrides and train."""
    # The folder as typed: a --set value is YAML, in which "run #2" ends at its " #" and "a: b" is a mapping.
    overrides = list(args.overrides) + ([f"out_dir={override_text(args.out_dir)}"] if args.out_dir else [])
    config = load_config(args.config, overrides)
    try:
        return train(config, resume=args.resume, progress=not args.no_progress,
                     overwrite=args.overwrite)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
