"""Caption search on a KV cache: greedy, beam search (as ClipCap does it), nucleus sampling.

Every function takes a batch of prefixes (B, P, C) and returns, per image, the generated token
ids (without the prompt). A batch gives the same tokens as the images one at a time: rows never
interact, and sampling draws each row's noise from its own generator.

``generate`` writes one caption per image. ``generate_candidates`` writes
``settings.candidates`` (k) per image for reranking, each with the language model's mean
log-probability per generated token: beam search's k best beams, or k nucleus samples (image
i's sample j draws from its own generator, seeded from ``seed`` and j, so that sample 0 is the
caption that ``generate`` writes and a batch changes nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from captioner.config import DecodingSettings
from captioner.runtime.graphs import GraphedGreedy
from captioner.runtime.lm import CachedGPT2
from captioner.runtime.stopping import StopRule


def generate(
    lm: CachedGPT2,
    prefix: torch.Tensor,
    settings: DecodingSettings,
    stop: StopRule,
    graphed: GraphedGreedy | None = None,
) -> list[list[int]]:
    """Token ids for each row of ``prefix`` (B, P, C), the stop/EOS token included if hit.

    ``graphed`` (a ``graphs.GraphedGreedy``, used on GPUs) runs greedy decoding from CUDA
    graphs; it gives the same tokens as ``sample``.
    """
    if settings.method == "greedy" and graphed is not None:
        return graphed(prefix, settings.max_tokens, stop)
    if settings.method == "beam":
        return beam_search(lm, prefix, settings, stop)
    return sample(lm, prefix, settings, stop)


@dataclass(frozen=True)
class Candidate:
    """One caption of an image: its token ids and how likely the language model finds it."""

    ids: list[int]  # generated tokens, the stop/EOS token included if hit
    # mean log-probability per generated token (nats), at the decoding temperature: beam
    # search's own score (ClipCap's summed log-probability over length)
    logprob: float


def generate_candidates(
    lm: CachedGPT2, prefix: torch.Tensor, settings: DecodingSettings, stop: StopRule
) -> list[list[Candidate]]:
    """``settings.candidates`` captions for each row of ``prefix`` (B, P, C), best first.

    Beam search: its best beams by its own score (a beam cut at ``max_tokens`` counts, as in
    ClipCap), the first being ``generate``'s caption. Nucleus: that many samples, sorted by
    log-probability. Greedy writes one caption, with its log-probability.
    """
    if settings.method == "beam":
        return beam_candidates(lm, prefix, settings, stop)
    k = settings.candidates
    rows = prefix.repeat_interleave(k, dim=0) if k > 1 else prefix  # (B*k, P, C)
    ids, logprobs = _sample(lm, rows, settings, stop, samples=k, track=True)
    out = []
    for i in range(prefix.shape[0]):
        mine = [Candidate(ids[i * k + j], logprobs[i * k + j]) for j in range(k)]
        out.append(sorted(mine, key=lambda c: -c.logprob))  # stable: ties keep sample order
    return out


# Seeds of an image's samples after the first: far apart in the 64-bit seed space, so that the
# samples of one request never draw the same noise (the golden ratio's 64-bit fraction).
_SAMPLE_SEED_STEP = 0x9E3779B97F4A7C15


def _row_generators(
    n: int, seed: int | None, device: torch.device, samples: int = 1
) -> list[torch.Generator]:
    """One generator per row (``samples`` consecutive rows per image): the same seed gives an
    image the same caption whatever batch it is in; without a seed every row draws its own,
    so two unseeded rows never share noise."""
    if seed is None:
        seeds = torch.randint(0, 2**62, (n,)).tolist()
    else:  # sample 0: ``seed`` itself, so one sample is the caption a plain request writes
        seeds = [(seed + (r % samples) * _SAMPLE_SEED_STEP) % 2**64 for r in range(n)]
    return [torch.Generator(device=device).manual_seed(s) for s in seeds]


def nucleus_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set logits outside the top-p nucleus to -inf (the most likely token always stays)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, descending=True)
    cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    remove = cum > top_p
    remove[..., 1:] = remove[..., :-1].clone()  # keep the token that crosses the threshold
    remove[..., 0] = False
    mask = torch.zeros_like(remove).scatter_(-1, sorted_idx, remove)
    return logits.masked_fill(mask, float("-inf"))


def sample(
    lm: CachedGPT2, prefix: torch.Tensor, settings: DecodingSettings, stop: StopRule
) -> list[list[int]]:
    """Greedy (argmax) or nucleus sampling: one caption per row."""
    return _sample(lm, prefix, settings, stop)[0]


@torch.inference_mode()
def _sample(
    lm: CachedGPT2,
    prefix: torch.Tensor,
    settings: DecodingSettings,
    stop: StopRule,
    samples: int = 1,
    track: bool = False,
) -> tuple[list[list[int]], list[float]]:
    """Greedy or nucleus sampling: each row's ids, and (``track``) its mean log-probability.

    ``samples``: consecutive rows that are one image's samples (their generators differ).
    Finished rows keep running (a cache copy costs more than a step) until at most half of
    the batch is still writing; then the batch is compacted to the live rows.
    """
    b, p, _ = prefix.shape
    nucleus = settings.method == "nucleus"
    cache = lm.new_cache(b, p + settings.max_tokens)
    hidden = lm.forward(prefix, cache)
    gens = _row_generators(b, settings.seed, prefix.device, samples) if nucleus else []
    out: list[list[int]] = [[] for _ in range(b)]
    logp_sums = [0.0] * b  # summed log-probabilities of each row's tokens (``track``)
    rows = list(range(b))  # original index of each batch row; -1 once it is finished
    for step in range(settings.max_tokens):
        logits = None
        if nucleus:
            logits = lm.logits(hidden) / settings.temperature  # (rows, V)
            probs = torch.softmax(nucleus_filter(logits, settings.top_p), dim=-1)
            # Exponential race: argmax(p / E) with E ~ Exp(1) is an exact categorical draw;
            # each row's noise comes from its own generator, so batching changes nothing.
            noise = torch.ones_like(probs)
            for j, r in enumerate(rows):
                if r >= 0:
                    noise[j].exponential_(generator=gens[r])
            next_ids = torch.argmax(probs / noise, dim=-1)
        else:
            next_ids = lm.greedy(hidden)
        if track:  # the token's log-probability, before the nucleus cut (the model's own)
            if logits is None:  # greedy: the model's distribution (temperature is sampling's)
                logits = lm.logits(hidden)
            token_logp = torch.log_softmax(logits.float(), dim=-1)
            token_logp = token_logp.gather(1, next_ids.unsqueeze(1))[:, 0].tolist()
        done = stop.hits(next_ids, step).tolist()
        for j, (r, tok) in enumerate(zip(rows, next_ids.tolist(), strict=True)):
            if r >= 0:
                out[r].append(tok)
                if track:
                    logp_sums[r] += token_logp[j]
                if done[j]:
                    rows[j] = -1
        live = [j for j, r in enumerate(rows) if r >= 0]
        if not live or step + 1 == settings.max_tokens:
            break
        if len(live) * 2 <= len(rows):
            keep = torch.tensor(live, device=next_ids.device)
            cache = cache.select(keep)
            next_ids = next_ids[keep]
            rows = [rows[j] for j in live]
        hidden = lm.forward(lm.embed_tokens(next_ids).unsqueeze(1), cache)
    return out, [s / max(len(ids), 1) for s, ids in zip(logp_sums, out, strict=True)]


def beam_search(
    lm: CachedGPT2, prefix: torch.Tensor, settings: DecodingSettings, stop: StopRule
) -> list[list[int]]:
    """Beam search with ClipCap's scoring: the best beam of each row."""
    tokens, final, lengths = _beams(lm, prefix, settings, stop)
    best = final.argsort(dim=-1, descending=True)[:, 0]  # (B,)
    out = []
    for i, j in enumerate(best.tolist()):
        n = int(lengths[i, j].item())
        out.append(tokens[i, j, :n].tolist())
    return out


def beam_candidates(
    lm: CachedGPT2, prefix: torch.Tensor, settings: DecodingSettings, stop: StopRule
) -> list[list[Candidate]]:
    """The ``settings.candidates`` best beams of each row, best first, with their scores."""
    tokens, final, lengths = _beams(lm, prefix, settings, stop)
    order = final.argsort(dim=-1, descending=True)[:, : settings.candidates]  # (B, k)
    out = []
    for i, picks in enumerate(order.tolist()):
        out.append(
            [
                Candidate(tokens[i, j, : int(lengths[i, j].item())].tolist(), float(final[i, j]))
                for j in picks
            ]
        )
    return out


@torch.inference_mode()
def _beams(
    lm: CachedGPT2, prefix: torch.Tensor, settings: DecodingSettings, stop: StopRule
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Beam search with ClipCap's scoring, batched over images: every row's beams.

    Returns ``(tokens, score, lengths)``: (B, K, T) token ids (a beam's first ``length`` are
    its own), (B, K) scores (summed log-probability / length) and (B, K) lengths.

    As the reference: a candidate's score is its summed log-probability divided by its
    generated length; a finished beam stays frozen (it may only extend with a zero-cost
    placeholder that does not count towards its length); the best average wins. Images
    whose beams have all finished stop changing, exactly as if decoded alone.
    """
    b, p, _ = prefix.shape
    k = settings.beam_size
    dev = prefix.device
    cache = lm.new_cache(b, p + settings.max_tokens)
    hidden = lm.forward(prefix, cache)  # (B, C): the prefix is shared by all beams
    logp = _beam_logprobs(lm, hidden, settings.temperature)  # (B, V)
    vocab = logp.shape[-1]
    scores, tokens = logp.topk(k, dim=-1)  # (B, K) each
    tokens = tokens.unsqueeze(-1)  # (B, K, T)
    lengths = torch.ones(b, k, device=dev)
    stopped = stop.hits(tokens[..., 0], 0)
    cache = cache.select(torch.arange(b, device=dev).repeat_interleave(k))  # (B*K) rows
    base = (torch.arange(b, device=dev) * k).unsqueeze(1)  # (B, 1): first row of each image
    for step in range(1, settings.max_tokens):
        if bool(stopped.all()):
            break
        img_done = stopped.all(dim=1)  # (B,) these images keep their current beams
        hidden = lm.forward(lm.embed_tokens(tokens[..., -1].reshape(-1)).unsqueeze(1), cache)
        logp = _beam_logprobs(lm, hidden, settings.temperature).view(b, k, vocab)
        logp[stopped] = float("-inf")
        logp[..., 0][stopped] = 0.0  # a finished beam's only continuation, at no cost
        total = scores.unsqueeze(-1) + logp  # (B, K, V)
        new_lengths = torch.where(stopped, lengths, lengths + 1)
        avg = total / new_lengths.unsqueeze(-1)
        top_avg, flat = avg.view(b, -1).topk(k, dim=-1)  # (B, K)
        src = torch.div(flat, vocab, rounding_mode="floor")
        next_tok = flat % vocab
        new_lengths = new_lengths.gather(1, src)
        new_scores = top_avg * new_lengths
        new_stopped = stopped.gather(1, src) | stop.hits(next_tok, step)
        new_tokens = torch.cat(
            (tokens.gather(1, src.unsqueeze(-1).expand_as(tokens)), next_tok.unsqueeze(-1)), -1
        )
        # frozen images: same beams, same scores; append a placeholder that the length hides
        keep = img_done.unsqueeze(1)
        ident = torch.arange(k, device=dev).expand(b, k)
        src = torch.where(keep, ident, src)
        lengths = torch.where(keep, lengths, new_lengths)
        scores = torch.where(keep, scores, new_scores)
        stopped = torch.where(keep, stopped, new_stopped)
        tokens = torch.where(
            keep.unsqueeze(-1),
            torch.cat((tokens, torch.zeros_like(tokens[..., :1])), -1),
            new_tokens,
        )
        cache = cache.select((base + src).reshape(-1))
    return tokens, scores / lengths, lengths


def _beam_logprobs(lm: CachedGPT2, hidden: torch.Tensor, temperature: float) -> torch.Tensor:
    # softmax-then-log as the reference (not log_softmax) so scores match it bit for bit
    return (lm.logits(hidden) / temperature).softmax(dim=-1).log()
