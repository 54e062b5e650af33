"""Where a gain holds: tt-report across label budgets (when the rows hold two or more budgets).

Every semi-supervised paper draws accuracy against the number of labels (USB's 40 / 250 / 4000 on CIFAR-10), because
a method's gain changes with the budget. From the choices the report already made (one λ per setup and budget, on that
budget's validation labels) this module draws that curve (`plot_budgets`: per setup the chosen λ's seed mean with its
95% t interval as a band and the seeds as dots, the baselines dashed, labels on a log axis), tabulates each setup's
paired difference to setup 1 per budget (`budget_table`), and says per budget which method is best and where a
setup's gain over setup 1 has an interval that excludes 0 (`budget_finding`).
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

from twinturbo.common.atomic import save_figure
from twinturbo.train.report.baseline import Baselines
from twinturbo.train.report.figures import pyplot, setup_line
from twinturbo.train.report.selection import Combination, setup_order, swept_weights, weight_symbol
from twinturbo.train.report.sentences import one_term_pairs
from twinturbo.train.report.stats import mean_interval, paired_difference


def setup1_seeds(chosen: dict[tuple, Combination], budget: int, epoch_rule: str) -> dict[int, float] | None:
    """{seed: test accuracy} of setup 1 at `budget` (its chosen combination), the reference of every paired gain."""
    combo = next((c for (s, n), c in chosen.items() if n == budget and s in (1, "1")), None)
    return combo.test(epoch_rule) if combo is not None else None


def paired_cell(paired) -> str:
    """A paired difference as a table cell: '+1.50 ± 0.25 (4/5)' (seeds above in brackets), '-' where none."""
    return "-" if paired is None else f"{paired.difference.text(signed=True)} ({paired.positive}/{len(paired.seeds)})"


def _setups(chosen: dict[tuple, Combination]) -> list:
    return sorted({setup for setup, _ in chosen}, key=setup_order)


def budget_table(chosen: dict[tuple, Combination], baselines: Baselines | None, epoch_rule: str) -> list[str]:
    """Per setup (and baseline) and budget: its paired difference to setup 1 in points ± 95% t half-width, and how
    many seeds are above setup 1; the test accuracy where it is setup 1 itself."""
    budgets = sorted({n for _, n in chosen})
    names = {setup: combo.setup_name for (setup, _), combo in chosen.items()}
    lines = ["| setup | " + " | ".join(f"{n} labels" for n in budgets) + " |", "|---|" + "---:|" * len(budgets)]
    entrants = [(f"{setup}: {names[setup]}", {n: chosen[(setup, n)].test(epoch_rule) for n in budgets
                                              if (setup, n) in chosen}, setup in (1, "1"))
                for setup in _setups(chosen)]
    entrants += [(method, dict(per_budget), False) for method, per_budget in (baselines or {}).items()]
    for name, per_budget, is_reference in entrants:
        cells = []
        for budget in budgets:
            seeds, reference = per_budget.get(budget), setup1_seeds(chosen, budget, epoch_rule)
            paired = paired_difference(seeds, reference) if seeds and reference else None
            if is_reference and seeds:
                cells.append(f"{mean_interval(list(seeds.values())).text()} %")
            elif paired is not None:
                cells.append(paired_cell(paired))
            else:
                cells.append("-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def budget_finding(chosen: dict[tuple, Combination], baselines: Baselines | None, epoch_rule: str,
                   verdict) -> str:
    """One line across budgets: per budget the best method by seed mean, and the setups whose paired gain over setup
    1 has a 95% interval above 0 (`verdict(paired)` says what an interval can say: 'its interval excludes 0' only
    where one can)."""
    best, held = [], []
    for budget in sorted({n for _, n in chosen}):
        entrants = {f"setup {s}": c.test(epoch_rule) for (s, n), c in chosen.items() if n == budget}
        entrants.update({m: per[budget] for m, per in (baselines or {}).items() if per.get(budget)})
        name, seeds = max(entrants.items(), key=lambda item: sum(item[1].values()) / len(item[1]))
        best.append(f"at {budget} labels {name} ({mean_interval(list(seeds.values())).text()} %)")
        reference = setup1_seeds(chosen, budget, epoch_rule)
        above = []
        for (setup, n), combo in sorted(chosen.items(), key=lambda item: setup_order(item[0][0])):
            paired = paired_difference(combo.test(epoch_rule), reference) if n == budget and reference else None
            if paired is not None and setup not in (1, "1") and paired.difference.mean > 0 \
                    and verdict(paired) == "its interval excludes 0":
                above.append(f"{setup} ({paired.difference.text(signed=True)})")
        held.append(f"at {budget} labels " + (f"setup{'s' if len(above) > 1 else ''} {', '.join(above)}" if above
                                               else "none"))
    return ("Across budgets: the best is " + "; ".join(best) + ". A gain over setup 1 whose 95% interval is above 0: "
            + "; ".join(held) + "." + term_budgets(chosen, epoch_rule, verdict))


def _term_gains(chosen: dict[tuple, Combination], epoch_rule: str) -> dict[tuple, dict[int, object]]:
    """(term, setup without it, setup with it) -> budget -> the paired gain of adding the term (each setup at its
    chosen λ), for every two setups one term apart (sentences.one_term_pairs), in setup order."""
    gains: dict[tuple, dict[int, object]] = {}
    for term, combo, other in sorted(one_term_pairs(chosen), key=lambda item: (setup_order(item[2].setup),
                                                                                 setup_order(item[1].setup),
                                                                                 item[1].labels)):
        paired = paired_difference(combo.test(epoch_rule), other.test(epoch_rule))
        if paired is not None:
            gains.setdefault((term, other.setup, combo.setup), {})[combo.labels] = paired
    return gains


def term_budgets(chosen: dict[tuple, Combination], epoch_rule: str, verdict) -> str:
    """' A term's own gain whose 95% interval excludes 0: ...': where adding a term (the critic on top of setup 1, on
    top of FixMatch, ...) changes the accuracy beyond the seeds' noise, budget by budget; term_gain_table has them
    all."""
    gains = _term_gains(chosen, epoch_rule)
    if not gains:
        return ""
    held = [f"{term} on top of setup {without} at {budget} labels ({paired.difference.text(signed=True)})"
            for (term, without, _), per_budget in gains.items()
            for budget, paired in sorted(per_budget.items()) if verdict(paired) == "its interval excludes 0"]
    return " A term's own gain whose 95% interval excludes 0: " + ("; ".join(held) if held else "none") + \
        " (each term at every budget: the table below)."


def term_gain_table(chosen: dict[tuple, Combination], epoch_rule: str) -> list[str]:
    """Per term and the setup it is added to, per budget: the paired gain (points ± 95% t half-width, seeds above)."""
    gains = _term_gains(chosen, epoch_rule)
    if not gains:
        return []
    budgets = sorted({n for _, n in chosen})
    lines = ["| term | on top of | " + " | ".join(f"{n} labels" for n in budgets) + " |",
             "|---|---|" + "---:|" * len(budgets)]
    for (term, without, with_term), per_budget in gains.items():
        lines.append(f"| {term} (setup {with_term}) | setup {without} | "
                     + " | ".join(paired_cell(per_budget.get(n)) for n in budgets) + " |")
    return lines


def chosen_by_budget(combos: list[Combination]) -> str:
    """What one setup chose at its budgets, each axis once: 'λ_C=3 τ_Fix=0.95; λ_Fix 0.3 at 40, 0.3 at 100, 1 at 250'
    (an axis chosen alike at every budget by its value, the others budget by budget)."""
    same, varying = [], []
    for axis in swept_weights(combos):
        values = [f"{c.weight(axis):g}" for c in combos]
        if len(set(values)) == 1:
            same.append(f"{weight_symbol(axis)}={values[0]}")
        else:
            varying.append(f"{weight_symbol(axis)} " + ", ".join(f"{v} at {c.labels}" for v, c in zip(values, combos)))
    return "; ".join(part for part in (" ".join(same), "; ".join(varying)) if part)


def plot_budgets(chosen: dict[tuple, Combination], baselines: Baselines | None, dataset: str, backbone: str,
                 path: Path, rule: str, epoch_rule: str = "last") -> None:
    """Test accuracy against the label budget (log axis): per setup a line through the chosen λ's seed means, its 95%
    t interval as a band and its seeds as dots; the baselines dashed (means only). `rule` says how λ was chosen."""
    plt = pyplot()
    budgets = sorted({n for _, n in chosen})
    setups = _setups(chosen)
    fig, ax = plt.subplots(figsize=(9.0, 6.2 + 0.22 * len(setups)))
    for index, setup in enumerate(setups):
        points = [(n, chosen[(setup, n)]) for n in budgets if (setup, n) in chosen]
        colour = f"C{index % 10}"
        means, lows, highs = [], [], []
        for n, combo in points:
            seeds = combo.test(epoch_rule)
            interval = mean_interval(list(seeds.values()))
            means.append(interval.mean)
            lows.append(interval.low if math.isfinite(interval.half_width) else interval.mean)
            highs.append(interval.high if math.isfinite(interval.half_width) else interval.mean)
            shift = 1 + 0.02 * (index - (len(setups) - 1) / 2)  # each setup's seeds beside, not on, the others
            ax.scatter([n * shift] * len(seeds), list(seeds.values()), s=8, color=colour, alpha=0.6, zorder=3)
        xs = [n for n, _ in points]
        chosen_text = chosen_by_budget([c for _, c in points])
        ax.plot(xs, means, marker="o", color=colour, linewidth=1.8,
                label="\n    ".join(textwrap.wrap(setup_line(setup, points[0][1].setup_name)
                                                  + (f" ({chosen_text})" if chosen_text else ""), 110)))
        ax.fill_between(xs, lows, highs, color=colour, alpha=0.12 if len(setups) < 5 else 0.06, linewidth=0.6,
                        edgecolor=colour, linestyle=":")
    for index, (method, per_budget) in enumerate((baselines or {}).items()):
        xs = [n for n in budgets if per_budget.get(n)]
        if xs:
            ax.plot(xs, [sum(per_budget[n].values()) / len(per_budget[n]) for n in xs], linestyle="--",
                    color=f"C{(index + 5) % 10}", linewidth=1.2, label=f"{method} (baseline)")
    ax.set_xscale("log")
    ax.set_xticks(budgets, [str(n) for n in budgets])
    ax.minorticks_off()
    ax.set_xlabel("labels (class-balanced labelled subset), log scale")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{dataset} ({backbone}): test accuracy against labels\n{rule}\n"
                 "line = seed mean at the chosen λ, band = 95% t interval, dots = seeds, dashed = baselines",
                 fontsize=9.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=1, frameon=False)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
