"""Each pretraining task's masking and loss, and the fine-tuning losses, on tiny batches."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from model.tasks import (IGNORE, binary_loss, build_retrieval_batch, dense_class_distribution, mask_regions,
                         mask_tokens, multiclass_loss, prepare_pretrain_batch, sample_negative_partners, triplet_loss)
from imagebert_testlib import random_batch, tiny_config

MASKING = SimpleNamespace(mlm_prob=0.15, region_mask_prob=0.15, region_zero_prob=0.9, itm_neg_prob=0.5)
IDS = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4, "first_regular": 5}


def test_mask_tokens_rates_follow_bert_80_10_10():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (400, 50), generator=g)
    candidates = torch.ones_like(ids, dtype=torch.bool)
    candidates[:, 0] = False  # e.g. [CLS]
    masked, labels = mask_tokens(ids, candidates, 1000, mask_id=4, first_regular_id=5, prob=0.15, generator=g)
    chosen = labels != IGNORE
    assert not chosen[:, 0].any(), "a non-candidate token was masked"
    assert torch.equal(labels[chosen], ids[chosen]), "labels must be the original ids"
    assert abs(chosen.float().mean().item() - 0.15 * 49 / 50) < 0.01
    became_mask = (masked == 4) & chosen
    kept = (masked == ids) & chosen
    assert abs(became_mask.sum().item() / chosen.sum().item() - 0.8) < 0.03
    # Random replacements may draw the original id by chance, so "kept" is 10% plus a hair.
    assert abs(kept.sum().item() / chosen.sum().item() - 0.1) < 0.03
    assert torch.equal(masked[~chosen], ids[~chosen]), "unchosen tokens must stay as they were"
    assert (masked[chosen] >= 4).all()


def test_mask_tokens_masks_at_least_one_token_per_caption():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 50, (200, 4), generator=g)
    candidates = torch.zeros_like(ids, dtype=torch.bool)
    candidates[:, 1:3] = True
    candidates[0] = False  # a row with nothing to mask stays untouched
    _, labels = mask_tokens(ids, candidates, 50, 4, 5, prob=0.15, generator=g)
    chosen = labels != IGNORE
    assert chosen[1:].any(1).all()
    assert not chosen[0].any()
    assert not (chosen & ~candidates).any()


def test_mask_regions_zeroes_90_percent_of_chosen_and_skips_padding():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(300, 40, 8, generator=g) + 5.0  # never zero by chance
    region_mask = torch.ones(300, 40, dtype=torch.bool)
    region_mask[:, 30:] = False
    masked, chosen = mask_regions(features, region_mask, prob=0.15, zero_prob=0.9, generator=g)
    assert not chosen[:, 30:].any()
    assert abs(chosen[:, :30].float().mean().item() - 0.15) < 0.015
    zeroed = (masked == 0).all(-1)
    assert not (zeroed & ~chosen).any(), "only chosen regions are zeroed"
    assert abs(zeroed.sum().item() / chosen.sum().item() - 0.9) < 0.03
    untouched = ~zeroed
    assert torch.equal(masked[untouched], features[untouched])


def test_negative_partners_show_another_image():
    keys = torch.tensor([7, 7, 8, 9, 9, 10])
    g = torch.Generator().manual_seed(0)
    partners, valid = sample_negative_partners(keys, 3, g)
    assert partners.shape == (6, 3)
    assert valid.all()
    assert (keys[partners] != keys.unsqueeze(1)).all()
    partners, valid = sample_negative_partners(torch.tensor([1, 1]), 1, g)
    assert not valid.any(), "a batch of one image has no negative to offer"


def test_negative_partners_never_hold_the_rows_own_text():
    """Two images with one alt text ("product photo"): re-pairing one with the other's caption is no negative."""
    keys = torch.tensor([1, 2, 3, 4])
    ids = torch.tensor([[2, 50, 51, 3, 0], [2, 50, 51, 3, 0], [2, 60, 3, 0, 0], [2, 70, 71, 72, 3]])
    for seed in range(40):
        partners, valid = sample_negative_partners(keys, 2, torch.Generator().manual_seed(seed), ids)
        assert valid.all()
        chosen = set(partners[0].tolist()) | set(partners[1].tolist())
        assert not {0, 1} & set(partners[0].tolist()) and not {0, 1} & set(partners[1].tolist()), chosen
    partners, valid = sample_negative_partners(keys[:2], 1, torch.Generator().manual_seed(0), ids[:2])
    assert not valid.any(), "two rows of one text have no negative to offer each other"


def test_prepare_pretrain_batch_conditional_mask_only_on_matched_pairs():
    config = tiny_config()
    batch = random_batch(config, size=16, seed=3)
    batch["image_keys"] = torch.arange(16)
    g = torch.Generator().manual_seed(5)
    tasks = {"mlm": 1, "moc": 1, "mrfr": 1, "itm": 1}
    out = prepare_pretrain_batch(batch, tasks, MASKING, config, IDS, g)
    matched = out["itm_labels"]
    assert 0 < matched.sum() < 16, "about half the pairs become negatives"
    negatives = ~matched
    # A negative row now pairs a caption and an image of different rows.
    changed_image = out["image_keys"] != batch["image_keys"]
    changed_text = out["caption_keys"] != batch["caption_keys"]
    assert torch.equal(negatives, changed_image | changed_text)
    assert not (changed_image & changed_text).any()
    assert (out["mlm_labels"][negatives] == IGNORE).all()
    assert (out["mlm_labels"][matched] != IGNORE).any(1).all()
    assert not out["region_loss_mask"][negatives].any()
    # Negatives are masked too (else masking would reveal the label), but carry no masked loss.
    assert out["region_masked"][negatives].any()
    # The swapped-in image brings all its region tensors; MRFR targets are its unmasked features.
    for row in changed_image.nonzero().flatten().tolist():
        partner = int(out["image_keys"][row])  # image_keys == row index in this batch
        assert torch.equal(out["region_targets"][row], batch["region_features"][partner])
        assert torch.equal(out["region_classes"][row], batch["region_classes"][partner])


def test_task_losses_match_their_definitions(tiny_model):
    config = tiny_model.config
    batch = random_batch(config, size=6, seed=4)
    g = torch.Generator().manual_seed(2)
    prepared = prepare_pretrain_batch(batch, {"mlm": 1, "moc": 1, "mrfr": 1, "itm": 1}, MASKING, config, IDS, g)
    sequence, pooled = tiny_model.encode(prepared)
    text_len = prepared["input_ids"].shape[1]
    heads = tiny_model.heads

    labels = prepared["mlm_labels"]
    logits = heads["mlm"].decoder(heads["mlm"].transform(sequence[:, :text_len]))
    expected = F.cross_entropy(logits.reshape(-1, config.vocab_size), labels.reshape(-1), ignore_index=IGNORE)
    assert torch.allclose(heads["mlm"].loss(sequence, pooled, prepared), expected, atol=1e-5)
    assert heads["mlm"].decoder.weight is tiny_model.embeddings.word.weight, "MLM decoder is tied to word embeddings"

    selected = prepared["region_masked"] & prepared["region_loss_mask"]
    region_out = sequence[:, text_len:]
    logits = heads["moc"].head(region_out)
    expected = F.cross_entropy(logits[selected], prepared["region_classes"][selected])
    assert torch.allclose(heads["moc"].loss(sequence, pooled, prepared), expected, atol=1e-5)

    predicted = heads["mrfr"].head(region_out)[selected]
    expected = F.mse_loss(predicted, prepared["region_targets"][selected])
    assert torch.allclose(heads["mrfr"].loss(sequence, pooled, prepared), expected, atol=1e-5)

    itm_logits = heads["itm"].classifier(pooled).squeeze(-1)
    expected = F.binary_cross_entropy_with_logits(itm_logits, prepared["itm_labels"].float())
    assert torch.allclose(heads["itm"].loss(sequence, pooled, prepared), expected, atol=1e-6)

    outputs, loss = tiny_model(prepared, {"mlm": 1.0, "itm": 2.0})
    assert set(outputs["losses"]) == {"mlm", "itm"}
    assert torch.allclose(loss, outputs["losses"]["mlm"] + 2 * outputs["losses"]["itm"], atol=1e-5)


def test_moc_kl_uses_the_detector_distribution():
    config = tiny_config()
    torch.manual_seed(0)
    from model.imagebert import ImageBert

    model = ImageBert(config, moc_loss="kl")
    batch = random_batch(config, size=3, seed=6)
    batch["region_masked"] = batch["region_mask"].clone()
    batch["region_loss_mask"] = torch.ones_like(batch["region_mask"])
    sequence, pooled = model.encode(batch)
    logits = model.heads["moc"].head(sequence[:, batch["input_ids"].shape[1]:])[batch["region_mask"]]
    target = dense_class_distribution(batch["region_topk_ids"][batch["region_mask"]],
                                      batch["region_topk_probs"][batch["region_mask"]], config.num_classes)
    assert torch.allclose(target.sum(-1), torch.ones(len(target)))
    expected = F.kl_div(F.log_softmax(logits, -1), target, reduction="batchmean")
    assert torch.allclose(model.heads["moc"].loss(sequence, pooled, batch), expected, atol=1e-5)


def test_masked_losses_are_zero_without_masked_items(tiny_model):
    config = tiny_model.config
    batch = random_batch(config, size=2)
    batch["mlm_labels"] = torch.full_like(batch["input_ids"], IGNORE)
    batch["region_masked"] = torch.zeros_like(batch["region_mask"])
    batch["region_loss_mask"] = torch.zeros_like(batch["region_mask"])
    batch["region_targets"] = batch["region_features"]
    sequence, pooled = tiny_model.encode(batch)
    for name in ("mlm", "moc", "mrfr"):
        loss = tiny_model.heads[name].loss(sequence, pooled, batch)
        assert loss.item() == 0.0 and not math.isnan(loss.item())
        assert loss.requires_grad, f"{name}: a zero loss must stay in the graph (DDP)"


def test_retrieval_batch_groups_positive_and_negatives():
    config = tiny_config()
    batch = random_batch(config, size=5, seed=7)
    g = torch.Generator().manual_seed(0)
    flat, valid = build_retrieval_batch(batch, 3, g)
    assert valid.shape == (5, 4) and valid.all()
    image_keys = flat["image_keys"].view(5, 4)
    caption_keys = flat["caption_keys"].view(5, 4)
    assert torch.equal(image_keys[:, 0], batch["image_keys"]) and torch.equal(caption_keys[:, 0], batch["caption_keys"])
    # Columns 1-2: the caption with another image; column 3: the image with another caption.
    assert (image_keys[:, 1:3] != batch["image_keys"].unsqueeze(1)).all()
    assert torch.equal(caption_keys[:, 1:3], batch["caption_keys"].unsqueeze(1).expand(5, 2))
    assert torch.equal(image_keys[:, 3], batch["image_keys"])
    assert (caption_keys[:, 3] != batch["caption_keys"]).all()


def test_finetune_losses_on_hand_made_scores():
    scores = torch.tensor([[3.0, -1.0, 0.5], [0.0, 2.0, -2.0]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    expected_binary = (F.softplus(-torch.tensor(3.0)) + F.softplus(torch.tensor(-1.0)) + F.softplus(torch.tensor(0.5))
                       + F.softplus(-torch.tensor(0.0)) + F.softplus(torch.tensor(2.0))) / 5
    assert torch.allclose(binary_loss(scores, valid), expected_binary)
    expected_multi = (-F.log_softmax(scores[0], 0)[0] - F.log_softmax(scores[1, :2], 0)[0]) / 2
    assert torch.allclose(multiclass_loss(scores, valid), expected_multi)
    s = torch.sigmoid(scores)
    expected_triplet = (F.relu(0.2 - s[0, 0] + s[0, 2]) + F.relu(0.2 - s[1, 0] + s[1, 1])) / 2
    assert torch.allclose(triplet_loss(scores, valid, margin=0.2), expected_triplet)
    # A well-separated group costs (almost) nothing under every loss.
    easy = torch.tensor([[20.0, -20.0, -20.0]])
    for loss in (binary_loss, multiclass_loss, triplet_loss):
        assert loss(easy, torch.ones_like(easy, dtype=torch.bool)).item() < 1e-6


def test_dual_encoder_loss_ignores_other_captions_of_the_same_image():
    from model.tasks import dual_encoder_loss

    text = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), dim=-1)
    image = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), dim=-1)
    # Rows 0 and 1 are two captions of one image: their identical embeddings must not count as errors.
    same_image = dual_encoder_loss(text, image, torch.tensor([5, 5, 6]))
    assert same_image.item() < 1e-6
    distinct = dual_encoder_loss(text, image, torch.tensor([5, 7, 6]))
    assert distinct.item() == pytest.approx(math.log(2) * 2 / 3, rel=1e-4)


@pytest.mark.parametrize("loss_type", ["ce", "kl"])
def test_moc_skips_a_masked_region_the_head_has_no_class_for(loss_type):
    """A masked region whose class ids are all past the head's classes (a classes.json listing fewer than the
    detector wrote) is skipped by both losses: with KL it had an all-zero target and still counted in the mean."""
    from model.imagebert import ImageBert

    torch.manual_seed(0)
    config = tiny_config(num_classes=6)
    head = ImageBert(config, moc_loss=loss_type).heads["moc"]
    sequence = torch.randn(1, 3 + 2, config.hidden_size)  # 3 text positions, 2 regions
    batch = {"input_ids": torch.zeros(1, 3, dtype=torch.long), "region_loss_mask": torch.tensor([[True, True]]),
             "region_classes": torch.tensor([[2, 9]]), "region_topk_ids": torch.tensor([[[2, 3], [9, 10]]]),
             "region_topk_probs": torch.tensor([[[0.7, 0.3], [0.8, 0.2]]])}
    with torch.no_grad():
        both = head.loss(sequence, None, dict(batch, region_masked=torch.tensor([[True, True]])))
        valid_only = head.loss(sequence, None, dict(batch, region_masked=torch.tensor([[True, False]])))
    assert float(valid_only) > 0 and torch.allclose(both, valid_only)
