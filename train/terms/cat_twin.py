"""Task loss cat_twin, Eq. 18: categorical twin-entropy, its denominator over the labelled batch (our reading of the
paper's x'_j: "these losses use only the labelled data"; cat_twin_unlabelled.py is the other reading)."""
from twinturbo.train.losses import cat_twin
from twinturbo.train.terms import StepView, Term


def loss(view: StepView):
    return cat_twin(view.logits["labelled"], view.labels, view.config.rescale)


TERM = Term("cat_twin", "categorical twin-entropy, denominator over the labelled batch (Eq. 18)",
            frozenset({"labelled"}), loss, order=2, paper=True)
