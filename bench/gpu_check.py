"""The one prepared GPU check: every figure a GPU session owes, in one command that fits in 8 minutes on one H200.

Prints one line per figure and writes bench/gpu_check.json (or --json):

1. the CUDA-marked tests (`pytest -m cuda`: split resident on the device, a run repeating bit for bit);
2. ViT-B/16 (timm, random weights written by bench/extract.py) extraction img/s in bf16 at 224 against a bare forward
   loop (goal <= 1.10x overhead) -- bench/extract.py;
3. the paper-size head step (T = 196, Dp = 768, Dc = 2304, widths 8000/1024/500, batch 512) as a fraction of the
   card's measured bf16 matmul peak (the MFU; goal >= 35%), setups 2 and 7, and for setup 2 the candidates: eager,
   torch.compile of the head, K = 8 runs fused one after another and as one vmap -- bench/limit.py; with them the
   projected time of the 222-run SVHN ablation (goal <= 30 min on one H200);
4. K = 8 fused runs against 8 one after another on a real sweep (goal >= 3x) -- bench/sweep.py;
5. the wall time of one full 5-epoch tt-train run on a 73k-sample store of paper shape (written by this script).

    python bench/gpu_check.py                 # on the GPU machine
    python bench/gpu_check.py --smoke         # tiny sizes on the CPU (run by the test suite, so the script cannot rot)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).parent
# the 222-run SVHN ablation: 73257 train images, batch 512, 5 epochs = 720 steps a run
SVHN_ABLATION_RUN_STEPS = 222 * 5 * -(-73257 // 512)

# (paper size on the GPU, smoke size on the CPU)
SIZES = {
    "extract": (["--backbone", "timm:vit_base_patch16_224", "--random-weights", "--resolution", "224",
                 "--batch-size", "256", "--dataset", "digits", "--repeats", "3", "--device", "cuda"],
                ["--backbone", "effnet-lite0", "--resolution", "64", "--limit", "64", "--batch-size", "64",
                 "--repeats", "1", "--device", "cpu"]),
    "limit": (["--device", "cuda", "--tokens", "196,768,2304", "--widths", "8000,1024,500", "--batch-size", "512",
               "--samples", "8192", "--precisions", "bf16", "--setups", "2,7", "--fuse", "8", "--steps", "6",
               "--rounds", "2", "--peak-size", "8192"],
              ["--smoke", "--no-compile", "--setups", "2", "--precisions", "bf16"]),
    "sweep": (["--device", "cuda", "--epochs", "1", "--batch-size", "512", "--proj-dim", "8000", "--pred-dim", "1024",
               "--disc-dim", "500"],
              ["--device", "cpu", "--runs", "2", "--epochs", "1", "--batch-size", "256", "--proj-dim", "16",
               "--pred-dim", "8", "--disc-dim", "4", "--synthetic-dim", "32"]),
}
# the full run: (samples, T, Dp, Dc, widths) -- SVHN's 73257 train images at RADIOv2.5-B's shape
FULL_RUN = ((73257, 196, 768, 2304, (8000, 1024, 500)), (1024, 4, 16, 24, (32, 16, 8)))


def run(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def bench(script: str, args: list[str], json_path: Path, timeout: float) -> dict:
    result = run([sys.executable, str(BENCH / script), *args, "--json", str(json_path)], timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{script} failed: {result.stderr.strip().splitlines()[-1] if result.stderr else ''}")
    return json.loads(json_path.read_text())


def write_paper_shape_store(path: Path, n: int, tokens: int, patch_dim: int, cls_dim: int) -> Path:
    """A complete store of random fp16 tokens, 10 classes, 1/8 as test. Timing does not depend on the values, so one
    random chunk is written over and over (drawing 22 GB of random numbers would take minutes)."""
    from twinturbo.common.store import SplitLayout, create_store

    rng = np.random.default_rng(0)
    chunk = 256
    cls = rng.standard_normal((chunk, cls_dim), dtype=np.float32).astype(np.float16)
    patches = rng.standard_normal((chunk, tokens, patch_dim), dtype=np.float32).astype(np.float16)
    sizes = {"train": n, "test": max(chunk, n // 8)}
    layouts = {split: SplitLayout(size, cls_dim, tokens, patch_dim) for split, size in sizes.items()}
    with create_store(path, {"dataset": "paper-shape", "backbone": "random", "weights_id": "none", "resolution": 224,
                             "class_names": [str(c) for c in range(10)]}, layouts, chunk) as store:
        for split, size in sizes.items():
            for k in range(-(-size // chunk)):
                rows = min(chunk, size - k * chunk)
                store.write_chunk(split, k, cls[:rows], patches[:rows], np.arange(k * chunk, k * chunk + rows) % 10)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks the script, no figures")
    parser.add_argument("--json", type=Path, default=BENCH / "gpu_check.json")
    args = parser.parse_args()
    size = 1 if args.smoke else 0
    figures: dict[str, object] = {"smoke": args.smoke}

    def report(name: str, value: object, line: str) -> None:
        figures[name] = value
        print(line, flush=True)

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        started = time.perf_counter()
        tests = run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", str(BENCH.parent / "tests")], 300)
        report("cuda_tests", tests.stdout.strip().splitlines()[-1] if tests.stdout else "no output",
               f"cuda tests: {tests.stdout.strip().splitlines()[-1] if tests.stdout else tests.stderr[-200:]}")

        extract = bench("extract.py", SIZES["extract"][size], scratch / "extract.json", 300)
        ratio = extract.get("overhead_ratio")
        report("extract_overhead", ratio, f"extraction overhead vs bare forward: {ratio:.3f}x (goal <= 1.10)")

        limit = bench("limit.py", SIZES["limit"][size], scratch / "limit.json", 500)
        for row in limit["steps"]:
            report(f"mfu_setup{row['setup']}", row["fraction_of_peak"],
                   f"head step, setup {row['setup']} {row['precision']}: {row['gflops'] / 1e3:.1f} TFLOP/s = "
                   f"{100 * row['fraction_of_peak']:.1f}% of the measured peak (goal >= 35%)")
        per_run_step = limit.get("choices_ms_per_run_step", {})
        for name, fraction in limit.get("choices_fraction_of_peak", {}).items():
            report(f"mfu_{name}", fraction, f"setup 2, {name}: {per_run_step[name]:.1f} ms per run-step, "
                                            f"{100 * fraction:.1f}% of the peak")
        if per_run_step:
            best = min(per_run_step, key=per_run_step.get)
            minutes = SVHN_ABLATION_RUN_STEPS * per_run_step[best] / 1e3 / 60
            report("svhn_ablation_min", minutes, f"222-run SVHN ablation at {best}'s rate: {minutes:.0f} min "
                                                 "(goal <= 30 on one H200; setup 2's step, an underestimate for 5-7)")

        sweep = bench("sweep.py", SIZES["sweep"][size], scratch / "sweep.json", 300)
        report("fused_speedup", sweep["speedup"],
               f"K = {sweep['runs']} fused vs one after another: {sweep['speedup']:.2f}x (goal >= 3x on a GPU)")

        n, tokens, patch_dim, cls_dim, (proj, pred, disc) = FULL_RUN[size]
        store = write_paper_shape_store(scratch / "paper-shape", n, tokens, patch_dim, cls_dim)
        start = time.perf_counter()
        trained = run([str(Path(sys.executable).parent / "tt-train"), "--features", str(store), "--epochs", "5",
                       "--proj-dim", str(proj), "--pred-dim", str(pred), "--disc-dim", str(disc), "--critic", "0.1",
                       "--latent", "0.1", "--loss", "bin_cross", "--rescale", "sigmoid", "--quiet",
                       "--device", "cpu" if args.smoke else "cuda", "--out", str(scratch / "run")], 600)
        if trained.returncode != 0:
            raise RuntimeError(f"tt-train failed: {trained.stderr.strip()[-300:]}")
        report("full_run_s", time.perf_counter() - start,
               f"one 5-epoch setup-7 run on {n} samples of {tokens} x {patch_dim} + {cls_dim}: "
               f"{time.perf_counter() - start:.0f} s ({trained.stdout.strip()})")
        figures["total_s"] = time.perf_counter() - started
    args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {args.json} ({figures['total_s']:.0f} s in all)")


if __name__ == "__main__":
    main()
