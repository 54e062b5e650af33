"""The head of Appendix B: widths of Tables 2-5, parameter count, forward shapes, seeded construction."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import make_head
from twinturbo.train.heads.blocks import Discriminator, Predictor, Projector, TokenMixer, draw_dropout_mask
from twinturbo.train.run.fused import RunHeads


def expected_param_count(dc: int, dp: int, c: int, proj: int, pred: int, disc: int) -> int:
    """Counted by hand from Tables 2-5: weights + biases of every Linear, 2 LayerNorms."""
    mixer = (dp * 3 * dp + 3 * dp) + (dp * dp + dp) + (dp * 2 * dp + 2 * dp) + (dp * dp + dp) + 2 * 2 * dp
    projector = (dc + dp) * proj + proj
    predictor = proj * pred + pred + pred * c + c
    discriminator = c * disc + disc + disc * disc + disc + disc + 1
    return mixer + projector + predictor + discriminator


def test_paper_size_head_has_the_tables_widths():
    head = make_head(2304, 768, 10)  # RADIOv2.5-B's 2304 / 768, the paper's 8000 / 1024 / 500 (the defaults)
    shapes = {name: tuple(p.shape) for name, p in head.named_parameters()}
    assert shapes["mixer.fc1.weight"] == (1536, 768)  # SwiGLU: Dp -> 2 Dp, chunked
    assert shapes["mixer.fc2.weight"] == (768, 768)
    assert shapes["projector.fc.weight"] == (8000, 2304 + 768)
    assert shapes["predictor.fc1.weight"] == (1024, 8000)
    assert shapes["predictor.fc2.weight"] == (10, 1024)
    assert shapes["discriminator.net.0.weight"] == (500, 10)
    assert shapes["discriminator.net.4.weight"] == (1, 500)
    count = sum(p.numel() for p in head.parameters())
    assert count == expected_param_count(2304, 768, 10, 8000, 1024, 500)
    assert 36e6 < count < 38e6  # ~37M parameters at the paper's widths
    with torch.no_grad():
        z, logits = head(torch.randn(2, 2304), torch.randn(2, 196, 768))
        assert z.shape == (2, 8000) and logits.shape == (2, 10)
        assert head.discriminator(logits.softmax(-1)).shape == (2,)
    stacked = RunHeads([head])  # what the optimisers get: the model's parameters and the discriminator's, apart
    model, discriminator = stacked.model_parameters(), stacked.discriminator_parameters()
    assert sum(p.numel() for p in model) + sum(p.numel() for p in discriminator) == count
    assert sum(p.numel() for p in discriminator) == sum(p.numel() for p in head.discriminator.parameters())


def test_small_widths_and_blocks_compose():
    head = make_head(cls_dim=12, patch_dim=8, num_classes=3, proj_dim=16, pred_dim=4, disc_dim=5, init_seed=0)
    cls, patches = torch.randn(5, 12), torch.randn(5, 7, 8)
    z, logits = head(cls, patches)
    assert z.shape == (5, 16) and logits.shape == (5, 3)
    pooled = head.mixer(patches).mean(dim=1)
    torch.testing.assert_close(z, head.projector(torch.cat([cls, pooled], dim=1)))
    torch.testing.assert_close(logits, head.predictor(z))
    assert sum(p.numel() for p in head.parameters()) == expected_param_count(12, 8, 3, 16, 4, 5)
    assert isinstance(head.mixer, TokenMixer) and isinstance(head.projector, Projector)
    assert isinstance(head.predictor, Predictor) and isinstance(head.discriminator, Discriminator)


def test_token_mixer_is_prenorm_attention_then_swiglu():
    """Against an independent computation of Table 2 with explicit softmax attention."""
    torch.manual_seed(0)
    mixer = TokenMixer(8)
    x = torch.randn(3, 5, 8)
    h = F.layer_norm(x, (8,), mixer.norm1.weight, mixer.norm1.bias)
    q, k, v = (h @ mixer.qkv.weight.T + mixer.qkv.bias).split(8, dim=-1)
    attn = torch.softmax(q @ k.transpose(1, 2) / 8 ** 0.5, dim=-1) @ v
    x1 = x + attn @ mixer.attn_out.weight.T + mixer.attn_out.bias
    h2 = F.layer_norm(x1, (8,), mixer.norm2.weight, mixer.norm2.bias)
    a, b = (h2 @ mixer.fc1.weight.T + mixer.fc1.bias).split(8, dim=-1)
    expected = x1 + (a * torch.sigmoid(a) * b) @ mixer.fc2.weight.T + mixer.fc2.bias
    torch.testing.assert_close(mixer(x), expected, rtol=1e-5, atol=1e-5)


def test_attention_mixes_tokens_and_cls_bypasses_the_mixer():
    head = make_head(6, 4, 2, proj_dim=8, pred_dim=4, disc_dim=4, init_seed=1)
    patches = torch.randn(1, 3, 4)
    changed = patches.clone()
    changed[0, 2] = torch.randn(4)  # (a constant shift would vanish in the LayerNorm)
    # Token 0's output depends on token 2 through attention.
    assert not torch.allclose(head.mixer(patches)[0, 0], head.mixer(changed)[0, 0])
    # The CLS vector enters the projector unchanged: z differs only through its own linear part.
    cls = torch.randn(1, 6)
    z1 = head.projector.fc(torch.cat([cls, head.mixer(patches).mean(1)], 1))
    torch.testing.assert_close(F.leaky_relu(z1, 0.01), head.encode(cls, patches))


def test_build_head_depends_on_the_seed_only():
    torch.manual_seed(123)
    a = make_head(6, 4, 3, 8, 4, 4, init_seed=5)
    before = torch.random.get_rng_state()
    b = make_head(6, 4, 3, 8, 4, 4, init_seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG is untouched
    c = make_head(6, 4, 3, 8, 4, 4, init_seed=6)
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb)
        if name.endswith("weight") and "norm" not in name:
            assert not torch.equal(pa, pc)


def test_dropout_mask_is_inverted_dropout_from_its_generator():
    mask = draw_dropout_mask((200, 500), 0.3, torch.Generator().manual_seed(0))
    values = set(torch.unique(mask).tolist())
    assert values == {0.0, torch.tensor(1 / 0.7).item()}
    assert abs(float((mask == 0).float().mean()) - 0.3) < 0.01
    assert torch.equal(mask, draw_dropout_mask((200, 500), 0.3, torch.Generator().manual_seed(0)))
    assert torch.equal(draw_dropout_mask((2, 3), 0.0, torch.Generator()), torch.ones(2, 3))
    head = make_head(6, 4, 3, 10, 4, 4)
    cls, patches = torch.randn(2, 6), torch.randn(2, 3, 4)
    m = draw_dropout_mask((2, 10), 0.5, torch.Generator().manual_seed(1))
    torch.testing.assert_close(head.encode(cls, patches, m), head.encode(cls, patches) * m)


@pytest.mark.parametrize("p", [0.3, 0.1, 0.5, 0.123])
def test_dropout_mask_keeps_the_numbers_of_the_plain_formula_in_each_dtype(p):
    """The in-place mask (ours, for speed) equals the plain inverted-dropout formula on the same uniform draws, and
    its bf16 form equals that float32 mask cast to bf16 (what the projector multiplied by before), bit for bit."""
    plain = (torch.rand((300, 700), generator=torch.Generator().manual_seed(3)) >= p).float() / (1.0 - p)
    assert torch.equal(draw_dropout_mask((300, 700), p, torch.Generator().manual_seed(3)), plain)
    bf16 = draw_dropout_mask((300, 700), p, torch.Generator().manual_seed(3), dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and torch.equal(bf16, plain.to(torch.bfloat16))
