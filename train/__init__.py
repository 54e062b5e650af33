"""twinturbo.train: stage 2, heads trained on the cached tokens. Called, it is twinturbo.api.train (tt.train)."""
from twinturbo.common.callable_module import make_callable

make_callable(__name__, "train")
