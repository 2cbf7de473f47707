"""Steering at inference time: the gate, per-row settings and state, the hook engine and
``steer()``."""

from .api import SteeringHandle, steer
from .engine import SteeringEngine
from .gate import GateDecision, decide
from .rows import RowSteering
from .state import BatchState

__all__ = ["BatchState", "GateDecision", "RowSteering", "SteeringEngine", "SteeringHandle",
           "decide", "steer"]
