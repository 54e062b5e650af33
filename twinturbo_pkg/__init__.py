"""twinturbo: TwinTURBO (arXiv:2503.07851) as a two-stage pipeline; see README.md.

The Python API (twinturbo/api.py), the commands as functions:

    import twinturbo as tt
    tt.use_plugins("my_terms.py")                        # optional, first: terms of your own (twinturbo/plugins.py)
    store = tt.extract("digits", "features", backbone="effnet-lite0:320", resolution=64)
    run = tt.train(store, labels=100, critic_weight=1.0) # -> Run: .metrics, .test_accuracy, .head, .predict()
    rows = tt.sweep(store, "sweeps/digits", setups="1,2", seeds=[42, 1337, 3435])   # -> pandas DataFrame
    tt.report("sweeps/digits")                           # summary.md, figures; -> the files written
    tt.load_results("sweeps/digits")                     # a sweep's results.jsonl as a DataFrame

Mistakes raise TwinTurboError with the message the command would print.
"""
from twinturbo.api import Run, extract, load_results, report, sweep, train
from twinturbo.common.errors import TwinTurboError
from twinturbo.plugins import use_plugins

__all__ = ["Run", "TwinTurboError", "extract", "load_results", "report", "sweep", "train", "use_plugins"]
