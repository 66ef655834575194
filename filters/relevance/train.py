"""Weakly supervised training of the LAIT relevance model on crawled pairs.

Positives are the pairs as crawled (some are wrong: that is the noise the model learns to find);
negatives are re-pairings: another image of the same page where there is one (hard), and a random
image (easy). The dual encoder learns from an in-batch contrastive loss; the head learns the
relevance probability from binary cross-entropy on positives and negatives. With ``members`` > 1,
that many models are trained from consecutive seeds and saved as one ensemble that averages them.
The threshold is set on held-out pages (``cost_threshold``; Youden's J at cost 1).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import os
import queue
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np
import torch
import torch.nn.functional as nnf

from filters.base import location_key
from filters.relevance import features as F
from filters.relevance.config import TrainConfig
from filters.relevance.data import choose_pairs, content_key, read_pairs_and_count
from filters.relevance.metrics import cost_threshold, noise_rate, roc_auc
from filters.relevance.scorer import CLIP_PREFIX
from model.relevance import (CONFIG_FILE, MAX_MEMBERS, MODEL_KIND, WEIGHTS_FILE, RelevanceConfig, RelevanceEnsemble,
                             RelevanceModel, missing_folders, remove_empty_folders, restore_interrupted_save,
                             save_model)
from pipeline.signals import blocked_signals, die_with_parent_hook

log = logging.getLogger(__name__)


@dataclass
class _Examples:
    """Prepared training tensors of the pairs whose image decoded."""

    images: torch.Tensor  # uint8 N x 3 x S x S
    tokens: torch.Tensor  # int64 N x L
    features: torch.Tensor  # float32 N x F
    page: np.ndarray  # int page index
    caption: np.ndarray  # int caption index (equal captions share one)
    image: np.ndarray  # int image index (equal image_id share one)
    page_keys: list[str]  # page of each page index: its URL without scheme or port (``location_key``)
    row: np.ndarray  # int index of each example's row in the rows prepared (undecodable ones have none)

    def __len__(self) -> int:
        return len(self.page)


def _index(values: Sequence[Hashable]) -> tuple[np.ndarray, list]:
    """Integer ids of values (equal values share one) and the value of each id."""
    lookup: dict[Hashable, int] = {}
    ids = np.array([lookup.setdefault(v, len(lookup)) for v in values], dtype=np.int64)
    return ids, list(lookup)


def _prepare(rows: list[dict], arch: RelevanceConfig, vocabulary: frozenset[str],
             tokenizer: str = F.TOKENIZER) -> tuple[_Examples, int]:
    """Decode and featurise every row; rows with undecodable images are skipped and counted."""

    def one(row):
        try:
            pixels, w, h = F.decode_image(row.get("image_bytes"), arch.image_size)
        except F.ImageDecodeError:
            return None
        tokens, text = F.caption_inputs(row.get("caption"), vocabulary, arch.num_buckets, arch.max_tokens, tokenizer)
        feats = np.concatenate([text, F.image_features(pixels, row.get("width") or w, row.get("height") or h)])
        return pixels.transpose(2, 0, 1), tokens, feats

    with ThreadPoolExecutor(max_workers=2) as pool:
        prepared = list(pool.map(one, rows))
    keep = [i for i, p in enumerate(prepared) if p is not None]
    skipped = len(rows) - len(keep)
    if not keep:
        raise ValueError("no pair with a decodable image to train on")
    kept_rows = [rows[i] for i in keep]
    # Pages by the URL without scheme or port, as they are sorted and held out: a page served by http and https
    # is one page, and the page ids (which order the batches' shuffle) are the same on any port.
    pages, page_keys = _index([location_key(r.get("page_url")) or r["pair_id"] for r in kept_rows])
    return _Examples(
        images=torch.from_numpy(np.stack([prepared[i][0] for i in keep])),
        tokens=torch.from_numpy(np.stack([prepared[i][1] for i in keep])),
        features=torch.from_numpy(np.stack([prepared[i][2] for i in keep]).astype(np.float32)),
        page=pages,
        # A caption is the words the model reads of it (case-folded, normalised, punctuation dropped): "A red
        # circle" and "a red circle." are one caption, whose re-pairings are no negatives of each other.
        caption=_index([tuple(F.words(r.get("caption"), tokenizer)) for r in kept_rows])[0],
        image=_index([r["image_id"] for r in kept_rows])[0],
        page_keys=page_keys,
        row=np.array(keep, dtype=np.int64),
    ), skipped


def _set_oov_rates(ex: _Examples, rows: list[dict], vocabulary: frozenset[str], tokenizer: str = F.TOKENIZER) -> None:
    """Measure every example's ``oov_rate`` feature against ``vocabulary`` (``rows``: the rows ``ex`` was prepared
    from), as ``_prepare`` would have with it."""
    column = F.TEXT_FEATURES.index("oov_rate")
    rates = [F.text_features(rows[i].get("caption"), vocabulary, tokenizer)[column] for i in ex.row]
    ex.features[:, column] = torch.from_numpy(np.array(rates, dtype=np.float32))


def _page_batches(ex: _Examples, idx: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Batches that keep a page's pairs together, so same-page negatives are in the batch."""
    pages = np.unique(ex.page[idx])
    rng.shuffle(pages)
    by_page = {p: [] for p in pages}
    for i in rng.permutation(idx):
        by_page[ex.page[i]].append(i)
    order = np.array([i for p in pages for i in by_page[p]], dtype=np.int64)
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def _negatives(ex: _Examples, batch: np.ndarray, gen: torch.Generator, hard: bool) -> torch.Tensor:
    """For each pair in the batch, the in-batch image to re-pair it with (-1 when there is none).

    ``hard``: prefer another image of the same page; otherwise any image with another caption.
    """
    cap, img, page = (torch.from_numpy(a[batch]) for a in (ex.caption, ex.image, ex.page))
    valid = (cap[:, None] != cap[None, :]) & (img[:, None] != img[None, :])
    pref = torch.rand(len(batch), len(batch), generator=gen)
    if hard:
        pref = pref + 2.0 * (page[:, None] == page[None, :]).float()
    pref = pref.masked_fill(~valid, -1.0)
    choice = pref.argmax(dim=1)
    return torch.where(valid.any(dim=1), choice, torch.full_like(choice, -1))


def _batch_loss(model: RelevanceModel, ex: _Examples, batch: np.ndarray, gen: torch.Generator,
                drop_rate: float = 0.0) -> torch.Tensor:
    """Contrastive + binary loss of one batch, ignoring the ``drop_rate`` hardest-to-fit positives."""
    images, tokens, feats = ex.images[batch], ex.tokens[batch], ex.features[batch]
    img = model.image_encoder(images)
    txt = model.text_encoder(tokens)
    sim = txt @ img.T  # [caption i, image j]
    cap, im = torch.from_numpy(ex.caption[batch]), torch.from_numpy(ex.image[batch])
    # a re-pairing with the same caption or the same image is not a negative
    same = (cap[:, None] == cap[None, :]) | (im[:, None] == im[None, :])
    eye = torch.eye(len(batch), dtype=torch.bool)
    logits = (sim * model.logit_scale.exp().clamp(max=100.0)).masked_fill(same & ~eye, float("-inf"))
    target = torch.arange(len(batch))
    per_pair = 0.5 * (nnf.cross_entropy(logits, target, reduction="none")
                      + nnf.cross_entropy(logits.T, target, reduction="none"))
    # Small-loss trick against label noise: the crawled pairs the model fits worst are most often
    # mismatches, so once the model has learnt the easy structure they stop pulling it.
    trusted = torch.ones(len(batch), dtype=torch.bool)
    if drop_rate > 0 and len(batch) >= 8:
        trusted = per_pair <= torch.quantile(per_pair.detach(), 1.0 - drop_rate)
    loss = per_pair[trusted].mean()

    n_text, n_img = len(F.TEXT_FEATURES), len(F.IMAGE_FEATURES)
    cos, pair_feats, labels = [sim.diagonal()[trusted]], [feats[trusted]], [torch.ones(int(trusted.sum()))]
    for hard in (True, False):
        neg = _negatives(ex, batch, gen, hard)
        rows = torch.nonzero(neg >= 0).squeeze(1)
        cols = neg[rows]
        cos.append(sim[rows, cols])
        # caption-side features from the caption, image-side features from the re-paired image
        pair_feats.append(torch.cat([feats[rows, :n_text], feats[cols, n_text:n_text + n_img]], dim=1))
        labels.append(torch.zeros(len(rows)))
    head = model.head_logit(torch.cat(cos), torch.cat(pair_feats))
    return loss + nnf.binary_cross_entropy_with_logits(head, torch.cat(labels))


@torch.no_grad()
def _scores_with_negatives(model: RelevanceModel, ex: _Examples, idx: np.ndarray, seed: int,
                           max_cross: int = 800) -> tuple[np.ndarray, np.ndarray]:
    """Scores of held-out positives, and of every re-pairing among (up to ``max_cross`` of) them."""
    model.eval()
    img = torch.cat([model.image_encoder(ex.images[idx[s:s + 256]]) for s in range(0, len(idx), 256)])
    txt = torch.cat([model.text_encoder(ex.tokens[idx[s:s + 256]]) for s in range(0, len(idx), 256)])
    feats = ex.features[idx]
    pos = torch.sigmoid(model.head_logit((img * txt).sum(-1), feats)).numpy()
    sub, rows, cols = _cross_pairs(ex, idx, seed, max_cross)
    n_text = len(F.TEXT_FEATURES)
    neg = []
    for s in range(0, len(rows), 65536):
        r, c = sub[rows[s:s + 65536].numpy()], sub[cols[s:s + 65536].numpy()]
        f = torch.cat([feats[r, :n_text], feats[c, n_text:]], dim=1)
        neg.append(torch.sigmoid(model.head_logit((txt[r] * img[c]).sum(-1), f)))
    if not neg:  # _train checks for them first; no placeholder scores, which would fake an AUC
        raise ValueError("no re-paired negatives among the held-out pairs")
    return pos, torch.cat(neg).numpy()


def _cross_pairs(ex: _Examples, idx: np.ndarray, seed: int, max_cross: int = 800):
    """(sub, rows, cols): every cross pair (caption i, image j) among (up to ``max_cross`` of) ``idx``
    with another caption and another image, the negatives the threshold is set on."""
    sub = np.random.default_rng(seed).permutation(len(idx))[:max_cross]
    cap, im = torch.from_numpy(ex.caption[idx[sub]]), torch.from_numpy(ex.image[idx[sub]])
    rows, cols = torch.nonzero((cap[:, None] != cap[None, :]) & (im[:, None] != im[None, :]), as_tuple=True)
    return sub, rows, cols


def train(pairs: str | list[dict], out_dir: str, config: TrainConfig | None = None, progress: bool = False,
          overwrite: bool = False) -> dict:
    """Train a relevance model on a pairs dataset (path or rows) and save it to ``out_dir``; returns a summary.

    ``out_dir`` must be new, empty, or hold an earlier relevance model, which only ``overwrite`` replaces."""
    config = config or TrainConfig()
    previous_threads = torch.get_num_threads()
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    try:
        return _train(pairs, out_dir, config, progress, overwrite)
    finally:
        torch.set_num_threads(previous_threads)


#: The least spread (highest minus lowest) of the held-out scores that is a trained model's. A training that
#: diverged without a NaN scores every pair alike (0.0, or 1.0); the tests' smallest trainings (3 pages, one
#: epoch) spread theirs over 0.03 or more.
MIN_SCORE_SPREAD = 1e-6
#: A score within this of 0 or 1 is saturated: its logit lies beyond +-13.8. The default recipe puts none of the
#: test scenes' held-out scores there (a thousandth of them within 1e-4); a training blown up by --lr 30 (one epoch,
#: 40 pages) put 99% of them there, exactly 0.0 and 1.0 among them, so their spread was 1.
SATURATED_SCORE = 1e-6
#: A model of which at least this share of the held-out scores is saturated...
SATURATED_SHARE = 0.5
#: ... and whose held-out AUC is below this (chance is 0.5) diverged: its confident scores rank true pairs no better
#: than a coin. A model merely confident ranks them above the re-pairings (AUC 1 for scores of 1.0 and 0.0) and is
#: kept; one undertrained (tiny trainings rank at chance too) is not saturated, and is kept as well.
CHANCE_AUC = 0.6


def _saturation(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float] | None:
    """(saturated share, AUC) of one model's scores of positives and re-pairings when they are a diverged model's
    (``SATURATED_SHARE``, ``CHANCE_AUC``), else None."""
    scores = np.concatenate([pos, neg]).astype(np.float64)
    share = float(((scores <= SATURATED_SCORE) | (scores >= 1.0 - SATURATED_SCORE)).mean())
    auc = roc_auc(scores, np.r_[np.ones(len(pos)), np.zeros(len(neg))] > 0)
    return (share, auc) if share >= SATURATED_SHARE and auc < CHANCE_AUC else None

#: What a saved relevance model's folder holds (``model.relevance.save_model``).
MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE)


def _row_order(row: dict) -> tuple:
    """The training order of a pair: ``content_key``, then the rest of what it holds, then its raw URLs and ids.

    A total order whatever order the rows come in: pairs of one content key (a page served by http and https)
    kept their input order before, and the model changed with it. Content before URLs, so that the port decides
    nothing that the content does; rows equal up to their URLs are one page's (``_prepare``) with equal tensors,
    so their order changes nothing either.
    """
    return (content_key(row), row.get("width") or 0, row.get("height") or 0, row.get("image_bytes") or b"",
            row.get("page_url") or "", row.get("image_url") or "", row.get("pair_id") or "",
            row.get("candidate_id") or "")


def _check_settings(config: TrainConfig) -> None:
    """ValueErrors for settings ``TrainConfig`` takes that training cannot use."""
    if config.members < 1:
        raise ValueError(f"members must be at least 1, got {config.members}")
    if config.members > MAX_MEMBERS:  # a model of more would be trained, then refused as it loads
        raise ValueError(f"members must be at most {MAX_MEMBERS}, got {config.members}")
    if config.processes is not None and config.processes < 1:
        raise ValueError(f"processes must be at least 1 (or None: one per CPU core), got {config.processes}")
    if config.processes is not None and config.processes > config.members:
        raise ValueError(f"processes {config.processes} is more than members {config.members}: each process trains "
                         f"one member, so at most {config.members} can run")


def _check_out_dir(out_dir: str, overwrite: bool) -> None:
    """Refuse a model folder that cannot be made, that holds anything but a relevance model, or that holds one
    without ``overwrite``; before training, so that it fails in seconds. Nothing is left behind: the folder is
    made by ``save_model`` once the model is trained.

    A name beginning with ``clip:`` is refused: every command reads such a name as a CLIP model spec
    (``clip:ARCH:WEIGHTS``), so the model was trained and saved, and then could not be named to load it.

    A folder that a save killed mid-swap left missing gets its earlier model back first
    (``restore_interrupted_save``): it is then a folder holding a model, which only ``overwrite`` replaces.

    A folder whose path is not UTF-8 text (``mkdir $'caf\\xe9'``) is refused: safetensors cannot open a model
    there, so it was trained, saved, and then could not be loaded (and printing its name failed the command)."""
    try:
        os.path.abspath(out_dir).encode("utf-8")
    except UnicodeEncodeError:  # os.fsdecode's stand-ins for the bytes that are not UTF-8
        shown = out_dir.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise ValueError(f"--out {shown}: the folder's path is not UTF-8 text, which a relevance model's must be "
                         "(safetensors cannot open its weights there); give --out another folder") from None
    if out_dir.startswith(CLIP_PREFIX):
        raise ValueError(f"--out {out_dir}: a name beginning with '{CLIP_PREFIX}' reads as a CLIP model spec "
                         f"(clip:ARCH:WEIGHTS) wherever a model is named; give --out another name "
                         f"(./{out_dir} is the same folder)")
    restore_interrupted_save(out_dir)
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"{out_dir}: exists and is not a folder (the model is a folder: config.json + model.safetensors)")
    if os.path.isdir(out_dir):
        entries = sorted(os.listdir(out_dir))
        if not entries:
            return
        others = [entry for entry in entries if entry not in MODEL_FILES]
        if others or not _is_relevance_model(out_dir):
            shown = ", ".join((others or entries)[:3]) + (", ..." if len(others or entries) > 3 else "")
            raise ValueError(f"{out_dir}: holds files that are not a relevance model ({shown}); "
                             "give --out a new or empty folder")
        if not overwrite:
            raise ValueError(f"{out_dir}: already holds a relevance model; pass --overwrite to replace it, "
                             "or give --out a new folder")
        return
    missing = missing_folders(os.path.abspath(out_dir))
    try:  # made and removed again: the check that it can be made
        os.makedirs(out_dir)
    except OSError as exc:
        raise ValueError(f"{out_dir}: cannot create the model folder ({exc})") from None
    remove_empty_folders(missing)


def _is_relevance_model(folder: str) -> bool:
    """Whether ``folder`` holds a config.json that a relevance model's save wrote (its ``kind``)."""
    try:
        with open(os.path.join(folder, CONFIG_FILE), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("kind") == MODEL_KIND


def _train(pairs: str | list[dict], out_dir: str, config: TrainConfig, progress: bool, overwrite: bool) -> dict:
    started = time.monotonic()
    _check_settings(config)
    _check_out_dir(out_dir, overwrite)
    # With max_pairs, the pairs are chosen by content (``choose_pairs``), and then put in one order: pair ids
    # hash the URLs, port included, so the same site served on another port (or crawled into other shards,
    # or passed in another order) must change neither the pairs, the batches, the split nor the threshold.
    if isinstance(pairs, str):
        rows, input_pairs = read_pairs_and_count(pairs, limit=config.max_pairs)
    else:
        pairs = list(pairs)
        rows, input_pairs = choose_pairs(pairs, config.max_pairs), len(pairs)
    rows.sort(key=_row_order)
    if len(rows) < 2:
        raise ValueError(f"need at least 2 pairs to train, got {len(rows)}")
    arch = RelevanceConfig(image_size=config.image_size, embed_dim=config.embed_dim,
                           num_features=len(F.TEXT_FEATURES) + len(F.IMAGE_FEATURES))
    ex, skipped = _prepare(rows, arch, frozenset(), F.TOKENIZER)  # the OOV rates are set once the split is known
    is_val = _held_out_mask(ex, config.val_fraction)
    train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    if len(val_idx) < 20 or len(train_idx) < 2:
        # too few pages to hold some out: train on everything and set the threshold on it too
        train_idx = val_idx = np.arange(len(ex))
    # The OOV vocabulary is the training pairs' words: built from every pair, it held the held-out captions' words
    # too, which were then never out of vocabulary, as a new crawl's are.
    vocabulary = F.build_vocabulary((rows[i].get("caption") for i in ex.row[train_idx]), tokenizer=F.TOKENIZER)
    _set_oov_rates(ex, rows, frozenset(vocabulary), F.TOKENIZER)
    if len(_cross_pairs(ex, val_idx, config.seed)[1]) == 0:
        which = "held-out pairs" if val_idx is not train_idx else "pairs (nothing held out: all of them)"
        raise ValueError(f"no negatives to set the threshold on: the {len(val_idx)} {which} have no "
                         "re-pairing with another caption and another image (identical captions or images?)")
    log.info("training on %d pairs (%d held out, %d undecodable skipped)", len(train_idx),
             len(val_idx) if val_idx is not train_idx else 0, skipped)

    members = config.members
    bar = _progress(members * config.epochs * math.ceil(len(train_idx) / config.batch_size), progress)
    seeds = [config.seed + k for k in range(members)]
    processes = min(members, config.processes or os.cpu_count() or 1)
    if processes > 1 and multiprocessing.current_process().daemon:
        processes = 1  # a daemonic process (a pool worker) may not start processes of its own
    if processes > 1:
        fitted = _fit_in_processes(ex, train_idx, arch, config, seeds, processes, bar)
    else:
        fitted = [_fit(ex, train_idx, arch, config, seed, bar) for seed in seeds]
    bar.close()
    for seed, (_, loss) in zip(seeds, fitted):
        if not math.isfinite(loss):  # _fit stops at the first step whose loss is not finite
            member = f" (member of seed {seed})" if members > 1 else ""
            raise ValueError(f"training diverged (final loss {loss}): a training step's loss was not finite{member}; "
                             "try a lower lr")
    # Every member scores the same held-out positives and re-pairings; the threshold is set on their average.
    scored = [_scores_with_negatives(member, ex, val_idx, config.seed) for member, _ in fitted]
    pos, neg = np.mean([p for p, _ in scored], axis=0), np.mean([n for _, n in scored], axis=0)
    model = fitted[0][0] if members == 1 else RelevanceEnsemble([member for member, _ in fitted])
    last_loss = float(np.mean([loss for _, loss in fitted]))
    threshold = cost_threshold(pos, neg, config.mismatch_cost)
    if not math.isfinite(threshold):
        raise ValueError(f"training diverged (final loss {last_loss}): no finite threshold; try a lower lr")
    held_out = val_idx is not train_idx
    scores = np.concatenate([pos, neg])
    if float(scores.max() - scores.min()) < MIN_SCORE_SPREAD:
        # Diverged without a NaN (--lr 1000): every score 0.0 (or 1.0), and a threshold below them all that keeps
        # every pair. Saved, it filtered nothing, exit 0.
        which = "held-out" if held_out else "training"
        raise ValueError(f"training diverged (final loss {last_loss}): every {which} score is {float(scores[0]):.6g}, "
                         "nothing to set a threshold between; try a lower lr")
    for seed, (member_pos, member_neg) in zip(seeds, scored):
        # Diverged without a NaN, yet not to one value (--lr 30): scores of 0.0 and 1.0 ranked at chance, and a cut
        # between them. Each member alone: the average of an ensemble's is not saturated when each of them is.
        saturated = _saturation(member_pos, member_neg)
        if saturated is not None:
            which = "held-out" if held_out else "training"
            member = f" of the member of seed {seed}" if members > 1 else ""
            raise ValueError(f"training diverged (final loss {last_loss}): {saturated[0]:.0%} of the {which} "
                             f"scores{member} are within {SATURATED_SCORE:g} of 0 or 1 and rank true pairs no better "
                             f"than chance (AUC {saturated[1]:.2f}); try a lower lr")
    summary = {
        "input_pairs": input_pairs,
        "pairs": len(rows),
        "left_out_by_max_pairs": input_pairs - len(rows),
        "members": members,
        "trained_on": int(len(train_idx)),
        "held_out": int(len(val_idx)) if held_out else 0,
        "skipped_undecodable": skipped,
        "final_loss": last_loss if math.isfinite(last_loss) else None,  # JSON has no NaN
        "threshold": threshold,
        "estimated_noise_rate": noise_rate(pos, neg),
        # Measured on the held-out pages only. With none held out, pos and neg are the training pairs' scores:
        # numbers of pairs the model has learnt, not held-out ones, so null (and held_out_none says why).
        "held_out_auc": roc_auc(np.concatenate([pos, neg]), np.r_[np.ones(len(pos)), np.zeros(len(neg))] > 0)
        if held_out else None,
        "held_out_kept": float((pos >= threshold).mean()) if held_out else None,
        "held_out_negatives_removed": float((neg < threshold).mean()) if held_out else None,
        "seconds": round(time.monotonic() - started, 2),
    }
    if not held_out:
        chosen = int(is_val.sum())
        why = (f"val_fraction {config.val_fraction} held out {chosen} pairs, fewer than 20" if chosen < 20 else
               f"val_fraction {config.val_fraction} left {len(ex) - chosen} pairs to train on, fewer than 2")
        summary["held_out_none"] = (f"nothing held out ({why}): trained on all {len(train_idx)} pairs and set the "
                                    "threshold and estimated_noise_rate on them; no held-out AUC, kept or removed "
                                    "share to report")
    save_model(model, out_dir, {
        "threshold": threshold,
        "text_features": list(F.TEXT_FEATURES),
        "image_features": list(F.IMAGE_FEATURES),
        "tokenizer": F.TOKENIZER,  # the scorer reads captions as this model was trained to
        "vocabulary": vocabulary,
        "training": {**dataclasses.asdict(config), **summary},
    })
    log.info("relevance model saved to %s: %s", out_dir, summary)
    return summary


class _TableAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW(foreach=True)``, bit for bit, whose step does the Adam arithmetic of one 2-D parameter
    (the text embedding table) on the rows that have ever had a gradient only.

    The table is 97% of the model's parameters, and a batch touches a few hundred of its 32,768 rows, yet torch's
    step runs a dozen passes over all of it: 45% of a training step. A row whose gradient has always been zero
    has an exp_avg and exp_avg_sq of exactly +0, which the step leaves +0 (a lerp and an addcmul of zeros), and
    its Adam update is ``p + step_size * (+0 / eps)``, which adds a zero: such a row changes only by the
    decoupled weight decay, ``p * (1 - lr * weight_decay)``, which is applied to the whole table as torch does,
    first. The other rows go through torch's own ops, in its order and with its scalars
    (``torch.optim.adam._multi_tensor_adam``, which on the CPU runs the per-tensor op of each foreach op), on
    a gathered copy: elementwise ops give an element the same result wherever it lies (checked by
    tests/relevance/test_table_optimizer.py against torch's AdamW, weights and state).

    ``step(rows=...)`` names the table rows this step's gradient may be nonzero in (the token ids the batch's
    forward passes indexed; a superset is fine); without it the gradient is scanned for them, exactly but at
    the cost of two passes over the table. The state is torch's (step, exp_avg, exp_avg_sq, dense), plus
    ``touched_rows``, the mask of rows that have been updated (rebuilt from exp_avg and exp_avg_sq when absent).
    Only the defaults of the other settings (amsgrad, maximize, capturable, differentiable, not fused).
    """

    def __init__(self, params, table: torch.nn.Parameter, lr: float, weight_decay: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if table.dim() != 2:
            raise ValueError(f"the table must be a 2-D parameter, got one of shape {tuple(table.shape)}")
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=True)
        if not any(p is table for group in self.param_groups for p in group["params"]):
            raise ValueError("the table is not one of the optimizer's parameters")
        self.table = table

    @torch.no_grad()
    def step(self, closure=None, rows: torch.Tensor | None = None):
        """One AdamW step of every parameter; ``rows``: ids of the table rows whose gradient may be nonzero."""
        if closure is not None:
            raise ValueError("_TableAdamW.step takes no closure")
        grad = self.table.grad
        self.table.grad = None  # torch's step leaves a parameter without a gradient alone: the others' step
        try:
            super().step()
        finally:
            self.table.grad = grad
        if grad is not None:  # as torch: no gradient, no step (nor weight decay)
            self._table_step(grad, rows)

    def _table_step(self, grad: torch.Tensor, rows: torch.Tensor | None) -> None:
        if grad.is_sparse:
            raise RuntimeError("AdamW does not support sparse gradients")
        table = self.table
        group = next(g for g in self.param_groups if any(p is table for p in g["params"]))
        state = self.state[table]
        if not state:  # torch's lazy initialisation (Adam._init_group, neither capturable nor fused)
            scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
            state["step"] = torch.tensor(0.0, dtype=scalar)
            state["exp_avg"] = torch.zeros_like(table, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(table, memory_format=torch.preserve_format)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        touched = state.get("touched_rows")
        if touched is None:  # a state without the mask (torch's own): every row whose moments are not +0
            touched = state["touched_rows"] = (_nonzero_bits(exp_avg) | _nonzero_bits(exp_avg_sq)).any(dim=1)
        if rows is None:
            touched |= grad.abs().amax(dim=1) != 0  # NaN included: a NaN gradient is not a zero one
        else:
            touched[rows.reshape(-1)] = True
        lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        # _multi_tensor_adam's ops, in its order, with its Python scalars
        state["step"].add_(1.0)
        if weight_decay != 0:
            table.mul_(1 - lr * weight_decay)
        index = touched.nonzero().squeeze(1)
        g, avg, avg_sq = grad.index_select(0, index), exp_avg.index_select(0, index), exp_avg_sq.index_select(0, index)
        avg.lerp_(g, 1 - beta1)
        avg_sq.mul_(beta2)
        avg_sq.addcmul_(g, g, value=1 - beta2)
        step = state["step"].item()
        step_size = (lr / (1 - beta1 ** step)) * -1
        denom = avg_sq.sqrt()
        denom.div_((1 - beta2 ** step) ** 0.5)
        denom.add_(eps)
        updated = table.index_select(0, index)
        updated.addcdiv_(avg, denom, value=step_size)
        table.index_copy_(0, index, updated)
        exp_avg.index_copy_(0, index, avg)
        exp_avg_sq.index_copy_(0, index, avg_sq)


def _nonzero_bits(t: torch.Tensor) -> torch.Tensor:
    """Where a float tensor is not +0 (a -0 counts as nonzero: the bits, not the value)."""
    return t.view(torch.int32) != 0 if t.dtype == torch.float32 else (t != 0) | torch.signbit(t)


#: Whether training steps the text embedding table with ``_TableAdamW`` (False: torch's AdamW, the reference
#: the tests compare it with; the weights are the same, bit for bit).
_TABLE_ROWS_ONLY = True


def _fit(ex: _Examples, train_idx: np.ndarray, arch: RelevanceConfig, config: TrainConfig, seed: int,
         bar) -> tuple[RelevanceModel, float]:
    """One model trained on ``train_idx`` from ``seed`` (initialisation, batch order, negatives); its last loss,
    which is the first one not finite where there is one (training stops there)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = RelevanceModel(arch)
    model.set_standardisation(ex.features[train_idx])
    # foreach: the same updates, bit for bit, as the default per-tensor loop on the CPU, in a fifth less of the
    # training's CPU time. The text embedding table is nearly all of the parameters, and a batch touches a few
    # hundred of its rows: _TableAdamW does torch's arithmetic on those only, the same updates again.
    table = model.text_encoder.embed.weight
    if _TABLE_ROWS_ONLY:
        optimizer = _TableAdamW(model.parameters(), table, lr=config.lr, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                      foreach=True)
    steps_per_epoch = math.ceil(len(train_idx) / config.batch_size)
    total = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=max(total, 1),
                                                    pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    last_loss, step, diverged = float("nan"), 0, False
    for epoch in range(config.epochs):
        if diverged:
            break
        model.train()
        for batch in _page_batches(ex, train_idx, config.batch_size, rng):
            if len(batch) < 2:
                continue
            warm = step >= config.trust_after * total
            step += 1
            loss = _batch_loss(model, ex, batch, gen, config.drop_rate if warm else 0.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if _TABLE_ROWS_ONLY:  # the table's gradient is zero but in the rows of the batch's tokens
                optimizer.step(rows=ex.tokens[batch])
            else:
                optimizer.step()
            scheduler.step()
            last_loss = loss.item()
            bar.update(1)
            bar.set_postfix(seed=seed, epoch=epoch + 1, loss=f"{last_loss:.3f}")
            # A loss that is not finite once is a diverged training, whatever the later ones: _train refuses it on
            # this last loss, and the steps left would be wasted.
            diverged = not math.isfinite(last_loss)
            if diverged:
                break
    if step == 0:  # every batch held one pair: an untrained model must not be saved as a trained one
        raise ValueError(f"no training step ran: {len(train_idx)} training pair(s) in batches of {config.batch_size} "
                         "left no batch of 2 or more pairs")
    return model, last_loss


class _QueuedProgress:
    """A progress bar stand-in for a member trained in another process: step counts go to a queue."""

    def __init__(self, steps: queue.Queue, every: int = 20):
        self.steps, self.every, self.pending = steps, every, 0

    def update(self, n: int = 1) -> None:
        self.pending += n
        if self.pending >= self.every:
            self.flush()

    def set_postfix(self, **_) -> None:
        pass

    def flush(self) -> None:
        if self.pending:
            self.steps.put(self.pending)
            self.pending = 0


def _member_process(ex: _Examples, train_idx: np.ndarray, arch: RelevanceConfig, config: TrainConfig, seed: int,
                    threads: int, steps, results, parent: int) -> None:
    """Entry point of a member's process: train, then send back (seed, weights as numpy, loss, error).

    It dies with ``parent`` (the training process's pid), set first thing: a ``lait`` killed by SIGKILL cannot end
    its members, which would otherwise train on unseen, then block for good on a result queue nobody reads."""
    die_with_parent = die_with_parent_hook(parent)
    if die_with_parent is not None:
        die_with_parent()
    torch.set_num_threads(threads)
    try:
        bar = _QueuedProgress(steps)
        model, loss = _fit(ex, train_idx, arch, config, seed, bar)
        bar.flush()
        results.put((seed, {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}, loss, None))
    except BaseException as exc:  # reported to the parent, which raises it
        results.put((seed, None, None, f"{type(exc).__name__}: {exc}"))


def _fit_in_processes(ex: _Examples, train_idx: np.ndarray, arch: RelevanceConfig, config: TrainConfig,
                      seeds: list[int], processes: int, bar) -> list[tuple[RelevanceModel, float]]:
    """``_fit`` of every seed, ``processes`` at a time in spawned processes; the same models as in-process.

    Each member is seeded alone and runs on as many torch threads as the parent (``torch_threads``), so
    where it runs changes nothing; with ``torch_threads`` None the parent's threads are shared out
    instead, so the processes do not oversubscribe the cores. The examples travel through shared memory
    (torch's multiprocessing pickler).
    """
    ctx = torch.multiprocessing.get_context("spawn")
    steps, results = ctx.Queue(), ctx.Queue()
    threads = torch.get_num_threads() if config.torch_threads else max(1, torch.get_num_threads() // processes)
    waiting, running, fitted = list(seeds), {}, {}
    try:
        while waiting or running:
            while waiting and len(running) < processes:
                seed = waiting.pop(0)
                member = ctx.Process(target=_member_process, daemon=True, name=f"relevance-member-{seed}",
                                     args=(ex, train_idx, arch, config, seed, threads, steps, results, os.getpid()))
                # A member never takes Ctrl-C (it keeps the blocked SIGINT it starts with): this process takes it
                # and ends them below. Before, a member still importing printed a KeyboardInterrupt traceback.
                # Started from this thread, which waits for it: a member dies with the thread that started it
                # (``die_with_parent_hook``), so with this process, not with a thread that ends before it.
                # A member is running (and ended below) once it started: one whose start failed is not, and its
                # error is the one raised (ending it raised an AttributeError over it).
                with blocked_signals({signal.SIGINT}):
                    member.start()
                running[seed] = member
            _drain(steps, bar)
            try:
                seed, state, loss, error = results.get(timeout=0.2)
            except queue.Empty:
                dead = [s for s, p in running.items() if p.exitcode is not None]
                if dead:
                    try:  # a result sent just before exiting may still be on its way
                        seed, state, loss, error = results.get(timeout=2.0)
                    except queue.Empty:
                        raise RuntimeError(f"relevance member of seed {dead[0]} died (exit code "
                                           f"{running[dead[0]].exitcode}) without a result") from None
                else:
                    continue
            running.pop(seed).join()
            if error is not None:
                raise RuntimeError(f"relevance member of seed {seed} failed: {error}")
            model = RelevanceModel(arch)
            model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
            fitted[seed] = (model, loss)
        _drain(steps, bar)
    finally:
        for process in running.values():
            process.terminate()
            process.join()
    return [fitted[seed] for seed in seeds]


def _drain(steps, bar) -> None:
    while True:
        try:
            bar.update(steps.get_nowait())
        except queue.Empty:
            return


def _held_out_mask(ex: _Examples, fraction: float) -> np.ndarray:
    """Held-out flag per example, chosen by a hash of its page so that no page is in both splits."""
    is_val_page = np.array([int(hashlib.sha1(location_key(k).encode()).hexdigest()[:8], 16) % 1000 < fraction * 1000
                            for k in ex.page_keys])
    return is_val_page[ex.page]


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="relevance train", unit="step", disable=not enabled, leave=False)
