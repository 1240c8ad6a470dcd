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

dtypes.safetensors: one tensor each in F16, BF16, F64 and F32 (plus a rank-0
F64 scalar) holding values that are exact in their dtype, for the loader's
conversion test (tests/test_safetensors.c writes the expected floats itself).
"""
import argparse
import math
import os
import sys

import torch
from torch.nn.utils import parametrize

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
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for name, model, x, spec in model_fixtures():
        path = os.path.join(args.out, name + ".safetensors")
        export_torch.export(model, x, path, spec=spec, generator=GENERATOR)
        print(f"{path}: {spec}, {os.path.getsize(path)} bytes")
    path = os.path.join(args.out, "dtypes.safetensors")
    safetensors_io.save(path, dtype_tensors(),
                        {"maskjit.generator": GENERATOR, "torch.version": torch.__version__})
    print(f"{path}: {os.path.getsize(path)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
