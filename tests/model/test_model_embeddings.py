"""The embedding rules, the encoder, and initialisation from a Hugging Face BERT folder."""
import torch
import torch.nn.functional as F

from imagebert_testlib import random_batch, tiny_config
from model.imagebert import IMAGE_SEGMENT, TEXT_SEGMENT, ImageBert, load_bert_weights, read_bert_config
from model.tokenizer import load_tokenizer


def test_regions_share_one_sequence_position_and_text_positions_ascend(tiny_model):
    emb = tiny_model.embeddings
    config = tiny_model.config
    torch.manual_seed(1)
    ids = torch.randint(5, config.vocab_size, (1, 6))
    feature = torch.randn(1, 1, config.feature_dim)
    location = torch.rand(1, 1, 5)
    # The same region in every slot gets the same embedding: no per-slot position.
    out = emb(ids, feature.expand(1, 4, -1), location.expand(1, 4, -1))
    regions = out[0, 6:]
    assert torch.allclose(regions, regions[0].expand_as(regions), atol=1e-6)
    # Written out: LN(feature proj + location proj + image segment + the shared position).
    expected = emb.region_norm(emb.region_feature(feature[0, 0]) + emb.region_location(location[0, 0])
                               + emb.segment.weight[IMAGE_SEGMENT] + emb.position.weight[config.region_position_id])
    assert torch.allclose(regions[0], expected, atol=1e-6)
    # The same token in every slot differs by position: text positions ascend from 0.
    same = torch.full((1, 6), 9)
    text = emb(same, feature[:, :0], location[:, :0])[0]
    for slot in range(6):
        expected = emb.text_norm(emb.word.weight[9] + emb.position.weight[slot] + emb.segment.weight[TEXT_SEGMENT])
        assert torch.allclose(text[slot], expected, atol=1e-6)
    assert not torch.allclose(text[0], text[1])


def test_segments_differ_between_text_and_regions(tiny_model):
    emb = tiny_model.embeddings
    config = tiny_model.config
    batch = random_batch(config, size=2)
    before = emb(batch["input_ids"], batch["region_features"], batch["region_locations"])
    text_len = batch["input_ids"].shape[1]
    with torch.no_grad():
        emb.segment.weight[IMAGE_SEGMENT] += 1.0
    after = emb(batch["input_ids"], batch["region_features"], batch["region_locations"])
    assert torch.allclose(before[:, :text_len], after[:, :text_len]), "text must not use the image segment"
    assert not torch.allclose(before[:, text_len:], after[:, text_len:]), "regions must use the image segment"
    assert not torch.equal(emb.segment.weight[TEXT_SEGMENT], emb.segment.weight[IMAGE_SEGMENT])


def test_location_changes_the_region_embedding(tiny_model):
    emb = tiny_model.embeddings
    ids = torch.tensor([[2, 9, 3]])
    feature = torch.randn(1, 1, tiny_model.config.feature_dim)
    a = emb(ids, feature, torch.tensor([[[0.0, 0.0, 0.5, 0.5, 0.25]]]))
    b = emb(ids, feature, torch.tensor([[[0.5, 0.5, 1.0, 1.0, 0.25]]]))
    assert torch.allclose(a[:, :3], b[:, :3]) and not torch.allclose(a[:, 3:], b[:, 3:])


def test_padding_does_not_change_real_outputs(tiny_model):
    tiny_model.eval()
    batch = random_batch(tiny_model.config, size=3)
    sequence, pooled = tiny_model.encode(batch)
    padded = dict(batch)
    extra = 3
    padded["region_features"] = torch.cat([batch["region_features"], torch.randn(3, extra, 8)], 1)
    padded["region_locations"] = torch.cat([batch["region_locations"], torch.rand(3, extra, 5)], 1)
    padded["region_mask"] = torch.cat([batch["region_mask"], torch.zeros(3, extra, dtype=torch.bool)], 1)
    sequence2, pooled2 = tiny_model.encode(padded)
    assert torch.allclose(pooled, pooled2, atol=1e-5)
    keep = torch.cat([batch["text_mask"], batch["region_mask"]], 1)
    assert torch.allclose(sequence[keep], sequence2[:, : keep.shape[1]][keep], atol=1e-5)


def test_init_from_hugging_face_bert_folder_matches_bert(tmp_path):
    from transformers import BertConfig, BertForPreTraining, BertModel

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "circle", "square", "left", "of"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    hf_config = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=64, attn_implementation="sdpa")
    torch.manual_seed(0)
    BertForPreTraining(hf_config).save_pretrained(tmp_path)
    fields = read_bert_config(str(tmp_path))
    config = tiny_config(**fields)
    model = ImageBert(config).eval()
    fresh = load_bert_weights(model, str(tmp_path))
    assert any(name.startswith("embeddings.region_feature") for name in fresh)
    assert not any(name.startswith(("layers.", "embeddings.word", "pooler")) for name in fresh)

    tokenizer = load_tokenizer(str(tmp_path))
    ids = torch.tensor([tokenizer.encode("a red circle left of a blue square").ids])
    assert ids[0, 0].item() == 2 and ids[0, -1].item() == 3 and (ids != 1).all(), "BERT's vocab and template"
    # With no regions, ImageBERT's trunk is BERT: same hidden states, same pooled output.
    batch = {"input_ids": ids, "text_mask": torch.ones_like(ids, dtype=torch.bool),
             "region_features": torch.zeros(1, 0, config.feature_dim), "region_locations": torch.zeros(1, 0, 5),
             "region_mask": torch.zeros(1, 0, dtype=torch.bool)}
    sequence, pooled = model.encode(batch)
    reference = BertModel.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    with torch.no_grad():
        expected = reference(input_ids=ids)
    assert torch.allclose(sequence, expected.last_hidden_state, atol=1e-5)
    assert torch.allclose(pooled, expected.pooler_output, atol=1e-5)
    # The MLM head is BERT's too (tied decoder + its bias).
    full = BertForPreTraining.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        hf_logits = full(input_ids=ids).prediction_logits
        ours = model.heads["mlm"].decoder(model.heads["mlm"].transform(sequence))
    assert torch.allclose(ours, hf_logits, atol=1e-4)


def test_sdpa_attention_matches_explicit_softmax(tiny_model):
    attention = tiny_model.layers[0].attention
    x = torch.randn(2, 5, tiny_model.config.hidden_size)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    out = attention(x, mask[:, None, None, :])
    q, k, v = attention.qkv(x).view(2, 5, 3, 2, 16).permute(2, 0, 3, 1, 4)
    weights = (q @ k.transpose(-1, -2) / 4.0).masked_fill(~mask[:, None, None, :], float("-inf"))
    expected = attention.out((F.softmax(weights, -1) @ v).transpose(1, 2).reshape(2, 5, 32))
    assert torch.allclose(out, expected, atol=1e-5)
