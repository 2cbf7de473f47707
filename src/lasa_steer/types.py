"""The project's vocabularies as ``Literal`` types, and the tuples derived from them.

Every check, CLI ``choices`` list and pydantic field uses these, so a new mode, action, site
or pooling is added in one place.
"""

from __future__ import annotations

from typing import Literal, get_args

Mode = Literal["gate", "always", "off"]
# 'prefix': a fired row's reply opens with a refusal sentence in the prompt's language, then
# the model continues (steered with ``add`` of the direction at ``strength``, 0 = not at
# all); 'refuse': the reply is that sentence alone (the turn ends after it).
Action = Literal["add", "project", "clamp", "prefix", "refuse"]
OPENER_ACTIONS: tuple[str, ...] = ("prefix", "refuse")
RequestAction = Action
Site = Literal["resid_pre", "resid_post"]
Pooling = Literal["last", "mean"]
Kind = Literal["harmful", "harmless"]  # the name of a label (eval records)

MODES: tuple[str, ...] = get_args(Mode)
ACTIONS: tuple[str, ...] = get_args(Action)
REQUEST_ACTIONS: tuple[str, ...] = get_args(RequestAction)
SITES: tuple[str, ...] = get_args(Site)
POOLINGS: tuple[str, ...] = get_args(Pooling)

Point = tuple[str, int]  # (site, 0-based block index): where a hook reads or writes

# Labels of prompts (fit data): ints, so that label lists turn into tensors directly; their
# names (eval records, reports) are the Kind values.
HARMFUL, HARMLESS = 1, 0
HARMFUL_KIND: Kind = "harmful"
HARMLESS_KIND: Kind = "harmless"
KINDS: dict[int, Kind] = {HARMFUL: HARMFUL_KIND, HARMLESS: HARMLESS_KIND}


def point_order(point: Point) -> tuple[int, int]:
    """Order of hook points in the forward pass (resid_pre of i < resid_post of i)."""
    site, layer = point
    return (layer, SITES.index(site))
