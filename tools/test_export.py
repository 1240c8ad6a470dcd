#!/usr/bin/python3
"""Tests of tools/export_torch.py (needs PyTorch: run with /usr/bin/python3).

    /usr/bin/python3 tools/test_export.py        # after `ninja -C build` for the maskjit checks

Prints a skip line and exits 0 when PyTorch is absent. Without build/maskjit
(or $MASKJIT) the files are checked against PyTorch only, and the tests that
need `maskjit check` say they skipped it. Last line: "export: N passed, M failed".
"""
import contextlib
import inspect
import io
import math
import os
import subprocess
import sys
import tempfile
import unittest

try:
    import torch
    from torch import nn
    from torch.nn.utils import parametrize, prune
except ImportError:
    print("skip: tools/test_export.py needs PyTorch (/usr/bin/python3 -c 'import torch' fails)")
    sys.exit(0)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export_torch as et  # noqa: E402
from make_fixtures import BertLayer, LlamaMLP, PrunedCNN, ResidualLayerNorm, ViTBlock  # noqa: E402
import safetensors_io  # noqa: E402

MASKJIT = et.find_maskjit()
if MASKJIT and not os.access(MASKJIT, os.X_OK):
    MASKJIT = None


def line_of(fn, text):
    """Line number of the first line of fn's source containing text."""
    lines, start = inspect.getsourcelines(fn)
    for i, line in enumerate(lines):
        if text in line:
            return start + i
    raise AssertionError(f"{text!r} not in {fn}")


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.act = nn.Mish()  # not in maskjit's op set

    def forward(self, x):
        return self.act(self.fc(x))  # the unsupported op's call site


class WithEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Encoder()

    def forward(self, x):
        return self.encoder(x)


class Heads(nn.Module):
    """HF-style: unpacks the shape and splits the last dim into heads."""

    def __init__(self, bake_batch=False, merge_batch=False):
        super().__init__()
        self.q = nn.Linear(8, 8)
        self.out = nn.Linear(8, 8)
        self.bake_batch, self.merge_batch = bake_batch, merge_batch

    def forward(self, x):
        b, s, _ = x.shape
        h = self.q(x)
        if self.bake_batch:
            h = h.view(3, s, 2, 4)  # a hard-coded batch: only the example's works
        elif self.merge_batch:
            h = h.reshape(b * s, 8)
        else:
            h = h.view(b, s, 2, 4)
        return self.out(torch.relu(h).reshape(b, s, 8))


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # Python control flow on a value: the trace freezes one branch
            return self.fc(x)
        return -self.fc(x)


def pruned(model, amount=0.7):
    for m in model.modules():
        if isinstance(m, nn.Linear):
            prune.l1_unstructured(m, "weight", amount=amount)
    return model.eval()


def pruned_mlp():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.Dropout(0.5), nn.ReLU(),
                      nn.Linear(32, 8, bias=False), nn.Sigmoid())
    prune.l1_unstructured(m[1], "weight", amount=0.5)
    prune.l1_unstructured(m[4], "weight", amount=0.7)
    return m.eval()


class ExportTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.log = io.StringIO()

    def tearDown(self):
        self.dir.cleanup()

    def path(self, name="out.safetensors"):
        return os.path.join(self.dir.name, name)

    def export(self, model, x, name="out.safetensors", **kw):
        kw.setdefault("log", lambda msg: print(msg, file=self.log))
        return et.export(model, x, self.path(name), **kw)

    def assert_refused(self, model, x, *needles, **kw):
        with self.assertRaises(et.ExportError) as cm:
            self.export(model, x, **kw)
        for needle in needles:
            self.assertIn(needle, str(cm.exception))
        self.assertFalse(os.path.exists(self.path()), "a refused export left a file")
        return str(cm.exception)

    def assert_in_ir(self, *needles):
        """Each needle is in the IR text of the file export() wrote."""
        ir = safetensors_io.load(self.path())[1]["maskjit.ir"]
        for n in needles:
            self.assertIn(n, ir)

    def assert_maskjit_passed(self):
        if MASKJIT:
            self.assertIn("check: PASS", self.log.getvalue())

    # ---- transformer-era blocks -------------------------------------------
    def test_llama_mlp_with_rmsnorm_and_silu_gate_exports_and_checks(self):
        torch.manual_seed(1)
        self.export(pruned(LlamaMLP()), torch.randn(4, 16))
        self.assert_in_ir("rsqrt", "mean", "pow", "silu", 'param "gate.weight_mask"')
        self.assert_maskjit_passed()

    def test_residual_layer_norm_mlp_exports_and_checks(self):
        torch.manual_seed(2)
        self.export(pruned(ResidualLayerNorm()), torch.randn(4, 16) / 0.5)
        self.assert_in_ir("layer_norm", "leaky_relu", "softmax")
        self.assert_maskjit_passed()

    def test_bert_layer_with_a_mask_input_exports_and_checks(self):
        torch.manual_seed(3)
        mask = torch.zeros(2, 1, 1, 5)
        mask[:, :, :, -1] = -10000.0
        self.export(pruned(BertLayer(), 0.8), (torch.randn(2, 5, 32), mask))
        self.assert_in_ir("permute", "matmul", "softmax", "layer_norm", 'input "input.1"')
        self.assert_maskjit_passed()

    def test_vit_block_with_fused_qkv_chunk_exports_and_checks(self):
        torch.manual_seed(4)
        self.export(pruned(ViTBlock(), 0.8), torch.randn(2, 5, 32))
        self.assert_in_ir("slice", "transpose", "matmul", "softmax")
        self.assert_maskjit_passed()

    # ---- PyTorch's own transformer modules ---------------------------------
    def encoder_layer(self, **kw):
        torch.manual_seed(6)
        return self.pruned_layer(nn.TransformerEncoderLayer(
            d_model=32, nhead=4, dim_feedforward=64, dropout=0.1, batch_first=True, **kw))

    @staticmethod
    def pruned_layer(layer):
        prune.l1_unstructured(layer.linear1, "weight", amount=0.8)
        prune.l1_unstructured(layer.linear2, "weight", amount=0.8)
        prune.random_unstructured(layer.self_attn, "in_proj_weight", amount=0.8)
        # read by MultiheadAttention without calling out_proj: its pruned
        # weight must still be traced as mask * orig
        prune.l1_unstructured(layer.self_attn.out_proj, "weight", amount=0.8)
        return layer

    def test_pruned_transformer_encoder_layer_exports_and_checks(self):
        for kw in ({}, {"activation": "gelu", "norm_first": True}):
            with self.subTest(**kw):
                self.export(self.encoder_layer(**kw), torch.randn(2, 7, 32))
                self.assert_in_ir('param "self_attn.out_proj.weight_mask"',
                                  'param "self_attn.in_proj_weight_mask"',
                                  'param "linear1.weight_mask"', "softmax", ": f32[B,4,7,8]")
                self.assert_maskjit_passed()

    def test_transformer_encoder_with_a_float_padding_mask_input_exports_and_checks(self):
        class Padded(nn.Module):
            def __init__(self):
                super().__init__()
                torch.manual_seed(8)
                layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64,
                                                   batch_first=True)
                self.encoder = nn.TransformerEncoder(layer, num_layers=2)  # copies of layer
                for each in self.encoder.layers:
                    ExportTest.pruned_layer(each)

            def forward(self, x, pad):
                return self.encoder(x, src_key_padding_mask=pad)

        pad = torch.zeros(2, 7)
        pad[0, 5:] = float("-inf")
        self.export(Padded(), (torch.randn(2, 7, 32), pad))
        self.assert_in_ir('param "encoder.layers.1.self_attn.out_proj.weight_mask"',
                          'input "input.1" : f32[B,7]')
        self.assert_maskjit_passed()

    def test_multihead_cross_attention_with_its_weights_exports_and_checks(self):
        class Cross(nn.Module):
            def __init__(self):
                super().__init__()
                self.attn = nn.MultiheadAttention(32, 4, batch_first=True, kdim=16, vdim=16)
                self.register_buffer("causal", torch.triu(torch.full((7, 5), float("-inf")), 1))

            def forward(self, x, memory):
                return self.attn(x, memory, memory, attn_mask=self.causal)

        torch.manual_seed(7)
        self.export(Cross(), (torch.randn(2, 7, 32), torch.randn(2, 5, 16)))
        self.assert_in_ir(": f32[B,4,7,5]", 'param "attn.q_proj_weight"')
        self.assert_maskjit_passed()

    def test_multihead_attention_maskjit_cannot_hold_is_refused_with_the_reason(self):
        class Bool(nn.Module):
            def __init__(self):
                super().__init__()
                self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
                self.register_buffer("causal", torch.triu(torch.ones(7, 7, dtype=torch.bool), 1))

            def forward(self, x):
                return self.attn(x, x, x, attn_mask=self.causal, need_weights=False)[0]

        self.assert_refused(Bool(), torch.randn(2, 7, 32),
                            "nn.MultiheadAttention with a bool attn_mask", maskjit=None)
        seq_first = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64)
        self.assert_refused(seq_first, torch.randn(7, 2, 32), "self_attn has batch_first=False",
                            "build it with batch_first=True", maskjit=None)

    def test_indexing_squeeze_clamp_and_pooling_over_two_dims_export_and_check(self):
        class Ops(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3, padding=1)
                self.fc = nn.Linear(4, 4)

            def forward(self, x):
                y = self.conv(x)
                pooled = y.mean((2, 3))                               # global average pool
                kept = y.sum(dim=(-1, -2), keepdim=True).squeeze(-1).squeeze(-1)
                seq = self.fc(y.flatten(2).transpose(1, 2))           # [B, 36, 4]
                first = seq[:, 0]                                     # the CLS token
                return torch.clamp(first, -0.2, 0.3) + pooled.clamp(min=0.0) + kept.clamp(max=1.0)

        torch.manual_seed(9)
        self.export(Ops(), torch.randn(2, 3, 6, 6))
        self.assert_in_ir("mean", "slice", "maximum", "minimum", ": f32[B,4,36]")
        self.assert_maskjit_passed()

    def test_conv1d_batchnorm1d_stack_and_abs_export_and_check(self):
        class Audio(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv1d(4, 8, 3, padding="same")
                self.bn = nn.BatchNorm1d(8)
                self.down = nn.Conv1d(8, 8, 5, stride=2, groups=2)
                self.fc = nn.Linear(8, 6)
                self.bn_fc = nn.BatchNorm1d(6)
                for bn in (self.bn, self.bn_fc):
                    bn.running_mean.uniform_(-0.2, 0.2)
                    bn.running_var.uniform_(0.5, 1.5)

            def forward(self, x):
                y = self.down(torch.relu(self.bn(self.conv(x))))
                h = self.bn_fc(self.fc(y.mean(-1)))
                return torch.stack([h, h.abs()], dim=1)

        torch.manual_seed(11)
        model = Audio()
        prune.l1_unstructured(model.conv, "weight", amount=0.6)
        self.export(model.eval(), torch.randn(3, 4, 20))
        self.assert_in_ir("conv2d", "batch_norm", "maximum", "cat", 'param "conv.weight_mask"')
        self.assert_maskjit_passed()

    def test_expand_exports_as_a_product_with_ones(self):
        class Masked(nn.Module):
            def __init__(self):
                super().__init__()
                self.q = nn.Linear(8, 8)

            def forward(self, x, pad):  # x [B, S, 8], pad [B, S]: 0 or -inf
                b, s, _ = x.shape
                q = self.q(x).reshape(b, s, 2, 4).transpose(1, 2)          # [B, 2, S, 4]
                scores = q @ q.transpose(-1, -2)                           # [B, 2, S, S]
                bias = pad[:, None, None, :].expand(-1, 2, s, -1)          # [B, 2, S, S]
                return torch.softmax(scores + bias, dim=-1)

        torch.manual_seed(12)
        pad = torch.zeros(3, 5)
        pad[1, 3:] = float("-inf")
        self.export(Masked(), (torch.randn(3, 5, 8), pad))
        self.assert_in_ir("mul", ": f32[B,2,5,5]")
        self.assert_maskjit_passed()

    def test_vit_class_token_expanded_to_the_batch_exports_and_checks(self):
        class TinyViT(nn.Module):  # torchvision's VisionTransformer in small
            def __init__(self):
                super().__init__()
                self.proj = nn.Conv2d(3, 16, 4, stride=4)
                self.class_token = nn.Parameter(torch.randn(1, 1, 16))
                self.pos = nn.Parameter(torch.randn(1, 5, 16))
                self.encoder = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
                self.head = nn.Linear(16, 3)

            def forward(self, x):
                x = self.proj(x).flatten(2).transpose(1, 2)                 # [B, 4, 16]
                token = self.class_token.expand(x.shape[0], -1, -1)  # [B, 1, 16]
                x = self.encoder(torch.cat([token, x], dim=1) + self.pos)
                return self.head(x[:, 0])

        torch.manual_seed(17)
        model = TinyViT()
        prune.l1_unstructured(model.encoder.linear1, "weight", amount=0.8)
        self.export(model.eval(), torch.randn(2, 3, 8, 8))
        self.assert_in_ir("expand", ": f32[B,1,16]")
        self.assert_maskjit_passed()

        class Tokens(nn.Module):
            def __init__(self):
                super().__init__()
                self.token = nn.Parameter(torch.randn(1, 1, 16))

            def forward(self, x):  # x [B, 3, 16]
                return x + self.token.expand(x.shape[0], 3, -1)

        os.remove(self.path())
        self.assert_refused(Tokens(), torch.randn(2, 3, 16), "to the batch and along another dim")

    def test_embedding_is_refused_with_what_to_do(self):
        model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 2))
        self.assert_refused(model, torch.zeros(2, 5), "nn.Embedding takes integer indices",
                            "the model fails on the example input (f32[2,5])", maskjit=None)

    def test_non_float_buffers_are_refused_with_the_op_that_uses_them(self):
        class Keep(nn.Module):
            def __init__(self):
                super().__init__()
                self.register_buffer("keep", torch.arange(8) % 2 == 0)
                self.fc = nn.Linear(8, 8)

            def forward(self, x):
                return torch.where(self.keep, self.fc(x), x)

        class Positions(nn.Module):
            def __init__(self):
                super().__init__()
                self.register_buffer("pos", torch.arange(4))
                self.emb = nn.Embedding(4, 8)

            def forward(self, x):
                return x + self.emb(self.pos)

        line = line_of(Keep.forward, "torch.where(")
        self.assert_refused(Keep().eval(), torch.randn(2, 8), "keep has dtype torch.bool",
                            f"used by aten::where at <root> (Keep), test_export.py:{line}",
                            "0.0/1.0 floats")
        self.assert_refused(Positions().eval(), torch.randn(2, 4, 8), "pos has dtype torch.int64",
                            "used by aten::embedding at emb (Embedding)",
                            "export the model from the embedding's output on")

    # ---- CNNs ---------------------------------------------------------------
    def test_pruned_cnn_exports_and_checks(self):
        torch.manual_seed(5)
        model = PrunedCNN()
        for conv in (model.conv1, model.expand):
            prune.l1_unstructured(conv, "weight", amount=0.8)
        parametrize.register_parametrization(
            model.project, "weight",
            et.FakeSparsity(et.random_mask(tuple(model.project.weight.shape), 0.2, torch.Generator())))
        self.export(model.eval(), torch.randn(2, 3, 12, 12))
        self.assert_in_ir("conv2d", "batch_norm", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
                          "groups=32", 'param "conv1.weight_mask"', 'param "project.parametrizations.weight.0.mask"')
        self.assert_maskjit_passed()

    def test_mobilenet_v3_block_with_in_place_activations_exports_and_checks(self):
        # torchvision's MobileNetV3 and EfficientNet blocks: pointwise convs
        # back to back at a width of 28 (frozen, the first stores its value
        # in the second's row layout), hardswish and SiLU in place, a
        # squeeze-excitation gate through hardsigmoid
        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.expand = nn.Conv2d(8, 32, 1, bias=False)
                self.act = nn.Hardswish(inplace=True)
                self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
                self.fc1, self.fc2 = nn.Conv2d(32, 8, 1), nn.Conv2d(8, 32, 1)
                self.project = nn.Conv2d(32, 16, 1, bias=False)
                self.mix = nn.Conv2d(16, 16, 1)
                self.silu = nn.SiLU(inplace=True)

            def forward(self, x):
                h = self.dw(self.act(self.expand(x)))
                gate = torch.nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(h.mean((2, 3), keepdim=True)))))
                return self.silu(self.mix(self.project(h * gate)))

        torch.manual_seed(13)
        model = Block()
        for conv in (model.expand, model.project, model.mix):
            prune.l1_unstructured(conv, "weight", amount=0.8)
        self.export(model.eval(), torch.randn(2, 8, 28, 28))
        self.assert_in_ir("maximum", "minimum", "div", "silu", 'param "project.weight_mask"')
        self.assert_maskjit_passed()

    def test_dense_block_concatenating_many_tensors_exports_and_checks(self):
        class Dense(nn.Module):  # DenseNet: each layer reads the cat of all before it
            def __init__(self):
                super().__init__()
                self.layers = nn.ModuleList(nn.Conv2d(4 + 2 * i, 2, 3, padding=1) for i in range(11))

            def forward(self, x):
                feats = [x]
                for conv in self.layers:
                    feats.append(torch.relu(conv(torch.cat(feats, 1))))
                return torch.cat(feats, 1)

        torch.manual_seed(14)
        model = Dense()
        prune.l1_unstructured(model.layers[9], "weight", amount=0.7)
        self.export(model.eval(), torch.randn(2, 4, 6, 6))
        self.assert_in_ir("cat", ": f32[B,26,6,6]")
        self.assert_maskjit_passed()

    def test_hardswish_and_hardsigmoid_are_pytorch_bit_for_bit(self):
        x = torch.cat([torch.randn(4, 997) * 4, torch.tensor([[-3.0, 3.0, 0.0, -0.0] * 249 + [2.9999998]])])
        model = nn.Sequential(nn.Hardswish(), nn.Hardsigmoid())
        self.export(model, x)
        self.assert_maskjit_passed()
        if not MASKJIT:
            self.skipTest("no maskjit binary: the bits are checked with maskjit run")
        out = self.path("run.safetensors")
        r = subprocess.run([MASKJIT, "run", self.path(), "--out", out], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        got = safetensors_io.load(out)[0]["output"]
        want = torch.nn.functional.hardsigmoid(torch.nn.functional.hardswish(x))
        self.assertTrue(torch.equal(got.view(torch.int32), want.view(torch.int32)))

    def test_pools_with_ceil_mode_export_and_check(self):
        # SqueezeNet and GoogLeNet: windows that hang over the input's end
        F = torch.nn.functional

        class Pools(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 8, 3)
                self.conv2 = nn.Conv2d(8, 8, 1)

            def forward(self, x):                                  # [B, 3, 14, 15]
                y = F.max_pool2d(self.conv(x), 3, 2, ceil_mode=True)   # 12x13 -> 6x6 (floor: 5x6)
                a = F.avg_pool2d(y, 2, 2, ceil_mode=True)              # 6x6 -> 3x3
                b = F.avg_pool2d(y, 3, 2, 1, ceil_mode=True, count_include_pad=False)  # 6x6 -> 4x4
                c = F.max_pool2d(self.conv2(y), 2, 2, 1, ceil_mode=True)  # padding and ceil: 4x4
                return a.flatten(1), b.flatten(1) + c.flatten(1)

        torch.manual_seed(15)
        model = Pools()
        prune.l1_unstructured(model.conv2, "weight", amount=0.8)
        self.export(model.eval(), torch.randn(2, 3, 14, 15))
        self.assert_in_ir("ceil_mode=true", ": f32[B,8,6,6]", ": f32[B,8,3,3]", ": f32[B,8,4,4]")
        self.assert_maskjit_passed()

    def test_channel_shuffle_through_a_rank_5_view_exports_and_checks(self):
        class Shuffle(nn.Module):  # ShuffleNet: view to rank 5, swap the groups, view back
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(6, 6, 1)

            def forward(self, x):
                b, c, h, w = x.shape
                y = self.conv(x).view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)
                z = x.reshape(b, 3, 2, h, w).permute(0, 2, 1, 3, 4).reshape(b, c, h, w)
                return y + z

        torch.manual_seed(16)
        model = Shuffle()
        prune.l1_unstructured(model.conv, "weight", amount=0.5)
        self.export(model.eval(), torch.randn(2, 6, 5, 7))
        self.assert_in_ir(": f32[B,2,3,35]", ": f32[B,3,2,35]", "permute", ": f32[B,6,5,7]")
        self.assert_maskjit_passed()

    def test_rank_5_views_beyond_reshapes_and_leading_transposes_are_refused(self):
        class Wide(nn.Module):
            def __init__(self, tail):
                super().__init__()
                self.tail = tail

            def forward(self, x):
                b, c, h, w = x.shape
                return self.tail(x.view(b, 2, c // 2, h, w))

        x = torch.randn(2, 6, 5, 7)
        for tail in (lambda v: v.sum(3).flatten(1), lambda v: v.transpose(3, 4).reshape(v.shape[0], -1),
                     lambda v: v * 2, lambda v: v):
            with self.subTest():
                self.assert_refused(Wide(tail), x, "a value of rank 5 (f32[B,2,3,5,7])", "maskjit tensors have rank 1-4")

    def test_cnn_options_maskjit_lacks_are_refused_by_name(self):
        x = torch.randn(2, 4, 9, 9)
        cases = [
            (nn.AvgPool2d(2, divisor_override=3), "avg_pool2d with divisor_override"),
            (nn.MaxPool2d(3, dilation=2), "max_pool2d with dilation"),
            (nn.ConvTranspose2d(4, 4, 3), "unsupported: aten::"),
            (nn.Conv2d(4, 4, 4, padding="same"), "padding='same' with kernel [4, 4]"),
        ]
        for module, needle in cases:
            with self.subTest(module=repr(module)):
                self.assert_refused(module, x, needle)
        self.assert_refused(nn.Conv1d(4, 4, 4, padding="same"), torch.randn(2, 4, 9),
                            "padding='same' with kernel [4], stride 1")

    def test_conv_padding_same_and_valid_export_as_numbers(self):
        torch.manual_seed(6)
        model = nn.Sequential(nn.Conv2d(3, 4, 3, padding="same", dilation=2),
                              nn.Conv2d(4, 2, (1, 3), padding="valid"))
        self.export(model, torch.randn(2, 3, 7, 9))
        self.assert_in_ir("padding=[2,2]", "padding=[0,0]")
        self.assert_maskjit_passed()

    # ---- spec= ------------------------------------------------------------
    def test_wrong_spec_is_refused_with_the_reason(self):
        torch.manual_seed(1)
        model = et.build_model("mlp:16,32,8:act=relu")
        x = torch.randn(4, 16)
        self.assert_refused(model, x, "spec 'mlp:16,32,8:act=gelu'", "differs from the model's",
                            spec="mlp:16,32,8:act=gelu")
        self.assert_refused(model, x, "does not describe this model", "0.bias",
                            spec="mlp:16,32,8:act=relu:bias=0")
        self.assert_refused(model, x, "size mismatch", spec="mlp:16,32,4")
        self.assert_refused(model, x, "not an mlp spec", spec="nonsense")

    def test_spec_with_silu_exports_and_checks(self):
        torch.manual_seed(1)
        model = et.build_model("mlp:16,32,8:act=silu")
        self.export(model, torch.randn(4, 16), spec="mlp:16,32,8:act=silu")
        self.assert_maskjit_passed()

    def test_refused_export_leaves_an_existing_file_alone(self):
        with open(self.path(), "wb") as f:
            f.write(b"precious")
        model = et.build_model("mlp:16,8")
        with self.assertRaises(et.ExportError):
            self.export(model, torch.randn(2, 16), spec="mlp:16,4")
        with open(self.path(), "rb") as f:
            self.assertEqual(f.read(), b"precious")

    def test_right_spec_with_prune_exports_and_checks(self):
        torch.manual_seed(2)
        model = et.build_model("mlp:16,32,8:act=tanh")
        prune.l1_unstructured(model[0], "weight", amount=0.5)
        tensors = self.export(model, torch.randn(3, 16), spec="mlp:16,32,8:act=tanh")
        self.assertIn("0.parametrizations.weight.original", tensors)
        self.assertIn("0.parametrizations.weight.0.mask", tensors)
        self.assertNotIn("0.weight_orig", tensors)
        self.assert_maskjit_passed()

    # ---- trace files --------------------------------------------------------
    def test_unsupported_op_names_op_module_and_source_line(self):
        line = line_of(Encoder.forward, "the unsupported op's call site")
        self.assert_refused(WithEncoder().eval(), torch.randn(3, 8),
                            "unsupported: aten::mish at encoder.act (Mish), "
                            f"test_export.py:{line}")

    def test_unsupported_functional_op_at_the_root(self):
        class Root(nn.Module):
            def forward(self, x):
                return torch.nn.functional.mish(x)
        line = line_of(Root.forward, "mish(")
        self.assert_refused(Root(), torch.randn(2, 4),
                            f"unsupported: aten::mish at <root> (Root), test_export.py:{line}")

    def test_pruned_models_export_and_check(self):
        model = pruned_mlp()
        tensors = self.export(model, torch.randn(4, 16))
        d, meta = safetensors_io.load(self.path())
        ir = meta["maskjit.ir"]
        for key in ("1.weight_orig", "1.weight_mask", "4.weight_orig", "4.weight_mask"):
            self.assertIn(f'param "{key}"', ir)
            self.assertIn(key, d)
        self.assertEqual(meta["maskjit.format"], "trace-v1")
        self.assertEqual(meta["torch.version"], torch.__version__)
        self.assertEqual(meta["maskjit.batches"], "4,1,5")
        for key in ("input", "expected", "input.batch1", "expected.batch1", "input.batch5",
                    "expected.batch5"):
            self.assertIn(key, tensors)
        self.assertEqual(list(d["expected.batch5"].shape), [5, 8])
        with torch.no_grad():
            self.assertTrue(torch.equal(model(d["input.batch5"]), d["expected.batch5"]))
        self.assert_maskjit_passed()

    def test_fakesparsity_and_prune_together(self):
        model = pruned_mlp()
        mask = (torch.rand(32, 16, generator=torch.Generator().manual_seed(3)) > 0.5).float()
        prune.remove(model[1], "weight")
        parametrize.register_parametrization(model[1], "weight", et.FakeSparsity(mask))
        self.export(model, torch.randn(2, 16))
        self.assert_in_ir('param "1.parametrizations.weight.0.mask"', 'param "4.weight_mask"')
        self.assert_maskjit_passed()

    def test_n_m_sparsifier_bool_masks_export_and_check(self):
        # WeightNormSparsifier with zeros_per_block < the block's size (2:4
        # style) stores a torch.bool mask; mask * weight is the same in float
        torch.manual_seed(5)
        model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
        from torch.ao.sparsity import WeightNormSparsifier
        sp = WeightNormSparsifier(sparsity_level=1.0, sparse_block_shape=(1, 4), zeros_per_block=2)
        sp.prepare(model, [{"tensor_fqn": "0.weight"}, {"tensor_fqn": "2.weight"}])
        sp.step()
        self.assertEqual(model[0].parametrizations.weight[0].mask.dtype, torch.bool)
        self.export(model.eval(), torch.randn(4, 16))
        d, _ = safetensors_io.load(self.path())
        mask = d["0.parametrizations.weight.0.mask"]
        self.assertEqual(mask.dtype, torch.float32)
        self.assertEqual(float(mask.sum()), 16 * 32 / 2)
        self.assert_maskjit_passed()

    def test_batch_dependent_view_sizes_become_B(self):
        torch.manual_seed(4)
        self.export(Heads().eval(), torch.randn(3, 5, 8))
        if MASKJIT:  # checked by maskjit, or told why not (its CLI's input limit)
            self.assertRegex(self.log.getvalue(), "check: PASS|not checked by .*one \\[batch")
        self.assert_in_ir(": f32[B,5,2,4]", 'input "input" : f32[B,5,8]')

    def test_batch_baked_into_a_size_is_refused(self):
        self.assert_refused(Heads(bake_batch=True).eval(), torch.randn(3, 5, 8),
                            "aten::view at <root> (Heads)", "baked into the trace", maskjit=None)

    def test_batch_merged_with_another_dim_is_refused(self):
        self.assert_refused(Heads(merge_batch=True).eval(), torch.randn(3, 5, 8),
                            "mixes the batch with other dims", maskjit=None)

    def test_python_numbers_from_sizes_export_and_from_data_are_refused(self):
        class Scaled(nn.Module):
            def __init__(self, from_data=False):
                super().__init__()
                self.fc = nn.Linear(8, 8)
                self.from_data = from_data

            def forward(self, x):
                d = x.shape[-1]  # a tensor while tracing: math.sqrt turns it into a number
                scale = float(x.abs().max()) if self.from_data else math.sqrt(d)
                return self.fc(x) / scale

        torch.manual_seed(10)
        self.export(Scaled(), torch.randn(3, 5, 8))
        self.assert_in_ir("div")
        self.assert_maskjit_passed()
        os.remove(self.path())
        self.assert_refused(Scaled(from_data=True), torch.randn(3, 5, 8),
                            "the traced graph changes with the input", maskjit=None)

    def test_value_dependent_control_flow_is_refused(self):
        line = line_of(DataDependent.forward, "x.sum() > 0")
        self.assert_refused(DataDependent(), torch.ones(2, 4), "may not generalise",
                            f"test_export.py:{line}")

    def test_the_written_graph_is_checked_at_other_batches(self):
        # reference_run is what validates files: it must see a wrong graph.
        model = pruned_mlp()
        self.export(model, torch.randn(4, 16))
        d, meta = safetensors_io.load(self.path())
        ir = meta["maskjit.ir"].replace("sigmoid", "tanh")
        got = et.reference_run(ir, d, [d["input.batch1"]])
        with self.assertRaises(et.ExportError):
            et._compare(got, [d["expected.batch1"]], "tampered")

    def test_intermediates_store_pytorch_value_of_every_node(self):
        torch.manual_seed(4)
        model = pruned(nn.Sequential(nn.Linear(6, 8), nn.LeakyReLU(0.1), nn.Linear(8, 3)), 0.5)
        seen = []
        model[1].register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
        x = torch.randn(4, 6)
        d = self.export(model, x, intermediates=True, batches=(1, 6))
        _, meta = safetensors_io.load(self.path())
        ops = {int(m.group(1)): m.group(2) for m in map(et._LINE.match, meta["maskjit.ir"].split("\n"))
               if m and m.group(2) not in ("input", "param", "const")}
        for suffix in ("", ".batch1", ".batch6"):
            self.assertEqual({k for k in d if k.startswith("maskjit.node.") and k.endswith(suffix)
                              and k[len("maskjit.node."):-len(suffix) or None].isdigit()},
                             {f"maskjit.node.{i}{suffix}" for i in ops})
            last = max(ops)
            torch.testing.assert_close(d[f"maskjit.node.{last}{suffix}"], d["expected" + suffix],
                                       rtol=et.MJ_RTOL, atol=et.MJ_ATOL)
        # the LeakyReLU node's stored value is the module's output (the first forward's)
        leaky = [i for i, op in ops.items() if op == "leaky_relu"]
        self.assertEqual(len(leaky), 1)
        torch.testing.assert_close(d[f"maskjit.node.{leaky[0]}"], seen[0], rtol=et.MJ_RTOL,
                                   atol=et.MJ_ATOL)
        self.assertIn(f'"%{leaky[0]}":', meta["maskjit.sources"])
        self.assert_maskjit_passed()
        # without intermediates the file is as before: no node values, no sources
        plain = self.export(model, x, name="plain.safetensors", batches=(1, 6))
        self.assertFalse([k for k in plain if k.startswith("maskjit.node.")])
        self.assertNotIn("maskjit.sources", safetensors_io.load(self.path("plain.safetensors"))[1])
        with self.assertRaises(et.ExportError):
            self.export(model, x, name="spec.safetensors", spec="mlp:6,8,3", intermediates=True)

    def test_module_command_line(self):
        src = os.path.join(self.dir.name, "mymodel.py")
        with open(src, "w") as f:
            f.write("import torch\nfrom torch import nn\nfrom torch.nn.utils import prune\n"
                    "def make():\n"
                    "    m = nn.Sequential(nn.Linear(6, 6), nn.GELU(), nn.Linear(6, 2))\n"
                    "    prune.random_unstructured(m[0], 'weight', amount=0.5)\n"
                    "    return m\n"
                    "def bad():\n"
                    "    return nn.Sequential(nn.Linear(6, 6), nn.Mish())\n")
        out = self.path("cli.safetensors")
        extra = [] if MASKJIT else ["--no-maskjit-check"]
        self.assertEqual(et.main(["--module", f"{src}:make", "--inputs", "3x6", "-o", out] + extra), 0)
        _, meta = safetensors_io.load(out)
        self.assertIn('param "0.weight_mask"', meta["maskjit.ir"])
        self.assertNotIn("maskjit.sources", meta)
        inter = self.path("inter.safetensors")
        self.assertEqual(et.main(["--module", f"{src}:make", "--inputs", "3x6", "--intermediates",
                                  "-o", inter] + extra), 0)
        self.assertTrue([k for k in safetensors_io.load(inter)[0] if k.startswith("maskjit.node.")])
        bad = self.path("bad.safetensors")
        self.assertEqual(et.main(["--module", f"{src}:bad", "--inputs", "3x6", "-o", bad] + extra), 1)
        self.assertFalse(os.path.exists(bad))
        self.assertEqual(et.main(["--module", f"{src}:nope", "--inputs", "3x6", "-o", bad]), 1)
        # where the file cannot go is a usage error, before the export's work
        for target in (self.dir.name, os.path.join(self.dir.name, "no", "such.safetensors")):
            with self.assertRaises(SystemExit) as cm, \
                    contextlib.redirect_stderr(io.StringIO()) as err:
                et.main(["--module", f"{src}:make", "--inputs", "3x6", "-o", target])
            self.assertEqual(cm.exception.code, 2)
            self.assertIn(f"-o {target}:", err.getvalue())
        # the model's own failure on the example input, as a reason
        self.assertEqual(et.main(["--module", f"{src}:make", "--inputs", "3x7", "-o", bad]), 1)
        self.assertFalse(os.path.exists(bad))


if __name__ == "__main__":
    if not MASKJIT:
        print("note: no maskjit binary (build it, or set MASKJIT=PATH): files are checked "
              "against PyTorch only")
    result = unittest.main(exit=False, verbosity=2).result
    failed = len(result.failures) + len(result.errors)
    print(f"export: {result.testsRun - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
