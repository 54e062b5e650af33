"""`tt-report`: a sweep's results.jsonl as the paper's figures (section 4.4, Figures 2-4 and Appendix C), a summary
table and a CSV.

Selection rule of Figures 2-4: for each setup and label budget, the lambda combination whose best seed is highest
(ties: higher seed mean) is shown; its bar is that best seed, its vertical line the range (min-max) over its seeds.
"""
from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from twinturbo.common.errors import TwinTurboError
from twinturbo.common.store import open_store
from twinturbo.train.sweep import RESULTS_FILE, SETUPS, format_weight, read_rows

# One colour per label budget, in budget order (colour-blind safe pairs from matplotlib's tab10).
BUDGET_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


@dataclass
class Combination:
    """One lambda combination of one setup and label budget, over its seeds (accuracies in %)."""

    setup: int
    labels: int
    critic: float
    latent: float
    accuracies: dict[int, float]  # seed -> test accuracy %

    @property
    def best(self) -> float:
        return max(self.accuracies.values())

    @property
    def worst(self) -> float:
        return min(self.accuracies.values())

    @property
    def mean(self) -> float:
        return sum(self.accuracies.values()) / len(self.accuracies)

    @property
    def lambda_text(self) -> str:
        spec = SETUPS.get(self.setup)
        parts = []
        if spec is None or spec.critic or self.critic:
            parts.append(f"λC={format_weight(self.critic)}")
        if spec is None or spec.latent or self.latent:
            parts.append(f"λL={format_weight(self.latent)}")
        return "\n".join(parts)


def _row_key(row: dict) -> tuple[str, str]:
    store = row.get("store") or {}
    return str(store.get("dataset") or "unknown"), str(store.get("backbone") or "unknown")


def combinations(rows: list[dict]) -> dict[tuple[str, str], list[Combination]]:
    """(dataset, backbone) -> every lambda combination, sorted by setup, label budget, lambda_C, lambda_L."""
    grouped: dict[tuple, dict[int, float]] = defaultdict(dict)
    for row in rows:
        config = row["config"]
        key = _row_key(row) + (int(row["setup"]), int(config["labels"]), float(config["critic_weight"]),
                               float(config["latent_weight"]))
        grouped[key][int(config["seed"])] = 100.0 * float(row["test_accuracy"])
    out: dict[tuple[str, str], list[Combination]] = defaultdict(list)
    for key in sorted(grouped):
        dataset, backbone, setup, labels, critic, latent = key
        out[(dataset, backbone)].append(Combination(setup, labels, critic, latent, grouped[key]))
    return dict(out)


def best_combinations(combos: list[Combination]) -> dict[tuple[int, int], Combination]:
    """(setup, labels) -> the combination shown in Figures 2-4: highest best seed, then highest mean."""
    best: dict[tuple[int, int], Combination] = {}
    for combo in combos:
        key = (combo.setup, combo.labels)
        current = best.get(key)
        if current is None or (combo.best, combo.mean) > (current.best, current.mean):
            best[key] = combo
    return best


def _axis_floor(values: list[float]) -> float:
    """Start the y axis near the data (the differences between setups are a few %), at a multiple of 5."""
    low = min(values)
    return max(0.0, 5.0 * math.floor((low - 3.0) / 5.0))


BASELINE_STYLES = {"LogisticRegression": ("--", "LogReg"), "LabelSpreading": (":", "LabelSpreading")}


def plot_best(combos: list[Combination], dataset: str, backbone: str, path: Path,
              baselines: dict[str, dict[int, dict[int, float]]] | None = None) -> None:
    """Figures 2-4: x = setups, one bar per label budget, bar = best seed of the best lambdas, line = seed range.

    `baselines` (method -> label budget -> seed -> accuracy %) are drawn like the bars: a line at the best seed in
    the budget's colour (dashed LogisticRegression, dotted LabelSpreading) and a band over their seed range.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = best_combinations(combos)
    setups = sorted({s for s, _ in best})
    budgets = sorted({n for _, n in best})
    width = 0.8 / len(budgets)
    fig, ax = plt.subplots(figsize=(max(8.0, 1.5 * len(setups) + 2), 5.5))
    for b_index, budget in enumerate(budgets):
        for s_index, setup in enumerate(setups):
            combo = best.get((setup, budget))
            if combo is None:
                continue
            x = s_index + (b_index - (len(budgets) - 1) / 2) * width
            ax.bar(x, combo.best, width * 0.92, color=BUDGET_COLOURS[b_index % len(BUDGET_COLOURS)],
                   label=f"{budget} labels" if s_index == 0 or (setups[0], budget) not in best else None)
            ax.vlines(x, combo.worst, combo.best, colors="black", linewidth=2)
            ax.hlines([combo.worst, combo.best], x - width * 0.15, x + width * 0.15, colors="black", linewidth=1.5)
            text = f"{combo.best:.1f}" + (f"\n{combo.lambda_text}" if combo.lambda_text else "")
            ax.annotate(text, (x, combo.best), xytext=(0, 3), textcoords="offset points", ha="center", va="bottom",
                        fontsize=7)
    baseline_values = []
    for method, per_budget in (baselines or {}).items():
        style, short = BASELINE_STYLES.get(method, ("-.", method))
        for b_index, budget in enumerate(budgets):
            seeds = per_budget.get(budget)
            if not seeds:
                continue
            colour = BUDGET_COLOURS[b_index % len(BUDGET_COLOURS)]
            values = list(seeds.values())
            baseline_values += values
            ax.axhline(max(values), color=colour, linestyle=style, linewidth=1.3,
                       label=f"{short}, {budget} labels: {max(values):.1f} best seed ({min(values):.1f}-"
                             f"{max(values):.1f})")
            ax.axhspan(min(values), max(values), color=colour, alpha=0.08, linewidth=0)
    all_values = [c.worst for c in best.values()] + baseline_values
    ax.set_ylim(_axis_floor(all_values), min(100.0, max(c.best for c in best.values()) + 8.0) + 4.0)
    ax.set_xticks(range(len(setups)), [SETUPS[s].short_label if s in SETUPS else str(s) for s in setups], fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{dataset} ({backbone}): best λ combination per setup\n"
                 "bar = best seed, black line = range over seeds; baselines likewise (line = best seed, band = range)",
                 fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", fontsize=7, ncol=len(budgets))
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_all(combos: list[Combination], dataset: str, backbone: str, path: Path) -> None:
    """Appendix C: every lambda combination, one panel per label budget, grouped by setup."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.transforms

    budgets = sorted({c.labels for c in combos})
    per_budget = {n: [c for c in combos if c.labels == n] for n in budgets}
    widest = max(len(v) for v in per_budget.values())
    fig, axes = plt.subplots(len(budgets), 1, figsize=(max(8.0, 0.4 * widest + 5), 4.6 * len(budgets)),
                             squeeze=False)
    for b_index, (budget, ax) in enumerate(zip(budgets, axes[:, 0])):
        items = per_budget[budget]
        xs, x, previous_setup, bounds = [], 0.0, None, []
        for combo in items:
            if previous_setup is not None and combo.setup != previous_setup:
                x += 1.2  # a gap between setups, room for their names
            if combo.setup != previous_setup:
                bounds.append([combo.setup, x, x])
            bounds[-1][2] = x
            xs.append(x)
            previous_setup = combo.setup
            x += 1.0
        colour = BUDGET_COLOURS[b_index % len(BUDGET_COLOURS)]
        ax.bar(xs, [c.best for c in items], 0.8, color=colour)
        ax.vlines(xs, [c.worst for c in items], [c.best for c in items], colors="black", linewidth=1.5)
        floor = _axis_floor([c.worst for c in items])
        ax.set_ylim(floor, min(100.0, max(c.best for c in items)) + 2.0)
        ax.set_xlim(xs[0] - 0.8, xs[-1] + 0.8)
        ax.set_xticks(xs, [c.lambda_text.replace("\n", " ") or "no λ" for c in items], rotation=90, fontsize=7)
        above = matplotlib.transforms.blended_transform_factory(ax.transData, ax.transAxes)
        for setup, first, last in bounds:
            label = SETUPS[setup].short_label if setup in SETUPS else str(setup)
            ax.text((first + last) / 2, 1.02, label, transform=above, ha="center", va="bottom", fontsize=6.5)
            if first > 0:
                ax.axvline(first - 1.1, color="grey", linewidth=0.8, linestyle=":")
        ax.set_ylabel(f"{budget} labels\ntest accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    fig.suptitle(f"{dataset} ({backbone}): every λ combination (bar = best seed, line = range over seeds)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


DIAGNOSTIC_PANELS = (  # (title, function of one epoch's diagnostics dict) -- train/diagnostics.py
    ("D accuracy on the prior's one-hots (real)", lambda d: d.get("d_real_acc")),
    ("D accuracy on sigma(f) of unlabelled (fake)", lambda d: d.get("d_fake_acc")),
    ("entropy of unlabelled predictions (nats)", lambda d: d.get("unlabelled_entropy")),
    ("total variation: predicted marginal vs p(y)", lambda d: d.get("marginal_tv")),
    ("|λC ∇ critic| / |∇ task| at the projector",
     lambda d: d["grad_critic"] / d["grad_task"] if d.get("grad_critic") and d.get("grad_task") else None),
)


def plot_diagnostics(rows: list[dict], combos: list[Combination], dataset: str, backbone: str, path: Path) -> bool:
    """What the critic does over training, per epoch, for the figure's λ of every setup with a critic (seed mean;
    one row of panels per label budget). Returns False (and draws nothing) when the rows hold no diagnostics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = {key: combo for key, combo in best_combinations(combos).items() if SETUPS.get(key[0]) and
            SETUPS[key[0]].critic}
    curves: dict[tuple[int, int], list[list[dict]]] = defaultdict(list)
    for row in rows:
        config = row["config"]
        key = (int(row["setup"]), int(config["labels"]))
        combo = best.get(key)
        if combo and (float(config["critic_weight"]), float(config["latent_weight"])) == (combo.critic, combo.latent):
            curves[key].append(row.get("epoch_diagnostics") or [])
    if not any(any(epochs) for runs in curves.values() for epochs in runs):
        return False
    budgets = sorted({n for _, n in best})
    fig, axes = plt.subplots(len(budgets), len(DIAGNOSTIC_PANELS), figsize=(4.2 * len(DIAGNOSTIC_PANELS),
                                                                            3.6 * len(budgets)), squeeze=False)
    for b_index, budget in enumerate(budgets):
        for p_index, (title, value) in enumerate(DIAGNOSTIC_PANELS):
            ax = axes[b_index, p_index]
            for (setup, n), runs in sorted(curves.items()):
                if n != budget:
                    continue
                epochs = max(len(r) for r in runs)
                means = []
                for epoch in range(epochs):
                    values = [value(r[epoch]) for r in runs if epoch < len(r) and value(r[epoch]) is not None]
                    means.append(sum(values) / len(values) if values else float("nan"))
                ax.plot(range(1, epochs + 1), means, marker="o", markersize=3,
                        label=f"{setup}: λC={format_weight(best[(setup, n)].critic)}")
            ax.set_title(f"{title}\n{budget} labels", fontsize=8)
            ax.set_xlabel("epoch", fontsize=8)
            ax.grid(alpha=0.3)
            if p_index == 0:
                ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
                ax.legend(fontsize=6)
    fig.suptitle(f"{dataset} ({backbone}): the critic over training (seed mean, the figure's λ per setup)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


BASELINE_TEXT = {
    "LogisticRegression": "scikit-learn LogisticRegression on the CLS vectors of each seed's labelled subset",
    "LabelSpreading": "scikit-learn LabelSpreading (kNN graph, 64 PCA components) over each seed's labelled subset "
                      "plus all other train CLS vectors as unlabelled",
}

Baselines = dict[str, dict[int, dict[int, float]]]  # method -> label budget -> seed -> accuracy %


def _spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def paired_table(combos: list[Combination], baseline: Baselines | None) -> list[str]:
    """Per label budget and setup (the figure's λ): mean and range over seeds, and the paired difference to setup 1
    on the same seeds (mean, and its range over seeds); then the baselines, paired the same way."""
    best = best_combinations(combos)
    lines = ["| setup | labels | λ_C | λ_L | mean % | min-max % | Δ vs setup 1, same seed: mean (min..max) | seeds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for budget in sorted({n for _, n in best}):
        reference = best.get((1, budget))

        def paired(accuracies: dict[int, float]) -> str:
            if reference is None:
                return "no setup 1"
            common = sorted(set(accuracies) & set(reference.accuracies))
            if not common:
                return "no common seed"
            deltas = [accuracies[seed] - reference.accuracies[seed] for seed in common]
            return f"{sum(deltas) / len(deltas):+.2f} ({min(deltas):+.2f}..{max(deltas):+.2f})"

        for (setup, n), combo in sorted(best.items()):
            if n != budget:
                continue
            name = SETUPS[setup].name if setup in SETUPS else str(setup)
            values = list(combo.accuracies.values())
            lines.append(f"| setup {setup}: {name} | {budget} | {format_weight(combo.critic)} | "
                         f"{format_weight(combo.latent)} | {combo.mean:.2f} | {_spread(values)} | "
                         f"{paired(combo.accuracies)} | {len(values)} |")
        for method, per_budget in (baseline or {}).items():
            seeds = per_budget.get(budget)
            if seeds:
                values = list(seeds.values())
                lines.append(f"| {method} | {budget} | | | {sum(values) / len(values):.2f} | {_spread(values)} | "
                             f"{paired(seeds)} | {len(values)} |")
    return lines


def summary_markdown(by_dataset: dict[tuple[str, str], list[Combination]],
                     baselines: dict[tuple[str, str], Baselines | str] | None = None) -> str:
    """One section per dataset: setup x label budget, best lambdas, best/mean/min accuracy over that combination's
    seeds; the baselines on the same labelled subsets (or why they are missing); the paired comparison."""
    lines = []
    for (dataset, backbone), combos in sorted(by_dataset.items()):
        baseline = (baselines or {}).get((dataset, backbone))
        best = best_combinations(combos)
        lines += [f"### {dataset} ({backbone})", "",
                  "| setup | labels | λ_C | λ_L | best % | mean % | min % | seeds |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for (setup, budget), combo in sorted(best.items()):
            name = SETUPS[setup].name if setup in SETUPS else str(setup)
            lines.append(f"| {setup}: {name} | {budget} | {format_weight(combo.critic)} | {format_weight(combo.latent)} | "
                         f"{combo.best:.2f} | {combo.mean:.2f} | {combo.worst:.2f} | {len(combo.accuracies)} |")
        lines.append("")
        if isinstance(baseline, str):
            lines += [f"Baselines not computed: {baseline}", ""]
        elif baseline:
            for method, per_budget in baseline.items():
                lines += [f"Baseline: {BASELINE_TEXT.get(method, method)}.", "",
                          "| labels | best % | mean % | min % | seeds |", "|---:|---:|---:|---:|---:|"]
                for budget, seeds in sorted(per_budget.items()):
                    values = list(seeds.values())
                    lines.append(f"| {budget} | {max(values):.2f} | {sum(values) / len(values):.2f} | "
                                 f"{min(values):.2f} | {len(values)} |")
                lines.append("")
        lines += ["Paired with setup 1 (same seed, same labelled subset; λ as selected above):", ""]
        lines += paired_table(combos, baseline if isinstance(baseline, dict) else None) + [""]
    return "\n".join(lines)


def baselines_of(rows: list[dict], features: str | None = None) -> dict[tuple[str, str], Baselines | str]:
    """(dataset, backbone) -> method -> label budget -> seed -> accuracy % on the rows' own store (or on `features`,
    when it holds the same extraction: a sweep moved to another machine), or the reason it could not be computed."""
    from twinturbo.train.baseline import BASELINES, read_cls_vectors

    wanted: dict[tuple[str, str], dict] = defaultdict(lambda: {"store": None, "budgets": defaultdict(set)})
    for row in rows:
        entry = wanted[_row_key(row)]
        entry["store"] = row.get("store") or {}
        entry["budgets"][int(row["config"]["labels"])].add(int(row["config"]["seed"]))
    out: dict[tuple[str, str], Baselines | str] = {}
    for key, entry in wanted.items():
        fingerprint = entry["store"].get("fingerprint")
        path = entry["store"].get("path")
        try:
            if features is not None:
                with open_store(features) as store:
                    if store.identity()["fingerprint"] == fingerprint:
                        path = features
            with open_store(path) as store:
                if store.identity()["fingerprint"] != fingerprint:
                    out[key] = f"the store at {path} changed since the sweep"
                    continue
            vectors = read_cls_vectors(path)
            out[key] = {method: {budget: {seed: 100.0 * acc for seed, acc in fit(path, budget, sorted(seeds),
                                                                                 vectors).items()}
                                 for budget, seeds in sorted(entry["budgets"].items())}
                        for method, fit in BASELINES.items()}
        except TwinTurboError as err:
            out[key] = str(err)
    return out


CSV_COLUMNS = ("run_id", "dataset", "backbone", "store_fingerprint", "setup", "loss", "rescale", "critic_weight",
               "latent_weight", "labels", "seed", "test_accuracy", "wall_time_s", "fused_runs", "device")


def write_csv(rows: list[dict], path: Path) -> None:
    """All rows: the columns above, then every other training flag, then the per-epoch accuracies."""
    flags = sorted({k for row in rows for k in row["config"]} - set(CSV_COLUMNS))
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(list(CSV_COLUMNS) + flags + ["epoch_accuracies"])
        for row in rows:
            dataset, backbone = _row_key(row)
            config = row["config"]
            base = {"run_id": row["run_id"], "dataset": dataset, "backbone": backbone,
                    "store_fingerprint": (row.get("store") or {}).get("fingerprint"), "setup": row["setup"],
                    "test_accuracy": row["test_accuracy"], "wall_time_s": row.get("wall_time_s"),
                    "fused_runs": row.get("fused_runs"), "device": row.get("device"), **config}
            curve = ";".join(f"{a:.6g}" for a in row.get("epoch_accuracies", []))
            writer.writerow([base.get(c) for c in CSV_COLUMNS] + [config.get(f) for f in flags] + [curve])


def _file_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def make_report(sweep_dirs: str | Path | list[str | Path], out_dir: str | Path | None = None, baseline: bool = True,
                features: str | None = None) -> list[Path]:
    """Write figure_<dataset>.png, all_<dataset>.png, diagnostics_<dataset>.png (when the rows hold training
    diagnostics), summary.md and results.csv from one or more sweeps' rows
    (e.g. a 100-label and a 1000-label sweep of one store); return their paths.

    With `baseline`, the LogisticRegression and LabelSpreading baselines are fitted on the sweep's store (when it is
    still there and unchanged, or at `features`) and shown in the figure and the summary."""
    directories = [Path(d) for d in (sweep_dirs if isinstance(sweep_dirs, (list, tuple)) else [sweep_dirs])]
    if out_dir is None and len(directories) > 1:
        raise TwinTurboError("tt-report of several sweeps needs --out (where to write the joint report)")
    rows, seen = [], set()
    for directory in directories:
        results = directory / RESULTS_FILE
        if not results.exists():
            raise TwinTurboError(f"{results} does not exist: is {directory} a tt-sweep --out directory?")
        for row in read_rows(results):
            if row.get("run_id") not in seen:
                seen.add(row.get("run_id"))
                rows.append(row)
    if not rows:
        files = " and ".join(str(d / RESULTS_FILE) for d in directories)
        raise TwinTurboError(f"{files} {'holds' if len(directories) == 1 else 'hold'} no finished run yet")
    try:
        by_dataset = combinations(rows)
    except (KeyError, TypeError, ValueError) as err:
        raise TwinTurboError(f"{directories[0] / RESULTS_FILE}: a row lacks {err} (not written by tt-sweep?)") from None
    out = Path(out_dir) if out_dir is not None else directories[0]
    out.mkdir(parents=True, exist_ok=True)
    baselines = baselines_of(rows, features) if baseline else {}
    written = []
    several_backbones = len(by_dataset) > len({dataset for dataset, _ in by_dataset})
    for (dataset, backbone), combos in sorted(by_dataset.items()):
        stem = _file_name(f"{dataset}_{backbone}" if several_backbones else dataset)
        figure, everything = out / f"figure_{stem}.png", out / f"all_{stem}.png"
        found = baselines.get((dataset, backbone))
        plot_best(combos, dataset, backbone, figure, found if isinstance(found, dict) else None)
        plot_all(combos, dataset, backbone, everything)
        written += [figure, everything]
        diagnostics = out / f"diagnostics_{stem}.png"
        dataset_rows = [row for row in rows if _row_key(row) == (dataset, backbone)]
        if plot_diagnostics(dataset_rows, combos, dataset, backbone, diagnostics):
            written.append(diagnostics)
    summary = out / "summary.md"
    summary.write_text(summary_markdown(by_dataset, baselines))
    csv_path = out / "results.csv"
    write_csv(rows, csv_path)
    return written + [summary, csv_path]
