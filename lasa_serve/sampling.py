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
        """One token id from float logits ``[V]``. Degenerate distributions (overflow, NaN)
        fall back to the most likely token instead of failing the batch."""
        best = int(torch.argmax(logits))
        if self.greedy:
            return best
        probs = torch.softmax(logits.double() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            cum = torch.cumsum(sorted_p, dim=-1)
            keep = (cum - sorted_p) < self.top_p  # always keeps the most likely token
            sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
            if not _usable(sorted_p):
                return best
            return int(order[torch.multinomial(sorted_p, 1, generator=self.generator)])
        if not _usable(probs):
            return best
        return int(torch.multinomial(probs, 1, generator=self.generator))


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
    """Tokens for every row of ``logits [B, V]``. The greedy argmax runs where the logits
    are (the model's device), so only ``B`` token ids reach the CPU; a sampled row's own
    ``[V]`` logits go to the CPU, where its seeded generator draws (the same draw alone or
    batched, on any device)."""
    greedy = torch.argmax(logits, dim=-1).tolist()
    out = []
    for i, s in enumerate(samplers):
        if s.greedy:
            out.append(greedy[i])
            continue
        try:
            out.append(s.pick(logits[i].float().cpu()))
        except RuntimeError:  # one row's odd settings must not fail its neighbours
            out.append(greedy[i])
    return out
