"""Vector file metadata of the wrong JSON shape is a VectorFileError naming the field, and
a server's vector folder skips such a file with a warning (issue 10.2)."""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

import pytest
from helpers import make_vector
from safetensors.torch import save_file

from lasa_steer import SteeringVector, VectorFileError
from lasa_steer.vector.schema import check_metadata


def _set(path: str, value: Any) -> Callable[[dict], Any]:
    """A change of the metadata: ``path`` (dotted) set to ``value``; '' is the whole."""
    def change(meta: dict) -> Any:
        if not path:
            return value
        *parents, last = path.split(".")
        node = meta
        for key in parents:
            node = node[key]
        node[last] = value
        return meta
    return change


BROKEN = {  # change -> the field the error must name
    "list": (_set("", [1, 2]), "lasa must be an object"),
    "string": (_set("", "vector"), "lasa must be an object"),
    "directions-list": (_set("directions", ["refusal"]), "lasa.directions must be an object"),
    "clamp-list": (_set("clamp_targets", [1.0]), "lasa.clamp_targets must be an object"),
    "clamp-value": (_set("clamp_targets", {"refusal": {"1": "high"}}),
                    "lasa.clamp_targets.refusal.1 must be a number"),
    "model-string": (_set("model", "llama"), "lasa.model must be an object"),
    "layer-string": (_set("directions", {"refusal": ["1"]}),
                     r"lasa.directions.refusal\[0\] must be an integer"),
    "gate-list": (_set("gate", [1]), "lasa.gate must be an object"),
    "threshold-bool": (_set("gate.threshold", True), "lasa.gate.threshold must be a number"),
    "provenance-list": (_set("provenance", []), "lasa.provenance must be an object"),
}


def _write(path, vec: SteeringVector, change: Callable[[dict], Any]) -> None:
    meta = change(json.loads(json.dumps(vec.metadata())))
    save_file(vec.tensors(), str(path), metadata={"lasa": json.dumps(meta)})


@pytest.fixture
def vec(tiny_llama):
    return make_vector(tiny_llama, clamp_target=0.5)


@pytest.mark.parametrize("name", list(BROKEN))
def test_wrong_json_type_is_a_vector_file_error(vec, tmp_path, name):
    change, message = BROKEN[name]
    path = tmp_path / "bad.safetensors"
    _write(path, vec, change)
    with pytest.raises(VectorFileError, match=message):
        SteeringVector.load(path)


def test_schema_accepts_language_aware_gate_keys(vec):
    meta = json.loads(json.dumps(vec.metadata()))
    meta["gate"].update(languages=["en", "de"], thresholds={"en": 0.5, "de": 1},
                        fpr=0.05, lid_layer=2)
    assert check_metadata(meta, "v") is meta
    meta["gate"]["thresholds"] = {"en": "0.5"}
    with pytest.raises(VectorFileError, match="lasa.gate.thresholds.en must be a number"):
        check_metadata(meta, "v")


def test_vector_folder_skips_a_malformed_file_with_a_warning(vec, tiny_llama, tmp_path,
                                                             caplog):
    from lasa_serve.vectors import VectorRegistry

    vec.save(tmp_path / "good.safetensors")
    _write(tmp_path / "bad.safetensors", vec, BROKEN["clamp-list"][0])
    registry = VectorRegistry(tiny_llama, tmp_path)
    with caplog.at_level(logging.WARNING, logger="lasa.server"):
        registry.scan()
    assert registry.names() == ["good"] and "clamp_targets" in registry.skipped["bad"]
    assert any("bad.safetensors" in r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING)
