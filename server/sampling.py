"""Next-token choice per row: greedy at temperature 0, else temperature + top-p sampling
with the row's own generator (so a seeded request samples the same alone or batched)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Sampler:
    temperature: float = 1.0
    top_p: float = 1.0
    generator: torch.Generator | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def pick(self, logits: torch.Tensor) -> int:
        """One token id from float logits ``[V]``."""
        if self.greedy:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            cum = torch.cumsum(sorted_p, dim=-1)
            keep = (cum - sorted_p) < self.top_p  # always keeps the most likely token
            sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
            choice = torch.multinomial(sorted_p, 1, generator=self.generator)
            return int(order[choice])
        return int(torch.multinomial(probs, 1, generator=self.generator))


def make_sampler(temperature: float, top_p: float, seed: int | None) -> Sampler:
    gen = None
    if temperature > 0.0:
        gen = torch.Generator()
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)
    return Sampler(float(temperature), float(top_p), gen)


def pick_all(samplers: list[Sampler], logits: torch.Tensor) -> list[int]:
    """Tokens for every row of ``logits [B, V]``; greedy rows share one argmax."""
    logits = logits.float().cpu()
    greedy = torch.argmax(logits, dim=-1).tolist()
    return [greedy[i] if s.greedy else s.pick(logits[i]) for i, s in enumerate(samplers)]
