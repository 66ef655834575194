"""A missing or corrupt relevance model is one clear error, from the loader and from the commands."""
import pytest

from filters.relevance import load
from lait import cli
from tests.relevance.conftest import broken_models, edited_model, save_tiny_model, write_pairs
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


@pytest.mark.parametrize("edit,message", [
    ({"vocabulary": None}, "'vocabulary' must be a list of strings"),
    ({"vocabulary": ["red", 3]}, "'vocabulary' must be a list of strings"),
    ({"text_features": 6}, "'text_features' must be a list of strings"),
    ({"image_features": "brightness"}, "'image_features' must be a list of strings"),
    ({"members": 0}, "'members' must be a whole number of 1 or more"),
    ({"members": "2"}, "'members' must be a whole number"),
    ({"model": {"image_size": 0}}, "model.image_size must be a whole number of 1 or more, got 0"),
    ({"model": {"image_size": 64.0}}, "model.image_size must be a whole number"),
    ({"model": {"num_features": "13"}}, "model.num_features must be a whole number"),
    ({"model": {"num_buckets": 1}}, "model.num_buckets must be a whole number of 2 or more"),
    ({"model": {"channels": []}}, "model.channels must be a non-empty list"),
    ({"model": {"channels": [4, 0, 4, 4]}}, "model.channels must be a non-empty list"),
])
def test_a_config_field_of_the_wrong_type_or_range_is_a_value_error(tmp_path, edit, message):
    """An edited or damaged config.json is refused at load, naming the file, not met later as a TypeError or a
    division by zero inside the scorer."""
    folder, path = edited_model(tmp_path, edit)
    for with_model in (True, False):
        with pytest.raises(ValueError) as caught:
            load(folder, device="cpu", with_model=with_model)
        assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)


def test_score_command_refuses_an_image_size_of_zero_before_its_output(tmp_path, capsys):
    import json

    folder = save_tiny_model(str(tmp_path / "m"))
    path = tmp_path / "m" / "config.json"
    config = json.loads(path.read_text())
    config["model"]["image_size"] = 0
    path.write_text(json.dumps(config))
    write_pairs(make_pairs(2, seed=5)[:4], str(tmp_path / "pairs"))
    out = tmp_path / "rel"
    assert cli.main(["relevance", "score", "--input", str(tmp_path / "pairs"), "--output", str(out),
                     "--model", folder]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lait relevance score: error: ") and "model.image_size" in err and err.count("\n") == 1
    assert not out.exists()
