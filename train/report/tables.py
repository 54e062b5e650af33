"""summary.md's tables: what ran, the validation rule, the chosen λ per setup and budget with its interval and its
paired difference to setup 1, the paper's protocol beside it (its optimism), and how many validation labels it
takes."""
from __future__ import annotations

from twinturbo.train.report.baseline import Baselines
from twinturbo.train.report.selection import (Combination, by_setup, choose, grid_edges, swept_weights,
                                              validation_size_study, weight_symbol)
from twinturbo.train.report.stats import mean_interval, paired_difference


VALIDATION_SIZES = (50, 100, 250, 500, 1000)


def lambdas_text(combo: Combination, candidates: list[Combination]) -> str:
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


def validation_rule(val_size: int | None, sizes: dict[int, int | None]) -> str:
    """How λ was chosen, in words, from `--val-size` and the validation labels used at each budget (None: the runs
    recorded none): as many as the budget's training labels (the default), or one number at every budget."""
    used = {budget: size for budget, size in sorted(sizes.items()) if size is not None}
    if not used:
        return "the validation split"
    capped = [f"{size} at {budget}" for budget, size in used.items() if size < (budget if val_size is None else val_size)]
    cap = f" (capped at what the runs recorded: {', '.join(capped)})" if capped else ""
    prefix = "class-balanced prefixes of the validation split every run was scored on, disjoint from its labelled subset"
    if val_size is None:
        if len(used) == 1:
            ((budget, size),) = used.items()
            return f"{size} validation labels, as many as the training labels{cap} ({prefix})"
        return (f"as many validation labels as training labels at each budget{cap}: "
                f"{', '.join(map(str, used.values()))} ({prefix})")
    return f"the first {val_size} validation labels at every budget{cap} ({prefix})"


def selection_val_size(labels: int, val_size: int | None, recorded: int) -> int:
    """How many of the `recorded` validation labels choose λ (and SelfTraining's threshold) at a label budget:
    `val_size` (tt-report's --val-size), else the budget (the --val-labels default), capped at what was recorded."""
    return min(labels if val_size is None else val_size, recorded)


def budget_val_size(candidates: list[Combination], val_size: int | None) -> int | None:
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
            size = budget_val_size(candidates, val_size)
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
            lines.append(f"| {setup}: {combo.setup_name} | {budget} | {lambdas_text(combo, candidates)} | {val} | "
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
        lines.append(f"| {setup}: {here.setup_name} | {labels} | {lambdas_text(paper, candidates)} | {bar:.2f} | "
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
