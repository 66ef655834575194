"""`lait demo`: the orchestration (order, skips, closing steps) and its command lines."""
import json
import os
import platform
import subprocess
import sys

import pytest

from demo import report
from demo import run as demo_run
from demo.run import Demo, DemoConfig, Step
from tests.inprocess import lait_here

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _lait(*args, timeout=300):
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "lait", *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=timeout)


def _in_this_process(demo: Demo) -> Demo:
    """``demo`` with the stages it starts as `python -m lait ...` run by ``lait_here`` (``cli.main`` in this
    process): the same command lines and exit statuses, without a Python start and LAIT's imports each."""
    def run_process(argv, **popen_args):
        assert argv[:3] == [sys.executable, "-m", "lait"], argv
        return lait_here(*argv[3:], check=False).returncode

    demo.run_process = run_process
    return demo


def test_dry_run_prints_the_stage_commands_in_order(tmp_path):
    proc = lait_here("demo", "--dry-run", "--out", str(tmp_path / "d"), "--min-side", "100", "--relevance-keep-rate", "0.85")
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(None, 1) for line in proc.stdout.splitlines())
    assert list(lines) == ["site", "crawl", "filter0", "relevance_train", "filter", "relevance_eval", "detector",
                           "features", "test_features", "captions", "train", "eval"]
    out = str(tmp_path / "d")
    assert f"-m lait crawl http://127.0.0.1:PORT/ --out {out}/crawl --allow-private-networks --min-side 100" in lines["crawl"]
    assert f"--input {out}/crawl --output {out}/filter0 --min-side 100 --max-aspect 3.0" in lines["filter0"]
    assert f"--out {out}/relevance_model --epochs 20 --image-size 96 --mismatch-cost 1.0" in lines["relevance_train"]
    assert "--relevance-keep-rate 0.85" in lines["filter"] and f"--relevance {out}/relevance_model" in lines["filter"]
    assert f"--input {out}/test/pairs --output {out}/test_features --detector demo --weights" in lines["test_features"]
    for prefix in ("pretrain.0.datasets.0", "pretrain.1.datasets.0", "finetune.datasets.0"):
        assert f"--set {prefix}.regions={out}/features/regions --set {prefix}.captions={out}/captions" in lines["train"]
    assert f"--set eval.regions={out}/test_features/regions" in lines["train"]
    assert (f"-m lait eval --checkpoint {out}/train/checkpoints/final.pt --regions {out}/test_features/regions "
            f"--captions {out}/test/captions --out {out}/eval.json") in lines["eval"]
    assert not os.path.exists(out)  # a dry run writes nothing
    model_cut = lait_here("demo", "--dry-run", "--out", out).stdout  # the default: the model's own threshold
    assert "--relevance-keep-rate" not in model_cut and f"--relevance {out}/relevance_model" in model_cut


def test_failed_steps_skip_their_dependents_and_the_rest_still_runs(tmp_path):
    demo = Demo(DemoConfig(out=str(tmp_path / "r")), echo=lambda _: None)
    ran = []
    py = sys.executable
    demo.steps = [
        Step("a", "fails", command=lambda: [py, "-c", "import sys; sys.exit(3)"]),
        Step("b", "needs a", ("a",), func=lambda: ran.append("b")),
        Step("c", "independent", func=lambda: ran.append("c")),
        Step("d", "needs b", ("b",), func=lambda: ran.append("d")),
        Step("e", "raises", ("c",), func=lambda: 1 / 0),
    ]
    assert demo.run() == 1
    assert ran == ["c"]
    status = {s["name"]: (s["status"], s["detail"]) for s in json.load(open(tmp_path / "r" / "demo.json"))["steps"]}
    assert status["a"] == ("failed", "RuntimeError: exited with status 3")
    assert status["b"] == ("skipped", "needs a") and status["d"] == ("skipped", "needs b")
    assert status["c"][0] == "ok" and status["e"] == ("failed", "ZeroDivisionError: division by zero")
    # The closing steps ran on what exists.
    assert (tmp_path / "r" / "report.html").exists() and (tmp_path / "r" / "audit.json").exists()


def test_demo_up_to_the_crawl_serves_the_site_and_closes_the_books(tmp_path):
    out = tmp_path / "run"
    # In this process (cli.main, as `python -m lait demo` runs it; its crawl step still starts `lait crawl`), on
    # the smallest site that plants every category
    proc = lait_here("demo", "--out", str(out), "--scenes", "5", "--test-scenes", "2", "--stop-after", "crawl",
                     check=False)
    demo_json = json.load(open(out / "demo.json"))
    status = {s["name"]: s["status"] for s in demo_json["steps"]}
    assert status["site"] == "ok" and status["crawl"] in ("ok", "failed")
    # What the figures depend on besides the code: the kernels PyTorch picks follow the CPU's features.
    machine = demo_json["machine"]
    assert machine["cpu_count"] == os.cpu_count() and machine["python"] == platform.python_version()
    assert machine["packages"]["torch"] == "2.14.1" and set(machine["cpu_flags"]) <= set(demo_run.CPU_FLAGS)
    assert {s for n, s in status.items() if n not in ("site", "crawl")} == {"not_run"}
    assert proc.returncode == (0 if status["crawl"] == "ok" else 1)
    ledger = json.load(open(out / "site" / "ledger.json"))
    assert ledger["seed"] == 0 and len(ledger["items"]) > 20
    assert (out / "test" / "captions").is_dir() and (out / "test" / "pairs").is_dir()
    plant = json.load(open(out / "planted.json"))
    assert set(plant["categories"]) >= {"mismatch", "non_english", "corrupt"}
    report_html = (out / "report.html").read_text()
    assert report_html.count("<section") == 8 and "<td class=l>crawl</td>" in report_html  # the steps table
    assert "LAIT demo summary" in proc.stdout and "report:" in proc.stdout
    if status["crawl"] == "ok":
        # Once the crawler is merged: the crawl alone catches every crawl-level category, its books
        # balance, and every other item waits in the candidates (collected, not lost).
        cats = plant["categories"]
        for cat in ("decorative", "tiny_icon", "banner", "corrupt", "robots_disallowed", "opt_out"):
            assert (cats[cat]["recall"], cats[cat]["precision"]) == (1.0, 1.0), (cat, cats[cat])
        assert plant["clean"]["lost_by"] == {"collected": plant["clean"]["items"]}
        assert json.load(open(out / "audit.json"))["ok"] is True
        # The crawl records the image rules it applied, which a later --from reads.
        assert demo_run.stage_options(str(out), "crawl") == {"min_side": 128, "max_aspect": 3.0}


def test_stop_after_rejects_unknown_steps(tmp_path):
    proc = lait_here("demo", "--out", str(tmp_path / "x"), "--stop-after", "nonsense", check=False)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
    assert [name for name, _ in demo_run.plan(DemoConfig())] == demo_run.step_names()


def test_relevance_eval_and_captions_on_a_hand_made_run(tmp_path):
    import pytest

    import schemas
    from demo.site import build_site
    from demo_runfolder import make_run

    site = build_site(seed=9, scenes=12)  # every category, few clean images
    out = tmp_path / "run"
    make_run(out, site, with_training=False)
    (out / "site").mkdir()
    (out / "site" / "ledger.json").write_text(site.ledger_json())
    demo = _in_this_process(Demo(DemoConfig(out=str(out)), echo=lambda _: None))
    try:
        demo.relevance_eval()
        ran_model_eval = True
    except RuntimeError as exc:  # no relevance model in a hand-made run: lait relevance eval fails
        assert "lait relevance eval exited" in str(exc)
        ran_model_eval = False
    # The labelled set is a pairs dataset (the contract) plus is_match, as lait relevance eval reads it.
    labelled = schemas.read_table(str(out / "relevance_labelled"), "pairs")
    counts = site.counts()
    assert sorted(labelled.column("is_match").to_pylist()) == [False] * counts["mismatch"] + [True] * counts["clean"]
    by_image = dict(zip(labelled.column("image_url").to_pylist(), labelled.column("is_match").to_pylist()))
    mismatch = next(i for i in site.ledger if i["category"] == "mismatch")
    assert by_image["http://127.0.0.1:8123" + mismatch["image"]] is False
    result = json.load(open(out / "relevance_eval.json"))
    # make_run rejects one clean pair and keeps one mismatch, both as relevance decisions.
    assert result["true_kept"] == round((counts["clean"] - 1) / counts["clean"], 4)
    assert result["mismatched_removed"] == round((counts["mismatch"] - 1) / counts["mismatch"], 4)
    assert result["labelled_pairs"] == counts["mismatch"] + counts["clean"]
    assert ran_model_eval or "relevance_eval_error" in result

    demo.make_captions()
    caps = schemas.read_table(str(out / "captions"), "captions")
    pairs = schemas.read_table(str(out / "filter" / "pairs"), "pairs")
    assert caps.num_rows == len(set(zip(pairs.column("image_id").to_pylist(), pairs.column("caption").to_pylist())))
    assert set(caps.column("split").to_pylist()) == {"train"}
    with pytest.raises(FileNotFoundError):
        demo.checkpoint()


def test_from_reuses_earlier_outputs_and_skips_when_they_are_missing(tmp_path):
    out = tmp_path / "r"
    (out / "a").mkdir(parents=True)
    ran = []

    def make():
        demo = Demo(DemoConfig(out=str(out), start_from="c"), echo=lambda _: None)
        demo.steps = [Step("a", "wrote a/", outputs=("a",), func=lambda: ran.append("a")),
                      Step("b", "wrote b/", outputs=("b",), func=lambda: ran.append("b")),
                      Step("c", "needs a", ("a",), func=lambda: ran.append("c")),
                      Step("d", "needs b", ("b",), func=lambda: ran.append("d"))]
        return demo

    demo = make()
    assert demo.run() == 1  # d could not run: b's outputs are missing
    assert ran == ["c"]
    assert [(s.name, s.status) for s in demo.steps] == [("a", "reused"), ("b", "missing"), ("c", "ok"), ("d", "skipped")]


def test_from_crawl_serves_the_same_site_again(tmp_path):
    out = tmp_path / "r"
    first = Demo(DemoConfig(out=str(out), scenes=5, test_scenes=2), echo=lambda _: None)
    first.make_site()
    url = first.server.url
    first.server.stop()
    again = Demo(DemoConfig(out=str(out), scenes=5, test_scenes=2, start_from="crawl"), echo=lambda _: None)
    try:
        assert again.site_url() != url  # a fresh server on a new free port ...
        assert again.site.ledger_json() == first.site.ledger_json()  # ... serving the same site
    finally:
        again.server.stop()


def test_closing_steps_survive_a_damaged_dataset(tmp_path):
    from demo.site import build_site
    from demo_runfolder import make_run

    site = build_site(seed=4, scenes=12)
    out = tmp_path / "run"
    make_run(out, site, with_training=False)
    (out / "site").mkdir()
    (out / "site" / "ledger.json").write_text(site.ledger_json())
    (out / "crawl" / "candidates" / "part-00000.parquet").write_bytes(b"damaged")
    said = []
    Demo(DemoConfig(out=str(out)), echo=said.append).finish()
    assert any("could not write planted.json" in line for line in said)
    assert json.load(open(out / "audit.json"))["ok"] is False
    assert "The books do NOT balance" in (out / "report.html").read_text()


def test_summary_prints_the_funnel_and_recall_at_k_beside_chance(tmp_path):
    from demo.site import build_site
    from demo_runfolder import make_run

    site = build_site(seed=4, scenes=12)
    out = tmp_path / "run"
    make_run(out, site)
    (out / "site").mkdir()
    (out / "site" / "ledger.json").write_text(site.ledger_json())
    demo = Demo(DemoConfig(out=str(out)), echo=lambda _: None)
    demo.finish()
    text = demo_run.summary(str(out), demo.steps, 12.5)
    lines = text.splitlines()
    funnel = lines[next(i for i, line in enumerate(lines) if line.startswith("funnel")):]
    assert funnel[0].split() == ["funnel", "in", "kept", "rejected"]
    for stage in ("crawl", "filter"):
        stats = json.load(open(out / stage / "stats.json"))
        row = next(line.split() for line in funnel if line.startswith(stage + " "))
        assert row[1:] == [str(stats["in"]), str(stats["kept"]), str(stats["rejected"])]
    header = next(line.split() for line in lines if line.startswith("retrieval"))
    assert header[1:4] == ["R@1", "R@5", "R@10"] and "chance" in header
    image = next(line.split() for line in lines if line.startswith("image_retrieval"))
    assert image[1:] == ["0.310", "0.620", "0.800", "0.007", "46.3x"]
    sentence = next(line.split() for line in lines if line.startswith("sentence_retrieval"))
    assert sentence[1:4] == ["0.350", "0.660", "0.830"] and sentence[-1] == "52.2x"
    assert any(line.startswith("planted noise: min precision") for line in lines)


def test_a_bad_train_config_is_refused_before_any_step(tmp_path):
    """--train-config was read only when the train step ran (after the crawl, the filters and the detector)."""
    import pytest

    out = str(tmp_path / "d")
    proc = _lait("demo", "--out", out, "--train-config", str(tmp_path / "no-such.yaml"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("lait demo: error: --train-config") and "no-such.yaml" in proc.stderr
    assert not os.path.exists(out), "nothing ran"
    # Parsed as the train step builds it (the run's data paths set on its stages): a config with one pretraining
    # stage cannot take the demo's second, a bad value is named
    one_stage = tmp_path / "one.yaml"
    one_stage.write_text("pretrain:\n  - {name: s1, steps: 2, batch_size: 4, datasets: [{regions: r, captions: c}]}\n"
                         "finetune: {steps: 2, batch_size: 4, datasets: [{regions: r, captions: c}]}\n")
    with pytest.raises(ValueError, match=f"--train-config {one_stage}: .*pretrain.1"):
        demo_run.check_config(DemoConfig(out=out, train_config=str(one_stage)))
    bad = tmp_path / "bad.yaml"
    bad.write_text(open(demo_run.DemoConfig().train_config).read() + "\nlog_every: 0\n")
    with pytest.raises(ValueError, match="--train-config .*log_every"):
        demo_run.check_config(DemoConfig(out=out, train_config=str(bad)))
    # Not checked when the train step does not run
    demo_run.check_config(DemoConfig(out=out, train_config=str(bad), stop_after="crawl"))
    demo_run.check_config(DemoConfig(out=out, train_config=str(bad), start_from="eval"))
    demo_run.check_config(DemoConfig(out=out))  # the shipped one


def test_from_refuses_a_site_made_with_other_options_before_anything_runs(tmp_path, capsys):
    """`--from crawl` with another --seed/--scenes than the run that made the folder: the crawl fetched the new
    options' site while planted.json scored it against the old ledger (precision 0.04, exit 0, no warning)."""
    import pytest

    from lait import cli

    out = tmp_path / "r"
    first = Demo(DemoConfig(out=str(out), seed=3, scenes=5, test_scenes=2), echo=lambda _: None)
    first.make_site()
    first.server.stop()
    capsys.readouterr()  # the site's progress bar
    same = dict(out=str(out), seed=3, scenes=5, test_scenes=2)
    for start in ("crawl", "filter", "eval"):
        demo_run.check_config(DemoConfig(**same, start_from=start, stop_after="eval"))
    for changed, flag in (({"seed": 4}, "--seed 3"), ({"scenes": 6}, "--scenes 5"), ({"test_scenes": 3}, "--test-scenes 2")):
        with pytest.raises(ValueError, match=f"--from crawl would reuse the site .* made with {flag}, but"):
            demo_run.check_config(DemoConfig(**{**same, **changed}, start_from="crawl", stop_after="crawl"))
        demo_run.check_config(DemoConfig(**{**same, **changed}, start_from="site", stop_after="crawl"))  # remade
        demo_run.check_config(DemoConfig(**{**same, **changed}, stop_after="crawl"))
    before = sorted(os.listdir(out))
    argv = ["demo", "--out", str(out), "--seed", "5", "--scenes", "7", "--test-scenes", "2", "--from", "crawl",
            "--stop-after", "crawl"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lait demo: error: --from crawl would reuse")
    assert "--seed 3 --scenes 5, but this run has --seed 5 --scenes 7" in err and "without --from" in err
    assert sorted(os.listdir(out)) == before and not (out / "demo.json").exists()  # nothing ran
    # Read from what the site step wrote (an older folder's demo.json may be the run's before an interrupted one)
    assert demo_run.saved_site_options(str(out)) == {"seed": 3, "scenes": 5, "test_scenes": 2}
    (out / "site" / "ledger.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read .*ledger.json"):
        demo_run.check_config(DemoConfig(**same, start_from="crawl", stop_after="crawl"))


def _fake_steps(demo, fail=(), interrupt=()):
    """The demo's real steps (names, needs, outputs), each writing its outputs with the marker "new" (a folder
    holding a file "marker", or a .json file) instead of running its stage; the steps in ``fail`` raise, those in
    ``interrupt`` are stopped as by Ctrl-C once they have written their outputs."""
    def write(step):
        if step.name in fail:
            raise RuntimeError("failed on purpose")
        for rel in step.outputs:
            path = os.path.join(demo.out, rel)
            if rel.endswith(".json"):
                open(path, "w").write("new")
            else:
                os.makedirs(path, exist_ok=True)
                open(os.path.join(path, "marker"), "w").write("new")
        if step.name in interrupt:
            raise KeyboardInterrupt

    for step in demo.steps:
        step.command, step.func = None, (lambda s=step: write(s))
    demo.finish = lambda: None  # planted/audit/report: not what these tests check
    return demo


def _earlier_run(out, **options):
    """A run folder as a whole earlier run (with ``options``) left it: every step's outputs, marked "old", and its
    demo.json saying that each step finished, with the options it was run with."""
    demo = Demo(DemoConfig(out=str(out), **options), echo=lambda _: None)
    for step in demo.steps:
        for rel in step.outputs:
            path = out / rel
            if rel.endswith(".json"):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("old")
            else:
                path.mkdir(parents=True, exist_ok=True)
                (path / "marker").write_text("old")
        step.status, step.made_with = "ok", {name: demo_run.option_value(demo.cfg, name) for name in step.options}
    demo.status = "finished"
    demo.write_log()


def _markers(out):
    found = {}
    for step in Demo(DemoConfig(out=str(out)), echo=lambda _: None).steps:
        for rel in step.outputs:
            path = out / rel if rel.endswith(".json") else out / rel / "marker"
            found[rel] = path.read_text() if path.exists() else None
    return found


def test_a_rerun_removes_the_stale_outputs_of_the_steps_it_does_not_run(tmp_path):
    """`--stop-after filter0`, then `--from crawl --stop-after crawl`: filter0/ stayed from the old crawl (the audit
    said the books do NOT balance, the report showed the old funnel as this run's)."""
    out = tmp_path / "r"
    _earlier_run(out)
    said = []
    demo = _fake_steps(Demo(DemoConfig(out=str(out), start_from="crawl", stop_after="crawl"), echo=said.append))
    assert demo.run() == 0
    markers = _markers(out)
    # Before --from: reused. What reads the crawl (directly or not): removed. What reads only reused steps: kept.
    assert markers["site"] == markers["test"] == "old" and markers["crawl"] == "new"
    downstream = ("filter0", "relevance_model", "filter", "relevance_labelled", "relevance_eval.json", "features",
                  "captions", "train", "eval.json")
    assert {rel: markers[rel] for rel in downstream} == dict.fromkeys(downstream)
    assert markers["detector"] == markers["test_features"] == "old"
    detail = {s.name: (s.status, s.detail) for s in demo.steps}
    assert detail["filter0"] == ("not_run", "--stop-after crawl; stale outputs of an earlier run removed")
    assert detail["detector"] == ("not_run", "--stop-after crawl; outputs of an earlier run kept (its inputs were reused)")
    assert any("filter0: not run, removed its outputs" in line for line in said)

    # --from without --stop-after runs every later step; one that is skipped (its input failed) loses its old
    # outputs too, and so does what reads it.
    _earlier_run(out)
    demo = _fake_steps(Demo(DemoConfig(out=str(out), start_from="filter"), echo=lambda _: None), fail=("filter",))
    assert demo.run() == 1
    markers = _markers(out)
    assert all(markers[rel] == "old" for rel in ("site", "test", "crawl", "filter0", "relevance_model"))
    assert all(markers[rel] is None for rel in ("filter", "relevance_labelled", "relevance_eval.json", "features",
                                                "captions", "train", "eval.json"))
    assert markers["detector"] == markers["test_features"] == "new"
    status = {s.name: s.status for s in demo.steps}
    assert status["filter"] == "failed" and status["features"] == status["eval"] == "skipped"


def test_stale_outputs_that_cannot_be_removed_are_said_and_the_run_goes_on(tmp_path, monkeypatch):
    """Removing a not-run step's stale outputs ran outside the steps' error handling: an OSError there ended the
    run with a traceback, before the closing files."""
    out = tmp_path / "r"
    _earlier_run(out)
    clear = Demo.clear_outputs

    def refuse_filter0(self, step):
        if step.name == "filter0":
            raise PermissionError(13, "Permission denied", str(out / "filter0"))
        return clear(self, step)

    monkeypatch.setattr(Demo, "clear_outputs", refuse_filter0)
    said = []
    demo = _fake_steps(Demo(DemoConfig(out=str(out), start_from="crawl", stop_after="crawl"), echo=said.append))
    assert demo.run() == 0
    detail = {s.name: s.detail for s in demo.steps}
    assert "could not remove the stale outputs of an earlier run" in detail["filter0"]
    assert any("warning: filter0: could not remove" in line for line in said)
    assert _markers(out)["filter"] is None  # the other stale outputs still went


def test_from_refuses_reused_outputs_made_with_other_options(tmp_path, capsys):
    """`--from` checked the site's options only: `--from filter --min-side 100` kept the crawl made with 128,
    `--from features --detector-epochs 2` the detector trained 4 epochs, `--from filter --relevance-epochs 3` the
    relevance model of 20, while demo.json recorded the new values."""
    import pytest

    from lait import cli

    out = tmp_path / "r"
    _earlier_run(out)
    same = dict(out=str(out))
    (tmp_path / "other.yaml").write_text(open(DemoConfig().train_config).read() + "# edited\n")
    shipped = demo_run.option_value(DemoConfig(), "train_config")
    rerun_crawl, rerun_relevance = "that step (--from crawl)", "that step (--from relevance_train)"
    for changed, start, made, rerun in (
            ({"min_side": 100}, "filter0", "crawl, made with --min-side 128, but this run has --min-side 100",
             rerun_crawl),
            ({"max_aspect": 4.0}, "features",
             "crawl, filter0, filter, made with --max-aspect 3.0, but this run has --max-aspect 4.0",
             "them (--from crawl)"),
            ({"relevance_epochs": 3, "relevance_members": 1}, "filter",
             "relevance_train, made with --relevance-epochs 20 --relevance-members 3, but this run has "
             "--relevance-epochs 3 --relevance-members 1", rerun_relevance),
            ({"relevance_image_size": 64}, "eval", "relevance_train, made with --relevance-image-size 96",
             rerun_relevance),
            ({"relevance_mismatch_cost": 0.5}, "filter", "made with relevance_mismatch_cost 1.0", rerun_relevance),
            ({"relevance_keep_rate": 0.8}, "relevance_eval", "filter, made with --relevance-keep-rate 0.0",
             "--from filter"),
            ({"detector_epochs": 2}, "features",
             "detector, made with --detector-epochs 4, but this run has --detector-epochs 2", "--from detector"),
            ({"detector_scenes": 10}, "test_features", "made with --detector-scenes 400", "--from detector"),
            ({"train_config": str(tmp_path / "other.yaml")}, "eval",
             f"train, made with --train-config {shipped['path']} (sha256 {shipped['sha256'][:12]})", "--from train"),
    ):
        with pytest.raises(ValueError, match=f"^--from {start} would reuse the outputs of ") as err:
            demo_run.check_config(DemoConfig(**same, **changed, start_from=start, stop_after=start))
        assert made in str(err.value) and rerun in str(err.value) and "\n" not in str(err.value)
        # Rerunning the step that follows the option (or an earlier one) is what the message says to do.
        step = rerun.split("--from ")[1].rstrip(")")
        demo_run.check_config(DemoConfig(**same, **changed, start_from=step, stop_after=step))
    # The command refuses before anything runs: one line, exit status 2, the folder as it was.
    before = (out / "demo.json").read_text()
    assert cli.main(["demo", "--out", str(out), "--from", "filter", "--stop-after", "filter", "--min-side", "100"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lait demo: error: --from filter would reuse the outputs of crawl, "
                                                   "filter0, made with --min-side 128")
    assert (out / "demo.json").read_text() == before

    # What a stage recorded itself wins over demo.json (it is what was used): lait filter's settings, lait relevance
    # train's config. Without a demo.json that records the crawl's options, those are not known: reused, and said.
    (out / "demo.json").unlink()
    (out / "filter" / "stats.json").write_text(json.dumps({"settings": {"min_side": 128, "max_aspect": 3.0,
                                                                        "relevance_keep_rate": 0.9}}))
    (out / "relevance_model" / "config.json").write_text(json.dumps({"training": {"epochs": 7, "image_size": 96,
                                                                                  "mismatch_cost": 1.0, "members": 3}}))
    with pytest.raises(ValueError, match="reuse the outputs of relevance_train, filter, made with --relevance-epochs 7 "
                                         "--relevance-keep-rate 0.9, but this run has --relevance-epochs 20 "
                                         "--relevance-keep-rate 0.0: rerun them \\(--from relevance_train\\)"):
        demo_run.check_config(DemoConfig(**same, start_from="relevance_eval", stop_after="relevance_eval"))
    demo = _fake_steps(Demo(DemoConfig(**same, relevance_epochs=7, relevance_keep_rate=0.9, start_from="relevance_eval",
                                       stop_after="relevance_eval"), echo=lambda _: None))
    assert demo.run() == 0
    steps = {s["name"]: s for s in json.load(open(out / "demo.json"))["steps"]}
    assert steps["crawl"]["status"] == "reused" and steps["crawl"]["options"] == {"min_side": None, "max_aspect": None}
    assert "the --min-side, --max-aspect it was made with are not recorded" in steps["crawl"]["detail"]
    assert steps["filter"]["options"] == {"min_side": 128, "max_aspect": 3.0, "relevance_keep_rate": 0.9}
    assert steps["relevance_train"]["options"]["relevance_epochs"] == 7


def test_demo_json_records_the_options_each_steps_outputs_were_made_with(tmp_path):
    """demo.json's config holds the options given; each step's `options` the ones its outputs in the folder were
    made with: this run's for the steps it ran, the earlier run's for outputs it reused or kept."""
    out = tmp_path / "r"
    _earlier_run(out, detector_epochs=2)
    demo = _fake_steps(Demo(DemoConfig(out=str(out), min_side=100, start_from="crawl", stop_after="crawl"),
                            echo=lambda _: None))
    assert demo.run() == 0
    log = json.load(open(out / "demo.json"))
    steps = {s["name"]: s for s in log["steps"]}
    assert log["status"] == "finished" and log["config"]["min_side"] == 100 and log["config"]["detector_epochs"] == 4
    assert steps["crawl"]["options"] == {"min_side": 100, "max_aspect": 3.0}
    assert steps["filter0"]["options"] is None  # removed: made from the old crawl
    assert steps["detector"]["options"] == {"seed": 0, "detector_scenes": 400, "detector_epochs": 2}
    assert steps["detector"]["detail"].endswith("outputs of an earlier run kept (its inputs were reused), "
                                                "made with --detector-epochs 2")
    # ... so that a later --from checks against them: the detector kept is one of 2 epochs.
    demo_run.check_config(DemoConfig(out=str(out), min_side=100, detector_epochs=2, start_from="features",
                                     stop_after="features"))
    with pytest.raises(ValueError, match="detector, made with --detector-epochs 2"):
        demo_run.check_config(DemoConfig(out=str(out), min_side=100, start_from="features", stop_after="features"))


def test_a_stopped_run_leaves_no_earlier_runs_closing_files(tmp_path):
    """demo.json, planted.json, audit.json and report.html were written at the end only: Ctrl-C midway left the earlier
    run's, which then described a run that did not happen. Now demo.json is replaced first and rewritten as each step
    starts and ends, and the earlier closing files are removed."""
    out = tmp_path / "r"
    _earlier_run(out)
    for name in ("planted.json", "audit.json", "report.html"):
        (out / name).write_text("old")
    demo = _fake_steps(Demo(DemoConfig(out=str(out), min_side=100, start_from="crawl"), echo=lambda _: None),
                       interrupt=("relevance_train",))
    with pytest.raises(KeyboardInterrupt):
        demo.run()
    assert not any((out / name).exists() for name in ("planted.json", "audit.json", "report.html"))
    log = json.load(open(out / "demo.json"))
    status = {s["name"]: (s["status"], s["options"]) for s in log["steps"]}
    assert log["status"] == "interrupted" and log["config"]["min_side"] == 100
    assert status["site"] == ("reused", {}) and status["crawl"] == ("ok", {"min_side": 100, "max_aspect": 3.0})
    assert status["relevance_train"] == ("interrupted", None) and status["filter"] == ("pending", None)
    text = report.build_report(str(out))
    assert "The run was interrupted (Ctrl-C) before it finished its steps" in text
    # The interrupted step's outputs (written in part) are not reused by a later --from, nor are those of the
    # steps it did not reach (an earlier run's, made from the crawl this run replaced).
    demo = _fake_steps(Demo(DemoConfig(out=str(out), min_side=100, start_from="detector"), echo=lambda _: None))
    assert demo.run() == 1
    detail = {s.name: (s.status, s.detail) for s in demo.steps}
    assert detail["crawl"] == ("reused", "--from detector")
    assert detail["relevance_train"] == ("missing", "for --from, demo.json does not record its outputs as finished "
                                                    "(interrupted)")
    assert detail["filter"][0] == "missing" and detail["features"][0] == "skipped"
    assert json.load(open(out / "demo.json"))["status"] == "finished"


def test_ctrl_c_during_a_step_says_so_in_demo_json(tmp_path):
    """A real `lait demo` stopped by Ctrl-C (SIGINT to its process group, as a terminal sends it) during the crawl."""
    import signal
    import time

    out = tmp_path / "r"
    out.mkdir()
    for name in ("planted.json", "audit.json", "report.html"):
        (out / name).write_text('{"old": true}')
    (out / "demo.json").write_text('{"config": {}, "steps": []}')  # an earlier demo's (another folder is refused)
    proc = subprocess.Popen([sys.executable, "-m", "lait", "demo", "--out", str(out), "--scenes", "5",
                             "--test-scenes", "2"], env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            log = report.read_json(str(out / "demo.json")) or {}
            if any(s.get("name") == "crawl" and s.get("status") == "running" for s in log.get("steps", [])):
                break
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    # (The crawl's own processes, stopped too, may print theirs: one stopped while Python starts, a traceback.)
    assert err.rstrip().endswith("lait demo: interrupted; rerun with --from STEP to reuse the outputs of the steps "
                                 "before STEP") and "demo/run.py" not in err
    log = json.load(open(out / "demo.json"))
    status = {s["name"]: s["status"] for s in log["steps"]}
    assert log["status"] == "interrupted" and status["site"] == "ok" and status["crawl"] == "interrupted"
    assert {status[name] for name in list(status)[2:]} == {"pending"}
    assert not any((out / name).exists() for name in ("planted.json", "audit.json", "report.html"))
