"""ImageBERT (Qi et al., arXiv 2001.07966): one transformer over word pieces and detector regions.

Sequence layout: ``[CLS] caption [SEP]`` then the regions. Text tokens get ascending sequence
positions and segment 0; every region gets the same sequence position (``region_position_id``),
segment 1, and a projection of its feature plus a projection of its 5-d location
(x1/W, y1/H, x2/W, y2/H, box area / image area). The encoder is BERT's (post-LayerNorm) with
``scaled_dot_product_attention``. The heads are the pretraining tasks of ``model.tasks``.
"""
from __future__ import annotations

import json
import logging
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.config import ModelConfig
from model.fused_norm import add_dropout_layer_norm
from model.tasks import SLOTS_ONLY, TASKS, cls_rows, gather_rows, slot_rows

logger = logging.getLogger(__name__)

TEXT_SEGMENT, IMAGE_SEGMENT = 0, 1


class Embeddings(nn.Module):
    """Text and region embeddings, each summed and layer-normalised, then concatenated."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.word = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_position, config.hidden_size)
        self.segment = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.text_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.region_feature = nn.Linear(config.feature_dim, config.hidden_size)
        self.region_location = nn.Linear(5, config.hidden_size)
        self.region_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.register_buffer("position_ids", torch.arange(config.max_position), persistent=False)

    def forward(self, input_ids: torch.Tensor, region_features: torch.Tensor | None,
                region_locations: torch.Tensor | None, regions: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T+R, H] embeddings of the text then the regions (``regions``: ``embed_regions``' output, given
        instead of the features and locations, e.g. an image's once for all the captions scored against it)."""
        length = input_ids.shape[1]
        text = self.word(input_ids) + self.position(self.position_ids[:length]) + self.segment.weight[TEXT_SEGMENT]
        text = self.text_norm(text)
        if regions is None:
            regions = self.embed_regions(region_features, region_locations)
        return self.dropout(torch.cat([text, regions], dim=1))

    def embed_regions(self, region_features: torch.Tensor, region_locations: torch.Tensor) -> torch.Tensor:
        """[B, R, H] region embeddings before dropout: they depend on the image alone."""
        region_shared = self.segment.weight[IMAGE_SEGMENT] + self.position.weight[self.config.region_position_id]
        regions = self.region_feature(region_features.to(self.region_feature.weight.dtype))
        regions = regions + self.region_location(region_locations.to(self.region_location.weight.dtype))
        return self.region_norm(regions + region_shared)


class ColumnLinear(nn.Linear):
    """``nn.Linear`` that can compute only some of its output features: ``forward(x, columns=slice)``.

    Called as a module either way, so hooks see every input (``model.fp8.calibrate`` relies on it);
    ``model.fp8.Float8Linear`` takes the same argument.
    """

    def forward(self, x: torch.Tensor, columns: slice | None = None) -> torch.Tensor:
        if columns is None:
            return super().forward(x)
        return F.linear(x, self.weight[columns], None if self.bias is None else self.bias[columns])


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention`` (flash / efficient kernels)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.hidden_size % config.num_heads:
            raise ValueError(f"hidden_size {config.hidden_size} is not a multiple of num_heads {config.num_heads}")
        self.num_heads = config.num_heads
        self.qkv = ColumnLinear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = config.attention_dropout

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L, H] outputs, or with ``rows`` ([B, K] positions) those rows' outputs only, [B, K, H]: their
        queries attend to every key, and only their queries and outputs are computed."""
        batch, length, hidden = x.shape
        heads, size = self.num_heads, hidden // self.num_heads
        if rows is None:
            q, k, v = self.qkv(x).view(batch, length, 3, heads, size).permute(2, 0, 3, 1, 4)
        else:
            queries = rows.shape[1]
            q = self.qkv(gather_rows(x, rows), columns=slice(0, hidden)).view(batch, queries, heads, size).transpose(1, 2)
            kv = self.qkv(x, columns=slice(hidden, 3 * hidden))
            k, v = kv.view(batch, length, 2, heads, size).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(batch, q.shape[2], hidden))


class Layer(nn.Module):
    """A BERT layer: attention and feed-forward, each with residual, dropout and LayerNorm after."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention = SelfAttention(config)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.ffn_out = nn.Linear(config.intermediate_size, config.hidden_size)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L, H] -> [B, L, H]; with ``rows`` ([B, K] positions) only those rows' outputs, [B, K, H]
        (every row is still a key and value of the attention)."""
        residual = x if rows is None else gather_rows(x, rows)
        x = self.attention_norm(residual + self.dropout(self.attention(x, attention_mask, rows)))
        return self.ffn_norm(x + self.dropout(self.ffn_out(F.gelu(self.ffn_in(x)))))

    def forward_fused(self, x: torch.Tensor, x_in: torch.Tensor, attention_mask: torch.Tensor | None,
                      rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` with each dropout + residual + LayerNorm as one kernel (``model.fused_norm``).

        ``x`` is the residual stream and ``x_in`` what the matrix multiplies read: ``x`` itself, or its bf16
        copy that the previous layer's kernel wrote along with it; both come back for the next layer.
        """
        p = self.dropout.p
        residual = x if rows is None else gather_rows(x, rows)
        x, x_in = add_dropout_layer_norm(self.attention(x_in, attention_mask, rows), residual, self.attention_norm, p,
                                         self.training)
        return add_dropout_layer_norm(self.ffn_out(F.gelu(self.ffn_in(x_in))), x, self.ffn_norm, p, self.training)


class ImageBert(nn.Module):
    """ImageBERT with its four pretraining heads; ``forward(batch, weights) -> (outputs, loss)``."""

    def __init__(self, config: ModelConfig, moc_loss: str = "ce"):
        super().__init__()
        if config.feature_dim is None or config.num_classes is None:
            raise ValueError("ModelConfig.feature_dim and num_classes must be resolved from the data first")
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_layers))
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.heads = nn.ModuleDict({
            name: (cls(config, moc_loss) if name == "moc" else cls(config)) for name, cls in TASKS.items()
        })
        self.apply(self._init_weights)
        self.heads["mlm"].decoder.weight = self.embeddings.word.weight  # tied, as BERT
        # The encoder's dropout + residual + LayerNorm steps as fused Triton kernels (``model.fused_norm``;
        # training config ``fused_norm``); the same function either way, only the dropout stream differs.
        self.fused_norm = False
        # The last layer computes only the rows something reads ([CLS] to score; [CLS] and the masked slots
        # under exact masking): the same outputs, without ~7% of a pass's FLOPs (ImageBERT-base). Off only
        # to measure it (benchmarks/bench_train.py modifier ``allrows``).
        self.last_layer_rows = True

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            nn.init.zeros_(module.weight[module.padding_idx])

    def compile_trunk(self, opaque_layer_norm: bool = False, **options) -> None:
        """``torch.compile`` the embeddings + encoder (static shapes); heads stay eager (they gather masked items).

        ``opaque_layer_norm`` keeps the LayerNorms whole (ATen's kernels) inside the graph: faster for
        training, slower for scoring (``model.layer_norm``).
        """
        _set_layer_norms(self, opaque_layer_norm)
        self._trunk = torch.compile(self._trunk_eager, **options)

    def compile_model(self, opaque_layer_norm: bool = False, **options) -> None:
        """``torch.compile`` the whole forward, heads and losses included, as one graph.

        Static only with exact masking (``mlm_positions`` / ``region_positions`` in the batch); with
        Bernoulli masking the heads' masked-item counts vary and every step would recompile.
        """
        _set_layer_norms(self, opaque_layer_norm)
        self._compiled_forward = torch.compile(self._forward, **options)

    def drop_compiled(self) -> None:
        """Back to the eager forward and plain LayerNorms (e.g. before evaluating batches of other shapes)."""
        self.__dict__.pop("_trunk", None)
        self.__dict__.pop("_compiled_forward", None)
        _set_layer_norms(self, False)

    def encode(self, batch: dict, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequence output [B, T+R, H] and pooled [CLS] output [B, H].

        ``rows`` ([B, K] positions, [CLS] = 0 first): the sequence output holds only those rows, [B, K, H],
        and the last layer computes no other (the layers before it compute every row: all are its keys).
        A batch may carry ``region_embeddings`` (``Embeddings.embed_regions``) instead of the region features
        and locations.
        """
        trunk = self.__dict__.get("_trunk", self._trunk_eager)
        if "region_embeddings" in batch:
            return trunk(batch["input_ids"], batch["text_mask"], None, None, batch["region_mask"], rows,
                         batch["region_embeddings"])
        return trunk(batch["input_ids"], batch["text_mask"], batch["region_features"], batch["region_locations"],
                     batch["region_mask"], rows)

    def _trunk_eager(self, input_ids, text_mask, region_features, region_locations, region_mask, rows=None,
                     region_embeddings=None):
        x = self.embeddings(input_ids, region_features, region_locations, region_embeddings)
        keep = torch.cat([text_mask, region_mask], dim=1)
        # Boolean key mask broadcast over heads and queries; always passed, so no host sync or graph break.
        # (An additive float mask measured no faster on an H200: benchmarks/RESULTS_train.md.)
        attention_mask = keep[:, None, None, :]
        last = len(self.layers) - 1
        if self.fused_norm:
            x_in = x
            for index, layer in enumerate(self.layers):
                x, x_in = layer.forward_fused(x, x_in, attention_mask, rows if index == last else None)
        else:
            for index, layer in enumerate(self.layers):
                x = layer(x, attention_mask, rows if index == last else None)
        pooled = torch.tanh(self.pooler(x[:, 0]))
        return x, pooled

    def _rows_read(self, batch: dict, weights: dict[str, float] | None) -> torch.Tensor | None:
        """The sequence rows this forward reads (``encode``'s ``rows``), or None for all of them."""
        if not self.last_layer_rows or not self.layers:
            return None
        if not weights:
            return cls_rows(batch["input_ids"])
        return slot_rows(batch, weights)

    def forward(self, batch: dict, weights: dict[str, float] | None = None,
                single_modality: dict | None = None) -> tuple[dict, torch.Tensor | None]:
        """Matching scores of every pair and, given task weights, the weighted sum of those task losses.

        ``single_modality`` (a batch of matched pairs and the [CLS]/[SEP] ids) adds the dual-encoder
        embeddings of its captions alone and images alone (inside forward, so DDP sees their gradients).
        """
        forward = self.__dict__.get("_compiled_forward", self._forward)
        return forward(batch, weights, single_modality)

    def _forward(self, batch: dict, weights: dict[str, float] | None,
                 single_modality: dict | None) -> tuple[dict, torch.Tensor | None]:
        rows = self._rows_read(batch, weights)
        sequence, pooled = self.encode(batch, rows)
        outputs = {"scores": self.heads["itm"].logits(pooled)}
        if single_modality is not None:
            outputs["text_embeddings"], outputs["image_embeddings"] = self.single_modality_embeddings(**single_modality)
        if not weights:
            return outputs, None
        if rows is not None:
            batch = {**batch, SLOTS_ONLY: True}
        losses = {name: self.heads[name].loss(sequence, pooled, batch) for name, w in weights.items() if w > 0}
        loss = sum(weights[name] * value for name, value in losses.items())
        outputs["losses"] = {k: v.detach() for k, v in losses.items()}
        return outputs, loss

    def single_modality_embeddings(self, batch: dict, cls_id: int, sep_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The dual-encoder view of the same trunk: each caption alone and each image alone, L2-normalised.

        This is what the two-stage evaluation pre-ranks with.
        """
        text = self.embed_text(batch["input_ids"], batch["text_mask"])
        image = self.embed_image(batch["region_features"], batch["region_locations"], batch["region_mask"], cls_id, sep_id)
        return text, image

    def embed_text(self, input_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Pooled [CLS] of captions with no regions, L2-normalised."""
        size, device = input_ids.shape[0], input_ids.device
        dim = self.config.feature_dim
        _, pooled = self.encode({"input_ids": input_ids, "text_mask": text_mask,
                                 "region_features": torch.zeros(size, 0, dim, device=device),
                                 "region_locations": torch.zeros(size, 0, 5, device=device),
                                 "region_mask": torch.zeros(size, 0, dtype=torch.bool, device=device)},
                                self._rows_read({"input_ids": input_ids}, None))
        return F.normalize(pooled.float(), dim=-1)

    def embed_image(self, features: torch.Tensor, locations: torch.Tensor, region_mask: torch.Tensor,
                    cls_id: int, sep_id: int) -> torch.Tensor:
        """Pooled [CLS] of ``[CLS] [SEP]`` + an image's regions (no caption), L2-normalised."""
        size, device = features.shape[0], features.device
        stub = torch.tensor([cls_id, sep_id], device=device).expand(size, 2)
        _, pooled = self.encode({"input_ids": stub, "text_mask": torch.ones(size, 2, dtype=torch.bool, device=device),
                                 "region_features": features, "region_locations": locations,
                                 "region_mask": region_mask}, self._rows_read({"input_ids": stub}, None))
        return F.normalize(pooled.float(), dim=-1)

    def score(self, batch: dict) -> torch.Tensor:
        """Image-text matching logit of every (caption, image) pair in the batch (the retrieval score).

        The batch may carry ``region_embeddings`` in place of the region features and locations (``encode``)."""
        return self.forward(batch)[0]["scores"]


def _set_layer_norms(model: nn.Module, opaque: bool) -> None:
    from model.layer_norm import make_layer_norms_opaque, make_layer_norms_plain

    (make_layer_norms_opaque if opaque else make_layer_norms_plain)(model)


def num_parameters(model: nn.Module) -> int:
    """Distinct trainable parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())


# ---------------------------------------------------------------------------------------------
# Initialisation from a Hugging Face BERT folder (bert-base-uncased layout)


def read_bert_config(folder: str) -> dict:
    """The ModelConfig fields a Hugging Face BERT ``config.json`` fixes."""
    path = os.path.join(folder, "config.json")
    with open(path, encoding="utf-8") as handle:
        try:
            hf = json.load(handle)
        except ValueError as exc:
            raise ValueError(f"{path}: not a JSON file ({exc})") from None
    missing = [key for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                               "intermediate_size") if not isinstance(hf, dict) or key not in hf]
    if missing:
        raise ValueError(f"{path}: not a BERT config (no {', '.join(missing)})")
    if hf.get("hidden_act", "gelu") != "gelu":
        logger.warning("BERT folder %s uses activation %s; ImageBERT uses exact GELU", folder, hf.get("hidden_act"))
    return {
        "vocab_size": hf["vocab_size"],
        "hidden_size": hf["hidden_size"],
        "num_layers": hf["num_hidden_layers"],
        "num_heads": hf["num_attention_heads"],
        "intermediate_size": hf["intermediate_size"],
        "max_position": hf.get("max_position_embeddings", 512),
        "type_vocab_size": hf.get("type_vocab_size", 2),
        "layer_norm_eps": hf.get("layer_norm_eps", 1e-12),
        "dropout": hf.get("hidden_dropout_prob", 0.1),
        "attention_dropout": hf.get("attention_probs_dropout_prob", 0.1),
        "pad_token_id": hf.get("pad_token_id", 0) or 0,
    }


def _read_state_dict(folder: str) -> dict[str, torch.Tensor]:
    """The folder's ``model.safetensors`` (else ``pytorch_model.bin``); a file that does not load (truncated,
    a Git LFS pointer, text) is one ``ValueError`` naming it and what is wrong, not the loader's traceback."""
    from model.weights_errors import unreadable_weights

    for name in ("model.safetensors", "pytorch_model.bin"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            break
    else:
        raise FileNotFoundError(f"{folder}: neither model.safetensors nor pytorch_model.bin")
    try:
        if name == "model.safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # SafetensorError, UnpicklingError, OSError (a cut zip): each its own way
        raise unreadable_weights(path, exc, whose="a BERT model's") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a readable weights file: holds a {type(state).__name__}, not a state dict")
    return state


# Prefixes over BERT's own names: a DistributedDataParallel wrapper's ``module.``, a training script's ``model.``
# wrapper, and the ``bert.`` of BertForPreTraining (transformers' base_model_prefix).
_BERT_PREFIXES = ("module.", "model.", "bert.")


def _bert_name(key: str) -> str:
    """A checkpoint key under BERT's own name: the prefixes removed, and the LayerNorm ``gamma``/``beta`` of the
    original Google checkpoints (bert-base-uncased's ``pytorch_model.bin`` still has them) named ``weight``/``bias``
    as transformers renames them on load (its ``legacy`` renaming, ``LayerNorm.gamma`` -> ``LayerNorm.weight``)."""
    while key.startswith(_BERT_PREFIXES):
        key = key.split(".", 1)[1]
    return key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")


def load_bert_weights(model: ImageBert, folder: str) -> list[str]:
    """Copy a Hugging Face BERT checkpoint into the text embeddings, encoder, pooler and MLM head.

    Returns the names of ImageBERT parameters that stayed freshly initialised (region embeddings,
    MOC/MRFR/ITM heads, and a pooler or MLM head the checkpoint lacks, which is warned of). A checkpoint
    lacking any of the embeddings' or the encoder's tensors is a ``ValueError`` naming them: loaded
    silently, the model trained from random weights where BERT's were asked for.
    """
    state = _read_state_dict(folder)
    source = {_bert_name(k): v for k, v in state.items()}
    mapping = {
        "embeddings.word.weight": "embeddings.word_embeddings.weight",
        "embeddings.position.weight": "embeddings.position_embeddings.weight",
        "embeddings.segment.weight": "embeddings.token_type_embeddings.weight",
        "embeddings.text_norm.weight": "embeddings.LayerNorm.weight",
        "embeddings.text_norm.bias": "embeddings.LayerNorm.bias",
        "pooler.weight": "pooler.dense.weight",
        "pooler.bias": "pooler.dense.bias",
        "heads.mlm.transform.0.weight": "cls.predictions.transform.dense.weight",
        "heads.mlm.transform.0.bias": "cls.predictions.transform.dense.bias",
        "heads.mlm.transform.2.weight": "cls.predictions.transform.LayerNorm.weight",
        "heads.mlm.transform.2.bias": "cls.predictions.transform.LayerNorm.bias",
        "heads.mlm.decoder.bias": "cls.predictions.bias",
    }
    for i in range(len(model.layers)):
        src, dst = f"encoder.layer.{i}.", f"layers.{i}."
        for part in ("weight", "bias"):
            mapping[f"{dst}attention.out.{part}"] = f"{src}attention.output.dense.{part}"
            mapping[f"{dst}attention_norm.{part}"] = f"{src}attention.output.LayerNorm.{part}"
            mapping[f"{dst}ffn_in.{part}"] = f"{src}intermediate.dense.{part}"
            mapping[f"{dst}ffn_out.{part}"] = f"{src}output.dense.{part}"
            mapping[f"{dst}ffn_norm.{part}"] = f"{src}output.LayerNorm.{part}"
            names = [f"{src}attention.self.{n}.{part}" for n in ("query", "key", "value")]
            if all(n in source for n in names):  # HF keeps q, k, v apart; ImageBERT fuses them
                source[f"{dst}attention.qkv.{part}"] = torch.cat([source[n] for n in names], 0)
                mapping[f"{dst}attention.qkv.{part}"] = f"{dst}attention.qkv.{part}"
    # The embeddings and the encoder are what BERT brings; without them the run is not BERT's. The pooler (the ITM
    # head reads it) and the MLM head are BERT's too, but a BertModel / BertForMaskedLM save lacks one of them.
    optional = ("pooler.", "heads.")
    required = [src for name, src in mapping.items() if not name.startswith(optional) and "attention.qkv" not in name]
    for i in range(len(model.layers)):
        required += [f"encoder.layer.{i}.attention.self.{n}.{part}"
                     for n in ("query", "key", "value") for part in ("weight", "bias")]
    missing = [key for key in required if key not in source]
    if missing:
        more = ", ..." if len(missing) > 3 else ""
        raise ValueError(f"{folder}: not a BERT checkpoint ImageBERT can start from: its weights lack {len(missing)} "
                         f"of BERT's {len(required)} embedding and encoder tensors ({', '.join(missing[:3])}{more}); "
                         f"its first tensor is named {next(iter(state), 'nothing')!r}")
    absent = [src for name, src in mapping.items() if name.startswith(optional) and src not in source]
    if absent:
        logger.warning("BERT at %s has no %s: ImageBERT's start fresh", folder, ", ".join(absent))
    own = model.state_dict()
    loaded = set()
    with torch.no_grad():
        for name, src_name in mapping.items():
            if src_name in source and name in own:
                if own[name].shape != source[src_name].shape:
                    raise ValueError(f"{folder}: {src_name} has shape {tuple(source[src_name].shape)}, "
                                     f"ImageBERT's {name} expects {tuple(own[name].shape)}")
                own[name].copy_(source[src_name])
                loaded.add(name)
    fresh = sorted(n for n in own if n not in loaded and n != "heads.mlm.decoder.weight")
    logger.info("initialised %d tensors from BERT at %s; %d fresh", len(loaded), folder, len(fresh))
    return fresh
