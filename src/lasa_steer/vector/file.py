"""The vector file: every direction lasa-steer needs for one model, with full metadata.

A vector file is a ``.safetensors`` file. Its tensors (each of shape ``[hidden_size]``):

* ``gate.direction``: the unit harmfulness direction read at the bottleneck (optional);
* ``direction.<name>.<block>``: a behaviour direction named ``<name>`` applied at 0-based
  block ``<block>`` at the file's ``site`` (``resid_pre`` = block input,
  ``resid_post`` = block output).

The header's ``lasa`` metadata entry is JSON (see :meth:`SteeringVector.metadata`): format
version, model identity, gate (layer, site, threshold, pooling), the behaviour site and
layers, default action and strength, clamp targets and provenance.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import SteeringConfigError, VectorFileError, VectorMismatchError
from ..model.identity import ModelIdentity
from ..model.layers import find_layers
from ..types import ACTIONS, POOLINGS, SITES
from .gate import Gate, check_language_gate, check_points, language_fields, point_fields
from .probe import probe_fields
from .schema import check_metadata
from .shipped import resolve_vector

FORMAT_VERSION = 4  # the newest format this version writes
READ_VERSIONS = (1, 2, 3, 4)
_NAME_RE = re.compile(r"^[A-Za-z0-9_\-]+$")
_DIR_KEY = re.compile(r"^direction\.([A-Za-z0-9_\-]+)\.(\d+)$")


def _tool_version() -> str:
    from .. import __version__

    return __version__


@dataclass
class SteeringVector:
    """Directions for one model plus how to apply them. Load with :meth:`load`."""

    model: ModelIdentity
    directions: dict[str, dict[int, torch.Tensor]]
    gate: Gate | None = None
    site: str = "resid_post"
    default_direction: str = "refusal"
    default_action: str = "add"
    default_strength: float = 1.0
    clamp_targets: dict[str, dict[int, float]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    # copies of this vector at other operating points (:meth:`at_operating_point`), made
    # once each so that every request at one point shares one gate object
    _points: dict[str, "SteeringVector"] = field(default_factory=dict, init=False,
                                                 repr=False, compare=False)

    # ---------------------------------------------------------------- accessors
    def at_operating_point(self, name: str | None) -> "SteeringVector":
        """This vector with its gate at operating point ``name`` (see
        :class:`~lasa_steer.vector.gate.OperatingPoint`); None: as it is. Raise
        :class:`~lasa_steer.errors.SteeringConfigError` for a name the gate lacks."""
        if name is None:
            return self
        if self.gate is None:
            raise SteeringConfigError(f"operating_point={name!r}: vector {self.name!r} has "
                                      "no gate", field="operating_point")
        gate = self.gate.at(name)
        if gate is self.gate:
            return self
        if name not in self._points:
            self._points[name] = replace(self, gate=gate)
        return self._points[name]

    @property
    def name(self) -> str:
        return Path(self.path).stem if self.path else self.model.name

    def layers(self, direction: str | None = None) -> list[int]:
        return sorted(self.directions[direction or self.default_direction])

    def direction(self, name: str | None = None) -> dict[int, torch.Tensor]:
        key = name or self.default_direction
        if key not in self.directions:
            raise KeyError(
                f"vector {self.name!r} has no direction {key!r}; it has "
                f"{sorted(self.directions)}"
            )
        return self.directions[key]

    @property
    def format_version(self) -> int:
        """The oldest format that holds this vector: 4 with operating points or a
        probability scale, 3 with an MLP probe gate, 2 with a language-aware gate (older
        readers must refuse them), else 1."""
        if self.gate is not None and (self.gate.operating_points or
                                      self.gate.probability_scale is not None):
            return 4
        if self.gate is not None and self.gate.probe is not None:
            return 3
        return 2 if self.gate is not None and self.gate.language_aware else 1

    def metadata(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "model": self.model.to_dict(),
            "gate": self.gate.meta() if self.gate else None,
            "site": self.site,
            "directions": {n: sorted(d) for n, d in self.directions.items()},
            "default_direction": self.default_direction,
            "default_action": self.default_action,
            "default_strength": self.default_strength,
            "clamp_targets": {n: {str(k): v for k, v in d.items()}
                              for n, d in self.clamp_targets.items()},
            "provenance": {"tool_version": _tool_version(), **self.provenance},
            "extra": self.extra,
        }

    # ---------------------------------------------------------------- validation
    def validate(self, source: str = "vector") -> None:
        """Check internal consistency; raise :class:`VectorFileError` naming the field."""
        def bad(msg: str) -> VectorFileError:
            return VectorFileError(f"{source}: {msg}")

        def one_of(name: str, value: object, choices: tuple[str, ...]) -> None:
            if value not in choices:
                raise bad(f"{name} {value!r} is not one of {choices}")

        h, n = self.model.hidden_size, self.model.num_layers
        one_of("site", self.site, SITES)
        one_of("default_action", self.default_action, ACTIONS)
        if not math.isfinite(self.default_strength):
            raise bad("default_strength is not finite")
        if not self.directions and self.gate is None:
            raise bad("holds neither a gate nor any direction")
        if self.directions and self.default_direction not in self.directions:
            raise bad(f"default_direction {self.default_direction!r} not among "
                      f"{sorted(self.directions)}")
        tensors: list[tuple[str, torch.Tensor]] = []
        for dname, per_layer in self.directions.items():
            if not _NAME_RE.match(dname):
                raise bad(f"direction name {dname!r} must match {_NAME_RE.pattern}")
            if not per_layer:
                raise bad(f"direction {dname!r} applies to no layer")
            for layer, vec in per_layer.items():
                if not 0 <= int(layer) < n:
                    raise bad(f"direction {dname!r} block index {layer} outside 0..{n - 1}")
                tensors.append((f"direction.{dname}.{layer}", vec))
        for dname, targets in self.clamp_targets.items():
            for layer, value in targets.items():
                if not math.isfinite(float(value)):
                    raise bad(f"clamp target of {dname!r} at block {layer} is not finite")
        if self.gate is not None:
            g = self.gate
            if not 0 <= g.layer < n:
                raise bad(f"gate.layer {g.layer} outside 0..{n - 1}")
            one_of("gate.site", g.site, SITES)
            one_of("gate.pooling", g.pooling, POOLINGS)
            if not math.isfinite(g.threshold):
                raise bad("gate.threshold is not finite")
            tensors.append(("gate.direction", g.direction))
            if g.language_aware:
                check_language_gate(g, n, h, bad)
            if g.probe is not None:
                g.probe.check(h, bad)
            check_points(g, bad)
        for key, t in tensors:
            if tuple(t.shape) != (h,):
                raise bad(f"tensor {key!r} has shape {tuple(t.shape)}, expected ({h},) "
                          f"(model.hidden_size)")
            if not torch.isfinite(t).all():
                raise bad(f"tensor {key!r} holds NaN or inf values")
            if float(t.float().norm()) == 0.0:
                raise bad(f"tensor {key!r} is all zeros")

    # ---------------------------------------------------------------- save / load
    def tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for dname, per_layer in self.directions.items():
            for layer, vec in per_layer.items():
                out[f"direction.{dname}.{int(layer)}"] = vec.detach().float().cpu().contiguous()
        if self.gate is not None:
            out["gate.direction"] = self.gate.direction.detach().float().cpu().contiguous()
            if self.gate.centroids is not None:
                out["gate.centroids"] = self.gate.centroids.detach().float().cpu().contiguous()
            if self.gate.probe is not None:
                out.update(self.gate.probe.tensors())
        return out

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Validate and write atomically (temp file in the same folder, then rename)."""
        target = Path(path)
        self.validate(source=str(target))
        target.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format_version": str(self.format_version),
                "lasa": json.dumps(self.metadata(), sort_keys=True)}
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        try:
            save_file(self.tensors(), tmp, metadata=meta)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.path = str(target)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "SteeringVector":
        """Read and validate a vector file (a path, or the name of a shipped vector such as
        ``"smollm2-135m-instruct"``); raise :class:`VectorFileError` on any defect."""
        p = resolve_vector(path)
        try:
            with safe_open(str(p), framework="pt") as f:
                header = f.metadata() or {}
                # clone: never keep views of a memory-mapped file that may be overwritten later
                tensors = {k: f.get_tensor(k).clone() for k in f.keys()}
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise VectorFileError(f"{p}: not a readable safetensors file ({exc})") from exc
        if "lasa" not in header:
            raise VectorFileError(f"{p}: header has no 'lasa' metadata; not a lasa-steer "
                                  "vector file (llama.cpp control vectors are .gguf)")
        try:
            meta = json.loads(header["lasa"])
        except json.JSONDecodeError as exc:
            raise VectorFileError(f"{p}: 'lasa' metadata is not valid JSON ({exc})") from exc
        check_metadata(meta, str(p))
        version = meta.get("format_version")
        if version not in READ_VERSIONS:
            raise VectorFileError(f"{p}: format_version {version!r} is not supported "
                                  f"(this lasa-steer reads versions {list(READ_VERSIONS)}); "
                                  "upgrade lasa-steer or refit the vector")
        try:
            vector = cls._from_parts(meta, tensors, p)
        except (KeyError, TypeError, ValueError) as exc:
            raise VectorFileError(f"{p}: metadata field missing or malformed: {exc!r}") from exc
        vector.validate(source=str(p))
        return vector

    @classmethod
    def _from_parts(cls, meta: dict, tensors: dict[str, torch.Tensor], p: Path):
        directions: dict[str, dict[int, torch.Tensor]] = {}
        for key, t in tensors.items():
            m = _DIR_KEY.match(key)
            if m:
                directions.setdefault(m.group(1), {})[int(m.group(2))] = t.float()
            elif key not in ("gate.direction", "gate.centroids") and \
                    not key.startswith("gate.probe."):
                raise ValueError(f"unexpected tensor {key!r}")
        declared = {n: sorted(int(x) for x in ls) for n, ls in meta["directions"].items()}
        found = {n: sorted(d) for n, d in directions.items()}
        if declared != found:
            raise VectorFileError(f"{p}: tensors {found} do not match the declared "
                                  f"directions {declared}")
        gate = None
        if meta.get("gate"):
            gm = meta["gate"]
            if "gate.direction" not in tensors:
                raise VectorFileError(f"{p}: metadata declares a gate but tensor "
                                      "'gate.direction' is missing")
            gate = Gate(layer=int(gm["layer"]), direction=tensors["gate.direction"].float(),
                        threshold=float(gm["threshold"]), site=str(gm["site"]),
                        pooling=str(gm.get("pooling", "last")), **language_fields(gm, tensors, p),
                        **probe_fields(gm, tensors, p), **point_fields(gm))
        return cls(
            model=ModelIdentity.from_dict(meta["model"]),
            directions=directions,
            gate=gate,
            site=str(meta["site"]),
            default_direction=str(meta.get("default_direction", "refusal")),
            default_action=str(meta.get("default_action", "add")),
            default_strength=float(meta.get("default_strength", 1.0)),
            clamp_targets={n: {int(k): float(v) for k, v in d.items()}
                           for n, d in meta.get("clamp_targets", {}).items()},
            provenance=dict(meta.get("provenance", {})),
            extra=dict(meta.get("extra", {})),
            path=str(p),
        )

    # ---------------------------------------------------------------- model checks
    def check_model(self, model: torch.nn.Module, blocks: str | None = None,
                    allow_mismatch: bool = False) -> None:
        """Raise :class:`~lasa_steer.errors.VectorMismatchError` if this vector does not fit
        ``model``. With ``allow_mismatch`` only the hidden size and layer range are checked
        (they must hold for the hooks to work at all)."""
        lm = find_layers(model, blocks)
        ident = ModelIdentity.of(model, lm)
        if allow_mismatch:
            shape_only = ModelIdentity(self.model.name, self.model.architecture,
                                       self.model.hidden_size, ident.num_layers, "", [])
            shape_only.check_fits(ident, source=f"vector {self.name!r}")
            used = [layer for d in self.directions.values() for layer in d]
            used += [self.gate.layer] if self.gate else []
            if used and max(used) >= lm.num_layers:
                raise VectorMismatchError(
                    f"vector {self.name!r} uses block {max(used)} but the model has "
                    f"{lm.num_layers} blocks", field="num_layers")
            return
        self.model.check_fits(ident, source=f"vector {self.name!r}")

