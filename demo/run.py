"""The embedded default end to end: generated site -> crawl -> filter -> features -> train -> eval -> report.

``run_demo(out_dir, ...)`` serves the generated website on 127.0.0.1 and runs every stage as the
user would, through the ``lait`` command line in subprocesses (``python -m lait ...``), printing
progress per stage. The stages talk only through the run folder:

    OUT/site/ledger.json        what was planted where (demo.site)
    OUT/test/{pairs,captions}/  the held-out scenes, written directly (never crawled)
    OUT/crawl/                  lait crawl URL --out OUT/crawl --allow-private-networks ...
    OUT/filter0/                lait filter (rules only): the relevance model's training pairs
    OUT/relevance_model/        lait relevance train --input OUT/filter0 --out ...
    OUT/filter/                 lait filter --relevance OUT/relevance_model [--relevance-keep-rate K]
    OUT/relevance_eval.json     auc from lait relevance eval + true_kept / mismatched_removed
    OUT/detector/               model.detectors.demo.train_demo_detector on generated scenes
    OUT/features/, OUT/test_features/   lait features --detector demo --weights ...
    OUT/captions/               train captions from the kept pairs
    OUT/train/                  lait train --config configs/demo.yaml --set ...
    OUT/eval.json               lait eval --checkpoint OUT/train/checkpoints/final.pt --regions ... --captions ...
    OUT/planted.json, OUT/audit.json, OUT/report.html, OUT/demo.json (status, steps, times, commands, options)

A step whose inputs failed is skipped, independent steps still run, and the closing steps
(planted, audit, report) always run on whatever exists. demo.json is written when the run starts and as each step
starts and ends, with the run's ``status``: a run stopped early (Ctrl-C, an error) leaves one that says so, and
none of an earlier run's planted.json, audit.json or report.html. A rerun (``--from``) must keep the options that
shape the reused site (``SITE_OPTIONS``) and those the reused steps' outputs follow (``Step.options``, as each step
recorded them), and removes what an earlier run left of the steps it does not make when that was made from a step
it remade (a skipped step's, or a step's after ``--stop-after``).
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa

import schemas
from demo import audit, datasets, planted, report
from demo.scenes import CLASSES, detector_samples, generate_scenes
from demo.site import SiteServer, build_site
from filters import option_rules

log = logging.getLogger(__name__)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The demo detector's size for ``make demo``: half the default's early channels and RoI samples,
#: about 2.5x faster per training step on one core, so that a few epochs fit the 15-minute budget.
DETECTOR_CONFIG = {"channels": [16, 32, 32, 64, 64, 128], "box_batch_size_per_image": 64}
#: Torch threads for in-process training: on a busy 2-core machine two threads can be several
#: times slower than one (measured 3-4 s per detector step with two, 0.8 s with one).
TRAIN_THREADS = 1
#: Seconds a step's process stopped by Ctrl-C is given to end by itself (it got the Ctrl-C too, as one of the
#: terminal's process group, and stops its own workers: 1-2 s for ``lait relevance train``), then SIGTERM, then after
#: ``STEP_TERM_WAIT`` more, SIGKILL. A second Ctrl-C skips the wait. ``subprocess.run`` killed it after 0.25 s:
#: its workers were orphaned and multiprocessing reported leaked semaphores.
STEP_STOP_WAIT = 30.0
STEP_TERM_WAIT = 5.0


@dataclass
class DemoConfig:
    """Everything a demo run depends on; the defaults are the embedded default (``make demo``)."""

    out: str = "demo-run"
    seed: int = 0
    scenes: int = 1500
    test_scenes: int = 150
    detector_scenes: int = 400
    detector_epochs: int = 4
    min_side: int = 128
    max_aspect: float = 3.0
    relevance_keep_rate: float = 0.0  # 0: the threshold the relevance model chose on its held-out pages
    relevance_epochs: int = 20
    relevance_image_size: int = 96  # 96 px rather than the trainer's 64: fewer mismatches slip through
    # Cost of keeping a mismatch relative to losing a true pair when the model picks its threshold.
    # 1 (Youden's J) rather than the trainer's 0.5: the demo's targets weigh mismatch recall and
    # clean-pair precision alike, and at 0.5 some runs let just over 10% of the mismatches through.
    relevance_mismatch_cost: float = 1.0
    # Three models from consecutive seeds, averaged: one model's cut met the demo's 0.9 mismatch precision in
    # 5 of 7 runs (each seed misjudges its own handful of pairs); three met it on every trio tried.
    relevance_members: int = 3
    train_config: str = os.path.join(REPO_ROOT, "configs", "demo.yaml")
    python: str = sys.executable
    stop_after: str | None = None  # run the steps up to this one only (then the closing steps)
    start_from: str | None = None  # reuse the outputs of the steps before this one (a rerun)

    def __post_init__(self) -> None:
        # The steps run in the repository (``Demo.run_process``), not in the user's folder: a --train-config given
        # relative to it passed the start-up check, then the train step failed minutes later (or read a file of that
        # name in the repository). Made absolute where it is given, it is the same file for both. (--out is made
        # absolute by ``Demo`` as it is built, in the user's folder too.)
        self.train_config = os.path.abspath(self.train_config)


_KEEP_RATE = option_rules.RULES["relevance_keep_rate"]
#: The CPU features that decide which kernels PyTorch and MKL run on the CPU (AVX-512 or AVX2 ones round
#: differently, which moves the relevance cut's figures: benchmarks/RESULTS_demo.md).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")


def machine_info() -> dict:
    """What a demo's figures depend on besides its code and config: the processor and the CPU features its
    kernels are picked by, the core count, Python, and the versions of the packages whose arithmetic the steps run
    (read from their metadata, not imported)."""
    from importlib import metadata

    processor, flags = platform.processor() or None, set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and processor in (None, "", platform.machine()):
                    processor = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:  # not Linux: the processor name platform gives, no flags
        pass
    versions = {}
    for name in ("torch", "numpy", "pillow", "pyarrow", "apache-beam"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"processor": processor, "machine": platform.machine(), "cpu_flags": [f for f in CPU_FLAGS if f in flags],
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "packages": versions}


#: What the demo's options passed on to ``lait crawl`` and ``lait filter`` must be: the rules those stages apply
#: (``filters.option_rules``), checked before step 1 so that a bad value does not fail at the filter step after the
#: crawl. ``max_aspect`` 0 is "off" to both stages, as to the demo. ``relevance_keep_rate`` 0 is the demo's own:
#: no ``--relevance-keep-rate`` (the relevance model's threshold); any other value is passed on.
OPTION_RULES: dict[str, option_rules.Rule] = {
    "relevance_keep_rate": option_rules.Rule(
        lambda v: v == 0 or _KEEP_RATE.test(v),
        f"0 (the relevance model's own threshold) or a share {_KEEP_RATE.must_be}"),
    "min_side": option_rules.RULES["min_side"],
    "max_aspect": option_rules.RULES["max_aspect"],
}


def is_demo_run(out: str) -> bool:
    """Whether the folder ``out`` is a run folder lait demo made: it holds the ``demo.json`` a run writes when it
    starts (a JSON object with its ``config`` and ``steps``), or, that one lost, the ledger its site step writes
    first (``site/ledger.json``: its ``seed`` and ``items``)."""
    return (audit.read_own_json(os.path.join(out, "demo.json"), ("config", "steps"))
            or audit.read_own_json(os.path.join(out, "site", "ledger.json"), ("seed", "items")))


def check_out(config: "DemoConfig") -> None:
    """Raise ValueError (one line) for an ``--out`` the run cannot make or must not write into: a file, a path under
    a file, or (but for ``--from``, which reuses what the folder holds: ``check_from_out``) a folder that holds files
    and is no demo run (``is_demo_run``). A run removes what lies under the names of its outputs (``test/``,
    ``crawl/``, ``features/``, ``report.html``, ...): in a folder of the user's own it deleted their data, and said
    "stale outputs of an earlier run removed"."""
    out = config.out
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out} is a file, not a folder: give the run's folder")
    if not os.path.exists(out):
        above = os.path.dirname(os.path.abspath(out))
        while not os.path.exists(above):
            above = os.path.dirname(above)
        if not os.path.isdir(above):  # --dry-run said nothing, the run failed to make it
            raise ValueError(f"cannot make the run folder --out {out}: {above} is a file, not a folder")
        return
    if config.start_from:
        return
    if _holds_other_files(out):
        raise ValueError(f"--out {out} holds files and is not a lait demo run folder (no demo.json of one): a run "
                         "would replace what lies there under the names of its outputs (test/, crawl/, "
                         "features/, report.html, ...); give a new --out or an empty folder")


def _holds_other_files(out: str) -> bool:
    """Whether the folder ``out`` holds files and is no demo run (``is_demo_run``); ValueError (one line) when it
    cannot be read."""
    try:
        holds = bool(os.listdir(out))
    except OSError as exc:
        raise ValueError(f"--out {out}: cannot read the folder ({exc.strerror or exc})") from None
    return holds and not is_demo_run(out)


def check_from_out(config: "DemoConfig") -> None:
    """Raise ValueError (one line) for ``--from`` into an ``--out`` that holds files and is no demo run
    (``is_demo_run``): ``check_out`` lets ``--from`` through, as it reuses what the folder holds, and a rerun then
    removed what lay under the names of the outputs of the steps from ``--from`` on (a folder of the user's own
    ``features/``, ``train/``, ``report.html``, ...). A new or empty folder passes (its earlier steps are
    ``missing``). ``lait demo`` checks this before ``check_config``; ``Demo.run`` does not, for run folders made step
    by step in process (``Demo.train_detector`` writes ``detector/`` and no demo.json)."""
    out = config.out
    if not config.start_from or not os.path.isdir(out):
        return
    if _holds_other_files(out):
        raise ValueError(f"--out {out} holds files and is not a lait demo run folder (no demo.json of one): --from "
                         f"{config.start_from} reuses an earlier demo run's outputs there and replaces what lies under "
                         "the names of the outputs of the steps from it on (features/, train/, report.html, ...); give "
                         "the folder of an earlier lait demo run, or a new --out")


def check_config(config: "DemoConfig", steps: list[str] | None = None) -> None:
    """Raise ValueError (one line, naming the option) for a config no run could carry out: an option
    ``OPTION_RULES`` refuses, an unknown step, ``--from`` after ``--stop-after``, an ``--out`` that ``check_out``
    refuses, a ``--train-config`` that does not load as the train step's config (when that step is to run)."""
    for name, rule in OPTION_RULES.items():
        option_rules.check(rule, getattr(config, name), f"--{name.replace('_', '-')}")
    steps = steps if steps is not None else step_names()
    for option, given in (("--stop-after", config.stop_after), ("--from", config.start_from)):
        if given is not None and given not in steps:
            raise ValueError(f"{option}: unknown step {given!r}; steps: {', '.join(steps)}")
    if config.stop_after and config.start_from and steps.index(config.start_from) > steps.index(config.stop_after):
        raise ValueError(f"--from {config.start_from} comes after --stop-after {config.stop_after}: no step would run")
    check_out(config)
    first = steps.index(config.start_from) if config.start_from else 0
    last = steps.index(config.stop_after) if config.stop_after else len(steps) - 1
    if "site" in steps and first > steps.index("site"):
        check_site_options(config)
    if first:
        check_step_options(config, steps[:first])
    if "train" in steps and first <= steps.index("train") <= last:
        check_train_config(config.train_config, os.path.abspath(config.out))


#: The options the site step's outputs follow: ``build_site(seed, scenes)`` (``site/``, the site the crawl step
#: serves) and ``write_test_split(seed, test_scenes)`` (``test/``). A rerun that reuses them (``--from`` any later
#: step) must be given the same values: the crawl step serves the site built from this run's options, and
#: planted.json, the eval and test_features read the ledger and the split the site step wrote.
SITE_OPTIONS = ("seed", "scenes", "test_scenes")


def saved_site_options(out: str) -> dict[str, int]:
    """The ``SITE_OPTIONS`` the site step of the run folder ``out`` was run with, read from what it wrote (not from
    demo.json, which in a folder made before it was written step by step may be the run's before an interrupted
    one): ``seed`` from ``site/ledger.json``, ``scenes`` from its ``clean`` items (one per good scene),
    ``test_scenes`` from the rows of ``test/pairs`` (one per held-out scene). Those it did not write are left out
    (the site step is then ``missing``, not reused). ValueError (one line) when the ledger is there but cannot be
    read."""
    saved: dict[str, int] = {}
    ledger_path = os.path.join(out, "site", "ledger.json")
    if os.path.exists(ledger_path):
        try:
            with open(ledger_path, encoding="utf-8") as f:
                ledger = json.load(f)
            saved["seed"] = ledger["seed"]
            saved["scenes"] = sum(1 for item in ledger["items"] if item.get("category") == "clean")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"cannot read {ledger_path} to check that the site fits the options "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())}); rerun without --from") from None
    pairs = os.path.join(out, "test", "pairs")
    if os.path.isdir(pairs) and schemas.list_parquet_files(pairs):
        try:
            saved["test_scenes"] = schemas.count_rows(pairs, "pairs")
        except Exception as exc:  # noqa: BLE001 - an unreadable split cannot be checked, nor reused
            raise ValueError(f"cannot read {pairs} to check that the held-out split fits the options "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())}); rerun without --from") from None
    return saved


def check_site_options(config: "DemoConfig") -> None:
    """Raise ValueError (one line) when ``--from`` would reuse a site and held-out split made with other
    ``SITE_OPTIONS`` than ``config``'s: the crawl would fetch this config's site and planted.json would score it
    against the old ledger (precision 0.04, no warning), and the eval would run on the old split."""
    saved = saved_site_options(os.path.abspath(config.out))
    differ = [name for name in SITE_OPTIONS if name in saved and saved[name] != getattr(config, name)]
    if differ:
        flag = lambda name: f"--{name.replace('_', '-')}"  # noqa: E731
        was = " ".join(f"{flag(n)} {saved[n]}" for n in differ)
        now = " ".join(f"{flag(n)} {getattr(config, n)}" for n in differ)
        raise ValueError(f"--from {config.start_from} would reuse the site and held-out split in {config.out}, made "
                         f"with {was}, but this run has {now}: rerun without --from, give those "
                         f"options as before, or use a new --out")


#: DemoConfig fields that ``lait demo`` has no option for: named as they are in messages, not as a flag.
NOT_FLAGS = ("relevance_mismatch_cost",)


def option_flag(name: str) -> str:
    """How a message names the DemoConfig field ``name``: its ``lait demo`` option (``--min-side``)."""
    return name if name in NOT_FLAGS else f"--{name.replace('_', '-')}"


def file_sha256(path: str) -> str | None:
    """The sha256 (hex) of the bytes of the file at ``path``; None when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def option_value(config: "DemoConfig", name: str):
    """The value of the option ``name`` that a step's outputs follow: ``--train-config`` as its file
    (``{"path": absolute path, "sha256": of its content}``), which ``comparable`` reduces to the content."""
    value = getattr(config, name)
    return {"path": os.path.abspath(value), "sha256": file_sha256(value)} if name == "train_config" else value


def comparable(name: str, value):
    """What decides whether two values of the option ``name`` are the same: a train config's content (its sha256:
    the same file edited is another config, a copy of it at another path the same one), None where that is not
    recorded (a demo.json that recorded the path only); any other option's value itself."""
    if name == "train_config":
        return value.get("sha256") if isinstance(value, dict) else None
    return value


def shown(name: str, value) -> str:
    """A value of the option ``name`` as a message shows it: a train config as its path and its content's sha256."""
    if name == "train_config" and isinstance(value, dict):
        digest = value.get("sha256")
        return f"{value.get('path')} ({f'sha256 {digest[:12]}' if digest else 'unreadable'})"
    return str(value)


def earlier_steps(out: str) -> dict[str, dict]:
    """The step records of the ``demo.json`` in the run folder ``out``, by step name: those of a run that wrote it
    step by step (each record has ``options``, None until the step finished), none for an older or unreadable one
    (whose records may be those of a run before an interrupted one)."""
    log_ = report.read_json(os.path.join(out, "demo.json"))
    steps = log_.get("steps") if isinstance(log_, dict) and "status" in log_ else None
    return {s["name"]: s for s in steps or () if isinstance(s, dict) and isinstance(s.get("name"), str)
            and "options" in s}


def finished_earlier(step_name: str, earlier: dict[str, dict]) -> bool:
    """False when ``demo.json`` says that the run which last touched the step's outputs did not finish it (it
    failed, was interrupted or had not reached it: its outputs are partial, or an older run's made from other
    inputs); True when it finished it or nothing says (a folder made without such a ``demo.json``)."""
    record = earlier.get(step_name)
    return record is None or isinstance(record.get("options"), dict)


def _json_object(path: str) -> dict:
    data = report.read_json(path)
    return data if isinstance(data, dict) else {}


#: What the detector step writes in ``OUT/detector/``: the weights, and the training record ``train_demo_detector``
#: writes beside them (epochs, samples, and the scenes' seed and count as the step gives them).
DETECTOR_WEIGHTS = "demo_detector.safetensors"
DETECTOR_RECORD = "demo_detector.training.json"


def stage_options(out: str, step_name: str) -> dict:
    """The options a step's stage recorded itself in the run folder ``out`` (what was actually used, whatever
    ``demo.json`` says): ``lait crawl``'s and ``lait filter``'s ``settings`` in their stats.json, ``lait relevance
    train``'s ``training`` in the model's config.json, the demo detector's training record. Empty for the other
    steps, and for records that are absent or unreadable."""
    if step_name in ("crawl", "filter0", "filter"):
        settings = _json_object(os.path.join(out, step_name, "stats.json")).get("settings")
        if not isinstance(settings, dict):
            return {}
        found = {name: settings[name] for name in ("min_side", "max_aspect") if name in settings}
        if step_name == "filter" and "relevance_keep_rate" in settings:
            found["relevance_keep_rate"] = settings["relevance_keep_rate"] or 0.0  # none: the model's threshold
        return found
    if step_name == "relevance_train":
        training = _json_object(os.path.join(out, "relevance_model", "config.json")).get("training")
        if not isinstance(training, dict):
            return {}
        keys = {"relevance_epochs": "epochs", "relevance_image_size": "image_size",
                "relevance_mismatch_cost": "mismatch_cost", "relevance_members": "members"}
        return {name: training[key] for name, key in keys.items() if key in training}
    if step_name == "detector":
        record = _json_object(os.path.join(out, "detector", DETECTOR_RECORD))
        source = record.get("source") if isinstance(record.get("source"), dict) else {}
        found = {"detector_epochs": record.get("epochs"), "detector_scenes": source.get("scenes"),
                 "seed": source.get("seed")}
        return {name: value for name, value in found.items() if value is not None}
    return {}


def recorded_options(out: str, step: "Step", earlier: dict[str, dict]) -> dict:
    """The values of ``step.options`` its outputs in ``out`` were made with: what its stage recorded
    (``stage_options``), else what ``demo.json`` recorded for it when it finished; None where neither says."""
    record = earlier.get(step.name) or {}
    saved = {**(record.get("options") or {}), **stage_options(out, step.name)}
    return {name: saved.get(name) if comparable(name, saved.get(name)) is not None else None for name in step.options}


def differing_options(config: "DemoConfig", made_with: dict) -> list[str]:
    """The options of ``made_with`` (recorded values, None where unknown) that ``config`` gives otherwise."""
    return [name for name, value in made_with.items() if comparable(name, value) is not None
            and comparable(name, value) != comparable(name, option_value(config, name))]


def check_step_options(config: "DemoConfig", reused: list[str]) -> None:
    """Raise ValueError (one line) when ``--from`` would reuse the outputs of a step (one of ``reused``) made with
    other values of the options that step follows (``Step.options``: ``--min-side`` and ``--max-aspect`` for the
    crawl and the filters, ``--relevance-*``, ``--detector-*``, ``--train-config``) than ``config``'s: they would
    be kept as they are while demo.json recorded the new values. The values are read from what each step
    recorded (``recorded_options``); a step whose outputs are gone or unfinished is not reused, so not checked."""
    out = os.path.abspath(config.out)
    earlier = earlier_steps(out)
    differ: dict[str, tuple] = {}  # option -> (recorded value, steps)
    first = None
    for step in Demo(config, echo=lambda _: None).steps:
        if step.name not in reused or not step.options or not finished_earlier(step.name, earlier):
            continue
        if not all(os.path.exists(os.path.join(out, rel)) for rel in step.outputs):
            continue
        made_with = recorded_options(out, step, earlier)
        for name in differing_options(config, made_with):
            first = first or step.name
            differ.setdefault(name, (made_with[name], []))[1].append(step.name)
    if differ:
        steps = list(dict.fromkeys(s for _, names in differ.values() for s in names))
        was = " ".join(f"{option_flag(n)} {shown(n, value)}" for n, (value, _) in differ.items())
        now = " ".join(f"{option_flag(n)} {shown(n, option_value(config, n))}" for n in differ)
        raise ValueError(f"--from {config.start_from} would reuse the outputs of {', '.join(steps)}, made with {was}, "
                         f"but this run has {now}: rerun {'that step' if len(steps) == 1 else 'them'} "
                         f"(--from {first}), give those options as before, or use a new --out")


def check_train_config(path: str, out: str) -> None:
    """Raise ValueError (one line) unless ``path`` loads as the training config the train step builds for the run
    folder ``out``: read only when that step ran, a bad one failed after the crawl, the filters and the detector."""
    from model.config import ConfigError, load_config  # no torch import

    try:
        load_config(path, train_overrides(out))
    except ConfigError as exc:
        message = " ".join(str(exc).split())  # one line (a YAML error spans several)
        message = message[len(path) + 2:] if message.startswith(f"{path}: ") else message
        raise ValueError(f"--train-config {path}: {message}") from None


def train_overrides(out: str) -> list[str]:
    """The ``--set`` values of the train step: the run folder's datasets on every stage of configs/demo.yaml.

    Each path as YAML reads it back (``override_text``: quoted where need be): a ``--set`` value is YAML, in which
    ``--out "demo #1"`` ended at its `` #`` and the step trained into and read from ``demo``, outside the run folder."""
    train = {"regions": os.path.join(out, "features", "regions"), "captions": os.path.join(out, "captions")}
    test = {"regions": os.path.join(out, "test_features", "regions"), "captions": os.path.join(out, "test", "captions")}
    from model.config import override_text  # no torch import

    sets = [f"out_dir={override_text(os.path.join(out, 'train'))}"]
    for prefix in ("pretrain.0.datasets.0", "pretrain.1.datasets.0", "finetune.datasets.0"):
        sets += [f"{prefix}.{key}={override_text(path)}" for key, path in train.items()]
    return sets + [f"eval.{key}={override_text(path)}" for key, path in test.items()]


#: Step statuses that let dependent steps run.
DONE = ("ok", "reused")


@dataclass
class Step:
    """One stage of the demo: a ``lait`` command line or an in-process function."""

    name: str
    title: str
    needs: tuple[str, ...] = ()
    command: Callable[[], list[str]] | None = None
    func: Callable[[], None] | None = None
    outputs: tuple[str, ...] = ()  # run-folder entries this step writes: cleared before it runs
    # The DemoConfig fields its outputs follow besides its inputs (the site step's: SITE_OPTIONS, checked apart).
    options: tuple[str, ...] = ()
    status: str = "pending"  # pending | running | ok | failed | skipped | not_run | reused | missing | interrupted
    seconds: float = 0.0
    detail: str = ""
    argv: list[str] = field(default_factory=list)
    started: float | None = None  # time.monotonic() when it started running
    # The values of ``options`` its outputs in the run folder were made with (None while it has no finished ones;
    # a value None where nothing recorded it): demo.json's ``options``, what a later --from checks.
    made_with: dict | None = None


class Demo:
    """Builds the step list for a config and runs it."""

    def __init__(self, config: DemoConfig, echo: Callable[[str], None] = print):
        self.cfg = config
        self.out = os.path.abspath(config.out)
        self.echo = echo
        self.site = None
        self.server: SiteServer | None = None
        self.steps = self._steps()
        # What demo.json records besides the steps (set again when the run starts).
        self.status, self.error, self.started, self.machine = "pending", None, time.monotonic(), None

    def p(self, *parts: str) -> str:
        """A path inside the run folder."""
        return os.path.join(self.out, *parts)

    def lait(self, *args: str) -> list[str]:
        """A ``python -m lait`` command line."""
        return [self.cfg.python, "-m", "lait", *args]

    # -- the steps -----------------------------------------------------------------------------

    def _steps(self) -> list[Step]:
        c = self.cfg
        rules = ["--min-side", str(c.min_side), "--max-aspect", str(c.max_aspect)]
        rule_options = ("min_side", "max_aspect")
        relevance_options = ("relevance_epochs", "relevance_image_size", "relevance_mismatch_cost", "relevance_members")
        return [
            Step("site", "generate the website and the held-out split", func=self.make_site,
                 outputs=("site", "test")),
            Step("crawl", "crawl the site", ("site",), outputs=("crawl",), options=rule_options,
                 command=lambda: self.lait("crawl", self.site_url(), "--out", self.p("crawl"),
                                           "--allow-private-networks", *rules)),
            Step("filter0", "filter with rules only (relevance training pairs)", ("crawl",), outputs=("filter0",),
                 options=rule_options,
                 command=lambda: self.lait("filter", "--input", self.p("crawl"), "--output", self.p("filter0"), *rules)),
            Step("relevance_train", "train the relevance model", ("filter0",), outputs=("relevance_model",),
                 options=relevance_options,
                 command=lambda: self.lait("relevance", "train", "--input", self.p("filter0"),
                                           "--out", self.p("relevance_model"),
                                           "--epochs", str(c.relevance_epochs),
                                           "--image-size", str(c.relevance_image_size),
                                           "--mismatch-cost", str(c.relevance_mismatch_cost),
                                           "--members", str(c.relevance_members))),
            Step("filter", "filter with rules and relevance", ("crawl", "relevance_train"), outputs=("filter",),
                 options=(*rule_options, "relevance_keep_rate"),
                 command=lambda: self.lait(
                     "filter", "--input", self.p("crawl"), "--output", self.p("filter"), *rules,
                     "--relevance", self.p("relevance_model"), *self.relevance_cut())),
            Step("relevance_eval", "evaluate relevance on planted mismatches", ("relevance_train", "filter"),
                 outputs=("relevance_labelled", "relevance_eval.json"), func=self.relevance_eval),
            Step("detector", "train the demo detector on generated scenes", ("site",), outputs=("detector",),
                 options=("seed", "detector_scenes", "detector_epochs"), func=self.train_detector),
            Step("features", "region features of the kept pairs", ("filter", "detector"), outputs=("features",),
                 command=lambda: self.lait("features", "--input", self.p("filter"), "--output", self.p("features"),
                                           "--detector", "demo", "--weights", self.detector_path)),
            Step("test_features", "region features of the held-out scenes", ("detector",), outputs=("test_features",),
                 command=lambda: self.lait("features", "--input", self.p("test", "pairs"),
                                           "--output", self.p("test_features"), "--detector", "demo",
                                           "--weights", self.detector_path)),
            Step("captions", "captions of the kept pairs", ("filter",), outputs=("captions",), func=self.make_captions),
            Step("train", "two-stage pretraining, then retrieval fine-tuning", ("features", "captions"),
                 outputs=("train",), options=("train_config",), command=self.train_command),
            Step("eval", "retrieval on the held-out split", ("train", "test_features"), outputs=("eval.json",),
                 command=lambda: self.lait("eval", "--checkpoint", self.checkpoint(),
                                           "--regions", self.p("test_features", "regions"),
                                           "--captions", self.p("test", "captions"), "--out", self.p("eval.json"))),
        ]

    @property
    def detector_path(self) -> str:
        """Where the demo detector's weights go."""
        return self.p("detector", DETECTOR_WEIGHTS)

    def relevance_cut(self) -> list[str]:
        """The relevance cut: a keep-rate, or (keep-rate 0) the threshold the model chose in training."""
        rate = self.cfg.relevance_keep_rate
        return ["--relevance-keep-rate", str(rate)] if rate else []

    def train_command(self) -> list[str]:
        """``lait train`` on configs/demo.yaml with every dataset path of the config set to this run's."""
        sets = train_overrides(self.out)
        return self.lait("train", "--config", self.cfg.train_config, *[a for s in sets for a in ("--set", s)])

    def make_site(self) -> None:
        """Generate the site, write its ledger and the held-out split, start serving it."""
        from tqdm import tqdm

        c = self.cfg
        with tqdm(desc="site images", unit="img", leave=False) as bar:
            self.site = build_site(c.seed, c.scenes, progress=bar.update)
        os.makedirs(self.p("site"), exist_ok=True)
        with open(self.p("site", "ledger.json"), "w", encoding="utf-8") as f:
            f.write(self.site.ledger_json())
        counts = datasets.write_test_split(c.seed, c.test_scenes, self.p("test"))
        self.server = SiteServer(self.site).start()
        planted_n = sum(n for k, n in self.site.counts().items() if k != "clean")
        self.echo(f"    site at {self.server.url}: {len(self.site.ledger):,} images ({planted_n:,} planted noise); "
                  f"test split {counts['images']} images, {counts['captions']} captions")

    def site_url(self) -> str:
        """The served site's URL; with ``--from crawl`` the (deterministic) site is rebuilt and served."""
        if self.server is None:
            self.site = build_site(self.cfg.seed, self.cfg.scenes)
            self.server = SiteServer(self.site).start()
        return self.server.url

    def relevance_eval(self) -> None:
        """``relevance_eval.json``: the relevance model's AUC on labelled pairs and the filter's effect.

        The labelled pairs are the crawled candidates the ledger marks ``clean`` (``is_match``
        true) or ``mismatch`` (false), as a pairs dataset in OUT/relevance_labelled/, scored by
        ``lait relevance eval``. ``auc`` comes from that; ``true_kept`` and ``mismatched_removed``
        are what the filter run did (share of collected clean pairs not rejected for relevance,
        share of collected mismatches rejected for relevance); ``model_eval`` keeps the full
        output of ``lait relevance eval`` (at the model's own threshold).
        """
        ledger = planted.load_ledger(self.p("site", "ledger.json"))
        by_key = {(i["page"], i["image"]): i for i in ledger if i["category"] in ("clean", "mismatch")}
        rows = []
        for batch in schemas.iter_batches(self.p("crawl", "candidates"), "candidates"):
            for cand in batch.to_pylist():
                item = by_key.get((planted.url_path(cand["page_url"]), planted.url_path(cand["image_url"])))
                if item is None:
                    continue
                rows.append({"pair_id": cand["candidate_id"], "candidate_id": cand["candidate_id"],
                             "image_id": cand["image_id"], "caption": item["caption"],
                             "text_source": item["text_source"], "lang": "en", "width": cand["width"],
                             "height": cand["height"], "image_bytes": cand["image_bytes"],
                             "page_url": cand["page_url"], "image_url": cand["image_url"],
                             "is_match": item["category"] == "clean"})
        table = schemas.to_table(rows, "pairs")
        table = table.append_column("is_match", pa.array([r["is_match"] for r in rows], pa.bool_()))
        schemas.write_table(table, self.p("relevance_labelled", "part-00000.parquet"))
        result: dict = {}
        raw = self.p("relevance_labelled", "model_eval.json")
        returncode = self.run_process(self.lait("relevance", "eval", "--model", self.p("relevance_model"),
                                                "--input", self.p("relevance_labelled"), "--json-out", raw),
                                      stdout=subprocess.DEVNULL)
        if returncode == 0 and os.path.exists(raw):
            with open(raw, encoding="utf-8") as f:
                result["model_eval"] = json.load(f)
            result["auc"] = result["model_eval"].get("auc")
        else:
            result["relevance_eval_error"] = f"lait relevance eval exited {returncode}"
        outcomes = planted.outcomes(self.out, ledger, stages=("filter",))

        def share(category: str, removed: bool) -> float | None:
            collected = [r for item, r in zip(ledger, outcomes)
                         if item["category"] == category and r[0] != planted.NOT_COLLECTED]
            hits = [r for r in collected if (r[0] == "rejected" and "relevance" in (r[1] or "")) == removed]
            return round(len(hits) / len(collected), 4) if collected else None

        result["true_kept"] = share("clean", removed=False)
        result["mismatched_removed"] = share("mismatch", removed=True)
        result["labelled_pairs"] = len(rows)
        with open(self.p("relevance_eval.json"), "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        self.echo(f"    relevance: auc {result.get('auc')}, true pairs kept {result['true_kept']}, "
                  f"mismatches removed {result['mismatched_removed']}")
        if "relevance_eval_error" in result:
            raise RuntimeError(result["relevance_eval_error"])

    def train_detector(self) -> None:
        """Train the demo detector on scenes of its own stream (neither the site's nor the test split's)."""
        from model.detectors.demo import train_demo_detector  # the features stage's module

        import torch

        samples = detector_samples(generate_scenes(self.cfg.seed, self.cfg.detector_scenes, "detector"))
        os.makedirs(self.p("detector"), exist_ok=True)
        threads = torch.get_num_threads()
        torch.set_num_threads(TRAIN_THREADS)
        try:
            result = train_demo_detector(samples, list(CLASSES), self.detector_path, epochs=self.cfg.detector_epochs,
                                         config=dict(DETECTOR_CONFIG), progress=True,
                                         source={"stream": "detector", "seed": self.cfg.seed,
                                                 "scenes": self.cfg.detector_scenes},
                                         record_path=self.p("detector", DETECTOR_RECORD))
        finally:
            torch.set_num_threads(threads)
        losses = result.get("losses") if isinstance(result, dict) else None
        if losses:
            self.echo(f"    detector loss per epoch: {', '.join(f'{v:.3f}' for v in losses)}")

    def make_captions(self) -> None:
        """OUT/captions from the kept pairs (and classes.json beside regions that lack one)."""
        n = datasets.write_train_captions(self.p("filter", "pairs"), self.p("captions"))
        for folder in ("features", "test_features"):
            classes = self.p(folder, "classes.json")
            if os.path.isdir(self.p(folder)) and not os.path.exists(classes):
                with open(classes, "w", encoding="utf-8") as f:
                    json.dump(list(CLASSES), f)
        self.echo(f"    {n:,} training captions")

    def checkpoint(self) -> str:
        """The trainer's final checkpoint (OUT/train/checkpoints/final.pt), else the newest under OUT/train."""
        final = self.p("train", "checkpoints", "final.pt")
        if os.path.exists(final):
            return final
        found = [p for ext in ("*.pt", "*.pth", "*.safetensors")
                 for p in glob.glob(self.p("train", "**", ext), recursive=True)]
        if not found:
            raise FileNotFoundError(f"no checkpoint under {self.p('train')}")
        return max(found, key=os.path.getmtime)

    # -- running -------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
        for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "NO_ALBUMENTATIONS_UPDATE"):
            env.setdefault(key, "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        return env

    def run_step(self, step: Step, index: int) -> None:
        """Run one step (unless an input failed), recording status, detail and time."""
        failed = [n for n in step.needs if self.step(n).status not in DONE]
        head = f"==> [{index}/{len(self.steps)}] {step.name}: {step.title}"
        if failed:
            step.status, step.detail = "skipped", f"needs {', '.join(failed)}"
            self.echo(f"{head} -- skipped ({step.detail})")
            # What it wrote in an earlier run was made from inputs this run remade or lost: stale.
            self.clear_stale_outputs(step)
            return
        self.echo(head)
        start = step.started = time.monotonic()
        step.status = "running"
        # Read before it runs (the train config's content is what the stage reads when it starts).
        made_with = {name: option_value(self.cfg, name) for name in step.options}
        self.write_log()  # before its outputs go: a run stopped in this step leaves a demo.json that says so
        try:
            # A rerun into the same run folder starts each step afresh (stages refuse to overwrite).
            self.clear_outputs(step)
            if step.command:
                step.argv = step.command()
                self.echo("    $ " + " ".join(step.argv))
                returncode = self.run_process(step.argv)
                if returncode != 0:
                    raise RuntimeError(f"exited with status {returncode}")
            else:
                step.func()
            step.status = "ok"
            step.made_with = made_with
        except Exception as exc:  # noqa: BLE001 - a failed stage is reported, the rest still runs
            step.status, step.detail = "failed", f"{type(exc).__name__}: {exc}"
            log.debug("step %s failed", step.name, exc_info=True)
        step.seconds = time.monotonic() - start
        mark = "ok" if step.status == "ok" else f"FAILED ({step.detail})"
        self.echo(f"    {step.name} {mark} in {step.seconds:.1f} s")
        if step.name == "crawl" and self.server:  # nothing after the crawl fetches from the site
            self.server.stop()
            self.server = None

    def run_process(self, argv: list[str], **popen_args) -> int:
        """Run ``argv`` in the repository with the stages' environment (``_env``) and return its exit status.

        On Ctrl-C it is given time to stop by itself (``stop_process``) before the KeyboardInterrupt goes on."""
        proc = subprocess.Popen(argv, env=self._env(), cwd=REPO_ROOT, **popen_args)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            self.stop_process(proc)
            raise

    def stop_process(self, proc: subprocess.Popen) -> None:
        """End ``proc`` after a Ctrl-C: wait up to ``STEP_STOP_WAIT`` s for it to end by itself (it got the Ctrl-C as
        well, and a ``lait`` stage stops its own processes then: killed, they are orphaned), then SIGTERM, then
        SIGKILL after ``STEP_TERM_WAIT`` s. Another Ctrl-C meanwhile moves on to the next of these at once."""
        for stop, wait in ((None, STEP_STOP_WAIT), (proc.terminate, STEP_TERM_WAIT), (proc.kill, None)):
            try:
                if stop is None:
                    self.echo(f"    waiting up to {STEP_STOP_WAIT:g} s for the command to stop "
                              "(Ctrl-C again to end it now)")
                else:
                    stop()
                proc.wait(timeout=wait)
                return
            except (subprocess.TimeoutExpired, KeyboardInterrupt):  # (one after SIGKILL: it dies unwaited for)
                continue

    def clear_outputs(self, step: Step) -> bool:
        """Remove what ``step`` writes in the run folder (``step.outputs``); True when there was any."""
        found = False
        for rel in step.outputs:
            target = self.p(rel)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            elif os.path.lexists(target):
                os.remove(target)
            else:
                continue
            found = True
        return found

    def clear_stale_outputs(self, step: Step) -> bool:
        """``clear_outputs`` for a step this run does not run: a file that cannot be removed is said (in the step's
        detail and on the console) instead of ending the run, whose other steps and closing files still come."""
        try:
            return self.clear_outputs(step)
        except OSError as exc:
            step.detail += f"; could not remove the stale outputs of an earlier run ({exc})"
            self.echo(f"    warning: {step.name}: could not remove the stale outputs of an earlier run ({exc})")
            return False

    def step(self, name: str) -> Step:
        """The step called ``name``."""
        return next(s for s in self.steps if s.name == name)

    def run(self) -> int:
        """Run every step, then planted/audit/report; returns 0 only when every step succeeded.

        ``demo.json`` is written first (replacing an earlier run's, whose planted.json, audit.json and report.html
        are then removed), again when each step starts and ends, and last with ``status`` ``finished``: a run
        that stops early (Ctrl-C, an error) leaves one that says so and how far it came, never an earlier run's
        files as if they were its own.
        """
        names = [s.name for s in self.steps]
        check_config(self.cfg, names)
        os.makedirs(self.out, exist_ok=True)
        earlier = earlier_steps(self.out)  # read before this run's demo.json replaces it
        self.started = time.monotonic()
        self.machine = machine_info()
        self.status = "running"
        try:
            self.write_log()
            for name in CLOSING_FILES:
                if os.path.lexists(self.p(name)):
                    os.remove(self.p(name))
        except OSError as exc:
            raise ValueError(f"--out {self.cfg.out}: cannot replace the files of an earlier run "
                             f"({exc.strerror or exc}: {exc.filename})") from None
        first = names.index(self.cfg.start_from) if self.cfg.start_from else 0
        last = names.index(self.cfg.stop_after) if self.cfg.stop_after else len(names) - 1
        remade: set[str] = set()  # steps whose outputs in the folder are this run's (or gone), not an earlier run's
        try:
            for index, step in enumerate(self.steps, 1):
                if index - 1 < first:
                    self.reuse(step, index, earlier)
                elif index - 1 > last:
                    step.status, step.detail = "not_run", f"--stop-after {self.cfg.stop_after}"
                    # An earlier run's outputs of a step after --stop-after that reads (directly or not) a step this
                    # run remade were made from inputs no longer there: removed, so that planted.json, the audit
                    # and the report describe this run. Those that read only reused steps still fit: kept.
                    if any(need in remade for need in step.needs):
                        remade.add(step.name)
                        if self.clear_stale_outputs(step):
                            step.detail += "; stale outputs of an earlier run removed"
                            self.echo(f"==> [{index}/{len(self.steps)}] {step.name}: not run, removed its outputs "
                                      f"of an earlier run (its inputs were remade)")
                    elif any(os.path.exists(self.p(rel)) for rel in step.outputs):
                        step.detail += "; outputs of an earlier run kept (its inputs were reused)"
                        if finished_earlier(step.name, earlier):  # else demo.json keeps not vouching for them
                            step.made_with = recorded_options(self.out, step, earlier)
                            other = differing_options(self.cfg, step.made_with)
                            if other:
                                step.detail += ", made with " + " ".join(
                                    f"{option_flag(n)} {shown(n, step.made_with[n])}" for n in other)
                else:
                    self.run_step(step, index)
                    remade.add(step.name)
                self.write_log()
            if self.server:
                self.server.stop()
                self.server = None
            self.status = "closing"
            self.write_log()  # before the report, which shows it
            self.finish()
            self.status = "finished"
            self.write_log()
        except BaseException as exc:  # Ctrl-C included: demo.json says where the run stopped, then it ends
            self.stopped(exc)
            raise
        finally:
            if self.server:
                self.server.stop()
        self.echo(summary(self.out, self.steps, time.monotonic() - self.started))
        return 0 if all(s.status in DONE + ("not_run",) for s in self.steps) else 1

    def reuse(self, step: Step, index: int, earlier: dict[str, dict]) -> None:
        """A step before ``--from``: reused when everything it wrote is still there and the run that wrote it
        finished it (``finished_earlier``), else ``missing`` (its dependents skip)."""
        present = all(os.path.exists(self.p(rel)) for rel in step.outputs)
        if not present:
            step.status, step.detail = "missing", "outputs missing for --from"
        elif not finished_earlier(step.name, earlier):
            was = earlier[step.name].get("status")
            step.status = "missing"
            step.detail = f"for --from, demo.json does not record its outputs as finished ({was})"
        else:
            step.status, step.detail = "reused", f"--from {self.cfg.start_from}"
            # check_config refused other values than this run's: what is left is this run's, or unrecorded.
            step.made_with = recorded_options(self.out, step, earlier)
            unknown = [option_flag(n) for n, v in step.made_with.items() if v is None]
            if unknown:
                step.detail += (f"; the {', '.join(unknown)} it was made with "
                                f"{'is' if len(unknown) == 1 else 'are'} not recorded")
        self.echo(f"==> [{index}/{len(self.steps)}] {step.name}: {step.status}")

    def stopped(self, exc: BaseException) -> None:
        """Record in demo.json that the run stopped early (``interrupted`` by Ctrl-C, else ``failed``), and in
        which step."""
        self.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        self.error = None if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
        for step in self.steps:
            if step.status == "running":
                step.status, step.detail = "interrupted", "stopped by Ctrl-C" if self.error is None else self.error
                step.seconds = time.monotonic() - (step.started or time.monotonic())
                self.echo(f"    {step.name} {step.status} after {step.seconds:.1f} s")
        try:
            self.write_log()
        except OSError as err:  # the stop's own cause is what the user must see
            log.warning("could not record the stop in demo.json: %s", err)

    def write_log(self) -> None:
        """``demo.json``, written in place of the last one (never half written): ``status`` (running, closing,
        finished; interrupted or failed with ``error``), the config, the machine (``machine_info``), and each
        step's status, seconds, detail, command line and ``options`` (the values of the options its outputs were
        made with: ``Step.made_with``)."""
        data = {"status": self.status, "config": vars(self.cfg), "machine": self.machine,
                "seconds": round(time.monotonic() - self.started, 1),
                "steps": [{"name": s.name, "status": s.status, "seconds": round(s.seconds, 1), "detail": s.detail,
                           "argv": s.argv, "options": s.made_with} for s in self.steps]}
        if self.error:
            data["error"] = self.error
        schemas.write_json_atomically(self.p("demo.json"), data)

    def finish(self) -> None:
        """planted.json, audit.json and report.html, from whatever the run produced.

        Each is attempted even when another fails (say, on a damaged dataset); failures are printed.
        """
        ledger_path = self.p("site", "ledger.json")
        closing = [("audit.json", lambda: schemas.write_json_atomically(self.p("audit.json"),
                                                                         audit.audit_run(self.out))),
                   ("report.html", lambda: report.write_report(self.out, title="LAIT demo report"))]
        # Scored once something was crawled: with no crawl/ (``--stop-after site``) every planted item counted as
        # not collected, and planted.json said min precision 0.068 of filters that never ran.
        if os.path.exists(ledger_path) and os.path.isdir(self.p("crawl")):
            closing.insert(0, ("planted.json",
                               lambda: planted.write_planted(self.out, planted.load_ledger(ledger_path))))
        for name, make in closing:
            try:
                make()
            except Exception as exc:  # noqa: BLE001 - the other closing files are still worth writing
                log.debug("closing step %s failed", name, exc_info=True)
                self.echo(f"    could not write {name}: {type(exc).__name__}: {exc}")


#: What the closing steps write: an earlier run's are removed when a run starts (they would describe that run).
CLOSING_FILES = ("planted.json", "audit.json", "report.html")


def summary(out: str, steps: list[Step], total: float) -> str:
    """The closing text: steps and times, the funnel, planted-noise catch rates, R@K beside chance."""
    lines = ["", "LAIT demo summary", f"{'step':<16} {'status':<8} {'seconds':>8}"]
    lines += [f"{s.name:<16} {s.status:<8} {s.seconds:>8.1f}" + (f"  {s.detail}" if s.detail else "") for s in steps]
    lines.append(f"{'total':<16} {'':<8} {total:>8.1f}")
    lines.append("")
    lines.append(f"{'funnel':<16} {'in':>8} {'kept':>8} {'rejected':>9}")
    for name in ("crawl", "filter", "features", "test_features"):
        stats = report.read_json(os.path.join(out, name, "stats.json"))
        if isinstance(stats, dict):
            lines.append(f"{name:<16} {stats.get('in', '-'):>8} {stats.get('kept', '-'):>8} {stats.get('rejected', '-'):>9}")
    plant = report.read_json(os.path.join(out, "planted.json"))
    if isinstance(plant, dict) and plant.get("summary"):
        s = plant["summary"]
        clean = plant.get("clean") or {}
        lines.append(f"planted noise: min precision {s.get('min_precision')}, min recall {s.get('min_recall')}; "
                     f"clean images kept {clean.get('kept')}/{clean.get('items')}")
    elif not os.path.isdir(os.path.join(out, "crawl")):
        lines.append("planted noise: not scored (nothing was crawled)")
    ev = report.read_json(os.path.join(out, "eval.json"))
    if isinstance(ev, dict):
        lines.append(f"{'retrieval':<20} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'chance R@1':>11} {'R@1/chance':>11}")
        for key in ("image_retrieval", "sentence_retrieval"):
            m = ev.get(key) or {}
            fmt = lambda v: f"{v:.3f}" if isinstance(v, (int, float)) else "-"  # noqa: E731
            r1, chance = m.get("R@1"), m.get("chance_R@1")
            ratio = f"{r1 / chance:.1f}x" if isinstance(r1, (int, float)) and isinstance(chance, (int, float)) and chance else "-"
            lines.append(f"{key:<20} {fmt(r1):>6} {fmt(m.get('R@5')):>6} {fmt(m.get('R@10')):>6} "
                         f"{fmt(chance):>11} {ratio:>11}")
    else:
        lines.append("retrieval: no eval.json (the eval step did not run)")
    aud = report.read_json(os.path.join(out, "audit.json"))
    if isinstance(aud, dict) and not aud.get("stages") and aud.get("problem"):
        lines.append("audit: nothing to audit yet (no stage has written its books)")
    elif isinstance(aud, dict):
        lines.append(f"audit: {'books balance' if aud.get('ok') else 'books do NOT balance'} (audit.json)")
    lines.append(f"report: {os.path.join(out, 'report.html')}")
    return "\n".join(lines)


def run_demo(config: DemoConfig, echo: Callable[[str], None] = print) -> int:
    """Run the whole demo for ``config``; returns the exit status."""
    return Demo(config, echo).run()


def step_names() -> list[str]:
    """The demo's step names, in order."""
    return [step.name for step in Demo(DemoConfig(), echo=lambda _: None).steps]


def plan(config: DemoConfig) -> list[tuple[str, str]]:
    """The steps and what each runs, without running anything (``lait demo --dry-run``). Every step is listed;
    one that ``--from`` or ``--stop-after`` keeps from running says so (as ``Demo.run`` decides) in place of its
    command."""
    demo = Demo(config, echo=lambda _: None)

    class _Placeholder:
        url = "http://127.0.0.1:PORT/"

    demo.server = _Placeholder()
    names = [step.name for step in demo.steps]
    first = names.index(config.start_from) if config.start_from else 0
    last = names.index(config.stop_after) if config.stop_after else len(names) - 1
    out = []
    for index, step in enumerate(demo.steps):
        if index < first:
            what = f"(not run: before --from {config.start_from}; its outputs in --out are reused)"
        elif index > last:
            what = f"(not run: after --stop-after {config.stop_after})"
        elif step.command:
            try:
                what = " ".join(step.command())
            except FileNotFoundError:  # the checkpoint exists only after training
                what = " ".join(demo.lait("eval", "--checkpoint", demo.p("train", "checkpoints", "final.pt"),
                                          "--regions", demo.p("test_features", "regions"),
                                          "--captions", demo.p("test", "captions"), "--out", demo.p("eval.json")))
        else:
            what = f"(in process) {step.func.__doc__.splitlines()[0]}"
        out.append((step.name, what))
    return out


def serve(seed: int, scenes: int, echo: Callable[[str], None] = print) -> None:
    """Serve the generated site until interrupted (to crawl it by hand)."""
    with SiteServer(build_site(seed, scenes)) as server:
        echo(f"serving the demo site at {server.url} (Ctrl-C stops)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
