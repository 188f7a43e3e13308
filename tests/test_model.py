"""The PyTorch module: dropout layers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sklearn_bert_multilabel._model import (
    MASK_LEVELS,
    FastDropout,
    MultiLabelTextModule,
    dropout_mask,
    use_fast_dropout,
)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_mask_drops_with_probability_p_and_keeps_the_mean(p):
    torch.manual_seed(0)
    x = torch.empty(1_000_003)  # not a multiple of the four draws per 64-bit word
    mask = dropout_mask(x, p)
    cut = round(p * MASK_LEVELS)
    scale = MASK_LEVELS / (MASK_LEVELS - cut)
    assert mask.shape == x.shape and mask.dtype == x.dtype
    values = mask.unique().tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(scale)
    dropped = (mask == 0).double().mean().item()
    sigma = math.sqrt(p * (1 - p) / x.numel())
    assert abs(dropped - p) < 5 * sigma
    assert abs(cut / MASK_LEVELS - p) <= 0.5 / MASK_LEVELS
    assert abs(mask.double().mean().item() - 1) < 5 * sigma * scale


def test_dropout_mask_draws_are_independent_across_lanes():
    """The four 16-bit draws of one 64-bit word must not be correlated."""
    torch.manual_seed(1)
    mask = dropout_mask(torch.empty(400_000), 0.5).view(-1, 4) > 0
    lanes = mask.double()
    corr = torch.corrcoef(lanes.T)
    off_diagonal = corr[~torch.eye(4, dtype=torch.bool)]
    assert off_diagonal.abs().max().item() < 0.02
    assert ((lanes.mean(0) - 0.5).abs() < 0.01).all()


def test_fast_dropout_is_seeded_by_torch_and_differentiable():
    layer = FastDropout(0.3)
    x = torch.randn(7, 5, 3, requires_grad=True)
    torch.manual_seed(3)
    out = layer(x)
    torch.manual_seed(3)
    again = layer(x)
    assert torch.equal(out, again)
    assert not torch.equal(out, layer(x))  # a fresh mask each call
    out.sum().backward()
    mask = out.detach() / x.detach()
    assert torch.allclose(x.grad, mask)  # the gradient is the mask itself
    assert ((out == 0) == (x.grad == 0)).all()


def test_fast_dropout_bf16_and_the_cases_left_to_nn_dropout():
    x = torch.randn(64, 32)
    layer = FastDropout(0.25)
    assert layer(x.bfloat16()).dtype == torch.bfloat16
    layer.eval()
    assert layer(x) is x
    layer.train()
    assert FastDropout(0.0)(x) is x
    assert torch.equal(FastDropout(1.0)(x), torch.zeros_like(x))
    y = x.clone()
    out = FastDropout(0.5, inplace=True)(y)
    assert out is y and (y == 0).any()


def test_every_dropout_of_the_module_is_fast_and_keeps_its_probability(tiny_model_dir):
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(tiny_model_dir)
    before = sorted(m.p for m in encoder.modules() if isinstance(m, nn.Dropout))
    assert before  # the encoder has dropout layers to replace
    module = MultiLabelTextModule(encoder, 3, hidden_layer_sizes=(8,), dropout=0.2)
    layers = [m for m in module.modules() if isinstance(m, nn.Dropout)]
    assert all(type(m) is FastDropout for m in layers)
    assert sorted(m.p for m in module.encoder.modules() if isinstance(m, nn.Dropout)) == before
    assert [m.p for m in module.head if isinstance(m, nn.Dropout)] == [0.2, 0.2]


def test_use_fast_dropout_keeps_mode_and_leaves_subclasses_alone():
    class Custom(nn.Dropout):
        pass

    model = nn.Sequential(nn.Dropout(0.1), nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.4)), Custom(0.2))
    model.eval()
    use_fast_dropout(model)
    assert type(model[0]) is FastDropout and type(model[1][1]) is FastDropout
    assert model[1][1].p == 0.4 and not model[1][1].training
    assert type(model[2]) is Custom


def test_frozen_encoder_stays_in_evaluation_mode_and_keeps_its_layers(tiny_model_dir):
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(tiny_model_dir)
    plain = [type(m) for m in encoder.modules()]
    module = MultiLabelTextModule(encoder, 3, hidden_layer_sizes=(8,), dropout=0.2, freeze_encoder=True)
    # Never trained, so its dropout layers are left as they are (and never active).
    assert [type(m) for m in module.encoder.modules()] == plain
    assert not any(p.requires_grad for p in module.encoder.parameters())
    assert all(p.requires_grad for p in module.head.parameters())
    module.encoder.encoder.layer[0].train()  # a layer left in training mode by someone else
    module.train()
    assert module.training and all(m.training for m in module.head.modules())
    assert not any(m.training for m in module.encoder.modules())
    module.eval()
    assert not any(m.training for m in module.modules())
    module.train(True)
    assert not any(m.training for m in module.encoder.modules())
    # A trained encoder follows the module's mode.
    tuned = MultiLabelTextModule(AutoModel.from_pretrained(tiny_model_dir), 3).train()
    assert all(m.training for m in tuned.modules())
    tuned.eval()
    assert not any(m.training for m in tuned.modules())


def test_attention_pooling_of_a_text_without_tokens_is_zero_and_trains():
    """A tokenizer without special tokens gives an empty text no token at all: no NaN from the softmax."""
    from sklearn_bert_multilabel._model import AttentionPooling

    torch.manual_seed(0)
    pool = AttentionPooling(4)
    hidden = torch.randn(2, 3, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    out = pool(hidden, mask)
    assert torch.equal(out[1], torch.zeros(4))
    weights = torch.softmax(pool.score(hidden[0, :2]).squeeze(-1), dim=0)
    torch.testing.assert_close(out[0], weights @ hidden[0, :2])
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in pool.parameters())
    assert torch.isfinite(hidden.grad).all() and torch.equal(hidden.grad[1], torch.zeros(3, 4))


def test_embedding_table_check(tiny_model_dir):
    """Tokens beyond the embedding rows are listed; an encoder without a table is not checked."""
    from transformers import AutoModel, AutoTokenizer

    from sklearn_bert_multilabel._pretrained import ids_beyond_embeddings

    encoder, tokenizer = (
        AutoModel.from_pretrained(tiny_model_dir),
        AutoTokenizer.from_pretrained(tiny_model_dir),
    )
    rows = encoder.get_input_embeddings().num_embeddings
    assert ids_beyond_embeddings(tokenizer, encoder) == (rows, [])
    tokenizer.add_tokens(["zebraword"])
    assert ids_beyond_embeddings(tokenizer, encoder) == (rows, ["zebraword"])

    class NoTable(nn.Module):
        def get_input_embeddings(self):
            raise NotImplementedError

    assert ids_beyond_embeddings(tokenizer, NoTable()) == (None, [])
    assert ids_beyond_embeddings(tokenizer, nn.Linear(2, 2)) == (None, [])
