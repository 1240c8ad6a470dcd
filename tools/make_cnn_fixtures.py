#!/usr/bin/python3
"""Writes tests/fixtures/cnn.safetensors with PyTorch 1.13 (python3-torch):
the reference outputs of torch's conv2d, batch norm (eval) and pooling, and a
small pruned CNN, for tests/test_cnn.c.

    /usr/bin/python3 tools/make_cnn_fixtures.py [-o tests/fixtures/cnn.safetensors]

Contents (float32):
  conv{i}.x/.w/.b/.y  torch.nn.functional.conv2d on odd sizes; the parameters of
                      case i are in the metadata "conv{i}" as
                      "stride_h,stride_w,pad_h,pad_w,dil_h,dil_w,groups"
  bn.x/.mean/.var/.w/.b/.y   F.batch_norm(training=False, eps=1e-5)
  maxpool.x/.y        F.max_pool2d(k=3, s=2, p=1) with a NaN in the input
  avgpool_pad.y / avgpool_nopad.y   F.avg_pool2d(maxpool.x without NaN, k=3, s=2, p=1,
                      count_include_pad=True / False); input avgpool.x
  adaptive.x/.y       F.adaptive_avg_pool2d(x[2,3,7,5], (3, 2))
  cnn.*               state_dict of SmallCNN (conv1 pruned with FakeSparsity:
                      cnn.conv1.parametrizations.weight.original and
                      cnn.conv1.parametrizations.weight.0.mask), cnn.input, cnn.expected
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402

try:
    from torch.ao.pruning.sparsifier.utils import FakeSparsity
except ImportError:  # torch 1.13
    from torch.ao.sparsity.sparsifier.utils import FakeSparsity

CONV_CASES = [  # (C, O, kh, kw, stride, pad, dil, groups, H, W)
    (3, 4, 3, 3, (1, 1), (0, 0), (1, 1), 1, 7, 9),
    (3, 4, 3, 3, (2, 2), (1, 1), (1, 1), 1, 7, 9),
    (4, 6, 5, 5, (1, 2), (1, 1), (2, 1), 2, 11, 9),
    (4, 4, 3, 3, (2, 1), (1, 0), (1, 2), 4, 9, 7),   # depthwise
    (6, 8, 1, 1, (1, 1), (0, 0), (1, 1), 1, 5, 5),   # pointwise
]


class SmallCNN(nn.Module):
    """conv-bn-relu-maxpool, conv-bn-relu-avgpool, global pool, linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool2 = nn.AvgPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.pool1(torch.relu(self.bn1(self.conv1(x))))
        x = self.pool2(torch.relu(self.bn2(self.conv2(x))))
        return self.fc(torch.flatten(self.gap(x), 1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--output", default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "cnn.safetensors"))
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    t, meta = {}, {"generator": "tools/make_cnn_fixtures.py", "torch.version": torch.__version__}
    with torch.no_grad():
        for i, (C, O, kh, kw, s, p, d, g, H, W) in enumerate(CONV_CASES):
            x = torch.randn(2, C, H, W)
            w = torch.randn(O, C // g, kh, kw)
            b = torch.randn(O)
            t[f"conv{i}.x"], t[f"conv{i}.w"], t[f"conv{i}.b"] = x, w, b
            t[f"conv{i}.y"] = F.conv2d(x, w, b, stride=s, padding=p, dilation=d, groups=g)
            meta[f"conv{i}"] = ",".join(str(v) for v in (*s, *p, *d, g))
        x = torch.randn(2, 5, 4, 3)
        mean, var = torch.randn(5), torch.rand(5) + 0.5
        w, b = torch.randn(5), torch.randn(5)
        t.update({"bn.x": x, "bn.mean": mean, "bn.var": var, "bn.w": w, "bn.b": b,
                  "bn.y": F.batch_norm(x, mean, var, w, b, training=False, eps=1e-5)})
        x = torch.randn(2, 3, 7, 6)
        t["avgpool.x"] = x.clone()
        t["avgpool_pad.y"] = F.avg_pool2d(x, 3, 2, 1, count_include_pad=True)
        t["avgpool_nopad.y"] = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
        x[1, 2, 3, 3] = float("nan")
        t["maxpool.x"], t["maxpool.y"] = x, F.max_pool2d(x, 3, 2, 1)
        x = torch.randn(2, 3, 7, 5)
        t["adaptive.x"], t["adaptive.y"] = x, F.adaptive_avg_pool2d(x, (3, 2))

        model = SmallCNN().eval()
        for bn in (model.bn1, model.bn2):  # running statistics as after training
            bn.running_mean.copy_(torch.randn(8) * 0.1)
            bn.running_var.copy_(torch.rand(8) + 0.5)
            bn.weight.copy_(torch.rand(8) + 0.5)
            bn.bias.copy_(torch.randn(8) * 0.1)
        mask = (torch.rand(model.conv1.weight.shape) < 0.3).float()
        parametrize.register_parametrization(model.conv1, "weight", FakeSparsity(mask))
        x = torch.randn(3, 3, 9, 11)
        y = model(x)
        for k, v in model.state_dict().items():
            if k.endswith("num_batches_tracked"):
                continue  # training counter; eval never reads it
            t["cnn." + k] = v
        t["cnn.conv1.parametrizations.weight.0.mask"] = mask  # FakeSparsity hides it
        t["cnn.input"], t["cnn.expected"] = x, y
    safetensors_io.save(args.output, {k: v.float().contiguous() for k, v in t.items()}, metadata=meta)
    print(f"wrote {args.output} ({len(t)} tensors)")


if __name__ == "__main__":
    main()
