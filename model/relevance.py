"""The LAIT relevance model: a small dual encoder plus a head over hand-made features.

Reads top to bottom: ``RelevanceConfig``, the image encoder (a small CNN), the text encoder
(hashed subword embeddings), then ``RelevanceModel`` whose ``forward`` returns the relevance
probability of each (image, caption) pair, and ``RelevanceEnsemble``, members trained from different
seeds whose probabilities are averaged. Saved as ``model.safetensors`` + ``config.json``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from filters.relevance.config import MAX_EMBED_DIM, MAX_IMAGE_SIZE

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: The name an earlier model has beside its folder while ``_swap_in`` replaces it: the temporary folder's, plus this.
PREVIOUS_SUFFIX = ".previous"
MODEL_KIND = "lait-relevance"
#: How far (in training standard deviations) a standardised feature may lie from the training mean. A feature
#: present in as few as 1% of the training pairs (a 0/1 feature, boilerplate say) standardises to about 9.9, so
#: 10 leaves every value training saw as it was; it bounds what a value training never saw (a 20,000 px image
#: in a crawl of thumbnails) can do to the head, whose response there was never fitted.
FEATURE_CLIP = 10
#: A training spread below this is a feature constant in training (all images 64 px high): it is centred but not
#: scaled, since dividing by its near-zero spread (the 1e-3 floor it once had) made any change at scoring
#: x1000 for weights that never learnt from it.
MIN_FEATURE_STD = 1e-3


@dataclass
class RelevanceConfig:
    """Architecture of the relevance model (the training settings live in ``filters.relevance.train``)."""

    image_size: int = 64
    channels: tuple[int, ...] = (16, 32, 64, 96)
    embed_dim: int = 64
    num_buckets: int = 1 << 15
    max_tokens: int = 96
    text_dim: int = 96
    num_features: int = 13  # text-only + image-only features
    head_hidden: int = 16
    feature_clip: int = FEATURE_CLIP  # standardised features clipped to +-this; 0: not clipped

    @classmethod
    def from_dict(cls, values: dict) -> "RelevanceConfig":
        """A config from a JSON dict, ignoring keys this version does not know. A config without
        ``feature_clip`` was saved before the setting existed: 0, so that such a model scores as it did."""
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {"feature_clip": 0, **{k: v for k, v in values.items() if k in known}}
        if "channels" in kwargs:
            kwargs["channels"] = tuple(kwargs["channels"])
        return cls(**kwargs)


class ImageEncoder(nn.Module):
    """Strided 3x3 conv blocks, then average- and max-pooling (max keeps small objects visible)."""

    def __init__(self, config: RelevanceConfig):
        super().__init__()
        layers, c_in = [], 3
        for c_out in config.channels:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in = c_out
        self.blocks = nn.Sequential(*layers)
        self.proj = nn.Linear(2 * c_in, config.embed_dim)
        self.register_buffer("pixel_mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image.float() / 255.0 - self.pixel_mean) / self.pixel_std
        x = self.blocks(x)
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        return F.normalize(self.proj(pooled), dim=-1)


class TextEncoder(nn.Module):
    """Mean of hashed subword embeddings (padding excluded), then a small MLP."""

    def __init__(self, config: RelevanceConfig):
        super().__init__()
        self.embed = nn.EmbeddingBag(config.num_buckets, config.text_dim, mode="mean", padding_idx=0)
        self.mlp = nn.Sequential(nn.Linear(config.text_dim, config.text_dim), nn.ReLU(),
                                 nn.Linear(config.text_dim, config.embed_dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(self.embed(tokens)), dim=-1)


class RelevanceModel(nn.Module):
    """Dual encoder cosine + text/image features -> logit; ``forward`` gives the probability."""

    def __init__(self, config: RelevanceConfig):
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoder(config)
        self.text_encoder = TextEncoder(config)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))  # contrastive temperature
        # The head starts as a plain scaled cosine; the features learn to correct it.
        self.cos_weight = nn.Parameter(torch.tensor(10.0))
        self.bias = nn.Parameter(torch.tensor(-3.0))
        self.head = nn.Sequential(nn.Linear(1 + config.num_features, config.head_hidden), nn.ReLU(),
                                  nn.Linear(config.head_hidden, 1))
        nn.init.zeros_(self.head[2].weight)
        nn.init.zeros_(self.head[2].bias)
        self.register_buffer("feature_mean", torch.zeros(config.num_features))
        self.register_buffer("feature_std", torch.ones(config.num_features))

    def set_standardisation(self, features: torch.Tensor) -> None:
        """Standardise features as the training ``features`` (N x F) spread: centred on their mean, divided by
        their standard deviation, except where that is below ``MIN_FEATURE_STD`` (centred only)."""
        self.feature_mean.copy_(features.mean(0))
        std = features.std(0) if len(features) > 1 else torch.ones_like(self.feature_std)
        self.feature_std.copy_(torch.where(std < MIN_FEATURE_STD, torch.ones_like(std), std))

    def head_logit(self, cos: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Relevance logit of pairs from their cosine and (unnormalised) features; the same in training and
        scoring: standardised features beyond +-``feature_clip`` are clipped (0: not clipped, older models)."""
        x = (features - self.feature_mean) / self.feature_std
        if self.config.feature_clip:
            x = x.clamp(-self.config.feature_clip, self.config.feature_clip)
        extra = self.head(torch.cat([cos.unsqueeze(-1), x], dim=-1)).squeeze(-1)
        return self.cos_weight * cos + self.bias + extra

    def forward(self, image: torch.Tensor, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        cos = (self.image_encoder(image) * self.text_encoder(tokens)).sum(-1)
        return torch.sigmoid(self.head_logit(cos, features))


class RelevanceEnsemble(nn.Module):
    """Relevance models of one architecture, trained from different seeds; ``forward`` averages their probabilities.

    A single small model trained on noisy pairs misjudges a different handful of pairs on every seed;
    the average keeps what they agree on, which widens the gap between true pairs and mismatches.
    Scoring (no autograd) runs the members in threads side by side: torch releases the GIL inside its
    ops, so on a scorer held to one intra-op thread the members use the cores the decoders leave idle.
    Each member's arithmetic is the same either way.
    """

    def __init__(self, members: list[RelevanceModel]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.config = members[0].config

    def forward(self, image: torch.Tensor, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or len(self.members) == 1:
            outputs = [member(image, tokens, features) for member in self.members]
        else:
            outputs = list(_member_threads(len(self.members)).map(
                lambda member: _without_grad(member, image, tokens, features), self.members))
        return torch.stack(outputs).mean(0)


def _without_grad(member: RelevanceModel, *inputs: torch.Tensor) -> torch.Tensor:
    """A member's forward in a pool thread: grad mode is per thread, so the caller's no_grad is restated."""
    with torch.no_grad():
        return member(*inputs)


@functools.lru_cache(maxsize=None)
def _member_threads(count: int):
    """One thread pool per ensemble size, shared by every ensemble of that size in the process."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=count, thread_name_prefix="relevance-member")


def save_model(model: RelevanceModel | RelevanceEnsemble, out_dir: str, extra: dict) -> None:
    """Write ``model.safetensors`` and ``config.json`` (architecture plus ``extra``: threshold, vocabulary...).

    The config is strict JSON: a NaN or infinite number in ``extra`` is a ValueError, raised before
    anything is written (store None, JSON null, for a value that is missing). The model is replaced whole or
    not at all: both files are written into a temporary folder beside ``out_dir``, which then takes its place
    (any other files of ``out_dir`` move along), so a failed write (a full disk) is a one-line OSError that
    leaves the earlier model, weights and config together, and no new folder; so does a Ctrl-C (``_swap_in``). An
    ``out_dir`` that is a link to a folder keeps the link: the folder it points to is the one replaced.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from schemas import write_json_atomically
    from schemas.io import new_file_mode

    config = {"kind": MODEL_KIND, "model": dataclasses.asdict(model.config), **extra}
    if isinstance(model, RelevanceEnsemble):
        config["members"] = len(model.members)
    try:
        json.dumps(config, allow_nan=False)  # strict JSON (the shared writer takes NaN, and any object as its str)
    except ValueError as exc:
        raise ValueError(f"{os.path.join(out_dir, CONFIG_FILE)}: not saved, a value is not valid JSON ({exc})") from None
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    restore_interrupted_save(out_dir)  # so that the earlier model is replaced as usual, not left hidden for good
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"{out_dir}: exists and is not a folder (the model is a folder: {CONFIG_FILE} + {WEIGHTS_FILE})")
    # Resolved: through a link to a folder (models/current -> v3), the model replaces the folder linked to and the
    # link stays; swapped in by the link's own name, the link became a folder and its target kept the old model.
    parent, name = os.path.split(os.path.realpath(out_dir))
    made = missing_folders(parent)  # removed again if the save fails: no empty folders left
    try:
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{name}.saving-", dir=parent)
    except OSError as exc:
        remove_empty_folders(made)
        raise OSError(f"{out_dir}: the model is not saved, cannot make a folder beside it ({exc})") from None
    try:
        file_mode = new_file_mode()
        os.chmod(staging, file_mode | (file_mode & 0o444) >> 2)  # a folder's x where its r (mkdtemp makes 0o700)
        weights = os.path.join(staging, WEIGHTS_FILE)
        save_file(state, weights)
        os.chmod(weights, file_mode)
        write_json_atomically(os.path.join(staging, CONFIG_FILE), config)
        _swap_in(staging, os.path.join(parent, name))
    except (OSError, SafetensorError) as exc:
        _discard(staging)
        remove_empty_folders(made)
        why = " ".join(str(exc).split())
        raise OSError(f"{out_dir}: the model is not saved, the earlier one (if any) is left as it was ({why})") from None
    except BaseException:
        _discard(staging)
        remove_empty_folders(made)
        raise


def _discard(staging: str) -> None:
    """Remove a failed save's temporary folder, unless its swap could not be undone (the earlier model still aside,
    ``.previous``): then it holds the folder's other files, and ``restore_interrupted_save`` needs it."""
    if not os.path.isdir(staging + PREVIOUS_SUFFIX):
        shutil.rmtree(staging, ignore_errors=True)


def missing_folders(path: str) -> list[str]:
    """The folders ``os.makedirs(path)`` would make, deepest first."""
    missing = []
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def remove_empty_folders(folders: list[str]) -> None:
    """Remove ``folders`` (deepest first) that are still empty."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            return


def _swap_in(staging: str, out_dir: str) -> None:
    """Put the folder ``staging`` (the new model) in the place of ``out_dir``, taking along ``out_dir``'s other
    files: renames on one filesystem, undone on an error or an interrupt (Ctrl-C), so that ``out_dir`` holds one
    whole model throughout.

    Between the rename that moves the earlier model aside (to ``staging`` + ``PREVIOUS_SUFFIX``) and the one that
    puts the new one in, ``out_dir`` is missing: an error or a KeyboardInterrupt there puts the earlier model back
    (``_undo_swap``); a process killed there leaves it aside, and the next load or save of ``out_dir`` puts it back
    (``restore_interrupted_save``). Undone only on OSError, a Ctrl-C there left the folder missing for good, the
    model hidden beside it."""
    if not os.path.isdir(out_dir):
        os.rename(staging, out_dir)
        return
    previous = staging + PREVIOUS_SUFFIX
    try:
        for entry in os.listdir(out_dir):
            if entry not in (CONFIG_FILE, WEIGHTS_FILE):
                os.rename(os.path.join(out_dir, entry), os.path.join(staging, entry))
        os.rename(out_dir, previous)
        os.rename(staging, out_dir)
    except BaseException:
        _undo_swap(staging, out_dir, previous)
        raise
    shutil.rmtree(previous, ignore_errors=True)


def _undo_swap(staging: str, out_dir: str, previous: str) -> None:
    """Undo an unfinished ``_swap_in`` by what is on disk, not by what it recorded: an interrupt can come between a
    rename and the next line. A failure here is left to the error being raised (and to ``restore_interrupted_save``)."""
    if not os.path.lexists(out_dir) and os.path.isdir(previous):
        with contextlib.suppress(OSError):
            os.rename(previous, out_dir)  # the earlier model back
    if os.path.isdir(staging):  # the new model is not in: the other files it took along go back
        for entry in os.listdir(staging):
            if entry not in (CONFIG_FILE, WEIGHTS_FILE):
                with contextlib.suppress(OSError):
                    os.rename(os.path.join(staging, entry), os.path.join(out_dir, entry))
    elif os.path.isdir(out_dir):  # the new model is in, with the other files: the earlier one is not needed
        shutil.rmtree(previous, ignore_errors=True)


def _interrupted_saves(model_dir: str) -> tuple[str, list[str]]:
    """(the folder ``model_dir`` resolves in, the names of the earlier models that saves killed mid-swap left beside
    it): each ``.NAME.saving-*.previous`` holding a whole model (config.json and weights) whose staging folder (the
    name without the suffix: the new model and the folder's other files) is still there. A ``.previous`` without
    it is a swap that finished, its removal cut short: a stale copy, never put back."""
    parent, name = os.path.split(os.path.realpath(model_dir))
    prefix = f".{name}.saving-"
    try:
        entries = set(os.listdir(parent))
    except OSError:  # no parent folder, or one that cannot be read: nothing to put back
        return parent, []
    return parent, sorted(
        entry for entry in entries if entry.startswith(prefix) and entry.endswith(PREVIOUS_SUFFIX)
        and entry[: -len(PREVIOUS_SUFFIX)] in entries
        and all(os.path.isfile(os.path.join(parent, entry, f)) for f in (CONFIG_FILE, WEIGHTS_FILE)))


def restore_interrupted_save(model_dir: str) -> str | None:
    """Put back the earlier model that a save killed while swapping (``_swap_in``) left beside a missing
    ``model_dir``, and the folder's other files the save had taken along, with a warning; the folder it was in,
    or None when there was nothing to put back.

    Only a whole model whose swap was cut between its two renames (``_interrupted_saves``), and only when one alone
    is left. Called by the writers (``save_model``, ``lait relevance train``'s folder check), not by a load: a
    reader that put the model back while a save was between its renames made that save fail, and a stale copy
    of a swap that had finished brought back a model the user had removed since."""
    if os.path.exists(model_dir):  # through a link, as save_model: a link to a missing folder is missing
        return None
    parent, left = _interrupted_saves(model_dir)
    name = os.path.basename(os.path.realpath(model_dir))
    if len(left) != 1:
        if left:
            log.warning("%s: missing, and several earlier models left by interrupted saves lie beside it (%s); "
                        "rename the one to keep to %s", model_dir, ", ".join(left), name)
        return None
    source = os.path.join(parent, left[0])
    staging = source[: -len(PREVIOUS_SUFFIX)]
    target = os.path.join(parent, name)
    try:
        os.rename(source, target)
    except OSError:  # another process put it back first, or the folder is read-only
        return None
    for entry in os.listdir(staging):  # the folder's other files, which the save had moved along with the new model
        if entry not in (CONFIG_FILE, WEIGHTS_FILE):
            with contextlib.suppress(OSError):
                os.rename(os.path.join(staging, entry), os.path.join(target, entry))
    shutil.rmtree(staging, ignore_errors=True)  # the new model, never put in place
    log.warning("%s: put back the relevance model that an interrupted save had moved to %s", model_dir, source)
    return source


def read_config(model_dir: str) -> dict:
    """The JSON config of a saved relevance model; a clear error when the folder is not one.

    FileNotFoundError without a config.json (naming the earlier model that a save killed mid-swap left beside a
    missing folder: ``restore_interrupted_save`` puts it back at the next save, not here); ValueError (one line,
    naming the file) when it is not a LAIT relevance model's config: not JSON, another kind, no architecture or threshold, or a field of the
    wrong type or out of range (``model.*``, ``vocabulary``, ``text_features``, ``image_features``, ``members``,
    ``tokenizer``). Whether this version knows the tokenizer is ``filters.relevance.scorer``'s check.
    """
    path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        left = [] if os.path.exists(model_dir) else _interrupted_saves(model_dir)[1]
        hidden = (f"; a save killed while replacing it left the earlier model at "
                  f"{os.path.join(os.path.dirname(model_dir), left[0])}: rename it back to {model_dir}, or save "
                  f"(train) into {model_dir} again, which puts it back first") if len(left) == 1 else ""
        raise FileNotFoundError(f"{model_dir}: not a LAIT relevance model (no {CONFIG_FILE}){hidden}")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (ValueError, OSError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path}: not a readable JSON config ({exc})") from None
    if not isinstance(config, dict) or config.get("kind") != MODEL_KIND:
        kind = config.get("kind") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{path}: kind {kind!r}, expected {MODEL_KIND!r}")
    if not isinstance(config.get("model"), dict):
        raise ValueError(f"{path}: no model architecture ('model')")
    threshold = config.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not _is_finite(threshold):
        raise ValueError(f"{path}: no numeric 'threshold' (got {_shown(threshold)})")
    _check_fields(config, path)
    return config


def _shown(value) -> str:
    """A config value for an error line: an integer of 400 digits shown whole was a wall of zeros."""
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:60] + "..."


def _is_finite(number: int | float) -> bool:
    """Whether a JSON number is a finite float: an integer beyond a float's range (10**400) is not."""
    try:
        return math.isfinite(number)
    except OverflowError:
        return False


#: The smallest value of each whole-number architecture field (a bucket id is 1 + hash % (num_buckets - 1)).
_ARCH_MINIMUM = {"num_buckets": 2, "feature_clip": 0}
#: The widest layer (``embed_dim``, ``text_dim``, ``head_hidden``, each of ``channels``), and the most
#: ``max_tokens`` and ``num_features``: over 40 times the defaults, and the largest ``embed_dim`` that
#: ``TrainConfig`` trains (``MAX_EMBED_DIM``).
MAX_WIDTH = MAX_EMBED_DIM
#: The most text buckets: 512 times the default 2**15 (a table of 6 GB at the default text_dim).
MAX_BUCKETS = 1 << 24
#: The most conv blocks in ``channels``: each halves the image side, so 10 bring the largest image to one pixel.
MAX_BLOCKS = 64
#: The largest value of each whole-number architecture field. A size is built before any weight is read (or, for
#: ``image_size`` and ``max_tokens``, allocated for every pair scored): a head_hidden of 10**14 was a RuntimeError
#: traceback, a max_tokens of 10**12 a MemoryError one, an image_size of 100,000 an out-of-memory kill. The
#: image_size limit is training's (``MAX_IMAGE_SIZE``), so every model trained here loads. A clip is a float bound
#: (10**400 was an OverflowError at the first score), and no standardised feature comes near a million standard
#: deviations, so larger ones clip nothing more.
_ARCH_MAXIMUM = {"image_size": MAX_IMAGE_SIZE, "embed_dim": MAX_WIDTH, "num_buckets": MAX_BUCKETS,
                 "max_tokens": MAX_WIDTH, "text_dim": MAX_WIDTH, "num_features": MAX_WIDTH, "head_hidden": MAX_WIDTH,
                 "feature_clip": 10**6}
#: The most ensemble members a config may count: each is built before its weights are read, so 10**9 of them
#: ran out of memory instead of failing as a config error. The trainer trains them one seed at a time; far
#: fewer than this are ever worth it.
MAX_MEMBERS = 1024


def _is_whole(value, minimum: int, maximum: int | None = None) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and value >= minimum
            and (maximum is None or value <= maximum))


def _whole_range(minimum: int, maximum: int | None, value=None) -> str:
    """How ``_check_fields`` words the range of a whole-number field: a whole ``value`` below the minimum is
    told the minimum alone."""
    below = isinstance(value, int) and not isinstance(value, bool) and value < minimum
    return f"{minimum} or more" + (f" and at most {maximum}" if maximum is not None and not below else "")


def _check_fields(config: dict, path: str) -> None:
    """ValueError naming ``path`` for a field of the wrong type or out of range, so that an edited or damaged
    config is refused at load, not met later as a TypeError (or a division by zero) inside the scorer."""
    arch = config["model"]
    for field in dataclasses.fields(RelevanceConfig):
        if field.name not in arch:
            continue  # an older config: this version's default applies
        value = arch[field.name]
        if field.name == "channels":
            if not (isinstance(value, list) and 0 < len(value) <= MAX_BLOCKS
                    and all(_is_whole(c, 1, MAX_WIDTH) for c in value)):
                raise ValueError(f"{path}: model.channels must be a non-empty list of at most {MAX_BLOCKS} whole "
                                 f"numbers of 1 or more and at most {MAX_WIDTH}, got {_shown(value)}")
        else:
            minimum, maximum = _ARCH_MINIMUM.get(field.name, 1), _ARCH_MAXIMUM.get(field.name)
            if not _is_whole(value, minimum, maximum):
                raise ValueError(f"{path}: model.{field.name} must be a whole number of "
                                 f"{_whole_range(minimum, maximum, value)}, got {_shown(value)}")
    for key in ("vocabulary", "text_features", "image_features"):
        if key in config and not (isinstance(config[key], list) and all(isinstance(w, str) for w in config[key])):
            raise ValueError(f"{path}: '{key}' must be a list of strings, got {config[key]!r:.80}")
    if "tokenizer" in config and not isinstance(config["tokenizer"], str):
        raise ValueError(f"{path}: 'tokenizer' must be a string (a text tokenizer version), "
                         f"got {config['tokenizer']!r:.80}")
    if "members" in config and not _is_whole(config["members"], 1, MAX_MEMBERS):
        raise ValueError(f"{path}: 'members' must be a whole number of {_whole_range(1, MAX_MEMBERS)}, "
                         f"got {_shown(config['members'])}")


def load_model(model_dir: str, device: str | torch.device = "cpu") -> tuple[RelevanceModel | RelevanceEnsemble, dict]:
    """Build the model (an ensemble when ``config.json`` counts ``members``) and load its safetensors weights (no pickle).

    A missing weights file is a FileNotFoundError; weights that are not safetensors, truncated, or of
    another architecture are a ValueError naming the file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = read_config(model_dir)
    path = os.path.join(model_dir, WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{model_dir}: no weights ({WEIGHTS_FILE})")
    try:
        arch = RelevanceConfig.from_dict(config["model"])
        members = int(config.get("members", 0))
        model = RelevanceEnsemble([RelevanceModel(arch) for _ in range(members)]) if members else RelevanceModel(arch)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{os.path.join(model_dir, CONFIG_FILE)}: bad model architecture "
                         f"({' '.join(str(exc).split())[:300]})") from None
    except (RuntimeError, MemoryError) as exc:  # within the limits, memory can still run out
        raise ValueError(f"{os.path.join(model_dir, CONFIG_FILE)}: the model cannot be built "
                         f"({' '.join(str(exc).split())[:300]})") from None
    try:
        model.load_state_dict(load_file(path, device="cpu"))
    except (SafetensorError, OSError, RuntimeError) as exc:  # RuntimeError: tensors of another architecture
        message = " ".join(str(exc).split())
        raise ValueError(f"{path}: unreadable or mismatched weights ({message[:300]})") from None
    model.eval().requires_grad_(False)
    return model.to(device), config
