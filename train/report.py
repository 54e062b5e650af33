"""`tt-report`: a sweep's results.jsonl as summary.md (what ran, the protocol, the finding with its uncertainty, then
the tables), the figures of train/figures.py, and results.csv.

The default protocol chooses λ on the validation split (`--select val`, train/selection.py) wherever the rows have
one, reads each run at its last epoch (`--epoch last`, as the paper does), and quotes seed means with 95% t
intervals and paired differences to setup 1 on the same seeds (train/stats.py). The paper's protocol (λ and seed
chosen on the test set) is reported beside it, so that its optimism is one number per setup.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import statistics
import sys
import warnings
from pathlib import Path

from tqdm import tqdm

from twinturbo.common.errors import TwinTurboError
from twinturbo.common.hashing import write_json_atomic
from twinturbo.common.store import open_store
from twinturbo.train.baseline import (BASELINES, POOLED_PATCHES, PROBE_C, SELF_TRAINING_THRESHOLDS, SELF_TRAINING_WARM_START,
                                     SEMI_GMM_DIMS, SEMI_GMM_MAX_ITER, SEMI_GMM_REG, SEMI_GMM_TOL, VALIDATED,
                                     read_cls_vectors)
from twinturbo.train.figures import plot_all, plot_diagnostics, plot_selected
from twinturbo.train.selection import (EPOCH_RULES, PROTOCOLS, Combination, by_setup, choose, combinations,
                                       grid_edges, row_group, swept_weights, validation_size_study, weight_symbol)
from twinturbo.train.stats import Paired, mean_interval, paired_difference
from twinturbo.train.terms import missing_terms
from twinturbo.train.results import RESULTS_FILE, cut_lines_note, read_rows

Baselines = dict[str, dict[int, dict[int, float]]]  # method -> label budget -> seed -> accuracy %
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
VALIDATION_SIZES = (50, 100, 250, 500, 1000)
PROTOCOL_SENTENCE = {
    "val": "for each setup and label budget, the λ combination with the best seed-mean accuracy on {val} (train "
           "images outside the labelled subset whose labels are never trained on, `--val-labels`)",
    "test": "for each setup and label budget, the λ combination with the best seed-mean accuracy on the test set "
            "(optimistic: the test set chooses)",
    "paper": "for each setup and label budget, the λ combination with the best single seed on the test set, as in "
             "the paper (optimistic: the test set chooses, and the best of three seeds is quoted)",
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
    λ: the first `val_size` (default: as many as the budget) of those the runs recorded. Each fit is kept in `cache`
    as soon as it is done (a JSON file keyed by store fingerprint, method, budget, validation size and seed): an
    interrupted report resumes, and a finished one is redrawn in seconds."""
    stored = json.loads(cache.read_text()) if cache is not None and cache.exists() else {}
    wanted: dict[tuple[str, str], dict] = {}
    for row in rows:
        entry = wanted.setdefault(row_group(row), {"store": row.get("store") or {}, "budgets": {}})
        budget = int(row["config"]["labels"])
        val = selection_val_size(budget, val_size, int(row["config"].get("val_labels", budget)))
        spec = entry["budgets"].setdefault(budget, {"seeds": set(), "val": val})
        spec["val"] = min(spec["val"], val)
        spec["seeds"].add(int(row["config"]["seed"]))
    out: dict[tuple[str, str], Baselines | str] = {}
    said_by: dict[str, list[str]] = {}  # a library's warning -> the fits it came from
    chosen_of: dict[tuple[str, str], dict] = {}
    for key, entry in wanted.items():
        chosen_by: dict[str, dict[int, list[str]]] = {}  # method -> budget -> what each seed's validation chose
        fingerprint, path = entry["store"].get("fingerprint"), entry["store"].get("path")
        result: Baselines = {method: {} for method in methods}
        missing = [(method, budget, seed, spec["val"]) for method in methods
                   for budget, spec in sorted(entry["budgets"].items()) for seed in sorted(spec["seeds"])
                   if _cache_key(fingerprint, method, budget, spec["val"], seed) not in stored]
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
                for method, budget, seed, val in bar:
                    bar.set_postfix_str(f"{method} n={budget} seed {seed}")
                    pooled = method in POOLED_PATCHES
                    if pooled not in vectors:
                        vectors[pooled] = read_cls_vectors(path, pooled_patches=pooled)
                    chosen: dict[int, str] = {}
                    kwargs = {"val_labels": val, "chosen": chosen} if method in VALIDATED else {}
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        accuracy = BASELINES[method](path, budget, [seed], vectors[pooled], **kwargs)[seed]
                    stored[_cache_key(fingerprint, method, budget, val, seed)] = 100.0 * accuracy
                    if chosen:
                        stored[_cache_key(fingerprint, method, budget, val, seed) + CHOSEN_SUFFIX] = chosen[seed]
                    said = sorted({f"{w.category.__name__}: {w.message}".splitlines()[0] for w in caught})
                    if said:
                        stored[_cache_key(fingerprint, method, budget, val, seed) + WARNINGS_SUFFIX] = said
                    if cache is not None:
                        write_json_atomic(cache, stored)
        except TwinTurboError as err:
            out[key] = str(err)
            continue
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
    digest = hashlib.sha256(json.dumps(RECIPES.get(method, [])).encode()).hexdigest()[:6]
    return f"{fingerprint}/{method}-{digest}/n{budget}/val{val if method in VALIDATED else 0}/seed{seed}"


# ---- summary.md ----------------------------------------------------------------------------------------------------

def _lambdas(combo: Combination, candidates: list[Combination]) -> str:
    return combo.lambda_text(swept_weights(candidates), ", ") or "-"


def describe_grid(candidates: list[Combination]) -> str:
    """'λ_C over {0.01, 0.1, 1}, λ_L over {0.1, 1}' for one setup's candidates."""
    parts = []
    for name in swept_weights(candidates):
        values = sorted({c.weight(name) for c in candidates})
        parts.append(f"{weight_symbol(name)} over {{{', '.join(f'{v:g}' for v in values)}}}")
    return ", ".join(parts)


def what_ran(rows: list[dict], combos: list[Combination]) -> str:
    """One sentence: how many runs of which setups, budgets, seeds, steps, data and precision."""
    seeds = sorted({int(r["config"]["seed"]) for r in rows})
    budgets = sorted({int(r["config"]["labels"]) for r in rows})
    steps = sorted({int(r["steps"]) for r in rows if "steps" in r})
    config = rows[0]["config"]
    samples = {(r.get("train_samples"), r.get("test_samples")) for r in rows if r.get("train_samples")}
    precisions = sorted({r.get("precision") or r["config"].get("precision") or "fp32" for r in rows})
    setups = list(dict.fromkeys(c.setup for c in combos))
    groups = by_setup(combos)
    grids: dict[str, list] = {}  # each grid that chose among several combinations -> the setups that had it
    for (setup, _), candidates in groups.items():
        if len(candidates) > 1:
            of = grids.setdefault(describe_grid(candidates), [])
            of += [setup] if setup not in of else []
    text = (f"{len(rows)} runs: setups {', '.join(map(str, setups))} at {', '.join(map(str, budgets))} labels, "
            f"seeds {', '.join(map(str, seeds))}; {'/'.join(map(str, steps))} steps each "
            f"({config.get('epochs')} epochs of batch {config.get('batch_size')}")
    if len(samples) == 1:
        train, test = samples.pop()
        text += f" over {train} train images, {test} test images"
    text += f"), head widths {config.get('proj_dim')}/{config.get('pred_dim')}/{config.get('disc_dim')}, "
    text += f"{'/'.join(precisions)}"
    if grids:
        text += "; the grids: " + "; ".join(f"{grid} (setup{'s' if len(of) > 1 else ''} {', '.join(map(str, of))})"
                                            for grid, of in grids.items())
    elif any(describe_grid(v) for v in groups.values()):
        text += "; one λ combination per setup, so none was chosen"
    return text + "."


def selection_val_size(labels: int, val_size: int | None, recorded: int) -> int:
    """How many of the `recorded` validation labels choose λ (and SelfTraining's threshold) at a label budget:
    `val_size` (tt-report's --val-size), else the budget (the --val-labels default), capped at what was recorded."""
    return min(labels if val_size is None else val_size, recorded)


def _budget_val_size(candidates: list[Combination], val_size: int | None) -> int | None:
    """The validation size the selection uses for one setup (None when its runs recorded no validation labels)."""
    recorded = min(c.val_samples for c in candidates)
    return selection_val_size(candidates[0].labels, val_size, recorded) if recorded else None


def selected_table(combos: list[Combination], baselines: Baselines | None, protocol: str, epoch_rule: str,
                   val_size: int | None) -> tuple[list[str], dict[tuple, Combination], dict[tuple, list[str]]]:
    """The main table: per setup and budget the chosen λ, its validation and test accuracy (seed mean ± 95% t
    interval), its paired difference to setup 1 (± interval) and how many seeds are above setup 1; then the
    baselines, paired the same way. Returns the lines, the choices and the grid-edge notes."""
    lines = ["| setup | labels | λ | validation % | test %: mean ± 95% CI | Δ vs setup 1 (same seeds) ± 95% CI "
             "| seeds above setup 1 |", "|---|---:|---|---:|---:|---:|---:|"]
    groups, chosen, edges = by_setup(combos), {}, {}
    for budget in sorted({labels for _, labels in groups}):
        reference = None
        for (setup, labels), candidates in groups.items():
            if labels != budget:
                continue
            size = _budget_val_size(candidates, val_size)
            rule = protocol if (protocol != "val" or all(c.has_validation for c in candidates)) else "test"
            combo = choose(candidates, rule, epoch_rule, size)
            chosen[(setup, labels)] = combo
            edges[(setup, labels)] = grid_edges(combo, candidates)
            test = combo.test(epoch_rule)
            if reference is None and setup in (1, "1"):
                reference = test
            val = f"{mean_interval(list(combo.val(epoch_rule, size).values())).mean:.2f}" \
                if combo.has_validation else "-"
            paired = paired_difference(test, reference) if reference is not None else None
            lines.append(f"| {setup}: {combo.setup_name} | {budget} | {_lambdas(combo, candidates)} | {val} | "
                         f"{mean_interval(list(test.values())).text()} | "
                         + (f"{paired.difference.text(signed=True)} | {paired.positive}/{len(paired.seeds)} |"
                            if paired is not None and setup not in (1, "1") else " | |"))
        for method, per_budget in (baselines or {}).items():
            seeds = per_budget.get(budget)
            if not seeds:
                continue
            paired = paired_difference(seeds, reference) if reference is not None else None
            lines.append(f"| {method} | {budget} | - | - | {mean_interval(list(seeds.values())).text()} | "
                         + (f"{paired.difference.text(signed=True)} | {paired.positive}/{len(paired.seeds)} |"
                            if paired is not None else " | |"))
    return lines, chosen, edges


def optimism_table(combos: list[Combination], chosen: dict[tuple, Combination], epoch_rule: str) -> list[str]:
    """The paper's protocol beside the chosen one: its bar (best seed of the λ best on test), the seed mean of the
    λ best on test, the chosen λ's seed mean, and the optimism = paper's bar - chosen seed mean."""
    lines = ["| setup | labels | λ, paper's protocol | paper's bar (best seed) % | λ best on test: seed mean % | "
             "λ chosen here: seed mean % | optimism of the paper's protocol (points) | of which λ on test |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for (setup, labels), candidates in by_setup(combos).items():
        paper, on_test = choose(candidates, "paper", epoch_rule), choose(candidates, "test", epoch_rule)
        here = chosen[(setup, labels)]
        bar = max(paper.test(epoch_rule).values())
        test_mean = mean_interval(list(on_test.test(epoch_rule).values())).mean
        here_mean = mean_interval(list(here.test(epoch_rule).values())).mean
        lines.append(f"| {setup}: {here.setup_name} | {labels} | {_lambdas(paper, candidates)} | {bar:.2f} | "
                     f"{test_mean:.2f} | {here_mean:.2f} | {bar - here_mean:+.2f} | {test_mean - here_mean:+.2f} |")
    return lines


def size_table(combos: list[Combination]) -> list[str]:
    """How the choice depends on the number of validation labels (when the runs recorded more than one size): per
    label budget and size, averaged over the setups with a λ to choose."""
    findings = validation_size_study(combos, list(VALIDATION_SIZES))
    if len({f.size for f in findings}) < 2:
        return []
    lines = ["| labels | validation labels | setups | chooses the test-best λ (mean over setups and 200 draws) | "
             "test points lost vs the test-best λ: mean (worst setup) |", "|---:|---:|---:|---:|---:|"]
    for labels, size in sorted({(f.labels, f.size) for f in findings}):
        group = [f for f in findings if (f.labels, f.size) == (labels, size)]
        chance = sum(f.picks_test_best for f in group) / len(group)
        gap = sum(f.mean_gap for f in group) / len(group)
        lines.append(f"| {labels} | {size} | {len(group)} | {100 * chance:.0f}% | {gap:.2f} "
                     f"({max(f.mean_gap for f in group):.2f}) |")
    return lines


def finding_sentence(combos: list[Combination], chosen: dict[tuple, Combination], epoch_rule: str) -> str:
    """Per label budget, the setup with the largest paired gain over setup 1, with its interval."""
    sentences = []
    for budget in sorted({labels for _, labels in chosen}):
        reference = next((c for (s, n), c in chosen.items() if n == budget and s in (1, "1")), None)
        if reference is None:
            continue
        gains = [(paired_difference(c.test(epoch_rule), reference.test(epoch_rule)), c)
                 for (s, n), c in chosen.items() if n == budget and s not in (1, "1")]
        gains = [(p, c) for p, c in gains if p is not None]
        if not gains:
            continue
        best, combo = max(gains, key=lambda item: item[0].difference.mean)
        sentences.append(f"at {budget} labels the largest gain over setup 1 is setup {combo.setup} "
                         f"({combo.setup_name}): {best.difference.text(signed=True)} points, above setup 1 on "
                         f"{best.positive} of {len(best.seeds)} seeds ({verdict(best)})")
    return ("Finding: " + "; ".join(sentences) + ".") if sentences else ""


def verdict(paired: Paired) -> str:
    """Whether a paired difference's 95% interval excludes 0."""
    low, high = paired.difference.low, paired.difference.high
    return ("one seed: no interval" if not math.isfinite(low) else
            "its interval excludes 0" if low > 0 or high < 0 else "its interval includes 0")


def best_sentence(chosen: dict[tuple, Combination], baselines: Baselines | None, epoch_rule: str) -> str:
    """Per label budget, the best method by seed-mean test accuracy, every setup at its chosen λ and every baseline
    competing, and its paired margin over the runner-up on the seeds both have."""
    sentences = []
    for budget in sorted({labels for _, labels in chosen}):
        entrants = [(f"setup {c.setup} ({c.setup_name}" + (f", {c.lambda_text(swept_weights([c]), ', ')})" if c.has_terms
                                                            else ")"), c.test(epoch_rule))
                    for (_, n), c in chosen.items() if n == budget]
        entrants += [(method, seeds) for method, per_budget in (baselines or {}).items()
                     for n, seeds in per_budget.items() if n == budget]
        if len(entrants) < 2:
            continue
        ranked = sorted(entrants, key=lambda item: -statistics.fmean(item[1].values()))
        (best, values), (second, others) = ranked[:2]
        margin = paired_difference(values, others)
        if margin is None:
            continue
        sentences.append(f"at {budget} labels the best is {best} with {mean_interval(list(values.values())).text()} "
                         f"% test accuracy, ahead of {second} by {margin.difference.text(signed=True)} points on the "
                         f"same {len(margin.seeds)} seeds ({margin.positive} above; {verdict(margin)})")
    return ("Best: " + "; ".join(sentences) + ".") if sentences else ""


def setup_terms(combo: Combination) -> tuple[str, frozenset[str]]:
    """(task loss/rescaling, the additive terms) of a combination's setup, read from its name ('cat_cross/softmax +
    critic + fixmatch')."""
    base, *terms = combo.setup_name.split(" + ")
    return base, frozenset(terms)


def term_gains(chosen: dict[tuple, Combination], epoch_rule: str) -> list[str]:
    """For every two setups (at one budget, with one task loss and rescaling) that differ by exactly one term, what
    adding it gives, each at its own chosen λ, paired over the seeds both have: e.g. the critic on top of FixMatch."""
    lines = []
    for (setup, budget), combo in chosen.items():
        base, terms = setup_terms(combo)
        for (other_setup, other_budget), other in chosen.items():
            other_base, other_terms = setup_terms(other)
            if other_budget != budget or other_base != base or not (other_terms < terms
                                                                    and len(terms - other_terms) == 1):
                continue
            gain = paired_difference(combo.test(epoch_rule), other.test(epoch_rule))
            if gain is None:
                continue
            (term,) = terms - other_terms
            lines.append(f"- {term} on top of setup {other_setup} ({other.setup_name}), at {budget} labels: setup "
                         f"{setup} minus setup {other_setup} = {gain.difference.text(signed=True)} points, above on "
                         f"{gain.positive} of {len(gain.seeds)} seeds ({verdict(gain)})")
    return lines


def summary_markdown(rows: list[dict], by_group: dict[tuple[str, str], list[Combination]],
                     baselines: dict[tuple[str, str], Baselines | str], protocol: str, epoch_rule: str,
                     val_size: int | None, chosen_by_baselines: dict | None = None) -> tuple[str, dict]:
    """summary.md's text, and per group the choices and grid-edge notes (for the figures)."""
    lines, drawn = [], {}
    for (dataset, backbone), combos in sorted(by_group.items()):
        group_rows = [r for r in rows if row_group(r) == (dataset, backbone)]
        baseline = baselines.get((dataset, backbone))
        has_val = all(c.has_validation for c in combos)
        used = protocol if (protocol != "val" or has_val) else "test"
        sizes = sorted({_budget_val_size(v, val_size) for v in by_setup(combos).values()} - {None})
        table, chosen, edges = selected_table(combos, baseline if isinstance(baseline, dict) else None, used,
                                              epoch_rule, val_size)
        drawn[(dataset, backbone)] = (chosen, edges, used)
        lines += [f"### {dataset} ({backbone})", "", f"What ran: {what_ran(group_rows, combos)}", ""]
        protocol_text = PROTOCOL_SENTENCE[used].format(
            val=f"{' or '.join(map(str, sizes))} validation labels" if sizes else "the validation split")
        lines.append(f"Protocol: {protocol_text}; each run read at its "
                     f"{'last epoch' if epoch_rule == 'last' else 'epoch of best validation accuracy'}. The figures "
                     "are that combination's test accuracy: the mean over seeds ± the half-width of its 95% t "
                     "interval, and its difference to setup 1 on the same seeds (same labelled subsets) ± its own.")
        if protocol == "val" and not has_val:
            lines.append("These rows have no validation split (trained before --val-labels): λ is chosen on the "
                         "test set below, which is optimistic.")
        lines += ["", best_sentence(chosen, baseline if isinstance(baseline, dict) else None, epoch_rule), "",
                  finding_sentence(combos, chosen, epoch_rule), ""]
        gains = term_gains(chosen, epoch_rule)
        if gains:
            lines += ["What each term adds on top of the setup without it (each setup at its own chosen λ):", "",
                      *gains, ""]
        lines += [*table, ""]
        notes = [f"- setup {s} at {n} labels: {note}" for (s, n), found in edges.items() for note in found]
        if notes:
            lines += ["Grid edges (the chosen λ may lie beyond the grid):", "", *notes, ""]
        if isinstance(baseline, str):
            lines += [f"Baselines not computed: {baseline}", ""]
        elif baseline:
            picked = (chosen_by_baselines or {}).get((dataset, backbone), {})

            def what_chose(method: str) -> str:
                per_budget = picked.get(method, {})
                return "".join(f" (chosen at {budget} labels, seed by seed: {', '.join(values)})"
                               for budget, values in sorted(per_budget.items()))

            lines += ["Baselines, on the same labelled subsets: " + "; ".join(
                f"{method}: {BASELINE_TEXT.get(method, method)}{what_chose(method)}" for method in baseline) + ".", ""]
        lines += ["The paper's protocol beside it (optimism = the paper's bar minus the seed mean of the λ chosen "
                  "here; 'of which λ on test' is the part due to choosing λ on the test set, the rest is quoting the "
                  "best seed):", "", *optimism_table(combos, chosen, epoch_rule), ""]
        sizes_lines = size_table(combos) if has_val else []
        if sizes_lines:
            lines += ["How many validation labels it takes: class-balanced draws of N of the validation samples every "
                      "run was scored on, λ chosen by seed-mean validation accuracy on them:", "", *sizes_lines, ""]
    return "\n".join(lines), drawn


CSV_COLUMNS = ("run_id", "dataset", "backbone", "store_fingerprint", "setup", "loss", "rescale", "critic_weight",
               "latent_weight", "labels", "seed", "test_accuracy", "val_accuracy", "precision", "wall_time_s",
               "fused_runs", "device")


def write_csv(rows: list[dict], path: Path) -> None:
    """All rows: the columns above, then every other training flag, then the per-epoch accuracies."""
    flags = sorted({k for row in rows for k in row["config"]} - set(CSV_COLUMNS))
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(list(CSV_COLUMNS) + flags + ["epoch_accuracies", "epoch_val_accuracies"])
        for row in rows:
            dataset, backbone = row_group(row)
            config = row["config"]
            base = {"run_id": row["run_id"], "dataset": dataset, "backbone": backbone,
                    "store_fingerprint": (row.get("store") or {}).get("fingerprint"), "setup": row["setup"],
                    "test_accuracy": row["test_accuracy"], "val_accuracy": row.get("val_accuracy"),
                    "wall_time_s": row.get("wall_time_s"), "fused_runs": row.get("fused_runs"),
                    "device": row.get("device"), **config, "precision": row.get("precision") or config.get("precision")}
            curves = [";".join(f"{a:.6g}" for a in row.get(key) or []) for key in ("epoch_accuracies",
                                                                                  "epoch_val_accuracies")]
            writer.writerow([base.get(c) for c in CSV_COLUMNS] + [config.get(f) for f in flags] + curves)


def _file_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def read_sweeps(directories: list[Path]) -> list[dict]:
    """Every finished run of the sweeps, first occurrence per run id."""
    rows, seen = [], set()
    for directory in directories:
        results = directory / RESULTS_FILE
        if not results.exists():
            raise TwinTurboError(f"{results} does not exist: is {directory} a tt-sweep --out directory?")
        note = cut_lines_note(results)
        if note:
            print(note, file=sys.stderr)
        for row in read_rows(results):
            missing_terms(row.get("config") or {}, row.get("plugins"), f"{results}: run {row.get('run_id')}")
            if row.get("run_id") not in seen:
                seen.add(row.get("run_id"))
                rows.append(row)
    if not rows:
        files = " and ".join(str(d / RESULTS_FILE) for d in directories)
        raise TwinTurboError(f"{files} {'holds' if len(directories) == 1 else 'hold'} no finished run yet")
    return rows


def make_report(sweep_dirs: str | Path | list[str | Path], out_dir: str | Path | None = None, baseline: bool = True,
                features: str | None = None, protocol: str = "val", epoch_rule: str = "last",
                val_size: int | None = None, methods: tuple[str, ...] = tuple(BASELINES)) -> list[Path]:
    """Write figure_<dataset>.png, all_<dataset>.png, diagnostics_<dataset>.png (when the rows hold training
    diagnostics), summary.md and results.csv from one or more sweeps' rows (e.g. a 100-label and a 1000-label sweep
    of one store); return their paths. `protocol`, `epoch_rule`, `val_size` and `methods` as tt-report's --select,
    --epoch, --val-size and --baselines; with `baseline`, those baselines are fitted on the sweep's store (cached in
    baselines.json)."""
    unknown = [m for m in methods if m not in BASELINES]
    if unknown:
        raise TwinTurboError(f"--baselines {','.join(methods)}: unknown {unknown[0]!r}; expected a comma-separated "
                             f"list of {', '.join(BASELINES)}")
    if protocol not in PROTOCOLS:
        raise TwinTurboError(f"--select {protocol}: expected one of {', '.join(PROTOCOLS)}")
    if epoch_rule not in EPOCH_RULES:
        raise TwinTurboError(f"--epoch {epoch_rule}: expected one of {', '.join(EPOCH_RULES)}")
    if val_size is not None and val_size < 1:
        raise TwinTurboError(f"--val-size {val_size}: expected a positive number of validation labels")
    directories = [Path(d) for d in (sweep_dirs if isinstance(sweep_dirs, (list, tuple)) else [sweep_dirs])]
    if out_dir is None and len(directories) > 1:
        raise TwinTurboError("tt-report of several sweeps needs --out (where to write the joint report)")
    rows = read_sweeps(directories)
    try:
        by_group = combinations(rows)
    except (KeyError, TypeError, ValueError) as err:
        raise TwinTurboError(f"{directories[0] / RESULTS_FILE}: a row lacks {err} (not written by tt-sweep?)") from None
    out = Path(out_dir) if out_dir is not None else directories[0]
    out.mkdir(parents=True, exist_ok=True)
    baselines, library_warnings, chosen_by_baselines = (
        baselines_of(rows, features, out / "baselines.json", methods, val_size) if baseline and methods else ({}, [], {}))
    text, drawn = summary_markdown(rows, by_group, baselines, protocol, epoch_rule, val_size, chosen_by_baselines)
    if library_warnings:
        text += "\nWarnings of the libraries while fitting the baselines:\n\n" + "\n".join(
            f"- {line}" for line in library_warnings) + "\n"
    written = []
    several_backbones = len(by_group) > len({dataset for dataset, _ in by_group})
    for (dataset, backbone), combos in sorted(by_group.items()):
        stem = _file_name(f"{dataset}_{backbone}" if several_backbones else dataset)
        chosen, edges, used = drawn[(dataset, backbone)]
        found = baselines.get((dataset, backbone))
        figure, everything = out / f"figure_{stem}.png", out / f"all_{stem}.png"
        plot_selected(combos, chosen, found if isinstance(found, dict) else None, dataset, backbone, figure, used,
                      epoch_rule, edges)
        plot_all(combos, chosen, dataset, backbone, everything, used, epoch_rule)
        written += [figure, everything]
        diagnostics = out / f"diagnostics_{stem}.png"
        if plot_diagnostics([r for r in rows if row_group(r) == (dataset, backbone)], chosen, dataset, backbone,
                            diagnostics):
            written.append(diagnostics)
    summary = out / "summary.md"
    summary.write_text(text)
    csv_path = out / "results.csv"
    write_csv(rows, csv_path)
    return written + [summary, csv_path]
