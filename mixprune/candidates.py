"""What a candidate is: its id, a value that formats and parses itself, and its three axes.

Ids (the one place that spells them)::

    dense                          the dense model
    mm-<signal>-<strategy>         Mix-and-Match, unstructured (zeros in the weights)
    base-<method>-s<percent>       a global baseline at the sparsity of the candidates it is matched to
    st-<signal>-<strategy>         Mix-and-Match, structured (whole channels cut)
    st-base-<method>-m<percent>    a structured baseline at the MAC reduction of the candidates it matches
    <any of these>+<variant>       a model made from that one's ONNX file (an INT8 recipe's suffix)

Axes (strategy.json ``method``, ``family``, ``format``): how a candidate was chosen (``mixmatch``,
a matched ``baseline``, or the ``dense`` model itself), what pruning removed (``unstructured``:
zeros in the weights; ``structured``: whole channels), and what its kernels compute (``fp32``, or
``int8-<activations>``). ``kind`` (``mixmatch`` | ``baseline`` | ``structured`` | ``int8``) mixes the
three; it stays in the records for tools outside and is derived here. Standard library only.
"""

from __future__ import annotations

import dataclasses

DENSE = "dense"
MIXMATCH, BASELINE = "mixmatch", "baseline"
UNSTRUCTURED, STRUCTURED = "unstructured", "structured"
FAMILIES = (UNSTRUCTURED, STRUCTURED)
FP32 = "fp32"
INT8_PREFIX = "int8-"  # an INT8 format is int8-<activation type>: int8-uint8, int8-int8, int8-dynamic
KINDS = (MIXMATCH, BASELINE, STRUCTURED, "int8")

VARIANT_MARK = "+"
_FAMILY_PREFIX = {UNSTRUCTURED: "", STRUCTURED: "st-"}
_MIXMATCH_MARK, _BASELINE_MARK = "mm-", "base-"
_TARGET_MARK = {UNSTRUCTURED: "s", STRUCTURED: "m"}  # s<percent of weights> / m<percent of MACs>


def int8_format(activation: str) -> str:
    return INT8_PREFIX + activation


@dataclasses.dataclass(frozen=True)
class CandidateId:
    """A candidate id as a value: ``str()`` formats it, ``parse`` reads one back."""

    method: str  # mixmatch | baseline | dense
    family: str = UNSTRUCTURED
    signal: str | None = None  # Mix-and-Match: the signal; a baseline: its method (mag, snip, taylor, ...)
    strategy: str | None = None  # Mix-and-Match only
    target: float | None = None  # a baseline: the sparsity (unstructured) or MAC reduction (structured), 0..1
    variant: str | None = None  # a variant's suffix after VARIANT_MARK (int8u), else None

    @classmethod
    def dense(cls) -> CandidateId:
        return cls(DENSE)

    @classmethod
    def mixmatch(cls, family: str, signal: str, strategy: str) -> CandidateId:
        return cls(MIXMATCH, family, signal=signal, strategy=strategy)

    @classmethod
    def baseline(cls, family: str, method: str, target: float) -> CandidateId:
        return cls(BASELINE, family, signal=method, target=target)

    def with_variant(self, suffix: str) -> CandidateId:
        """The variant ``<self>+<suffix>`` (``suffix`` without the mark)."""
        return dataclasses.replace(self, variant=suffix)

    @property
    def parent(self) -> CandidateId | None:
        """The model a variant was made from; None for a model made by pruning (or dense)."""
        return dataclasses.replace(self, variant=None) if self.variant else None

    @property
    def is_variant(self) -> bool:
        return self.variant is not None

    def __str__(self) -> str:
        if self.method == DENSE:
            base = DENSE
        elif self.method == MIXMATCH:
            base = f"{_FAMILY_PREFIX[self.family]}{_MIXMATCH_MARK if self.family == UNSTRUCTURED else ''}" \
                   f"{self.signal}-{self.strategy}"
        else:
            base = f"{_FAMILY_PREFIX[self.family]}{_BASELINE_MARK}{self.signal}-" \
                   f"{_TARGET_MARK[self.family]}{self.target * 100:.2f}"
        return base if self.variant is None else f"{base}{VARIANT_MARK}{self.variant}"

    @classmethod
    def parse(cls, text: str) -> CandidateId:
        """The id ``text`` as a value; ValueError (saying which forms exist) when it is none of them."""
        base, mark, variant = text.partition(VARIANT_MARK)
        if mark and (not variant or VARIANT_MARK in variant):
            raise ValueError(_not_an_id(text))
        parsed = _parse_base(base)
        if parsed is None:
            raise ValueError(_not_an_id(text))
        return parsed.with_variant(variant) if mark else parsed


def _parse_base(text: str) -> CandidateId | None:
    if text == DENSE:
        return CandidateId.dense()
    family = STRUCTURED if text.startswith(_FAMILY_PREFIX[STRUCTURED]) else UNSTRUCTURED
    rest = text.removeprefix(_FAMILY_PREFIX[family])
    if rest.startswith(_BASELINE_MARK):
        method, _, target = rest.removeprefix(_BASELINE_MARK).rpartition("-")
        mark = _TARGET_MARK[family]
        try:
            value = float(target.removeprefix(mark)) / 100
        except ValueError:
            return None
        return CandidateId.baseline(family, method, value) if method and target.startswith(mark) else None
    if family == UNSTRUCTURED:
        if not rest.startswith(_MIXMATCH_MARK):
            return None
        rest = rest.removeprefix(_MIXMATCH_MARK)
    signal, _, strategy = rest.partition("-")
    return CandidateId.mixmatch(family, signal, strategy) if signal and strategy else None


def _not_an_id(text: str) -> str:
    return (f"'{text}' is not a candidate id (dense, mm-<signal>-<strategy>, base-<method>-s<percent>, "
            f"st-<signal>-<strategy>, st-base-<method>-m<percent>, each optionally +<variant>)")


@dataclasses.dataclass(frozen=True)
class Axes:
    """The three axes of a candidate; ``kind`` is derived from them."""

    method: str
    family: str
    format: str = FP32

    @property
    def is_int8(self) -> bool:
        return self.format != FP32

    @property
    def activation(self) -> str | None:
        """An INT8 format's activation type (uint8, int8, dynamic), else None."""
        return self.format.removeprefix(INT8_PREFIX) if self.is_int8 else None

    @property
    def kind(self) -> str:
        if self.is_int8:
            return "int8"
        if self.method == BASELINE:
            return BASELINE
        return STRUCTURED if self.family == STRUCTURED else MIXMATCH

    def record(self) -> dict:
        """strategy.json's keys for the axes, ``kind`` beside them."""
        return {"kind": self.kind, "method": self.method, "family": self.family, "format": self.format}

    def quantized(self, fmt: str) -> Axes:
        """The axes of an INT8 variant of a model with these axes."""
        return dataclasses.replace(self, format=fmt)

    @classmethod
    def of(cls, strategy: dict | None) -> Axes:
        """The axes of a strategy.json record (None: the dense model, which has none)."""
        if strategy is None:
            return cls(DENSE, UNSTRUCTURED)
        if "method" not in strategy:
            return _axes_from_kind(strategy)
        return cls(strategy["method"], strategy["family"], strategy["format"])


def _axes_from_kind(strategy: dict) -> Axes:
    """The axes of a record written before they were (``kind`` and ``mode`` only)."""
    family = strategy.get("mode", UNSTRUCTURED)
    kind = strategy["kind"]
    if kind == "int8":
        parent = strategy.get("parent_kind", DENSE)
        method = parent if parent in (DENSE, BASELINE) else MIXMATCH
        return Axes(method, family, int8_format(strategy["quantization"]["activation_type"]))
    return Axes(BASELINE if kind == BASELINE else MIXMATCH, STRUCTURED if kind == STRUCTURED else family)


# --- in words: the one place the model card, the report and the ranking take their sentences from ---
def _pct(share: float) -> str:
    return f"{share * 100:.1f}%"


def made_by(strategy: dict) -> str:
    """How a model was pruned (an INT8 variant's record holds its parent's signal and strategy)."""
    axes = Axes.of(strategy)
    family = "structured " if axes.family == STRUCTURED else ""
    if axes.method == DENSE:
        return "the dense model"
    if axes.method == MIXMATCH:
        return f"{family}Mix-and-Match (signal {strategy['signal']}, strategy {strategy['strategy']})"
    return f"the {family}{strategy['signal']} baseline ({strategy['strategy']})"


def removed(strategy: dict) -> str:
    """What pruning took out of a model, in words."""
    axes = Axes.of(strategy)
    if axes.method == DENSE:
        return "nothing pruned"
    share = _pct(strategy["global_sparsity"])
    if axes.family == STRUCTURED:
        macs = strategy.get("macs_reduction")
        return f"{share} of the prunable weights{f' and {_pct(macs)} of the MACs' if macs is not None else ''} " \
               f"cut away as whole channels"
    return f"{share} of the prunable weights zeroed (unstructured sparsity)"


def quantized_by(quantization: dict) -> str:
    """How an INT8 variant was quantized, from its ``quantization`` record."""
    q = quantization
    calibrated = bool(q.get("calibration_samples"))
    how = (f"calibrated on {q['calibration_samples']} images" if calibrated
           else "activations quantized at run time")
    per_channel = " per channel" if q.get("per_channel") else ""
    return (f"onnxruntime {'static' if calibrated else 'dynamic'} quantization ({q['format']}, "
            f"{q['activation_type']} activations, {q['weight_type']} weights{per_channel}, {how})")


def describe(strategy: dict | None, export: dict | None = None) -> str:
    """One paragraph saying what a model is, right for every method, family and format; with its
    ``export`` record (``zeros_onnx``, ``prunable_params``) an INT8 variant's zeros are counted too."""
    axes = Axes.of(strategy)
    if axes.method == DENSE and not axes.is_int8:
        return "The dense model, unpruned, fp32."
    if not axes.is_int8:
        kernels = ("onnxruntime's CPU kernels are dense, so its zeros make the file compress well, not the model "
                   "faster" if axes.family == UNSTRUCTURED else "a smaller dense model that runs smaller kernels; it "
                   "keeps no zeros")
        return f"Pruned with mixprune by {made_by(strategy)}: {removed(strategy)}; {kernels}. fp32."
    parent = ("the dense model" if axes.method == DENSE else
              f"{strategy['parent']}, pruned by {made_by(strategy)}: {removed(strategy)}")
    text = f"INT8 with mixprune: {quantized_by(strategy['quantization'])} of {parent}."
    if export is None:
        return text
    int8_zeros = export["zeros_onnx"] / max(export["prunable_params"], 1)
    if axes.family == UNSTRUCTURED and axes.method != DENSE:
        return text + f" The parent's zeros are kept in the int8 weights: {_pct(int8_zeros)} of them are zero."
    return text + f" {_pct(int8_zeros)} of its int8 prunable weights are zero."
