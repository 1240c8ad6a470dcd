#!/usr/bin/env python3
"""Whole pruned torchvision CNNs: PyTorch and maskjit side by side.

Each model gets torch.nn.utils.prune.l1_unstructured on every Conv2d and
Linear weight (80% by default), is exported with tools/export_torch.py
(checked against PyTorch at export), and is timed at batch 1 on one
thread, in process CPU time:
  - PyTorch 1.13: eager and torch.jit.trace + freeze, the median of 7
    rounds of 0.3 s each;
  - maskjit: `maskjit bench FILE --batch 1 --threads 1 --clock cpu
    --untimed-ref --json` (compiled exact and frozen; each checked against
    the interpreter first, with the compile cache off).
It prints a Markdown table: time per image and, in parentheses, PyTorch's
faster time over the variant's.

Needs python3-torchvision (not a project dependency):
  /usr/bin/python3 tools/bench_torchvision.py --out /tmp/tv [--models a,b]
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.utils.prune as prune

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export_torch  # noqa: E402

# name -> constructor kwargs; the ones the README's table shows
MODELS = {
    "resnet18": {},
    "mobilenet_v2": {},
    "mobilenet_v3_small": {},
    "efficientnet_b0": {},
    "mnasnet0_5": {},
    "regnet_y_400mf": {},
    "shufflenet_v2_x1_0": {},
    "squeezenet1_1": {},
    "googlenet": {"aux_logits": False, "init_weights": True},
    "convnext_tiny": {},
}


def pruned(name, amount):
    import torchvision.models as tvm
    torch.manual_seed(0)
    m = getattr(tvm, name)(**MODELS.get(name, {}))
    for mod in m.modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            prune.l1_unstructured(mod, "weight", amount=amount)
    return m.eval()


def torch_ms(model, x, reps):
    """The faster of eager and trace + freeze: median ms per call."""
    best = {}
    with torch.no_grad():
        frozen = torch.jit.freeze(torch.jit.trace(model, x).eval())
        for label, f in (("eager", model), ("traced+frozen", frozen)):
            for _ in range(3):
                f(x)
            ts = []
            for _ in range(reps):
                n, t0 = 0, time.process_time()
                while time.process_time() - t0 < 0.3:
                    f(x)
                    n += 1
                ts.append((time.process_time() - t0) / n)
            ts.sort()
            best[label] = ts[len(ts) // 2] * 1e3
    return best


def maskjit_ms(maskjit, path):
    env = dict(os.environ, MASKJIT_CACHE="0")
    out = subprocess.run([maskjit, "bench", path, "--batch", "1", "--threads", "1", "--clock", "cpu",
                          "--untimed-ref", "--json"], capture_output=True, text=True, env=env, check=True).stdout
    res = {}
    for w in json.loads(out)["workloads"]:
        for r in w["results"]:
            res[r["variant"]] = (r["median_ns"] / 1e6, r["compile_ms"])
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="directory for the exported files")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated torchvision names")
    ap.add_argument("--amount", type=float, default=0.8, help="fraction of each weight pruned")
    ap.add_argument("--maskjit", default=os.path.join(os.path.dirname(__file__), "..", "build", "maskjit"))
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    rows = []
    for name in a.models.split(","):
        model = pruned(name, a.amount)
        x = torch.randn(1, 3, 224, 224)
        path = os.path.join(a.out, f"{name}.safetensors")
        export_torch.export(model, x, path, batches=(1,), maskjit=None, log=lambda *_: None)
        pt = torch_ms(model, x, a.reps)
        mj = maskjit_ms(a.maskjit, path)
        row = {"model": name, "torch": pt, "maskjit": mj}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(f"| model, batch 1, {a.amount:.0%} pruned | PyTorch eager | PyTorch traced+frozen | "
          "maskjit exact | maskjit frozen | compile exact / frozen |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        best = min(r["torch"].values())
        ex, fr = r["maskjit"]["compiled-exact"], r["maskjit"]["compiled-frozen"]
        print(f"| {r['model']} | {r['torch']['eager']:.2f} ms | {r['torch']['traced+frozen']:.2f} ms | "
              f"{ex[0]:.2f} ms ({best / ex[0]:.2f}x) | {fr[0]:.2f} ms ({best / fr[0]:.2f}x) | "
              f"{ex[1] / 1e3:.1f} / {fr[1] / 1e3:.1f} s |")


if __name__ == "__main__":
    main()
