"""Int8 linear layers (runtime/int8.py) and the captioner's int8 text tower."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from captioner.model.scoring import clip_token_ids
from captioner.model.tiny import tiny_tokenizer_and_model
from captioner.pipeline import Captioner
from captioner.runtime import int8
from captioner.runtime.text import PROBE_TEXTS, LeanText

needs_int8 = pytest.mark.skipif(
    not int8.available(torch.device("cpu")), reason="this torch has no CPU int8 product"
)


@needs_int8
@pytest.mark.parametrize("bias", [True, False])
def test_int8_linear_is_close_to_the_float_one(bias: bool) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(96, 40, bias=bias)
    x = torch.randn(3, 7, 96)
    want = linear(x).detach()
    got = int8.Int8Linear(linear.weight, linear.bias)(x)
    assert got.shape == want.shape and got.dtype == torch.float32
    err = (got - want).norm() / want.norm()
    assert err < 0.01  # 8 bits: ~0.5% of the output's size
    assert err > 0  # and it really is quantized (the float product would be exact)


@needs_int8
def test_rows_do_not_depend_on_the_rest_of_the_batch() -> None:
    """One scale per row and exact integer sums: a row's output is the same alone or among
    rows a thousand times larger (a per-tensor scale would round it to nothing)."""
    torch.manual_seed(1)
    linear = nn.Linear(64, 32)
    q = int8.Int8Linear(linear.weight, linear.bias)
    row = torch.randn(1, 64)
    batch = torch.cat((row, 1000 * torch.randn(4, 64)))
    torch.testing.assert_close(q(batch)[:1], q(row), rtol=0, atol=0)
    torch.testing.assert_close(q(row), linear(row).detach(), rtol=0.02, atol=0.02)


@needs_int8
def test_a_zero_row_gives_the_bias() -> None:
    linear = nn.Linear(16, 8)
    got = int8.Int8Linear(linear.weight, linear.bias)(torch.zeros(2, 16))
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, linear.bias.detach().expand(2, 8))


@needs_int8
def test_quantized_text_tower_agrees_with_the_exact_one() -> None:
    tok, model = tiny_tokenizer_and_model("mlp", seed=1)
    text = model.clip_text.eval()
    ids, _ = clip_token_ids(tok, PROBE_TEXTS, text.config.max_position_embeddings)
    exact = LeanText(text)(ids)
    linears = sum(isinstance(m, nn.Linear) for m in text.modules())
    assert int8.quantize_linears(text) == linears
    assert not any(isinstance(m, nn.Linear) for m in text.modules())
    assert int8.agreement(exact, LeanText(text)(ids)) >= int8.MIN_AGREEMENT


def test_off_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(int8.ENV, "off")
    assert not int8.available(torch.device("cpu"))
    assert not int8.available(torch.device("meta"))


@needs_int8
def test_the_captioner_scores_with_int8_on_the_cpu(tiny_dir, monkeypatch) -> None:
    """The default CPU captioner runs the text tower in int8; its scores stay within 1e-3
    of the exact tower's (ALTCAP_TEXT_INT8=off)."""
    cap = Captioner.from_pretrained(str(tiny_dir), device="cpu")
    assert cap.text_precision == "int8"
    texts = ["a red circle.", "an orange star on a white background.", "SALE 50% OFF"]
    got = cap.embed_texts(texts)
    monkeypatch.setenv(int8.ENV, "off")
    exact = Captioner.from_pretrained(str(tiny_dir), device="cpu")
    assert exact.text_precision == "float32"
    assert int8.agreement(exact.embed_texts(texts), got) > 0.999
    alone = cap.embed_texts(texts[:1])  # another batch, another padded width
    torch.testing.assert_close(alone[0], got[0], rtol=1e-5, atol=1e-5)


@needs_int8
def test_a_model_int8_would_change_keeps_its_exact_tower(tiny_dir, monkeypatch, caplog) -> None:
    monkeypatch.setattr(int8, "MIN_AGREEMENT", 1.01)  # no model can meet it
    with caplog.at_level(logging.WARNING, logger="captioner.pipeline"):
        cap = Captioner.from_pretrained(str(tiny_dir), device="cpu", dtype="bfloat16")
    assert cap.text_precision == "bfloat16"
    assert "stays in bfloat16" in caplog.text
    assert cap.embed_texts(["a red circle."]).shape == (1, cap.config.clip_dim)


@needs_int8
def test_side_by_side_layers_give_the_parts_outputs() -> None:
    torch.manual_seed(2)
    parts = [nn.Linear(32, 16), nn.Linear(32, 8, bias=False), nn.Linear(32, 24)]
    quantized = [int8.Int8Linear(p.weight, p.bias) for p in parts]
    x = torch.randn(5, 32)
    fused = int8.Int8Linear.concat(quantized)
    torch.testing.assert_close(fused(x), torch.cat([q(x) for q in quantized], dim=-1))
    with pytest.raises(ValueError, match="input size"):
        int8.Int8Linear.concat([quantized[0], int8.Int8Linear(torch.ones(4, 9), None)])
