"""`lait audit` and `lait report` on the documented import layout: `lait import-captions ... --out D`, then
`lait features --input D --output D/features` (docs/train.md). D's own stats.json, captions/, pairs/ and
rejected/ are the import stage's books: audited and reported beside D/features."""
import html
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from demo import audit, report

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# 4 captions: 2 kept (2 images), 1 whose image is missing, 1 empty caption.
CAPTIONS = "a.jpg\ta red picture\nb.png\ta green square\nmissing.jpg\tnothing\na.jpg\t\n"


def _lait(*args, timeout=180):
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lait", *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=timeout)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """D made by the real commands: `lait import-captions` on a TSV of tiny images, then `lait features`
    with the demo detector (random weights) into D/features."""
    base = tmp_path_factory.mktemp("import")
    images = base / "images"
    images.mkdir()
    Image.new("RGB", (64, 48), (255, 0, 0)).save(images / "a.jpg")
    Image.new("RGB", (32, 32), (0, 255, 0)).save(images / "b.png")
    (base / "captions.tsv").write_text(CAPTIONS)
    out = base / "D"
    proc = _lait("import-captions", str(base / "captions.tsv"), "--format", "tsv", "--images", str(images),
                 "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    proc = _lait("features", "--input", str(out), "--output", str(out / "features"), "--detector", "demo",
                 "--random-init", "--device", "cpu", "--num-workers", "0", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["stage"], stats["in"], stats["kept"], stats["rejected"]) == ("import_captions", 4, 2, 2)
    features = json.loads((out / "features" / "stats.json").read_text())
    # The input is the run folder itself: named relative to it, so that a copy of D names its own import.
    assert features["kept"] == 2 and features["input"] == "."
    return out


@pytest.fixture
def imported_copy(imported, tmp_path):
    return shutil.copytree(imported, tmp_path / "D")


def _failed(result):
    return {(s["name"], c["check"]) for s in result["stages"] for c in s["checks"] if not c["ok"]}


def test_audit_checks_the_import_stage_and_its_features(imported):
    result = audit.audit_run(str(imported))
    assert [s["name"] for s in result["stages"]] == ["import_captions", "features"]
    assert result["ok"], _failed(result)
    own, features = result["stages"]
    assert own["folder"] == "." and (own["in"], own["kept"], own["rejected"]) == (4, 2, 2)
    checks = {c["check"] for c in own["checks"]}
    assert {"in_equals_kept_plus_rejected", "reasons_sum_to_rejected", "kept_rows_match", "rejected_rows_match",
            "rejected_reasons_match", "rejected_rows_labelled", "unique_caption_id"} <= checks
    # the features stage is traced to the import's pairs
    assert {"regions_image_ids_upstream", "in_equals_upstream_kept"} <= {c["check"] for c in features["checks"]}
    proc = _lait("audit", str(imported))
    assert proc.returncode == 0 and "BALANCED" in proc.stdout and "NOT BALANCED" not in proc.stdout, proc.stdout
    assert "import_captions" in proc.stdout and "features" in proc.stdout


@pytest.mark.parametrize("changes, failing", [
    ({"in": 500, "kept": 99}, {"in_equals_kept_plus_rejected", "kept_rows_match"}),
    ({"rejected_by_reason": {"image_missing": 2}}, {"rejected_reasons_match"}),
])
def test_audit_fails_an_import_whose_books_do_not_balance(imported_copy, changes, failing):
    path = imported_copy / "stats.json"
    stats = json.loads(path.read_text())
    stats.update(changes)
    path.write_text(json.dumps(stats))
    result = audit.audit_run(str(imported_copy))
    assert not result["ok"]
    assert {check for name, check in _failed(result) if name == "import_captions"} == failing
    assert not {name for name, _ in _failed(result)} - {"import_captions"}  # features/ still balances
    # ... against the copy's own import (an absolute input would have named the original D)
    features = result["stages"][1]
    assert os.path.realpath(os.path.join(imported_copy, features["upstream"])) == \
        os.path.realpath(imported_copy), features["upstream"]
    proc = _lait("audit", str(imported_copy))
    assert proc.returncode == 1 and "NOT BALANCED" in proc.stdout, proc.stdout
    assert re.search(r"import_captions\s+FAIL", proc.stdout) and all(c in proc.stdout for c in failing)


def test_audit_fails_an_interrupted_import_beside_its_features(imported_copy):
    # An import rerun with --overwrite keeps features/; killed, it leaves its mark and no stats.json.
    os.remove(imported_copy / "stats.json")
    (imported_copy / ".import_captions.running").write_text("")
    result = audit.audit_run(str(imported_copy))
    assert not result["ok"] and ("import_captions", "stats_readable") in _failed(result)
    assert _lait("audit", str(imported_copy)).returncode == 1


def _section(text, key):
    return re.search(rf'<section id="{key}">(.*?)</section>', text, re.S).group(1)


def test_report_shows_the_import_stage_its_rejects_and_its_images(imported, tmp_path):
    page = tmp_path / "report.html"
    proc = _lait("report", str(imported), "--out", str(page))
    assert proc.returncode == 0, proc.stderr
    text = page.read_text()
    assert "stages found: import_captions, features." in text
    funnel = _section(text, "funnel")
    row = re.search(r"<tr><td class=l>import_captions</td>(.*?)</tr>", funnel)
    assert row and re.findall(r"<td>([\d,]+)</td>", row.group(1)) == ["4", "2", "2"]
    assert "image_missing 1" in row.group(1) and "caption_empty 1" in row.group(1)
    samples = _section(text, "samples")
    assert "No rejected rows" not in samples
    assert "import_captions/image_missing" in samples and "import_captions/caption_empty" in samples
    assert "No kept pairs" not in samples and "a red picture" in samples  # D/pairs
    boxes = _section(text, "boxes")
    assert "no image" not in boxes and boxes.count("data:image/jpeg;base64,") == 2  # both images, from D/pairs
    assert "The books balance." in _section(text, "audit")


def test_report_shows_an_unbalanced_import(imported_copy):
    path = imported_copy / "stats.json"
    stats = json.loads(path.read_text())
    stats.update({"in": 500, "kept": 99})
    path.write_text(json.dumps(stats))
    text = report.build_report(str(imported_copy))
    row = re.search(r"<tr><td class=l>import_captions</td>(.*?)</tr>", _section(text, "funnel"))
    assert row and "class='bad'>NO<" in row.group(1)
    audit_section = _section(text, "audit")
    assert "do NOT balance" in audit_section and "import_captions" in audit_section


def test_report_draws_the_distributions_of_the_imported_captions(imported, imported_copy):
    """The Distributions section read crawl/ and filter/ only: "Not available in this run: caption length, language,
    image size, relevance (needs crawl/candidates, ...)" for an import, whose captions/, pairs/ and rejected/ hold
    all but the relevance scores. And with no pairs, the samples named filter/pairs, which an import has none of."""
    dist = _section(report.build_report(str(imported)), "distributions")
    assert dist.count("data:image/png;base64,") == 1  # caption lengths, splits, image sizes
    assert [html.unescape(m) for m in re.findall(r'<p class="missing">(.*?)</p>', dist)] == [
        "Not available in this run: relevance (drawn from the captions/, pairs/ and rejected/ of this folder's own "
        "stage, import_captions, which hold no relevance scores)."]
    assert "filter/" not in dist and "crawl/" not in dist
    for shard in (imported_copy / "pairs").iterdir():
        shard.unlink()
    text = report.build_report(str(imported_copy))
    assert "No kept pairs (pairs/ of this folder's own stage, import_captions) in this run." in \
        html.unescape(_section(text, "samples"))
    assert "filter/pairs" not in text


def test_audit_says_an_import_counts_its_captions(imported_copy):
    """kept_rows_match compares the import's kept with the rows of captions/ (not pairs/, one row per image)."""
    path = imported_copy / "stats.json"
    stats = json.loads(path.read_text())
    path.write_text(json.dumps({**stats, "in": 5, "kept": 3}))
    proc = _lait("audit", str(imported_copy))
    assert proc.returncode == 1
    assert "x kept_rows_match: 2 rows in captions/ (what import_captions counts as kept) vs kept 3" in proc.stdout
