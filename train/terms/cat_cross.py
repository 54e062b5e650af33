"""Task loss cat_cross, Eq. 17: categorical cross-entropy on the labelled batch."""
from twinturbo.train.losses import cat_cross
from twinturbo.train.terms import StepView, Term


def loss(view: StepView):
    return cat_cross(view.logits["labelled"], view.labels, view.config.rescale)


TERM = Term("cat_cross", "categorical cross-entropy (Eq. 17)", frozenset({"labelled"}), loss, order=1, paper=True)
