"""Language-aware gate calibration: centroids to identify a prompt's language, and a
threshold per language.

Why: the gate's score scale shifts by language (a model reads its weaker languages less
sharply), so one threshold set on all harmless validation prompts pooled sits above most
harmful prompts of those languages. Here each language of the fit gets the threshold that
gives the target false-positive rate on *its own* harmless validation prompts, and a prompt's
language is read from the model itself: the nearest centroid of the mean state over the
prompt at an early block (``lid_layer``; states there still cluster by language, unlike at
the bottleneck, where they are meant not to). A language with a centroid but no harmless
validation prompts keeps the pooled threshold.

Languages the fit has no labelled prompts for are still *identified*: their centroids come
from harmless parallel text (NTREX-128 news sentences, NusaX for Javanese;
:func:`identification_texts`), and they take the pooled threshold, the conservative rule,
as nothing says where their own scale sits. Without them a Swahili prompt was named Yoruba
(its nearest fit language), took Yoruba's threshold and got the Yoruba refusal opener; on
SmolLM2 they lifted identification of MultiJail's vi/bn/sw/jv prompts from 0 to 64-100 %
(docs/efficacy.md). A prompt in a language with no centroid at all is still named after its
nearest centroid.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any, Collection, Mapping, Sequence

import torch
from torch import nn

from ..capture import capture, gate_decisions
from ..errors import DataError, FitConfigError
from ..model.layers import find_layers
from ..steering.gate import LID_POOLING, identify
from ..types import HARMFUL, HARMLESS
from ..vector.file import SteeringVector
from ..vector.gate import Gate
from .calibrate import thresholds_by_language
from .data import Example, load_ntrex, load_nusax

LID_DEPTH = 0.27  # of the depth: 8 of SmolLM2's 30 blocks identified 98.6% of 14 languages


def lid_layer_for(num_layers: int, gate_layer: int) -> int:
    """The default language-identification block: about a quarter of the depth."""
    return max(0, min(gate_layer - 1, round(LID_DEPTH * num_layers)))


IDENTIFY_SOURCES = ("ntrex", "nusax")
NUSAX_LANGUAGES = ("jv",)  # NusaX's other languages are close kin of Indonesian and Javanese


def identification_texts(have: Collection[str], data_dir: str | None = None,
                         per_language: int = 40, check: int = 20, seed: int = 0,
                         sources: Sequence[str] = IDENTIFY_SOURCES
                         ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Harmless sentences of each language of ``sources`` not in ``have``: ``per_language``
    to build its centroid and ``check`` others to measure identification. Empty when the
    data folder has none of them (the fit then identifies its own languages only)."""
    pools: dict[str, list[str]] = {}
    for src in sources:
        try:
            par = load_ntrex(data_dir) if src == "ntrex" else load_nusax(data_dir)
        except (DataError, OSError):
            continue  # that corpus is not in the data folder
        keep = par.langs if src == "ntrex" else [x for x in NUSAX_LANGUAGES if x in par.langs]
        for lang in keep:
            if lang not in have and lang not in pools:
                pools[lang] = par.sentences[lang]
    fit_texts, check_texts = {}, {}
    for lang in sorted(pools):
        rows = random.Random(f"{seed}:{lang}").sample(pools[lang], min(
            len(pools[lang]), per_language + check))
        fit_texts[lang], check_texts[lang] = rows[:per_language], rows[per_language:]
    return fit_texts, check_texts


def _lid_states(model: nn.Module, tokenizer: Any, texts: Mapping[str, Sequence[str]],
                lid: int, batch_size: int, desc: str | bool) -> tuple[list[str], torch.Tensor]:
    """The language of each text of ``texts`` (in order) and its state at block ``lid``
    as the gate reads it there (:data:`LID_POOLING` over the prompt's tokens)."""
    order = [(lang, t) for lang, ts in texts.items() for t in ts]
    point = ("resid_post", lid)
    states = capture(model, tokenizer, [t for _, t in order], [point], pooling=LID_POOLING,
                     batch_size=batch_size, progress=desc)[point]
    return [lang for lang, _ in order], states


def _centroids(model: nn.Module, tokenizer: Any, texts: Mapping[str, Sequence[str]],
               lid: int, batch_size: int, desc: str | bool) -> torch.Tensor:
    """Mean state at block ``lid`` of each language's texts, in the order of ``texts``."""
    langs, states = _lid_states(model, tokenizer, texts, lid, batch_size, desc)
    return torch.stack([states[[i for i, x in enumerate(langs) if x == lang]].mean(0)
                        for lang in texts])


def add_languages(model: nn.Module, tokenizer: Any, vector: SteeringVector,
                  texts: Mapping[str, Sequence[str]],
                  check: Mapping[str, Sequence[str]] | None = None, batch_size: int = 16,
                  progress: bool = True) -> tuple[SteeringVector, dict[str, Any]]:
    """A copy of the language-aware ``vector`` that also identifies the languages of
    ``texts`` (harmless sentences; languages the gate has are skipped), with the pooled
    threshold; its thresholds and score are unchanged. The report gives, per added
    language, the share of its ``check`` sentences identified as it."""
    gate = vector.gate
    if gate is None or not gate.language_aware:
        raise FitConfigError(f"vector {vector.name!r}: adding languages needs a "
                             "language-aware gate (run `lasa calibrate` without "
                             "--add-languages first)")
    new = {lang: list(ts) for lang, ts in texts.items() if lang not in gate.languages and ts}
    if not new:
        return vector, {"added": [], "check_accuracy": {}}
    cents = _centroids(model, tokenizer, new, gate.lid_layer, batch_size,  # type: ignore[arg-type]
                       "languages: identification centroids" if progress else False)
    out = replace(gate, languages=gate.languages + tuple(new),
                  centroids=torch.cat([gate.centroids, cents]))  # type: ignore[list-item]
    acc = check_identification(model, tokenizer, out, {k: v for k, v in (check or {}).items()
                                                      if k in new}, batch_size, progress)
    return replace(vector, gate=out), {"added": sorted(new), "check_accuracy": acc}


def check_identification(model: nn.Module, tokenizer: Any, gate: Gate,
                         check: Mapping[str, Sequence[str]], batch_size: int = 16,
                         progress: bool = True) -> dict[str, float]:
    """Per language of ``check``: the share of its texts ``gate`` identifies as it."""
    if gate.lid_layer is None or not any(check.values()):
        return {}
    langs, states = _lid_states(model, tokenizer, check, gate.lid_layer, batch_size,
                                "languages: identification check" if progress else False)
    found = identify(gate, states, len(langs))
    return {lang: round(sum(f == lang for f, x in zip(found, langs) if x == lang)
                        / len(ts), 4) for lang, ts in check.items() if ts}


def calibrate_languages(model: nn.Module, tokenizer: Any, vector: SteeringVector,
                        train: Sequence[Example], val: Sequence[Example],
                        fpr: float = 0.02, lid_layer: int | None = None,
                        per_language: int = 40, batch_size: int = 16, seed: int = 0,
                        progress: bool = True,
                        identify_only: Mapping[str, Sequence[str]] | None = None
                        ) -> tuple[SteeringVector, dict[str, Any]]:
    """A copy of ``vector`` whose gate has centroids (from ``per_language`` training
    prompts of each language, and from ``identify_only``'s harmless sentences for languages
    without labelled prompts: :func:`identification_texts`) and per-language thresholds at
    ``fpr`` (from ``val``), and a report: language-identification accuracy and
    per-language TPR/FPR on ``val``."""
    gate = vector.gate
    if gate is None:
        raise ValueError(f"vector {vector.name!r} has no gate to calibrate")
    lid = lid_layer if lid_layer is not None else lid_layer_for(
        find_layers(model).num_layers, gate.layer)
    rng = random.Random(seed)
    langs = sorted({e.lang for e in train})
    texts = {lang: [e.text for e in rng.sample(
        [x for x in train if x.lang == lang], min(per_language, sum(
            x.lang == lang for x in train)))] for lang in langs}
    texts.update({lang: list(ts) for lang, ts in (identify_only or {}).items()
                  if lang not in texts and ts})
    centroids = _centroids(model, tokenizer, texts, lid, batch_size,
                           "languages: centroids" if progress else False)
    probe = replace(gate, languages=tuple(texts), centroids=centroids, lid_layer=lid,
                    thresholds={}, fpr=fpr)
    d = gate_decisions(model, tokenizer, replace(vector, gate=probe), [e.text for e in val],
                       batch_size, progress="languages: validation" if progress else False)
    labels = torch.tensor([e.label for e in val])
    vlangs = [e.lang for e in val]
    thresholds = thresholds_by_language(d.scores, labels, vlangs, langs, fpr)
    calibrated = replace(probe, thresholds=thresholds)
    out = replace(vector, gate=calibrated)
    return out, language_report(calibrated, d.scores, d.langs, labels, vlangs, fpr)


def language_report(gate: Any, scores: torch.Tensor, found: Sequence[str | None], labels: torch.Tensor,
            langs: Sequence[str], fpr: float) -> dict[str, Any]:
    fired = torch.tensor([s > gate.threshold_for(f) for s, f in zip(scores.tolist(), found)])
    per: dict[str, dict[str, float]] = {}
    for lang in sorted(set(langs)):
        m = torch.tensor([x == lang for x in langs])
        pos, neg = m & (labels == HARMFUL), m & (labels == HARMLESS)
        per[lang] = {"tpr": float(fired[pos].double().mean()) if pos.any() else float("nan"),
                     "fpr": float(fired[neg].double().mean()) if neg.any() else float("nan"),
                     "lid_accuracy": sum(f == lang for f, x in zip(found, langs) if x == lang)
                     / max(1, int(m.sum())),
                     "threshold": gate.thresholds.get(lang, gate.threshold)}
    accuracy = sum(f == x for f, x in zip(found, langs)) / max(1, len(langs))
    return {"fpr_target": fpr, "lid_layer": gate.lid_layer, "lid_accuracy": accuracy,
            "global_threshold": gate.threshold, "per_language": per}
