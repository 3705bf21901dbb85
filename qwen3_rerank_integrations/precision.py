"""Does an accelerator give the same scores as CPU fp32? The precision check, as a library.

The Ascend deployment reports checked this by hand: score a few (query, document) pairs on the NPU and on the
CPU with the same checkpoint, and compare. :func:`check_device` does it with a fixed built-in set
(:data:`PRECISION_SET`: English and Chinese queries, each with a relevant, a related and an unrelated
document), and :func:`compare_scores` turns the two score sets into a :class:`PrecisionReport`:

- **max / mean absolute difference** of the scores (P("yes") in [0, 1]);
- **rank agreement**: Kendall's tau between the two rankings of each query's documents, averaged over queries;
- **top-1 agreement**: the share of queries whose best document is the same on both sides;
- **top-5 / top-10 overlap**: the share of each query's reference top-k that is also in the device's top-k,
  averaged over queries (what a RAG pipeline that keeps k documents sees change); None where a query has no
  more than k documents.

``check_device`` scores the :data:`CANARY_SET` by default: each query of :data:`PRECISION_SET` against all 16 of
its documents and 4 more (20 documents a query, 80 pairs), so a top-10 is a real cut.

Pass/fail thresholds (all overridable):

- max abs diff ≤ 1e-4 for float32, ≤ 0.02 for bfloat16/float16 (:data:`DEFAULT_MAX_ABS_DIFF`);
- mean rank agreement ≥ 0.9 (:data:`DEFAULT_MIN_RANK_AGREEMENT`);
- top-1 agreement = 1.0, every query (:data:`DEFAULT_MIN_TOP1_AGREEMENT`).

Two documents whose CPU scores differ by no more than the accepted score error (``max_abs_diff``) are a tie:
a device within tolerance may order them either way, so such pairs do not count against rank or top-1
agreement. Otherwise two near-zero scores of unrelated documents would fail a healthy bf16 device.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field

from .devices import CpuBf16Support

__all__ = [
    "CANARY_SET",
    "DEFAULT_MAX_ABS_DIFF",
    "DEFAULT_MIN_RANK_AGREEMENT",
    "DEFAULT_MIN_TOP1_AGREEMENT",
    "PRECISION_SET",
    "PrecisionQuery",
    "PrecisionReport",
    "QueryAgreement",
    "check_device",
    "compare_scores",
    "default_max_abs_diff",
    "rank_agreement",
    "top_k_overlap",
]


class PrecisionQuery(BaseModel):
    """One query of the precision set and the documents scored against it."""

    model_config = ConfigDict(frozen=True)

    query: str
    documents: tuple[str, ...]


# Each query has a relevant answer, a near-miss on the same topic and unrelated text (one cross-language),
# so a real checkpoint spreads the scores out and a broken device shows up as moved scores or a swapped order.
PRECISION_SET: tuple[PrecisionQuery, ...] = (
    PrecisionQuery(
        query="What is the capital of China?",
        documents=(
            "The capital of China is Beijing.",
            "Shanghai is the largest city in China by population.",
            "北京是中华人民共和国的首都。",
            "Gravity is a force that attracts two bodies toward each other.",
        ),
    ),
    PrecisionQuery(
        query="How do I reset a forgotten root password on Linux?",
        documents=(
            "Boot into single-user mode, mount the root file system read-write and run passwd to set a new password.",
            "Strong passwords mix upper and lower case letters, digits and symbols.",
            "Linux is a family of open-source Unix-like operating systems.",
            "Bananas are rich in potassium and easy to digest.",
        ),
    ),
    PrecisionQuery(
        query="什么是光合作用？",
        documents=(
            "光合作用是绿色植物利用光能，把二氧化碳和水转化为有机物并释放氧气的过程。",
            "叶绿素使植物的叶子呈现绿色。",
            "Photosynthesis converts light energy into chemical energy stored in glucose.",
            "上海是中国最大的城市之一。",
        ),
    ),
    PrecisionQuery(
        query="如何用电饭煲煮米饭？",
        documents=(
            "把米淘洗干净，按米和水一比一点二的比例加水，放入电饭煲按下煮饭键，跳闸后再焖十分钟即可。",
            "大米是亚洲许多国家的主食。",
            "面条是用小麦面粉做成的。",
            "The Great Wall of China is thousands of kilometres long.",
        ),
    ),
)

_CANARY_EXTRA_DOCUMENTS = (
    "Beijing hosted the Summer Olympic Games in 2008.",
    "To change a user's password on Linux, run passwd followed by the user name as root.",
    "植物通过根从土壤中吸收水分和矿物质。",
    "电饭煲是一种用电加热来煮饭的厨房电器。",
)
# Every precision query against every document of the set and four more near-misses: 20 documents a query, so
# the top-5 and top-10 are real cuts and most documents are unrelated to the query, as in a retriever's list.
CANARY_SET: tuple[PrecisionQuery, ...] = tuple(
    PrecisionQuery(
        query=item.query,
        documents=tuple(doc for other in PRECISION_SET for doc in other.documents) + _CANARY_EXTRA_DOCUMENTS,
    )
    for item in PRECISION_SET
)

DEFAULT_MAX_ABS_DIFF = {"float32": 1e-4, "bfloat16": 0.02, "float16": 0.02}
DEFAULT_MIN_RANK_AGREEMENT = 0.9
DEFAULT_MIN_TOP1_AGREEMENT = 1.0


def default_max_abs_diff(dtype: str) -> float:
    """The default score tolerance for a resolved dtype name (``"float32"``, ``"bfloat16"``, ``"float16"``)."""
    try:
        return DEFAULT_MAX_ABS_DIFF[dtype]
    except KeyError:
        raise ValueError(f"dtype must be one of {sorted(DEFAULT_MAX_ABS_DIFF)}, got {dtype!r}") from None


def rank_agreement(reference: Sequence[float], candidate: Sequence[float], *, tie_tolerance: float = 0.0) -> float:
    """Kendall's tau between two scorings of the same documents, in [-1, 1] (1: same order).

    Only pairs whose reference scores differ by more than ``tie_tolerance`` count; a pair the candidate
    scores equal counts as neither agreeing nor disagreeing. With no countable pair the orders agree (1.0).
    """
    if len(reference) != len(candidate):
        raise ValueError(
            f"reference and candidate must have the same length, got {len(reference)} and {len(candidate)}"
        )
    agreeing = disagreeing = counted = 0
    for i in range(len(reference)):
        for j in range(i + 1, len(reference)):
            reference_gap = reference[i] - reference[j]
            if abs(reference_gap) <= tie_tolerance:
                continue
            counted += 1
            candidate_gap = candidate[i] - candidate[j]
            if reference_gap * candidate_gap > 0:
                agreeing += 1
            elif reference_gap * candidate_gap < 0:
                disagreeing += 1
    return 1.0 if counted == 0 else (agreeing - disagreeing) / counted


def top_k_overlap(reference: Sequence[float], candidate: Sequence[float], k: int) -> float | None:
    """The share of the reference's k best documents that are among the candidate's k best, in [0, 1]; None when
    there are no more than ``k`` documents (every document is then in both top-k: nothing to measure)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k!r}")
    if len(reference) != len(candidate):
        raise ValueError(
            f"reference and candidate must have the same length, got {len(reference)} and {len(candidate)}"
        )
    if len(reference) <= k:
        return None

    def best(scores: Sequence[float]) -> set[int]:
        return set(sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k])

    return len(best(reference) & best(candidate)) / k


def _mean_or_none(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return sum(known) / len(known) if known else None


def _same_top1(reference: Sequence[float], candidate: Sequence[float], tie_tolerance: float) -> bool:
    # The candidate's best document must be one of the reference's best (within the tolerance).
    candidate_best = max(range(len(candidate)), key=candidate.__getitem__)
    return max(reference) - reference[candidate_best] <= tie_tolerance


class QueryAgreement(BaseModel):
    """How one query's scores compare between the reference (CPU fp32) and the device."""

    query: str
    reference_scores: list[float]
    device_scores: list[float]
    max_abs_diff: float
    rank_agreement: float = Field(description="Kendall's tau of the two orders (ties within tolerance skipped).")
    top1_match: bool
    top5_overlap: float | None = Field(None, description="Share of the reference top-5 in the device top-5.")
    top10_overlap: float | None = Field(None, description="Share of the reference top-10 in the device top-10.")


class PrecisionReport(BaseModel):
    """The outcome of a precision check: the numbers, the thresholds they were held to, and the verdict."""

    device: str = Field(description="The device checked, e.g. 'npu:0'.")
    dtype: str = Field(description="The dtype the device ran in, e.g. 'bfloat16'.")
    reference: str = Field("cpu float32", description="What the device was compared with.")
    max_abs_diff: float
    mean_abs_diff: float
    rank_agreement: float = Field(description="Mean over queries of Kendall's tau.")
    top1_agreement: float = Field(description="Share of queries with the same best document.")
    top5_overlap: float | None = Field(
        None, description="Mean over queries of the share of the reference top-5 in the device top-5 (None: no "
        "query has more than 5 documents)."
    )
    top10_overlap: float | None = Field(
        None, description="Mean over queries of the share of the reference top-10 in the device top-10 (None: no "
        "query has more than 10 documents)."
    )
    threshold_max_abs_diff: float
    threshold_rank_agreement: float
    threshold_top1_agreement: float
    queries: list[QueryAgreement]
    failures: list[str] = Field(description="Why the check failed, one line per failed threshold; empty on pass.")
    cpu: CpuBf16Support | None = Field(
        None, description="The CPU's bf16 units and the dtype advice for it, when the device checked is the CPU."
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def passed(self) -> bool:
        """True when every threshold held."""
        return not self.failures


def _check_threshold(name: str, value: float, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value!r}")
    return float(value)


def _check_thresholds(max_abs_diff: float, min_rank_agreement: float, min_top1_agreement: float) -> None:
    _check_threshold("max_abs_diff", max_abs_diff, 0.0, 1.0)
    _check_threshold("min_rank_agreement", min_rank_agreement, -1.0, 1.0)
    _check_threshold("min_top1_agreement", min_top1_agreement, 0.0, 1.0)


def compare_scores(
    reference: Sequence[Sequence[float]],
    candidate: Sequence[Sequence[float]],
    *,
    queries: Sequence[str] | None = None,
    device: str = "unknown",
    dtype: str = "unknown",
    max_abs_diff: float = DEFAULT_MAX_ABS_DIFF["bfloat16"],
    min_rank_agreement: float = DEFAULT_MIN_RANK_AGREEMENT,
    min_top1_agreement: float = DEFAULT_MIN_TOP1_AGREEMENT,
) -> PrecisionReport:
    """Compare per-query score lists from the reference and the device, and judge them against the thresholds.

    Args:
        reference: for each query, the reference (CPU fp32) scores of its documents.
        candidate: the device's scores, same shape.
        queries: the query texts, for the report; defaults to ``"query 1"``, ``"query 2"``...
        device, dtype: what produced ``candidate``, for the report.
        max_abs_diff: the largest score difference accepted (also the tie tolerance for ranking).
        min_rank_agreement: the lowest mean Kendall's tau accepted.
        min_top1_agreement: the lowest share of queries with the same best document accepted.

    Raises:
        ValueError: the shapes differ, a query has no documents, a score is not finite, or a threshold is
            out of range.
    """
    _check_thresholds(max_abs_diff, min_rank_agreement, min_top1_agreement)
    if len(reference) != len(candidate) or not reference:
        raise ValueError(
            f"reference and candidate must hold the same number (> 0) of queries, got {len(reference)} and "
            f"{len(candidate)}"
        )
    names = list(queries) if queries is not None else [f"query {i + 1}" for i in range(len(reference))]
    if len(names) != len(reference):
        raise ValueError(f"queries must name each of the {len(reference)} queries, got {len(names)}")
    per_query: list[QueryAgreement] = []
    for number, (name, ref, cand) in enumerate(zip(names, reference, candidate)):
        if len(ref) != len(cand) or not ref:
            raise ValueError(
                f"query {number}: reference and candidate must score the same documents (> 0), got {len(ref)} "
                f"and {len(cand)} scores"
            )
        if not all(math.isfinite(x) for x in (*ref, *cand)):
            raise ValueError(f"query {number}: every score must be a finite number")
        per_query.append(
            QueryAgreement(
                query=name,
                reference_scores=list(ref),
                device_scores=list(cand),
                max_abs_diff=max(abs(r - c) for r, c in zip(ref, cand)),
                rank_agreement=rank_agreement(ref, cand, tie_tolerance=max_abs_diff),
                top1_match=_same_top1(ref, cand, max_abs_diff),
                top5_overlap=top_k_overlap(ref, cand, 5),
                top10_overlap=top_k_overlap(ref, cand, 10),
            )
        )
    diffs = [abs(r - c) for q in per_query for r, c in zip(q.reference_scores, q.device_scores)]
    report_numbers = {
        "max_abs_diff": max(diffs),
        "mean_abs_diff": sum(diffs) / len(diffs),
        "rank_agreement": sum(q.rank_agreement for q in per_query) / len(per_query),
        "top1_agreement": sum(q.top1_match for q in per_query) / len(per_query),
        "top5_overlap": _mean_or_none([q.top5_overlap for q in per_query]),
        "top10_overlap": _mean_or_none([q.top10_overlap for q in per_query]),
    }
    failures = []
    if report_numbers["max_abs_diff"] > max_abs_diff:
        failures.append(f"max abs diff {report_numbers['max_abs_diff']:.3g} > {max_abs_diff:g}")
    if report_numbers["rank_agreement"] < min_rank_agreement:
        failures.append(f"rank agreement {report_numbers['rank_agreement']:.3f} < {min_rank_agreement:g}")
    if report_numbers["top1_agreement"] < min_top1_agreement:
        failures.append(f"top-1 agreement {report_numbers['top1_agreement']:.3f} < {min_top1_agreement:g}")
    return PrecisionReport(
        device=device,
        dtype=dtype,
        threshold_max_abs_diff=max_abs_diff,
        threshold_rank_agreement=min_rank_agreement,
        threshold_top1_agreement=min_top1_agreement,
        queries=per_query,
        failures=failures,
        **report_numbers,
    )


def _score_set(scorer: Any, pairs: Sequence[PrecisionQuery]) -> list[list[float]]:
    return [scorer.score(item.query, list(item.documents)) for item in pairs]


def check_device(
    model: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    max_abs_diff: float | None = None,
    min_rank_agreement: float = DEFAULT_MIN_RANK_AGREEMENT,
    min_top1_agreement: float = DEFAULT_MIN_TOP1_AGREEMENT,
    pairs: Sequence[PrecisionQuery] = CANARY_SET,
    **scorer_options: Any,
) -> PrecisionReport:
    """Score ``pairs`` with ``model`` on ``device``/``dtype`` and on CPU fp32, and compare.

    The two models are loaded one after the other (the device one first, so an unavailable device fails
    fast), never both at once: the CPU fp32 copy needs about 4 bytes per parameter of RAM (~2.4 GB for
    the 0.6B, ~32 GB for the 8B). On CPU in float32 the device *is* the reference and loads once.

    Args:
        model: a local checkpoint folder or a hub id, as for :class:`~qwen3_rerank_integrations.LocalScorer`.
        device, dtype: the accelerator and dtype to check (``"auto"`` as in LocalScorer).
        max_abs_diff: the accepted score error; ``None`` picks it from the resolved dtype
            (:data:`DEFAULT_MAX_ABS_DIFF`).
        min_rank_agreement, min_top1_agreement: see :func:`compare_scores`.
        pairs: the queries and documents to score; the built-in :data:`CANARY_SET` by default (80 pairs).
        **scorer_options: other LocalScorer fields (``source``, ``revision``, ``local_files_only``...).

    Raises:
        TypeError, ValueError: bad arguments, before any model is loaded.
        DeviceNotAvailableError: ``device`` is not available here.
        ModelLoadError: the model could not be loaded.
    """
    from .devices import cpu_bf16_support, empty_cache, resolve_dtype
    from .local import LocalScorer

    if max_abs_diff is not None:
        _check_thresholds(max_abs_diff, min_rank_agreement, min_top1_agreement)
    if not pairs:
        raise ValueError("pairs must hold at least one query")
    on_device = LocalScorer(model, device=device, dtype=dtype, **scorer_options)
    torch_device = on_device.torch_device  # raises DeviceNotAvailableError before anything loads
    dtype_name = str(resolve_dtype(dtype, torch_device)).removeprefix("torch.")
    tolerance = default_max_abs_diff(dtype_name) if max_abs_diff is None else max_abs_diff
    _check_thresholds(tolerance, min_rank_agreement, min_top1_agreement)

    device_scores = _score_set(on_device, pairs)
    if torch_device.type == "cpu" and dtype_name == "float32":
        reference_scores = device_scores  # the reference itself: loading it again would give the same numbers
    else:
        del on_device
        gc.collect()  # free the device copy before the CPU copy loads
        empty_cache(torch_device)
        reference = LocalScorer(model, device="cpu", dtype="float32", **scorer_options)
        reference_scores = _score_set(reference, pairs)
    report = compare_scores(
        reference_scores,
        device_scores,
        queries=[item.query for item in pairs],
        device=str(torch_device),
        dtype=dtype_name,
        max_abs_diff=tolerance,
        min_rank_agreement=min_rank_agreement,
        min_top1_agreement=min_top1_agreement,
    )
    if torch_device.type == "cpu":
        report = report.model_copy(update={"cpu": cpu_bf16_support()})
    return report
