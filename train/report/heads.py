"""Which head, and does a term's gain hold on every head: tt-report across heads (when the rows hold two or more).

Each head is its own report section (selection.row_group names it after the backbone), with λ chosen per setup, head
and budget as everywhere. From those choices this module answers the architecture questions (train/heads/): per
budget the best (setup, head) with its paired margin over the runner-up (`head_finding`), each setup's paired gain
over setup 1 on each head (`gain_table`: does the critic's gain, and FixMatch's, hold on every head), each head
against the paper's head on the same setup and seeds (`head_table`), and a figure of every setup on every head
(`plot_heads`).
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from twinturbo.common.atomic import save_figure
from twinturbo.train.heads import DEFAULT_HEAD, HEADS
from twinturbo.train.report.budgets import paired_cell, setup1_seeds
from twinturbo.train.report.figures import BUDGET_COLOURS, pyplot, setup_label
from twinturbo.train.report.selection import Combination, setup_order, split_head
from twinturbo.train.report.sentences import lead_text, one_term_pairs
from twinturbo.train.report.stats import mean_interval, paired_difference

Chosen = dict[tuple, Combination]  # (setup, budget) -> the combination chosen on validation labels


def heads_of(drawn: dict[tuple[str, str], tuple]) -> dict[tuple[str, str], dict[str, Chosen]]:
    """(dataset, backbone) -> head -> its choices, for the stores whose rows hold two or more heads (the report's
    `drawn`: (dataset, backbone label) -> (chosen, edges, protocol, rule))."""
    found: dict[tuple[str, str], dict[str, Chosen]] = {}
    for (dataset, label), (chosen, *_) in drawn.items():
        backbone, head = split_head(label)
        found.setdefault((dataset, backbone), {})[head] = chosen
    return {key: dict(sorted(heads.items(), key=lambda item: _head_order(item[0])))
            for key, heads in found.items() if len(heads) > 1}


def _head_order(head: str) -> tuple:
    return (HEADS[head].order if head in HEADS else 1000, head)


def head_finding(heads: dict[str, Chosen], epoch_rule: str, verdict) -> str:
    """Per budget, the best (setup, head) by seed-mean test accuracy with its paired margin over the runner-up, and
    on which heads each term's gain has a 95% interval above 0 (gains_per_head; `verdict(paired)` says what an
    interval can say)."""
    sentences = []
    for budget in sorted({n for chosen in heads.values() for _, n in chosen}):
        entrants = sorted(((head, combo) for head, chosen in heads.items() for (_, n), combo in chosen.items()
                           if n == budget), key=lambda item: -statistics.fmean(item[1].test(epoch_rule).values()))
        if not entrants:
            continue
        (head, best), rest = entrants[0], entrants[1:]
        text = (f"at {budget} labels the best is setup {best.setup} ({best.setup_name}) on the {head} head with "
                f"{mean_interval(list(best.test(epoch_rule).values())).text()} %")
        if rest:
            other_head, other = rest[0]
            margin = paired_difference(best.test(epoch_rule), other.test(epoch_rule))
            if margin is not None:
                text += ", " + lead_text(margin, f"setup {other.setup} on the {other_head} head", verdict(margin))
        text += gains_per_head(heads, budget, epoch_rule, verdict)
        sentences.append(text)
    return ("Heads: " + "; ".join(sentences) + ".") if sentences else ""


def gains_per_head(heads: dict[str, Chosen], budget: int, epoch_rule: str, verdict) -> str:
    """On how many heads each term's gain at `budget` has a 95% interval above 0: the gain of every term on top of the
    setup without it (sentences.one_term_pairs: the critic on setup 1, FixMatch on setup 2), then of every other setup
    over setup 1 (e.g. critic + FixMatch together)."""
    found: dict[tuple, list[tuple[str, bool]]] = {}
    for head, chosen in heads.items():
        at_budget = {key: combo for key, combo in chosen.items() if key[1] == budget}
        pairs = one_term_pairs(at_budget)
        comparisons = [(f"{term} on top of setup {other.setup}", combo, other.test(epoch_rule))
                       for term, combo, other in pairs]
        one_term_from_1 = {combo.setup for _, combo, other in pairs if other.setup in (1, "1")}
        reference = setup1_seeds(chosen, budget, epoch_rule)
        comparisons += [(f"setup {setup} over setup 1", combo, reference) for (setup, _), combo in at_budget.items()
                        if setup not in (1, "1") and setup not in one_term_from_1 and reference]
        for label, combo, against in comparisons:
            paired = paired_difference(combo.test(epoch_rule), against)
            if paired is not None:
                found.setdefault((setup_order(combo.setup), label), []).append(
                    (head, verdict(paired) == "its interval excludes 0" and paired.difference.low > 0))
    text = ""
    for (_, label), holds in sorted(found.items()):
        above = [head for head, ok in holds if ok]
        text += (f"; {label} excludes 0 on {len(above)} of {len(holds)} heads"
                 + (f" ({', '.join(above)})" if above else ""))
    return text


def gain_table(heads: dict[str, Chosen], epoch_rule: str) -> list[str]:
    """Per setup and budget (rows) and head (columns): the paired difference to setup 1 on that head, points ± 95% t
    half-width (seeds above); setup 1's row is its test accuracy."""
    keys = sorted({key for chosen in heads.values() for key in chosen}, key=lambda k: (k[1], setup_order(k[0])))
    names = {key: combo.setup_name for chosen in heads.values() for key, combo in chosen.items()}
    lines = ["| setup | labels | " + " | ".join(heads) + " |", "|---|---:|" + "---:|" * len(heads)]
    for setup, budget in keys:
        cells = []
        for chosen in heads.values():
            combo, reference = chosen.get((setup, budget)), setup1_seeds(chosen, budget, epoch_rule)
            if combo is None:
                cells.append("-")
            elif setup in (1, "1"):
                cells.append(f"{mean_interval(list(combo.test(epoch_rule).values())).text()} %")
            else:
                cells.append(paired_cell(paired_difference(combo.test(epoch_rule), reference) if reference else None))
        lines.append(f"| {setup}: {names[(setup, budget)]} | {budget} | " + " | ".join(cells) + " |")
    return lines


def reference_head(heads: dict[str, Chosen]) -> str:
    """The head the others are compared with: the paper's where the rows have it."""
    return DEFAULT_HEAD if DEFAULT_HEAD in heads else next(iter(heads))


def head_table(heads: dict[str, Chosen], epoch_rule: str) -> list[str]:
    """Per setup and budget: each head's test accuracy (seed mean ± 95% t half-width) and, beside each other head,
    its paired difference to the reference head (reference_head: the paper's) on the same setup and seeds."""
    keys = sorted({key for chosen in heads.values() for key in chosen}, key=lambda k: (k[1], setup_order(k[0])))
    reference_head_name = reference_head(heads)
    lines = ["| setup | labels | " + " | ".join(heads) + " |", "|---|---:|" + "---:|" * len(heads)]
    for key in keys:
        cells = []
        reference = heads[reference_head_name].get(key)
        for head, chosen in heads.items():
            combo = chosen.get(key)
            if combo is None:
                cells.append("-")
                continue
            text = f"{mean_interval(list(combo.test(epoch_rule).values())).text()} %"
            if head != reference_head_name and reference is not None:
                paired = paired_difference(combo.test(epoch_rule), reference.test(epoch_rule))
                text += f", {paired_cell(paired)}"
            cells.append(text)
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
    return lines


def plot_heads(heads: dict[str, Chosen], dataset: str, backbone: str, path: Path, protocol_text: str,
               epoch_rule: str = "last") -> None:
    """One panel per budget: per setup, a bar per head (its chosen λ's seed mean), the 95% t interval in black and
    each seed as a dot."""
    plt = pyplot()
    budgets = sorted({n for chosen in heads.values() for _, n in chosen})
    setups = sorted({s for chosen in heads.values() for s, _ in chosen}, key=setup_order)
    names = {s: c.setup_name for chosen in heads.values() for (s, _), c in chosen.items()}
    width = 0.8 / len(heads)
    fig, axes = plt.subplots(len(budgets), 1, figsize=(max(8.0, 1.6 * len(setups) * max(1, len(heads) / 3) + 2.5),
                                                        4.2 * len(budgets) + 0.8), squeeze=False)
    for ax, budget in zip(axes[:, 0], budgets):
        values: list[float] = []
        for h_index, (head, chosen) in enumerate(heads.items()):
            colour = BUDGET_COLOURS[h_index % len(BUDGET_COLOURS)]
            for s_index, setup in enumerate(setups):
                combo = chosen.get((setup, budget))
                if combo is None:
                    continue
                seeds = combo.test(epoch_rule)
                interval = mean_interval(list(seeds.values()))
                x = s_index + (h_index - (len(heads) - 1) / 2) * width
                ax.bar(x, interval.mean, width * 0.9, color=colour, label=head if s_index == 0 else None)
                if math.isfinite(interval.half_width):
                    ax.errorbar(x, interval.mean, yerr=interval.half_width, color="black", capsize=2, linewidth=1)
                    values += [interval.low, interval.high]
                ax.scatter([x] * len(seeds), list(seeds.values()), s=7, color="black", zorder=3)
                values += [interval.mean, *seeds.values()]
        low, high = min(values), max(values)
        pad = max(1.0, 0.08 * (high - low))
        ax.set_ylim(max(0.0, low - pad), min(100.0, high + pad))  # an interval past 0 or 100 % is cut at the frame
        ax.set_xticks(range(len(setups)), [setup_label(s, names[s]) for s in setups], fontsize=8)
        ax.set_ylabel(f"test accuracy (%), {budget} labels")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(title="head", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[0, 0].set_title(f"{dataset} ({backbone}): every setup on every head\n{protocol_text}; bars: seed mean, "
                         "black: 95% t interval, dots: seeds", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
