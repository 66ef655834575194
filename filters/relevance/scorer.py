"""Load a relevance scorer from a spec and score pairs outside Beam (same numbers as the Beam path).

A spec is either the folder of a LAIT relevance model (``config.json`` + ``model.safetensors``) or
``clip:ARCH:WEIGHTS`` for an open_clip model whose weights lie in a local file. Both scorers expose
the same small interface, used by ``score()`` here and by ``pipeline.relevance.ScoreRelevance``:
``prepare(pair) -> (example tensors, ok)``, ``model`` (an ``nn.Module`` taking the stacked examples
as keyword tensors) and ``threshold`` (the default cut).
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import torch

from filters import imageio
from filters.relevance import features as F

log = logging.getLogger(__name__)

CLIP_PREFIX = "clip:"
#: LAION's convention for English CLIP ViT-B/32 cosine similarity.
CLIP_DEFAULT_THRESHOLD = 0.28


def resolve_device(device: str | None) -> str:
    """``"cuda"`` when asked for (or when ``None`` and a GPU is present), else ``"cpu"``."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = device.lower()
    if device in ("gpu", "cuda") and torch.cuda.is_available():
        return "cuda"
    if device in ("gpu", "cuda"):
        log.warning("device %r asked for but no GPU is available; scoring on the CPU", device)
    return "cpu"


class Scorer:
    """Common batching logic; subclasses define ``prepare``, ``model`` and ``min_score``."""

    kind = "abstract"
    threshold: float
    #: The score given to a pair that cannot be scored (undecodable image): below any threshold.
    min_score: float = 0.0
    model: torch.nn.Module
    device: str = "cpu"

    def prepare(self, pair: dict) -> tuple[dict[str, torch.Tensor], bool]:
        """Model inputs of one pair, and whether it could be prepared (else zero tensors)."""
        raise NotImplementedError

    def score(self, pairs: Sequence[dict], batch_size: int = 256, workers: int = 2,
              torch_threads: int | None = 1) -> np.ndarray:
        """Relevance of each pair, in order, as float32 (``min_score`` for unscorable pairs, which
        ``score_and_flags`` tells apart from a pair that scores the minimum).

        ``workers`` threads decode the next batch while the model scores the current one (decoding
        releases the GIL); ``torch_threads`` caps the model's own threads meanwhile (``None``: leave
        torch's setting), because on a small machine the decoders already use the other cores.
        """
        return self.score_and_flags(pairs, batch_size, workers, torch_threads)[0]

    def score_and_flags(self, pairs: Sequence[dict], batch_size: int = 256, workers: int = 2,
                        torch_threads: int | None = 1) -> tuple[np.ndarray, np.ndarray]:
        """``score``, and per pair whether it could be scored (False: its image could not be decoded)."""
        scores = np.empty(len(pairs), dtype=np.float32)
        scorable = np.ones(len(pairs), dtype=bool)
        chunks = [range(start, min(start + batch_size, len(pairs))) for start in range(0, len(pairs), batch_size)]
        previous_threads = torch.get_num_threads()
        if torch_threads:
            torch.set_num_threads(torch_threads)
        try:
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                def submit(chunk):
                    return [pool.submit(self.prepare, pairs[i]) for i in chunk]

                pending = submit(chunks[0]) if chunks else []
                for k, chunk in enumerate(chunks):
                    prepared = [f.result() for f in pending]
                    pending = submit(chunks[k + 1]) if k + 1 < len(chunks) else []
                    scores[chunk.start:chunk.stop] = self.score_prepared(prepared)
                    scorable[chunk.start:chunk.stop] = [ok for _, ok in prepared]
        finally:
            torch.set_num_threads(previous_threads)
        return scores, scorable

    def score_prepared(self, prepared: Sequence[tuple[dict[str, torch.Tensor], bool]]) -> np.ndarray:
        """Scores of already prepared examples (one forward pass)."""
        if not prepared:
            return np.empty(0, dtype=np.float32)
        keys = prepared[0][0].keys()
        batch = {k: torch.stack([ex[k] for ex, _ in prepared]).to(self.device) for k in keys}
        with torch.no_grad():
            out = self.model(**batch).float().cpu().numpy()
        ok = np.array([flag for _, flag in prepared])
        return np.where(ok, out, np.float32(self.min_score)).astype(np.float32)


def check_feature_version(config: dict, model_dir: str) -> None:
    """ValueError (naming the config file) when a saved model expects other hand-made features than
    this version computes: another count (``model.num_features``) or other names, in order, or a text
    tokenizer this version does not know."""
    from model.relevance import CONFIG_FILE

    path = os.path.join(model_dir, CONFIG_FILE)
    try:
        F.check_tokenizer(config.get("tokenizer", F.LEGACY_TOKENIZER))
    except ValueError as exc:
        raise ValueError(f"{path}: a model of another text version ({exc}); use the LAIT version that trained "
                         "it, or retrain it with this one") from None
    expected = len(F.TEXT_FEATURES) + len(F.IMAGE_FEATURES)
    got = config["model"].get("num_features", expected)
    if got != expected:
        raise ValueError(f"{path}: a model of another feature version ({got!r} features, this version computes "
                         f"{expected}); retrain it with this version")
    for key, names in (("text_features", F.TEXT_FEATURES), ("image_features", F.IMAGE_FEATURES)):
        if key in config and list(config[key] or []) != list(names):
            raise ValueError(f"{path}: a model of another feature version ({key} {config[key]!r}, this version "
                             f"computes {list(names)}); retrain it with this version")


class RelevanceScorer(Scorer):
    """The LAIT relevance model (``model.relevance``) with its feature preparation."""

    kind = "lait"
    min_score = 0.0

    def __init__(self, model_dir: str, device: str | None = None, with_model: bool = True):
        from model.relevance import load_model, read_config, RelevanceConfig

        self.model_dir = model_dir
        self.device = resolve_device(device)
        # features of another version would reach the head as a tensor of the wrong size, deep in Beam
        check_feature_version(read_config(model_dir), model_dir)
        if with_model:
            self.model, self.config = load_model(model_dir, self.device)
            arch = self.model.config
        else:  # Beam's preparation step needs only the config, not the weights
            self.config = read_config(model_dir)
            arch = RelevanceConfig.from_dict(self.config["model"])
        self.arch = arch
        self.threshold = float(self.config["threshold"])
        self.vocabulary = frozenset(self.config.get("vocabulary", []))
        # a config without the setting was saved before it existed, by a model trained on ASCII words
        self.tokenizer = self.config.get("tokenizer", F.LEGACY_TOKENIZER)

    def prepare(self, pair: dict) -> tuple[dict[str, torch.Tensor], bool]:
        """Decoded, downscaled pixels, hashed caption tokens, and the text+image features."""
        caption = pair.get("caption")
        tokens, text = F.caption_inputs(caption, self.vocabulary, self.arch.num_buckets, self.arch.max_tokens,
                                        self.tokenizer)
        size = self.arch.image_size
        try:
            pixels, width, height = F.decode_image(pair.get("image_bytes"), size)
            ok = True
        except F.ImageDecodeError as exc:
            log.debug("pair %s: %s", pair.get("pair_id"), exc)
            pixels, width, height, ok = np.zeros((size, size, 3), np.uint8), 1, 1, False
        image = F.image_features(pixels, pair.get("width") or width, pair.get("height") or height)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))),
            "tokens": torch.from_numpy(tokens),
            "features": torch.from_numpy(np.concatenate([text, image])),
        }, ok


class ClipPairModel(torch.nn.Module):
    """Cosine similarity of an open_clip model's image and text embeddings, pair by pair."""

    def __init__(self, clip_model: torch.nn.Module):
        super().__init__()
        self.clip = clip_model

    def forward(self, image: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        img = self.clip.encode_image(image, normalize=True)
        txt = self.clip.encode_text(tokens, normalize=True)
        return (img * txt).sum(-1)


def parse_clip_spec(spec: str) -> tuple[str, str]:
    """``clip:ARCH:WEIGHTS`` -> (ARCH, WEIGHTS); the weights path may itself hold colons."""
    rest = spec[len(CLIP_PREFIX):]
    arch, sep, weights = rest.partition(":")
    if not sep or not arch or not weights:
        raise ValueError(f"bad CLIP spec {spec!r}: expected clip:ARCH:/path/to/weights")
    return arch, weights


class ClipScorer(Scorer):
    """An open_clip model loaded from a local weights file only (never downloads)."""

    kind = "clip"
    min_score = -1.0

    def __init__(self, spec: str, device: str | None = None, threshold: float = CLIP_DEFAULT_THRESHOLD):
        arch, weights = parse_clip_spec(spec)
        try:
            import open_clip
        except ImportError as exc:  # the optional `clip` extra: a one-line error in every command, not a traceback
            raise ValueError(f"{spec}: a clip: model needs open_clip: pip install -e '.[clip]' ({exc})") from None
        if not os.path.isfile(weights):
            # open_clip would treat an unknown name as a pretrained tag and try to download it
            raise FileNotFoundError(f"CLIP weights not found: {weights} (LAIT only loads local files)")
        if arch.endswith(".json"):  # a model config file, for architectures open_clip does not ship
            open_clip.add_model_config(arch)
            arch = os.path.splitext(os.path.basename(arch))[0]
        if arch not in open_clip.list_models():
            raise ValueError(f"unknown open_clip architecture {arch!r}")
        self.device = resolve_device(device)
        try:
            clip_model, _, self.preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=weights, device=self.device)
        except Exception as exc:  # noqa: BLE001 - safetensors, pickle, torch: a damaged file, one clear error
            message = " ".join(str(exc).split())[:300]
            raise ValueError(f"{weights}: unreadable or mismatched CLIP weights for {arch} "
                             f"({type(exc).__name__}: {message})") from None
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.model = ClipPairModel(clip_model).eval().requires_grad_(False)
        self.threshold = threshold
        self.spec = spec

    def prepare(self, pair: dict) -> tuple[dict[str, torch.Tensor], bool]:
        """The image as every stage decodes it (``filters.imageio``: upright by its EXIF orientation, alpha on
        white, 16/32-bit grayscale scaled), then open_clip's own image transform; and BPE tokens."""
        tokens = self.tokenizer([pair.get("caption") or ""])[0]
        try:
            # the hard limit, as the LAIT scorer decodes: the filter rules drop bigger images before this
            rgb = imageio.load_image(pair.get("image_bytes"), max_pixels=imageio.HARD_MAX_PIXELS, orient=True)
            image = self.preprocess(rgb)
            ok = True
        except imageio.ImageError as exc:  # an undecodable image makes the pair unscorable, not a crash
            log.debug("pair %s: cannot decode image: %s", pair.get("pair_id"), exc)
            size = getattr(self.model.clip.visual, "image_size", (224, 224))
            size = size if isinstance(size, (tuple, list)) else (size, size)
            image, ok = torch.zeros(3, *size), False
        return {"image": image, "tokens": tokens}, ok


def is_clip_spec(spec: str) -> bool:
    """Whether ``spec`` names a CLIP model (``clip:ARCH:WEIGHTS``) rather than a LAIT model folder. An existing
    folder is a model folder even when its name begins with ``clip:``: such a folder could not be loaded else."""
    return spec.startswith(CLIP_PREFIX) and not os.path.isdir(spec)


def load(spec: str, device: str | None = None, with_model: bool = True) -> Scorer:
    """A scorer for a LAIT relevance model folder or a ``clip:ARCH:WEIGHTS`` spec."""
    if is_clip_spec(spec):
        return ClipScorer(spec, device=device)
    return RelevanceScorer(spec, device=device, with_model=with_model)


def default_threshold(spec: str) -> float:
    """The threshold a spec keeps by default: the model's own, or 0.28 for CLIP."""
    if is_clip_spec(spec):
        return CLIP_DEFAULT_THRESHOLD
    from model.relevance import read_config

    return float(read_config(spec)["threshold"])
