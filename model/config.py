"""ImageBERT configuration: the model shape, the training plan, YAML files and ``key=value`` overrides.

The model config (``ModelConfig``) is kept apart from the training config (``TrainConfig``) so a
checkpoint carries the first and an experiment file the second. YAML is read with ``safe_load`` and
every override is a dotted path (``pretrain.0.steps=100``, ``model.hidden_size=64``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

PRETRAIN_TASKS = ("mlm", "moc", "mrfr", "itm")
FINETUNE_LOSSES = ("binary", "multiclass", "triplet")
#: The smallest value of each count (0 would divide by zero, never log, or never fill a batch).
MINIMUMS = {
    "config": {"grad_accum": 1, "log_every": 1, "shuffle_buffer": 1, "checkpoint_every": 0, "num_workers": 0,
               "cpu_threads": 0, "eval_batch_size": 1, "tokenizer_vocab_size": 1, "grad_clip": 0, "weight_decay": 0},
    # type_vocab_size 2: text is segment 0, regions segment 1
    "model": {"vocab_size": 1, "hidden_size": 1, "num_layers": 1, "num_heads": 1, "intermediate_size": 1,
              "max_position": 1, "type_vocab_size": 2, "feature_dim": 1, "num_classes": 1, "max_text_len": 3,
              "max_regions": 1, "dropout": 0, "attention_dropout": 0, "init_std": 0, "layer_norm_eps": 0,
              "region_position_id": 0, "pad_token_id": 0},
    "stage": {"steps": 1, "lr": 0, "warmup": 0, "negatives": 1, "margin": 0, "dual_encoder": 0},
}
PROBABILITIES = ("mlm_prob", "region_mask_prob", "region_zero_prob", "itm_neg_prob")
#: Stage keys that only one kind of stage reads; given to the other kind they would be ignored.
STAGE_KIND_KEYS = {"pretrain": ("tasks",), "finetune": ("loss", "negatives", "margin", "dual_encoder")}
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
#: Model keys that are probabilities of dropping: from 0 up to, not including, 1 (1 would drop everything).
DROPOUTS = ("dropout", "attention_dropout")
#: Model keys the trained weights are made for: their shapes (sizes, vocabulary, positions, segments, feature width,
#: classes) or what they mean (the heads that split the width, the regions' shared position, the padding id of the
#: checkpoint's tokenizer). ``init`` takes these from its checkpoint; a config may set the others over it.
WEIGHT_KEYS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position",
               "type_vocab_size", "feature_dim", "num_classes", "region_position_id", "pad_token_id")
#: The model keys a config with ``init`` may not set to other values than the checkpoint's (``init_model_changes``):
#: the weights' (``WEIGHT_KEYS``), and ``init_std``, the scale of the random weights a new model draws (with ``init``
#: every weight comes from the checkpoint: it would do nothing).
INIT_TAKES = (*WEIGHT_KEYS, "init_std")
#: A stage's name is a file name (``checkpoints/NAME.pt``, ``NAME-step<N>.pt``, ``logs/NAME.csv``): letters, digits,
#: ``_ . -``, not starting with a dot (``..`` and a path would write outside ``out_dir``, ``.x`` a hidden file).
STAGE_NAME = re.compile(r"(?!\.)[A-Za-z0-9_.-]+")
#: Stage names whose checkpoint would be the run's own (``last.pt``, the latest; ``final.pt``, the trained model).
RESERVED_STAGE_NAMES = ("last", "final")
#: Names of a stage's periodic checkpoints (``NAME-step<N>``): a stage named so would share a file with another's.
PERIODIC_CHECKPOINT = re.compile(r".+-step\d+", re.IGNORECASE)
#: Fields a section decides, left out of the keys an unknown-key message offers (a stage's ``kind`` is that of
#: its section: ``pretrain`` items are pretraining stages, ``finetune`` the fine-tuning one).
IMPLIED_KEYS = {"StageConfig": ("kind",)}


def check_count(name: str, value: Any, minimum: int = 1) -> None:
    """``ValueError`` naming the option (``batch_size`` as ``batch-size``) unless ``value`` is a whole number of
    at least ``minimum`` (a bool is not one); for the Python APIs, whose callers skip argparse."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name.replace('_', '-')}: {value!r}, need a whole number >= {minimum}")


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


@dataclass
class ModelConfig:
    """Shape of ImageBERT; the defaults are BERT-base with Visual Genome regions (1600 classes, 2048-d)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    dropout: float = 0.1
    attention_dropout: float = 0.1
    max_position: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    init_std: float = 0.02
    # None: read from the data (feature width of the regions schema, classes.json or max class id).
    feature_dim: int | None = None
    num_classes: int | None = None
    # All regions share this one sequence position (the paper's "dummy" position).
    region_position_id: int = 0
    max_text_len: int = 40
    max_regions: int = 100
    pad_token_id: int = 0


@dataclass
class DatasetConfig:
    """One regions dataset joined with one captions dataset on ``image_id``, restricted to a split."""

    regions: str
    captions: str
    split: str | None = "train"


@dataclass
class StageConfig:
    """One training stage: its datasets, length, optimiser settings and task mix (or fine-tuning loss)."""

    name: str
    datasets: list[DatasetConfig]
    kind: str = "pretrain"  # pretrain | finetune
    steps: int | None = None  # optimizer steps; or give epochs
    epochs: float | None = None
    batch_size: int = 48
    lr: float = 1e-4
    warmup: float = 0.1  # a fraction of the steps when < 1, else a step count
    # pretrain: loss weight per task; a task with weight 0 or absent is not run.
    tasks: dict[str, float] = field(default_factory=lambda: {name: 1.0 for name in PRETRAIN_TASKS})
    # finetune: binary (the paper's best) | multiclass (1 positive + P-1 negatives) | triplet (hardest negative)
    loss: str = "binary"
    negatives: int = 3  # finetune: negatives per positive, half random images, half random captions
    margin: float = 0.2  # triplet margin
    # finetune: weight of an in-batch contrastive loss on single-modality [CLS] embeddings, which trains
    # the dual-encoder pre-ranker of two-stage evaluation (0 = off, the paper's setting)
    dual_encoder: float = 0.0


@dataclass
class TrainConfig:
    """A whole training run: model, tokenizer, pretraining stages in order, fine-tuning, evaluation."""

    out_dir: str = "runs/imagebert"
    model: ModelConfig = field(default_factory=ModelConfig)
    bert: str | None = None  # a Hugging Face BERT folder (bert-base-uncased layout) to start from
    # A `lait train` checkpoint to start from (e.g. a pretraining run's final.pt, to fine-tune it): its
    # weights, model shape and tokenizer; the stages of this config then run with fresh optimizers.
    init: str | None = None
    tokenizer: str | None = None  # tokenizer.json or vocab.txt; default: BERT's, else trained on the captions
    tokenizer_vocab_size: int = 8000
    lowercase: bool = True
    pretrain: list[StageConfig] = field(default_factory=list)
    finetune: StageConfig | None = None
    eval: DatasetConfig | None = None  # evaluated after training into OUT_DIR/eval.json
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32
    compile: bool = False
    # What compile covers: "trunk" (embeddings + encoder; the heads gather a data-dependent number of
    # masked items and stay eager), "model" (the whole forward and losses as one graph; needs
    # masking: exact, whose fixed slot counts give the heads static shapes), or "auto": model when
    # the masking allows it, else trunk.
    compile_scope: str = "auto"
    # The encoder's 24 dropout + residual + LayerNorm steps as fused Triton kernels on CUDA
    # (model/fused_norm.py: one pass each way instead of about five forward and six backward). The same
    # function with its own dropout stream; off until a GPU measures it (benchmarks/RESULTS_train.md).
    fused_norm: bool = False
    cpu_threads: int = 0  # torch intra-op threads on CPU; 0 = torch's default (one per core)
    grad_accum: int = 1
    grad_clip: float = 1.0
    weight_decay: float = 0.01
    num_workers: int = 0
    shuffle_buffer: int = 2048
    # [text, regions]: batch examples of about one caption length and region count, in that many evenly
    # spaced length buckets each way ([2, 4]: captions up to 20 or 40 tokens, 25/50/75/100 regions), so a
    # batch pads to its bucket, not to the longest of a random batch; compiled, one graph per bucket.
    # None: random batches (the paper's setting).
    length_buckets: list | None = None
    log_every: int = 10
    checkpoint_every: int = 0  # steps; 0 = at the end of each stage only
    # Masking and sampling, as in the paper.
    mlm_prob: float = 0.15
    # bernoulli: each candidate with probability mlm_prob / region_mask_prob (at least one per row);
    # exact: max(1, round(p x candidates)) per row, the count rule of BERT's create_pretraining_data.
    masking: str = "bernoulli"
    region_mask_prob: float = 0.15
    region_zero_prob: float = 0.9
    itm_neg_prob: float = 0.5
    moc_loss: str = "ce"  # ce (detector label) | kl (detector class distribution)
    eval_batch_size: int = 512
    # The keys the model section of the config file gives (not a config key): with init, those set over the
    # checkpoint's model. None (a TrainConfig built in Python): those other than the default.
    model_keys_given: tuple[str, ...] | None = field(default=None, init=False, compare=False, repr=False)

    def stages(self) -> list[StageConfig]:
        """The pretraining stages in order, then fine-tuning."""
        return list(self.pretrain) + ([self.finetune] if self.finetune is not None else [])

    def to_dict(self) -> dict:
        """Plain nested dict (what config.json and checkpoints store), as a config file says it, so that
        ``train_config_from_dict`` reads it back to an equal config: each stage without the keys of the other kind
        of stage, no ``lowercase`` beside a tokenizer.json, and, with ``init``, a model section of the keys set over
        the checkpoint's model."""
        data = dataclasses.asdict(self)
        del data["model_keys_given"]
        for stage in data["pretrain"] + ([data["finetune"]] if data["finetune"] is not None else []):
            other = "finetune" if stage["kind"] == "pretrain" else "pretrain"
            for key in STAGE_KIND_KEYS[other]:
                del stage[key]
        if _tokenizer_decides_case(self.tokenizer):
            del data["lowercase"]
        if self.init is not None:
            data["model"] = {key: data["model"][key] for key in model_keys_set(self)}
        return data


def model_keys_set(config: TrainConfig) -> list[str]:
    """The model keys ``config`` sets: those its config file's model section gives (for a TrainConfig built in
    Python, those other than the default), in the model's order."""
    if config.model_keys_given is not None:
        return [f.name for f in dataclasses.fields(ModelConfig) if f.name in config.model_keys_given]
    default = ModelConfig()
    return [f.name for f in dataclasses.fields(ModelConfig)
            if getattr(config.model, f.name) != getattr(default, f.name)]


def init_model_changes(config: TrainConfig, model: dict, section: Any = None) -> dict[str, str]:
    """The keys of ``INIT_TAKES`` (``model.KEY``) that ``config``'s model section sets to other values than the
    ``init`` checkpoint's, each with both values: other than its model's (``model``, its ``model_config``) and than its
    run's model section (``section``, which the data, the tokenizer or BERT overrode: a run's config.json lists its
    whole section). A key set to the checkpoint's value says nothing new: a run's config.json, rerun with ``init``,
    sets them all."""
    section = section if isinstance(section, dict) else {}
    default = dataclasses.asdict(ModelConfig())
    changed = {}
    for key in model_keys_set(config):
        value, theirs = getattr(config.model, key), model.get(key, default[key])
        if key in INIT_TAKES and value != theirs and (key not in section or value != section[key]):
            changed[f"model.{key}"] = f"model.{key} {value!r}, the checkpoint's {theirs!r}"
    return changed


def init_refusal(dropped: list[str] | dict[str, str]) -> ConfigError:
    """The error for a config with ``init`` that sets what the checkpoint decides: ``dropped``, the keys (``bert``,
    ``tokenizer``), or the model keys with both values (``init_model_changes``)."""
    free = [f.name for f in dataclasses.fields(ModelConfig) if f.name not in INIT_TAKES]
    differs = (f", and this config's model section differs from its model: {'; '.join(dropped.values())}"
               if isinstance(dropped, dict) else "")
    return ConfigError(f"init takes the model's weights, their shape and the tokenizer from the checkpoint{differs}; "
                       f"drop {', '.join(dropped)} (over the checkpoint's model, a config may set "
                       f"{', '.join(free[:-1])} and {free[-1]}, and the other keys to the checkpoint's values)")


def _tokenizer_decides_case(tokenizer: Any) -> bool:
    """A tokenizer.json carries its own normaliser, which decides the case (``lowercase`` does not apply)."""
    return isinstance(tokenizer, str) and tokenizer.endswith(".json")


def _build(cls, data: Any, where: str):
    """A dataclass from a dict, refusing unknown keys so typos fail loudly."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls) if f.init}  # (a field set after init is no config key)
    unknown = sorted(set(data) - names)
    if unknown:
        offered = sorted(names - set(IMPLIED_KEYS.get(cls.__name__, ())))
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {offered}")
    hints = typing.get_type_hints(cls)
    return {key: _coerce(value, hints[key], f"{where}.{key}") for key, value in data.items()}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Numbers written as YAML strings (``2e-3`` is a string in YAML 1.1) become numbers; bad ones fail."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        # A key left empty in YAML (``pretrain:`` with every stage commented out) is an empty list, mapping or
        # section: valid where an empty one is, else refused by its own check ("at least one dataset is required").
        if hint is list or typing.get_origin(hint) is list:
            return []
        if hint is dict or typing.get_origin(hint) is dict or dataclasses.is_dataclass(hint):
            return {}
        raise ConfigError(f"{where}: a value is required")
    for kind in (bool, int, float):
        if kind in options:
            if kind is bool:
                if isinstance(value, bool):
                    return value
                if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                    return value.lower() in ("true", "yes", "1")
                continue
            if isinstance(value, bool):
                continue
            try:
                number = kind(value) if not isinstance(value, str) or kind is float else int(float(value))
            except (TypeError, ValueError, OverflowError):  # int(.inf), int("1e400"): no whole number
                continue
            if kind is int and float(value) != number:
                continue
            return number
    if any(o in (bool, int, float) for o in options) and not any(o in (str, list, dict) or typing.get_origin(o)
                                                                 for o in options if o is not type(None)):
        raise ConfigError(f"{where}: {value!r} is not a {' or '.join(getattr(o, '__name__', str(o)) for o in options)}")
    if str in options:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # YAML reads `split: 2017` as a number; the text is what was meant
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {value!r} is not a string")
    if dict in options or typing.get_origin(hint) is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {value!r} is not a mapping")
        value_hint = (typing.get_args(hint) or (Any, Any))[1]
        return {key: _coerce(item, value_hint, f"{where}.{key}") for key, item in value.items()}
    return value


def _check_minimums(obj, section: str, where: str) -> None:
    """``ConfigError`` for a count below its minimum (``MINIMUMS``) or a number that is not finite (``.inf``,
    ``.nan``: YAML reads both as floats); unset (None) values are left to their default."""
    for key, least in MINIMUMS[section].items():
        value = getattr(obj, key)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}{key}: {value!r}, need a finite number")
        if value is not None and value < least:
            raise ConfigError(f"{where}{key}: {value!r}, need at least {least}")


def _check_model_values(config: ModelConfig, where: str = "model.") -> None:
    """``ConfigError`` naming the key for a model value out of its range (a count below its minimum, a dropout
    that is not a probability below 1), each key on its own."""
    _check_minimums(config, "model", where)
    for key in DROPOUTS:
        if not getattr(config, key) < 1:
            raise ConfigError(f"{where}{key}: {getattr(config, key)!r}, need a dropout probability from 0 up to, not "
                              f"including, 1")


def check_model_config(config: ModelConfig, where: str = "model.") -> ModelConfig:
    """``ConfigError`` naming the key when the model's sizes do not fit together (each would fail mid-run as an
    index error: a text position past ``max_position``, the regions' segment 1 past ``type_vocab_size``)."""
    _check_model_values(config, where)
    if config.max_text_len > config.max_position:
        raise ConfigError(f"{where}max_text_len: {config.max_text_len}, more than the {config.max_position} "
                          f"positions of {where}max_position")
    if config.region_position_id >= config.max_position:
        raise ConfigError(f"{where}region_position_id: {config.region_position_id}, need a position below "
                          f"{where}max_position ({config.max_position})")
    if config.pad_token_id >= config.vocab_size:
        raise ConfigError(f"{where}pad_token_id: {config.pad_token_id}, need an id below {where}vocab_size "
                          f"({config.vocab_size})")
    if config.hidden_size % config.num_heads:
        raise ConfigError(f"{where}hidden_size: {config.hidden_size} is not a multiple of {where}num_heads "
                          f"({config.num_heads})")
    return config


def model_config_from_dict(data: dict) -> ModelConfig:
    """ModelConfig from a plain dict (a checkpoint's or a YAML section)."""
    return check_model_config(ModelConfig(**_build(ModelConfig, data or {}, "model")))


def _dataset(data: Any, where: str) -> DatasetConfig:
    data = _build(DatasetConfig, data, where)
    if isinstance(data, DatasetConfig):
        return data
    for key in ("regions", "captions"):
        if not data.get(key):
            raise ConfigError(f"{where}.{key}: a path is required")
    data = {k: os.path.expandvars(v) if isinstance(v, str) else v for k, v in data.items()}
    for key in ("regions", "captions"):
        if "$" in data[key]:
            raise ConfigError(f"{where}.{key}: {data[key]!r} names an unset environment variable; set it or "
                              f"override the path with --set {where}.{key}=PATH")
    return DatasetConfig(**data)


def _check_stage_name(name: str, where: str) -> None:
    """``ConfigError`` naming the key unless the stage name is a plain file name of its own (``STAGE_NAME``; not
    one of ``RESERVED_STAGE_NAMES`` or a ``PERIODIC_CHECKPOINT`` name, in any case: a case-insensitive file system
    takes ``Final.pt`` for ``final.pt``)."""
    if not STAGE_NAME.fullmatch(name):
        raise ConfigError(f"{where}.name: {name!r} is not a usable stage name: it names the stage's files "
                          f"(checkpoints/NAME.pt, logs/NAME.csv), so letters, digits, '_', '.' and '-' only, not "
                          f"starting with a dot")
    if name.lower() in RESERVED_STAGE_NAMES:
        raise ConfigError(f"{where}.name: {name!r} is taken: checkpoints/{name.lower()}.pt is the run's own "
                          f"(last.pt the latest checkpoint, final.pt the trained model); choose another name")
    if PERIODIC_CHECKPOINT.fullmatch(name):
        raise ConfigError(f"{where}.name: {name!r} is the name of a periodic checkpoint (STAGE-stepN.pt) of a stage "
                          f"named {name[:name.lower().rindex('-step')]!r}; choose another name")


def _stage(data: Any, where: str, kind: str) -> StageConfig:
    if isinstance(data, dict) and "kind" in data and data["kind"] != kind:
        # The section decides: another kind used to be overwritten silently (the same one is let be).
        raise ConfigError(f"{where}.kind: {data['kind']!r}, but {where} is a {kind} stage (the section decides: "
                          f"pretrain items are pretraining stages, finetune is the fine-tuning stage); drop kind")
    data = dict(_build(StageConfig, data, where))
    other = "finetune" if kind == "pretrain" else "pretrain"
    ignored = [key for key in STAGE_KIND_KEYS[other] if key in data]
    if ignored:
        raise ConfigError(f"{where}: {', '.join(ignored)} {'applies' if len(ignored) == 1 else 'apply'} to "
                          f"{'the finetune stage' if other == 'finetune' else 'pretraining stages'} only; drop "
                          f"{'it' if len(ignored) == 1 else 'them'} here")
    data.setdefault("name", f"{kind}" if kind == "finetune" else where.replace(".", "_"))
    _check_stage_name(data["name"], where)
    data["kind"] = kind
    if not isinstance(data.get("datasets") or [], list):
        raise ConfigError(f"{where}.datasets: a list of dataset entries is required")
    data["datasets"] = [_dataset(d, f"{where}.datasets.{i}") for i, d in enumerate(data.get("datasets") or [])]
    if not data["datasets"]:
        raise ConfigError(f"{where}.datasets: at least one dataset is required")
    stage = StageConfig(**data)
    if (stage.steps is None) == (stage.epochs is None):
        raise ConfigError(f"{where}: give exactly one of steps or epochs")
    _check_minimums(stage, "stage", f"{where}.")
    if stage.epochs is not None and not 0 < stage.epochs < math.inf:
        raise ConfigError(f"{where}.epochs: {stage.epochs!r}, need a finite number more than 0")
    if kind == "pretrain":
        unknown = sorted(set(stage.tasks) - set(PRETRAIN_TASKS))
        if unknown:
            raise ConfigError(f"{where}.tasks: unknown task(s) {unknown}; expected some of {list(PRETRAIN_TASKS)}")
        negative = sorted(k for k, w in stage.tasks.items() if w < 0)
        if negative:
            raise ConfigError(f"{where}.tasks: negative loss weight(s) for {negative}")
        if not any(w > 0 for w in stage.tasks.values()):
            raise ConfigError(f"{where}.tasks: at least one task needs a positive weight")
    elif stage.loss not in FINETUNE_LOSSES:
        raise ConfigError(f"{where}.loss: {stage.loss!r} is not one of {list(FINETUNE_LOSSES)}")
    if stage.batch_size < 2:
        raise ConfigError(f"{where}.batch_size: at least 2 (negatives are sampled within the batch)")
    return stage


def train_config_from_dict(data: dict) -> TrainConfig:
    """TrainConfig from a plain dict, validating every section."""
    given = data if isinstance(data, dict) else {}
    data = dict(_build(TrainConfig, data, "config"))
    model = _build(ModelConfig, data.get("model") or {}, "model")
    data["model"] = ModelConfig(**model)  # checked below
    if "lowercase" in given and _tokenizer_decides_case(data.get("tokenizer")):
        raise ConfigError("lowercase: a tokenizer.json carries its own normaliser, which decides the case; drop "
                          "lowercase (it applies to a vocab.txt and to the tokenizer trained on the captions)")
    if not isinstance(data.get("pretrain") or [], list):
        raise ConfigError("pretrain: a list of stages is required (each item starts with '-')")
    data["pretrain"] = [_stage(s, f"pretrain.{i}", "pretrain") for i, s in enumerate(data.get("pretrain") or [])]
    if data.get("finetune") is not None:
        data["finetune"] = _stage(data["finetune"], "finetune", "finetune")
    if data.get("eval") is not None:
        if isinstance(data["eval"], dict) and "split" not in data["eval"]:
            data["eval"] = {**data["eval"], "split": "test"}  # as `lait eval`: held-out captions, not the training ones
        data["eval"] = _dataset(data["eval"], "eval")
    config = TrainConfig(**data)
    config.model_keys_given = tuple(model)
    if not config.stages():
        raise ConfigError("config: no pretrain stages and no finetune stage")
    names = [s.name for s in config.stages()]
    if len({name.lower() for name in names}) != len(names):  # (a case-insensitive file system mixes Stage1, stage1)
        raise ConfigError(f"config: stage names must be unique, ignoring case (they name the stages' files), got "
                          f"{names}")
    if config.init is not None:
        config.init = os.path.expandvars(config.init)
        if "$" in config.init:
            raise ConfigError(f"init: {config.init!r} names an unset environment variable; set it or pass "
                              f"--set init=CHECKPOINT")
        taken = [key for key in ("bert", "tokenizer") if getattr(config, key)]
        if taken:
            raise init_refusal(taken)
        # The model keys of INIT_TAKES set to other values than the checkpoint's are refused when it is read
        # (init_model_changes), and the sizes the set keys must fit (max_text_len within max_position) are its too.
        _check_model_values(config.model)
    else:
        check_model_config(config.model)
    _check_minimums(config, "config", "")
    for key in PROBABILITIES:
        if not 0 <= getattr(config, key) <= 1:
            raise ConfigError(f"{key}: {getattr(config, key)!r} is not a probability between 0 and 1")
    if config.moc_loss not in ("ce", "kl"):
        raise ConfigError(f"moc_loss: {config.moc_loss!r} is not 'ce' or 'kl'")
    if not DEVICE.fullmatch(config.device):
        raise ConfigError(f"device: {config.device!r} is not auto, cpu, cuda or cuda:N")
    if config.precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"precision: {config.precision!r} is not auto, bf16 or fp32")
    if config.masking not in ("bernoulli", "exact"):
        raise ConfigError(f"masking: {config.masking!r} is not bernoulli or exact")
    if config.length_buckets is not None:
        buckets = config.length_buckets
        if (not isinstance(buckets, list) or len(buckets) != 2
                or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in buckets)):
            raise ConfigError(f"length_buckets: {buckets!r}, need [text buckets, region buckets], two whole "
                              f"numbers >= 1 (or null for random batches)")
    if config.compile_scope not in ("auto", "trunk", "model"):
        raise ConfigError(f"compile_scope: {config.compile_scope!r} is not auto, trunk or model")
    if config.compile and config.compile_scope == "model" and config.pretrain and config.masking != "exact":
        raise ConfigError("compile_scope: model needs masking: exact (Bernoulli masking gives the heads "
                          "a data-dependent number of items, which a static graph cannot hold)")
    return config


def resolved_compile_scope(config: TrainConfig) -> str:
    """``compile_scope`` with ``auto`` decided: the whole model when no stage has data-dependent head shapes."""
    if config.compile_scope != "auto":
        return config.compile_scope
    return "model" if config.masking == "exact" or not config.pretrain else "trunk"


def override_text(text: str) -> str:
    """``text`` spelt as an override value (``apply_override``) that reads back as that text: as it is where YAML
    reads it so, else quoted (JSON, which YAML reads as it is). A path ``run #2`` ends at its `` #`` in YAML, and
    ``res: a`` is a mapping; ``/data/regions`` stays as typed."""
    try:
        plain = yaml.safe_load(text) == text if text.strip() == text and text else False
    except yaml.YAMLError:
        plain = False
    return text if plain else json.dumps(text)


def apply_override(data: dict, assignment: str) -> None:
    """Apply one ``dotted.key=value`` override in place; the value is parsed as YAML (numbers, lists...)."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r}: expected key=value")
    key, _, raw = assignment.partition("=")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key!r}: the value is not valid YAML ({str(exc).splitlines()[0]})") from None
    parts = key.strip().split(".")
    node: Any = data
    for i, part in enumerate(parts):
        if not isinstance(node, (dict, list)):  # e.g. model.hidden_size.x: hidden_size is a number
            above = ".".join(parts[:i]) or "the config"
            raise ConfigError(f"override {key!r}: {above} is {node!r}, not a section with keys")
        if i == len(parts) - 1:
            break
        nxt = parts[i + 1]
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {key!r}: no list item {part!r}")
            node = node[int(part)]
        else:
            if node.get(part) is None:
                node[part] = [] if nxt.isdigit() else {}
            node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"override {key!r}: no list item {last!r}")
        node[int(last)] = value
    else:
        node[last] = value


def _unshared(value: Any) -> Any:
    """A copy in which no two places share one dict or list. YAML anchors and aliases (``datasets: *common``)
    load as one shared object, and ``copy.deepcopy`` keeps such sharing: an override of one stage's entry
    would change every stage that names the anchor."""
    if isinstance(value, dict):
        return {key: _unshared(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unshared(item) for item in value]
    return value


def load_config(path: str | None = None, overrides: list[str] | None = None, base: dict | None = None) -> TrainConfig:
    """Read a YAML config (or start from ``base``), apply the overrides, validate."""
    data: dict = _unshared(base) if base is not None else {}
    if path is not None:
        if os.path.isdir(path):
            raise ConfigError(f"{path}: a folder, not a YAML config file")
        try:
            with open(path, encoding="utf-8") as handle:
                data = yaml.safe_load(handle) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not a valid YAML file ({exc})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a YAML config file (not UTF-8 text)") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config ({exc.strerror or exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
        if set(data) == {"train", "model"} and isinstance(data["train"], dict):
            data = data["train"]  # a run's config.json (its config, and the model it built): rerun that config
        data = _unshared(data)
    for assignment in overrides or []:
        apply_override(data, assignment)
    return train_config_from_dict(data)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The training options shared by ``lait train`` and ``python -m model.train``."""
    parser.add_argument("--config", required=True, help="YAML training config (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value by dotted path, e.g. pretrain.0.steps=100 (repeatable)")
    parser.add_argument("--out-dir", help="shortcut for --set out_dir=DIR")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                        help="resume from CKPT, or from OUT_DIR/checkpoints/last.pt when no path is given "
                             "(from scratch when there is none yet)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in an out_dir that holds a run (otherwise refused, unless --resume continues "
                             "it): first remove the files a run writes there (checkpoints/, logs/, tokenizer.json, "
                             "config.json, summary.json, eval.json), then train")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
