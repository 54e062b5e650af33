"""bench/study_cost.py: a committed study's cost read off its rows (bench/README.md, the heads and budgets studies)."""
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "bench" / "study_cost.py"


def row(seed: int, critic: float, head: str, seconds: float, bf16_units: str = "avx512_bf16") -> dict:
    return {"run_id": f"{seed}-{critic}-{head}", "setup_name": "cat_cross/softmax + critic", "steps": 100,
            "wall_time_s": seconds, "host": {"cpu": "AMD EPYC", "bf16_units": bf16_units},
            "config": {"seed": seed, "critic_weight": critic, "head": head, "labels": 100}}


def cost(tmp_path: Path, rows: list[dict], *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "sweep").mkdir(exist_ok=True)
    (tmp_path / "sweep" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "sweep"), *args,
                           "--json", str(tmp_path / "cost.json")], capture_output=True, text=True)


def test_a_cells_cost_is_the_median_run_times_its_runs_per_seed_and_cpu_kinds_are_never_pooled(tmp_path):
    rows = [row(7, 1, "linear", 10), row(7, 3, "linear", 20), row(42, 1, "linear", 40), row(42, 3, "linear", 90),
            row(7, 1, "attentive", 100), row(7, 1, "attentive", 999, bf16_units="")]
    result = cost(tmp_path, rows, "--by", "head")
    assert result.returncode == 0, result.stderr
    table = {(e["cpu"], e["head"]): e for e in json.loads((tmp_path / "cost.json").read_text())["table"]}
    linear = table[("AMD EPYC (avx512_bf16)", "linear")]
    assert (linear["rows"], linear["seeds"], linear["runs_per_seed"]) == (4, 2, 2)
    assert linear["median_s_per_run"] == 30 and linear["s_per_seed"] == 60 and linear["median_ms_per_step"] == 300
    assert table[("AMD EPYC (avx512_bf16)", "attentive")]["median_s_per_run"] == 100
    assert table[("AMD EPYC (no bf16 units)", "attentive")]["median_s_per_run"] == 999
    assert "AMD EPYC (avx512_bf16): one seed of every cell above 160 s" in result.stdout


def test_an_unknown_cell_key_or_a_cut_line_is_one_error_line(tmp_path):
    result = cost(tmp_path, [row(7, 1, "linear", 10)], "--by", "head,colour")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: --by 'head,colour': expected a comma-separated list of head, labels, setup"]
    (tmp_path / "sweep" / "results.jsonl").write_text(json.dumps(row(7, 1, "linear", 10)) + '\n{"run_id": ')
    result = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "sweep")], capture_output=True, text=True)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "results.jsonl line 2 is not JSON" in result.stderr
