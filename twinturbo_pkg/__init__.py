"""twinturbo: TwinTURBO (arXiv:2503.07851) as a two-stage pipeline; see README.md."""
