"""ClipCap: CLIP image embedding -> mapping network -> GPT-2 prefix.

This module only assembles parts that are handed to it (or built from configs with random
weights); it never downloads anything. Loading and saving live in ``checkpoints.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerBase,
)

from captioner.config import ClipCapConfig


class MLPMapper(nn.Module):
    """The paper's MLP: clip_dim -> gpt_dim*prefix_length/2 -> tanh -> gpt_dim*prefix_length."""

    def __init__(self, clip_dim: int, gpt_dim: int, prefix_length: int) -> None:
        super().__init__()
        self.prefix_length = prefix_length
        self.gpt_dim = gpt_dim
        hidden = (gpt_dim * prefix_length) // 2
        # indices 0 and 2 match the reference checkpoint keys clip_project.model.{0,2}
        self.model = nn.Sequential(
            nn.Linear(clip_dim, hidden), nn.Tanh(), nn.Linear(hidden, gpt_dim * prefix_length)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).view(-1, self.prefix_length, self.gpt_dim)  # (B, P, C)


class MapperAttention(nn.Module):
    """Multi-head self-attention as in the reference mapper (no bias on queries and keys/values)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.to_queries = nn.Linear(dim, dim, bias=False)
        self.to_keys_values = nn.Linear(dim, 2 * dim, bias=False)
        self.project = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = self.num_heads
        q = self.to_queries(x).view(b, n, h, c // h).transpose(1, 2)  # (B, H, N, D)
        kv = self.to_keys_values(x).view(b, n, 2, h, c // h)
        k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)  # (B, H, N, D)
        out = F.scaled_dot_product_attention(q, k, v)  # no mask: every position sees every other
        return self.project(out.transpose(1, 2).reshape(b, n, c))


class MapperMLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


class MapperLayer(nn.Module):
    """Pre-norm transformer layer: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MapperAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MapperMLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MapperTransformer(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_layers: int, mlp_ratio: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            MapperLayer(dim, num_heads, mlp_ratio) for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class TransformerMapper(nn.Module):
    """The paper's transformer mapper (used with a frozen GPT-2).

    The CLIP vector is projected to ``clip_length`` tokens, ``prefix_length`` learned constants
    are appended, and the transformer's outputs at the constants' positions are the prefix.
    """

    def __init__(
        self,
        clip_dim: int,
        gpt_dim: int,
        prefix_length: int,
        clip_length: int,
        num_layers: int = 8,
        num_heads: int = 8,
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        self.clip_length = clip_length
        self.linear = nn.Linear(clip_dim, clip_length * gpt_dim)
        self.prefix_const = nn.Parameter(torch.randn(prefix_length, gpt_dim))
        self.transformer = MapperTransformer(gpt_dim, num_heads, num_layers, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        x = self.linear(x).view(b, self.clip_length, -1)  # (B, clip_length, C)
        const = self.prefix_const.unsqueeze(0).expand(b, *self.prefix_const.shape)
        out = self.transformer(torch.cat((x, const), dim=1))
        return out[:, self.clip_length :]  # (B, P, C)


def build_mapper(config: ClipCapConfig) -> nn.Module:
    if config.mapping_type == "mlp":
        return MLPMapper(config.clip_dim, config.gpt_dim, config.prefix_length)
    return TransformerMapper(
        config.clip_dim,
        config.gpt_dim,
        config.prefix_length,
        config.clip_length,
        config.num_layers,
        config.num_heads,
        config.mlp_ratio,
    )


class ClipCapModel(nn.Module):
    """CLIP vision tower + mapping network + GPT-2, with the prefix entering via inputs_embeds.

    Optionally CLIP's text tower too (``clip_text``, from the same CLIP model as the vision
    tower, with its tokenizer in ``clip_tokenizer``): it embeds texts into the space of the
    image embeddings, so that a caption, a candidate or an author's alt can be scored
    against the image. It never takes part in writing captions.
    """

    def __init__(
        self,
        config: ClipCapConfig,
        vision: CLIPVisionModelWithProjection,
        mapper: nn.Module,
        lm: GPT2LMHeadModel,
        clip_text: CLIPTextModelWithProjection | None = None,
        clip_tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> None:
        super().__init__()
        if (clip_text is None) != (not config.has_text_tower):
            raise ValueError("config.clip_text_config and clip_text must come together")
        self.config = config
        self.vision = vision
        self.mapper = mapper
        self.lm = lm
        self.clip_text = clip_text  # state dict prefix "clip_text."; None: captions only
        self.clip_tokenizer = clip_tokenizer  # not a module: saved as files, not tensors
        self.vision.requires_grad_(False)  # the image encoder is always frozen
        if clip_text is not None:
            clip_text.requires_grad_(False)  # and so is the text tower (CLIP trains them)

    @classmethod
    def from_config(cls, config: ClipCapConfig) -> ClipCapModel:
        """A model with random weights, built from the configs alone (no download)."""
        config.validate()
        vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**config.vision_config))
        lm = GPT2LMHeadModel(GPT2Config(**config.text_config))
        mapper = build_mapper(config)
        clip_text = None  # drawn last: a seed gives the other parts the same weights either way
        if config.has_text_tower:
            clip_text = CLIPTextModelWithProjection(CLIPTextConfig(**config.clip_text_config))
        return cls(config, vision, mapper, lm, clip_text)

    @property
    def has_text_tower(self) -> bool:
        return self.clip_text is not None and self.clip_tokenizer is not None

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) pixels -> (B, clip_dim) CLIP image embeddings (OpenAI ``encode_image``)."""
        return self.vision(pixel_values=pixel_values).image_embeds

    @torch.no_grad()
    def encode_texts(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(T, L) CLIP token ids -> (T, clip_dim) CLIP text embeddings (OpenAI ``encode_text``).

        Each row must hold the tokenizer's end-of-text token: CLIP pools there (see
        ``scoring.clip_token_ids``)."""
        if self.clip_text is None:
            raise ValueError("this model has no CLIP text tower")
        out = self.clip_text(input_ids=input_ids, attention_mask=attention_mask)
        return out.text_embeds

    def prefix(self, clip_embeds: torch.Tensor) -> torch.Tensor:
        """(B, clip_dim) -> (B, prefix_length, gpt_dim) GPT-2 input embeddings."""
        if self.config.normalize_prefix:
            clip_embeds = clip_embeds / clip_embeds.norm(p=2, dim=-1, keepdim=True)
        return self.mapper(clip_embeds.to(self.mapper_dtype))

    @property
    def mapper_dtype(self) -> torch.dtype:
        # an inference copy whose linear layers are packed (packed.py) may have no parameters
        first = next(self.mapper.parameters(), None)
        return self.lm.dtype if first is None else first.dtype

    def forward(
        self,
        clip_embeds: torch.Tensor,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ):
        """Training forward: prefix + caption tokens through GPT-2.

        ``labels`` cover the caption tokens only, -100 where ignored; the prefix positions are
        prepended as -100 here so the loss never scores them.
        """
        prefix = self.prefix(clip_embeds)  # (B, P, C)
        tok = self.lm.transformer.wte(input_ids)  # (B, T, C)
        embeds = torch.cat((prefix, tok), dim=1)
        if attention_mask is not None:
            ones = attention_mask.new_ones(attention_mask.shape[0], prefix.shape[1])
            attention_mask = torch.cat((ones, attention_mask), dim=1)
        if labels is not None:
            ignore = labels.new_full((labels.shape[0], prefix.shape[1]), -100)
            labels = torch.cat((ignore, labels), dim=1)
        return self.lm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels)
