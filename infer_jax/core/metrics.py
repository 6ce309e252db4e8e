"""Measures computed from results and features: DD-Ranking's scores, feature duplication.

* DD-Ranking (Li et al., *DD-Ranking: Rethinking the Evaluation of Dataset Distillation*,
  2025, arXiv:2505.13300) scores a set by what it adds beyond its labels: IOR (improvement
  over random), HLR (hard-label recovery) and LRS (label-robust score) from them.
  :func:`lrs` and :func:`dd_ranking` compute them from a comparison's rows; accuracies are
  fractions in [0, 1], never percentages.
* Budget convergence: a comparison's budget sweep (one student per multiple of a row's
  steps) grouped per method (:func:`sweep_by_method`) and the change of final accuracy from
  each budget to the next (:func:`sweep_changes`).
* Feature duplication (the INFER paper's Figure 4a): the mean pairwise cosine similarity of a
  teacher's penultimate features within each class (:func:`within_class_cosine`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

# DD-Ranking's default weight of IOR against HLR in the label-robust score.
LRS_WEIGHT = 0.5
# Rows recorded before protocols were named were all compute-matched.
LEGACY_PROTOCOL = "same_steps"


def lrs(ior: float, hlr: float, weight: float = LRS_WEIGHT) -> float:
  """DD-Ranking's label-robust score from IOR and HLR (both fractions, not percentages).

  ``a = weight * IOR - (1 - weight) * HLR``, ``LRS = (e^a - e^-1) / (e - e^-1)``: 0 for
  ``a = -1`` (the worst possible, IOR = -1 and HLR = 1 at weight 0.5 gives -1), 1 for
  ``a = 1``. Returns a fraction; multiply by 100 for DD-Ranking's tables.
  """
  a = weight * ior - (1.0 - weight) * hlr
  return (math.exp(a) - math.exp(-1.0)) / (math.e - math.exp(-1.0))


def row_protocol(row: dict[str, Any]) -> str:
  """A row's protocol; rows written before protocols were recorded are 'same_steps'."""
  return row.get("protocol") or LEGACY_PROTOCOL


def dd_ranking(rows: Sequence[dict[str, Any]], weight: float = LRS_WEIGHT) -> None:
  """Adds ``'ior'``, ``'hlr'`` and ``'lrs'`` (fractions, or None) to every row, in place.

  Rows are compared only with rows of the same protocol (:func:`row_protocol`); each row
  needs ``'key'``, ``'labels'`` and ``'final_top1_mean'``, and names its ``'set'`` (its key
  when it does not).

  * ``ior``: the row's mean top-1 minus Random's: the 'random_hard' row for a hard-label row
    (the full-data row included), the 'random' row (static soft labels) otherwise. None when
    that row is absent.
  * ``hlr``: the 'full_data' row's top-1 minus the top-1 of the row's own set trained with
    hard labels (the hard-label row whose ``'set'`` is the same, or the same plus '_hard';
    0 for the full-data row itself). None when either is absent.
  * ``lrs``: :func:`lrs` of the two, None unless both exist.
  """
  groups: dict[str, list[dict[str, Any]]] = {}
  for r in rows:
    groups.setdefault(row_protocol(r), []).append(r)
  for group in groups.values():
    by_key = {r["key"]: r for r in group}
    # A hard-label row's set may be named '<base>_hard' (the set <base> without soft labels).
    hard_by_set = {_set(r): r for r in group if r["labels"] == "hard"}
    full = by_key.get("full_data")
    for r in group:
      ref = by_key.get("random_hard" if r["labels"] == "hard" else "random")
      r["ior"] = None if ref is None else r["final_top1_mean"] - ref["final_top1_mean"]
      hard = hard_by_set.get(_set(r))
      r["hlr"] = (
        None if full is None or hard is None else full["final_top1_mean"] - hard["final_top1_mean"]
      )
      r["lrs"] = None if r["ior"] is None or r["hlr"] is None else lrs(r["ior"], r["hlr"], weight)


def _set(row: dict[str, Any]) -> str:
  """The set a row trained on, without the '_hard' suffix of a hard-label copy."""
  return str(row.get("set", row["key"])).removesuffix("_hard")


def sweep_by_method(points: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
  """A budget sweep's points (``distill.budget_sweep``) per method, each list by steps.

  Args:
    points: dicts with at least ``'method'``, ``'steps'`` and ``'final_top1'``.

  Returns:
    ``{method: [point, ...]}`` in the order the methods first appear, points by ``steps``.
  """
  out: dict[str, list[dict[str, Any]]] = {}
  for p in points:
    out.setdefault(p["method"], []).append(p)
  return {m: sorted(ps, key=lambda p: p["steps"]) for m, ps in out.items()}


def sweep_changes(points: Sequence[dict[str, Any]]) -> list[tuple[int, int, float]]:
  """``[(steps, next steps, final_top1 at next - at steps), ...]`` of one method's sweep.

  Args:
    points: one method's points, sorted by ``steps`` (:func:`sweep_by_method`).

  Returns:
    One tuple per consecutive pair; the change is a fraction (x 100 for points).
  """
  return [
    (int(a["steps"]), int(b["steps"]), float(b["final_top1"] - a["final_top1"]))
    for a, b in zip(points[:-1], points[1:], strict=True)
  ]


def within_class_cosine(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Mean pairwise cosine similarity of features within each class.

  Args:
    features: float ``[N, D]``.
    labels: int ``[N]`` class of each row.
    num_classes: C.

  Returns:
    float64 ``[C]``: for class c, the mean of ``cos(f_i, f_j)`` over the pairs ``i < j`` of
    its rows (NaN when it has fewer than two). A zero feature vector has similarity 0 with
    everything.
  """
  f = np.asarray(features, np.float64).reshape(len(features), -1)
  norms = np.linalg.norm(f, axis=1, keepdims=True)
  unit = f / np.where(norms > 0, norms, 1.0)
  labels = np.asarray(labels)
  out = np.full(num_classes, np.nan)
  for c in range(num_classes):
    u = unit[labels == c]
    n = len(u)
    if n < 2:
      continue
    # Sum over all ordered pairs minus the diagonal, halved: the unordered pairs i < j.
    total = u.sum(axis=0)
    pair_sum = (total @ total - (u * u).sum()) / 2.0
    out[c] = pair_sum / (n * (n - 1) / 2)
  return out
