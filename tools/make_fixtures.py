#!/usr/bin/python3
"""Writes the PyTorch reference fixtures in tests/fixtures/ (committed to git).

Run from anywhere, with the system Python that has PyTorch (1.13 here):

    /usr/bin/python3 tools/make_fixtures.py            # writes tests/fixtures/*.safetensors
    /usr/bin/python3 tools/make_fixtures.py --out DIR  # elsewhere

It is deterministic (torch.manual_seed per fixture), so re-running it gives
byte-identical files on the same PyTorch version.

Model fixtures: one safetensors file per model, written by
tools/export_torch.py's export(): the state_dict under PyTorch's key names,
the masks under "<mod>.parametrizations.weight.0.mask", an "input" (batch 5)
and PyTorch's "expected" output (torch.no_grad, float32), and __metadata__
{"maskjit.model": spec, "maskjit.generator": "tools/make_fixtures.py",
"torch.version": ...}. tests/test_torch_fixtures.c rebuilds each model from the
spec, loads the file and compares maskjit's forward with "expected".

Trace fixtures (export_*.safetensors): maskjit trace files written by
export_torch.export() from models no spec can describe: the IR in the
metadata, every param and buffer under its state_dict key, masks as separate
params, "input"/"expected" at batch 5 and "input.batchN"/"expected.batchN" at
batches 1 and 6 (PyTorch's outputs); the transformer-era ones (LLaMA MLP,
residual LayerNorm, BERT layer, ViT block) at batch 3, 1 and 17.
export_sequential_prune also holds PyTorch's value of every node
("maskjit.node.<id>[.batchN]", export(intermediates=True)). tests/test_export.c loads each and runs
every mode and `maskjit check` on them.

dtypes.safetensors: one tensor each in F16, BF16, F64 and F32 (plus a rank-0
F64 scalar) holding values that are exact in their dtype, for the loader's
conversion test (tests/test_safetensors.c writes the expected floats itself).
"""
import argparse
import math
import os
import sys

import torch
from torch import nn
from torch.nn.utils import parametrize, prune

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export_torch  # noqa: E402
import safetensors_io  # noqa: E402

try:
    from torch.ao.pruning.sparsifier import utils
except ImportError:  # torch 1.13: torch.ao.sparsity
    from torch.ao.sparsity.sparsifier import utils

GENERATOR = "tools/make_fixtures.py"
BATCH = 5


def fixture(name, spec, seed, prepare):
    """Builds spec's model under a fixed seed, lets `prepare` mask it, exports."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = export_torch.build_model(spec)
    prepare(model, gen)
    in_features = export_torch.linear_modules(model)[0][1].in_features
    x = torch.randn(BATCH, in_features, generator=gen)
    return name, model, x, spec


def identity_masks(model, gen):
    for _, lin in export_torch.linear_modules(model):
        parametrize.register_parametrization(lin, "weight", utils.FakeSparsity(torch.eye(16)))


def random_weights_and_masks(density):
    def prepare(model, gen):
        with torch.no_grad():
            for _, lin in export_torch.linear_modules(model):
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) * 0.25)
                if lin.bias is not None:
                    lin.bias.copy_(torch.randn(lin.bias.shape, generator=gen))
        export_torch.prune_random(model, density, gen)
    return prepare


def random_masks(density, structured=False):
    def prepare(model, gen):
        export_torch.prune_random(model, density, gen, structured=structured)
    return prepare


def model_fixtures():
    acts = ["relu", "gelu", "gelu_tanh", "tanh", "sigmoid"]
    out = [
        fixture("mut", "mut", 1, identity_masks),
        fixture("mut_random", "mut", 2, random_weights_and_masks(0.5)),
        fixture("mut_nobias", "mut-nobias", 3, random_masks(0.5)),
    ]
    for i, act in enumerate(acts):
        out.append(fixture(f"mlp_{act}", f"mlp:16,32,8:act={act}", 10 + i, random_masks(0.5)))
    out.append(fixture("mlp_structured", "mlp:8,8:act=none:bias=0", 20,
                       random_masks(0.5, structured=True)))
    out.append(fixture("mlp_sparse", "mlp:64,128,64,10:act=relu", 21, random_masks(0.1)))
    return out


class ResidualMLP(nn.Module):
    """A residual block and shape-unpacking code (`b, f = x.shape`) whose
    view/flatten sizes depend on the batch."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 16)
        self.fc2 = nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        b, f = x.shape
        h = torch.relu(self.fc1(x))
        h = self.fc2(h) + x
        h = h.view(b, 2, f // 2).flatten(1)
        return torch.tanh(self.head(h))


class SplitHeads(nn.Module):
    """Hugging Face-style: unpacks the shape of a [batch, seq, features] input
    and views the features as heads; every view size comes from x.shape."""

    def __init__(self):
        super().__init__()
        self.query = nn.Linear(8, 8)
        self.out = nn.Linear(8, 6)

    def forward(self, x):
        b, s, _ = x.shape
        h = self.query(x).view(b, s, 2, 4)
        return self.out(torch.nn.functional.gelu(h).reshape(b, s, 8))


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.rand(d) + 0.5)

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class LlamaMLP(nn.Module):
    """LLaMA's MLP block: RMSNorm, SiLU-gated up projection, down projection, residual."""

    def __init__(self, d=16, h=32):
        super().__init__()
        self.norm = RMSNorm(d)
        self.gate = nn.Linear(d, h, bias=False)
        self.up = nn.Linear(d, h, bias=False)
        self.down = nn.Linear(h, d, bias=False)

    def forward(self, x):
        y = self.norm(x)
        return x + self.down(nn.functional.silu(self.gate(y)) * self.up(y))


class ResidualLayerNorm(nn.Module):
    """Post-norm residual MLP with LeakyReLU, then a softmax over the features."""

    def __init__(self, d=16):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, 32), nn.Linear(32, d)
        self.act, self.ln = nn.LeakyReLU(0.1), nn.LayerNorm(d)

    def forward(self, x):
        return self.ln(x + self.fc2(self.act(self.fc1(x)))).softmax(-1)


class BertLayer(nn.Module):
    """Hugging Face BertLayer-style post-norm encoder layer: heads by
    view/permute, scores / sqrt(d) plus an additive attention mask (a second
    input), softmax, dropout, LayerNorm(eps=1e-12), GELU feed-forward."""

    def __init__(self, d=32, heads=4, ffn=64):
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.attn_out, self.ln1 = nn.Linear(d, d), nn.LayerNorm(d, eps=1e-12)
        self.inter, self.out, self.ln2 = nn.Linear(d, ffn), nn.Linear(ffn, d), nn.LayerNorm(d, eps=1e-12)
        self.drop = nn.Dropout(0.1)

    def heads(self, x):
        b, s, _ = x.shape
        return x.view(b, s, self.h, self.dh).permute(0, 2, 1, 3)

    def forward(self, x, mask):
        q, k, v = self.heads(self.query(x)), self.heads(self.key(x)), self.heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.dh) + mask
        ctx = torch.matmul(self.drop(scores.softmax(-1)), v).permute(0, 2, 1, 3)
        b, s, _, _ = ctx.shape
        ctx = ctx.reshape(b, s, self.h * self.dh)
        h = self.ln1(x + self.drop(self.attn_out(ctx)))
        return self.ln2(h + self.drop(self.out(nn.functional.gelu(self.inter(h)))))


class TorchEncoder(nn.Module):
    """PyTorch's nn.TransformerEncoder as people use it: batch first, a
    padding mask (float: 0 keeps a key, -inf drops it) per sequence."""

    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64,
                                           activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2)

    def forward(self, x, pad):
        return self.encoder(x, src_key_padding_mask=pad)


class ViTBlock(nn.Module):
    """Pre-norm ViT block with a fused qkv projection split by chunk."""

    def __init__(self, d=32, heads=4):
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.n1, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.n2, self.fc1, self.fc2 = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = self.qkv(self.n1(x)).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, s, self.h, self.dh).transpose(1, 2) for t in (q, k, v))
        a = (q @ k.transpose(-2, -1) * self.dh ** -0.5).softmax(dim=-1)
        x = x + self.proj((a @ v).transpose(1, 2).reshape(b, s, d))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.n2(x))))


class TwoInTwoOut(nn.Module):
    """Two inputs of different widths, two outputs, each reading both inputs."""

    def __init__(self):
        super().__init__()
        self.fx, self.fz = nn.Linear(12, 16), nn.Linear(6, 16)
        self.head_a, self.head_b = nn.Linear(16, 4), nn.Linear(16, 3, bias=False)

    def forward(self, x, z):
        h = torch.relu(self.fx(x)) * torch.sigmoid(self.fz(z))
        return self.head_a(h).softmax(-1), torch.tanh(self.head_b(h + x.mean(-1, keepdim=True)))


# The transformer-era fixtures are checked at batches 3 (the example), 1 and 17.
T_BATCH, T_OPTIONS = 3, dict(batches=(1, 17))


class PrunedCNN(nn.Module):
    """A small CNN as people prune them: conv-bn-relu-pool twice (ReLU6 in
    place, as MobileNets write it), a MobileNet-style residual block
    (pointwise, depthwise with stride 1, pointwise), global pooling and a
    linear head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(2)
        self.expand = nn.Conv2d(16, 32, 1)
        self.depthwise = nn.Conv2d(32, 32, 3, padding=2, dilation=2, groups=32)
        self.project = nn.Conv2d(32, 16, 1)
        self.avg = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        h = self.pool(torch.relu(self.bn1(self.conv1(x))))
        h = nn.functional.relu6(self.bn2(self.conv2(h)), inplace=True)
        r = self.project(nn.functional.relu6(self.depthwise(torch.relu(self.expand(h)))))
        h = self.avg(h + r)
        return self.head(torch.flatten(self.gap(h), 1))


def _seeded(seed):
    """Seeds torch's global generator (the modules' init) and returns a
    generator for inputs and masks, both at seed."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _l1_prune(modules, amount):
    for m in modules:
        prune.l1_unstructured(m, "weight", amount=amount)


def trace_fixtures():
    """(name, model, example inputs, checked by the CLI while writing?, export
    options) for export_torch.export without a spec; options default to
    batches (1, 6) beside the example's batch 5."""
    out = []
    # nn.Sequential with Flatten (of a [batch, 4, 4] input), Dropout, LeakyReLU,
    # a bias-free layer pruned with torch.nn.utils.prune.l1_unstructured and a
    # final Sigmoid; it stores PyTorch's value of every node (intermediates).
    gen = _seeded(30)
    seq = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.Dropout(0.25), nn.LeakyReLU(0.1),
                        nn.Linear(32, 16, bias=False), nn.LeakyReLU(0.2), nn.Linear(16, 8),
                        nn.Sigmoid())
    prune.l1_unstructured(seq[4], "weight", amount=0.6)
    out.append(("export_sequential_prune", seq, torch.randn(BATCH, 4, 4, generator=gen), True,
                dict(intermediates=True)))

    gen = _seeded(31)
    res = ResidualMLP()
    prune.random_unstructured(res.fc2, "weight", amount=0.5)
    export_torch.prune_random(nn.Sequential(res.fc1, res.head), 0.5, gen)
    out.append(("export_residual", res, torch.randn(BATCH, 16, generator=gen), True, {}))

    # torch.ao pruning: WeightNormSparsifier's FakeSparsity masks, and a
    # FakeStructuredSparsity row mask on the last layer.
    gen = _seeded(32)
    mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 32), nn.Tanh(),
                        nn.Linear(32, 8))
    export_torch.prune_weight_norm(nn.Sequential(mlp[0], mlp[2]), 0.5)
    row_mask = export_torch.random_mask((8,), 0.5, gen)
    parametrize.register_parametrization(mlp[4], "weight",
                                         export_torch.FakeStructuredSparsity(row_mask))
    out.append(("export_fakesparsity", mlp, torch.randn(BATCH, 16, generator=gen), True, {}))

    gen = _seeded(33)
    heads = SplitHeads()
    export_torch.prune_random(nn.Sequential(heads.query), 0.5, gen)
    out.append(("export_heads", heads, torch.randn(BATCH, 3, 8, generator=gen), False, {}))

    # Two inputs, two outputs, each output reading both inputs.
    gen = _seeded(38)
    two = TwoInTwoOut()
    _l1_prune((two.fx, two.fz, two.head_a), 0.5)
    out.append(("export_two_in_two_out", two, (torch.randn(BATCH, 12, generator=gen),
                                               torch.randn(BATCH, 6, generator=gen)), True, {}))

    # transformer-era blocks, pruned with torch.nn.utils.prune
    gen = _seeded(34)
    llama = LlamaMLP()
    _l1_prune((llama.gate, llama.up, llama.down), 0.7)
    out.append(("export_llama_mlp", llama, torch.randn(T_BATCH, 16, generator=gen), True,
                T_OPTIONS))

    gen = _seeded(35)
    rln = ResidualLayerNorm()
    _l1_prune((rln.fc1, rln.fc2), 0.6)
    out.append(("export_residual_layernorm", rln, torch.randn(T_BATCH, 16, generator=gen), True,
                T_OPTIONS))

    gen = _seeded(36)
    bert = BertLayer()
    _l1_prune((bert.query, bert.key, bert.value, bert.attn_out, bert.inter, bert.out), 0.8)
    mask = torch.zeros(T_BATCH, 1, 1, 6).masked_fill(
        torch.rand(T_BATCH, 1, 1, 6, generator=gen) < 0.3, -10000.0)
    out.append(("export_bert_layer", bert, (torch.randn(T_BATCH, 6, 32, generator=gen), mask), True,
                T_OPTIONS))

    gen = _seeded(37)
    vit = ViTBlock()
    _l1_prune((vit.qkv, vit.proj, vit.fc1, vit.fc2), 0.8)
    out.append(("export_vit_block", vit, torch.randn(T_BATCH, 6, 32, generator=gen), True,
                T_OPTIONS))

    # PyTorch's own nn.TransformerEncoder (two post-norm layers, GELU) with
    # a float key padding mask as a second input; every weight pruned,
    # MultiheadAttention's packed in_proj_weight and its out_proj included
    gen = _seeded(38)
    torch.manual_seed(38)
    encoder = TorchEncoder()
    for layer in encoder.encoder.layers:
        _l1_prune((layer.linear1, layer.linear2, layer.self_attn.out_proj), 0.8)
        prune.l1_unstructured(layer.self_attn, "in_proj_weight", amount=0.8)
    pad = torch.zeros(T_BATCH, 6).masked_fill(torch.rand(T_BATCH, 6, generator=gen) < 0.3,
                                              float("-inf"))
    pad[:, 0] = 0.0  # no row without a key
    out.append(("export_torch_encoder", encoder, (torch.randn(T_BATCH, 6, 32, generator=gen), pad),
                True, T_OPTIONS))

    # A pruned CNN: FakeSparsity masks (torch.ao's parametrization) on two
    # convs, torch.nn.utils.prune on two others and on the head, and
    # BatchNorm with running statistics that are not the defaults.
    gen = _seeded(39)
    cnn = PrunedCNN()
    for bn in (cnn.bn1, cnn.bn2):
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen) * 0.1)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
        bn.weight.data.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
        bn.bias.data.copy_(torch.randn(bn.num_features, generator=gen) * 0.1)
    for conv, density in ((cnn.conv2, 0.3), (cnn.expand, 0.2)):
        parametrize.register_parametrization(
            conv, "weight", export_torch.FakeSparsity(export_torch.random_mask(
                tuple(conv.weight.shape), density, gen)))
    _l1_prune((cnn.depthwise, cnn.project, cnn.head), 0.7)
    cnn.eval()
    out.append(("export_cnn", cnn, torch.randn(T_BATCH, 3, 12, 12, generator=gen), True, T_OPTIONS))
    return out


def dtype_tensors():
    """Values exact in each dtype; test_safetensors.c lists the same floats."""
    inf, nan = math.inf, math.nan
    f16 = torch.tensor([[1.0, -2.0, 0.5, 65504.0],
                        [2.0 ** -24, inf, -0.0, nan]], dtype=torch.float16)   # 2^-24: smallest subnormal
    bf16 = torch.tensor([1.0, -2.0, 0.5, 2.0 ** 127, 2.0 ** -133, -inf],
                        dtype=torch.bfloat16)                                   # 2^-133: smallest subnormal
    f64 = torch.tensor([1.0, -2.0, 0.1, 1e300, 2.0 ** -149, 1.0 + 2.0 ** -24,
                        1.0 + 3 * 2.0 ** -24, -1e-300], dtype=torch.float64)
    f32 = torch.tensor([[[1.5, -0.0], [inf, 3.0e38]]], dtype=torch.float32)   # rank 3
    scalar = torch.tensor(3.25, dtype=torch.float64)                          # rank 0
    for t, vals in ((f16, [2.0 ** -24]), (bf16, [2.0 ** 127, 2.0 ** -133])):
        for v in vals:  # guard: the values really are exact in that dtype
            assert v in t.to(torch.float64).flatten().tolist(), (t.dtype, v)
    return {"f16": f16, "bf16": bf16, "f64": f64, "f32": f32, "scalar": scalar}


def main(argv=None):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description="Write maskjit's PyTorch fixtures")
    ap.add_argument("--out", default=os.path.join(root, "tests", "fixtures"))
    ap.add_argument("--no-maskjit-check", dest="maskjit", action="store_const", const=None,
                    default="auto", help="check the files against PyTorch only")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for name, model, x, spec in model_fixtures():
        path = os.path.join(args.out, name + ".safetensors")
        export_torch.export(model, x, path, spec=spec, generator=GENERATOR, maskjit=args.maskjit)
        print(f"{path}: {spec}, {os.path.getsize(path)} bytes")
    for name, model, x, by_cli, options in trace_fixtures():
        path = os.path.join(args.out, name + ".safetensors")
        options = dict(dict(batches=(1, 6)), **options)
        export_torch.export(model, x, path, generator=GENERATOR,
                            maskjit=args.maskjit if by_cli else None, **options)
        print(f"{path}: maskjit trace, {os.path.getsize(path)} bytes")
    path = os.path.join(args.out, "dtypes.safetensors")
    safetensors_io.save(path, dtype_tensors(),
                        {"maskjit.generator": GENERATOR, "torch.version": torch.__version__})
    print(f"{path}: {os.path.getsize(path)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
