"""vLLM's prefix cache under steering: which cached KV a request may read, and under which
``cache_salt`` its own KV is cached.

vLLM reuses the KV of a prompt's leading full blocks when an earlier request computed the
same tokens under the same ``cache_salt`` (the salt enters the first block's hash, so the
whole chain). A steered request's KV differs from an unsteered one's wherever it was
steered, so, per request, when it is admitted (:func:`apply`, in the process that admits
requests):

* unsteered (``off``), and ``always`` rows that steer no prompt token (``refuse``, or
  ``prefix`` at strength 0: the opener alone): their KV is the model's own. They read and
  write the ordinary cache, shared with vanilla requests.
* ``always`` rows that steer prompt tokens (``add``/``project``/``clamp``, ``prefix`` at a
  non-zero strength): their KV depends on the vector file and the settings; they get a salt
  derived from those (a digest of the file's bytes, the direction, action, strength), so
  they share KV with requests steered the same way only.
* ``gate`` rows never read the cache: the gate (and the language read) pools the prompt's
  states, which a cache hit would skip, and a cached prefix of a fired request was steered.
  Those that cannot steer their prompt (``refuse``, ``prefix`` at 0) write the ordinary
  cache (their KV is the model's own, fired or not); the others write under a salt of their
  settings that no request reads.

A request's own ``cache_salt`` (vLLM's per-request isolation) is kept in front of the
steering's. Without a configured install in this process (no vector names known), every
request is treated as possibly steered by an unknown file: it reads nothing and writes
under a salt of its own. Importing this module does not import vLLM.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

from ...errors import LasaError
from ...steering.openers import Openers
from ...steering.rows import RowSteering
from ...vector.file import SteeringVector
from ...vector.shipped import resolve_vector
from .params import Defaults, parse, resolve

SALT_PREFIX = "lasa-"
_NO_OPENERS = Openers({}, None)  # resolve() needs openers for prefix/refuse; never forced here


@dataclass(frozen=True)
class CacheTerms:
    """How one request uses the prefix cache: ``read`` cached blocks or not, and the
    steering's part of its ``cache_salt`` (None: the ordinary cache)."""

    read: bool
    salt: str | None


ORDINARY = CacheTerms(read=True, salt=None)


def terms_of(row: RowSteering, file_digest: str) -> CacheTerms:
    """The rule of the module docstring for a resolved row."""
    if row.mode == "off" or row.vector is None:
        return ORDINARY
    steers_prompt = bool(row.steer_points())
    salt = None
    if steers_prompt:
        key = json.dumps([file_digest, row.mode, row.action, row.direction, row.strength,
                          list(row.layers or ())])
        salt = SALT_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:32]
    return CacheTerms(read=row.mode != "gate", salt=salt)


class CachePolicy:
    """The vector files and defaults the workers were given (in the admitting process)."""

    vectors: ClassVar[dict[str, SteeringVector] | None] = None  # None: not configured
    digests: ClassVar[dict[str, str]] = {}
    defaults: ClassVar[Defaults] = Defaults()

    @classmethod
    def configure(cls, paths: Mapping[str, str], defaults: Defaults) -> None:
        """Load the files the workers installed (their bytes' digest names their KV)."""
        vectors, digests = {}, {}
        for name, path in paths.items():
            file = resolve_vector(path)
            vectors[name] = SteeringVector.load(file)
            digests[name] = hashlib.sha256(Path(file).read_bytes()).hexdigest()
        cls.vectors, cls.digests, cls.defaults = vectors, digests, defaults

    @classmethod
    def reset(cls) -> None:
        cls.vectors, cls.digests, cls.defaults = None, {}, Defaults()

    @classmethod
    def terms(cls, extra_args: Mapping[str, Any] | None) -> CacheTerms:
        """The request's :class:`CacheTerms` from its ``lasa_*`` keys."""
        if cls.vectors is None:
            return CacheTerms(read=False, salt=SALT_PREFIX + "unconfigured-" + uuid.uuid4().hex)
        try:
            settings = parse(extra_args)
            row = resolve(settings, cls.vectors, cls.defaults, _NO_OPENERS)
            name = settings.vector or cls.defaults.vector
        except LasaError:  # refused at admission by the logits processor
            return CacheTerms(read=False, salt=SALT_PREFIX + "invalid-" + uuid.uuid4().hex)
        return terms_of(row, cls.digests.get(name or "", ""))


def apply(engine_request: Any) -> None:
    """Set an admitted ``EngineCoreRequest``'s ``cache_salt`` and its sampling parameters'
    ``skip_reading_prefix_cache`` by :meth:`CachePolicy.terms`."""
    params = getattr(engine_request, "sampling_params", None)
    if params is None:  # pooling requests are not steered
        return
    terms = CachePolicy.terms(getattr(params, "extra_args", None))
    if not terms.read:
        params.skip_reading_prefix_cache = True
    if terms.salt is not None:
        own = engine_request.cache_salt
        engine_request.cache_salt = terms.salt if not own else f"{own}|{terms.salt}"
