"""ArchitectureAdapter on tiny random-weight models of every supported family (offline)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import DEFAULT_EXPECTED, EXPECTED, FAMILIES, HIDDEN, LAYERS, VOCAB, one_thread, tiny_model
from torch import nn

from unlearnviz.errors import UserError
from unlearnviz.model import ArchitectureAdapter
from unlearnviz.model.adapter import (
    block_output_tensor,
    get_path,
    is_conv1d,
    linear_weight,
    replace_block_output,
)

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_adapter_finds_every_handle(family):
    model = tiny_model(family)
    assert type(model).__name__ == FAMILIES[family]
    a = ArchitectureAdapter.for_model(model)
    blocks_path, mlp_rel, attn_rel = EXPECTED.get(family, DEFAULT_EXPECTED)

    assert a.family == family
    assert a.blocks_path == blocks_path
    assert a.blocks is get_path(model, blocks_path)
    assert a.n_layers == LAYERS
    assert a.mlp_out_rel == mlp_rel and a.attn_out_rel == attn_rel
    assert a.mlp_out_name(1) == f"{blocks_path}.1.{mlp_rel}"
    params = dict(model.named_parameters())
    assert f"{a.mlp_out_name(1)}.weight" in params
    for layer in range(LAYERS):
        mlp, attn = a.mlp_out(layer), a.attn_out(layer)
        assert mlp is get_path(a.blocks[layer], mlp_rel)
        assert attn is get_path(a.blocks[layer], attn_rel)
        # the MLP output projection writes into the residual stream: [out=hidden, in=intermediate]
        w = linear_weight(mlp)
        assert w.shape[0] == HIDDEN and w.shape[1] > 0
        assert linear_weight(attn).shape[0] == HIDDEN
        assert is_conv1d(mlp) == (family == "gpt2")
    assert a.final_norm is not None
    assert a.final_norm.weight.shape == (HIDDEN,)
    assert a.embed is model.get_input_embeddings() and a.embed.weight.shape == (VOCAB, HIDDEN)
    assert a.unembed is model.get_output_embeddings() and a.unembed.weight.shape == (VOCAB, HIDDEN)
    assert a.check_layer(LAYERS - 1) == LAYERS - 1
    with pytest.raises(UserError, match=r"out of range.*0\.\.2"):
        a.check_layer(LAYERS)
    with pytest.raises(UserError, match="out of range"):
        a.check_layer(-1)


def test_linear_weight_is_a_view_in_linear_convention():
    gpt2 = ArchitectureAdapter.for_model(tiny_model("gpt2"))
    conv = gpt2.mlp_out(0)
    assert conv.weight.shape == (4 * HIDDEN, HIDDEN)  # Conv1D stores [in, out]
    w = linear_weight(conv)
    assert w.shape == (HIDDEN, conv.weight.shape[0])
    assert w.data_ptr() == conv.weight.data_ptr()  # a view, never a copy
    lin = nn.Linear(3, 2)
    assert linear_weight(lin) is lin.weight


@pytest.mark.parametrize("family", list(FAMILIES))
def test_linear_shape_and_execution_device_of_every_family(family):
    """The delta shape comes from a layer's declared features (a 4-bit weight is packed; see
    test_quantized), and equals the [out, in] view of a float weight in every family."""
    from unlearnviz.model.adapter import execution_device
    from unlearnviz.model.quantized import linear_shape

    a = ArchitectureAdapter.for_model(tiny_model(family))
    for layer in range(LAYERS):
        assert linear_shape(a.mlp_out(layer)) == tuple(linear_weight(a.mlp_out(layer)).shape)
        assert execution_device(a.mlp_out(layer)) == torch.device("cpu")


def test_block_output_helpers_handle_tuple_and_tensor():
    h, h2 = torch.zeros(1, 2, 3), torch.ones(1, 2, 3)
    assert block_output_tensor(h) is h
    assert block_output_tensor((h, "cache")) is h
    assert replace_block_output(h, h2) is h2
    out = replace_block_output((h, "cache", None), h2)
    assert isinstance(out, tuple) and out[0] is h2 and out[1:] == ("cache", None)


class _EmbeddingsOnly(nn.Module):
    """Has embeddings but nothing else a decoder-only LM needs."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)

    def get_input_embeddings(self):
        return self.emb


def test_plain_module_is_refused_with_what_is_missing():
    with pytest.raises(UserError) as exc:
        ArchitectureAdapter.for_model(_EmbeddingsOnly())
    msg = str(exc.value)
    assert "unsupported architecture" in msg and "_EmbeddingsOnly" in msg
    assert "decoder blocks" in msg and "model.layers" in msg  # says where it looked
    assert "unembedding" in msg
    assert "input embedding" not in msg  # that one was found
    assert "\n" not in msg


def test_bert_is_refused_naming_the_decoder_blocks():
    from transformers import AutoConfig, BertForMaskedLM

    cfg = AutoConfig.for_model("bert", vocab_size=50, hidden_size=16, intermediate_size=32,
                               num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16)
    with pytest.raises(UserError, match=r"unsupported architecture 'bert'.*decoder blocks"):
        ArchitectureAdapter.for_model(BertForMaskedLM(cfg))


def test_t5_is_refused():
    from transformers import AutoConfig, T5ForConditionalGeneration

    cfg = AutoConfig.for_model("t5", vocab_size=50, d_model=16, d_ff=32, d_kv=8, num_layers=1,
                               num_decoder_layers=1, num_heads=2)
    with pytest.raises(UserError, match=r"'t5'.*decoder blocks"):
        ArchitectureAdapter.for_model(T5ForConditionalGeneration(cfg))


class _NoMLP(nn.Module):
    """Decoder blocks in the usual place, but no MLP output projection inside them."""

    def __init__(self):
        super().__init__()
        self.model = nn.Module()
        self.model.layers = nn.ModuleList([nn.Module() for _ in range(2)])
        for b in self.model.layers:
            b.mlp = nn.Module()
            b.mlp.proj = nn.Linear(4, 4)
        self.emb, self.head = nn.Embedding(10, 4), nn.Linear(4, 10)

    def get_input_embeddings(self):
        return self.emb

    def get_output_embeddings(self):
        return self.head


def test_missing_mlp_projection_is_named():
    with pytest.raises(UserError) as exc:
        ArchitectureAdapter.for_model(_NoMLP())
    msg = str(exc.value)
    assert "MLP output projection" in msg and "mlp.down_proj" in msg
    assert "decoder blocks" not in msg and "embedding" not in msg


def test_empty_block_list_is_refused():
    m = _NoMLP()
    m.model.layers = nn.ModuleList()
    with pytest.raises(UserError, match=r"model\.layers is empty"):
        ArchitectureAdapter.for_model(m)


def test_unimplemented_embedding_getters_are_reported_not_raised():
    class Raising(_NoMLP):
        def get_input_embeddings(self):
            raise NotImplementedError

    with pytest.raises(UserError, match="input embedding"):
        ArchitectureAdapter.for_model(Raising())
