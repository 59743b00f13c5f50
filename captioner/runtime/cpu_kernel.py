"""AltCap's CPU kernels for bfloat16 on AVX512-BF16 CPUs, built on first use.

GPT-2 decoding on a CPU streams every weight matrix from memory at each step; oneDNN's
kernels reach about half the memory bandwidth on those shapes (a few rows against a large
matrix), so ``kernels/linear_bf16.c`` does the linear layers instead: ~1.9x faster for one
row, ~1.1x for 32, with GPT-2's GELU fused in, and greedy decoding's argmax fused into the
vocabulary projection (the logits are never written out). ``attend_step.c`` stores new keys
and values and attends over the cache (a step, or the whole prefix in one pass);
``attention.c`` is CLIP's attention over its 50 tokens and ``quick_gelu.c`` its activation,
each in one pass. ``gpt2.c`` runs a GPT-2 forward pass (the prefix or a step) through those
kernels in one call from Python. Every output element is computed the same way whatever the
batch, so batched captions equal single ones (with oneDNN they did not: its one-row path
rounds differently).

The C files are compiled once per machine with the system C compiler into
``$ALTCAP_CACHE/kernels`` (atomic rename, so concurrent workers are safe) and loaded with
ctypes; they share torch's OpenMP runtime and thread count. Without a compiler, on other CPUs
or with ``ALTCAP_CPU_KERNEL=off`` everything runs on oneDNN as before.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import torch

from captioner.model.pretrained import altcap_cache_dir

log = logging.getLogger(__name__)

KERNELS = Path(__file__).with_name("kernels")
FILES = sorted(KERNELS.glob("*.[ch]"))  # the kernels and vecmath.h
# explicit ISA flags, not -march=native: a cache shared between machines must not hold code
# for a newer CPU than the one that loads it (the CPU is checked before loading)
FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mfma"]
FLAGS += ["-fopenmp", "-shared", "-fPIC"]
CPU_FLAGS = {"avx512f", "avx512bw", "avx512vl", "avx512_bf16"}
ENV = "ALTCAP_CPU_KERNEL"

_c_long, _ptr, _int = ctypes.c_long, ctypes.c_void_p, ctypes.c_int


def cpu_supported() -> bool:
    """x86-64 Linux with AVX512-BF16 (read from /proc/cpuinfo)."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split()) >= CPU_FLAGS
    return False


def _compiler() -> list[str] | None:
    if os.environ.get("CC", "").strip():
        return shlex.split(os.environ["CC"])  # e.g. "ccache gcc"
    found = shutil.which("cc") or shutil.which("gcc")
    return [found] if found else None


def _cache_dir() -> Path:
    return altcap_cache_dir() / "kernels"


def build(cache_dir: Path | None = None) -> Path:
    """Compile the kernels (once per source and flags); the shared library's path."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC or install gcc)")
    source = b"\0".join(path.read_bytes() for path in FILES)
    key = hashlib.sha256(source + " ".join([*cc, *FLAGS]).encode()).hexdigest()[:16]
    out_dir = cache_dir or _cache_dir()
    lib = out_dir / f"altcap-kernels-{key}.so"
    if lib.is_file():
        _check_private(lib)
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".build-", suffix=".so")
    os.close(fd)
    try:
        done = subprocess.run(
            [*cc, *FLAGS, *(str(f) for f in FILES if f.suffix == ".c"), "-o", tmp, "-lm"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cc)} failed: {done.stderr.strip()[-500:]}")
        os.replace(tmp, lib)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return lib


def _check_private(lib: Path) -> None:
    """Code to be loaded must be ours and writable only by us (the cache is a shared path)."""
    st = lib.stat()
    if (hasattr(os, "getuid") and st.st_uid != os.getuid()) or st.st_mode & 0o022:
        raise RuntimeError(f"{lib} is not owned by this user or is writable by others")


@cache
def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None (with the reason logged once) where they cannot be used."""
    if os.environ.get(ENV, "auto").strip().lower() in ("0", "off", "false", "no"):
        return None
    if not cpu_supported():
        log.info("bfloat16 CPU kernels not used: this CPU lacks AVX512-BF16")
        return None
    try:
        lib = ctypes.CDLL(str(build()))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        log.warning("bfloat16 CPU kernels not used (oneDNN instead): %s", exc)
        return None
    lib.altcap_packed_size.argtypes = [_c_long, _c_long]
    lib.altcap_packed_size.restype = _c_long
    lib.altcap_pack_bf16.argtypes = [_ptr, _c_long, _c_long, _c_long, _ptr]
    lib.altcap_pack_bf16.restype = None
    lib.altcap_linear_bf16.argtypes = [_ptr, _c_long, _ptr, _ptr, _ptr, _c_long, _int, _int]
    lib.altcap_linear_bf16.argtypes += [_c_long, _c_long, _c_long, _int]
    lib.altcap_linear_bf16.restype = _int
    lib.altcap_linear_argmax_bf16.argtypes = [_ptr, _c_long, _ptr, _ptr, _c_long, _c_long]
    lib.altcap_linear_argmax_bf16.argtypes += [_c_long, _ptr, _int]
    lib.altcap_linear_argmax_bf16.restype = _int
    lib.altcap_attend_step.argtypes = [_ptr, _c_long, _c_long, _c_long, _ptr, _ptr]
    lib.altcap_attend_step.argtypes += [_c_long, _c_long, _c_long, _c_long, _ptr]
    lib.altcap_attend_step.argtypes += [_c_long, _c_long, _c_long]
    lib.altcap_attend_step.argtypes += [ctypes.c_float, _int]
    lib.altcap_attend_step.restype = _int
    lib.altcap_quick_gelu_bf16.argtypes = [_ptr, _c_long, _int]
    lib.altcap_quick_gelu_bf16.restype = _int
    lib.altcap_attention_bf16.argtypes = [_ptr, _ptr, _ptr, _c_long, _c_long, _ptr, _c_long]
    lib.altcap_attention_bf16.argtypes += [_c_long, _c_long, _c_long, ctypes.c_float, _int]
    lib.altcap_attention_bf16.restype = _int
    lib.altcap_add_layer_norm_bf16.argtypes = [_ptr, _ptr, _c_long, _c_long, _ptr, _ptr]
    lib.altcap_add_layer_norm_bf16.argtypes += [ctypes.c_float, _ptr, _int]
    lib.altcap_add_layer_norm_bf16.restype = _int
    lib.altcap_gpt2_forward.argtypes = [ctypes.POINTER(GPT2Block), _c_long, _ptr, _ptr]
    lib.altcap_gpt2_forward.argtypes += [ctypes.c_float, _ptr, _c_long, _c_long, _c_long]
    lib.altcap_gpt2_forward.argtypes += [_c_long, _ptr, _ptr, _c_long, _c_long, _c_long]
    lib.altcap_gpt2_forward.argtypes += [_c_long, _c_long, ctypes.c_float, _ptr, _int]
    lib.altcap_gpt2_forward.restype = _int
    return lib


class GPT2Block(ctypes.Structure):
    """One GPT-2 block's parameters for ``kernels/gpt2.c`` (its ``altcap_gpt2_block``)."""

    _fields_ = [
        (name, _ptr)
        for part in ("ln1", "attn", "proj", "ln2", "fc", "fcp")
        for name in (f"{part}_w", f"{part}_b")
    ]


def attend_step(qkv: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: int) -> torch.Tensor:
    """A GPT-2 layer's attention for new positions through the kernel (``gpt2.c`` calls it
    from C inside a forward pass; this entry point is how the tests check it against torch).

    ``qkv`` (B, T, 3C) bfloat16 from the layer's c_attn (T = 1 at a decoding step; also
    (B, 3C)); ``k``, ``v`` its bfloat16 caches (B, H, L, D). Stores the new keys and values at
    ``pos``.., then attends with each query over the positions up to its own (scores scaled
    by D^-0.5, softmax and sums in float32, each row and head alone) -> (B, T, C) bfloat16
    ((B, C) for (B, 3C) input), the heads side by side for the output projection."""
    lib = _loaded()
    b, h, length, d = k.shape
    rows = qkv if qkv.dim() == 3 else qkv.reshape(b, 1, 3 * h * d)
    t = rows.shape[1]
    bf16 = qkv.dtype == k.dtype == v.dtype == torch.bfloat16
    if not bf16 or rows.stride(-1) != 1 or k.stride() != v.stride() or k.stride(-1) != 1:
        raise ValueError("expected bfloat16 qkv rows and caches of one layout")
    if rows.shape != (b, t, 3 * h * d):
        raise ValueError(f"expected qkv of ({b}, T, {3 * h * d}), got {tuple(qkv.shape)}")
    if pos < 0 or pos + t > length:
        raise ValueError(f"positions {pos}..{pos + t - 1} are outside a cache of {length}")
    y = torch.empty((b, t, h * d), dtype=torch.bfloat16)
    failed = lib.altcap_attend_step(
        rows.data_ptr(), rows.stride(0), rows.stride(1), t, k.data_ptr(), v.data_ptr(),
        k.stride(0), k.stride(1), k.stride(2), pos,
        y.data_ptr(), b, h, d, d**-0.5, torch.get_num_threads(),
    )  # fmt: skip
    if failed:
        raise ValueError(f"attention over {pos + t} positions is not supported by the kernel")
    return y if qkv.dim() == 3 else y.view(b, h * d)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, scale: float
) -> torch.Tensor:
    """Softmax attention of every position over all positions (no mask), heads side by side:
    q, k, v (B, T, C) bfloat16 with one layout (e.g. slices of a fused projection) ->
    (B, T, C) bfloat16, ready for the output projection. Scores and softmax in float32."""
    lib = _loaded()
    b, t, c = q.shape
    same = q.shape == k.shape == v.shape and q.stride() == k.stride() == v.stride()
    if not same or q.dtype != torch.bfloat16 or k.dtype != v.dtype or k.dtype != q.dtype:
        raise ValueError("expected bfloat16 q, k, v of one shape and layout")
    if q.stride(-1) != 1 or c % heads:
        raise ValueError("expected rows with unit stride and a whole number of heads")
    y = torch.empty((b, t, c), dtype=torch.bfloat16)
    failed = lib.altcap_attention_bf16(
        q.data_ptr(), k.data_ptr(), v.data_ptr(), q.stride(0), q.stride(1),
        y.data_ptr(), b, t, heads, c // heads, scale, torch.get_num_threads(),
    )  # fmt: skip
    if failed:
        raise ValueError(f"attention over {t} positions of {c // heads} dims is not supported")
    return y


def add_layer_norm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """``F.layer_norm(x + residual, ...)`` over the last dimension in one pass, with ``x``
    (contiguous bfloat16) updated in place to ``x + residual`` (rounded as torch rounds);
    without ``residual``, the LayerNorm alone. Float32 statistics."""
    lib = _loaded()
    c = x.shape[-1]
    tensors = [x, weight, bias] + ([] if residual is None else [residual])
    if any(t.dtype != torch.bfloat16 or not t.is_contiguous() for t in tensors):
        raise ValueError("expected contiguous bfloat16 tensors")
    if weight.shape != (c,) or bias.shape != (c,):
        raise ValueError(f"expected a weight and a bias of ({c},)")
    if residual is not None and residual.shape != x.shape:
        raise ValueError("the residual must have the shape of x")
    y = torch.empty_like(x)
    lib.altcap_add_layer_norm_bf16(
        x.data_ptr(), None if residual is None else residual.data_ptr(), x.numel() // c, c,
        weight.data_ptr(), bias.data_ptr(), eps, y.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    return y


def quick_gelu_(h: torch.Tensor) -> torch.Tensor:
    """CLIP's ``h * sigmoid(1.702 * h)`` in place on a contiguous bfloat16 CPU tensor."""
    lib = _loaded()
    if h.dtype != torch.bfloat16 or not h.is_contiguous():
        raise ValueError("expected a contiguous bfloat16 tensor")
    lib.altcap_quick_gelu_bf16(h.data_ptr(), h.numel(), torch.get_num_threads())
    return h


def _loaded() -> ctypes.CDLL:
    lib = library()
    if lib is None:
        raise ValueError("the bfloat16 CPU kernels are not available here")
    return lib


def available(device: torch.device, dtype: torch.dtype) -> bool:
    return device.type == "cpu" and dtype == torch.bfloat16 and library() is not None


ACTIVATIONS = {None: 0, "gelu_tanh": 1}  # the kernel's ``act`` codes


class KernelLinear:
    """``y = x @ weight.T + bias`` for bfloat16 CPU tensors through the kernel.

    ``out_dtype`` float32 keeps the accumulators unrounded (logits for an argmax);
    ``activation="gelu_tanh"`` applies GPT-2's GELU to them before rounding.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        out_dtype: torch.dtype = torch.bfloat16,
        activation: str | None = None,
    ) -> None:
        lib = _loaded()
        if weight.dtype != torch.bfloat16 or weight.device.type != "cpu":
            raise ValueError("the bfloat16 CPU kernels take bfloat16 CPU weights")
        if out_dtype not in (torch.bfloat16, torch.float32):
            raise ValueError(f"unsupported output dtype {out_dtype}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unsupported activation {activation!r}")
        self.act = ACTIVATIONS[activation]
        self.lib = lib
        self.out_features, self.in_features = weight.shape
        w = weight.detach().contiguous()
        self.packed = torch.empty(
            lib.altcap_packed_size(*weight.shape), dtype=torch.bfloat16
        )  # (panels, K/2, 32, 2)
        lib.altcap_pack_bf16(w.data_ptr(), w.stride(0), *w.shape, self.packed.data_ptr())
        self.bias = None if bias is None else bias.detach().to(torch.bfloat16).contiguous()
        self.out_dtype = out_dtype

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        k = self.in_features
        if x.dtype != torch.bfloat16 or x.shape[-1] != k:
            raise ValueError(f"expected bfloat16 (..., {k}), got {x.dtype} {tuple(x.shape)}")
        rows = x.reshape(-1, k)
        return rows if rows.stride(-1) == 1 else rows.contiguous()

    def argmax(self, x: torch.Tensor) -> torch.Tensor:
        """``torch.argmax(self(x), dim=-1)`` on the float32 sums (the activation is not
        applied), without writing the outputs out: greedy decoding's vocabulary projection."""
        rows = self._rows(x)
        out = torch.empty(rows.shape[0], dtype=torch.long)
        failed = self.lib.altcap_linear_argmax_bf16(
            rows.data_ptr(), rows.stride(0), self.packed.data_ptr(),
            None if self.bias is None else self.bias.data_ptr(),
            rows.shape[0], self.out_features, self.in_features, out.data_ptr(),
            torch.get_num_threads(),
        )  # fmt: skip
        if failed:
            raise MemoryError("the argmax kernel could not allocate its buffers")
        return out.view(x.shape[:-1])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        k, n = self.in_features, self.out_features
        rows = self._rows(x)
        y = torch.empty((rows.shape[0], n), dtype=self.out_dtype)
        self.lib.altcap_linear_bf16(
            rows.data_ptr(),
            rows.stride(0),
            self.packed.data_ptr(),
            None if self.bias is None else self.bias.data_ptr(),
            y.data_ptr(),
            n,
            int(self.out_dtype == torch.bfloat16),
            self.act,
            rows.shape[0],
            n,
            k,
            torch.get_num_threads(),
        )
        return y.view(*x.shape[:-1], n)


Norm = tuple[torch.Tensor, torch.Tensor]  # a LayerNorm's (weight, bias)


class KernelGPT2:
    """GPT-2's blocks and final LayerNorm as one kernel call per forward pass
    (``kernels/gpt2.c``): the same kernels in the same order as calling ``KernelLinear``,
    ``attend_step`` and ``add_layer_norm`` one by one, bit for bit, without ~85 calls from
    Python a step.

    ``blocks``: per layer (ln_1, c_attn, c_proj, ln_2, c_fc with GELU, c_proj of the MLP),
    the norms as bfloat16 (weight, bias) and the linear layers as ``KernelLinear``.
    """

    def __init__(
        self,
        blocks: list[tuple[Norm, KernelLinear, KernelLinear, Norm, KernelLinear, KernelLinear]],
        ln_f: Norm,
        n_head: int,
        eps: float,
    ) -> None:
        self.lib = _loaded()
        self.n_head, self.eps = n_head, eps
        self.width = ln_f[0].shape[0]
        keep: list[torch.Tensor] = []  # what the pointers point into

        def ptr(t: torch.Tensor | None) -> int | None:
            if t is None:
                return None
            if t.dtype != torch.bfloat16 or not t.is_contiguous() or t.device.type != "cpu":
                raise ValueError("expected contiguous bfloat16 CPU parameters")
            keep.append(t)
            return t.data_ptr()

        c = self.width
        gpt2_shapes = [(c, 3 * c), (c, c), (c, 4 * c), (4 * c, c)]  # (in, out) features
        arr = (GPT2Block * len(blocks))()
        for i, (ln1, attn, proj, ln2, fc, fc_proj) in enumerate(blocks):
            shapes = [(m.in_features, m.out_features) for m in (attn, proj, fc, fc_proj)]
            if shapes != gpt2_shapes:
                raise ValueError(f"block {i} does not have GPT-2's shapes: {shapes}")
            if fc.act != ACTIVATIONS["gelu_tanh"] or attn.act or proj.act or fc_proj.act:
                raise ValueError(f"block {i}: only the MLP's first layer may have an activation")
            if any(m.out_dtype != torch.bfloat16 for m in (attn, proj, fc, fc_proj)):
                raise ValueError(f"block {i}: the linear layers must output bfloat16")
            arr[i] = GPT2Block(
                ptr(ln1[0]), ptr(ln1[1]), ptr(attn.packed), ptr(attn.bias),
                ptr(proj.packed), ptr(proj.bias), ptr(ln2[0]), ptr(ln2[1]),
                ptr(fc.packed), ptr(fc.bias), ptr(fc_proj.packed), ptr(fc_proj.bias),
            )  # fmt: skip
        self.ln_f = (ptr(ln_f[0]), ptr(ln_f[1]))
        self.blocks, self.n_layer, self._keep = arr, len(blocks), keep

    def __call__(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: int) -> torch.Tensor:
        """Input embeddings ``x`` (B, T, C) bfloat16, contiguous, at positions pos..pos+T-1
        -> ln_f of the last block's output, (B, T, C). ``x`` becomes the residual stream;
        the new keys and values go into ``k``, ``v`` (layers, B, H, L, D)."""
        b, t, c = x.shape
        layers, kb, h, length, d = k.shape
        ok = x.dtype == k.dtype == v.dtype == torch.bfloat16 and x.is_contiguous()
        if not ok or k.stride() != v.stride() or k.stride(-1) != 1:
            raise ValueError("expected contiguous bfloat16 x and caches of one layout")
        if (layers, kb, h * d, c) != (self.n_layer, b, self.width, self.width) or h != self.n_head:
            raise ValueError(f"x {tuple(x.shape)} and caches {tuple(k.shape)} do not fit")
        if pos < 0 or pos + t > length:
            raise ValueError(f"positions {pos}..{pos + t - 1} are outside a cache of {length}")
        hidden = torch.empty_like(x)
        failed = self.lib.altcap_gpt2_forward(
            self.blocks, self.n_layer, *self.ln_f, self.eps, x.data_ptr(), b, t, c, h,
            k.data_ptr(), v.data_ptr(), *k.stride()[:4], pos, d**-0.5, hidden.data_ptr(),
            torch.get_num_threads(),
        )  # fmt: skip
        if failed == 2:
            raise MemoryError("the GPT-2 kernel could not allocate its buffers")
        if failed:
            raise ValueError(f"a forward pass over {pos + t} positions is not supported")
        return hidden
