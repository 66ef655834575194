"""Pretraining tasks and fine-tuning losses, one small unit each.

A pretraining task is a head (``nn.Module``) with ``loss(sequence, pooled, batch)``; the masking
it needs is done once per batch by ``prepare_pretrain_batch`` in the paper's order: image-text
matching negatives first, then token and region masking, then the conditional mask that keeps
the masked losses to matched pairs. ``TASKS`` maps a task name to its head class.
"""
from __future__ import annotations

import collections
import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.config import ModelConfig

IGNORE = -100


class _Transform(nn.Sequential):
    """Dense + GELU + LayerNorm, BERT's prediction-head transform."""

    def __init__(self, config: ModelConfig):
        super().__init__(
            nn.Linear(config.hidden_size, config.hidden_size),
            nn.GELU(),
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps),
        )


def _text_part(sequence: torch.Tensor, batch: dict) -> torch.Tensor:
    return sequence[:, : batch["input_ids"].shape[1]]


def _region_part(sequence: torch.Tensor, batch: dict) -> torch.Tensor:
    return sequence[:, batch["input_ids"].shape[1]:]


def gather_rows(values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``values[b, positions[b, j]]`` for [B, N, ...] values and [B, K] positions: [B, K, ...]."""
    index = positions.reshape(*positions.shape, *([1] * (values.dim() - 2))).expand(-1, -1, *values.shape[2:])
    return values.gather(1, index)


#: Batch key the model sets when the sequence it hands the heads holds only the rows of ``slot_rows``.
SLOTS_ONLY = "sequence_is_slots"


def cls_rows(input_ids: torch.Tensor) -> torch.Tensor:
    """[B, 1] rows: the [CLS] position of every sequence."""
    return torch.zeros(input_ids.shape[0], 1, dtype=torch.long, device=input_ids.device)


def slot_rows(batch: dict, weights: dict[str, float]) -> torch.Tensor | None:
    """The sequence rows the weighted heads read, [B, 1 + Kt + Kr]: [CLS], then the caption's slots
    (``mlm_positions``), then the image's (``region_positions``), each part only where the batch has it.

    None where a weighted head reads a data-dependent set of rows (Bernoulli masking). The encoder's last
    layer then need compute no other row (``ImageBert``); the heads find their slots in that order.
    """
    needs = {TASKS[name].masks for name, weight in weights.items() if weight > 0}
    if ("text" in needs and "mlm_positions" not in batch) or ("regions" in needs and "region_positions" not in batch):
        return None
    input_ids = batch["input_ids"]
    parts = [cls_rows(input_ids)]
    if "mlm_positions" in batch:
        parts.append(batch["mlm_positions"])
    if "region_positions" in batch:
        parts.append(batch["region_positions"] + input_ids.shape[1])
    return torch.cat(parts, 1)


def _text_slots(sequence: torch.Tensor, batch: dict) -> torch.Tensor:
    """The hidden states of the caption's exact-masking slots, [B, Kt]."""
    positions = batch["mlm_positions"]
    if batch.get(SLOTS_ONLY):
        return sequence[:, 1:1 + positions.shape[1]]
    return gather_rows(_text_part(sequence, batch), positions)


def _region_slots(sequence: torch.Tensor, batch: dict) -> torch.Tensor:
    """The hidden states of the image's exact-masking slots, [B, Kr]."""
    positions = batch["region_positions"]
    if batch.get(SLOTS_ONLY):
        start = 1 + (batch["mlm_positions"].shape[1] if "mlm_positions" in batch else 0)
        return sequence[:, start:start + positions.shape[1]]
    return gather_rows(_region_part(sequence, batch), positions)


def _masked_regions(sequence: torch.Tensor, batch: dict):
    """The hidden states of the masked regions whose loss counts, a function taking the same items of a
    per-region tensor, and each item's weight (0 or 1).

    With ``region_positions`` (exact masking) the items are a fixed number of slots per image (static
    shapes, for a compiled step), weighted 0 where a slot is not a counted masked region; otherwise the
    selected regions themselves (a data-dependent count), each weighted 1.
    """
    selected = batch["region_masked"] & batch["region_loss_mask"]
    if "region_positions" in batch:
        positions = batch["region_positions"]

        def take(values: torch.Tensor) -> torch.Tensor:
            return gather_rows(values, positions).flatten(0, 1)

        return _region_slots(sequence, batch).flatten(0, 1), take, take(selected).float()
    regions = _region_part(sequence, batch)

    def take(values: torch.Tensor) -> torch.Tensor:
        return values[selected]

    hidden = regions[selected]
    return hidden, take, torch.ones(hidden.shape[0], device=hidden.device)


class MaskedLanguageModeling(nn.Module):
    """MLM: predict the masked word pieces; the decoder is tied to the word embeddings."""

    masks = "text"

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.transform = _Transform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)  # weight tied by ImageBert

    def loss(self, sequence: torch.Tensor, pooled: torch.Tensor, batch: dict) -> torch.Tensor:
        labels = batch["mlm_labels"]
        if "mlm_positions" in batch:  # exact masking: a fixed number of slots per caption, static shapes
            positions = batch["mlm_positions"]
            labels = labels.gather(1, positions)  # IGNORE in the slots beyond a caption's masked count
            logits = self.decoder(self.transform(_text_slots(sequence, batch))).float()
            count = (labels != IGNORE).sum()
            total = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum", ignore_index=IGNORE)
            return _mean_or_zero(total, count, logits)
        selected = labels != IGNORE
        # Only masked positions go through the vocabulary projection: it is the costliest matmul.
        hidden = _text_part(sequence, batch)[selected]
        logits = self.decoder(self.transform(hidden)).float()
        return _mean_or_zero(F.cross_entropy(logits, labels[selected], reduction="sum"), selected.sum(), logits)


class MaskedObjectClassification(nn.Module):
    """MOC: predict the detector's class of each masked region (cross-entropy, or KL on its distribution)."""

    masks = "regions"

    def __init__(self, config: ModelConfig, loss_type: str = "ce"):
        super().__init__()
        self.loss_type = loss_type
        self.num_classes = config.num_classes
        self.head = nn.Sequential(_Transform(config), nn.Linear(config.hidden_size, config.num_classes))

    def loss(self, sequence: torch.Tensor, pooled: torch.Tensor, batch: dict) -> torch.Tensor:
        hidden, take, weight = _masked_regions(sequence, batch)
        logits = self.head(hidden).float()
        if self.loss_type == "kl":
            target = dense_class_distribution(take(batch["region_topk_ids"]), take(batch["region_topk_probs"]),
                                              self.num_classes)
            per_region = F.kl_div(F.log_softmax(logits, -1), target, reduction="none").sum(-1)
            # A region none of whose top-k ids the head has a class for has an all-zero target: skipped, as
            # cross-entropy skips it below (it counted in the mean, and diluted the loss, before).
            weight = weight * (target.sum(-1) > 0).to(weight.dtype)
            return _mean_or_zero((per_region * weight).sum(), weight.sum(), logits)
        labels = take(batch["region_classes"])
        # Ids the head has no class for are skipped: past its classes (a classes.json listing fewer than the
        # detector wrote) or negative (a detector's -1, "no class"), which cross-entropy would index with.
        keep = (labels >= 0) & (labels < self.num_classes) & weight.bool()
        labels = torch.where(keep, labels, torch.full_like(labels, IGNORE))
        total = F.cross_entropy(logits, labels, reduction="sum", ignore_index=IGNORE)
        return _mean_or_zero(total, keep.sum(), logits)


class MaskedRegionFeatureRegression(nn.Module):
    """MRFR: regress the original feature of each masked region (L2)."""

    masks = "regions"

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.head = nn.Sequential(_Transform(config), nn.Linear(config.hidden_size, config.feature_dim))

    def loss(self, sequence: torch.Tensor, pooled: torch.Tensor, batch: dict) -> torch.Tensor:
        hidden, take, weight = _masked_regions(sequence, batch)
        predicted = self.head(hidden).float()
        total = (((predicted - take(batch["region_targets"]).float()) ** 2).mean(-1) * weight).sum()
        return _mean_or_zero(total, weight.sum(), predicted)


class ImageTextMatching(nn.Module):
    """ITM: a binary matched/not-matched logit from the pooled [CLS] output."""

    masks = None

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.classifier = nn.Linear(config.hidden_size, 1)

    def logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """One matching score per sequence."""
        # In float32 even under bf16 autocast: bf16 logits tie often, and ties decide Recall@K.
        with torch.autocast(device_type=pooled.device.type, enabled=False):
            return self.classifier(pooled.float()).squeeze(-1)

    def loss(self, sequence: torch.Tensor, pooled: torch.Tensor, batch: dict) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(self.logits(pooled), batch["itm_labels"].float())


TASKS: dict[str, type[nn.Module]] = {
    "mlm": MaskedLanguageModeling,
    "moc": MaskedObjectClassification,
    "mrfr": MaskedRegionFeatureRegression,
    "itm": ImageTextMatching,
}


def _mean_or_zero(total: torch.Tensor, count: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """Mean over selected items; 0 (still attached to the head's graph, for DDP) when none is selected."""
    return total / count.clamp(min=1).to(total.dtype) + anchor.sum() * 0.0


def dense_class_distribution(topk_ids: torch.Tensor, topk_probs: torch.Tensor, num_classes: int) -> torch.Tensor:
    """A [n, C] distribution from the detector's top-k ids/probs, renormalised; padding ids (<0) dropped.

    Probabilities that are not finite or not positive count as 0 (a negative one made the KL loss NaN), and each
    region's are divided by their largest before they are summed (two of 3e38 summed to inf in float32, and the
    target came out all zero). A region left with none has an all-zero target, which the KL loss skips."""
    probs = topk_probs.float()
    valid = (topk_ids >= 0) & (topk_ids < num_classes) & torch.isfinite(probs) & (probs > 0)
    ids = torch.where(valid, topk_ids, torch.zeros_like(topk_ids))
    probs = torch.where(valid, probs, torch.zeros_like(probs))
    probs = probs / probs.amax(-1, keepdim=True).clamp(min=torch.finfo(probs.dtype).tiny)
    dense = torch.zeros(topk_ids.shape[0], num_classes, device=topk_ids.device)
    dense.scatter_add_(1, ids, probs)
    return dense / dense.sum(-1, keepdim=True).clamp(min=1e-12)


# ---------------------------------------------------------------------------------------------
# Masking and sampling


def _at_least_one(chosen: torch.Tensor, candidates: torch.Tensor, draw: torch.Tensor) -> torch.Tensor:
    """Add the lowest-draw candidate to rows where nothing was chosen (no host sync, so GPU-friendly)."""
    if chosen.shape[1] == 0:
        return chosen
    none = candidates.any(1) & ~chosen.any(1)
    forced = torch.where(candidates, draw, torch.full_like(draw, 2.0)).argmin(1)
    return chosen | (none.unsqueeze(1) & F.one_hot(forced, chosen.shape[1]).bool())


def choose_exact(candidates: torch.Tensor, draw: torch.Tensor, prob: float) -> torch.Tensor:
    """Choose round(prob x candidates) of each row's candidates (at least one), uniformly at random.

    The count rule of BERT's ``create_pretraining_data`` (``max(1, round(n * prob))``, rounding halves
    up); it bounds the chosen items of a row by ``exact_slots(width, prob)``.
    """
    count = candidates.sum(1, keepdim=True)
    wanted = torch.floor(count * prob + 0.5).clamp(min=1).minimum(count)
    rank = torch.where(candidates, draw, torch.full_like(draw, 2.0)).argsort(1).argsort(1)
    return candidates & (rank < wanted)


def exact_slots(width: int, prob: float) -> int:
    """The most items exact masking chooses in a row of ``width`` (the static slot count)."""
    return max(1, math.ceil(width * prob))


def slot_positions(chosen: torch.Tensor, slots: int) -> torch.Tensor:
    """[B, slots] positions: each row's chosen items in order, then unchosen ones filling the rest."""
    slots = min(slots, chosen.shape[1])
    return torch.sort((~chosen).to(torch.uint8), dim=1, stable=True).indices[:, :slots]


def _choose(candidates: torch.Tensor, draw: torch.Tensor, prob: float, exact: bool) -> torch.Tensor:
    if exact:
        return choose_exact(candidates, draw, prob)
    return _at_least_one((draw < prob) & candidates, candidates, draw)


def random_regular_ids(shape: torch.Size, vocab_size: int, special: Sequence[int], generator: torch.Generator,
                       device: torch.device) -> torch.Tensor:
    """Ids drawn uniformly from those below ``vocab_size`` that are not in ``special``, wherever those sit.

    One ``randint`` over the count of regular ids, each draw r then mapped to the r-th regular id (r plus the
    specials at or below it), so the generator advances as by one ``randint`` of that shape. With the specials
    at 0..n-1 (LAIT's tokenizers) the ids equal ``randint(n, vocab_size)``'s, draw for draw."""
    special = sorted({int(i) for i in special if 0 <= int(i) < vocab_size})
    regular = vocab_size - len(special)
    if regular <= 0:
        raise ValueError(f"no id below {vocab_size} to draw a random replacement from: all are special tokens")
    drawn = torch.randint(0, regular, shape, generator=generator, device=device)
    # The r-th regular id is r + (specials s_j with s_j - j <= r): those lie before it in the id order. Compared
    # with Python numbers, so no tensor of them is copied to the device each step.
    ids = drawn.clone()
    for step, count in collections.Counter(s - j for j, s in enumerate(special)).items():
        ids += (drawn >= step) * count
    return ids


def mask_tokens(input_ids: torch.Tensor, candidates: torch.Tensor, vocab_size: int, mask_id: int,
                first_regular_id: int, prob: float, generator: torch.Generator,
                exact: bool = False, special_ids: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: ``prob`` of the candidate tokens, of which 80% [MASK], 10% random, 10% kept.

    Each candidate is chosen with probability ``prob`` (at least one per row with candidates, so every
    caption teaches something), or with ``exact`` exactly ``max(1, round(prob x candidates))`` per row.
    A random replacement is drawn uniformly from the ids below ``vocab_size`` but ``special_ids`` (None: those
    below ``first_regular_id``; ``random_regular_ids``). Returns the new ids and the labels (``IGNORE`` where
    nothing is predicted).
    """
    device = input_ids.device
    draw = torch.rand(input_ids.shape, generator=generator, device=device)
    chosen = _choose(candidates, draw, prob, exact)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))
    action = torch.rand(input_ids.shape, generator=generator, device=device)
    special = range(first_regular_id) if special_ids is None else special_ids
    random_ids = random_regular_ids(input_ids.shape, vocab_size, special, generator, device)
    masked = input_ids.clone()
    masked[chosen & (action < 0.8)] = mask_id
    replace = chosen & (action >= 0.8) & (action < 0.9)
    masked[replace] = random_ids[replace]
    return masked, labels


def mask_regions(features: torch.Tensor, region_mask: torch.Tensor, prob: float, zero_prob: float,
                 generator: torch.Generator, exact: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose ``prob`` of the real regions (at least one per image that has any; ``exact`` as in
    ``mask_tokens``); zero ``zero_prob`` of them.

    Returns the new features and the boolean mask of chosen regions.
    """
    device = region_mask.device
    draw = torch.rand(region_mask.shape, generator=generator, device=device)
    chosen = _choose(region_mask, draw, prob, exact)
    zero = chosen & (torch.rand(region_mask.shape, generator=generator, device=device) < zero_prob)
    return features.masked_fill(zero.unsqueeze(-1), 0.0), chosen


def sample_negative_partners(image_keys: torch.Tensor, count: int, generator: torch.Generator,
                             input_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row, ``count`` random other rows of the batch showing a different image and, given ``input_ids``,
    holding another text: web images share alt texts ("product photo"), and a pair re-paired with a caption that
    reads as its own is no negative (the same text would be labelled matched with one image, not with the other).

    Returns indices [B, count] and a validity mask (False where the batch has too few such rows).
    """
    batch = image_keys.shape[0]
    different = image_keys.unsqueeze(0) != image_keys.unsqueeze(1)
    if input_ids is not None:
        # Rows padded alike: equal texts are equal rows. Numbered by torch.unique, the test is B x B, not B x B x L.
        text = torch.unique(input_ids, dim=0, return_inverse=True)[1]
        different &= text.unsqueeze(0) != text.unsqueeze(1)
    draw = torch.rand((batch, batch), generator=generator, device=image_keys.device)
    draw = torch.where(different, draw, torch.full_like(draw, -1.0))
    count = min(count, batch)
    values, index = draw.topk(count, dim=1)
    return index, values >= 0


_TEXT_KEYS = ("input_ids", "text_mask", "special_mask", "caption_keys")
_REGION_KEYS = ("region_features", "region_locations", "region_mask", "region_classes",
                "region_topk_ids", "region_topk_probs", "image_keys")


def _take(batch: dict, keys: tuple[str, ...], rows: torch.Tensor) -> dict:
    return {k: batch[k][rows] for k in keys if k in batch}


def prepare_pretrain_batch(batch: dict, tasks: dict[str, float], config, model_config: ModelConfig,
                           special_ids: dict[str, int], generator: torch.Generator) -> dict:
    """Apply ITM negatives, MLM and region masking and the conditional mask to a collated batch (CPU)."""
    batch = dict(batch)
    size = batch["input_ids"].shape[0]
    device = batch["input_ids"].device
    matched = torch.ones(size, dtype=torch.bool, device=device)
    if tasks.get("itm", 0) > 0:
        partner, valid = sample_negative_partners(batch["image_keys"], 1, generator, batch["input_ids"])
        partner, valid = partner[:, 0], valid[:, 0]
        negative = (torch.rand(size, generator=generator, device=device) < config.itm_neg_prob) & valid
        # Half of the negatives get a random image, half a random caption (the paper samples both).
        swap_image = negative & (torch.rand(size, generator=generator, device=device) < 0.5)
        swap_text = negative & ~swap_image
        rows = torch.arange(size, device=device)
        image_rows = torch.where(swap_image, partner, rows)
        text_rows = torch.where(swap_text, partner, rows)
        batch.update(_take(batch, _REGION_KEYS, image_rows))
        batch.update(_take(batch, _TEXT_KEYS, text_rows))
        matched = ~negative
    batch["itm_labels"] = matched
    exact = getattr(config, "masking", "bernoulli") == "exact"
    if tasks.get("mlm", 0) > 0:
        # Random replacements skip the five special tokens wherever the tokenizer puts them (not only ids below
        # first_regular: a tokenizer.json may number them after the word pieces).
        ids, labels = mask_tokens(batch["input_ids"], batch["text_mask"] & ~batch["special_mask"],
                                  model_config.vocab_size, special_ids["mask"], special_ids["first_regular"],
                                  config.mlm_prob, generator, exact,
                                  special_ids=[special_ids[name] for name in ("pad", "unk", "cls", "sep", "mask")])
        if exact:  # the heads read a fixed number of slots per caption (static shapes)
            batch["mlm_positions"] = slot_positions(labels != IGNORE, exact_slots(labels.shape[1], config.mlm_prob))
        labels = labels.masked_fill(~matched.unsqueeze(1), IGNORE)  # conditional mask: no MLM loss on mismatched pairs
        batch["input_ids"], batch["mlm_labels"] = ids, labels
    if tasks.get("moc", 0) > 0 or tasks.get("mrfr", 0) > 0:
        batch["region_targets"] = batch["region_features"]
        features, chosen = mask_regions(batch["region_features"], batch["region_mask"], config.region_mask_prob,
                                        config.region_zero_prob, generator, exact)
        batch["region_features"], batch["region_masked"] = features, chosen
        batch["region_loss_mask"] = matched.unsqueeze(1).expand_as(chosen)
        if exact:
            batch["region_positions"] = slot_positions(chosen, exact_slots(chosen.shape[1], config.region_mask_prob))
    return batch


# ---------------------------------------------------------------------------------------------
# Retrieval fine-tuning


def build_retrieval_batch(batch: dict, negatives: int, generator: torch.Generator) -> tuple[dict, torch.Tensor]:
    """Expand B matched pairs into B groups of 1 positive + ``negatives`` negatives.

    Half the negatives (rounded up) pair the caption with a random other image, the rest pair the
    image with a random other caption. Returns the flat batch of B*(1+negatives) pairs (group-major,
    positive first) and the validity mask [B, 1+negatives].
    """
    size = batch["input_ids"].shape[0]
    partners, valid = sample_negative_partners(batch["image_keys"], negatives, generator, batch["input_ids"])
    if partners.shape[1] < negatives:  # tiny batch: pad with invalid slots
        pad = negatives - partners.shape[1]
        partners = torch.cat([partners, partners.new_zeros(size, pad)], 1)
        valid = torch.cat([valid, valid.new_zeros(size, pad)], 1)
    rows = torch.arange(size, device=partners.device).unsqueeze(1)
    n_image = (negatives + 1) // 2
    image_rows = torch.cat([rows, partners[:, :n_image], rows.expand(size, negatives - n_image)], 1)
    text_rows = torch.cat([rows, rows.expand(size, n_image), partners[:, n_image:]], 1)
    flat = dict(batch)
    flat.update(_take(batch, _REGION_KEYS, image_rows.reshape(-1)))
    flat.update(_take(batch, _TEXT_KEYS, text_rows.reshape(-1)))
    mask = torch.cat([torch.ones(size, 1, dtype=torch.bool, device=valid.device), valid], 1)
    return flat, mask


def binary_loss(scores: torch.Tensor, valid: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Binary cross-entropy: column 0 matched, the other columns not (the paper's best)."""
    labels = torch.zeros_like(scores)
    labels[:, 0] = 1.0
    losses = F.binary_cross_entropy_with_logits(scores, labels, reduction="none")
    return (losses * valid).sum() / valid.sum().clamp(min=1)


def multiclass_loss(scores: torch.Tensor, valid: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Softmax cross-entropy over 1 positive and P-1 negatives per group."""
    scores = scores.masked_fill(~valid, float("-inf"))
    return F.cross_entropy(scores, torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device))


def triplet_loss(scores: torch.Tensor, valid: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """Hinge on the hardest negative of each group, on sigmoid scores (as UNITER)."""
    probs = torch.sigmoid(scores)
    negatives = probs[:, 1:].masked_fill(~valid[:, 1:], float("-inf"))
    hardest = negatives.max(1).values
    has_negative = valid[:, 1:].any(1)
    hinge = F.relu(margin - probs[:, 0] + torch.where(has_negative, hardest, probs[:, 0] - margin))
    return hinge.mean()


FINETUNE_LOSSES = {"binary": binary_loss, "multiclass": multiclass_loss, "triplet": triplet_loss}


def dual_encoder_loss(text: torch.Tensor, image: torch.Tensor, image_keys: torch.Tensor,
                      temperature: float = 0.05) -> torch.Tensor:
    """Symmetric in-batch InfoNCE between single-modality embeddings; other captions of the same image are not negatives."""
    logits = text @ image.t() / temperature
    same = image_keys.unsqueeze(0) == image_keys.unsqueeze(1)
    logits = logits.masked_fill(same & ~torch.eye(len(text), dtype=torch.bool, device=text.device), float("-inf"))
    target = torch.arange(len(text), device=text.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
