"""A hand-made run folder in the stage formats, from a small generated site, for the demo tests.

It plays the stages by the ledger's rules (what a perfect crawl and filter would do, with two
planted mistakes: one clean pair rejected as ``low_relevance`` and one mismatch kept), so the
planted metrics, the audit and the report have known answers.
"""
import csv
import hashlib
import io
import json
import os

import numpy as np
from PIL import Image

import schemas
from demo.scenes import CLASSES, image_id

BASE = "http://127.0.0.1:8123"

CRAWL_REASONS = {"tiny_icon": "image_too_small", "banner": "aspect_ratio_out_of_range",
                 "corrupt": "image_decode_error", "opt_out": "opt_out_x_robots_tag"}
FILTER_REASONS = {"non_english": "lang_not_target", "boilerplate": "caption_boilerplate",
                  "reused_caption": "caption_shared_by_too_many_images", "mismatch": "low_relevance",
                  "reused_image": "duplicate_image_not_best_text"}
UNCOLLECTED = {"decorative", "robots_disallowed"}


def _cid(item):
    return hashlib.sha1(f"{item['page']}|{item['image']}|{item['caption']}".encode()).hexdigest()


def _stats(path, stage, n_in, kept, reasons, **extra):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "stats.json"), "w") as f:
        json.dump({"stage": stage, "in": n_in, "kept": kept, "rejected": sum(reasons.values()),
                   "rejected_by_reason": reasons, **extra}, f)


def make_run(run_dir, site, with_training=True):
    """Write crawl/, filter/, features/, train/*.csv, eval.json under ``run_dir``; returns facts about it."""
    run_dir = str(run_dir)
    first_clean = next(i for i in site.ledger if i["category"] == "clean")
    first_mismatch = next(i for i in site.ledger if i["category"] == "mismatch")
    first_reused = next(i for i in site.ledger if i["category"] == "reused_image")
    candidates, crawl_rejects, pairs, filter_rejects = [], [], [], []
    for item in site.ledger:
        cat = item["category"]
        if cat in UNCOLLECTED or (cat == "opt_out" and item["detail"] != "image_header_noai"):
            continue
        body = site.resources[item["image"]].body
        urls = {"page_url": BASE + item["page"], "image_url": BASE + item["image"]}
        if cat in CRAWL_REASONS:
            crawl_rejects.append(schemas.rejected_row("crawl", CRAWL_REASONS[cat], None, caption=item["caption"],
                                                      **urls))
            continue
        img = Image.open(io.BytesIO(body))
        cand = {"candidate_id": _cid(item), "image_id": image_id(body), "alt": item["caption"],
                "page_lang": item["page_lang"], "image_bytes": body, "width": img.width, "height": img.height,
                "format": img.format, "num_bytes": len(body), "source": "crawl", "http_status": 200, **urls}
        candidates.append(cand)
        reason = FILTER_REASONS.get(cat)
        if item is first_mismatch or item is first_reused:
            reason = None
        if item is first_clean:
            reason = "low_relevance"
        if reason:
            # Boilerplate rejects carry only the candidate id: readers must join back to the candidates.
            ids = {"candidate_id": cand["candidate_id"]} if cat == "boilerplate" else {
                "candidate_id": cand["candidate_id"], "image_id": cand["image_id"], **urls}
            filter_rejects.append(schemas.rejected_row("filter", reason, f"planted {cat}", caption=item["caption"], **ids))
        else:
            pairs.append({"pair_id": "p" + cand["candidate_id"], "candidate_id": cand["candidate_id"],
                          "image_id": cand["image_id"], "caption": item["caption"], "text_source": "alt",
                          "lang": "en", "lang_score": 0.98, "relevance": 0.6 + 0.3 * (len(pairs) % 5) / 5,
                          "width": cand["width"], "height": cand["height"], "image_bytes": body, **urls})

    crawl = os.path.join(run_dir, "crawl")
    schemas.write_table(schemas.to_table(candidates, "candidates"), os.path.join(crawl, "candidates", "part-00000.parquet"))
    schemas.write_table(schemas.to_table(crawl_rejects, "rejected"), os.path.join(crawl, "rejected", "part-00000.parquet"))
    creasons = {}
    for r in crawl_rejects:
        creasons[r["reason"]] = creasons.get(r["reason"], 0) + 1
    _stats(crawl, "crawl", len(candidates) + len(crawl_rejects), len(candidates), creasons)

    filt = os.path.join(run_dir, "filter")
    schemas.write_table(schemas.to_table(pairs, "pairs"), os.path.join(filt, "pairs", "part-00000.parquet"))
    schemas.write_table(schemas.to_table(filter_rejects, "rejected"), os.path.join(filt, "rejected", "part-00000.parquet"))
    freasons = {}
    for r in filter_rejects:
        freasons[r["reason"]] = freasons.get(r["reason"], 0) + 1
    scores = [p["relevance"] for p in pairs] + [0.1, 0.2, 0.15]
    counts, edges = np.histogram(scores, bins=10, range=(0, 1))
    _stats(filt, "filter", len(candidates), len(pairs), freasons,
           relevance={"threshold": 0.4, "keep_rate": None,
                      "histogram": {"edges": edges.tolist(), "counts": counts.tolist()}})

    feats = os.path.join(run_dir, "features")
    regions, seen = [], set()
    rng = np.random.default_rng(0)
    for p in pairs:
        if p["image_id"] in seen:
            continue
        seen.add(p["image_id"])
        n = 3
        w, h = p["width"], p["height"]
        boxes = np.array([[5, 5, w / 2, h / 2], [w / 3, h / 3, w - 4, h - 4], [10, h / 2, w / 2, h - 2]], np.float32)
        regions.append({"image_id": p["image_id"], "image_width": w, "image_height": h, "num_boxes": n,
                        "boxes": boxes, "features": rng.normal(size=(n, 8)).astype(np.float16),
                        "class_ids": np.array([0, 2, 5], np.int32), "class_scores": np.array([0.9, 0.7, 0.4], np.float32),
                        "topk_class_ids": np.array([[0, 1], [2, 3], [5, 6]], np.int32),
                        "topk_class_probs": np.array([[0.9, 0.1], [0.7, 0.2], [0.4, 0.3]], np.float32),
                        "detector": "demo"})
    schemas.write_table(schemas.to_table(regions, "regions", feature_dim=8), os.path.join(feats, "regions", "part-00000.parquet"))
    _stats(feats, "features", len(seen), len(regions), {})
    with open(os.path.join(feats, "classes.json"), "w") as f:
        json.dump(list(CLASSES), f)

    if with_training:
        train = os.path.join(run_dir, "train")
        os.makedirs(train, exist_ok=True)
        for stage, tasks in (("pretrain1", ("mlm", "moc", "mrfr", "itm")), ("pretrain2", ("mlm", "moc", "mrfr", "itm")),
                             ("finetune", ("itm",))):
            with open(os.path.join(train, f"{stage}.csv"), "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["stage", "step", "task", "loss"])
                for step in range(0, 50, 5):
                    for k, task in enumerate(tasks):
                        writer.writerow([stage, step, task, f"{(3 - k * 0.4) * np.exp(-step / 30) + 0.1:.4f}"])
        with open(os.path.join(run_dir, "eval.json"), "w") as f:
            json.dump({"image_retrieval": {"R@1": 0.31, "R@5": 0.62, "R@10": 0.8, "chance_R@1": 0.0067},
                       "sentence_retrieval": {"R@1": 0.35, "R@5": 0.66, "R@10": 0.83, "chance_R@1": 0.0067}}, f)
    return {"candidates": len(candidates), "pairs": len(pairs), "crawl_rejects": len(crawl_rejects),
            "filter_rejects": len(filter_rejects), "regions": len(regions)}
