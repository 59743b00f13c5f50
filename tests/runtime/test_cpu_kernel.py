"""The bfloat16 CPU kernel: exact against float64, batch-invariant, built once, and a clean
fallback to oneDNN where it cannot be used."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from captioner.model.tiny import tiny_tokenizer_and_model
from captioner.runtime import cpu_kernel
from captioner.runtime.lm import CachedGPT2

needs_cpu = pytest.mark.skipif(
    not cpu_kernel.cpu_supported(), reason="this CPU has no AVX512-BF16 (CI's has: see below)"
)


def test_ci_machines_run_the_kernel():
    """CI's machines have AVX512-BF16: the kernel tests below must not be skipped there."""
    if os.environ.get("CI") == "true":
        assert cpu_kernel.cpu_supported()
        assert cpu_kernel.library() is not None


def reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    y = x.double() @ w.double().T
    return y if b is None else y + b.double()


@needs_cpu
@pytest.mark.parametrize(("n", "k"), [(1, 1), (15, 31), (16, 32), (17, 33), (64, 64), (130, 100)])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_float64_and_rounds_like_torch(n, k, bias):
    g = torch.Generator().manual_seed(n * 1000 + k)
    w = torch.randn(n, k, generator=g).to(torch.bfloat16)
    b = torch.randn(n, generator=g).to(torch.bfloat16) if bias else None
    x = torch.randn(13, k, generator=g).to(torch.bfloat16)
    y32 = cpu_kernel.KernelLinear(w, b, out_dtype=torch.float32)(x)
    # products of bf16 are exact in float32; only the float32 sums round
    torch.testing.assert_close(y32.double(), reference(x, w, b), rtol=1e-5, atol=1e-5 * k)
    y16 = cpu_kernel.KernelLinear(w, b)(x)
    assert y16.dtype == torch.bfloat16
    assert torch.equal(y16, y32.to(torch.bfloat16))  # round to nearest even, as torch does


@needs_cpu
def test_gelu_is_applied_to_the_float32_sums():
    g = torch.Generator().manual_seed(5)
    w = (torch.randn(100, 64, generator=g) / 4).to(torch.bfloat16)
    b = torch.randn(100, generator=g).to(torch.bfloat16)
    x = torch.randn(7, 64, generator=g).to(torch.bfloat16)
    plain = cpu_kernel.KernelLinear(w, b, out_dtype=torch.float32)(x)
    fused = cpu_kernel.KernelLinear(w, b, out_dtype=torch.float32, activation="gelu_tanh")(x)
    want = torch.nn.functional.gelu(plain.double(), approximate="tanh")
    torch.testing.assert_close(fused.double(), want, rtol=1e-6, atol=1e-6)
    assert fused.min() < -0.1 and fused.max() > 3  # both tails of GELU were exercised
    with pytest.raises(ValueError):
        cpu_kernel.KernelLinear(w, b, activation="relu")


@needs_cpu
@pytest.mark.parametrize(("pos", "d"), [(0, 64), (10, 64), (29, 64), (6, 20)])
def test_attention_step_matches_torch(pos, d):
    from captioner.runtime.lm import attend_one

    g = torch.Generator().manual_seed(pos)
    qkv = torch.randn(5, 3 * 3 * d, generator=g).to(torch.bfloat16)  # 3 heads, one position
    cache_k = torch.randn(5, 3, 40, d, generator=g).to(torch.bfloat16)  # longer than pos + 1
    cache_v = torch.randn(5, 3, 40, d, generator=g).to(torch.bfloat16)
    k, v = cache_k.clone(), cache_v.clone()
    got = cpu_kernel.attend_step(qkv, k, v, pos)
    assert got.shape == (5, 3 * d) and got.dtype == torch.bfloat16
    k2, v2 = cache_k.clone(), cache_v.clone()  # (B, T, 3C) with T = 1 gives (B, 1, C)
    assert torch.equal(cpu_kernel.attend_step(qkv.unsqueeze(1), k2, v2, pos)[:, 0], got)
    q, new_k, new_v = qkv.view(5, 1, 3, 3, d).unbind(2)  # (B, 1, H, D) each
    assert torch.equal(k[:, :, pos], new_k[:, 0]) and torch.equal(v[:, :, pos], new_v[:, 0])
    assert torch.equal(k[:, :, pos + 1 :], cache_k[:, :, pos + 1 :])  # the rest untouched
    seen = slice(0, pos + 1)
    want = attend_one(q.transpose(1, 2).float(), k[:, :, seen].float(), v[:, :, seen].float())
    want = want.transpose(1, 2).reshape(5, 3 * d)
    torch.testing.assert_close(got.float(), want, rtol=0.01, atol=0.01)  # bf16 output
    alone = []
    for i in range(5):
        k1, v1 = cache_k[i : i + 1].clone(), cache_v[i : i + 1].clone()
        alone.append(cpu_kernel.attend_step(qkv[i : i + 1], k1, v1, pos))
    assert torch.equal(got, torch.cat(alone))
    with pytest.raises(ValueError):
        cpu_kernel.attend_step(qkv, k, v, 40)  # past the cache


@needs_cpu
def test_the_prefix_in_one_call_equals_position_by_position():
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(4, 10, 3 * 2 * 64, generator=g).to(torch.bfloat16)  # 10 positions
    k, v = (torch.zeros(4, 2, 30, 64, dtype=torch.bfloat16) for _ in range(2))
    got = cpu_kernel.attend_step(qkv, k, v, 0)
    assert got.shape == (4, 10, 128)
    k1, v1 = torch.zeros_like(k), torch.zeros_like(v)
    steps = [cpu_kernel.attend_step(qkv[:, j], k1, v1, j) for j in range(10)]
    assert torch.equal(got, torch.stack(steps, dim=1))  # causal: each over its past only
    assert torch.equal(k, k1) and torch.equal(v, v1)
    assert not torch.equal(got[:, 0], got[:, 1])
    with pytest.raises(ValueError, match="outside"):
        cpu_kernel.attend_step(qkv, k, v, 21)  # 21 + 10 > 30


def attention_reference(q, k, v, heads):
    """Float64 attention with the kernel's two roundings: probabilities and output to bf16."""
    b, t, c = q.shape

    def split(z):
        return z.double().view(b, t, heads, c // heads).transpose(1, 2)

    scores = split(q) @ split(k).transpose(-1, -2) * (c // heads) ** -0.5
    probs = torch.softmax(scores, dim=-1).to(torch.bfloat16).double()
    return (probs @ split(v)).transpose(1, 2).reshape(b, t, c)


@needs_cpu
@pytest.mark.parametrize(
    ("t", "heads", "d"),
    [(1, 1, 16), (3, 2, 16), (17, 2, 48), (50, 12, 64), (33, 3, 80), (197, 1, 64)],
)
def test_attention_matches_float64(t, heads, d):
    g = torch.Generator().manual_seed(t * d)
    c = heads * d
    qkv = (torch.randn(3, t, 3 * c, generator=g) * 2).to(torch.bfloat16)
    q, k, v = qkv.split(c, dim=-1)  # slices of a fused projection: rows 3C apart
    got = cpu_kernel.attention(q, k, v, heads, d**-0.5)
    assert got.shape == (3, t, c) and got.dtype == torch.bfloat16
    want = attention_reference(q, k, v, heads)
    # float32 scores and sums, then one rounding of the output to bfloat16
    torch.testing.assert_close(got.double(), want, rtol=0.008, atol=1e-3)
    alone = [
        cpu_kernel.attention(*(z[i : i + 1] for z in (q, k, v)), heads, d**-0.5) for i in range(3)
    ]
    assert torch.equal(got, torch.cat(alone))  # each image alone
    contiguous = cpu_kernel.attention(
        q.contiguous(), k.contiguous(), v.contiguous(), heads, d**-0.5
    )
    assert torch.equal(got, contiguous)


@needs_cpu
def test_attention_rejects_what_it_cannot_compute():
    x = torch.randn(2, 5, 24).to(torch.bfloat16)
    with pytest.raises(ValueError, match="not supported"):
        cpu_kernel.attention(x, x, x, 3, 0.125)  # heads of 8
    with pytest.raises(ValueError, match="whole number"):
        cpu_kernel.attention(x, x, x, 5, 0.125)
    with pytest.raises(ValueError, match="one shape"):
        cpu_kernel.attention(x, x, x.float(), 1, 0.125)


@needs_cpu
@pytest.mark.parametrize(("m", "n", "k"), [(1, 1, 1), (3, 17, 8), (13, 1000, 64), (32, 50257, 64)])
def test_fused_argmax_is_torchs_argmax_of_the_logits(m, n, k):
    g = torch.Generator().manual_seed(n)
    w = torch.randn(n, k, generator=g).to(torch.bfloat16)
    b = torch.randn(n, generator=g).to(torch.bfloat16)
    x = torch.randn(m, k, generator=g).to(torch.bfloat16)
    lin = cpu_kernel.KernelLinear(w, b, out_dtype=torch.float32)
    got = lin.argmax(x)
    assert got.dtype == torch.long and got.shape == (m,)
    assert torch.equal(got, torch.argmax(lin(x), dim=-1))
    assert lin.argmax(x.view(1, m, k)).shape == (1, m)


@needs_cpu
def test_fused_argmax_ties_nan_and_minus_infinity_follow_torch():
    w = torch.zeros(100, 4)
    w[70] = w[90] = 1  # a tie between columns in different panels and lanes
    w[99, 0] = float("nan")  # a NaN only where x[:, 0] is NaN-making: see x below
    x = torch.tensor([[1.0, 1, 1, 0], [-1, -1, -1, 0], [0, 0, 0, 0]])
    lin = cpu_kernel.KernelLinear(w.to(torch.bfloat16), None, out_dtype=torch.float32)
    logits = lin(x.to(torch.bfloat16))
    got = lin.argmax(x.to(torch.bfloat16))
    assert got.tolist() == torch.argmax(logits, dim=-1).tolist() == [99, 99, 99]  # NaN wins
    w[99, 0] = 0
    lin = cpu_kernel.KernelLinear(w.to(torch.bfloat16), None, out_dtype=torch.float32)
    assert lin.argmax(x.to(torch.bfloat16)).tolist() == [70, 0, 0]  # first of equals
    low = torch.full((100, 4), float("-inf")).to(torch.bfloat16)
    lin = cpu_kernel.KernelLinear(low, None, out_dtype=torch.float32)
    assert lin.argmax(torch.ones(2, 4).to(torch.bfloat16)).tolist() == [0, 0]  # all -inf


@needs_cpu
def test_fused_argmax_is_the_first_of_equals_whichever_thread_found_them():
    """Threads take chunks of panels as they come: ties and NaNs across panels (and so across
    threads, in any order) still resolve to the first column, as torch does."""
    w = torch.zeros(2000, 4)
    w[37::97] = 1  # equal logits in many panels: 37, 134, ...
    x = torch.tensor([[1.0, 1, 1, 1]] * 3).to(torch.bfloat16)
    lin = cpu_kernel.KernelLinear(w.to(torch.bfloat16), None, out_dtype=torch.float32)
    w[500::61, 0] = float("nan")  # NaNs in many panels: the first one wins
    nan = cpu_kernel.KernelLinear(w.to(torch.bfloat16), None, out_dtype=torch.float32)
    assert torch.argmax(nan(x), dim=-1).tolist() == [500] * 3
    for _ in range(50):
        assert lin.argmax(x).tolist() == [37] * 3
        assert nan.argmax(x).tolist() == [500] * 3


@needs_cpu
@pytest.mark.parametrize("shape", [(1, 768), (32, 1, 768), (4, 50, 768), (3, 33)])
def test_add_layer_norm_matches_torch(shape):
    g = torch.Generator().manual_seed(shape[-1])
    x, r = ((torch.randn(*shape, generator=g) * 3).to(torch.bfloat16) for _ in range(2))
    w, b = (torch.randn(shape[-1], generator=g).to(torch.bfloat16) for _ in range(2))
    summed = x + r
    want = torch.nn.functional.layer_norm(summed, (shape[-1],), w, b, 1e-5)
    inplace = x.clone()
    got = cpu_kernel.add_layer_norm(inplace, r, w, b, 1e-5)
    assert torch.equal(inplace, summed)  # x + r, rounded as torch rounds
    torch.testing.assert_close(got, want, rtol=0.008, atol=0.02)  # one bf16 rounding
    assert (got == want).float().mean() > 0.999  # float32 statistics in another order
    alone = cpu_kernel.add_layer_norm(summed.clone(), None, w, b, 1e-5)  # no residual
    assert torch.equal(alone, got)
    rows = summed.reshape(-1, shape[-1])
    one = cpu_kernel.add_layer_norm(rows[-1:].clone(), None, w, b, 1e-5)
    assert torch.equal(one, got.reshape(-1, shape[-1])[-1:])  # each row alone
    with pytest.raises(ValueError):
        cpu_kernel.add_layer_norm(x.float(), None, w, b, 1e-5)


@needs_cpu
def test_quick_gelu_in_place_matches_torch():
    g = torch.Generator().manual_seed(1)
    h = (torch.randn(3, 1001, generator=g) * 4).to(torch.bfloat16)  # a partial last vector
    want = h.double() * torch.sigmoid(1.702 * h.double())
    got = cpu_kernel.quick_gelu_(h.clone())
    torch.testing.assert_close(got.double(), want, rtol=0.008, atol=1e-3)  # one bf16 rounding
    assert (got.double() == want.to(torch.bfloat16).double()).float().mean() > 0.99
    with pytest.raises(ValueError):
        cpu_kernel.quick_gelu_(h.float())


@needs_cpu
def test_every_row_is_computed_alone():
    """Batch invariance: a row's result does not depend on the rows beside it."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(200, 96, generator=g).to(torch.bfloat16)
    b = torch.randn(200, generator=g).to(torch.bfloat16)
    lin = cpu_kernel.KernelLinear(w, b)
    x = torch.randn(40, 96, generator=g).to(torch.bfloat16)
    full = lin(x)
    for m in (1, 2, 5, 6, 7, 13, 39):
        assert torch.equal(lin(x[:m]), full[:m])
    assert torch.equal(torch.cat([lin(x[i : i + 1]) for i in range(40)]), full)
    strided = torch.randn(40, 2, 96, generator=g).to(torch.bfloat16)[:, 1]  # rows 192 apart
    assert torch.equal(lin(strided), lin(strided.contiguous()))
    batched = lin(x.view(4, 10, 96))  # leading dimensions are kept
    assert batched.shape == (4, 10, 200) and torch.equal(batched.view(40, 200), full)


@needs_cpu
def test_gpt2_step_logits_do_not_depend_on_the_batch():
    """A decoding step at GPT-2's real widths, attention over the cache included."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=768, n_layer=1, n_head=12, vocab_size=512, n_positions=16)
    cfg.bos_token_id = cfg.eos_token_id = 0
    lm = CachedGPT2(GPT2LMHeadModel(cfg).to(torch.bfloat16).eval(), kernel=True)
    prefix = torch.randn(6, 4, 768, dtype=torch.bfloat16)
    token = torch.randn(6, 1, 768, dtype=torch.bfloat16)

    def step_logits(rows: slice) -> torch.Tensor:
        cache = lm.new_cache(rows.stop - rows.start, 8)
        lm.forward(prefix[rows], cache)
        return lm.raw_logits(lm.forward(token[rows], cache))

    alone = torch.cat([step_logits(slice(i, i + 1)) for i in range(6)])
    assert torch.equal(step_logits(slice(0, 6)), alone)


def kernels_one_by_one(lm: CachedGPT2, x: torch.Tensor, cache, pos: int):
    """A forward pass as separate kernel calls: what ``KernelGPT2`` must equal bit for bit."""
    x = x.clone()
    normed = cpu_kernel.add_layer_norm(x, None, *lm.blocks[0][0], lm.eps)
    for i, (_, attn, proj, ln2, fc, fc_proj) in enumerate(lm.blocks):
        y = cpu_kernel.attend_step(attn(normed), cache.k[i], cache.v[i], pos)
        normed = cpu_kernel.add_layer_norm(x, proj(y), *ln2, lm.eps)
        after = lm.blocks[i + 1][0] if i + 1 < len(lm.blocks) else lm.ln_f
        normed = cpu_kernel.add_layer_norm(x, fc_proj(fc(normed)), *after, lm.eps)
    return x, normed


@needs_cpu
def test_a_forward_pass_in_one_call_equals_the_kernels_one_by_one():
    _, model = tiny_tokenizer_and_model("mlp", seed=2)
    lm = CachedGPT2(model.lm.to(torch.bfloat16).eval(), kernel=True)
    g = torch.Generator().manual_seed(4)
    prefix = torch.randn(3, 10, lm.wte.shape[1], generator=g).to(torch.bfloat16)
    fused, apart = lm.new_cache(3, 14, zeros=True), lm.new_cache(3, 14, zeros=True)
    hidden = lm.forward(prefix, fused)  # the prefix: ten positions in one call
    _, want = kernels_one_by_one(lm, prefix + lm.wpe[:10], apart, 0)
    assert fused.length == 10 and torch.equal(hidden, want[:, -1])
    for pos in range(10, 14):  # decoding steps
        ids = torch.randint(0, lm.vocab_size, (3,), generator=g)
        hidden = lm.forward(lm.embed_tokens(ids).unsqueeze(1), fused)
        _, want = kernels_one_by_one(
            lm, lm.embed_tokens(ids).unsqueeze(1) + lm.wpe[pos], apart, pos
        )
        assert torch.equal(hidden, want[:, -1])
    assert torch.equal(fused.k, apart.k) and torch.equal(fused.v, apart.v)
    assert fused.k[:, :, :, 13].abs().sum() > 0  # every position was written
    x0 = prefix + lm.wpe[:10]
    residual = x0.clone()
    lm.fused(residual, lm.new_cache(3, 14).k, lm.new_cache(3, 14).v, 0)
    assert torch.equal(residual, kernels_one_by_one(lm, x0, lm.new_cache(3, 14), 0)[0])


@needs_cpu
def test_a_forward_pass_in_one_call_rejects_what_does_not_fit():
    _, model = tiny_tokenizer_and_model("mlp", seed=2)
    lm = CachedGPT2(model.lm.to(torch.bfloat16).eval(), kernel=True)
    c = lm.wte.shape[1]
    cache = lm.new_cache(2, 12)
    x = torch.randn(2, 1, c).to(torch.bfloat16)
    with pytest.raises(ValueError, match="outside"):
        lm.fused(x, cache.k, cache.v, 12)  # past the cache
    with pytest.raises(ValueError, match="do not fit"):
        lm.fused(torch.randn(3, 1, c).to(torch.bfloat16), cache.k, cache.v, 0)  # 3 rows, 2
    with pytest.raises(ValueError, match="contiguous bfloat16"):
        lm.fused(x.float(), cache.k, cache.v, 0)
    with pytest.raises(ValueError, match="contiguous bfloat16"):
        lm.fused(
            torch.randn(2, c, 2).to(torch.bfloat16)[..., 0:1].transpose(1, 2), cache.k, cache.v, 0
        )
    blocks = list(lm.blocks)
    ln1, attn, proj, ln2, fc, fc_proj = blocks[0]
    blocks[0] = (ln1, attn, proj, ln2, fc_proj, fc)  # the MLP's layers swapped
    with pytest.raises(ValueError, match="shapes"):
        cpu_kernel.KernelGPT2(blocks, lm.ln_f, lm.n_head, lm.eps)
    blocks[0] = (ln1, attn, proj, ln2, proj, fc_proj)  # no GELU
    with pytest.raises(ValueError):
        cpu_kernel.KernelGPT2(blocks, lm.ln_f, lm.n_head, lm.eps)
    blocks[0] = ((ln1[0].float(), ln1[1]), attn, proj, ln2, fc, fc_proj)
    with pytest.raises(ValueError, match="bfloat16"):
        cpu_kernel.KernelGPT2(blocks, lm.ln_f, lm.n_head, lm.eps)


@needs_cpu
def test_full_size_mapper_does_not_depend_on_the_batch():
    """ClipCap's MLP mapper (512 -> 3840 -> 7680): plain and oneDNN-packed layers round a lone
    row differently from a batch of 8 (this test fails with ``kernel=False``), which made
    bfloat16 captions change with their batch-mates."""
    from captioner.model.modeling import MLPMapper
    from captioner.runtime.packed import pack_linears

    torch.manual_seed(0)
    mapper = MLPMapper(512, 768, 10).to(torch.bfloat16).eval()
    assert pack_linears(mapper, kernel=True) == 2
    x = torch.randn(8, 512, dtype=torch.bfloat16)
    with torch.inference_mode():
        alone = torch.cat([mapper(x[i : i + 1]) for i in range(8)])
        assert torch.equal(mapper(x), alone)


@needs_cpu
def test_rejects_what_it_cannot_compute():
    w = torch.randn(8, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError):
        cpu_kernel.KernelLinear(w.float(), None)
    with pytest.raises(ValueError):
        cpu_kernel.KernelLinear(w, None, out_dtype=torch.float16)
    lin = cpu_kernel.KernelLinear(w, None)
    with pytest.raises(ValueError):
        lin(torch.randn(2, 16))  # float32 input
    with pytest.raises(ValueError):
        lin(torch.randn(2, 15, dtype=torch.bfloat16))


@needs_cpu
def test_cached_gpt2_on_the_kernel_matches_onednn():
    _, model = tiny_tokenizer_and_model("mlp", seed=1)
    model = model.to(torch.bfloat16).eval()
    prefix = model.prefix(torch.randn(3, model.config.clip_dim, dtype=torch.bfloat16))
    onednn, kern = CachedGPT2(model.lm, kernel=False), CachedGPT2(model.lm, kernel=True)
    a = onednn.logits(onednn.forward(prefix, onednn.new_cache(3, 8)))
    b = kern.logits(kern.forward(prefix, kern.new_cache(3, 8)))
    assert kern.raw_logits(kern.forward(prefix, kern.new_cache(3, 8))).dtype == torch.float32
    # the same bf16 arithmetic up to summation order and the final logits' rounding
    torch.testing.assert_close(b, a, rtol=0.02, atol=0.05)


@needs_cpu
@pytest.mark.parametrize("decoding", ["greedy", "beam"])
def test_bf16_captions_do_not_depend_on_the_batch(tiny_dir, tiny_transformer_dir, decoding):
    from captioner import Captioner

    for model_dir in (tiny_dir, tiny_transformer_dir):
        cap = Captioner.from_pretrained(str(model_dir), device="cpu", dtype="bfloat16")
        assert cap.kernel
        pixels = torch.randn(6, 3, *[cap.config.image_size] * 2, generator=torch.Generator())
        settings = cap.settings(method=decoding, max_tokens=12)
        together = [r.raw for r in cap.caption_pixels(pixels, settings)]
        alone = [cap.caption_pixels(pixels[i : i + 1], settings)[0].raw for i in range(6)]
        assert together == alone


@needs_cpu
def test_built_once_per_source(tmp_path, monkeypatch):
    first = cpu_kernel.build(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert cpu_kernel.build(tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary files left
    first.chmod(0o666)  # someone else could have replaced it: never load it
    with pytest.raises(RuntimeError, match="writable by others"):
        cpu_kernel.build(tmp_path)


def test_compiler_failure_falls_back_to_onednn(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("ALTCAP_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    monkeypatch.setattr(cpu_kernel, "cpu_supported", lambda: True)
    cpu_kernel.library.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="captioner.runtime.cpu_kernel"):
            assert cpu_kernel.library() is None
        assert "oneDNN instead" in caplog.text and "false failed" in caplog.text
        assert not cpu_kernel.available(torch.device("cpu"), torch.bfloat16)
        assert not list((tmp_path / "kernels").glob("*.so"))
        _, model = tiny_tokenizer_and_model("mlp", seed=1)
        lm = CachedGPT2(model.to(torch.bfloat16).lm)
        assert not lm.kernel  # and it still decodes
        hidden = lm.forward(torch.randn(1, 2, model.config.gpt_dim), lm.new_cache(1, 4))
        assert lm.logits(hidden).shape == (1, model.config.text_config["vocab_size"])
    finally:
        cpu_kernel.library.cache_clear()


@pytest.mark.parametrize("value", ["off", "0"])
def test_switched_off(monkeypatch, value):
    monkeypatch.setenv(cpu_kernel.ENV, value)
    cpu_kernel.library.cache_clear()
    try:
        assert cpu_kernel.library() is None
    finally:
        cpu_kernel.library.cache_clear()


def test_only_for_bfloat16_on_the_cpu():
    assert not cpu_kernel.available(torch.device("cpu"), torch.float32)
    assert not cpu_kernel.available(torch.device("meta"), torch.bfloat16)
