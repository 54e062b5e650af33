"""tt-report's figures: the selected λ per setup with its interval (Figures 2-4, redrawn with validation selection),
every λ combination (Appendix C), and what the semi-supervised terms do over training (train/run/diagnostics.py).

Every figure is drawn for a reader who has not seen the code: its title says what a bar is and how λ was chosen,
baselines stand apart from the setups, and fonts stay readable at the saved size.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Callable

from twinturbo.common.atomic import save_figure
from twinturbo.train.report.selection import Combination, by_setup, choose, setup_order, swept_weights
from twinturbo.train.report.stats import mean_interval
from twinturbo.train.terms import DISPLAY_ORDER

# One colour per label budget, in budget order (colour-blind safe pairs from matplotlib's tab10).
BUDGET_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
PROTOCOL_TEXT = {"val": "λ chosen on the validation split", "test": "λ chosen on the test set (seed mean)",
                 "paper": "λ chosen on the test set"}
FIXED_TEXT = "one λ combination per setup (nothing to choose)"


def protocol_text(combos: list[Combination], protocol: str) -> str:
    """How λ was chosen, as a title says it: the protocol, unless every setup had one combination only."""
    return PROTOCOL_TEXT[protocol] if any(len(v) > 1 for v in by_setup(combos).values()) else FIXED_TEXT


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def setup_label(setup: int | str, name: str) -> str:
    """'3: cat_twin/softmax\n+ critic' for an x axis; a long key or loss name goes on lines of its own (breaking at
    the loss's '/' only where it is long itself) so that labels do not run into their neighbours."""
    head, _, terms = name.partition(" + ")
    loss, _, rescale = head.partition("/")
    if len(f"{setup}: {head}") <= 21:
        first = f"{setup}: {head}"
    else:
        first = f"{setup}:\n{head}" if len(head) <= 21 else f"{setup}:\n{loss}/\n{rescale}"
    return first + ("\n+ " + terms if terms else "\nalone")


def setup_line(setup: int | str, name: str) -> str:
    """'3: cat_twin/softmax + critic' on one line, for a legend ('alone' where the setup adds no term)."""
    return f"{setup}: {name}" + ("" if " + " in name else " alone")


def _axis_floor(values: list[float]) -> float:
    """Start the y axis near the data (the differences between setups are a few points), at a multiple of 5."""
    return max(0.0, 5.0 * math.floor((min(values) - 3.0) / 5.0))


def plot_selected(combos: list[Combination], chosen: dict[tuple, Combination],
                  baselines: dict[str, dict[int, dict[int, float]]] | None, dataset: str, backbone: str, path: Path,
                  protocol: str, epoch_rule: str = "last", edges: dict[tuple, list[str]] | None = None) -> None:
    """Figures 2-4 for a defensible protocol: per setup and label budget the chosen combination's seed-mean test
    accuracy (bar) with its 95% t interval (black) and each seed (dots); a diamond marks the paper's protocol (λ on
    the test set, best seed). Baselines (same labelled subsets) are hatched bars to the right of a divider."""
    plt = pyplot()
    groups = by_setup(combos)
    setups = list(dict.fromkeys(setup for setup, _ in groups))
    names = {c.setup: c.setup_name for c in combos}
    budgets = sorted({labels for _, labels in groups})
    methods = [m for m in (baselines or {}) if any((baselines[m].get(b) for b in budgets))]
    width = 0.8 / len(budgets)
    slots = len(setups) + (len(methods) + 0.6 if methods else 0)
    fig, ax = plt.subplots(figsize=(max(9.0, 1.25 * slots + 2.5), 6.0))
    values: list[float] = []

    def bar(x: float, seeds: dict[int, float], colour: str, hatch: str | None = None, label: str | None = None):
        interval = mean_interval(list(seeds.values()))
        ax.bar(x, interval.mean, width * 0.9, color=colour if hatch is None else "white", edgecolor=colour,
               hatch=hatch, linewidth=1.2, label=label)
        if math.isfinite(interval.half_width):
            ax.errorbar(x, interval.mean, yerr=interval.half_width, color="black", capsize=3, linewidth=1.2)
        ax.scatter([x] * len(seeds), list(seeds.values()), s=9, color="black", zorder=3)
        ends = [interval.low, interval.high] if math.isfinite(interval.half_width) else [interval.mean]
        values.extend([*ends, *seeds.values()])  # the axis holds every interval whole
        return interval

    texts: list[tuple[float, str]] = []  # written inside the bars, at their foot, once the axis is set
    edge_marked = False
    for b_index, budget in enumerate(budgets):
        colour = BUDGET_COLOURS[b_index % len(BUDGET_COLOURS)]
        counts = [len(chosen[key].test(epoch_rule)) for key in groups if key[1] == budget and key in chosen]
        fewest, most = min(counts), max(counts)  # a sweep still running has fewer seeds for its later setups
        legend = f"{budget} labels, {fewest if fewest == most else f'{fewest}-{most}'} seed{'s' if most > 1 else ''}"
        for s_index, setup in enumerate(setups):
            candidates = groups.get((setup, budget))
            if not candidates:
                continue
            x = s_index + (b_index - (len(budgets) - 1) / 2) * width
            choice = chosen[(setup, budget)]
            interval = bar(x, choice.test(epoch_rule), colour, label=legend if s_index == 0 else None)
            paper = choose(candidates, "paper", epoch_rule)
            best_seed = max(paper.test(epoch_rule).values())
            ax.scatter([x], [best_seed], marker="D", s=22, facecolor="white", edgecolor="black", zorder=4,
                       label="paper's protocol: λ on test, best seed" if b_index == 0 and s_index == 0 else None)
            values.append(best_seed)
            text = choice.lambda_text(swept_weights(candidates), "\n")
            if edges and edges.get((setup, budget)):
                text += "\nedge!"
                edge_marked = True
            texts.append((x, f"{interval.mean:.1f}" + (f"\n{text}" if text else "")))
        for m_index, method in enumerate(methods):
            seeds = (baselines[method] or {}).get(budget)
            if seeds:
                x = len(setups) + 0.6 + m_index + (b_index - (len(budgets) - 1) / 2) * width
                interval = bar(x, seeds, colour, hatch="///")
                texts.append((x, f"{interval.mean:.1f}"))
    ticks = list(range(len(setups))) + [len(setups) + 0.6 + i for i in range(len(methods))]
    labels = [setup_label(s, names[s]) for s in setups] + [m.replace("Classifier", "\nClassifier") for m in methods]
    ax.set_xticks(ticks, labels, fontsize=8)
    if methods:
        ax.axvline(len(setups) - 0.2, color="grey", linewidth=0.8, linestyle=":")
        ax.text(len(setups) + 0.6 + (len(methods) - 1) / 2, 1.01, "baselines (hatched)", ha="center", va="bottom",
                transform=ax.get_xaxis_transform(), fontsize=8)
    floor = _axis_floor(values)
    ax.set_ylim(floor, min(100.0, max(values) + 2.0))
    for x, text in texts:
        ax.text(x, floor + 0.5, text, ha="center", va="bottom", fontsize=6.5,
                bbox=dict(facecolor="white", alpha=0.8, linewidth=0, pad=1))
    ax.set_ylabel("test accuracy (%)")
    epoch_text = "last epoch" if epoch_rule == "last" else "epoch of best validation accuracy"
    ax.set_title(f"{dataset} ({backbone}): {protocol_text(combos, protocol)}, {epoch_text}\n"
                 "bar = seed mean of test accuracy, black = 95% t interval, dots = seeds"
                 + ("; 'edge!' = the chosen λ is on its grid's edge" if edge_marked else ""),
                 fontsize=10, pad=16 if methods else 6)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8, ncol=len(budgets) + 1, frameon=False)
    fig.tight_layout()
    save_figure(fig, path, dpi=130)
    plt.close(fig)


def plot_all(combos: list[Combination], chosen: dict[tuple, Combination], dataset: str, backbone: str, path: Path,
             protocol: str, epoch_rule: str = "last") -> None:
    """Appendix C: every λ combination, one panel per label budget, grouped by setup: bar = seed mean of test
    accuracy, line = range over seeds; the combination the protocol chooses is marked with a star."""
    plt = pyplot()
    import matplotlib.transforms

    budgets = sorted({c.labels for c in combos})
    groups = by_setup(combos)
    widest = max(sum(len(v) for (s, n), v in groups.items() if n == budget) for budget in budgets)
    fig, axes = plt.subplots(len(budgets), 1, figsize=(max(9.0, 0.42 * widest + 5), 4.8 * len(budgets)),
                             squeeze=False)
    for b_index, (budget, ax) in enumerate(zip(budgets, axes[:, 0])):
        x, xs, bounds, means, lows, highs, ticks, stars = 0.0, [], [], [], [], [], [], []
        for (setup, n), candidates in groups.items():
            if n != budget:
                continue
            choice = chosen[(setup, n)]
            active = swept_weights(candidates)
            if xs:
                x += 1.2
            bounds.append((candidates[0].setup_name, setup, x, x + len(candidates) - 1))
            for combo in candidates:
                seeds = list(combo.test(epoch_rule).values())
                xs.append(x)
                means.append(sum(seeds) / len(seeds))
                lows.append(min(seeds))
                highs.append(max(seeds))
                ticks.append(combo.lambda_text(active) or "no λ")
                if combo is choice:
                    stars.append((x, max(seeds)))
                x += 1.0
        colour = BUDGET_COLOURS[b_index % len(BUDGET_COLOURS)]
        ax.bar(xs, means, 0.8, color=colour)
        ax.vlines(xs, lows, highs, colors="black", linewidth=1.4)
        ax.scatter([s[0] for s in stars], [s[1] + 0.4 for s in stars], marker="*", s=60, color="black", zorder=3)
        ax.set_ylim(_axis_floor(lows), min(100.0, max(highs)) + 2.5)
        ax.set_xlim(xs[0] - 0.8, xs[-1] + 0.8)
        ax.set_xticks(xs, ticks, rotation=90, fontsize=7)
        above = matplotlib.transforms.blended_transform_factory(ax.transData, ax.transAxes)
        for name, setup, first, last in bounds:
            ax.text((first + last) / 2, 1.02, setup_label(setup, name), transform=above, ha="center", va="bottom",
                    fontsize=6.5)
            if first > 0:
                ax.axvline(first - 1.1, color="grey", linewidth=0.8, linestyle=":")
        ax.set_ylabel(f"{budget} labels\ntest accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    # The star's key goes in the title: a legend inside the panel covered the last setup's bars.
    star = "" if protocol_text(combos, protocol) == FIXED_TEXT else f", ★ = {PROTOCOL_TEXT[protocol]}"
    fig.suptitle(f"{dataset} ({backbone}): every λ combination\nbar = seed mean, line = range over seeds{star}",
                 fontsize=11)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def _same_curve(a: list[float], b: list[float]) -> bool:
    """Two curves that would cover each other: the same length and values equal within 1e-9 (NaN equal to NaN)."""
    return len(a) == len(b) and all((math.isnan(x) and math.isnan(y)) or abs(x - y) <= 1e-9 for x, y in zip(a, b))


def _gradient_ratio(term: str) -> Callable[[dict], float | None]:
    return lambda d: d[f"grad_{term}"] / d["grad_task"] if d.get(f"grad_{term}") and d.get("grad_task") else None


DIAGNOSTIC_PANELS = (  # (title, function of one epoch's diagnostics dict) -- train/run/diagnostics.py
    ("D's accuracy on the prior's one-hots (real)", lambda d: d.get("d_real_acc")),
    ("D's accuracy on σ(f) of unlabelled images (fake)", lambda d: d.get("d_fake_acc")),
    ("entropy of unlabelled predictions (nats)", lambda d: d.get("unlabelled_entropy")),
    ("total variation: predicted marginal vs p(y)", lambda d: d.get("marginal_tv")),
    *((f"|{term.weight.symbol} ∇ {term.name}| / |∇ task| at the projector", _gradient_ratio(term.name))
      for term in DISPLAY_ORDER),
)


def plot_diagnostics(rows: list[dict], chosen: dict[tuple, Combination], dataset: str, backbone: str,
                     path: Path) -> bool:
    """What the semi-supervised terms do over training, per epoch, for the chosen λ of every setup with a term (seed
    mean): one block of panels per label budget (a term's gradient panel only where some setup has it), one shared
    legend. Returns False (draws nothing) without diagnostics."""
    plt = pyplot()
    curves: dict[tuple, list[list[dict]]] = defaultdict(list)
    for row in rows:
        config = row["config"]
        combo = chosen.get((row["setup"], int(config["labels"])))
        if combo is not None and combo.has_terms and combo.matches(config):
            curves[(row["setup"], int(config["labels"]))].append(row.get("epoch_diagnostics") or [])
    if not any(any(epochs) for runs in curves.values() for epochs in runs):
        return False
    budgets = sorted({n for _, n in curves})
    panels = [(title, value) for title, value in DIAGNOSTIC_PANELS
              if any(value(epoch) is not None for runs in curves.values() for run in runs for epoch in run)]
    columns = 3
    panel_rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(panel_rows * len(budgets), columns,
                             figsize=(5.2 * columns, 3.6 * panel_rows * len(budgets) + 1.2), squeeze=False)
    handles, hidden = {}, {}  # hidden: setup -> the setups whose equal curve it lies on (drawn dashed)
    setups = sorted({setup for setup, _ in curves}, key=setup_order)  # one colour per setup in every panel
    for b_index, budget in enumerate(budgets):
        for p_index, (title, value) in enumerate(panels):
            ax = axes[b_index * panel_rows + p_index // columns, p_index % columns]
            drawn: dict = {}  # setup -> its curve in this panel
            for (setup, n), runs in curves.items():
                if n != budget:
                    continue
                epochs = max(len(r) for r in runs)
                means = []
                for epoch in range(epochs):
                    found = [value(r[epoch]) for r in runs if epoch < len(r) and value(r[epoch]) is not None]
                    means.append(sum(found) / len(found) if found else float("nan"))
                under = next((other for other, values in drawn.items() if _same_curve(values, means)), None)
                line, = ax.plot(range(1, epochs + 1), means, marker="o", markersize=3,
                                color=f"C{setups.index(setup) % 10}",
                                linestyle=(0, (3, 3)) if under is not None else "-")  # the line under it shows
                drawn[setup] = means
                handles.setdefault(setup, line)
                if under is not None:
                    hidden.setdefault(setup, set()).add(under)
            ax.set_title(f"{title}, {budget} labels", fontsize=9)
            ax.set_xlabel("epoch", fontsize=8)
            ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.3)
            if p_index < 2:
                ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)  # chance
        for p_index in range(len(panels), panel_rows * columns):
            axes[b_index * panel_rows + p_index // columns, p_index % columns].axis("off")
    names = {setup: combo.setup_name for (setup, _), combo in chosen.items()}
    def label(setup) -> str:
        under = ", ".join(map(str, sorted(hidden.get(setup, ()), key=setup_order)))
        return f"setup {setup}: {names.get(setup, setup)}" + (f" (dashed where equal to setup {under})" if under else "")

    labels = [label(s) for s in handles]
    fig.legend(list(handles.values()), labels, loc="lower center", ncol=min(3 if hidden else 4, len(handles)),
               fontsize=9, frameon=False)
    fig.suptitle(f"{dataset} ({backbone}): the semi-supervised terms over training (seed mean at each setup's "
                 "chosen λ; dotted = chance)", fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return True
