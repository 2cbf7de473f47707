"""Refusal judges: the offline pattern judge (default) and an OpenAI-compatible endpoint."""

from .pattern import Judge, Judgement, PatternJudge, classify, is_refusal

__all__ = ["Judge", "Judgement", "PatternJudge", "classify", "is_refusal"]
