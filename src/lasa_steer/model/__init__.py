"""The model side: decoder blocks, identity fingerprints and loading."""

from .identity import ModelIdentity
from .layers import LayerMap, find_layers
from .loading import load_model

__all__ = ["LayerMap", "ModelIdentity", "find_layers", "load_model"]
