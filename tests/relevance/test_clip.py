"""The optional CLIP backend, with a tiny randomly initialised open_clip model saved by the test."""

import pytest
import torch

open_clip = pytest.importorskip("open_clip")  # the `clip` extra; installed in the project venv

import apache_beam as beam  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline  # noqa: E402
from apache_beam.testing.util import BeamAssertException, assert_that  # noqa: E402

from filters.relevance import CLIP_DEFAULT_THRESHOLD, default_threshold, load  # noqa: E402
from pipeline.relevance import ScoreRelevance, ThresholdRelevance  # noqa: E402
from tests.relevance.scenes import make_pairs  # noqa: E402

@pytest.fixture(scope="module")
def clip_spec(tiny_clip_spec):
    return tiny_clip_spec


def test_clip_scores_are_the_models_cosines(clip_spec):
    rows = make_pairs(2, seed=9)
    scorer = load(clip_spec)
    scores = scorer.score(rows + [dict(rows[0], image_bytes=b"broken")])
    assert scorer.threshold == CLIP_DEFAULT_THRESHOLD == default_threshold(clip_spec) == 0.28
    assert scores[-1] == -1.0  # unscorable: below any cosine threshold
    clip = scorer.model.clip
    from PIL import Image
    import io

    image = scorer.preprocess(Image.open(io.BytesIO(rows[1]["image_bytes"])).convert("RGB"))[None]
    tokens = scorer.tokenizer([rows[1]["caption"]])
    with torch.no_grad():
        expected = torch.nn.functional.cosine_similarity(clip.encode_image(image), clip.encode_text(tokens)).item()
    assert scores[1] == pytest.approx(expected, abs=1e-5)
    assert ((scores[:-1] >= -1) & (scores[:-1] <= 1)).all() and len(set(scores[:-1].round(6))) > 1


def test_clip_spec_runs_in_beam(clip_spec):
    rows = [{k: v for k, v in r.items() if k != "is_match"} for r in make_pairs(2, seed=9)]
    expected = dict(zip([r["pair_id"] for r in rows], load(clip_spec).score(rows).tolist()))

    def check(scored):
        got = dict(scored)
        if got.keys() != expected.keys() or max(abs(got[k] - expected[k]) for k in got) > 1e-5:
            raise BeamAssertException(f"{got} != {expected}")

    with BeamTestPipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        scored = p | beam.Create(rows) | ScoreRelevance(clip_spec, batch_size=4)
        assert_that(scored | beam.Map(lambda d: (d["pair_id"], d["relevance"])), check)
        out = scored | ThresholdRelevance(spec=clip_spec)
        assert_that(out.summary | beam.Map(lambda s: s["threshold"]), lambda t: None if t == [0.28] else
                    (_ for _ in ()).throw(BeamAssertException(str(t))), label="threshold")
