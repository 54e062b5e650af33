"""summary.md's first lines: the best method per budget, the largest gain over setup 1, what each term adds, each
paired difference with what its interval can say (`verdict`)."""
from __future__ import annotations

import math
import statistics

from twinturbo.train.report.baseline import Baselines
from twinturbo.train.report.selection import Combination, swept_weights
from twinturbo.train.report.stats import Paired, mean_interval, paired_difference


def finding_sentence(combos: list[Combination], chosen: dict[tuple, Combination], epoch_rule: str,
                     resolution: float) -> str:
    """Per label budget, the setup with the largest paired gain over setup 1, with its interval (`resolution`: one
    test image in points, see verdict)."""
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
        lead = (f"at {budget} labels the largest gain over setup 1 is setup {combo.setup}" if best.difference.mean > 0
                else f"at {budget} labels no setup gains over setup 1 on average; the closest is setup {combo.setup}")
        sentences.append(f"{lead} ({combo.setup_name}): {best.difference.text(signed=True)} points, above setup 1 on "
                         f"{best.positive} of {len(best.seeds)} seeds ({verdict(best, resolution)})")
    return ("Finding: " + "; ".join(sentences) + ".") if sentences else ""


def verdict(paired: Paired, resolution: float) -> str:
    """Whether a paired difference's 95% interval excludes 0, said only where an interval can say it: not for one
    seed, not where every seed's difference is at most one test image (`resolution`, in points: below what the test
    set resolves), not where every seed gives the same difference (zero spread: a zero-width interval)."""
    low, high = paired.difference.low, paired.difference.high
    if not math.isfinite(low):
        return "one seed: no interval"
    if resolution and all(abs(d) <= resolution * (1 + 1e-9) for d in paired.deltas):
        return (f"every seed's difference is at most one test image ({resolution:.2f} points): below what the test "
                "set resolves, no evidence either way")
    if max(paired.deltas) - min(paired.deltas) <= 1e-9:
        return f"the same difference on all {len(paired.deltas)} seeds: zero spread, no interval to judge"
    return "its interval excludes 0" if low > 0 or high < 0 else "its interval includes 0"


def lead_text(margin: Paired, runner_up: str, said: str) -> str:
    """'ahead of <runner_up> by +x points on the same n seeds (k above; <said>)': the leader's paired margin. Where the
    two were not trained on the same seeds (a sweep not finished) the leader by its own seed mean can be behind on the
    seeds both have: then the sentence says so, rather than 'ahead by' a negative margin."""
    both = (f"{margin.difference.text(signed=True)} points on the same {len(margin.seeds)} seeds ({margin.positive} "
            f"above; {said})")
    if margin.difference.mean >= 0:
        return f"ahead of {runner_up} by {both}"
    return f"first by its mean over its own seeds but not on those it shares with {runner_up}: {both}"


def test_resolution(rows: list[dict]) -> float:
    """One test image, in points of test accuracy (the coarsest of the rows' test sets; 0 = unknown, for rows that
    do not record their test set's size)."""
    sizes = [int(row.get("test_samples") or 0) for row in rows]
    return 100.0 / min(sizes) if sizes and min(sizes) > 0 else 0.0


def best_sentence(chosen: dict[tuple, Combination], baselines: Baselines | None, epoch_rule: str,
                  resolution: float) -> str:
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
                         f"% test accuracy, {lead_text(margin, second, verdict(margin, resolution))}")
    return ("Best: " + "; ".join(sentences) + ".") if sentences else ""


def setup_terms(combo: Combination) -> tuple[str, frozenset[str]]:
    """(task loss/rescaling, the additive terms) of a combination's setup, read from its name ('cat_cross/softmax +
    critic + fixmatch')."""
    base, *terms = combo.setup_name.split(" + ")
    return base, frozenset(terms)


def one_term_pairs(chosen: dict[tuple, Combination]) -> list[tuple[str, Combination, Combination]]:
    """Every two chosen setups (at one budget, with one task loss and rescaling) that differ by exactly one term:
    (the term, the setup with it, the setup without it)."""
    pairs = []
    for (setup, budget), combo in chosen.items():
        base, terms = setup_terms(combo)
        for (other_setup, other_budget), other in chosen.items():
            other_base, other_terms = setup_terms(other)
            if other_budget == budget and other_base == base and other_terms < terms and len(terms - other_terms) == 1:
                (term,) = terms - other_terms
                pairs.append((term, combo, other))
    return pairs


def term_gains(chosen: dict[tuple, Combination], epoch_rule: str, resolution: float) -> list[str]:
    """For every two setups that differ by exactly one term (one_term_pairs), what adding it gives, each at its own
    chosen λ, paired over the seeds both have: e.g. the critic on top of FixMatch."""
    lines = []
    for term, combo, other in one_term_pairs(chosen):
        gain = paired_difference(combo.test(epoch_rule), other.test(epoch_rule))
        if gain is None:
            continue
        lines.append(f"- {term} on top of setup {other.setup} ({other.setup_name}), at {combo.labels} labels: setup "
                     f"{combo.setup} minus setup {other.setup} = {gain.difference.text(signed=True)} points, above on "
                     f"{gain.positive} of {len(gain.seeds)} seeds ({verdict(gain, resolution)})")
    return lines
