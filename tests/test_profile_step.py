"""bench/profile_step.py: where a head step's time goes (bench/README.md, issue 38's profiles)."""
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "bench" / "profile_step.py"
TINY = ["--tokens", "2,8,16", "--widths", "32,16,8", "--samples", "256", "--batch-size", "32", "--labels", "20",
        "--steps", "2", "--warmup", "1"]


def profile(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *TINY, *args], capture_output=True, text=True)


def shares_of(stdout: str) -> list[tuple[float, str]]:
    """(share %, line) of each op line of the script's output."""
    return [(float(line.split("%")[0]), line) for line in stdout.splitlines() if re.match(r"\s+\d+\.\d%", line)]


def test_the_profile_lists_the_steps_ops_by_their_share_of_self_cpu_time():
    result = profile("--setup", "2", "--precision", "fp32", "--top", "5")
    assert result.returncode == 0, result.stderr
    shares = [share for share, _ in shares_of(result.stdout)]
    assert len(shares) == 5
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100.05
    assert "setup 2, head twinturbo, fp32, 1 thread(s)" in result.stdout
    # every op of the step: the shares are of the whole self CPU time, and the heads' matmuls are among the ops (at
    # these tiny widths their rank is a matter of timing, so the top 5 need not hold them)
    everything = profile("--setup", "2", "--precision", "fp32", "--top", "100000")
    assert everything.returncode == 0, everything.stderr
    listed = shares_of(everything.stdout)
    assert abs(sum(share for share, _ in listed) - 100) < 0.05 * len(listed) + 0.1
    assert any(re.search(r"\saten::(mm|addmm)$", line) for _, line in listed)


def test_an_unknown_setup_is_one_error_line():
    result = profile("--setup", "9")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --setup 9: expected one of 1, 2, 3, 4, 5, 6, 7, fix, fixcritic"]
