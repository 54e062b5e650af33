"""The critic term, Eq. 20: the discriminator's value on the prior's one-hots and on sigma(f) of the unlabelled batch,
which the model minimises and the discriminator maximises (loop.train_step takes the discriminator's step).

It is summed after the latent term (`order`): the order of the first implementation, kept so that results stay
bit-identical."""
from twinturbo.train.losses import critic, critic_nonsaturating
from twinturbo.train.terms import Option, StepView, Term, Weight


def loss(view: StepView):
    fake_logits = view.discriminator(view.probabilities("unlabelled"))
    if view.config.critic_form == "nonsaturating":
        return critic_nonsaturating(fake_logits)
    return critic(view.discriminator(view.real), fake_logits)


TERM = Term("critic", "discriminator critic on the unlabelled predictions (Eq. 20)", frozenset({"unlabelled"}), loss,
            weight=Weight("--critic", "λ_C", "lambda_C of Eq. 22 (0 = no discriminator).", (0.01, 0.1, 1.0), "c"),
            discriminator=True,
            options=(Option("prior", "--prior", "uniform", "Class prior of the critic's real one-hots: uniform or "
                            "labelled (the labelled subset's frequencies).", ("uniform", "labelled"), shared=True),
                     Option("critic_form", "--critic-form", "minimax", "Model side of the critic: minimax (Eq. 20, the "
                            "paper) or nonsaturating (-log D; ours).", ("minimax", "nonsaturating"))),
            order=2, paper=True)
