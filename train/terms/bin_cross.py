"""Task loss bin_cross, Eq. 19: binary cross-entropy summed over classes, on the labelled batch."""
from twinturbo.train.losses import bin_cross
from twinturbo.train.terms import StepView, Term


def loss(view: StepView):
    return bin_cross(view.logits["labelled"], view.labels, view.config.rescale)


TERM = Term("bin_cross", "binary cross-entropy (Eq. 19)", frozenset({"labelled"}), loss, order=3, paper=True)
