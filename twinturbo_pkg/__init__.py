"""twinturbo: TwinTURBO (arXiv:2503.07851) as a two-stage pipeline; see README.md."""
import os

# Same seed, same thread count -> the same run, in every process and under any load: MKL's default "dynamic" mode
# picks the threads of each BLAS call by the machine's load, and the results then differ in the last bits from one
# process to the next (measured: 2 of 3 tt-train runs on 2 busy cores disagreed; with this, 12 of 12 agreed). MKL
# reads it when it starts, so it is set before anything imports torch.
os.environ.setdefault("MKL_DYNAMIC", "FALSE")
