"""Scoring rules: how the CLIP scorer decodes images, how a spec is told apart from a model folder, and how
many pairs a keep rate keeps."""
import io
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pytest
from PIL import Image

from filters import imageio
from filters.relevance import default_threshold, load
from pipeline.relevance import ScoreRelevance, kept_count
from tests.relevance.conftest import save_tiny_model

@pytest.fixture(scope="module")
def clip_scorer(tiny_clip_spec):
    """A tiny randomly initialised open_clip model, loaded through its ``clip:`` spec."""
    return load(tiny_clip_spec, device="cpu")


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _exif_rotated_jpeg() -> bytes:
    """Left half red, right half blue, stored sideways: EXIF orientation 6 shows it turned 90 degrees."""
    image = Image.new("RGB", (64, 32), (255, 0, 0))
    image.paste((0, 0, 255), (32, 0, 64, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


@pytest.mark.parametrize("data", [
    # composited on white, not black
    pytest.param(_png(Image.new("RGBA", (64, 64), (0, 0, 0, 0))), id="transparent-png"),
    # 20000/65535 -> 77, not 255
    pytest.param(_png(Image.fromarray(np.full((64, 64), 20000, np.uint16))), id="16-bit-grey"),
    # turned upright: 32x64, red on top
    pytest.param(_exif_rotated_jpeg(), id="exif-rotated-jpeg"),
])
def test_clip_sees_the_image_as_every_stage_decodes_it(clip_scorer, monkeypatch, data):
    """CLIP's preprocess receives the pixels of ``filters.imageio`` (upright, alpha on white, 16-bit scaled)."""
    received = []
    preprocess = clip_scorer.preprocess
    monkeypatch.setattr(clip_scorer, "preprocess", lambda image: received.append(image.copy()) or preprocess(image))
    _, ok = clip_scorer.prepare({"image_bytes": data, "caption": "x"})
    expected = np.asarray(imageio.load_image(data, orient=True))
    assert ok and len(received) == 1
    assert np.array_equal(np.asarray(received[0].convert("RGB")), expected)


def test_clip_refuses_what_the_shared_opener_refuses(clip_scorer, monkeypatch):
    """An image over the hard pixel limit is unscorable (rejected as ``image_undecodable``), like bad bytes."""
    monkeypatch.setattr(imageio, "HARD_MAX_PIXELS", 64 * 64 - 1)
    pairs = [{"image_bytes": _png(Image.new("RGB", (64, 64), (9, 9, 9))), "caption": "x"},
             {"image_bytes": b"broken", "caption": "x"}, {"image_bytes": None, "caption": "x"}]
    for pair in pairs:
        example, ok = clip_scorer.prepare(pair)
        assert not ok and not example["image"].any()
    scores, scorable = clip_scorer.score_and_flags(pairs)
    assert not scorable.any() and (scores == clip_scorer.min_score).all()


def test_a_model_folder_named_clip_colon_loads_as_a_model(tmp_path, monkeypatch):
    """A relative folder name that begins with ``clip:`` is a LAIT model when the folder exists, not a CLIP spec."""
    save_tiny_model(str(tmp_path / "clip:run1"), threshold=0.375)
    monkeypatch.chdir(tmp_path)
    scorer = load("clip:run1", device="cpu")
    assert scorer.kind == "lait" and scorer.threshold == 0.375 == default_threshold("clip:run1")
    assert ScoreRelevance("clip:run1").min_score == 0.0  # the LAIT scorer's lowest score, not CLIP's -1
    with pytest.raises(ValueError, match="clip:ARCH"):  # no such folder: still read as a (bad) CLIP spec
        load("clip:run2", device="cpu")


def test_kept_count_rounds_the_exact_product_halves_up():
    """round(r x n), halves up, of the rate as written: every rate of up to three decimals, n below 400
    (the float product misses 75 of them, 0.7 x 45 = 31.499999999999996 among them)."""
    assert kept_count(0.7, 45) == 32 and kept_count(0.29, 50) == 15
    wrong = []
    for digits in range(1, 4):
        for i in range(1, 10 ** digits):
            text = f"0.{i:0{digits}d}"
            rate = float(text)
            for n in range(1, 400):
                exact = int((Decimal(text) * n).quantize(Decimal(1), rounding=ROUND_HALF_UP))
                if kept_count(rate, n) != exact:
                    wrong.append((text, n, kept_count(rate, n), exact))
    assert not wrong, f"{len(wrong)} wrong, e.g. {wrong[:5]}"
    assert kept_count(1.0, 7) == kept_count(1, 7) == 7 and kept_count(np.float64(0.7), 45) == 32
