"""twinturbo.train.sweep: running sweeps (the grid, the launchers, the claims, the results file, the setups)."""
