"""Retrieval evaluation: image retrieval and sentence retrieval Recall@1/5/10 with the cross-encoder.

Every (caption, image) pair of the test split is scored by ImageBERT's matching head, in large
batches that gather pre-collated text and regions on the device; images are sorted by region
count so a batch pads little. The optional two-stage mode pre-ranks with single-modality [CLS]
embeddings (a dual encoder from the same trunk) and re-ranks only the top k of each query with
the cross-encoder, the rest ranked below them in the pre-ranker's order: with k at least the set size it
equals the full mode. Under torchrun every process
scores a contiguous share of the pairs and gathers the others' scores (``_score``); in the two-stage
mode it also embeds a share of the captions and images (``unimodal_embeddings``).

Recall counts ties against the query: a constant scorer gets 0, never chance-level recall by luck of the order;
the two-stage mode's cut does too (an answer tied with others at the k-th place is not re-ranked: ``prerank_top``).
Identical inputs (captions of the same word pieces, images of the same regions) take one score
(``first_twin_pairs``), so they tie exactly: scored in batches of other shapes they came out a few ULPs
apart, and the ties went the query's way or not by ``--batch-size``.
Scores are fractions in [0, 1]; ``chance_R@1`` is what random ranking gets.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

import schemas
from model.config import check_count
from model.data import (REGION_COLUMNS, blank_caption, captions_by_image, check_region_ids, collate_regions,
                        collate_text, decode_regions, feature_dims, first_caption_rows, read_captions,
                        read_region_rows, resolve_dataset_dir)
from model.distributed import collective_device
from model.fp8 import calibrate, float8_encoder, fp8_supported
from model.imagebert import ImageBert

logger = logging.getLogger(__name__)

KS = (1, 5, 10)


def recall_at_k(ir_scores: torch.Tensor, caption_images: torch.Tensor, sr_scores: torch.Tensor | None = None,
                ks: tuple[int, ...] = KS, ir_first: torch.Tensor | None = None,
                sr_first: torch.Tensor | None = None) -> dict:
    """Image retrieval (caption -> its image) and sentence retrieval (image -> any of its captions) R@K.

    ``ir_scores``/``sr_scores`` are [captions, images] (the same matrix unless two-stage ranking
    filled them differently); ``caption_images[c]`` is the index of caption c's image. Ties and NaN scores
    count against the query (a NaN true score is a miss), so a diverged model never looks perfect.

    ``ir_first``/``sr_first`` (the two-stage mode): boolean [captions, images], the pairs each query (a caption
    for image retrieval, an image for sentence retrieval) re-ranked. They rank above every other pair of that
    query whatever the scores; within each group the scores order the pairs (the re-ranker's among the first,
    the pre-ranker's among the rest), ties and NaN counted against the query as above.
    """
    sr_scores = ir_scores if sr_scores is None else sr_scores
    ir_scores, sr_scores = ir_scores.float().cpu(), sr_scores.float().cpu()
    n_captions, n_images = ir_scores.shape
    rows = torch.arange(n_captions)
    true = ir_scores[rows, caption_images].unsqueeze(1)
    # NaN compares false with everything, so a diverged model's NaN scores ranked every answer first. A NaN
    # counts against the query like a tie: a NaN true score is a miss, a NaN other score ranks above.
    above = (ir_scores > true) | (ir_scores == true) | ir_scores.isnan()
    if ir_first is not None:  # a pair of the other group: above when it is a first pair and the answer is not
        first = ir_first.cpu()
        true_first = first[rows, caption_images].unsqueeze(1)
        above = (first & ~true_first) | ((first == true_first) & above)
    rank = above.sum(1) - 1
    rank = rank.masked_fill(true.squeeze(1).isnan(), n_images + max(ks))
    image_retrieval = {f"R@{k}": float((rank < k).float().mean()) for k in ks}
    image_retrieval["chance_R@1"] = 1.0 / n_images

    gold = torch.zeros(n_captions, n_images, dtype=torch.bool)
    gold[rows, caption_images] = True
    has_caption = gold.any(0)
    usable_gold = gold & ~sr_scores.isnan()
    best_of = usable_gold
    if sr_first is not None:  # the best gold caption is a first one when the image has any (not NaN)
        first = sr_first.cpu()
        best_first = (usable_gold & first).any(0)
        best_of = torch.where(best_first.unsqueeze(0), usable_gold & first, usable_gold)
    best_gold = sr_scores.masked_fill(~best_of, float("-inf")).max(0).values
    others = sr_scores.masked_fill(gold, float("-inf"))
    # An other caption scoring equal to the best gold one (or NaN) counts as ranked above it.
    above = (others >= best_gold.unsqueeze(0)) | others.isnan()
    if sr_first is not None:
        best_first = best_first.unsqueeze(0)
        above = ~gold & ((first & ~best_first) | ((first == best_first) & above))
    rank_image = above.sum(0)
    rank_image = rank_image.masked_fill(~usable_gold.any(0), n_captions + max(ks))  # every gold score NaN: a miss
    rank_image = rank_image[has_caption]
    sentence_retrieval = {f"R@{k}": float((rank_image < k).float().mean()) for k in ks}
    sentence_retrieval["chance_R@1"] = float((gold.sum(0)[has_caption].float() / n_captions).mean())
    # ``rivals``: the most items that can rank above a query's answer (a caption's image has the other images; an
    # image's best caption the captions not its own); ``saturated_k``: the K above that, at which no query can miss
    # whatever the scores (a NaN aside): R@K there is 100% by construction (``saturation_notes``).
    rivals = {"image_retrieval": n_images - 1,
              "sentence_retrieval": int((n_captions - gold.sum(0)[has_caption]).max()) if bool(has_caption.any())
              else n_captions}
    return {"image_retrieval": image_retrieval, "sentence_retrieval": sentence_retrieval,
            "num_images": n_images, "num_captions": n_captions, "rivals": rivals,
            "saturated_k": {direction: [k for k in ks if k > most] for direction, most in rivals.items()}}


@dataclass(frozen=True)
class EvalCaptions:
    """The captions of a split to evaluate, read and checked once (``read_eval_captions``) before the model loads
    (``lait eval``) or training starts (``lait train``'s eval), and handed on to ``evaluate``, which reads them no
    more. ``table``: the split's rows with a caption that is not blank (``caption_id``, ``image_id``, ``caption``),
    in the dataset's order: a few columns of Arrow buffers, not Python strings (a training run holds them
    while it trains). ``blank``: how many of the split's rows were left out for a blank caption (empty, white
    space or invisible characters only, or null: ``model.data.blank_caption``), reported by ``evaluate`` as
    ``blank_captions_skipped``; ``repeated``: how many repeated the caption_id of an earlier row (each caption is
    evaluated once, with its first row), reported as ``repeated_caption_rows``."""

    path: str
    split: str | None
    table: pa.Table
    blank: int = 0
    repeated: int = 0

    def by_image(self) -> dict[str, list[tuple[str, str]]]:
        """image_id -> [(caption_id, caption)], as ``model.data.load_captions`` gives them."""
        return captions_by_image(self.table)

    @property
    def count(self) -> int:
        """How many captions (not blank) the split holds."""
        return self.table.num_rows


def read_eval_captions(path: str, split: str | None, where: str = "") -> EvalCaptions:
    """A split's captions to evaluate (``EvalCaptions``), read once; a ``ValueError`` (its message starting with
    ``where``) when the split has none (and, from ``model.data.read_captions``, a ``SchemaMismatchError`` for a
    dataset of another schema or a null id)."""
    table, repeated = first_caption_rows(read_captions(path, split))
    texts = table.column("caption").to_pylist()
    # The rule of load_captions (``blank_caption``: Arrow's idea of white space is not Python's, and invisible
    # characters are blank too).
    kept = table.select(["caption_id", "image_id", "caption"]).filter(
        pa.array([not blank_caption(text) for text in texts], pa.bool_()))
    blank = table.num_rows - kept.num_rows
    if not kept.num_rows:
        raise ValueError(f"{where}{path}: no captions in split {split!r}" + (f" ({blank} blank)" if blank else ""))
    return EvalCaptions(path, split, kept, blank, repeated)


def _eval_captions(captions: str | EvalCaptions, split: str | None) -> EvalCaptions:
    """``captions`` as read once: read here when given as a path."""
    if not isinstance(captions, EvalCaptions):
        return read_eval_captions(captions, split)
    if captions.split != split:
        raise ValueError(f"{captions.path}: captions of split {captions.split!r} given to evaluate split {split!r}")
    return captions


class EvalSet:
    """A test split in memory: tokenised captions, their image index, and the images' padded regions."""

    def __init__(self, regions_path: str, captions_path: str | EvalCaptions, split: str | None, tokenizer_json: str,
                 max_text_len: int, max_regions: int, feature_dim: int):
        """``captions_path``: the captions dataset, or its split already read (``read_eval_captions``)."""
        from tokenizers import Tokenizer

        read = _eval_captions(captions_path, split)
        self.blank_captions = read.blank  # the split's rows left out for a blank caption
        self.repeated_caption_rows = read.repeated  # and for repeating an earlier row's caption_id
        captions = read.by_image()
        regions_path = resolve_dataset_dir(regions_path, "regions")
        dataset = schemas.open_dataset(regions_path, "regions")
        if "://" not in regions_path and getattr(dataset, "files", None):  # local files (``feature_dims`` opens them)
            # File by file, as ``lait train`` checks them: files of two widths cannot be read as one table (a raw
            # ArrowTypeError); ``decode_regions`` would name the dataset, not the file that differs.
            widths = dict(feature_dims(regions_path))
            other = {file: width for file, width in widths.items() if width != feature_dim}
            if other:
                file, width = next(iter(other.items()))
                raise ValueError(f"{regions_path if len(other) == len(widths) else file}: features of width {width}, "
                                 f"the model reads {feature_dim}")
        # The ids alone first: Arrow matches them as bytes, so an id that is not UTF-8 matched no caption and its
        # image was left out silently, its captions counted as without regions. Refused as captions are.
        # A null id is refused too: it matched no caption, and the image was left out as silently.
        check_region_ids(dataset.to_table(columns=["image_id"]), regions_path)
        try:
            table = dataset.to_table(columns=REGION_COLUMNS, filter=pc.field("image_id").isin(list(captions)))
        except pa.ArrowInvalid:
            # A null box or feature vector (Arrow's error names neither file nor column): found and named.
            for file in (getattr(dataset, "files", None) or []) if "://" not in regions_path else []:
                for group in range(pq.ParquetFile(file).num_row_groups):
                    read_region_rows(file, group, REGION_COLUMNS)
            raise
        images = decode_regions(table, max_regions, feature_dim, regions_path)  # refuses another feature width
        seen, unique = set(), []
        for image in images:  # an image stored twice is evaluated once
            if image.image_id not in seen:
                seen.add(image.image_id)
                unique.append(image)
        # Sorted by region count, so neighbouring images (one scoring batch) need little padding.
        self.images = sorted(unique, key=lambda im: (len(im.features), im.image_id))
        index = {im.image_id: i for i, im in enumerate(self.images)}
        # Each image's place in the captions' own order (first appearance): the order evaluation folds follow.
        appearance = {image_id: rank for rank, image_id in enumerate(captions)}
        self.first_seen = np.array([appearance[im.image_id] for im in self.images], dtype=np.int64)
        self.captions_without_regions = sum(len(v) for k, v in captions.items() if k not in index)
        if not self.images:
            raise ValueError(f"{regions_path}: none of the {sum(map(len, captions.values()))} captions of split "
                             f"{split!r} has its image in the regions dataset")
        tokenizer = Tokenizer.from_str(tokenizer_json)
        tokenizer.enable_truncation(max_text_len)
        tokenizer.no_padding()
        self.caption_ids, texts, image_of = [], [], []
        for image_id in sorted(captions):
            if image_id in index:
                for caption_id, caption in captions[image_id]:
                    self.caption_ids.append(caption_id)
                    texts.append(caption)
                    image_of.append(index[image_id])
        encodings = tokenizer.encode_batch(texts)
        pad = tokenizer.token_to_id("[PAD]")  # as training pads (the model's pad_token_id)
        self.text = collate_text([e.ids for e in encodings], [e.special_tokens_mask for e in encodings],
                                 pad if pad is not None else 0)
        self.text_lengths = self.text["text_mask"].sum(1).numpy()
        self.regions = collate_regions(self.images)
        self.region_counts = self.regions["region_mask"].sum(1).numpy()
        self.caption_images = torch.tensor(image_of, dtype=torch.long)
        # Each caption's and image's first twin: the first of the set with the same input (word pieces; regions'
        # features and locations), itself when none is. Pairs of twins take one score (``first_twin_pairs``).
        self.caption_twin = _first_alike([tuple(e.ids) for e in encodings])
        features, locations = self.regions["region_features"].numpy(), self.regions["region_locations"].numpy()
        self.image_twin = _first_alike([
            hashlib.blake2b(features[i, :n].tobytes() + locations[i, :n].tobytes(), digest_size=16).digest()
            for i, n in enumerate(self.region_counts.tolist())])
        self.twins = int((self.caption_twin != np.arange(len(self.caption_twin))).sum()
                         + (self.image_twin != np.arange(len(self.image_twin))).sum())

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.caption_ids), len(self.images)

    def folds(self, count: int) -> list[np.ndarray]:
        """The images (indices) of ``count`` folds of consecutive images in the captions' order, as near
        equal in size as they divide (MSCOCO's 1K test: the Karpathy 5K test split, as imported, in five)."""
        if not 1 <= count <= len(self.images):
            raise ValueError(f"folds: {count} folds of {len(self.images)} images")
        order = np.argsort(self.first_seen, kind="stable")
        return [np.sort(part) for part in np.array_split(order, count)]


def _first_alike(keys: list) -> np.ndarray:
    """For each key, the index of the first equal one."""
    first: dict = {}
    return np.array([first.setdefault(key, index) for index, key in enumerate(keys)], dtype=np.int64)


def first_twin_pairs(data: EvalSet, pair_captions: np.ndarray, pair_images: np.ndarray) -> np.ndarray | None:
    """For each pair, the index of the first pair of these with the same input (its caption's and its image's
    first twins, ``EvalSet.caption_twin`` and ``image_twin``), whose score it takes; None when the set has no twins.

    A pair's score is a function of its input, yet a batch of another shape (other pairs beside it, other padding)
    computes it with other rounding: a caption scored against images without regions, a tie, came out a few ULPs
    apart from one batch to the next, some above the caption's image and some below, differently for each
    ``--batch-size``, where the documented rule, ties against the query, ranks its image below all of them. Taking
    one score, twins tie exactly, in every precision and on every device; a tolerance on the scores would have to
    guess each precision's and device's rounding, and would tie distinct inputs whose scores merely lie close."""
    if not data.twins:
        return None
    keys = data.caption_twin[pair_captions] * data.shape[1] + data.image_twin[pair_images]
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return first[inverse.reshape(-1)]


@torch.no_grad()
def score_pairs(model: ImageBert, data: EvalSet, pair_captions: np.ndarray, pair_images: np.ndarray,
                batch_size: int, device: torch.device, bf16: bool, progress: bool = False,
                fixed_shapes: bool = False, full_batches: bool = False) -> torch.Tensor:
    """Cross-encoder score of each (caption, image) index pair, in batches trimmed to their longest member.

    ``fixed_shapes`` pads every batch to ``batch_size`` pairs, the set's longest caption and its largest
    region count instead, so a compiled trunk (static shapes) compiles once. ``full_batches`` pads only
    the last batch to ``batch_size`` pairs (a trunk compiled with symbolic lengths keeps a fixed batch size).
    Each image's region embeddings are computed once (``region_embeddings``) and reused for all its pairs.
    """
    keys_text = ("input_ids", "text_mask")
    text = {k: data.text[k].to(device) for k in keys_text}
    images = np.unique(pair_images)
    regions = region_embeddings(model, data, images, batch_size, device, bf16)
    rows = np.searchsorted(images, pair_images)  # each pair's image: its row of ``regions``
    scores = torch.empty(len(pair_captions), dtype=torch.float32, device=device)  # one copy back at the end
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(pair_captions), desc="scoring pairs", unit="pair", unit_scale=True, dynamic_ncols=True)
    for start in range(0, len(pair_captions), batch_size):
        c = pair_captions[start: start + batch_size]
        i = pair_images[start: start + batch_size]
        r = rows[start: start + batch_size]
        count = len(c)
        if (fixed_shapes or full_batches) and count < batch_size:  # the last batch: repeat its last pair,
            c = np.concatenate([c, np.full(batch_size - count, c[-1])])  # drop those scores
            i = np.concatenate([i, np.full(batch_size - count, i[-1])])
            r = np.concatenate([r, np.full(batch_size - count, r[-1])])
        if fixed_shapes:
            t_len, r_len = int(data.text_lengths.max()), int(data.region_counts.max())
        else:
            t_len, r_len = int(data.text_lengths[c].max()), int(data.region_counts[i].max())
        c_idx, r_idx = torch.from_numpy(c).to(device), torch.from_numpy(r).to(device)
        batch = {k: v[c_idx, :t_len] for k, v in text.items()}
        batch.update({k: v[r_idx, :r_len] for k, v in regions.items()})  # the caption's partner image
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            scores[start: start + count] = model.score(batch).float()[:count]
        if bar is not None:
            bar.update(count)
    if bar is not None:
        bar.close()
    return scores.cpu()


@torch.no_grad()
def region_embeddings(model: ImageBert, data: EvalSet, images: np.ndarray, batch_size: int, device: torch.device,
                      bf16: bool) -> dict[str, torch.Tensor]:
    """``region_embeddings`` and ``region_mask`` on ``device`` of the ``images`` given (indices into the set), one
    row each in that order, computed once per scoring pass.

    They depend on the image alone, yet the cross-encoder recomputed them for every caption scored against it.
    Made as ``score_pairs`` made them inside the forward (features cast to the scoring dtype first, the same
    autocast), so the scores are the same; only the images of the pass sit on the device, as embeddings."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    features, locations = data.regions["region_features"], data.regions["region_locations"]
    chosen = torch.from_numpy(np.asarray(images, dtype=np.int64))
    embedded = torch.zeros((0, features.shape[1], model.config.hidden_size), device=device)  # no pairs to score
    for start in range(0, len(chosen), batch_size):
        part = chosen[start: start + batch_size]
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model.embeddings.embed_regions(features[part].to(device).to(dtype), locations[part].to(device))
        if start == 0:
            embedded = torch.empty((len(chosen), *out.shape[1:]), dtype=out.dtype, device=device)
        embedded[start: start + len(part)] = out
    return {"region_embeddings": embedded, "region_mask": data.regions["region_mask"][chosen].to(device)}


@torch.no_grad()
def unimodal_embeddings(model: ImageBert, data: EvalSet, batch_size: int, device: torch.device,
                        bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-modality embeddings of every caption and every image (``ImageBert.embed_text``/``embed_image``).

    Under torchrun each process embeds one contiguous share of the captions and of the images, and every
    process gets all the embeddings back.
    """
    n_captions, n_images = data.shape
    processes, rank = world()
    cls_id = int(data.text["input_ids"][0, 0])
    sep_id = int(data.text["input_ids"][0, int(data.text_lengths[0]) - 1])
    caption_bounds, image_bounds = share_bounds(n_captions, processes), share_bounds(n_images, processes)
    if processes > 1:
        logger.info("eval: process %d of %d embeds captions %d-%d and images %d-%d", rank, processes,
                    caption_bounds[rank], caption_bounds[rank + 1], image_bounds[rank], image_bounds[rank + 1])
    texts, images = [], []
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
        for start in range(caption_bounds[rank], caption_bounds[rank + 1], batch_size):
            part = slice(start, min(start + batch_size, caption_bounds[rank + 1]))
            texts.append(model.embed_text(data.text["input_ids"][part].to(device),
                                          data.text["text_mask"][part].to(device)).cpu())
        for start in range(image_bounds[rank], image_bounds[rank + 1], batch_size):
            part = slice(start, min(start + batch_size, image_bounds[rank + 1]))
            images.append(model.embed_image(data.regions["region_features"][part].to(device),
                                            data.regions["region_locations"][part].to(device),
                                            data.regions["region_mask"][part].to(device), cls_id, sep_id).cpu())
    width = model.config.hidden_size
    texts = torch.cat(texts) if texts else torch.empty(0, width)
    images = torch.cat(images) if images else torch.empty(0, width)
    if processes > 1:
        texts, images = _gather_shares(texts, caption_bounds, device), _gather_shares(images, image_bounds, device)
    # Twins take their first twin's embedding, computed in another batch: the same, not a few ULPs off, so the
    # pre-ranker ties them (``first_twin_pairs``).
    return texts[torch.from_numpy(data.caption_twin)], images[torch.from_numpy(data.image_twin)]


#: Pre-ranker scores ``prerank_top`` ranks at a time (4 Mi float64s, 32 MiB): a few queries' rows, not the matrix.
PRERANK_CHUNK = 1 << 22


def prerank_top(scores: torch.Tensor, gold: torch.Tensor, k: int) -> torch.Tensor:
    """The two-stage mode's candidates: each query's (row's) ``k`` best items by the pre-ranker, [queries, items] bool.

    ``gold`` marks each query's answers. Ties count against the query, as ``recall_at_k`` counts them: an answer
    ranks after every other item of an equal score (a NaN score of another item above all, an answer's NaN below
    all), so it reaches the re-ranking only when fewer than ``k`` others score as high. ``topk`` alone broke the
    ties by index, so whether an answer tied at the cut was re-ranked, and the recall, hung on the set's order.

    The order is ``topk``'s on a float64 key: an answer's score lowered by one float64 step, which lies below its
    float32 ties and above every lower float32; another item's -inf raised to the lowest finite float64, above an
    answer's -inf. Ties between items of one side stay ``topk``'s: they decide no answer's fate. In blocks of rows
    (``PRERANK_CHUNK`` scores), so the key never holds the whole matrix.
    """
    n_queries, n_items = scores.shape
    picked = torch.zeros(n_queries, n_items, dtype=torch.bool)
    if not k:
        return picked
    lowest = torch.tensor(float("-inf"), dtype=torch.float64)
    rows = max(1, PRERANK_CHUNK // max(1, n_items))
    for start in range(0, n_queries, rows):
        block = scores[start:start + rows].cpu().double()
        nan = block.isnan()
        others = block.masked_fill(nan, float("inf")).clamp_min(-torch.finfo(torch.float64).max)
        answers = torch.nextafter(block, lowest).masked_fill(nan, float("-inf"))
        key = torch.where(gold[start:start + rows].cpu(), answers, others)
        picked[start:start + rows].scatter_(1, key.topk(k, dim=1).indices, True)
    return picked


def evaluate(model: ImageBert, tokenizer_json: str, regions: str, captions: str | EvalCaptions,
             split: str | None = "test", batch_size: int = 512, device: torch.device | str = "cpu", bf16: bool = False,
             two_stage_k: int | None = None, progress: bool = False, compile: bool = False,
             fp8: bool = False, folds: int | None = None) -> dict:
    """Recall@1/5/10 in both directions on one split; ``two_stage_k`` re-ranks only each query's top k.

    ``captions``: the captions dataset, or the split's captions already read (``read_eval_captions``: by
    ``lait eval`` before the model loads, by ``lait train`` before it trains), which are then not read again.

    ``folds`` splits the images, in the captions' order, into that many folds, ranks each fold's captions
    against its own images only, and reports the mean over the folds (MSCOCO's "1K test": ``folds=5`` on
    the 5K test split); ``per_fold`` holds each fold's recall.

    ``compile`` scores the pairs with the trunk compiled (``compile_shapes``): for one static shape, every
    batch padded to the set's longest caption and largest region count, when that pads little; with
    symbolic lengths on trimmed batches when trimming saves at least ``TRIM_WORTH`` of the tokens.
    ``fp8`` runs the cross-encoder's encoder matrix multiplies in float8 (``model.fp8``; implies bf16
    for the rest); the dual-encoder pre-ranking of the two-stage mode stays in ``bf16``'s precision.
    """
    for name, value in (("batch_size", batch_size), ("two_stage_k", two_stage_k), ("folds", folds)):
        if value is not None:
            check_count(name, value)
    device = torch.device(device)
    if fp8:
        if not fp8_supported(device):
            raise ValueError(f"fp8 scoring needs a GPU of compute capability 8.9 or later (Ada, Hopper), "
                             f"or the CPU; {device} has none")
        bf16 = True
    model.eval()
    config = model.config
    started = time.perf_counter()
    data = EvalSet(regions, captions, split, tokenizer_json, config.max_text_len, config.max_regions, config.feature_dim)
    n_captions, n_images = data.shape
    logger.info("eval: %d captions x %d images (%d captions without regions)", n_captions, n_images,
                data.captions_without_regions)
    if data.blank_captions:
        logger.warning("eval: %d blank captions of split %r left out (blank_captions_skipped)", data.blank_captions,
                       split)
    if data.repeated_caption_rows:
        logger.warning("eval: %d caption rows of split %r repeat a caption_id: each caption is evaluated once, with "
                       "its first row (repeated_caption_rows)", data.repeated_caption_rows, split)
    if data.twins:
        logger.info("eval: %d captions and images have the same input as another (same word pieces, same regions): "
                    "the pairs of one input take one score, so they tie", data.twins)
    if folds is not None:
        if two_stage_k is not None:
            raise ValueError("folds score every pair of a fold: leave out the two-stage mode")
        result, scored, shapes = _evaluate_folds(model, data, folds, batch_size, device, bf16, progress, compile, fp8)
        mode = "full"
    elif two_stage_k is None or two_stage_k >= max(n_captions, n_images):
        # Image-major order: neighbouring pairs share an image of similar region count; captions shortest
        # first, so a batch's captions have about one length and trimming to the longest pads little.
        by_length = np.argsort(data.text_lengths, kind="stable")
        pair_images = np.repeat(np.arange(n_images), n_captions)
        pair_captions = np.tile(by_length, n_images)
        flat, shapes = _score(model, data, pair_captions, pair_images, batch_size, device, bf16, progress, compile, fp8)
        ir = sr = flat.view(n_images, n_captions)[:, torch.from_numpy(np.argsort(by_length))].t().contiguous()
        mode, scored = "full", len(flat)
    else:
        text_emb, image_emb = unimodal_embeddings(model, data, batch_size, device, bf16)
        similarity = text_emb @ image_emb.t()
        k_images, k_captions = min(two_stage_k, n_images), min(two_stage_k, n_captions)
        # Each query's k best by the pre-ranker, its answers after the items tied with them (``prerank_top``).
        gold = _gold(data)
        candidates = prerank_top(similarity, gold, k_images)
        candidates_sr = prerank_top(similarity.t(), gold.t(), k_captions).t()
        union = (candidates | candidates_sr).nonzero().numpy()
        order = np.lexsort((data.text_lengths[union[:, 0]], union[:, 1]))  # image-major, then caption length
        pair_captions, pair_images = union[order, 0], union[order, 1]
        flat, shapes = _score(model, data, pair_captions, pair_images, batch_size, device, bf16, progress, compile,
                              fp8)
        # The two-stage ranking of a query: its K candidates in the cross-encoder's order, then every other pair
        # in the pre-ranker's (recall_at_k's ir_first/sr_first keep the candidates first). Leaving the others
        # out (-inf, a tie counted against the query) capped R@10 at the pre-rank recall@K when K < 10.
        prerank_scores = similarity.float()
        full = prerank_scores.clone()
        full[torch.from_numpy(pair_captions), torch.from_numpy(pair_images)] = flat
        ir = torch.where(candidates, full, prerank_scores)
        sr = torch.where(candidates_sr, full, prerank_scores)
        mode, scored = "two_stage", len(flat)
        rows = torch.arange(n_captions)
        prerank = {"image_retrieval": float(candidates[rows, data.caption_images].float().mean()),
                   "sentence_retrieval": float((candidates_sr & gold).any(0).float().mean())}
    seconds = time.perf_counter() - started
    if folds is None:
        first = {"ir_first": candidates, "sr_first": candidates_sr} if mode == "two_stage" else {}
        result = recall_at_k(ir, data.caption_images, sr, **first)
        result["nan_scores"] = int(flat.isnan().sum())
    if result["nan_scores"]:
        logger.warning("eval: %d of %d pair scores are NaN (a diverged model?); they count against their queries",
                       result["nan_scores"], scored)
    if mode == "two_stage":
        result["prerank_recall"] = prerank  # share of queries whose answer reached the re-ranking
    result["notes"] = saturation_notes(result)
    for note in result["notes"]:
        logger.warning("eval: %s", note)
    result.update(mode=mode, two_stage_k=two_stage_k if mode == "two_stage" else None, pairs_scored=scored,
                  processes=world()[0],
                  seconds=round(seconds, 3), pairs_per_s=round(scored / max(seconds, 1e-9), 1), split=split,
                  precision="fp8" if fp8 else ("bf16" if bf16 else "fp32"),
                  compile_shapes=shapes,
                  captions_without_regions=data.captions_without_regions,
                  blank_captions_skipped=data.blank_captions, repeated_caption_rows=data.repeated_caption_rows)
    return result


def _evaluate_folds(model: ImageBert, data: EvalSet, count: int, batch_size: int, device: torch.device, bf16: bool,
                    progress: bool, compile: bool, fp8: bool) -> tuple[dict, int, str | None]:
    """``evaluate``'s fold mode: every fold's pairs in one scoring pass (one compile), recall per fold, and
    their mean; returns (result, pairs scored, compiled shapes)."""
    by_length = np.argsort(data.text_lengths, kind="stable")
    caption_images = data.caption_images.numpy()
    blocks, pair_captions, pair_images = [], [], []
    for images in data.folds(count):
        captions = by_length[np.isin(caption_images, images)[by_length]]  # the fold's captions, shortest first
        blocks.append((captions, images))
        pair_images.append(np.repeat(images, len(captions)))  # image-major, as the full mode
        pair_captions.append(np.tile(captions, len(images)))
    flat, shapes = _score(model, data, np.concatenate(pair_captions), np.concatenate(pair_images), batch_size, device,
                          bf16, progress, compile, fp8)
    per_fold, start = [], 0
    for captions, images in blocks:
        block = flat[start: start + len(captions) * len(images)].view(len(images), len(captions)).t()
        start += len(captions) * len(images)
        local = torch.from_numpy(np.searchsorted(images, caption_images[captions]))
        per_fold.append(recall_at_k(block, local))
    result = {direction: {key: float(np.mean([fold[direction][key] for fold in per_fold]))
                          for key in per_fold[0][direction]}
              for direction in ("image_retrieval", "sentence_retrieval")}
    # A K at which some fold's ranking cannot miss lifts the mean as well: the fold of fewest rivals decides.
    directions = ("image_retrieval", "sentence_retrieval")
    saturated = {direction: sorted({k for fold in per_fold for k in fold["saturated_k"][direction]})
                 for direction in directions}
    result.update(num_images=data.shape[1], num_captions=data.shape[0], folds=count, per_fold=per_fold,
                  nan_scores=int(flat.isnan().sum()), saturated_k=saturated,
                  rivals={direction: min(fold["rivals"][direction] for fold in per_fold) for direction in directions})
    return result, len(flat), shapes


def world() -> tuple[int, int]:
    """(processes, this one's rank) of the torch.distributed job this process is in; (1, 0) outside one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _score(model: ImageBert, data: EvalSet, pair_captions: np.ndarray, pair_images: np.ndarray, batch_size: int,
           device: torch.device, bf16: bool, progress: bool, compile: bool,
           fp8: bool = False) -> tuple[torch.Tensor, str | None]:
    """The score of every pair, and the compiled shapes (``compile_shapes``; None eager).

    Under torchrun each process scores one contiguous share of the pairs (image-major order kept, so its
    batches pad as little) and every process gets all the scores back. Float8's input scales are calibrated
    on the same sample of all the pairs in every process, so the shares' scores compare.
    """
    input_amax = _calibrate_float8(model, data, pair_captions, pair_images, batch_size, device) if fp8 else None
    processes, rank = world()
    if processes == 1:
        scores, shapes = _score_share(model, data, pair_captions, pair_images, batch_size, device, bf16, progress,
                                      compile, fp8, input_amax)
    else:
        bounds = share_bounds(len(pair_captions), processes)
        mine = slice(bounds[rank], bounds[rank + 1])
        logger.info("eval: process %d of %d scores pairs %d-%d of %d", rank, processes, mine.start, mine.stop,
                    len(pair_captions))
        scores, shapes = _score_share(model, data, pair_captions[mine], pair_images[mine], batch_size, device, bf16,
                                      progress and rank == 0, compile, fp8, input_amax)
        scores = _gather_shares(scores, bounds, device)
    # Pairs of the same input (twins) take one score, that of the first of them (every process has them all).
    first = first_twin_pairs(data, pair_captions, pair_images)
    return (scores if first is None else scores[torch.from_numpy(first)]), shapes


def share_bounds(count: int, processes: int) -> np.ndarray:
    """Where each process's contiguous share of ``count`` items starts and ends (``processes + 1`` bounds)."""
    return np.linspace(0, count, processes + 1).round().astype(int)


def _gather_shares(scores: torch.Tensor, bounds: np.ndarray, device: torch.device) -> torch.Tensor:
    """Every process's share of the rows of ``scores`` (scores or embeddings; ``bounds``: where each share
    starts and ends), in rank order."""
    import torch.distributed as dist

    on = collective_device(device)
    sizes = np.diff(bounds)
    padded = torch.zeros((int(sizes.max()), *scores.shape[1:]), dtype=torch.float32, device=on)
    padded[: len(scores)] = scores.to(on)
    shares = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(shares, padded)
    return torch.cat([share[:size].cpu() for share, size in zip(shares, sizes)])


def _score_share(model: ImageBert, data: EvalSet, pair_captions: np.ndarray, pair_images: np.ndarray,
                 batch_size: int, device: torch.device, bf16: bool, progress: bool, compile: bool, fp8: bool,
                 input_amax: list[float] | None) -> tuple[torch.Tensor, str | None]:
    """``score_pairs``, with float8 encoder layers (``input_amax``: their static scales) and/or the trunk
    compiled for the duration when asked (the model is left as it was)."""
    with float8_encoder(model, input_amax) if fp8 else contextlib.nullcontext():
        if not compile:
            return score_pairs(model, data, pair_captions, pair_images, batch_size, device, bf16, progress), None
        shapes = compile_shapes(data, pair_captions, pair_images, batch_size)
        logger.info("eval: trunk compiled for %s shapes", shapes)
        previous = model.__dict__.get("_trunk")
        # Trimmed: dynamo compiles the first batch's shape, then once more with the lengths symbolic.
        model.compile_trunk(dynamic=False if shapes == "fixed" else None)
        try:
            return score_pairs(model, data, pair_captions, pair_images, batch_size, device, bf16, progress,
                               fixed_shapes=shapes == "fixed", full_batches=True), shapes
        finally:
            if previous is None:
                model.__dict__.pop("_trunk", None)
            else:
                model._trunk = previous


#: Pairs scored in bf16 before a float8 eval to fix its static input scales (``model.fp8.calibrate``):
#: half drawn at random from the pairs to score (mostly non-matching), half captions with their own image.
CALIBRATION_PAIRS = 1024


def _calibrate_float8(model: ImageBert, data: EvalSet, pair_captions: np.ndarray, pair_images: np.ndarray,
                      batch_size: int, device: torch.device) -> list[float]:
    """The encoder linear layers' largest inputs on a fixed sample of the pairs (seeded: runs repeat)."""
    rng = np.random.default_rng(0)
    drawn = rng.choice(len(pair_captions), size=min(CALIBRATION_PAIRS // 2, len(pair_captions)), replace=False)
    own = rng.choice(data.shape[0], size=min(CALIBRATION_PAIRS // 2, data.shape[0]), replace=False)
    captions = np.concatenate([pair_captions[drawn], own])
    images = np.concatenate([pair_images[drawn], data.caption_images.numpy()[own]])
    return calibrate(model, lambda: score_pairs(model, data, captions, images, batch_size, device, bf16=True))


#: Trimmed batches under compile once they carry at most this share of the fixed shape's tokens. Static
#: shapes let the compiler specialise every kernel; symbolic lengths cost a little per token, so a small
#: saving is not worth them. (CPU, tiny model, web-like lengths: fixed 4,105 pairs/s, trimmed 8,744.)
TRIM_WORTH = 0.85


def compile_shapes(data: EvalSet, pair_captions: np.ndarray, pair_images: np.ndarray, batch_size: int) -> str:
    """``fixed`` or ``trimmed``: how a compiled trunk should see these pairs' batches (see ``TRIM_WORTH``)."""
    if len(pair_captions) == 0:
        return "fixed"
    text = data.text_lengths[pair_captions]
    regions = data.region_counts[pair_images]
    starts = np.arange(0, len(text), batch_size)
    trimmed = float((np.maximum.reduceat(text, starts) + np.maximum.reduceat(regions, starts)).sum()) * batch_size
    fixed = float(len(starts) * batch_size * (data.text_lengths.max() + data.region_counts.max()))
    return "trimmed" if trimmed <= TRIM_WORTH * fixed else "fixed"


def _gold(data: EvalSet) -> torch.Tensor:
    gold = torch.zeros(data.shape, dtype=torch.bool)
    gold[torch.arange(data.shape[0]), data.caption_images] = True
    return gold


def write_eval(result: dict, path: str) -> None:
    """Write ``eval.json`` whole or not at all (a failed write, a full disk, leaves the earlier one as it was)."""
    schemas.write_json_atomically(os.path.abspath(path), result)


def saturation_notes(result: dict) -> list[str]:
    """What ``result``'s ``saturated_k`` means, a line per direction that has any: on a split this small every
    query is a hit at those K whatever the scores (a NaN score aside), so R@K there is 100% by construction and
    measures nothing (R@1 against ``chance_R@1`` still does). Printed under the table, logged, and kept in
    eval.json as ``notes``."""
    saturated, rivals = result.get("saturated_k") or {}, result.get("rivals") or {}
    fold = " in a fold" if result.get("folds") else ""
    notes = []
    for direction, answer, others in (("image_retrieval", "a caption's image", "other images"),
                                      ("sentence_retrieval", "an image's captions", "captions not its own")):
        ks = saturated.get(direction) or []
        if ks:
            notes.append(f"{direction.replace('_', ' ')}: {', '.join(f'R@{k}' for k in ks)} "
                         f"{'is' if len(ks) == 1 else 'are'} 100% by construction: {answer} can be outranked by "
                         f"{rivals.get(direction, '?')} {others} at most{fold}, fewer than {ks[0]}; evaluate on a "
                         f"larger split")
    return notes


def format_table(result: dict) -> str:
    """The recall table as text (percentages)."""
    lines = [f"{'direction':<20}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'chance R@1':>12}"]
    for key, label in (("image_retrieval", "image retrieval"), ("sentence_retrieval", "sentence retrieval")):
        row = result[key]
        lines.append(f"{label:<20}" + "".join(f"{100 * row[f'R@{k}']:>8.1f}" for k in KS)
                     + f"{100 * row['chance_R@1']:>12.2f}")
    lines.append(f"{result['num_captions']} captions x {result['num_images']} images, {result['mode']} ranking, "
                 f"{result['pairs_scored']:,} pairs scored at {result['pairs_per_s']:,.0f} pairs/s")
    if result.get("nan_scores"):
        lines.append(f"warning: {result['nan_scores']:,} of the {result['pairs_scored']:,} scores are NaN (a diverged "
                     f"model?); they count as misses")
    if result.get("blank_captions_skipped"):
        lines.append(f"{result['blank_captions_skipped']:,} blank captions of the split left out")
    if result.get("repeated_caption_rows"):
        lines.append(f"{result['repeated_caption_rows']:,} caption rows repeating a caption_id left out")
    for note in result.get("notes") or ():
        lines.append(f"note: {note}")
    if result.get("folds"):
        lines.append(f"mean over {result['folds']} folds of about {result['num_images'] // result['folds']:,} images, "
                     f"each fold's captions ranked against its own images")
    return "\n".join(lines)
