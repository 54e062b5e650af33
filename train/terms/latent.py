"""The latent alignment term, Eq. 21: InfoNCE between each labelled sample's z and its partner x*'s (same class)."""
from twinturbo.train.losses import latent_infonce
from twinturbo.train.terms import Option, StepView, Term, Weight


def loss(view: StepView):
    return latent_infonce(view.z["labelled"], view.z["star"], view.config.temperature)


TERM = Term("latent", "latent alignment InfoNCE with x* (Eq. 21)", frozenset({"labelled", "star"}), loss,
            weight=Weight("--latent", "λ_L", "lambda_L of Eq. 22 (0 = no latent alignment).", (0.01, 0.1, 1.0), "l"),
            latent=True,
            options=(Option("temperature", "--temperature", 1.0, "Temperature of the latent InfoNCE (Eq. 21)."),),
            order=1, paper=True)
