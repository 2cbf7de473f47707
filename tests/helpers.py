"""Test helpers: build vector files for tiny models without a fit."""

from __future__ import annotations

import torch

from lasa_steer import Gate, ModelIdentity, SteeringVector, find_layers


def make_vector(model, layers=None, gate_layer=1, threshold=0.0, site="resid_post",
                gate_site="resid_post", seed=1, norm=4.0, pooling="last",
                clamp_target=None) -> SteeringVector:
    lm = find_layers(model)
    g = torch.Generator().manual_seed(seed)
    h = lm.hidden_size
    layers = list(range(gate_layer + 1, lm.num_layers)) if layers is None else list(layers)
    direction = torch.randn(h, generator=g)
    direction = direction / direction.norm() * norm
    gate_dir = torch.randn(h, generator=g)
    gate_dir = gate_dir / gate_dir.norm()
    clamp = {"refusal": {layer: float(clamp_target) for layer in layers}} if clamp_target is not None else {}
    return SteeringVector(
        model=ModelIdentity.of(model, lm),
        directions={"refusal": {layer: direction.clone() for layer in layers}},
        gate=Gate(layer=gate_layer, direction=gate_dir, threshold=threshold, site=gate_site,
                  pooling=pooling),
        site=site, default_strength=1.0, clamp_targets=clamp,
        provenance={"method": "test"},
    )


def left_pad(seqs: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
    return ids, mask


def right_pad(seqs: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp_min(0)


class ByteTokenizer:
    """A minimal left-padding tokenizer for the tiny models (ids 3..127; 0 pad, 2 eos)."""

    pad_token_id = 0
    eos_token_id = 2
    chat_template = None
    padding_side = "left"

    def __call__(self, texts, return_tensors=None, padding=True, add_special_tokens=False):
        if isinstance(texts, str):  # capture() tokenises one text at a time
            return {"input_ids": self._ids(texts)}
        seqs = [self._ids(t) for t in texts]
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
        return {"input_ids": ids, "attention_mask": mask}

    @staticmethod
    def _ids(text):
        return [3 + (b % 125) for b in text.encode("utf-8")][-40:] or [3]

    def batch_decode(self, ids, skip_special_tokens=True):
        return ["".join(chr(97 + (int(t) % 26)) for t in row if int(t) > 2) for row in ids]
