"""Next-token choice per row: greedy at temperature 0, else temperature + top-p sampling
with the row's own generator (so a seeded request samples the same alone or batched)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

MIN_TEMPERATURE = 1e-5  # below this, sampling is greedy


@dataclass
class Sampler:
    temperature: float = 1.0
    top_p: float = 1.0
    generator: torch.Generator | None = None
    seed: int | None = None  # the request's seed for this choice (engines with own RNGs)

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE

    def pick(self, logits: torch.Tensor) -> int:
        """One token id from float logits ``[V]``, on their device: softmax, top-p and the
        draw run there; only the row's uniform number comes from its (CPU) generator, so a
        seed draws the same token on any device, alone or batched. Degenerate
        distributions (overflow, NaN) fall back to the most likely token instead of failing
        the batch."""
        best = int(torch.argmax(logits))
        if self.greedy:
            return best
        probs = torch.softmax(logits.double() / self.temperature, dim=-1)
        order = None
        if self.top_p < 1.0:
            probs, order = torch.sort(probs, descending=True)
            keep = (torch.cumsum(probs, dim=-1) - probs) < self.top_p  # keeps the best token
            probs = torch.where(keep, probs, torch.zeros_like(probs))
        if not _usable(probs):
            return best
        cdf = torch.cumsum(probs, dim=-1)
        u = torch.rand((), generator=self.generator, dtype=torch.float64)
        # the first token whose cumulative probability exceeds u x total (never one of p 0)
        idx = torch.searchsorted(cdf, (u * cdf[-1].cpu()).to(cdf.device).reshape(1),
                                 right=True).clamp_max(cdf.numel() - 1)
        return int(idx if order is None else order[idx])


def _usable(p: torch.Tensor) -> bool:
    return bool(torch.isfinite(p).all()) and float(p.sum()) > 0.0


def make_sampler(temperature: float, top_p: float, seed: int | None) -> Sampler:
    gen = None
    if temperature >= MIN_TEMPERATURE:
        gen = torch.Generator()
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)
    return Sampler(float(temperature), float(top_p), gen, seed)


def pick_all(samplers: list[Sampler], logits: torch.Tensor) -> list[int]:
    """Tokens for every row of ``logits [B, V]``, computed where the logits are (the
    model's device): only token ids (and each sampled row's uniform draw) cross to or from
    the CPU, never the ``[B, V]`` logits."""
    greedy = torch.argmax(logits, dim=-1).tolist()
    out = []
    for i, s in enumerate(samplers):
        if s.greedy:
            out.append(greedy[i])
            continue
        try:
            out.append(s.pick(logits[i].float()))
        except RuntimeError:  # one row's odd settings must not fail its neighbours
            out.append(greedy[i])
    return out
