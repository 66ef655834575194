"""Loading published weights as they come: BERT's legacy LayerNorm names and wrapped names, damaged BERT files, a
tokenizer of another BERT, detector weights whose name does not say their format, and files with a byte-order mark.

Every file here is a tiny stand-in written by the test (never downloaded)."""
import logging
import os
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from imagebert_testlib import tiny_config, train_config_dict
from model.config import ConfigError, load_config
from model.imagebert import ImageBert, load_bert_weights, read_bert_config

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "circle", "square", "left", "of"]


def _bert(cls_name: str = "BertForPreTraining"):
    """A tiny transformers BERT whose LayerNorms are not at their initial ones and zeros (so a LayerNorm left fresh
    shows), and its state dict."""
    import transformers

    config = transformers.BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=37, max_position_embeddings=64)
    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "LayerNorm" in name:
                param.add_(torch.randn_like(param))
    return model, {k: v.clone().contiguous() for k, v in model.state_dict().items()}  # clones: untied for safetensors


def _folder(path, state: dict, fmt: str = "bin", cls_name: str = "BertForPreTraining"):
    """A Hugging Face BERT folder holding ``state`` as ``pytorch_model.bin`` or ``model.safetensors``."""
    model, _ = _bert(cls_name)
    os.makedirs(path, exist_ok=True)
    model.config.save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    if fmt == "bin":
        torch.save(state, path / "pytorch_model.bin")
    else:
        save_file(state, str(path / "model.safetensors"))
    return str(path)


def _load(folder: str):
    model = ImageBert(tiny_config(**read_bert_config(folder)))
    return model, load_bert_weights(model, folder)


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_legacy_layer_norm_gamma_beta_names_are_loaded(tmp_path, fmt):
    """bert-base-uncased's pytorch_model.bin names its LayerNorms' parameters gamma/beta, which transformers renames
    on load; every LayerNorm of the encoder and the text embeddings stayed fresh, silently."""
    bert, state = _bert()
    legacy = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
              for k, v in state.items()}
    assert sum(k.endswith("LayerNorm.gamma") for k in legacy) == 6
    model, fresh = _load(_folder(tmp_path / fmt, legacy, fmt))
    assert not [n for n in fresh if "norm" in n and not n.startswith("embeddings.region_norm")], fresh
    assert torch.equal(model.embeddings.text_norm.weight, bert.bert.embeddings.LayerNorm.weight)
    assert torch.equal(model.layers[1].ffn_norm.bias, bert.bert.encoder.layer[1].output.LayerNorm.bias)
    assert torch.equal(model.heads["mlm"].transform[2].weight, bert.cls.predictions.transform.LayerNorm.weight)


@pytest.mark.parametrize("prefix", ["module.", "model.", "module.model."])
def test_wrapped_names_load_as_bert(tmp_path, prefix):
    """A DDP save (module.) or a wrapper's (model.) loaded 0 tensors and trained from random weights, at INFO level."""
    bert, state = _bert()
    model, fresh = _load(_folder(tmp_path / "w", {prefix + k: v for k, v in state.items()}))
    assert not [n for n in fresh if n.startswith(("layers.", "embeddings.word", "embeddings.text_norm", "pooler"))]
    assert torch.equal(model.embeddings.word.weight, bert.bert.embeddings.word_embeddings.weight)
    q = bert.bert.encoder.layer[0].attention.self.query.weight
    assert torch.equal(model.layers[0].attention.qkv.weight[:32], q)


def test_weights_lacking_bert_tensors_are_refused_naming_them(tmp_path):
    _, state = _bert()
    other = _folder(tmp_path / "roberta", {"roberta." + k.removeprefix("bert."): v for k, v in state.items()})
    with pytest.raises(ValueError) as info:
        _load(other)
    message = str(info.value)
    assert message.startswith(f"{other}: not a BERT checkpoint") and "\n" not in message
    assert "embeddings.word_embeddings.weight" in message and "'roberta.embeddings" in message
    del state["bert.encoder.layer.1.attention.self.key.bias"]
    with pytest.raises(ValueError, match=r"lack 1 of BERT's .*encoder\.layer\.1\.attention\.self\.key\.bias"):
        _load(_folder(tmp_path / "cut", state))


def test_a_checkpoint_without_pooler_or_mlm_head_loads_with_a_warning(tmp_path, caplog):
    """BertForMaskedLM saves no pooler (the ITM head reads it): ImageBERT's starts fresh, said."""
    _, state = _bert("BertForMaskedLM")
    assert not any("pooler" in k for k in state)
    with caplog.at_level(logging.WARNING, logger="model.imagebert"):
        _, fresh = _load(_folder(tmp_path / "mlm", state, cls_name="BertForMaskedLM"))
    assert "pooler.weight" in fresh and not any(n.startswith("layers.") for n in fresh)
    assert any("pooler.dense.weight" in r.getMessage() for r in caplog.records)


def test_a_damaged_bert_weights_file_is_one_line_naming_it(tmp_path):
    _, state = _bert()
    cases = {}
    cut = _folder(tmp_path / "cut_st", state, "safetensors")
    data = open(f"{cut}/model.safetensors", "rb").read()
    open(f"{cut}/model.safetensors", "wb").write(data[: len(data) // 2])
    cases[f"{cut}/model.safetensors"] = "a safetensors file, but it does not load"
    cut = _folder(tmp_path / "cut_bin", state)
    data = open(f"{cut}/pytorch_model.bin", "rb").read()
    open(f"{cut}/pytorch_model.bin", "wb").write(data[: len(data) // 2])  # was "[Errno 22] Invalid argument"
    cases[f"{cut}/pytorch_model.bin"] = "a PyTorch checkpoint or pickle file, but it does not load"
    lfs = _folder(tmp_path / "lfs", state)
    open(f"{lfs}/pytorch_model.bin", "w").write("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n")
    cases[f"{lfs}/pytorch_model.bin"] = "Git LFS pointer"
    empty = _folder(tmp_path / "empty", state)
    open(f"{empty}/pytorch_model.bin", "wb").close()
    cases[f"{empty}/pytorch_model.bin"] = "the file is empty"
    for path, what in cases.items():
        with pytest.raises(ValueError) as info:
            _load(os.path.dirname(path))
        message = str(info.value)
        assert message.startswith(f"{path}: not a readable weights file: ") and what in message, message
        assert "\n" not in message


def test_a_tokenizer_of_another_bert_is_refused_before_training(synth_dir, tmp_path):
    """An uncased vocab.txt (30522) with a cased model (28996): IndexError mid-training (a device assert on CUDA)."""
    from model.train import resolve_model_config

    _, state = _bert()
    folder = _folder(tmp_path / "bert", state)
    config = load_config(base=train_config_dict(synth_dir, str(tmp_path / "out"), bert=folder))
    with pytest.raises(ConfigError) as info:
        resolve_model_config(config, len(WORDS) + 3, 0)
    message = str(info.value)
    assert message.startswith(f"{folder}/vocab.txt: 15 word pieces") and f"{folder}/config.json" in message
    assert "vocab_size 12" in message
    with pytest.raises(ConfigError, match=r"vocab.txt: \[PAD\] is id 3, but .*config.json has pad_token_id 0"):
        resolve_model_config(config, len(WORDS), 3)
    assert resolve_model_config(config, len(WORDS), 0).vocab_size == len(WORDS)
    assert resolve_model_config(config, len(WORDS) - 2, 0).vocab_size == len(WORDS)  # fewer pieces: fine


def test_a_vocab_txt_with_a_byte_order_mark_is_said(tmp_path):
    from model.tokenizer import load_tokenizer

    (tmp_path / "vocab.txt").write_text("\n".join(WORDS) + "\n", encoding="utf-8-sig")
    with pytest.raises(ValueError, match=r"lacks the special tokens \['\[PAD\]'\] \(the file starts with a UTF-8 "
                                         r"byte-order mark"):
        load_tokenizer(str(tmp_path / "vocab.txt"))


def test_class_names_files_with_a_byte_order_mark(tmp_path):
    from model.detectors import read_class_names

    (tmp_path / "objects.txt").write_text("yes\nairplane,aeroplane\n", encoding="utf-8-sig")
    assert read_class_names(str(tmp_path / "objects.txt")) == ["yes", "airplane"]
    (tmp_path / "objects.json").write_text('["yes", "airplane"]', encoding="utf-8-sig")
    assert read_class_names(str(tmp_path / "objects.json")) == ["yes", "airplane"]


def test_detector_weights_format_is_told_by_the_bytes_not_the_name(tmp_path):
    """pytorch_model.bin renamed .pkl, a detectron2 pickle saved as .pth, a .PKL: each went to the other loader and
    was refused as damaged."""
    from model.detectors import attribute_count
    from model.detectors.weights import load_state, tensor_shape

    name = "roi_heads.box_predictor.attr_score.weight"
    arrays = {name: np.arange(44, dtype=np.float32).reshape(11, 4)}
    torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, tmp_path / "zip.pkl")
    torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, tmp_path / "legacy.pkl",
               _use_new_zipfile_serialization=False)
    save_file({k: torch.from_numpy(v) for k, v in arrays.items()}, str(tmp_path / "st.bin"))
    for file, protocol in (("d2.pth", 2), ("d2.bin", 4), ("D2.PKL", 5)):
        with open(tmp_path / file, "wb") as f:
            pickle.dump({"model": arrays, "__author__": "stand-in"}, f, protocol=protocol)
    for file in ("zip.pkl", "legacy.pkl", "st.bin", "d2.pth", "d2.bin", "D2.PKL"):
        path = str(tmp_path / file)
        assert torch.equal(load_state(path)[name], torch.from_numpy(arrays[name])), file
        assert tensor_shape(path, (name,)) == (11, 4), file
        assert attribute_count("vg-r101-c4", path) == 10, file


def test_a_pickle_under_a_torch_name_still_meets_the_arrays_only_unpickler(tmp_path):
    from model.detectors.weights import UnsafePickleError, load_state

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    for file in ("evil.pth", "evil.bin", "evil.safetensors"):
        with open(tmp_path / file, "wb") as f:
            pickle.dump({"model": {"x": Exploit()}}, f, protocol=2)
        with pytest.raises((UnsafePickleError, pickle.UnpicklingError)):
            load_state(str(tmp_path / file))
    assert not marker.exists()


def test_an_unreadable_weights_reason_is_not_cut_mid_sentence(tmp_path):
    """The unpickler's reason spans two lines; only the first ("...was encountered,") was kept."""
    from model.detectors import unreadable_weights

    (tmp_path / "w.pkl").write_bytes(b"\x80\x02" + bytes(range(256)))
    error = pickle.UnpicklingError("A load persistent id instruction was encountered,\n"
                                   "but no persistent_load function was specified.")
    message = str(unreadable_weights(str(tmp_path / "w.pkl"), error))
    assert message.endswith("(UnpicklingError: A load persistent id instruction was encountered, but no "
                            "persistent_load function was specified.)"), message


def test_bert_weights_load_without_torchvision(tmp_path):
    """The training install has no torchvision: BERT's loading imported model.detectors (and with it torchvision)
    for its error messages, on every call."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = ("import sys; sys.modules['torchvision'] = None\n"
              "from model.imagebert import _read_state_dict\n"
              f"print(len(_read_state_dict({str(tmp_path)!r})))\n")
    torch.save({"bert.embeddings.word_embeddings.weight": torch.zeros(3, 2)}, tmp_path / "pytorch_model.bin")
    done = subprocess.run([sys.executable, "-c", script], cwd=root, env=dict(os.environ, PYTHONPATH=root),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "1", done.stderr[-1500:]
