"""twinturbo.train.run: training a head on the cached tokens (data, sampling, the step, the loop, the fused heads, the run's
directory)."""
