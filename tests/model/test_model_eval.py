"""Recall@K on hand-built score matrices, and the evaluation of a model on a Parquet test split."""
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch

from imagebert_testlib import REPO, eval_split, lait_runs_command
from model.eval import evaluate, format_table, recall_at_k


def test_recall_on_a_hand_built_matrix():
    # 4 captions x 3 images; captions 0,1 show image 0, caption 2 image 1, caption 3 image 2.
    scores = torch.tensor([
        [0.9, 0.1, 0.0],   # caption 0: its image first
        [0.2, 0.8, 0.1],   # caption 1: its image second
        [0.3, 0.2, 0.1],   # caption 2: its image second
        [0.5, 0.6, 0.4],   # caption 3: its image third
    ])
    truth = torch.tensor([0, 0, 1, 2])
    result = recall_at_k(scores, truth, ks=(1, 2, 3))
    ir = result["image_retrieval"]
    assert ir["R@1"] == pytest.approx(0.25) and ir["R@2"] == pytest.approx(0.75) and ir["R@3"] == pytest.approx(1.0)
    assert ir["chance_R@1"] == pytest.approx(1 / 3)
    sr = result["sentence_retrieval"]
    # Image 0: gold caption 0 (0.9) first. Image 1: gold caption 2 (0.2) is beaten by captions 1 (0.8) and
    # 3 (0.6): third. Image 2: gold caption 3 (0.4) beats 0.0, 0.1, 0.1: first.
    assert sr["R@1"] == pytest.approx(2 / 3) and sr["R@2"] == pytest.approx(2 / 3) and sr["R@3"] == pytest.approx(1.0)
    assert sr["chance_R@1"] == pytest.approx((2 / 4 + 1 / 4 + 1 / 4) / 3)
    assert result["num_images"] == 3 and result["num_captions"] == 4


def test_recall_counts_ties_against_the_query():
    flat = torch.zeros(5, 5)
    result = recall_at_k(flat, torch.arange(5), ks=(1, 5))
    assert result["image_retrieval"]["R@1"] == 0.0 and result["sentence_retrieval"]["R@1"] == 0.0
    assert result["image_retrieval"]["R@5"] == 1.0
    perfect = recall_at_k(torch.eye(5), torch.arange(5), ks=(1,))
    assert perfect["image_retrieval"]["R@1"] == 1.0 and perfect["sentence_retrieval"]["R@1"] == 1.0


def test_two_stage_with_full_k_equals_full_scoring_and_small_k_scores_fewer(synth_dir, tiny_trained):
    model, tokenizer_json = tiny_trained
    full = evaluate(model, tokenizer_json, f"{synth_dir}/regions", f"{synth_dir}/captions", "test", batch_size=256)
    assert full["num_images"] == 40 and full["num_captions"] == 80 and full["pairs_scored"] == 3200
    both = evaluate(model, tokenizer_json, f"{synth_dir}/regions", f"{synth_dir}/captions", "test", batch_size=256,
                    two_stage_k=80)
    assert both["mode"] == "full"
    assert both["image_retrieval"] == full["image_retrieval"]
    two = evaluate(model, tokenizer_json, f"{synth_dir}/regions", f"{synth_dir}/captions", "test", batch_size=64,
                   two_stage_k=40)
    assert two["mode"] == "two_stage"
    # k = every image: image retrieval re-ranks all of them, so it equals the full result exactly.
    assert two["image_retrieval"] == pytest.approx(full["image_retrieval"])
    few = evaluate(model, tokenizer_json, f"{synth_dir}/regions", f"{synth_dir}/captions", "test", batch_size=64,
                   two_stage_k=5)
    # Candidates: the top 5 images of each caption and the top 5 captions of each image, scored once.
    assert few["pairs_scored"] <= 80 * 5 + 40 * 5
    for direction in ("image_retrieval", "sentence_retrieval"):
        assert 0.0 <= few[direction]["R@1"] <= few[direction]["R@5"] <= 1.0
    table = format_table(full)
    assert "image retrieval" in table and "sentence retrieval" in table


def test_recall_with_first_pairs_ranks_them_above_the_rest_and_ties_against_the_query():
    """Two-stage recall on a hand-built case: each query's re-ranked pairs (``first``) rank above all its other
    pairs whatever the scores; each group in its own scores' order; ties, within a group, against the query."""
    scores = torch.tensor([
        [0.5, 0.1, 0.9, 0.2],    # caption 0 (image 0): not first; image 1 (first), then 0.9 of the rest: third
        [0.9, 0.3, 0.3, 0.0],    # caption 1 (image 1): first, tied with image 2 (first); 0.9 is not: second
        [0.1, 0.4, 0.4, 0.2],    # caption 2 (image 2): not first; image 0 (first), image 1's tie: third
        [0.01, 0.0, 0.0, 0.7],   # caption 3 (image 3): first, above image 0 (first): first
        [0.05, 0.6, 0.0, 0.0],   # caption 4 (image 0): the only first pair: first, though 0.6 is higher
    ])
    first = torch.tensor([
        [False, True, False, False],
        [False, True, True, False],
        [True, False, False, False],
        [True, False, False, True],
        [True, False, False, False],
    ])
    truth = torch.tensor([0, 1, 2, 3, 0])
    result = recall_at_k(scores, truth, ks=(1, 2, 3), ir_first=first, sr_first=first)
    assert {k: v for k, v in result["image_retrieval"].items() if k != "chance_R@1"} == \
        pytest.approx({"R@1": 2 / 5, "R@2": 3 / 5, "R@3": 1.0})
    # Image 0: of its gold captions 0 (0.5, not first) and 4 (0.05, first) the first one counts; caption 2 (first,
    # 0.1) above it, caption 1's 0.9 (not first) not: second. Image 1: gold caption 1 (0.3, first) above caption 0
    # (first, 0.1); captions 2 and 4 score higher but are not first: first. Image 2: gold caption 2 (0.4) not
    # first: caption 1 (first) and caption 0's 0.9 above: third. Image 3: gold caption 3, first: first.
    assert {k: v for k, v in result["sentence_retrieval"].items() if k != "chance_R@1"} == \
        pytest.approx({"R@1": 2 / 4, "R@2": 3 / 4, "R@3": 1.0})
    plain = recall_at_k(scores, truth, ks=(1, 2, 3))  # the scores alone rank otherwise
    assert plain["image_retrieval"]["R@1"] == pytest.approx(1 / 5) and plain["sentence_retrieval"]["R@1"] == 0.25
    everything = torch.ones_like(first)  # every pair re-ranked: the scores alone
    assert recall_at_k(scores, truth, ks=(1, 2, 3), ir_first=everything, sr_first=everything) == plain


def _two_stage_ranks(cross: np.ndarray, prerank: np.ndarray, gold: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For each query (a row), built with numpy apart from ``model.eval``: the rank (0 first) of its best gold item in
    the two-stage ranking (its ``k`` best by ``prerank`` ordered by ``cross``, then every other item in ``prerank``'s
    order; an item tied with a gold one ranks above it; other gold items do not count), and whether that best gold
    item is among the ``k`` candidates."""
    ranks, among = [], []
    for c_row, p_row, g_row in zip(cross, prerank, gold):
        order = np.argsort(-p_row, kind="stable")
        assert p_row[order[k - 1]] > p_row[order[k]], "no tie at the cut, so the candidates are the top k"
        candidate = np.zeros(len(p_row), bool)
        candidate[order[:k]] = True
        best, best_among = len(p_row), False
        for g in np.flatnonzero(g_row):
            above = candidate & (c_row >= c_row[g]) if candidate[g] else candidate | (p_row >= p_row[g])
            rank = int((above & ~g_row).sum())
            if rank < best:
                best, best_among = rank, bool(candidate[g])
        ranks.append(best)
        among.append(best_among)
    return np.array(ranks), np.array(among)


def test_two_stage_ranks_the_pairs_left_out_below_the_candidates_in_pre_rank_order(synth_dir, tiny_trained):
    """``two_stage_k=5``: an answer outside its query's 5 candidates but within the pre-ranker's top 10 is in the
    two-stage ranking's top 10. Every pair left out used to score -inf, a tie counted against the query, so R@10
    was capped at the pre-rank recall@5 (R@10 == R@5). Now R@1/5/10 are those of the two-stage ranking built
    here with numpy from the two score matrices; R@1 and R@5 (and with K=10 all three) are as before: only
    candidates can rank in the top K."""
    from model.eval import score_pairs, unimodal_embeddings

    model, tokenizer_json = tiny_trained
    data = eval_split(model, tokenizer_json, synth_dir)
    n_captions, n_images = data.shape
    cpu = torch.device("cpu")
    text, image = unimodal_embeddings(model, data, 64, cpu, bf16=False)
    prerank = (text @ image.t()).float().numpy()
    pairs_c = np.tile(np.arange(n_captions), n_images)
    pairs_i = np.repeat(np.arange(n_images), n_captions)
    # One pair per batch, as evaluate() below: a score does not depend on its batch-mates.
    cross = score_pairs(model, data, pairs_c, pairs_i, 1, cpu, bf16=False).view(n_images, n_captions).t().numpy()
    gold = np.zeros((n_captions, n_images), bool)
    gold[np.arange(n_captions), data.caption_images.numpy()] = True
    args = (model, tokenizer_json, f"{synth_dir}/regions", f"{synth_dir}/captions", "test")
    gained = []
    for k in (5, 10):
        got = evaluate(*args, batch_size=1, two_stage_k=k)
        assert got["mode"] == "two_stage"
        for direction, (rank, among) in (("image_retrieval", _two_stage_ranks(cross, prerank, gold, k)),
                                         ("sentence_retrieval", _two_stage_ranks(cross.T, prerank.T, gold.T, k))):
            expected = {f"R@{r}": float((rank < r).mean()) for r in (1, 5, 10)}
            assert {key: got[direction][key] for key in expected} == pytest.approx(expected), (k, direction)
            # The old result: the candidates' ranks only, an answer outside them a miss.
            before = {f"R@{r}": float((among & (rank < r)).mean()) for r in (1, 5, 10)}
            assert got["prerank_recall"][direction] == pytest.approx(float(among.mean()))
            same = ("R@1", "R@5", "R@10") if k == 10 else ("R@1", "R@5")
            assert {key: got[direction][key] for key in same} == pytest.approx({key: before[key] for key in same})
            if k == 5:
                gained.append(expected["R@10"] - before["R@10"])
    assert max(gained) > 0, "answers at pre-rank places 6-10 in the test set, or the test would not tell the fix"


EVAL_ENV = {"PYTHONPATH": REPO, "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
# 3,200 pairs in batches of 400: under torchrun two shares of four whole batches each, the batches of one process
EVAL_COMMON = ["--split", "test", "--batch-size", "400"]
TWO_STAGE = ["--split", "test", "--two-stage-k", "5", "--batch-size", "64", "--no-progress"]


@pytest.fixture(scope="module")
def cli_eval(synth_dir, tiny_checkpoint, tmp_path_factory):
    """`python -m lait eval` of the test split in one process: the finished process, and eval.json's path (the
    result that the eval under torchrun is compared with)."""
    out = tmp_path_factory.mktemp("cli-eval") / "eval.json"
    proc = subprocess.run([sys.executable, "-m", "lait", "eval", "--checkpoint", tiny_checkpoint, "--data", synth_dir,
                           *EVAL_COMMON, "--out", str(out)],
                          capture_output=True, text=True, env=EVAL_ENV, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, out


@pytest.fixture(scope="module")
def torchrun_evals(synth_dir, tiny_checkpoint, tmp_path_factory):
    """`lait -v eval` under torchrun with 2 processes, scoring every pair and then two-stage, in one launch (starting
    its processes is most of its cost): the launch's stderr, and by mode its eval.json's path and the stdout of
    each process (by rank)."""
    folder = tmp_path_factory.mktemp("torchrun-eval")
    common = ["-v", "eval", "--checkpoint", tiny_checkpoint, "--data", synth_dir]
    modes = {"full": [*EVAL_COMMON, "--no-progress"], "two_stage": TWO_STAGE}
    runs = [([*common, *options, "--out", str(folder / f"{mode}.json")], folder / f"{mode}.stdout")
            for mode, options in modes.items()]
    proc = subprocess.run(lait_runs_command(folder, runs, give_up_s=150), capture_output=True, text=True,
                          env=EVAL_ENV, cwd=REPO, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr, {mode: (folder / f"{mode}.json", [(folder / f"{mode}.stdout.{rank}").read_text()
                                                         for rank in (0, 1)]) for mode in modes}


def test_eval_cli_writes_eval_json(cli_eval, tiny_checkpoint, tmp_path, capsys):
    from lait.cli import main

    proc, out = cli_eval
    result = json.loads(out.read_text())
    for direction in ("image_retrieval", "sentence_retrieval"):
        assert set(result[direction]) == {"R@1", "R@5", "R@10", "chance_R@1"}
        assert 0.0 <= result[direction]["R@1"] <= result[direction]["R@5"] <= result[direction]["R@10"] <= 1.0
    assert result["image_retrieval"]["chance_R@1"] == pytest.approx(1 / 40)
    assert "image retrieval" in proc.stdout and "R@10" in proc.stdout

    # A missing --data: a failing status and one line, no traceback (in this process: `python -m lait` exits
    # with what main returns).
    assert main(["eval", "--checkpoint", tiny_checkpoint, "--data", str(tmp_path / "missing")]) != 0
    error = capsys.readouterr().err
    assert "Traceback" not in error and "missing" in error


def test_eval_under_torchrun_shares_the_pairs_and_reports_the_same_recall(cli_eval, torchrun_evals):
    stderr, runs = torchrun_evals
    two, stdout = runs["full"]
    assert "process 0 of 2 scores pairs 0-1600 of 3200" in stderr
    assert "process 1 of 2 scores pairs 1600-3200 of 3200" in stderr
    alone, shared = (json.loads(path.read_text()) for path in (cli_eval[1], two))
    assert (alone["processes"], shared["processes"]) == (1, 2)
    assert shared["pairs_scored"] == alone["pairs_scored"] == 3200
    for direction in ("image_retrieval", "sentence_retrieval"):
        assert shared[direction] == alone[direction], direction
    assert (stdout[0].count("image retrieval"), stdout[1]) == (1, ""), "only the first process reports"


def test_two_stage_eval_under_torchrun_shares_the_embeddings_and_reports_the_same_recall(synth_dir, tiny_checkpoint,
                                                                                       torchrun_evals, tmp_path):
    from lait.cli import main

    stderr, runs = torchrun_evals
    two, stdout = runs["two_stage"]
    # alone: in this process (one thread, as the torchrun processes)
    assert main(["eval", "--checkpoint", tiny_checkpoint, "--data", synth_dir, *TWO_STAGE,
                 "--out", str(tmp_path / "one.json")]) == 0
    alone, shared = (json.loads(path.read_text()) for path in (tmp_path / "one.json", two))
    captions, images = alone["num_captions"], alone["num_images"]
    assert f"process 0 of 2 embeds captions 0-{captions // 2} and images 0-{images // 2}" in stderr
    assert f"process 1 of 2 embeds captions {captions // 2}-{captions} and images {images // 2}-{images}" in stderr
    assert (alone["mode"], shared["mode"]) == ("two_stage", "two_stage")
    assert shared["pairs_scored"] == alone["pairs_scored"] < captions * images
    for key in ("image_retrieval", "sentence_retrieval", "prerank_recall"):
        assert shared[key] == alone[key], key
    assert (stdout[0].count("image retrieval"), stdout[1]) == (1, ""), "only the first process reports"


def test_fixed_shapes_score_like_trimmed_batches(synth_dir, tiny_trained):
    """Padding every batch to one shape (what a compiled trunk needs) changes no score."""
    from model.eval import score_pairs

    model, tokenizer_json = tiny_trained
    data = eval_split(model, tokenizer_json, synth_dir)
    assert len(set(data.region_counts.tolist())) > 1  # ragged, so the padding is exercised
    rng = np.random.default_rng(0)
    pairs_c = rng.integers(0, data.shape[0], 300)
    pairs_i = rng.integers(0, data.shape[1], 300)
    cpu = torch.device("cpu")
    trimmed = score_pairs(model, data, pairs_c, pairs_i, 64, cpu, bf16=False)
    fixed = score_pairs(model, data, pairs_c, pairs_i, 64, cpu, bf16=False, fixed_shapes=True)  # 300 = 4 x 64 + 44
    assert fixed.shape == trimmed.shape == (300,)
    torch.testing.assert_close(fixed, trimmed, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("worth, shapes", [(0.0, "fixed"), (1.0, "trimmed")])
def test_compiled_eval_matches_eager_and_leaves_the_model_as_it_was(synth_dir, tiny_trained, monkeypatch, worth, shapes):
    import model.eval as eval_module

    monkeypatch.setattr(eval_module, "TRIM_WORTH", worth)  # 0: never trim; 1: trim whenever it saves a token
    model, tokenizer_json = tiny_trained
    args = (model, tokenizer_json, f"{synth_dir}/regions", f"{synth_dir}/captions", "test")
    eager = evaluate(*args, batch_size=1024)
    compiled = evaluate(*args, batch_size=1024, compile=True)
    assert compiled["compile_shapes"] == shapes and eager["compile_shapes"] is None
    assert "_trunk" not in model.__dict__
    for direction in ("image_retrieval", "sentence_retrieval"):
        assert compiled[direction] == pytest.approx(eager[direction], abs=1 / 80)  # at most one tie flips


def test_compile_shapes_trims_only_when_it_saves_enough():
    from types import SimpleNamespace

    from model.eval import TRIM_WORTH, compile_shapes

    pairs = np.arange(8)
    uniform = SimpleNamespace(text_lengths=np.full(8, 20), region_counts=np.full(8, 100))
    assert compile_shapes(uniform, pairs, pairs, 4) == "fixed"  # nothing to trim
    ragged = SimpleNamespace(text_lengths=np.array([8, 9, 10, 12, 30, 31, 32, 40]),
                             region_counts=np.array([10, 10, 12, 12, 50, 60, 90, 100]))
    # batches of 4: (12 + 12) and (40 + 100) tokens per pair against 140 for both
    assert (12 + 12 + 40 + 100) / 280 <= TRIM_WORTH and compile_shapes(ragged, pairs, pairs, 4) == "trimmed"
    one_long = SimpleNamespace(text_lengths=np.array([40, 9, 10, 12, 30, 31, 32, 8]),
                               region_counts=np.array([100, 10, 12, 12, 50, 60, 90, 10]))
    assert compile_shapes(one_long, pairs, pairs, 8) == "fixed"  # one batch already at the maximum
    assert compile_shapes(ragged, pairs[:0], pairs[:0], 4) == "fixed"


def test_full_mode_scores_in_length_order_but_reports_every_pair_in_place(synth_dir, tiny_trained, tmp_path):
    """evaluate() scores captions shortest first; its recall equals the one from a plain caption x image matrix."""
    from model.eval import EvalSet, recall_at_k, score_pairs

    import schemas

    model, tokenizer_json = tiny_trained
    model.eval()
    c = model.config
    # The synthetic captions all have one length: pad some with words the test split does not need.
    table = schemas.read_table(f"{synth_dir}/captions", "captions")
    texts = [text + " and so on" * (i % 3) for i, text in enumerate(table.column("caption").to_pylist())]
    table = table.set_column(table.schema.get_field_index("caption"), "caption", pa.array(texts))
    captions = str(tmp_path / "captions")
    schemas.write_table(table, f"{captions}/part-00000.parquet", "captions")
    data = EvalSet(f"{synth_dir}/regions", captions, "test", tokenizer_json, c.max_text_len, c.max_regions,
                   c.feature_dim)
    assert len(set(data.text_lengths.tolist())) > 1, "captions of several lengths, so the order matters"
    n_captions, n_images = data.shape
    pairs_c = np.repeat(np.arange(n_captions), n_images)
    pairs_i = np.tile(np.arange(n_images), n_captions)
    matrix = score_pairs(model, data, pairs_c, pairs_i, 256, torch.device("cpu"), bf16=False).view(n_captions, n_images)
    expected = recall_at_k(matrix, data.caption_images)
    got = evaluate(model, tokenizer_json, f"{synth_dir}/regions", captions, "test", batch_size=256)
    for direction in ("image_retrieval", "sentence_retrieval"):
        assert got[direction] == pytest.approx(expected[direction], abs=1 / 80)  # at most one tie may flip


def test_folds_rank_each_folds_captions_against_its_own_images(tiny_trained, tmp_path):
    """MSCOCO's 1K protocol: folds of consecutive images in the captions' order, recall averaged."""
    from model.data import load_captions
    from model.eval import score_pairs
    from model.synthetic import write_synthetic

    model, tokenizer_json = tiny_trained
    # A test split of 20 images (2 captions each), the model's feature width: the checks below score each pair
    # one at a time, each fold's pairs growing as the square of its images.
    synth_dir = str(tmp_path / "synth")
    write_synthetic(synth_dir, images=20, feature_dim=16, test_images=20, seed=1)
    data = eval_split(model, tokenizer_json, synth_dir)
    n_captions, n_images = data.shape
    assert (n_captions, n_images) == (40, 20)
    folds = data.folds(2)
    in_order = list(load_captions(f"{synth_dir}/captions", "test"))  # image ids as the captions list them
    assert [data.images[i].image_id for i in sorted(folds[0], key=lambda i: data.first_seen[i])] == in_order[:10]
    assert sorted(np.concatenate(folds).tolist()) == list(range(n_images))
    # One pair per batch: every score is independent of its batch-mates, so both ways give equal scores. Each
    # fold's block of captions x images only: the pairs across folds are no fold's.
    cpu = torch.device("cpu")
    expected = []
    for images in folds:
        captions = np.flatnonzero(np.isin(data.caption_images.numpy(), images))
        pairs_c, pairs_i = np.tile(captions, len(images)), np.repeat(images, len(captions))
        block = score_pairs(model, data, pairs_c, pairs_i, 1, cpu, bf16=False).view(len(images), len(captions)).t()
        local = torch.from_numpy(np.searchsorted(images, data.caption_images.numpy()[captions]))
        expected.append(recall_at_k(block, local))
    args = (model, tokenizer_json, f"{synth_dir}/regions", f"{synth_dir}/captions", "test")
    result = evaluate(*args, batch_size=1, folds=2)
    assert result["folds"] == 2 and result["pairs_scored"] == sum(len(f) ** 2 * 2 for f in folds)  # 2 captions each
    for got, want in zip(result["per_fold"], expected):
        for direction in ("image_retrieval", "sentence_retrieval"):
            assert got[direction] == want[direction]
            assert got[direction]["chance_R@1"] == pytest.approx(1 / 10)
    for direction in ("image_retrieval", "sentence_retrieval"):
        assert result[direction]["R@1"] == pytest.approx(np.mean([f[direction]["R@1"] for f in expected]))
    assert "mean over 2 folds" in format_table(result)
    assert evaluate(*args, batch_size=512, folds=1)["image_retrieval"] == evaluate(*args, batch_size=512)["image_retrieval"]
    with pytest.raises(ValueError, match="two-stage"):
        evaluate(*args, folds=2, two_stage_k=5)


def test_eval_refuses_another_feature_width_and_counts_below_one(synth_dir, tiny_trained, tmp_path, capsys):
    from lait.cli import main
    from model.synthetic import write_synthetic

    model, tokenizer_json = tiny_trained
    write_synthetic(str(tmp_path / "d8"), images=12, feature_dim=8, test_images=6, seed=2)
    with pytest.raises(ValueError, match="d8/regions: features of width 8, the model reads 16"):
        evaluate(model, tokenizer_json, str(tmp_path / "d8" / "regions"), str(tmp_path / "d8" / "captions"), "test")
    for option, value in (("batch_size", 0), ("two_stage_k", 0), ("two_stage_k", -1), ("folds", 0),
                          ("batch_size", True), ("folds", 2.0), ("two_stage_k", "5")):
        with pytest.raises(ValueError, match=option.replace("_", "-")):
            evaluate(model, tokenizer_json, f"{synth_dir}/regions", f"{synth_dir}/captions", "test", **{option: value})
    for option in ("--batch-size", "--two-stage-k", "--folds"):
        with pytest.raises(SystemExit) as exit_:
            main(["eval", "--checkpoint", "x.pt", "--data", synth_dir, option, "0"])
        assert exit_.value.code == 2 and "must be 1 or more" in capsys.readouterr().err


def test_nan_scores_count_against_the_query():
    """NaN compares false with everything: a diverged model's NaN scores used to rank every answer first (R@1 1.0)."""
    nan = float("nan")
    for ks in ((1, 5, 10), (1, 2, 3)):
        result = recall_at_k(torch.full((4, 2), nan), torch.tensor([0, 0, 1, 1]), ks=ks)
        for direction in ("image_retrieval", "sentence_retrieval"):
            assert all(result[direction][f"R@{k}"] == 0.0 for k in ks), (ks, result)
    scores = torch.tensor([
        [0.9, 0.1, 0.0],   # caption 0 (image 0): first
        [nan, 0.8, 0.1],   # caption 1 (image 0): its own score is NaN: a miss at every K
        [0.3, 0.2, nan],   # caption 2 (image 1): 0.3 and the NaN rank above it: third
        [0.5, 0.6, 0.4],   # caption 3 (image 2): third
    ])
    result = recall_at_k(scores, torch.tensor([0, 0, 1, 2]), ks=(1, 2, 3))
    assert result["image_retrieval"] == {"R@1": 0.25, "R@2": 0.25, "R@3": 0.75, "chance_R@1": pytest.approx(1 / 3)}
    # Image 0: gold 0.9 (the NaN gold is skipped) first. Image 1: gold 0.2 below 0.8 and 0.6: third. Image 2:
    # gold 0.4 below caption 2's NaN: second.
    sr = result["sentence_retrieval"]
    assert (sr["R@1"], sr["R@2"], sr["R@3"]) == pytest.approx((1 / 3, 2 / 3, 1.0))


def test_a_diverged_model_gets_no_recall_and_its_nan_scores_are_reported(synth_dir, tiny_trained):
    import copy

    model, tokenizer_json = tiny_trained
    diverged = copy.deepcopy(model)
    with torch.no_grad():
        diverged.heads["itm"].classifier.bias.fill_(float("nan"))
    result = evaluate(diverged, tokenizer_json, f"{synth_dir}/regions", f"{synth_dir}/captions", "test")
    assert result["nan_scores"] == result["pairs_scored"] == 3200
    for direction in ("image_retrieval", "sentence_retrieval"):
        assert result[direction]["R@10"] == 0.0, result[direction]
    assert "3,200 of the 3,200 scores are NaN" in format_table(result)
    folded = evaluate(diverged, tokenizer_json, f"{synth_dir}/regions", f"{synth_dir}/captions", "test", folds=2)
    assert folded["nan_scores"] == 3200 // 2 and folded["image_retrieval"]["R@1"] == 0.0
    assert evaluate(model, tokenizer_json, f"{synth_dir}/regions", f"{synth_dir}/captions", "test")["nan_scores"] == 0


@pytest.mark.parametrize("bf16, tolerance", [(False, 1e-5), (True, 2e-2)])
def test_each_images_region_embeddings_are_computed_once_per_pass_with_the_same_scores(synth_dir, bf16, tolerance):
    """The cross-encoder projected and normalised an image's regions again for every caption scored against it:
    now once per image per scoring pass, and the scores are those of the forward on the features (fp32: to
    rounding; bf16 on the CPU: to a few of its steps)."""
    from model.data import load_captions
    from model.eval import score_pairs
    from model.imagebert import ImageBert
    from model.tokenizer import train_wordpiece
    from imagebert_testlib import tiny_config

    texts = [text for pairs in load_captions(f"{synth_dir}/captions", None).values() for _, text in pairs]
    tokenizer = train_wordpiece(texts, 120)
    torch.manual_seed(0)
    model = ImageBert(tiny_config(vocab_size=tokenizer.get_vocab_size(), feature_dim=16, max_regions=8,
                                  max_text_len=20, init_std=0.2))  # wide enough that the scores spread
    data = eval_split(model, tokenizer.to_str(), synth_dir)
    assert len(set(data.region_counts.tolist())) > 1  # ragged, so trimming and padding are exercised
    n_captions, n_images = data.shape
    share = np.arange(3, n_images - 5)  # some images have no pair (a process's share, a fold)
    pair_images = np.repeat(share, n_captions)
    pair_captions = np.tile(np.argsort(data.text_lengths, kind="stable"), len(share))
    embedded = []
    hook = model.embeddings.region_feature.register_forward_hook(
        lambda module, args, out: embedded.append(args[0].shape[0]))
    try:
        scores = score_pairs(model, data, pair_captions, pair_images, 64, torch.device("cpu"), bf16=bf16)
    finally:
        hook.remove()
    assert sum(embedded) == len(share), "each image's regions embedded once, not once per pair"

    # The scores of the whole forward on each pair's own region features, as scoring ran before.
    expected = []
    for start in range(0, len(pair_captions), 64):
        c, i = pair_captions[start: start + 64], pair_images[start: start + 64]
        t_len, r_len = int(data.text_lengths[c].max()), int(data.region_counts[i].max())
        batch = {key: data.text[key][c, :t_len] for key in ("input_ids", "text_mask")}
        batch.update({key: data.regions[key][i, :r_len] for key in ("region_locations", "region_mask")})
        batch["region_features"] = data.regions["region_features"][i, :r_len].to(torch.bfloat16 if bf16 else torch.float32)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            expected.append(model.score(batch).float())
    expected = torch.cat(expected)
    assert float(expected.std()) > 0.05, "scores that differ, so a mixed-up image would show"
    torch.testing.assert_close(scores, expected, rtol=tolerance, atol=tolerance)
    from model.eval import region_embeddings  # on the device: the images of the pass only, not the whole set's
    held = region_embeddings(model, data, share, 64, torch.device("cpu"), bf16)
    assert held["region_embeddings"].shape[0] == held["region_mask"].shape[0] == len(share) < n_images


def _count_captions_reads(monkeypatch, events: list) -> None:
    """Each read of a captions dataset (``schemas.read_table`` of kind captions, what every captions reader calls)
    and each checkpoint load (``model.train.model_from_checkpoint``) appended to ``events``: counting wrappers
    around the real functions."""
    import schemas
    import model.train

    real_read, real_load = schemas.read_table, model.train.model_from_checkpoint

    def read_table(path, kind=None, columns=None):
        if kind == "captions":
            events.append(("captions", path))
        return real_read(path, kind, columns)

    def model_from_checkpoint(path, *args, **kwargs):
        events.append(("checkpoint", path))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(schemas, "read_table", read_table)
    monkeypatch.setattr(model.train, "model_from_checkpoint", model_from_checkpoint)


def test_lait_eval_reads_its_captions_once_before_the_model_loads(synth_dir, tiny_checkpoint, tiny_trained, tmp_path,
                                                                    monkeypatch):
    """The captions are read (and checked) before the checkpoint loads, which can take minutes, and the eval scores
    what that read gave: one read, where the check up front and the eval itself each used to read them."""
    from lait.cli import main

    events = []
    _count_captions_reads(monkeypatch, events)
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", tiny_checkpoint, "--data", synth_dir, "--out", str(out), "--no-progress",
                 "--device", "cpu"]) == 0
    assert [kind for kind, _ in events] == ["captions", "checkpoint"], events
    result = json.loads(out.read_text())
    model, tokenizer_json = tiny_trained
    expected = evaluate(model, tokenizer_json, f"{synth_dir}/regions", f"{synth_dir}/captions", "test")
    for key in ("image_retrieval", "sentence_retrieval", "num_images", "num_captions", "pairs_scored",
                "captions_without_regions", "nan_scores", "split"):
        assert result[key] == expected[key], key


def test_lait_eval_refuses_bad_captions_before_loading_the_checkpoint(synth_dir, tmp_path, monkeypatch, capsys):
    """A split without captions is one line before the checkpoint is even opened (here one that is no checkpoint)."""
    from lait.cli import main

    events = []
    _count_captions_reads(monkeypatch, events)
    checkpoint = tmp_path / "not-a-checkpoint.pt"
    checkpoint.write_text("no")
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", synth_dir, "--split", "nosuch",
                 "--out", str(tmp_path / "eval.json"), "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("lait eval: ") and "no captions in split 'nosuch'" in error and error.count("\n") == 1
    assert [kind for kind, _ in events] == ["captions"], events
    assert not (tmp_path / "eval.json").exists()


def test_captions_read_up_front_score_as_the_dataset_does(synth_dir, tiny_trained, monkeypatch):
    """``evaluate`` given the split's captions already read (``read_eval_captions``) reads none and gives the
    result it gives reading them itself; captions of another split are refused."""
    from model.eval import read_eval_captions

    model, tokenizer_json = tiny_trained
    read = evaluate(model, tokenizer_json, f"{synth_dir}/regions", f"{synth_dir}/captions", "test", folds=2)
    captions = read_eval_captions(f"{synth_dir}/captions", "test")
    events = []
    _count_captions_reads(monkeypatch, events)
    given = evaluate(model, tokenizer_json, f"{synth_dir}/regions", captions, "test", folds=2)
    assert events == []
    for key in ("image_retrieval", "sentence_retrieval", "per_fold", "num_images", "num_captions", "pairs_scored"):
        assert given[key] == read[key], key
    with pytest.raises(ValueError, match="captions of split 'test' given to evaluate split 'train'"):
        evaluate(model, tokenizer_json, f"{synth_dir}/regions", captions, "train")


def test_blank_captions_left_out_of_the_split_are_counted(synth_dir, tiny_checkpoint, tmp_path, caplog, capsys):
    """Blank captions (empty or white space) were dropped from the eval without a word: ``eval.json`` now counts
    them (``blank_captions_skipped``), the table and the log say so, and the recall is the one of the rest."""
    import logging

    import schemas
    from lait.cli import main

    table = schemas.read_table(f"{synth_dir}/captions", "captions")
    texts, splits = table.column("caption").to_pylist(), table.column("split").to_pylist()
    test_rows = [i for i, split in enumerate(splits) if split == "test"]
    blanked = {test_rows[0]: "", test_rows[3]: "   ", test_rows[10]: "\t\n"}
    texts = [blanked.get(i, text) for i, text in enumerate(texts)]
    captions = str(tmp_path / "captions")
    schemas.write_table(table.set_column(table.schema.get_field_index("caption"), "caption", pa.array(texts)),
                        f"{captions}/part-00000.parquet", "captions")
    out = tmp_path / "eval.json"
    with caplog.at_level(logging.WARNING, logger="model.eval"):
        assert main(["eval", "--checkpoint", tiny_checkpoint, "--regions", f"{synth_dir}/regions", "--captions",
                     captions, "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    result = json.loads(out.read_text())
    assert result["blank_captions_skipped"] == 3 and result["num_captions"] == 80 - 3
    assert "3 blank captions of the split left out" in capsys.readouterr().out
    assert "3 blank captions of split 'test' left out" in caplog.text
    whole = tmp_path / "whole.json"
    assert main(["eval", "--checkpoint", tiny_checkpoint, "--data", synth_dir, "--out", str(whole),
                 "--no-progress", "--device", "cpu", "--folds", "2"]) == 0
    assert json.loads(whole.read_text())["blank_captions_skipped"] == 0
    assert "blank captions" not in capsys.readouterr().out
    only_blank = [text if split != "test" else " " for text, split in zip(texts, splits)]
    schemas.write_table(table.set_column(table.schema.get_field_index("caption"), "caption", pa.array(only_blank)),
                        f"{tmp_path}/blank/part-00000.parquet", "captions")
    assert main(["eval", "--checkpoint", tiny_checkpoint, "--regions", f"{synth_dir}/regions", "--captions",
                 f"{tmp_path}/blank", "--out", str(tmp_path / "none.json"), "--device", "cpu"]) == 2
    assert "no captions in split 'test' (80 blank)" in capsys.readouterr().err
