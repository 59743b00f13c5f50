"""The lean CLIP forward (vision.py) against the vision tower's own."""

from __future__ import annotations

import pytest
import torch

from captioner.model.tiny import tiny_tokenizer_and_model
from captioner.runtime import cpu_kernel
from captioner.runtime.vision import LeanVision


@pytest.mark.parametrize(
    ("dtype", "kernel"),
    [
        (torch.float32, False),
        (torch.bfloat16, False),
        pytest.param(
            torch.bfloat16,
            True,
            marks=pytest.mark.skipif(
                not cpu_kernel.cpu_supported(), reason="the kernel needs AVX512-BF16"
            ),
        ),
    ],
)
def test_matches_the_modules_own_forward(dtype, kernel) -> None:
    _, model = tiny_tokenizer_and_model("mlp", seed=3)
    model = model.to(dtype).eval()
    size = model.config.image_size
    pixels = torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(0)).to(dtype)
    want = model.encode_images(pixels).float()
    got = LeanVision(model.vision, kernel=kernel)(pixels).float()
    assert got.shape == want.shape
    tol = 1e-5 if dtype == torch.float32 else 0.05  # bf16: rounding in another order
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    if dtype == torch.bfloat16:
        cos = torch.nn.functional.cosine_similarity(got, want)
        assert cos.min() > 0.999


def test_an_image_does_not_depend_on_its_batch() -> None:
    _, model = tiny_tokenizer_and_model("mlp", seed=3)
    model = model.to(torch.bfloat16).eval()
    lean = LeanVision(
        model.vision, kernel=cpu_kernel.available(torch.device("cpu"), torch.bfloat16)
    )
    size = model.config.image_size
    pixels = torch.randn(6, 3, size, size).to(torch.bfloat16)
    alone = torch.cat([lean(pixels[i : i + 1]) for i in range(6)])
    assert torch.equal(lean(pixels), alone)


def test_other_clip_variants_keep_their_own_forward() -> None:
    from captioner import Captioner

    tokenizer, model = tiny_tokenizer_and_model("mlp", seed=3)
    model.vision.config.hidden_act = "gelu"  # not CLIP's QuickGELU
    for layer in model.vision.vision_model.encoder.layers:
        layer.mlp.activation_fn = torch.nn.GELU()
    with pytest.raises(ValueError, match="activation"):
        LeanVision(model.vision)
    size = model.config.image_size
    pixels = torch.randn(2, 3, size, size)
    want = model.encode_images(pixels)
    cap = Captioner(model, tokenizer, device="cpu")
    assert not isinstance(cap._encode, LeanVision)  # the module's own forward, packed
    torch.testing.assert_close(cap.embed(pixels), want, rtol=1e-5, atol=1e-5)
