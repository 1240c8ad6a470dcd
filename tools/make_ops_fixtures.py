#!/usr/bin/python3
"""Writes tests/fixtures/ops.safetensors: PyTorch's results for the math ops
of transformers (elementwise ops, activations, reductions, softmax,
layer_norm), for tests/test_graphs_ops.c to compare maskjit's eager kernels
with (within float32 tolerance: PyTorch's vectorised kernels sum and
round differently).

    /usr/bin/python3 tools/make_ops_fixtures.py [--out DIR]

Deterministic (torch.manual_seed). Tensors: "x" [5,3,16] randn, "y" [16]
randn, "ln.weight" / "ln.bias" [16], and one tensor per result named as
the test expects it ("silu", "softmax.dim1", "layer_norm.affine", ...).
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures"))
    args = ap.parse_args()
    torch.manual_seed(7)
    x = torch.randn(5, 3, 16)
    y = torch.randn(16)
    w = torch.rand(16) + 0.5
    b = torch.randn(16)
    a = x.abs() + 0.1
    ln = torch.nn.LayerNorm(16)
    with torch.no_grad():
        ln.weight.copy_(w)
        ln.bias.copy_(b)
        r = {
            "x": x, "y": y, "ln.weight": w, "ln.bias": b,
            "div": x / y, "div_scalar": x / 8.0, "maximum": torch.maximum(x, y), "minimum": torch.minimum(x, y),
            "neg": -x, "exp": torch.exp(x), "log": torch.log(a), "sqrt": torch.sqrt(a), "rsqrt": torch.rsqrt(a),
            "pow2": x.pow(2), "pow3": x.pow(3), "pow0.5": a.pow(0.5), "pow1.5": a.pow(1.5), "pow-1": a.pow(-1),
            "silu": F.silu(x), "leaky_relu": F.leaky_relu(x), "leaky_relu0.2": F.leaky_relu(x, 0.2),
            "elu": F.elu(x), "elu0.5": F.elu(x, 0.5), "hardtanh": F.hardtanh(x), "relu6": F.relu6(x * 4),
            "softplus": F.softplus(x * 10), "softplus2.5": F.softplus(x, beta=2, threshold=5),
            "layer_norm": F.layer_norm(x, (16,)), "layer_norm.affine": ln(x),
            "rmsnorm": x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w,
        }
        for d in range(3):
            r["sum.dim%d" % d] = x.sum(d)
            r["mean.dim%d" % d] = x.mean(d, keepdim=True)
            r["softmax.dim%d" % d] = F.softmax(x, d)
            r["log_softmax.dim%d" % d] = F.log_softmax(x, d)
    meta = {"maskjit.generator": "tools/make_ops_fixtures.py", "torch.version": torch.__version__}
    safetensors_io.save(os.path.join(args.out, "ops.safetensors"), {k: v.contiguous() for k, v in r.items()},
                        metadata=meta)


if __name__ == "__main__":
    main()
