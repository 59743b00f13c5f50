"""Decoding: the KV-cached, batched search equals the reference ClipCap loops token for token."""

from __future__ import annotations

import pytest
import torch

from captioner.config import DecodingSettings
from captioner.model.tiny import tiny_tokenizer_and_model
from captioner.runtime.decoding import generate, generate_candidates, nucleus_filter
from captioner.runtime.lm import CachedGPT2
from captioner.runtime.reference import reference_beam, reference_greedy
from captioner.runtime.stopping import StopRule

N = 6
SEED = 5


@pytest.fixture(scope="module", params=["mlp", "transformer"])
def setup(request):
    """A float64 tiny model (so both paths round alike), prefixes, and a stop token the model
    actually emits, so that stopping, frozen beams and batch compaction are exercised."""
    _, model = tiny_tokenizer_and_model(request.param, seed=SEED)
    for w in model.lm.parameters():  # livelier than the default init, which repeats a token
        if w.dim() > 1:
            torch.nn.init.normal_(w, std=0.3)
    model = model.double().eval()
    lm = CachedGPT2(model.lm)
    torch.manual_seed(1)
    prefix = model.prefix(torch.randn(N, model.config.clip_dim, dtype=torch.float64))
    free = generate(lm, prefix, DecodingSettings(max_tokens=12), StopRule(None, None))
    # the stop token: one that some row first writes at its 4th step or later
    row, pos = next((r, i) for r in range(N) for i in range(3, 12) if free[r][i] not in free[r][:i])
    stop_id = free[row][pos]
    return model, lm, prefix, stop_id, row, pos


def test_greedy_equals_reference(setup):
    model, lm, prefix, stop_id, row, pos = setup
    got = generate(lm, prefix, DecodingSettings(max_tokens=15), StopRule(stop_id, None))
    want = [reference_greedy(model.lm, prefix[i : i + 1], stop_id, 15) for i in range(N)]
    assert got == want
    assert len(got[row]) == pos + 1 and got[row][-1] == stop_id
    assert len({len(g) for g in got}) > 1, "rows should stop at different lengths"


def test_beam_equals_reference(setup):
    model, lm, prefix, *_ = setup
    s = DecodingSettings(method="beam", beam_size=5, max_tokens=15)
    free = generate(lm, prefix, s, StopRule(None, None))
    # a stop token that a winning beam writes mid-way, so that some beams finish and freeze
    stop_id = next(b[i] for b in free for i in range(2, 15) if b[i] not in b[:i])
    got = generate(lm, prefix, s, StopRule(stop_id, None))
    beams = [reference_beam(model.lm, prefix[i : i + 1], stop_id, 5, 15) for i in range(N)]
    assert got == [b[0] for b in beams]
    assert any(b[-1] == stop_id for per_image in beams for b in per_image)
    assert got != free


@pytest.mark.parametrize(
    "settings",
    [
        DecodingSettings(method="greedy", max_tokens=10),
        DecodingSettings(method="beam", beam_size=3, max_tokens=10),
        DecodingSettings(method="nucleus", top_p=0.9, seed=7, max_tokens=10),
    ],
    ids=lambda s: s.method,
)
def test_batch_equals_single(setup, settings):
    _, lm, prefix, stop_id, _row, _pos = setup
    rule = StopRule(stop_id, None)
    batched = generate(lm, prefix, settings, rule)
    single = [generate(lm, prefix[i : i + 1], settings, rule)[0] for i in range(N)]
    assert batched == single


def test_nucleus_seed_is_reproducible_and_matters(setup):
    _, lm, prefix, *_ = setup
    rule = StopRule(None, None)
    s = DecodingSettings(method="nucleus", top_p=1.0, temperature=2.0, seed=1, max_tokens=8)
    a = generate(lm, prefix, s, rule)
    assert a == generate(lm, prefix, s, rule)
    b = generate(lm, prefix, DecodingSettings(**{**s.__dict__, "seed": 2}), rule)
    assert a != b


def test_tiny_nucleus_is_greedy(setup):
    _, lm, prefix, stop_id, _row, _pos = setup
    rule = StopRule(stop_id, None)
    greedy = generate(lm, prefix, DecodingSettings(max_tokens=10), rule)
    s = DecodingSettings(method="nucleus", top_p=1e-6, seed=3, max_tokens=10)
    assert generate(lm, prefix, s, rule) == greedy


def test_min_and_max_tokens(setup):
    _, lm, prefix, stop_id, _row, _pos = setup
    out = generate(
        lm, prefix, DecodingSettings(max_tokens=9, min_tokens=9), StopRule(stop_id, None, 9)
    )
    assert [len(o) for o in out] == [9] * N
    out = generate(lm, prefix, DecodingSettings(max_tokens=2), StopRule(None, None))
    assert [len(o) for o in out] == [2] * N


def test_eos_stops(setup):
    _, lm, prefix, stop_id, row, pos = setup
    out = generate(lm, prefix, DecodingSettings(max_tokens=15), StopRule(None, stop_id))
    assert out[row][-1] == stop_id and len(out[row]) == pos + 1


def test_nucleus_filter_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(nucleus_filter(logits, 0.7))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.7, 0.8 crosses: keep both
    assert torch.isfinite(nucleus_filter(logits, 1.0)).all()


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_static_graphed_greedy_equals_eager(setup, device):
    """The static-shape step (CUDA graphs on a GPU; the same code without capture on CPU)
    gives the tokens of the eager loop, for odd batch sizes (padded to a power of two)."""
    from captioner.runtime.graphs import GraphedGreedy

    model, _, prefix, stop_id, row, pos = setup
    dtype = torch.float64 if device == "cpu" else torch.float32
    model = model.to(device, dtype)
    lm = CachedGPT2(model.lm)
    prefix = prefix.to(device, dtype)
    rule = StopRule(stop_id, None)
    s = DecodingSettings(max_tokens=15)
    eager = generate(lm, prefix, s, rule)
    graphed = GraphedGreedy(lm)
    assert graphed.use_graphs == (device == "cuda")
    assert generate(lm, prefix, s, rule, graphed) == eager
    assert generate(lm, prefix[:3], s, rule, graphed) == eager[:3]  # 3 rows, a bucket of 4
    assert generate(lm, prefix, s, rule, graphed) == eager  # replayed from kept graphs
    assert eager[row][-1] == stop_id and len(eager[row]) == pos + 1
    model.to("cpu", torch.float64)


def test_unseeded_rows_draw_their_own_noise(setup):
    _, lm, prefix, *_ = setup
    same = prefix[:1].expand(8, *prefix.shape[1:])  # one image eight times in one batch
    s = DecodingSettings(method="nucleus", top_p=1.0, temperature=3.0, seed=None, max_tokens=8)
    out = generate(lm, same, s, StopRule(None, None))
    assert len({tuple(o) for o in out}) > 1
    seeded = generate(lm, same, DecodingSettings(**{**s.__dict__, "seed": 4}), StopRule(None, None))
    assert len({tuple(o) for o in seeded}) == 1


# --- candidates (reranking): k captions per image, each with its mean log-probability --------


@torch.no_grad()
def _mean_logprob(model, prefix: torch.Tensor, ids: list[int], temperature: float = 1.0) -> float:
    """The mean log-probability per token of ``ids`` after ``prefix`` (1, P, C), from one
    uncached forward over the whole sequence (the reference's way)."""
    wte = model.lm.transformer.wte
    x = torch.cat((prefix, wte(torch.tensor([ids[:-1]]))), dim=1) if len(ids) > 1 else prefix
    logits = model.lm(inputs_embeds=x).logits[0, prefix.shape[1] - 1 :] / temperature
    logp = torch.log_softmax(logits.double(), dim=-1)
    return float(logp[torch.arange(len(ids)), torch.tensor(ids)].mean())


def test_beam_candidates_are_the_reference_beams(setup):
    """Beam search's k best beams, best first, are the reference's, with ClipCap's score (the
    mean log-probability per token); the first is generate's caption."""
    model, lm, prefix, stop_id, *_ = setup
    s = DecodingSettings(method="beam", beam_size=5, max_tokens=15, candidates=3)
    rule = StopRule(stop_id, None)
    got = generate_candidates(lm, prefix, s, rule)
    assert [c[0].ids for c in got] == generate(lm, prefix, s, rule)
    for i, cands in enumerate(got):
        beams = reference_beam(model.lm, prefix[i : i + 1], stop_id, 5, 15)
        assert [c.ids for c in cands] == beams[:3]
        logprobs = [c.logprob for c in cands]
        assert logprobs == sorted(logprobs, reverse=True)
        for c in cands:
            assert c.logprob == pytest.approx(
                _mean_logprob(model, prefix[i : i + 1], c.ids), abs=1e-6
            )


def test_nucleus_candidates_are_seeded_samples_with_their_logprobs(setup):
    """k samples per image: sample 0 is the caption a plain request writes, the others differ
    (their own noise), sorted by mean log-probability, which is the model's own."""
    model, lm, prefix, *_ = setup
    rule = StopRule(None, None)
    s = DecodingSettings(
        method="nucleus", top_p=1.0, temperature=2.0, seed=3, max_tokens=6, candidates=4
    )
    got = generate_candidates(lm, prefix, s, rule)
    plain = generate(lm, prefix, DecodingSettings(**{**s.__dict__, "candidates": 1}), rule)
    for i, cands in enumerate(got):
        assert len(cands) == 4 and plain[i] in [c.ids for c in cands]
        assert len({tuple(c.ids) for c in cands}) > 1
        logprobs = [c.logprob for c in cands]
        assert logprobs == sorted(logprobs, reverse=True)
        for c in cands:
            want = _mean_logprob(model, prefix[i : i + 1], c.ids, temperature=2.0)
            assert c.logprob == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize(
    "settings",
    [
        DecodingSettings(method="beam", beam_size=4, max_tokens=10, candidates=4),
        DecodingSettings(
            method="nucleus", top_p=0.9, temperature=2.0, seed=7, max_tokens=10, candidates=3
        ),
    ],
    ids=lambda s: s.method,
)
def test_candidates_of_a_batch_equal_each_image_alone(setup, settings):
    _, lm, prefix, stop_id, _row, _pos = setup
    rule = StopRule(stop_id, None)
    batched = generate_candidates(lm, prefix, settings, rule)
    single = [generate_candidates(lm, prefix[i : i + 1], settings, rule)[0] for i in range(N)]
    assert [[c.ids for c in cs] for cs in batched] == [[c.ids for c in cs] for cs in single]
    for a, b in zip(batched, single, strict=True):
        assert [c.logprob for c in a] == pytest.approx([c.logprob for c in b], abs=1e-9)
