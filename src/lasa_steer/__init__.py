"""lasa-steer: language-agnostic safety steering at the semantic bottleneck.

>>> from lasa_steer import load_model, steer
>>> model, tok = load_model("smollm2-135m-instruct")
>>> with steer(model, "smollm2-135m-instruct") as handle:
...     out = model.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=64)
"""

__version__ = "0.1.0"

from . import errors
from .errors import (
    DataError,
    LasaError,
    ModelLoadError,
    SteeringConfigError,
    UnsupportedArchitectureError,
    VectorFileError,
    VectorMismatchError,
)
from .model import LayerMap, ModelIdentity, find_layers, load_model
from .steering import BatchState, RowSteering, SteeringEngine, SteeringHandle, steer
from .vector import Gate, SteeringVector

__all__ = [
    "BatchState", "DataError", "Gate", "LasaError", "LayerMap", "ModelIdentity",
    "ModelLoadError", "RowSteering", "SteeringConfigError", "SteeringEngine",
    "SteeringHandle", "SteeringVector", "UnsupportedArchitectureError", "VectorFileError",
    "VectorMismatchError", "errors", "find_layers", "load_model", "steer",
]
