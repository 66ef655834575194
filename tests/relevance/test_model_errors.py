"""A missing or corrupt relevance model is one clear error, from the loader and from the commands."""
import pytest

from filters.relevance import load
from lait import cli
from tests.relevance.conftest import broken_models, save_tiny_model, write_pairs
from tests.relevance.scenes import make_pairs


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return broken_models(str(tmp_path_factory.mktemp("models")))


@pytest.mark.parametrize("name,error,message", [
    ("bad_json", ValueError, "config.json: not a readable JSON config"),
    ("truncated_weights", ValueError, "model.safetensors: unreadable or mismatched weights"),
    ("not_safetensors", ValueError, "model.safetensors: unreadable or mismatched weights"),
    ("no_weights", FileNotFoundError, "no weights (model.safetensors)"),
    ("no_model", FileNotFoundError, "not a LAIT relevance model (no config.json)"),
])
def test_broken_model_is_one_clear_error(models, name, error, message):
    with pytest.raises(error) as caught:
        load(models[name], device="cpu")
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_config_of_another_architecture_is_a_value_error(tmp_path):
    import json

    folder = save_tiny_model(str(tmp_path / "m"))
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["model"]["embed_dim"] = 16  # the weights hold 8
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="mismatched weights"):
        load(folder, device="cpu")
    del config["threshold"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="threshold"):
        load(folder, device="cpu")


@pytest.mark.parametrize("name", ["no_model", "bad_json", "truncated_weights", "no_weights"])
def test_score_command_with_a_broken_model_fails_before_its_output(models, name, tmp_path, capsys):
    write_pairs(make_pairs(2, seed=5)[:4], str(tmp_path / "pairs"))
    out = tmp_path / "rel"
    assert cli.main(["relevance", "score", "--input", str(tmp_path / "pairs"), "--output", str(out),
                     "--model", models[name]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lait relevance score: error: ") and err.count("\n") == 1
    assert not out.exists()  # nothing written, nothing to clear up


def test_score_command_checks_the_keep_rate_first(models, tmp_path, capsys):
    write_pairs(make_pairs(2, seed=5)[:4], str(tmp_path / "pairs"))
    good = models["bad_json"].replace("bad_json", "good")
    assert cli.main(["relevance", "score", "--input", str(tmp_path / "pairs"), "--output", str(tmp_path / "rel"),
                     "--model", good, "--keep-rate", "1.5"]) == 2
    assert "--keep-rate must be in (0, 1]" in capsys.readouterr().err and not (tmp_path / "rel").exists()
