"""Train the gate's MLP probe (:class:`lasa_steer.vector.probe.Probe`) on bottleneck states.

Full-batch AdamW on a class- and language-balanced logistic loss (each (language, label)
cell weighs the same, so English's extra harmless rows or one language's many rows do not
set the boundary), dropout on the hidden layer, a fixed seed; inputs are standardised and the
standardisation folded into the first layer, so the file holds a plain MLP on raw states.
Seconds on a CPU for a few thousand states.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..vector.probe import Probe


@dataclass(frozen=True)
class ProbeConfig:
    hidden: int = 64
    epochs: int = 300
    lr: float = 1e-3
    weight_decay: float = 1e-2
    dropout: float = 0.2
    seed: int = 0


def cell_weights(labels: Sequence[int], langs: Sequence[str]) -> torch.Tensor:
    """Per-row loss weights that give every (language, label) cell the same total."""
    cells = list(zip(langs, labels))
    counts: dict[tuple[str, int], int] = {}
    for c in cells:
        counts[c] = counts.get(c, 0) + 1
    w = torch.tensor([1.0 / counts[c] for c in cells])
    return w * (len(cells) / w.sum())


def train_probe(states: torch.Tensor, labels: Sequence[int], langs: Sequence[str],
                config: ProbeConfig | None = None, weights: torch.Tensor | None = None
                ) -> Probe:
    """A probe scoring harmful rows high (``labels`` 1 = harmful). ``weights``: per-row
    loss weights (default :func:`cell_weights`; a data mixture passes its own balance,
    :meth:`lasa_steer.fit.mixture.Mixture.weights`)."""
    cfg = config or ProbeConfig()
    x = states.detach().float().cpu()
    y = torch.tensor([float(v) for v in labels])
    mu, sd = x.mean(0), x.std(0) + 1e-3
    z = (x - mu) / sd
    weights = cell_weights(labels, langs) if weights is None else weights.float()
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], cfg.hidden), torch.nn.GELU(),
                                  torch.nn.Dropout(cfg.dropout), torch.nn.Linear(cfg.hidden, 1))
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        with torch.enable_grad():
            for _ in range(cfg.epochs):
                net.train()
                opt.zero_grad()
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    net(z).squeeze(-1), y, weight=weights)
                loss.backward()
                opt.step()
    first, last = net[0], net[3]
    w1 = first.weight.detach() / sd  # fold (x - mu) / sd into the first layer
    b1 = first.bias.detach() - w1 @ mu
    return Probe(w1.clone(), b1.clone(), last.weight.detach()[0].clone(),
                 last.bias.detach().clone())
