"""Reading regions + captions: sharding over ranks and workers, locations, class counts, caption import."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch

import schemas
from imagebert_testlib import REPO
from model.config import DatasetConfig
from model.data import (Collate, LengthBuckets, PairStream, bucket_ceilings, dataset_report, feature_dim_of,
                        location_vectors, make_loader, num_classes_of, stable_key)
from model.tokenizer import special_ids, train_wordpiece
from imagebert_testlib import tiny_config


def _tokenizer_json(texts=("a small red circle left of a large blue square",)):
    return train_wordpiece(list(texts) * 3, vocab_size=80).to_str()


def _write_regions(path, rows, dim=4):
    schemas.write_table(schemas.to_table(rows, "regions", feature_dim=dim), path, "regions", row_group_size=3)


def _region_row(image_id, n, dim=4, size=(100, 50)):
    return {"image_id": image_id, "image_width": size[0], "image_height": size[1], "num_boxes": n,
            "boxes": np.array([[10, 5, 60, 30]] * n, np.float32).reshape(n, 4),
            "features": np.ones((n, dim), np.float16), "class_ids": np.arange(n, dtype=np.int32),
            "topk_class_ids": [[i, i + 1] for i in range(n)], "topk_class_probs": [[0.7, 0.3]] * n}


def test_location_vector_is_the_papers_five_numbers():
    loc = location_vectors(np.array([[10, 5, 60, 30]], np.float32), 100, 50)
    assert np.allclose(loc, [[0.1, 0.1, 0.6, 0.6, 0.5 * 0.5]])
    # No image size: the boxes' extent stands in, values stay in [0, 1].
    loc = location_vectors(np.array([[0, 0, 200, 100]], np.float32), None, 0)
    assert np.allclose(loc, [[0, 0, 1, 1, 1]])


def test_stream_shards_over_ranks_and_workers_without_loss_or_overlap(synth_dir):
    config = tiny_config(feature_dim=16, max_regions=8)
    datasets = [DatasetConfig(f"{synth_dir}/regions", f"{synth_dir}/captions", "train")]
    tokenizer_json = _tokenizer_json()
    seen = []
    for rank in range(2):
        loader = torch.utils.data.DataLoader(
            PairStream(datasets, tokenizer_json, config, seed=3, rank=rank, world_size=2, infinite=False,
                       shuffle_buffer=16),
            batch_size=None, num_workers=2, collate_fn=lambda example: example["caption_id"])
        seen.append(list(loader))
    assert not set(seen[0]) & set(seen[1])
    everything = seen[0] + seen[1]
    assert len(everything) == len(set(everything)) == 320, "every train caption once per epoch"
    report = dataset_report(datasets)
    assert report == {"pairs": 320, "images": 160, "captions_without_regions": 0, "images_without_captions": 40,
                      "repeated_image_rows": 0, "blank_captions": 0, "repeated_caption_rows": 0}


def test_stream_order_depends_on_the_seed_only(synth_dir):
    config = tiny_config(feature_dim=16, max_regions=8)
    datasets = [DatasetConfig(f"{synth_dir}/regions", f"{synth_dir}/captions", "train")]
    tokenizer_json = _tokenizer_json()

    def first_batch(seed):
        batch = next(iter(make_loader(datasets, tokenizer_json, config, 8, seed=seed, shuffle_buffer=64)))
        return batch["caption_keys"].tolist()

    assert first_batch(1) == first_batch(1)
    assert first_batch(1) != first_batch(2)


def _ragged_dataset(tmp_path, images=40):
    """Images of 1 to 16 regions, each with one caption of 1 to 12 words."""
    rng = np.random.default_rng(5)
    counts = rng.integers(1, 17, images)
    rows = [_region_row(f"img{i:03d}", int(n)) for i, n in enumerate(counts)]
    _write_regions(str(tmp_path / "regions" / "part-00000.parquet"), rows)
    words = ["red", "circle", "left", "of", "blue", "square"]
    captions = [{"caption_id": f"c{i:03d}", "image_id": f"img{i:03d}", "split": "train",
                 "caption": " ".join(words[j % 6] for j in range(int(rng.integers(1, 13))))} for i in range(images)]
    schemas.write_table(schemas.to_table(captions, "captions"), str(tmp_path / "captions" / "part-00000.parquet"),
                        "captions")
    return [DatasetConfig(str(tmp_path / "regions"), str(tmp_path / "captions"), "train")], dict(zip(
        [c["caption_id"] for c in captions], counts.tolist()))


def test_bucket_ceilings_are_evenly_spaced_up_to_the_limit():
    assert bucket_ceilings(100, 4) == [25, 50, 75, 100]
    assert bucket_ceilings(40, 2) == [20, 40]
    assert bucket_ceilings(10, 3) == [4, 7, 10]
    assert bucket_ceilings(7, 1) == [7]
    assert bucket_ceilings(2, 4) == [1, 2]  # more buckets than lengths: one per length


def test_length_buckets_batch_like_lengths_and_pad_to_their_ceiling(tmp_path):
    config = tiny_config(feature_dim=4, max_regions=16, num_classes=20)  # max_text_len 12: text buckets of 6 and 12
    datasets, region_counts = _ragged_dataset(tmp_path)
    tokenizer_json = _tokenizer_json()
    text_ceilings, region_ceilings = bucket_ceilings(config.max_text_len, 2), bucket_ceilings(16, 4)
    seen = []
    for batch in make_loader(datasets, tokenizer_json, config, 4, infinite=False, fixed_shapes=True,
                             shuffle_buffer=8, length_buckets=[2, 4]):
        text_len, regions_len = batch["input_ids"].shape[1], batch["region_mask"].shape[1]
        assert text_len in text_ceilings and regions_len in region_ceilings
        lengths, counts = batch["text_mask"].sum(1), batch["region_mask"].sum(1)
        assert int(lengths.max()) <= text_len and int(counts.max()) <= regions_len
        floor_text = max([c for c in text_ceilings if c < text_len], default=0)
        floor_regions = max([c for c in region_ceilings if c < regions_len], default=0)
        assert bool((lengths > floor_text).all()) and bool((counts > floor_regions).all()), "the smallest bucket fits"
        seen.extend(batch["caption_keys"].tolist())
    assert sorted(seen) == sorted(batch_keys_of(make_loader(datasets, tokenizer_json, config, 4, infinite=False)))
    assert len(seen) == len(region_counts), "a finite pass gives every example once, the partly filled buckets too"
    # Eager (no fixed shapes): like examples still batch together, each batch trimmed to its longest member.
    eager = list(make_loader(datasets, tokenizer_json, config, 4, infinite=False, shuffle_buffer=8,
                             length_buckets=[2, 4]))
    assert sum(b["region_mask"].numel() for b in eager) < sum(
        b["region_mask"].numel() for b in make_loader(datasets, tokenizer_json, config, 4, infinite=False,
                                                      shuffle_buffer=8))
    for batch in eager:
        assert batch["region_mask"].shape[1] == int(batch["region_mask"].sum(1).max())


def batch_keys_of(loader):
    return [key for batch in loader for key in batch["caption_keys"].tolist()]


def test_length_buckets_in_an_endless_stream_are_full_deterministic_and_leave_no_example_out(tmp_path):
    config = tiny_config(feature_dim=4, max_regions=16, num_classes=20)
    datasets, region_counts = _ragged_dataset(tmp_path)
    tokenizer_json = _tokenizer_json()

    def first(count, seed=1, workers=0):
        batches = iter(make_loader(datasets, tokenizer_json, config, 4, seed=seed, shuffle_buffer=8,
                                   length_buckets=[2, 4], num_workers=workers))
        return [next(batches)["caption_keys"].tolist() for _ in range(count)]

    run = first(30)  # 120 examples: three epochs of 40
    assert all(len(keys) == 4 for keys in run), "an endless stream leaves only full batches"
    assert run == first(30), "the same seed gives the same batches (what an exact resume replays)"
    assert run != first(30, seed=2)
    used = [key for keys in run for key in keys]
    # 120 examples left in full batches, while the buckets hold up to 8 x 3 more: the stream was read
    # between 3 and 3.6 epochs, so every example has left at least twice and none more than four times.
    counts = {key: used.count(key) for key in set(used)}
    assert len(counts) == len(region_counts) and 2 <= min(counts.values()) and max(counts.values()) <= 4
    two_workers = first(30, workers=2)  # each worker buckets its own share of the row groups
    assert all(len(keys) == 4 for keys in two_workers)
    assert {key for keys in two_workers for key in keys} == set(counts)


def _example(caption_id: str, tokens: int, regions: int) -> dict:
    image = type("Image", (), {"features": np.ones((regions, 4), np.float16), "image_id": f"i-{caption_id}"})()
    return {"input_ids": [2] * tokens, "special_mask": [1] * tokens, "caption_id": caption_id, "image": image}


def test_length_buckets_hand_the_collate_its_bucket():
    stream = LengthBuckets([_example("a", 3, 2)], 2, [4, 8], [5, 10])
    assert [(key, [e["caption_id"] for e in batch]) for key, batch in stream] == [((4, 5), ["a"])]


def test_a_rare_bucket_leaves_filled_up_with_other_examples_not_with_its_own_copies():
    """One long example among short ones: when it comes round again, its bucket leaves as soon as a batch's
    worth waits, filled up with short examples (which fit the long one's ceilings), padded to its shape."""
    epoch = [_example(f"s{i}", 3, 2) for i in range(6)] + [_example("long", 7, 9)]
    batches = [(key, [e["caption_id"] for e in batch]) for key, batch in LengthBuckets(epoch * 4, 4, [4, 8], [5, 10])]
    full = [(key, ids) for key, ids in batches if len(ids) == 4]
    assert len(full) == len(batches) - 3, "the finite stream's leftovers: two shorts, the long one and its copy"
    assert all(len(set(ids)) == 4 for _, ids in full), "no batch holds two copies of an example"
    assert [ids for key, ids in full if key == (8, 10)] == [["long", "s0", "s1", "s2"], ["long", "s3", "s4", "s5"]]
    assert {key for key, _ in batches} <= {(4, 5), (8, 10)}, "every batch has one of the bucket shapes"
    assert sorted(i for _, ids in batches for i in ids) == sorted(e["caption_id"] for e in epoch * 4), "none lost"
    # A stream of fewer examples than a batch cannot do without copies, as random batches of it could not.
    tiny = [(key, [e["caption_id"] for e in batch]) for key, batch in LengthBuckets([_example("x", 3, 2)] * 9, 4,
                                                                                    [4, 8], [5, 10])]
    assert tiny == [((4, 5), ["x"] * 4), ((4, 5), ["x"] * 4), ((4, 5), ["x"])]


def test_stream_order_does_not_follow_the_files_row_order(tmp_path):
    """The same images in another row order and shard split (another crawl order) give the same epochs."""
    ids = [f"img{i:02d}" for i in range(12)]
    captions = [{"caption_id": f"c{i:02d}", "image_id": image, "caption": "red circle", "split": "train"}
                for i, image in enumerate(ids)]
    config = tiny_config(feature_dim=4, max_regions=8)
    tokenizer_json = _tokenizer_json(["red circle"])

    def epochs(name, order, shards, buffer):
        regions = tmp_path / name / "regions"
        for index, part in enumerate(np.array_split(np.array(order), shards)):
            _write_regions(str(regions / f"part-{index:05d}.parquet"), [_region_row(i, 2) for i in part])
        schemas.write_table(schemas.to_table(captions, "captions"), str(tmp_path / name / "captions" / "p.parquet"),
                            "captions")
        stream = PairStream([DatasetConfig(str(regions), str(tmp_path / name / "captions"), "train")],
                            tokenizer_json, config, seed=5, shuffle_buffer=buffer)
        examples = iter(stream)
        return [next(examples)["caption_id"] for _ in range(2 * len(ids))]

    crawled = epochs("a", ids, 1, 64)
    reordered = epochs("b", ids[::-1][5:] + ids[::-1][:5], 3, 64)
    assert crawled == reordered
    caption_ids = [c["caption_id"] for c in captions]
    assert sorted(crawled[:12]) == caption_ids and crawled[:12] != caption_ids, "every caption once, shuffled"
    assert crawled[:12] != crawled[12:], "each epoch is shuffled anew"


def test_images_without_regions_and_unmatched_captions(tmp_path):
    regions = tmp_path / "features" / "regions"
    _write_regions(str(regions / "part-00000.parquet"), [_region_row("a", 3), _region_row("b", 0), _region_row("c", 2)])
    captions = [{"caption_id": "1", "image_id": "a", "caption": "red circle", "split": "train"},
                {"caption_id": "2", "image_id": "b", "caption": "blue square", "split": "train"},
                {"caption_id": "3", "image_id": "zzz", "caption": "no such image", "split": "train"},
                {"caption_id": "4", "image_id": "c", "caption": "   ", "split": "train"}]
    schemas.write_table(schemas.to_table(captions, "captions"), str(tmp_path / "captions" / "p.parquet"), "captions")
    assert feature_dim_of(str(tmp_path / "features")) == 4
    assert num_classes_of(str(regions)) == 4, "max class id (top-k ids included) + 1 without classes.json"
    (tmp_path / "features" / "classes.json").write_text(json.dumps(["x"] * 7))
    assert num_classes_of(str(regions)) == 7
    datasets = [DatasetConfig(str(regions), str(tmp_path / "captions"), "train")]
    report = dataset_report(datasets)
    assert report["pairs"] == 2 and report["captions_without_regions"] == 1 and report["images_without_captions"] == 1
    config = tiny_config(feature_dim=4, max_regions=8)
    stream = PairStream(datasets, _tokenizer_json(["red circle", "blue square"]), config, infinite=False, shuffle=False)
    examples = {e["caption_id"]: e for e in stream}
    assert set(examples) == {"1", "2"}
    assert len(examples["2"]["image"].features) == 0
    batch = Collate()([examples["1"], examples["2"]])
    assert batch["region_mask"].tolist() == [[True, True, True], [False, False, False]]
    assert batch["region_topk_ids"][0, 1].tolist() == [1, 2]
    assert torch.allclose(batch["region_locations"][0, 0], torch.tensor([0.1, 0.1, 0.6, 0.6, 0.25]))
    # An image with no region still trains and scores: a forward pass gives finite outputs.
    from model.imagebert import ImageBert

    model = ImageBert(config)
    outputs, _ = model(batch)
    assert torch.isfinite(outputs["scores"]).all()


def test_wordpiece_tokenizer_trained_on_captions():
    tokenizer = train_wordpiece(["a small red triangle left of a large blue circle"] * 5, vocab_size=100)
    ids = special_ids(tokenizer)
    assert ids["pad"] == 0 and ids["first_regular"] == 5
    encoding = tokenizer.encode("a small red triangle")
    assert encoding.tokens[0] == "[CLS]" and encoding.tokens[-1] == "[SEP]" and "[UNK]" not in encoding.tokens


def test_trained_word_pieces_are_numbered_by_the_data_alone():
    """The trainer's hash-map numbering varies by process; the renumbered vocabulary does not."""
    from tokenizers import Tokenizer

    from model.train import number_by_first_use

    texts = ["a small red triangle left of a large blue circle", "one green star", "a large blue circle"] * 3
    trained = train_wordpiece(texts, vocab_size=120)
    state = json.loads(trained.to_str())
    vocab = state["model"]["vocab"]
    regular = sorted((t for t in vocab if vocab[t] >= 5), key=vocab.__getitem__)
    # Another process's numbering: the same pieces, the regular ones in reverse.
    state["model"]["vocab"] = {**{t: i for t, i in vocab.items() if i < 5},
                               **{t: 5 + i for i, t in enumerate(reversed(regular))}}
    shuffled = Tokenizer.from_str(json.dumps(state))
    assert shuffled.encode("one green star").ids != trained.encode("one green star").ids
    first, second = number_by_first_use(trained, texts), number_by_first_use(shuffled, list(reversed(texts)))
    assert first.get_vocab() == second.get_vocab()
    assert special_ids(first) == special_ids(trained), "special tokens keep their ids"
    encoding = first.encode("a large blue circle")
    assert encoding.tokens == trained.encode("a large blue circle").tokens
    assert encoding.ids == [2, 5, 6, 7, 8, 3], "\"a large blue circle\" sorts first: its pieces follow the specials"


def _png(path, color, size=(8, 6)):
    from PIL import Image

    Image.new("RGB", size, color).save(path)


def test_import_captions_coco_karpathy_tsv(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    _png(images / "one.png", "red")
    _png(images / "two.png", "blue", (5, 4))
    (images / "broken.jpg").write_bytes(b"not an image")
    coco = {"images": [{"id": 1, "file_name": "one.png"}, {"id": 2, "file_name": "two.png"},
                       {"id": 3, "file_name": "gone.png"}],
            "annotations": [{"id": 10, "image_id": 1, "caption": "A red square."},
                            {"id": 11, "image_id": 1, "caption": "Red."},
                            {"id": 12, "image_id": 2, "caption": "A blue square."},
                            {"id": 13, "image_id": 3, "caption": "Lost image."},
                            {"id": 14, "image_id": 2, "caption": "  "}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    env = dict(os.environ, PYTHONPATH=REPO)
    out = tmp_path / "coco-out"
    proc = subprocess.run([sys.executable, "-m", "lait", "import-captions", str(tmp_path / "coco.json"), "--format",
                           "coco", "--images", str(images), "--out", str(out), "--split", "val"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads((out / "stats.json").read_text())
    assert stats["in"] == 5 and stats["kept"] == 3 and stats["rejected"] == 2
    assert stats["in"] == stats["kept"] + stats["rejected"]
    assert stats["rejected_by_reason"] == {"image_missing": 1, "caption_empty": 1}
    captions = schemas.read_table(str(out / "captions"), "captions").to_pylist()
    pairs = schemas.read_table(str(out / "pairs"), "pairs").to_pylist()
    assert {p["image_id"] for p in pairs} == {c["image_id"] for c in captions} and len(pairs) == 2
    assert all(c["split"] == "val" for c in captions)
    import hashlib

    assert hashlib.sha256((images / "one.png").read_bytes()).hexdigest() in {p["image_id"] for p in pairs}
    assert {(p["width"], p["height"]) for p in pairs} == {(8, 6), (5, 4)}
    rejected = schemas.read_table(str(out / "rejected"), "rejected").to_pylist()
    assert {r["reason"] for r in rejected} == {"image_missing", "caption_empty"} and rejected[0]["stage"] == "import_captions"

    karpathy = {"images": [{"filename": "one.png", "split": "restval", "sentences": [{"raw": "red", "sentid": 0}]},
                           {"filename": "two.png", "split": "test", "sentences": [{"raw": "blue", "sentid": 1}]},
                           {"filename": "broken.jpg", "split": "test", "sentences": [{"raw": "bad", "sentid": 2}]}]}
    (tmp_path / "k.json").write_text(json.dumps(karpathy))
    from model.captions_import import import_captions, read_karpathy, read_tsv

    stats = import_captions(read_karpathy(str(tmp_path / "k.json")), str(images), str(tmp_path / "k-out"))
    assert stats["kept"] == 2 and stats["rejected_by_reason"] == {"image_unreadable": 1}
    splits = {c["caption"]: c["split"] for c in schemas.read_table(str(tmp_path / "k-out" / "captions")).to_pylist()}
    assert splits == {"red": "train", "blue": "test"}

    (tmp_path / "c.tsv").write_text("image\tcaption\none.png\ta red one\ntwo.png\ta blue one\n")
    stats = import_captions(read_tsv(str(tmp_path / "c.tsv"), "test"), str(images), str(tmp_path / "t-out"))
    assert stats == {"stage": "import_captions", "in": 2, "kept": 2, "rejected": 0, "rejected_by_reason": {}, "images": 2}


def test_features_of_another_width_are_refused_not_reshaped(tmp_path, caplog):
    from model.data import decode_regions

    regions = tmp_path / "regions"
    _write_regions(str(regions / "part-00000.parquet"), [_region_row("a", 3, dim=4), _region_row("b", 2, dim=4)])
    _write_regions(str(regions / "part-00001.parquet"), [_region_row("c", 3, dim=5)], dim=5)  # another detector's
    table = schemas.read_table(str(regions / "part-00000.parquet"), "regions")
    assert len(decode_regions(table, 8, 4)) == 2
    # 20 values are also 5 regions of 4 or 4 of 5: a reshape alone would scramble them
    with pytest.raises(ValueError, match="part-00000.parquet: features of width 4, the model reads 5"):
        decode_regions(table, 8, 5, str(regions / "part-00000.parquet"))
    ragged = table.set_column(table.schema.get_field_index("features"), "features",
                              pa.array([[[1.0] * 4] * 3, [[1.0] * 4, [1.0] * 5]], pa.list_(pa.list_(pa.float16()))))
    with pytest.raises(ValueError, match="features of width 4 to 5, the model reads 4"):
        decode_regions(ragged, 8, 4)
    captions = [{"caption_id": k, "image_id": k, "caption": "red circle", "split": "train"} for k in "abc"]
    schemas.write_table(schemas.to_table(captions, "captions"), str(tmp_path / "captions" / "p.parquet"), "captions")
    stream = PairStream([DatasetConfig(str(regions), str(tmp_path / "captions"), "train")],
                        _tokenizer_json(["red circle"]), tiny_config(feature_dim=4, max_regions=8), infinite=False,
                        shuffle=False)
    with pytest.raises(ValueError, match="part-00001.parquet: features of width 5, the model reads 4"):
        list(stream)
    # Class ids past the model's classes (a classes.json listing fewer than the detector wrote): warned.
    stream = PairStream([DatasetConfig(str(regions / "part-00000.parquet"), str(tmp_path / "captions"), "train")],
                        _tokenizer_json(["red circle"]), tiny_config(feature_dim=4, max_regions=8, num_classes=2),
                        infinite=False, shuffle=False)
    with caplog.at_level("WARNING", logger="model.data"):
        assert len(list(stream)) == 2
    assert "class ids up to 3, but the model classifies 2 classes" in caplog.text


def _import_tree(tmp_path):
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    _png(images / "one.png", "red")
    _png(images / "two.png", "blue", (5, 4))
    return images


def test_import_captions_refuses_a_finished_output_and_clears_an_interrupted_one(tmp_path):
    from model.captions_import import CaptionRecord, ImportExistsError, import_captions

    images = _import_tree(tmp_path)
    records = [CaptionRecord("r1", "one.png", "a red one", "train"), CaptionRecord("r2", "two.png", "blue", "train")]
    out = tmp_path / "out"
    assert import_captions(records, str(images), str(out))["kept"] == 2
    with pytest.raises(ImportExistsError, match="--overwrite"):  # a rerun added every caption a second time
        import_captions(records, str(images), str(out))
    assert import_captions(records[:1], str(images), str(out), overwrite=True)["kept"] == 1
    assert schemas.read_table(str(out / "captions"), "captions").num_rows == 1

    def failing():  # an import that fails (or is killed) part-way: shards written, no stats.json
        yield records[0]
        raise OSError("disk full")

    with pytest.raises(OSError):
        import_captions(failing(), str(images), str(out), overwrite=True, rows_per_shard=1)
    assert not (out / "stats.json").exists() and (out / "captions").exists()
    (out / "features").mkdir()  # what a later stage put there stays
    stats = import_captions(records, str(images), str(out))
    assert stats["kept"] == 2 and (out / "features").is_dir()
    ids = schemas.read_table(str(out / "captions"), "captions").column("caption_id").to_pylist()
    assert sorted(ids) == ["r1", "r2"]
    (tmp_path / "c.tsv").write_text("one.png\tred\n")
    proc = subprocess.run([sys.executable, "-m", "lait", "import-captions", str(tmp_path / "c.tsv"), "--format", "tsv",
                           "--images", str(images), "--out", str(out)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO), cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "already holds a finished import" in proc.stderr and "Traceback" not in proc.stderr


def test_import_captions_malformed_records_are_counted_rejects(tmp_path):
    from model.captions_import import import_captions, read_coco, read_karpathy, read_tsv

    images = _import_tree(tmp_path)

    def run(name, content, reader, *args):
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
        stats = import_captions(reader(str(path), *args), str(images), str(tmp_path / f"out-{name}"))
        assert stats["in"] == stats["kept"] + stats["rejected"]
        captions = schemas.read_table(str(tmp_path / f"out-{name}" / "captions"), "captions").to_pylist() \
            if stats["kept"] else []
        return stats["rejected_by_reason"], {c["caption_id"]: (c["caption"], c["split"]) for c in captions}

    for shape in ([1, 2], {"images": {}, "annotations": []}, "text"):
        with pytest.raises(ValueError, match="JSON object with 'images' and 'annotations' lists"):
            run("shape.json", shape, read_coco)
    coco = {"images": [{"id": 1, "file_name": "one.png"}, {"id": 2, "file_name": None}, "junk"],
            "annotations": [{"id": 1, "image_id": 1, "caption": "red"}, {"id": 1, "image_id": 1, "caption": "again"},
                            {"id": 2, "image_id": 1, "caption": 5}, {"id": 3, "image_id": 2, "caption": "null name"},
                            {"image_id": 1, "caption": "no id"}, 7]}
    reasons, kept = run("coco.json", coco, read_coco)
    assert reasons == {"duplicate_caption": 1, "caption_invalid": 1, "image_path_invalid": 1, "record_invalid": 1}
    assert kept == {"coco:1": ("red", "train"), "coco:annotation-4": ("no id", "train")}
    karpathy = {"images": [
        {"imgid": 7, "filename": "one.png", "filepath": None, "split": None, "sentences": [{"raw": "a", "sentid": 1}]},
        {"imgid": 8, "filename": "two.png", "split": "test", "sentences": ["a cat", {"raw": "b"}, {"raw": "c"}]},
        {"imgid": 9, "filename": None, "split": "test", "sentences": [{"raw": "d", "sentid": 4}]},
        {"filename": "two.png", "sentences": {"raw": "e"}}]}
    reasons, kept = run("k.json", karpathy, read_karpathy)
    assert reasons == {"caption_invalid": 1, "image_path_invalid": 1, "record_invalid": 1}
    assert kept == {"karpathy:1": ("a", "train"), "karpathy:8:1": ("b", "test"), "karpathy:8:2": ("c", "test")}
    tsv = "\ufeffimage_file\tcaption\r\none.png\tbom and crlf\r\non\x00e.png\tnul\n".encode() \
        + "two.png\tcaf\xe9\n".encode("latin-1") + b"two.png\tlast\n"
    reasons, kept = run("t.tsv", tsv, read_tsv, "val")
    assert reasons == {"image_path_invalid": 1, "record_invalid": 1}
    assert kept == {"tsv:2": ("bom and crlf", "val"), "tsv:5": ("last", "val")}
    rejected = schemas.read_table(str(tmp_path / "out-t.tsv" / "rejected"), "rejected").to_pylist()
    assert "line 4 is not UTF-8" in {r["reason"]: r["detail"] for r in rejected}["record_invalid"]


def test_blank_captions_are_left_out_of_training_and_counted(tmp_path):
    """Blank captions (empty, white space) of the split were dropped from the join without a count."""
    regions = tmp_path / "regions"
    _write_regions(str(regions / "part-00000.parquet"), [_region_row("a", 3), _region_row("b", 2)])
    texts = ["red circle", "", "   ", "\u3000", "blue square", "\t\n"]  # (the contract has no null caption)
    captions = [{"caption_id": f"c{n}", "image_id": "ab"[n % 2], "caption": text, "split": "train"}
                for n, text in enumerate(texts)]
    captions.append({"caption_id": "v", "image_id": "a", "caption": " ", "split": "val"})  # another split's
    schemas.write_table(schemas.to_table(captions, "captions"), str(tmp_path / "captions" / "p.parquet"), "captions")
    report = dataset_report([DatasetConfig(str(regions), str(tmp_path / "captions"), "train")])
    # a's two captions are kept; b's three are blank, so b trains on nothing: an image without captions
    assert (report["pairs"], report["images"], report["blank_captions"]) == (2, 1, 4)
    assert report["images_without_captions"] == 1


def test_a_regions_dataset_holding_an_image_twice_trains_on_it_once_as_counted(tmp_path):
    """The stream read each regions row, so an image stored twice gave its captions twice an epoch, while
    dataset_report (which sets epoch step counts) counted it once. First row wins, in every consumer."""
    regions = tmp_path / "regions"
    first = _region_row("a", 3)
    _write_regions(str(regions / "part-00000.parquet"), [first, _region_row("b", 2), _region_row("a", 1)])
    _write_regions(str(regions / "part-00001.parquet"), [_region_row("c", 2), _region_row("a", 2)])
    captions = [{"caption_id": f"{image}{n}", "image_id": image, "caption": "red circle", "split": "train"}
                for image in "abc" for n in range(2)]
    schemas.write_table(schemas.to_table(captions, "captions"), str(tmp_path / "captions" / "p.parquet"), "captions")
    datasets = [DatasetConfig(str(regions), str(tmp_path / "captions"), "train")]
    report = dataset_report(datasets)
    assert report["pairs"] == 6 and report["images"] == 3 and report["repeated_image_rows"] == 2
    config = tiny_config(feature_dim=4, max_regions=8)
    tokenizer = _tokenizer_json(["red circle"])
    for world_size in (1, 2, 3):
        examples = [e for rank in range(world_size)
                    for e in PairStream(datasets, tokenizer, config, rank=rank, world_size=world_size, infinite=False)]
        assert sorted(e["caption_id"] for e in examples) == [c["caption_id"] for c in captions], world_size
        assert all(len(e["image"].features) == 3 for e in examples if e["image"].image_id == "a"), "the first row"


def test_a_regions_row_whose_lists_disagree_in_length_is_refused_not_read_from_its_neighbour(tmp_path):
    from model.data import decode_regions

    rows = [_region_row("a", 3), _region_row("b", 2)]
    table = schemas.to_table(rows, "regions", feature_dim=4)
    assert [len(im.features) for im in decode_regions(table, 8, 4)] == [3, 2]

    def with_column(name, values):
        return table.set_column(table.schema.get_field_index(name), name, pa.array(values, table.schema.field(name).type))

    for name, values, message in (
            ("boxes", [[[10, 5, 60, 30]] * 2, [[0, 0, 1, 1]] * 3], "image a: 2 boxes for 3 regions"),
            ("class_ids", [[1, 2, 3], [4]], "image b: 1 class_ids for 2 regions"),
            ("topk_class_ids", [[[1, 2]] * 3, [[1, 2]] * 3], "image b: 3 topk_class_ids for 2 regions"),
            ("topk_class_probs", [[[0.7, 0.3]] * 3, [[0.7, 0.3], [1.0]]], "image b: its regions' top-k class ids and"),
            ("topk_class_ids", [[[1, 2], [1, 2], [1, 2, 3]], [[1, 2]] * 2], "image a: its regions' top-k class ids")):
        with pytest.raises(ValueError, match=f"^src: {re.escape(message)}"):
            decode_regions(with_column(name, values), 8, 4, "src")
    # No stored distribution (empty top-k lists) is still fine: the top class with probability 1.
    bare = with_column("topk_class_probs", [[], []])
    bare = bare.set_column(bare.schema.get_field_index("topk_class_ids"), "topk_class_ids",
                           pa.array([[], []], table.schema.field("topk_class_ids").type))
    assert [im.topk_probs.tolist() for im in decode_regions(bare, 8, 4)] == [[[1.0]] * 3, [[1.0]] * 2]


def test_a_one_class_detectors_regions_count_one_class(tmp_path):
    """Every class id 0 and no classes.json: one class, not "no class ids"."""
    regions = tmp_path / "features" / "regions"
    rows = [dict(_region_row(name, 2), class_ids=np.zeros(2, np.int32), topk_class_ids=[[0], [0]],
                 topk_class_probs=[[1.0], [1.0]]) for name in ("a", "b")]
    _write_regions(str(regions / "part-00000.parquet"), rows)
    assert num_classes_of(str(regions)) == 1


def test_classes_json_of_another_shape_is_a_clear_error(tmp_path):
    regions = tmp_path / "features" / "regions"
    _write_regions(str(regions / "part-00000.parquet"), [_region_row("a", 3)])
    for content, message in (("25", "expected a list of class names"), ('"person"', "expected a list of class names"),
                             ('{"other": 1}', "expected a list of class names"), ("[]", "expected a list"),
                             ('{"num_classes": "many"}', "num_classes 'many' is not a whole number"),
                             ("{not json", "not a readable classes.json")):
        (tmp_path / "features" / "classes.json").write_text(content)
        with pytest.raises(ValueError, match=f"classes.json: {re.escape(message)}"):
            num_classes_of(str(regions))
    for content, count in (('["a", "b"]', 2), ('{"classes": ["a"]}', 1), ('{"names": ["a", "b", "c"]}', 3),
                           ('{"num_classes": 9}', 9)):
        (tmp_path / "features" / "classes.json").write_text(content)
        assert num_classes_of(str(regions)) == count


def test_import_captions_rejects_text_that_is_not_unicode_and_keeps_importing(tmp_path):
    """JSON's "\\ud83d" escape is a lone surrogate, which Arrow cannot store: it aborted the whole import."""
    from model.captions_import import CaptionRecord, import_captions, read_coco

    images = _import_tree(tmp_path)
    coco = ('{"images": [{"id": 1, "file_name": "one.png"}, {"id": 2, "file_name": "tw\\udc80o.png"}], '
            '"annotations": [{"id": 1, "image_id": 1, "caption": "a cat \\ud83d"}, {"id": 2, "image_id": 1, '
            '"caption": "a dog"}, {"id": 3, "image_id": 2, "caption": "bad name"}, {"id": "x\\ud83d", "image_id": 1, '
            '"caption": "bad id"}]}')
    (tmp_path / "s.json").write_text(coco)
    stats = import_captions(read_coco(str(tmp_path / "s.json")), str(images), str(tmp_path / "out"))
    assert stats["in"] == 4 and stats["kept"] == 1 and stats["images"] == 1
    assert stats["rejected_by_reason"] == {"caption_invalid": 1, "image_path_invalid": 1, "record_invalid": 1}
    rejected = schemas.read_table(str(tmp_path / "out" / "rejected"), "rejected").to_pylist()
    assert any("coco:x\\ud83d" in r["detail"] for r in rejected), rejected
    stats = import_captions([CaptionRecord("r1", "one.png", "ok", "tr\ud83dain")], str(images), str(tmp_path / "out2"))
    assert stats["rejected_by_reason"] == {"record_invalid": 1}


def test_import_captions_writes_one_pairs_row_per_image_whatever_its_names(tmp_path):
    from model.captions_import import CaptionRecord, import_captions

    images = _import_tree(tmp_path)
    (images / "one_copy.png").write_bytes((images / "one.png").read_bytes())
    records = [CaptionRecord("r1", "one.png", "red", "train"), CaptionRecord("r2", "one_copy.png", "red again", "train"),
               CaptionRecord("r3", "two.png", "blue", "train"), CaptionRecord("r4", "./two.png", "blue again", "train")]
    stats = import_captions(records, str(images), str(tmp_path / "out"))
    assert stats["kept"] == 4 and stats["images"] == 2
    pairs = schemas.read_table(str(tmp_path / "out" / "pairs"), "pairs").to_pylist()
    captions = schemas.read_table(str(tmp_path / "out" / "captions"), "captions").to_pylist()
    assert len(pairs) == 2 and {p["image_id"] for p in pairs} == {c["image_id"] for c in captions}


def test_import_captions_source_that_is_not_a_readable_file_leaves_a_finished_import_alone(tmp_path):
    """A folder given as the TSV source failed (IsADirectoryError) only once the import had begun, after
    --overwrite had deleted the finished one."""
    from model.captions_import import read_tsv

    images = _import_tree(tmp_path)
    (tmp_path / "c.tsv").write_text("one.png\tred\n")
    env = dict(os.environ, PYTHONPATH=REPO)

    def lait(*args):
        return subprocess.run([sys.executable, "-m", "lait", "import-captions", *args, "--images", str(images), "--out",
                               str(tmp_path / "out"), "--overwrite"], capture_output=True, text=True, env=env,
                              cwd=REPO, timeout=120)

    assert lait(str(tmp_path / "c.tsv"), "--format", "tsv").returncode == 0
    for source, fmt in ((tmp_path / "images", "tsv"), (tmp_path / "images", "coco")):
        proc = lait(str(source), "--format", fmt)
        assert proc.returncode == 2 and "is a folder, not a captions file" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["kept"] == 1, "the finished import is intact"
    with pytest.raises(IsADirectoryError):
        read_tsv(str(tmp_path / "images"))  # when called, not when the import reads the first record


def _partly_captioned(tmp_path, captioned_groups, groups=4):
    """Regions in row groups of 3 images; captions (two each) only for the images of ``captioned_groups``."""
    ids = [f"img{i:02d}" for i in range(3 * groups)]
    _write_regions(str(tmp_path / "regions" / "part-00000.parquet"), [_region_row(i, 2) for i in ids])
    captions = [{"caption_id": f"{image}-{n}", "image_id": image, "caption": "red circle", "split": "train"}
                for index, image in enumerate(ids) if index // 3 in captioned_groups for n in range(2)]
    schemas.write_table(schemas.to_table(captions, "captions"), str(tmp_path / "captions" / "p.parquet"), "captions")
    return [DatasetConfig(str(tmp_path / "regions"), str(tmp_path / "captions"), "train")], \
        sorted(c["caption_id"] for c in captions)


@pytest.mark.parametrize("captioned_groups", [(0,), (1, 3)])
def test_a_consumer_dealt_no_captioned_image_yields_nothing_instead_of_failing(tmp_path, captioned_groups):
    """Row groups whose images have no caption were dealt to the consumers (ranks x DataLoader workers) like the
    others: one dealt only such row groups failed the stage with a worker traceback ("data consumer 1 of 2 got
    no (caption, image) pair"), although the up-front check (images >= consumers) had passed."""
    datasets, caption_ids = _partly_captioned(tmp_path, captioned_groups)
    config = tiny_config(feature_dim=4, max_regions=8)
    tokenizer_json = _tokenizer_json(["red circle"])
    for seed in range(4):  # the row groups are dealt anew each seed and epoch
        for consumers in (2, 3):
            streams = [PairStream(datasets, tokenizer_json, config, seed=seed, rank=rank, world_size=consumers,
                                  shuffle_buffer=4, infinite=False) for rank in range(consumers)]
            assert streams[0].uncaptioned_units == 4 - len(captioned_groups)
            epoch = [e["caption_id"] for stream in streams for e in stream]
            assert sorted(epoch) == caption_ids, (seed, consumers)
            for stream in streams:  # endless: past epoch boundaries, the same examples again on a replay
                stream.infinite = True
                first, again = iter(stream), iter(stream)
                examples = [next(first)["caption_id"] for _ in range(3 * len(caption_ids))]
                assert examples == [next(again)["caption_id"] for _ in examples]
    # The same through DataLoader workers (where it failed), endless, replayed to the same batches (exact resume).
    def batches():
        loader = iter(make_loader(datasets, tokenizer_json, config, 2, seed=1, num_workers=2, shuffle_buffer=4))
        return [next(loader)["caption_keys"].tolist() for _ in range(2 * len(caption_ids))]

    first = batches()
    assert first == batches()
    assert {key for batch in first for key in batch} == set(map(stable_key, caption_ids))


@pytest.mark.parametrize("dealing", ["balanced", "captioned"])
def test_row_groups_all_captioned_are_dealt_as_before(tmp_path, dealing):
    """Leaving uncaptioned row groups out of the dealing moves nothing when there are none (a run resumed from a
    checkpoint of the earlier dealing replays the same batches): each consumer's row groups, pinned. Row groups
    of one size are dealt in turn by the even dealing too."""
    import random

    datasets, _ = _partly_captioned(tmp_path, (0, 1, 2, 3))
    tokenizer_json, config = _tokenizer_json(["red circle"]), tiny_config(feature_dim=4, max_regions=8)
    order = [(0, file, group) for file in [str(tmp_path / "regions" / "part-00000.parquet")] for group in range(4)]
    random.Random("2/0").shuffle(order)  # epoch 0 of seed 2, dealt as it always was: order[consumer::consumers]
    for rank in range(3):
        stream = PairStream(datasets, tokenizer_json, config, seed=2, rank=rank, world_size=3, infinite=False,
                            dealing=dealing)
        expected = {f"img{3 * group + k:02d}" for _, _, group in order[rank::3] for k in range(3)}
        assert {e["image"].image_id for e in stream} == expected, rank


def test_no_captioned_image_at_all_is_one_clear_error_before_any_worker_starts(tmp_path):
    datasets, _ = _partly_captioned(tmp_path, ())
    with pytest.raises(ValueError, match=r"no image of .*regions has a caption in .*captions \(split 'train'\): "
                                         r"no \(caption, image\) pair to train on"):
        make_loader(datasets, _tokenizer_json(["red circle"]), tiny_config(feature_dim=4, max_regions=8), 2,
                    num_workers=2)


#: Captions of each image of 8 row groups of 3 (examples per group: 3, 18, 2, 14, 4, 17, 0, 4); the last image
#: stores the first of group 1 again (its row is not read: its 6 captions count once, in group 1).
UNEVEN_CAPTIONS = [[1, 1, 1], [6, 6, 6], [1, 0, 1], [5, 5, 4], [2, 1, 1], [6, 5, 6], [0, 0, 0], [1, 3, 6]]


def _uneven(tmp_path):
    """Row groups of 3 images whose (caption, image) examples differ from group to group."""
    ids = [f"img{i:02d}" for i in range(23)] + ["img03"]
    _write_regions(str(tmp_path / "regions" / "part-00000.parquet"), [_region_row(i, 2) for i in ids])
    counts = [n for group in UNEVEN_CAPTIONS for n in group]
    captions = [{"caption_id": f"{image}-{n}", "image_id": image, "caption": "red circle", "split": "train"}
                for image, count in zip(ids[:23], counts) for n in range(count)]
    schemas.write_table(schemas.to_table(captions, "captions"), str(tmp_path / "captions" / "p.parquet"), "captions")
    return [DatasetConfig(str(tmp_path / "regions"), str(tmp_path / "captions"), "train")], \
        sorted(c["caption_id"] for c in captions)


def test_row_groups_are_dealt_so_that_every_consumer_gets_about_as_many_examples(tmp_path):
    """Row groups were dealt in turn (``order[consumer::consumers]``) whatever their sizes: a consumer dealt small
    ones restarted its endless epoch sooner, so their images were seen more often in the same steps. Now each goes
    to the consumer with the fewest examples so far: no two shares differ by more than the largest row group."""
    datasets, caption_ids = _uneven(tmp_path)
    config, tokenizer_json = tiny_config(feature_dim=4, max_regions=8), _tokenizer_json(["red circle"])
    largest = 18
    in_turn_spreads = []
    for seed in range(6):
        for consumers in (2, 3):
            streams = [PairStream(datasets, tokenizer_json, config, seed=seed, rank=rank, world_size=consumers,
                                  infinite=False, shuffle_buffer=4) for rank in range(consumers)]
            assert sorted(p.examples for p in streams[0].pairs.values()) == [0, 2, 3, 4, 4, 14, 17, 18]
            yielded = [[e["caption_id"] for e in stream] for stream in streams]
            assert sorted(sum(yielded, [])) == caption_ids, "every caption once an epoch"
            shares = [len(examples) for examples in yielded]
            assert max(shares) - min(shares) <= largest, (seed, consumers, shares)
            for epoch in range(1, 4):  # dealt anew each epoch, from (seed, epoch, counts) alone
                units = [streams[0].share(epoch, consumer, consumers)[0] for consumer in range(consumers)]
                again = [stream.share(epoch, stream.rank, consumers)[0] for stream in streams]
                assert units == again
                shares = [sum(streams[0].pairs[unit].examples for unit in mine) for mine in units]
                assert max(shares) - min(shares) <= largest, (seed, consumers, epoch, shares)
            # The earlier dealing, kept for the resume of its checkpoints: in turn, whatever the sizes.
            old = [PairStream(datasets, tokenizer_json, config, seed=seed, rank=rank, world_size=consumers,
                              infinite=False, dealing="captioned") for rank in range(consumers)]
            order, _ = old[0].share(0, 0, 1)
            assert [stream.share(0, stream.rank, consumers)[0] for stream in old] == \
                [order[consumer::consumers] for consumer in range(consumers)]
            shares = [sum(1 for _ in stream) for stream in old]
            in_turn_spreads.append(max(shares) - min(shares))
    assert max(in_turn_spreads) > largest, "the data tells the dealings apart"
    with pytest.raises(ValueError, match="dealing 'sizes': not one of balanced, captioned"):
        PairStream(datasets, tokenizer_json, config, dealing="sizes")


def test_import_captions_leaves_another_dataset_in_out_alone(tmp_path):
    """--out a data folder (captions/ and regions/ of another dataset, no stats.json): the import took its
    captions/ for an interrupted import's and replaced them with its own rows. Refused now, one line naming the
    folder and --overwrite; only what an import of its own left (its marker says so) is cleared by itself."""
    from model.captions_import import IMPORT_MARKER, CaptionRecord, ImportExistsError, import_captions
    from model.synthetic import write_synthetic

    images = _import_tree(tmp_path)
    out = tmp_path / "data"
    write_synthetic(str(out), images=60, feature_dim=4, test_images=20, seed=3)
    rows = schemas.read_table(str(out / "captions"), "captions").num_rows
    records = [CaptionRecord("r1", "one.png", "a red one", "train")]
    with pytest.raises(ImportExistsError, match=f"{out}: captions/ is not an import's.*--overwrite"):
        import_captions(records, str(images), str(out))
    (tmp_path / "one.tsv").write_text("one.png\ta red one\n")
    proc = subprocess.run([sys.executable, "-m", "lait", "import-captions", str(tmp_path / "one.tsv"), "--format",
                           "tsv", "--images", str(images), "--out", str(out)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO), cwd=REPO, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"lait import-captions: {out}: captions/") and "--overwrite" in proc.stderr
    assert schemas.read_table(str(out / "captions"), "captions").num_rows == rows, "the other dataset is intact"
    assert (out / "regions").is_dir() and not (out / IMPORT_MARKER).exists()
    # An interrupted import of its own (the marker, partial shards): cleared by the next import
    def failing():
        yield records[0]
        raise OSError("disk full")

    mine = tmp_path / "mine"
    with pytest.raises(OSError):
        import_captions(failing(), str(images), str(mine), rows_per_shard=1)
    assert (mine / IMPORT_MARKER).exists() and (mine / "captions").is_dir()
    assert import_captions(records, str(images), str(mine))["kept"] == 1
    assert not (mine / IMPORT_MARKER).exists()
    # An interrupted import of before the marker: it cannot be told from another dataset, so it is refused too
    (mine / "stats.json").unlink()
    with pytest.raises(ImportExistsError, match="--overwrite"):
        import_captions(records, str(images), str(mine))
    # --overwrite replaces the other dataset's captions/ (regions/ and the rest stay)
    assert import_captions(records, str(images), str(out), overwrite=True)["kept"] == 1
    assert schemas.read_table(str(out / "captions"), "captions").num_rows == 1 and (out / "regions").is_dir()
    # A folder holding another stage's finished run (a filter's pairs/, rejected/, stats.json): never replaced
    other = tmp_path / "filter"
    (other / "pairs").mkdir(parents=True)
    (other / "stats.json").write_text(json.dumps({"stage": "filter", "in": 3, "kept": 3}))
    for overwrite in (False, True):
        with pytest.raises(ImportExistsError, match="a finished filter run"):
            import_captions(records, str(images), str(other), overwrite=overwrite)
    assert (other / "pairs").is_dir() and json.loads((other / "stats.json").read_text())["stage"] == "filter"


def test_a_stream_given_its_stages_checked_join_yields_what_it_would_have_read(synth_dir, monkeypatch):
    """``model.train.check_stage`` hands its join (``index_pairs``) to the stage's stream, which then reads no
    captions; its examples and counts are those of a stream reading them itself (and ``dataset_report``'s)."""
    from model.config import StageConfig
    from model.train import check_stage

    datasets = [DatasetConfig(f"{synth_dir}/regions", f"{synth_dir}/captions", "train"),
                DatasetConfig(f"{synth_dir}/regions", f"{synth_dir}/captions", None)]
    config = tiny_config(feature_dim=16, max_regions=8)
    tokenizer_json = _tokenizer_json()
    index = check_stage(StageConfig(name="s", datasets=datasets), world_size=2, num_workers=1)
    assert index.report == dataset_report(datasets)
    real, reads = schemas.read_table, []

    def read_table(*args, **kwargs):  # a counting wrapper around the real reader
        reads.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(schemas, "read_table", read_table)
    given = [PairStream(datasets, tokenizer_json, config, seed=3, rank=rank, world_size=2, infinite=False,
                        shuffle_buffer=16, index=index) for rank in range(2)]
    assert not reads, "the stream given the join read the captions again"
    own = [PairStream(datasets, tokenizer_json, config, seed=3, rank=rank, world_size=2, infinite=False,
                      shuffle_buffer=16) for rank in range(2)]
    assert len(reads) == 4, "a stream reading them itself: each dataset's captions"
    keys = lambda stream: [(e["caption_id"], e["image"].image_id, e["input_ids"]) for e in stream]
    for mine, theirs in zip(given, own):
        assert keys(mine) == keys(theirs) and keys(mine)
    with pytest.raises(ValueError, match="not one of these datasets"):
        PairStream(datasets[:1], tokenizer_json, config, index=index)


def test_a_workers_broken_batch_handoff_is_not_reported_but_other_errors_are(synth_dir, monkeypatch, capsys):
    """Ctrl-C while the main process took a batch's file descriptors from a DataLoader worker made the worker's
    resource-sharer thread print a traceback (EOFError) after `lait train`'s one line."""
    import sys
    import threading

    from model.data import quiet_interrupted_handoffs

    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    quiet_interrupted_handoffs(0)

    def report(error):
        try:
            raise error
        except BaseException:
            sys.excepthook(*sys.exc_info())

    for error in (EOFError(), ConnectionResetError(104, "reset")):
        thread = threading.Thread(target=report, args=(error,))
        thread.start()
        thread.join()
    assert capsys.readouterr().err == ""
    thread = threading.Thread(target=report, args=(ValueError("a real one"),))
    thread.start()
    thread.join()
    report(EOFError("in the main thread"))
    err = capsys.readouterr().err
    assert "ValueError: a real one" in err and "EOFError: in the main thread" in err
    datasets = [DatasetConfig(f"{synth_dir}/regions", f"{synth_dir}/captions", "train")]
    for buckets in (None, [2, 2]):  # the training loaders install it in their workers
        loader = make_loader(datasets, _tokenizer_json(), tiny_config(feature_dim=16, max_regions=8), 4, num_workers=1,
                             length_buckets=buckets)
        assert loader.worker_init_fn is quiet_interrupted_handoffs
