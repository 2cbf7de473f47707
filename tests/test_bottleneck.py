"""Silhouette against a brute-force reference; the robust bottleneck rule."""

from __future__ import annotations

import math

import pytest
import torch

from lasa_steer.fit.bottleneck import (analyze_states, band_layers, choose_bottleneck, plot_layers,
                                   silhouette, transfer_auroc)


def brute_silhouette(x: torch.Tensor, labels: list) -> float:
    n = len(labels)
    xs = [v / v.norm() for v in x.double()]
    d = [[1.0 - float(xs[i] @ xs[j]) for j in range(n)] for i in range(n)]
    total = 0.0
    for i in range(n):
        own = [j for j in range(n) if labels[j] == labels[i] and j != i]
        if not own:
            continue  # singleton: 0
        a = sum(d[i][j] for j in own) / len(own)
        b = min(sum(d[i][j] for j in range(n) if labels[j] == c) /
                sum(1 for j in range(n) if labels[j] == c)
                for c in set(labels) if c != labels[i])
        total += (b - a) / max(a, b)
    return total / n


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_silhouette_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(23, 7, generator=g)
    labels = [int(v) for v in torch.randint(0, 4, (23,), generator=g)]
    labels[0] = 9  # a singleton cluster
    assert silhouette(x, labels) == pytest.approx(brute_silhouette(x, labels), abs=1e-9)


def test_silhouette_separates_clusters():
    g = torch.Generator().manual_seed(0)
    centers = torch.eye(6)[:3] * 10
    x = torch.cat([c + 0.1 * torch.randn(10, 6, generator=g) for c in centers])
    labels = [i // 10 for i in range(30)]
    assert silhouette(x, labels) > 0.9
    assert silhouette(x, [i % 3 for i in range(30)]) < 0.0


def test_choice_is_robust_to_early_spike():
    n = 20
    diff = [0.9, 0.8] + [0.1 + 0.02 * i for i in range(2, 12)] + [0.2] * 8
    assert max(range(n), key=lambda i: diff[i]) == 0
    chosen = choose_bottleneck(diff)
    # smoothed over 3 blocks, the in-band peak is block 10 (0.28+0.30+0.32)/3
    assert chosen in band_layers(n) and chosen == 10
    transfer = [0.5] * n
    transfer[8] = transfer[9] = transfer[7] = 1.0
    assert choose_bottleneck(diff, transfer) == 8


def test_band_excludes_last_block():
    assert band_layers(30) == list(range(8, 25))
    assert band_layers(4)[-1] == 2


def test_analyze_states_planted_bottleneck(tmp_path):
    g = torch.Generator().manual_seed(0)
    langs, sents, n_layers = 4, 6, 10
    meaning = torch.randn(sents, 16, generator=g)
    lang = torch.randn(langs, 16, generator=g)
    states, mids, lids = {}, [], []
    for l_ in range(langs):
        for s in range(sents):
            mids.append(s)
            lids.append(f"l{l_}")
    for layer in range(n_layers):
        w = 1.0 if layer == 5 else 0.1  # meaning dominates only at block 5
        rows = [w * meaning[s] + (1 - w) * lang[l_] + 0.05 * torch.randn(16, generator=g)
                for l_ in range(langs) for s in range(sents)]
        states[layer] = torch.stack(rows)
    rep = analyze_states(states, mids, lids, model="synthetic")
    assert rep.chosen == 5 and rep.raw_argmax == 5
    assert rep.sil_meaning[5] > 0.5 > rep.sil_language[5]
    rep.save(tmp_path / "l.json", tmp_path / "l.png")
    assert (tmp_path / "l.png").stat().st_size > 1000


def test_transfer_auroc_perfect_on_shared_signal():
    g = torch.Generator().manual_seed(0)
    harm = torch.randn(8, generator=g)
    xs, labels, langs = [], [], []
    for li in range(3):
        off = 5 * torch.randn(8, generator=g)
        for lab in (0, 1):
            for _ in range(10):
                xs.append(off + lab * 3 * harm + 0.1 * torch.randn(8, generator=g))
                labels.append(lab)
                langs.append(f"l{li}")
    out = transfer_auroc(torch.stack(xs), labels, langs)
    assert set(out) == {"l0", "l1", "l2"} and all(v == 1.0 for v in out.values())
