"""summary.md: first, where the rows hold several heads, which is best and what each setup gains on each
(train/report/heads.py); then per dataset, backbone and head, what ran, the protocol, the first lines
(train/report/sentences.py), the tables (train/report/tables.py) and the baselines' recipe."""
from __future__ import annotations

from twinturbo.train.report.baseline import Baselines
from twinturbo.train.report.budgets import budget_finding, budget_table, term_gain_table
from twinturbo.train.report.fits import BASELINE_TEXT
from twinturbo.train.report.heads import gain_table, head_finding, head_table, heads_of, reference_head
from twinturbo.train.report.selection import Combination, by_setup, row_group, split_head
from twinturbo.train.report.sentences import best_sentence, finding_sentence, term_gains, test_resolution, verdict
from twinturbo.train.report.tables import (budget_val_size, optimism_table, selected_table, size_table, validation_rule,
                                           what_ran)


PROTOCOL_SENTENCE = {
    "val": "for each setup and label budget, the λ combination with the best seed-mean accuracy on {val}; validation "
           "images are train images whose labels only score the runs, never trained on (`--val-labels`)",
    "test": "for each setup and label budget, the λ combination with the best seed-mean accuracy on the test set "
            "(optimistic: the test set chooses)",
    "paper": "for each setup and label budget, the λ combination with the best single seed on the test set, as in "
             "the paper (optimistic: the test set chooses, and the best of three seeds is quoted)",
}


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
        sizes = {labels: budget_val_size(v, val_size) for (_, labels), v in by_setup(combos).items()}
        rule = validation_rule(val_size, sizes)
        table, chosen, edges = selected_table(combos, baseline if isinstance(baseline, dict) else None, used,
                                              epoch_rule, val_size)
        drawn[(dataset, backbone)] = (chosen, edges, used, rule)
        lines += [f"### {dataset} ({backbone})", "", f"What ran: {what_ran(group_rows, combos)}", ""]
        protocol_text = PROTOCOL_SENTENCE[used].format(val=rule)
        lines.append(f"Protocol: {protocol_text}; each run read at its "
                     f"{'last epoch' if epoch_rule == 'last' else 'epoch of best validation accuracy'}. The figures "
                     "are that combination's test accuracy: the mean over seeds ± the half-width of its 95% t "
                     "interval, and its difference to setup 1 on the same seeds (same labelled subsets) ± its own.")
        if protocol == "val" and not has_val:
            lines.append("These rows have no validation split (trained before --val-labels): λ is chosen on the "
                         "test set below, which is optimistic.")
        resolution = test_resolution(group_rows)
        found = baseline if isinstance(baseline, dict) else None
        if len(sizes) > 1:  # across budgets first: where each gain holds (issue 37's questions)
            lines += ["", budget_finding(chosen, found, epoch_rule, lambda paired: verdict(paired, resolution))]
        lines += ["", best_sentence(chosen, baseline if isinstance(baseline, dict) else None, epoch_rule, resolution),
                  "", finding_sentence(combos, chosen, epoch_rule, resolution), ""]
        gains = term_gains(chosen, epoch_rule, resolution)
        if len(sizes) > 1 and gains:  # several budgets: one table instead of a line per term and budget
            lines += ["Each term's own gain at every budget (the setup with it minus the setup without it, each at its "
                      "chosen λ, paired by seed: points ± 95% t half-width, seeds above in brackets):", "",
                      *term_gain_table(chosen, epoch_rule), ""]
        elif gains:
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
        if len(sizes) > 1:
            lines += ["Each setup against setup 1 at every budget (paired by seed: points ± 95% t half-width, seeds "
                      "above setup 1 in brackets; setup 1's row is its own test accuracy):", "",
                      *budget_table(chosen, found, epoch_rule), ""]
        sizes_lines = size_table(combos) if has_val else []
        if sizes_lines:
            lines += ["How many validation labels it takes: class-balanced draws of N of the validation samples every "
                      "run was scored on, λ chosen by seed-mean validation accuracy on them:", "", *sizes_lines, ""]
    first = []
    for (dataset, backbone), heads in heads_of(drawn).items():
        resolution = test_resolution([r for r in rows if row_group(r)[0] == dataset
                                      and split_head(row_group(r)[1])[0] == backbone])
        first += [f"### {dataset} ({backbone}): heads", "", head_finding(heads, epoch_rule,
                                                                          lambda paired: verdict(paired, resolution)),
                  "", "Each setup against setup 1 on each head (paired by seed: points ± 95% t half-width, seeds above "
                  "setup 1 in brackets; setup 1's row is its own test accuracy); each head's section below has its "
                  "tables and figures:", "", *gain_table(heads, epoch_rule), "",
                  f"Each head's test accuracy, and beside the others their paired difference to the "
                  f"{reference_head(heads)} head on the same setup and seeds:", "", *head_table(heads, epoch_rule), ""]
    return "\n".join(first + lines), drawn
