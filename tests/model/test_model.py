"""The mapping networks and the cached GPT-2 forward against independent formulations."""

from __future__ import annotations

import pytest
import torch

from captioner.config import ClipCapConfig
from captioner.model.modeling import MLPMapper, TransformerMapper
from captioner.model.tiny import tiny_tokenizer_and_model
from captioner.runtime.lm import CachedGPT2


def test_mlp_mapper_shapes_and_keys():
    m = MLPMapper(clip_dim=12, gpt_dim=8, prefix_length=5)
    assert m.model[0].weight.shape == (20, 12)  # (gpt_dim * prefix / 2, clip_dim)
    assert isinstance(m.model[1], torch.nn.Tanh)
    assert m.model[2].weight.shape == (40, 20)
    assert set(m.state_dict()) == {
        "model.0.weight",
        "model.0.bias",
        "model.2.weight",
        "model.2.bias",
    }
    x = torch.randn(3, 12)
    want = m.model[2](torch.tanh(m.model[0](x))).view(3, 5, 8)
    torch.testing.assert_close(m(x), want)


def _einsum_attention(attn, x):
    """The reference mapper's attention, written with einsum as the ClipCap code does."""
    b, n, c = x.shape
    h = attn.num_heads
    q = attn.to_queries(x).reshape(b, n, h, c // h)
    kv = attn.to_keys_values(x).reshape(b, n, 2, h, c // h)
    k, v = kv[:, :, 0], kv[:, :, 1]
    a = torch.einsum("bnhd,bmhd->bnmh", q, k) * (c // h) ** -0.5
    a = a.softmax(dim=2)
    return attn.project(torch.einsum("bnmh,bmhd->bnhd", a, v).reshape(b, n, c))


def test_transformer_mapper_matches_reference_formulation():
    torch.manual_seed(0)
    m = TransformerMapper(clip_dim=12, gpt_dim=16, prefix_length=3, clip_length=2, num_layers=2)
    layer = m.transformer.layers[0]
    assert layer.attn.to_queries.bias is None and layer.attn.to_keys_values.bias is None
    assert layer.attn.project.bias is not None
    assert layer.mlp.fc1.out_features == 32  # MLP ratio 2
    x = torch.randn(4, 12)
    h = torch.cat((m.linear(x).view(4, 2, 16), m.prefix_const.expand(4, 3, 16)), dim=1)
    for lay in m.transformer.layers:
        h = h + _einsum_attention(lay.attn, lay.norm1(h))
        h = h + lay.mlp.fc2(torch.relu(lay.mlp.fc1(lay.norm2(h))))
    torch.testing.assert_close(m(x), h[:, 2:])
    assert m(x).shape == (4, 3, 16)


def test_normalize_prefix_changes_only_the_scale():
    _tok, model = tiny_tokenizer_and_model("mlp")
    x = torch.randn(2, model.config.clip_dim)
    a = model.prefix(x * 7.0)
    model.config.normalize_prefix = True
    b = model.prefix(x * 7.0)
    c = model.prefix(x)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(b, c)  # scale invariant once normalised


@pytest.mark.parametrize("mapping", ["mlp", "transformer"])
def test_cached_forward_matches_transformers(mapping):
    _, model = tiny_tokenizer_and_model(mapping, seed=3)
    model = model.double().eval()
    lm = CachedGPT2(model.lm)
    prefix = model.prefix(torch.randn(3, model.config.clip_dim, dtype=torch.float64))
    ids = torch.randint(0, model.lm.config.vocab_size, (3, 6))
    cache = lm.new_cache(3, prefix.shape[1] + 6)
    hidden = lm.forward(prefix, cache)
    seq = prefix
    for step in range(6):  # every step must equal a full re-run of the whole sequence
        want = model.lm(inputs_embeds=seq).logits[:, -1]
        torch.testing.assert_close(lm.logits(hidden), want.float(), rtol=1e-5, atol=1e-5)
        emb = lm.embed_tokens(ids[:, step]).unsqueeze(1)
        hidden = lm.forward(emb, cache)
        seq = torch.cat((seq, emb), dim=1)
    assert cache.length == prefix.shape[1] + 6


def test_cache_select_reorders_rows():
    _, model = tiny_tokenizer_and_model("mlp")
    lm = CachedGPT2(model.lm)
    prefix = model.prefix(torch.randn(3, model.config.clip_dim))
    cache = lm.new_cache(3, 10)
    lm.forward(prefix, cache)
    sel = cache.select(torch.tensor([2, 0, 0]))
    n = cache.length
    torch.testing.assert_close(sel.k[:, 0, :, :n], cache.k[:, 2, :, :n])
    torch.testing.assert_close(sel.v[:, 2, :, :n], cache.v[:, 0, :, :n])
    assert sel.length == n and sel.batch_size == 3


def test_config_round_trip_and_validation():
    cfg = ClipCapConfig(mapping_type="transformer", prefix_length=7, normalize_prefix=True)
    again = ClipCapConfig.from_dict(cfg.to_dict())
    assert again == cfg
    with pytest.raises(Exception) as e:
        ClipCapConfig.from_dict({**cfg.to_dict(), "mapping_type": "lstm"})
    assert getattr(e.value, "code", "") == "invalid_settings"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_linears_match_plain_ones(dtype):
    from captioner.runtime.packed import can_pack, pack_linears

    if not can_pack(torch.device("cpu"), dtype):
        pytest.fail("oneDNN weight packing is unavailable in this torch build")
    _, model = tiny_tokenizer_and_model("mlp", seed=1)
    model = model.to(dtype).eval()
    plain = CachedGPT2(model.lm, pack=False, kernel=False)
    packed = CachedGPT2(model.lm, pack=True, kernel=False)
    prefix = model.prefix(torch.randn(3, model.config.clip_dim, dtype=dtype))
    a = plain.logits(plain.forward(prefix, plain.new_cache(3, 8)))
    b = packed.logits(packed.forward(prefix, packed.new_cache(3, 8)))
    tol = 0 if dtype == torch.bfloat16 else 1e-5  # bf16 runs the very same oneDNN kernel
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    pixels = torch.randn(2, 3, 32, 32, dtype=dtype)
    want = model.encode_images(pixels)
    assert pack_linears(model.vision) == 6 * 2 + 1  # q, k, v, out, fc1, fc2 per layer + proj
    torch.testing.assert_close(model.encode_images(pixels), want, rtol=tol, atol=tol)
