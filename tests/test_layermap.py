"""Layer map over architectures, hand-named block lists and tuple-returning blocks."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, HIDDEN, LAYERS, make_tiny
from torch import nn

from lasa_steer import (Gate, ModelIdentity, SteeringVector, UnsupportedArchitectureError,
                        find_layers, steer)

EXPECTED_PATH = {"gpt2": "transformer.h", "gpt_neox": "gpt_neox.layers"}


@pytest.mark.parametrize("arch", ARCHS)
def test_layer_map_of_each_architecture(arch):
    model = make_tiny(arch)
    lm = find_layers(model)
    assert lm.num_layers == LAYERS
    assert lm.hidden_size == HIDDEN
    assert lm.path == EXPECTED_PATH.get(arch, "model.layers")
    assert lm.blocks[0] is lm.block(0)
    with pytest.raises(IndexError):
        lm.block(LAYERS)


class TupleBlock(nn.Module):
    """An old-style block returning ``(hidden, extra)`` as transformers 4.x layers did."""

    def __init__(self, h: int):
        super().__init__()
        self.lin = nn.Linear(h, h)

    def forward(self, hidden_states, **kwargs):
        return (hidden_states + torch.tanh(self.lin(hidden_states)), None)


class Config:
    hidden_size = 8
    architectures = ["ToyForCausalLM"]
    model_type = "toy"


class Toy(nn.Module):
    """A model whose blocks sit at an unusual path (``stack.units``)."""

    def __init__(self):
        super().__init__()
        self.config = Config()
        self.emb = nn.Embedding(16, 8)
        self.stack = nn.Module()
        self.stack.units = nn.ModuleList([TupleBlock(8) for _ in range(3)])
        self.head = nn.Linear(8, 16)

    def get_input_embeddings(self):
        return self.emb

    def forward(self, input_ids, attention_mask=None, **kwargs):
        h = self.emb(input_ids)
        for unit in self.stack.units:
            h = unit(h)[0]
        return self.head(h)


def test_unknown_architecture_error_says_how_to_name_blocks():
    with pytest.raises(UnsupportedArchitectureError, match="blocks="):
        find_layers(Toy())


def test_blocks_named_by_hand_and_tuple_outputs_are_steered():
    torch.manual_seed(0)
    model = Toy().eval()
    lm = find_layers(model, blocks="stack.units")
    assert (lm.num_layers, lm.hidden_size, lm.architecture) == (3, 8, "ToyForCausalLM")
    direction = torch.randn(8)
    vec = SteeringVector(model=ModelIdentity.of(model, lm), directions={"refusal": {1: direction}},
                         gate=Gate(layer=0, direction=direction / direction.norm(), threshold=-1e9))
    ids = torch.tensor([[1, 2, 3]])
    vanilla = model(ids)
    seen = {}
    with steer(model, vec, strength=2.0, blocks="stack.units"):
        h = model.stack.units[1].register_forward_hook(lambda m, a, o: seen.setdefault("h", o))
        steered = model(ids)
        h.remove()
    assert isinstance(seen["h"], tuple) and seen["h"][1] is None
    assert not torch.allclose(steered, vanilla)
    assert torch.equal(model(ids), vanilla)
    with pytest.raises(UnsupportedArchitectureError, match="nope.units"):
        find_layers(model, blocks="nope.units")
