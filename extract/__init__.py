"""twinturbo.extract: stage 1, the frozen backbone once. Called, it is twinturbo.api.extract (tt.extract)."""
from twinturbo.common.callable_module import make_callable

make_callable(__name__, "extract")
