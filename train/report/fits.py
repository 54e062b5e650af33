"""The baselines tt-report sets beside the setups: fitted once per store, label budget, validation size and seed on
the sweep's own store (train/report/baseline.py), each fit cached in OUT/baselines.json as soon as it is done."""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np

from tqdm import tqdm

from twinturbo.common.atomic import write_json_atomic
from twinturbo.common.errors import TwinTurboError
from twinturbo.common.store import open_store
from twinturbo.train.report.baseline import (BASELINES, CANDIDATES, Baselines, CandidateFit, POOLED_PATCHES, PROBE_C,
                                             SELF_TRAINING_THRESHOLDS, SELF_TRAINING_WARM_START, SEMI_GMM_DIMS,
                                             SEMI_GMM_MAX_ITER, SEMI_GMM_REG, SEMI_GMM_TOL, VALIDATED, choose,
                                             read_cls_vectors)
from twinturbo.train.report.selection import row_group
from twinturbo.train.report.tables import selection_val_size


BASELINE_TEXT = {
    "LogisticRegression": "scikit-learn LogisticRegression on the CLS vectors of each seed's labelled subset "
                          "(supervised)",
    "SelfTraining": "scikit-learn SelfTrainingClassifier around that LogisticRegression, over the labelled subset plus "
                    "every other train CLS vector as unlabelled; its confidence threshold chosen on the validation "
                    "labels that choose λ (self-training / pseudo-labelling)",
    "LabelSpreading": "scikit-learn LabelSpreading (kNN graph, 64 PCA components) over the labelled subset plus every "
                      "other train CLS vector as unlabelled",
    "LinearProbe": "LogisticRegression on exactly the features the head sees, the CLS vector and the mean patch token, "
                   "of each seed's labelled subset (supervised), C chosen on the validation labels",
    "SemiGMM": "PCA of the train CLS vectors to d dimensions, then a Gaussian mixture with one full-covariance "
               "component per class fitted by EM over the labelled and unlabelled vectors, the labelled ones fixed "
               "to their class (as SemiOccam); d chosen on the validation labels",
}


# ---- baselines, fitted once per store, labelled subset and validation size -------------------------------------

def baselines_of(rows: list[dict], features: str | None = None, cache: Path | None = None,
                 methods: tuple[str, ...] = tuple(BASELINES),
                 val_size: int | None = None) -> tuple[dict[tuple[str, str], Baselines | str], list[str], dict]:
    """(dataset, backbone) -> method -> label budget -> seed -> accuracy % on the rows' own store (or on `features`,
    when it holds the same extraction), or the reason it could not be computed; the warnings the libraries gave
    while fitting (summary.md quotes them: none reaches the terminal); and (dataset, backbone) -> method -> label
    budget -> what each seed's validation split chose, in seed order (the baselines that choose a hyperparameter).
    The baselines that choose a hyperparameter (baseline.VALIDATED) choose it on the validation labels that choose
    λ: the first `val_size` (default: as many as the budget) of those the runs recorded; their candidates are fitted
    once and scored on all the recorded ones, so that another validation size chooses without fitting again. Each
    fit is kept in `cache` as soon as it is done (a JSON file keyed by store fingerprint, method, budget, validation
    size and seed): an interrupted report resumes, and a finished one is redrawn in seconds."""
    stored = json.loads(cache.read_text()) if cache is not None and cache.exists() else {}
    entries = len(stored)
    wanted: dict[tuple[str, str], dict] = {}
    for row in rows:
        entry = wanted.setdefault(row_group(row), {"store": row.get("store") or {}, "budgets": {}})
        budget = int(row["config"]["labels"])
        recorded = int(row["config"].get("val_labels", budget))
        val = selection_val_size(budget, val_size, recorded)
        spec = entry["budgets"].setdefault(budget, {"seeds": set(), "val": val, "pool": recorded})
        spec["val"], spec["pool"] = min(spec["val"], val), min(spec["pool"], recorded)
        spec["seeds"].add(int(row["config"]["seed"]))
    out: dict[tuple[str, str], Baselines | str] = {}
    said_by: dict[str, list[str]] = {}  # a library's warning -> the fits it came from
    chosen_of: dict[tuple[str, str], dict] = {}
    for key, entry in wanted.items():
        chosen_by: dict[str, dict[int, list[str]]] = {}  # method -> budget -> what each seed's validation chose
        fingerprint, path = entry["store"].get("fingerprint"), entry["store"].get("path")
        result: Baselines = {method: {} for method in methods}
        missing = [(method, budget, seed, spec["val"], spec["pool"]) for method in methods
                   for budget, spec in sorted(entry["budgets"].items()) for seed in sorted(spec["seeds"])
                   if _cache_key(fingerprint, method, budget, spec["val"], seed) not in stored
                   and not _choose_from_candidates(stored, fingerprint, method, budget, spec["val"], seed)]
        try:
            if missing:
                if features is not None:
                    with open_store(features) as store:
                        if store.identity()["fingerprint"] == fingerprint:
                            path = features
                with open_store(path) as store:
                    if store.identity()["fingerprint"] != fingerprint:
                        out[key] = f"the store at {path} changed since the sweep"
                        continue
                vectors: dict[bool, object] = {}  # pooled_patches -> the store's vectors, read once
                bar = tqdm(missing, desc="baselines", unit="fit", leave=False)
                for method, budget, seed, val, pool in bar:
                    bar.set_postfix_str(f"{method} n={budget} seed {seed}")
                    pooled = method in POOLED_PATCHES
                    if pooled not in vectors:
                        vectors[pooled] = read_cls_vectors(path, pooled_patches=pooled)
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        if method in CANDIDATES:
                            fitted = CANDIDATES[method](vectors[pooled], budget, seed, pool)
                        else:
                            accuracy = BASELINES[method](path, budget, [seed], vectors[pooled])[seed]
                    said = sorted({f"{w.category.__name__}: {w.message}".splitlines()[0] for w in caught})
                    if method in CANDIDATES:
                        stored[_candidates_key(fingerprint, method, budget, seed)] = {
                            "pool": pool, "fits": [{"name": c.name, "test": c.test, "default": c.default,
                                                    "val": np.packbits(c.val_correct).tobytes().hex()} for c in fitted],
                            **({"warnings": said} if said else {})}
                        _choose_from_candidates(stored, fingerprint, method, budget, val, seed)
                    else:
                        stored[_cache_key(fingerprint, method, budget, val, seed)] = 100.0 * accuracy
                        if said:
                            stored[_cache_key(fingerprint, method, budget, val, seed) + WARNINGS_SUFFIX] = said
                    if cache is not None:
                        write_json_atomic(cache, stored)
        except TwinTurboError as err:
            out[key] = str(err)
            continue
        if cache is not None and len(stored) != entries:  # choices made from cached candidates, kept as well
            write_json_atomic(cache, stored)
        for method in methods:
            for budget, spec in entry["budgets"].items():
                result[method][budget] = {seed: stored[_cache_key(fingerprint, method, budget, spec["val"], seed)]
                                          for seed in spec["seeds"]}
                for seed in sorted(spec["seeds"]):
                    fit_key = _cache_key(fingerprint, method, budget, spec["val"], seed)
                    for said in stored.get(fit_key + WARNINGS_SUFFIX, []):
                        said_by[said] = said_by.get(said, []) + [f"{method} at {budget} labels, seed {seed}"]
                    if fit_key + CHOSEN_SUFFIX in stored:
                        chosen_by.setdefault(method, {}).setdefault(budget, []).append(stored[fit_key + CHOSEN_SUFFIX])
        out[key] = result
        chosen_of[key] = chosen_by
    return out, [f"{said} ({'; '.join(where)})" for said, where in said_by.items()], chosen_of


WARNINGS_SUFFIX = "/warnings"  # the cache's entry beside a fit's accuracy: what the library warned while fitting
CHOSEN_SUFFIX = "/chosen"  # ... and what its validation split chose (VALIDATED baselines)
# What a baseline's fit depends on beyond its data: a change of recipe is a new cache entry.
RECIPES = {"SelfTraining": [list(SELF_TRAINING_THRESHOLDS), SELF_TRAINING_WARM_START],
           "LinearProbe": [list(PROBE_C)],
           "SemiGMM": [list(SEMI_GMM_DIMS), SEMI_GMM_REG, SEMI_GMM_MAX_ITER, SEMI_GMM_TOL]}


def _cache_key(fingerprint, method: str, budget: int, val: int, seed: int) -> str:
    """A fit's entry: its test accuracy % (with CHOSEN_SUFFIX and WARNINGS_SUFFIX beside it)."""
    digest = hashlib.sha256(json.dumps(RECIPES.get(method, [])).encode()).hexdigest()[:6]
    return f"{fingerprint}/{method}-{digest}/n{budget}/val{val if method in VALIDATED else 0}/seed{seed}"


def _candidates_key(fingerprint, method: str, budget: int, seed: int) -> str:
    """A VALIDATED baseline's candidates on one seed (baseline.CandidateFit), scored on the `pool` validation samples
    its runs recorded: every validation size up to it is chosen from them without another fit (both of issue 37's
    rules, say, from one set of fits)."""
    return _cache_key(fingerprint, method, budget, 0, seed).replace("/val0/", "/candidates/")


def _choose_from_candidates(stored: dict, fingerprint, method: str, budget: int, val: int, seed: int) -> bool:
    """Fill the entry of (method, budget, val, seed) from its cached candidates, where they were scored on at least
    `val` validation samples; False where there are none to choose from."""
    entry = stored.get(_candidates_key(fingerprint, method, budget, seed)) if method in CANDIDATES else None
    if entry is None or entry["pool"] < val:
        return False
    bits = [np.unpackbits(np.frombuffer(bytes.fromhex(c["val"]), dtype=np.uint8))[:entry["pool"]].astype(bool)
            for c in entry["fits"]]
    pick = choose([CandidateFit(c["name"], c["test"], b, c["default"]) for c, b in zip(entry["fits"], bits)], val)
    key = _cache_key(fingerprint, method, budget, val, seed)
    stored[key], stored[key + CHOSEN_SUFFIX] = 100.0 * pick.test, pick.name
    if entry.get("warnings"):
        stored[key + WARNINGS_SUFFIX] = entry["warnings"]
    return True
