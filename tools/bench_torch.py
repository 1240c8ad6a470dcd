#!/usr/bin/python3
"""PyTorch 1.13 as a benchmark peer of maskjit-bench, on the same workloads.

    /usr/bin/python3 tools/bench_torch.py --workloads W1,W3 [--reps 1] [--min-ms 25] [--json]
    /usr/bin/python3 tools/bench_torch.py --merge ROUNDS.jsonl   # what tools/bench.sh --torch prints
    /usr/bin/python3 tools/bench_torch.py --export-w7 DIR        # W7's trace files for maskjit-bench
    /usr/bin/python3 tools/bench_torch.py --export-w8 DIR        # W8's trace file for maskjit-bench

W1-W5 are the MLPs that maskjit-bench builds (bench/README.md): the same
shapes, batch and mask density and kind, with PyTorch's own random weights
(timings do not depend on the values). W7 and W7b4 are a BERT-base encoder
layer (hidden 768, 12 heads, FFN 3072, sequence 128, an additive attention
mask as a second input) with masks of density 0.1 on its six Linear weights,
unstructured (W7) or in 1x4 blocks (W7b4), at batch 1 and 8: --export-w7
writes the same model (same seed) as maskjit trace files, which
`maskjit-bench FILE` times, so both sides run identical weights and masks.
W8 is a pruned ResNet basic block: 3x3 conv 64->64 at 56x56, BatchNorm,
ReLU, again, plus the residual and a ReLU, batch 1, both conv weights
masked at density 0.2 (80% unstructured, FakeSparsity); --export-w8 writes
it as DIR/W8.safetensors the same way.
One thread (torch.set_num_threads(1)), under torch.no_grad(). Variants:
  torch-eager   the model as users run it: Linear layers with FakeSparsity
                parametrizations, the mask multiplied in on every call
  torch-frozen  torch.jit.freeze(torch.jit.trace(model)): PyTorch's best
                inference path here (the masked weights fold to constants)
Both are checked against each other before timing. Time per call is the
median over rounds of (round time / calls), as maskjit-bench reports it.
"""
import argparse
import json
import os
import statistics
import sys
import time

WORKLOADS = {
    # id: (widths, activation between layers, mask kind, density, batch)
    "W1": ([16, 16, 16, 16], None, "identity", 1.0, 3),
    "W2": ([256] * 4, "relu", "random", 0.1, 64),
    "W3": ([1024] * 4, "relu", "ones", 1.0, 64),
    "W4": ([1024] * 4, "relu", "random", 0.1, 64),
    "W5": ([1024] * 4, "relu", "block1x4", 0.1, 64),
}


# W7: BERT-base layer geometry, mask kind, density, batches (maskjit-bench
# compiles once and runs every batch; PyTorch gets the same list).
W7 = {"W7": "random", "W7b4": "block1x4"}
W7_DIMS = dict(d=768, heads=12, ffn=3072)
W7_SEQ, W7_DENSITY, W7_BATCHES, W7_SEED = 128, 0.1, (1, 8), 7


# W8: a ResNet basic block, as torchvision's BasicBlock (no downsample).
W8_CHANNELS, W8_SIZE, W8_DENSITY, W8_BATCHES, W8_SEED = 64, 56, 0.2, (1,), 8


def mask_linear(lin, kind, density, gen):
    """Registers FakeSparsity on lin.weight with a mask of this kind."""
    import torch
    from torch.nn.utils import parametrize
    try:
        from torch.ao.pruning.sparsifier.utils import FakeSparsity
    except ImportError:  # torch 1.13 names it torch.ao.sparsity
        from torch.ao.sparsity.sparsifier.utils import FakeSparsity
    shape = lin.weight.shape
    if kind == "identity":
        mask = torch.eye(shape[0], shape[1])
    elif kind == "ones":
        mask = torch.ones(shape)
    elif kind == "random":
        mask = (torch.rand(shape, generator=gen) < density).float()
    else:  # 1x4 blocks along the input dim
        blocks = (torch.rand(shape[0], shape[1] // 4, generator=gen) < density).float()
        mask = blocks.repeat_interleave(4, dim=1)
    parametrize.register_parametrization(lin, "weight", FakeSparsity(mask))


def build(wid):
    import torch
    from torch import nn
    widths, act, kind, density, batch = WORKLOADS[wid]
    gen = torch.Generator().manual_seed(0)
    layers = []
    for i in range(len(widths) - 1):
        lin = nn.Linear(widths[i], widths[i + 1])
        mask_linear(lin, kind, density, gen)
        layers.append(lin)
        if act == "relu" and i < len(widths) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers).eval()
    x = torch.randn(batch, widths[0], generator=gen)
    return model, x, batch


def w7_inputs(batch, gen):
    """Hidden states [batch, 128, 768] and an additive attention mask
    [batch, 1, 1, 128] (0 or -10000, about a quarter of the keys masked)."""
    import torch
    x = torch.randn(batch, W7_SEQ, W7_DIMS["d"], generator=gen)
    keep = torch.rand(batch, 1, 1, W7_SEQ, generator=gen) < 0.75
    return x, torch.zeros(batch, 1, 1, W7_SEQ).masked_fill(~keep, -10000.0)


def build_w7(wid):
    """The W7 model (deterministic: seeded weights and masks), eval mode."""
    import torch
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from make_fixtures import BertLayer
    torch.manual_seed(W7_SEED)
    gen = torch.Generator().manual_seed(W7_SEED)
    model = BertLayer(**W7_DIMS)
    for lin in (model.query, model.key, model.value, model.attn_out, model.inter, model.out):
        mask_linear(lin, W7[wid], W7_DENSITY, gen)
    return model.eval()


def build_w8():
    """The W8 block (seeded weights, masks and BN statistics), eval mode."""
    import torch
    from torch import nn
    torch.manual_seed(W8_SEED)
    gen = torch.Generator().manual_seed(W8_SEED)
    c = W8_CHANNELS

    class BasicBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)

        def forward(self, x):
            h = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(h)) + x)

    model = BasicBlock()
    for conv, bn in ((model.conv1, model.bn1), (model.conv2, model.bn2)):
        mask_linear(conv, "random", W8_DENSITY, gen)
        bn.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
        bn.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
    return model.eval()


def w8_inputs(batch, gen):
    import torch
    return (torch.randn(batch, W8_CHANNELS, W8_SIZE, W8_SIZE, generator=gen),)


def export_w8(out_dir, maskjit):
    """Writes DIR/W8.safetensors, checked against PyTorch by the exporter."""
    import torch
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import export_torch
    os.makedirs(out_dir, exist_ok=True)
    gen = torch.Generator().manual_seed(W8_SEED + 1)
    path = os.path.join(out_dir, "W8.safetensors")
    export_torch.export(build_w8(), w8_inputs(W8_BATCHES[-1], gen), path, batches=W8_BATCHES[:-1],
                        seed=W8_SEED, generator="tools/bench_torch.py", maskjit=maskjit,
                        log=lambda *a: print(*a, file=sys.stderr))
    print(path)
    return 0


def export_w7(out_dir, maskjit):
    """Writes DIR/W7.safetensors and DIR/W7b4.safetensors (maskjit trace files,
    checked against PyTorch at batches 1 and 8 by the exporter)."""
    import torch
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import export_torch
    os.makedirs(out_dir, exist_ok=True)
    for wid in W7:
        model = build_w7(wid)
        gen = torch.Generator().manual_seed(W7_SEED + 1)
        path = os.path.join(out_dir, wid + ".safetensors")
        export_torch.export(model, w7_inputs(W7_BATCHES[-1], gen), path,
                            batches=W7_BATCHES[:-1], seed=W7_SEED, generator="tools/bench_torch.py",
                            maskjit=maskjit, log=lambda *a: print(*a, file=sys.stderr))
        print(path)
    return 0


CLOCK = time.perf_counter  # --clock cpu: time.process_time, as maskjit-bench --clock cpu


def time_calls(fn, xs, min_ms):
    """Calls per round sized so a round lasts about min_ms; returns ns per call."""
    fn(*xs)
    n, t0 = 1, CLOCK()
    fn(*xs)
    one = max(CLOCK() - t0, 1e-7)
    n = max(1, int(min_ms * 1e-3 / one))
    t0 = CLOCK()
    for _ in range(n):
        fn(*xs)
    return (CLOCK() - t0) / n * 1e9


def run(args):
    import torch
    torch.set_num_threads(1)
    out = {"peer": "pytorch", "torch": torch.__version__, "threads": 1, "workloads": []}
    for wid in args.workloads.split(","):
        if wid not in WORKLOADS and wid not in W7 and wid != "W8":
            print(f"bench_torch.py: unknown workload '{wid}' (known: "
                  f"{', '.join(list(WORKLOADS) + list(W7) + ['W8'])})", file=sys.stderr)
            return 2
        if wid == "W8":
            model = build_w8()
            gen = torch.Generator().manual_seed(W8_SEED + 2)
            cases = [(w8_inputs(b, gen), b) for b in W8_BATCHES]
        elif wid in W7:
            model = build_w7(wid)
            gen = torch.Generator().manual_seed(W7_SEED + 2)
            cases = [(w7_inputs(b, gen), b) for b in W7_BATCHES]
        else:
            model, x, batch = build(wid)
            cases = [((x,), batch)]
        with torch.no_grad():
            frozen = torch.jit.freeze(torch.jit.trace(model, cases[0][0]))
            for xs, batch in cases:
                ref = model(*xs)
                got = frozen(*xs)
                if not torch.allclose(ref, got, rtol=1e-4, atol=1e-5 if wid in WORKLOADS else 1e-4):
                    print(f"bench_torch.py: {wid}: frozen differs from eager at batch {batch}",
                          file=sys.stderr)
                    return 1
                res = []
                for name, fn in (("torch-eager", model), ("torch-frozen", frozen)):
                    times = [time_calls(fn, xs, args.min_ms) for _ in range(args.reps)]
                    res.append({"variant": name, "median_ns": statistics.median(times)})
                out["workloads"].append({"id": wid, "batch": batch, "results": res})
                print(f"[{wid}] batch {batch} pytorch: " + ", ".join(
                    f"{r['variant']} {r['median_ns'] / 1e3:.1f} us" for r in res), file=sys.stderr)
    if args.json:
        json.dump(out, sys.stdout)
        print()
    else:
        for w in out["workloads"]:
            for r in w["results"]:
                print(f"{w['id']:4} batch {w['batch']:4}  {r['variant']:14} {r['median_ns']:12.0f} ns")
    return 0


PEERS = {"openblas", "libxsmm", "onednn", "xnnpack", "torch-eager", "torch-frozen"}


def merge(path):
    """Medians over interleaved rounds of maskjit-bench --json and this script --json
    (one JSON document a line), and each variant's ratio to the best peer."""
    times = {}   # (wid, batch, threads) -> variant -> [ns]
    order = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            doc = json.loads(line)
            for w in doc["workloads"]:
                key = (w["id"], w["batch"], w.get("threads", 1))
                if key not in times:
                    times[key] = {}
                    order.append(key)
                for r in w["results"]:
                    if r.get("median_ns") is not None:
                        times[key].setdefault(r["variant"], []).append(r["median_ns"])
    print("median ns per call over interleaved rounds; ratio = best peer / variant (> 1: faster)")
    for key in order:
        med = {v: statistics.median(ts) for v, ts in times[key].items()}
        peers = {v: t for v, t in med.items() if v in PEERS}
        best = min(peers, key=peers.get) if peers else None
        print(f"\n{key[0]} batch {key[1]} threads {key[2]}"
              + (f"  (best peer: {best}, {peers[best]:.0f} ns)" if best else ""))
        for v, t in med.items():
            ratio = f"{peers[best] / t:6.2f}x" if best else "     -"
            print(f"  {v:16} {t:14.0f} ns  {ratio}  ({len(times[key][v])} rounds)")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", default="W1,W2,W3,W4,W5")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--min-ms", type=float, default=25.0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall time, or process CPU time (robust on a loaded machine, one thread)")
    ap.add_argument("--merge", metavar="ROUNDS.jsonl")
    ap.add_argument("--export-w7", metavar="DIR", help="write W7's maskjit trace files into DIR")
    ap.add_argument("--export-w8", metavar="DIR", help="write W8's maskjit trace file into DIR")
    ap.add_argument("--maskjit", metavar="PATH", default="auto",
                    help="with --export-w7/--export-w8: the maskjit binary that checks the files")
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge)
    if args.export_w7:
        return export_w7(args.export_w7, args.maskjit)
    if args.export_w8:
        return export_w8(args.export_w8, args.maskjit)
    if args.reps < 1 or not args.min_ms > 0:
        ap.error("--reps wants >= 1 and --min-ms > 0")
    if args.clock == "cpu":
        global CLOCK
        CLOCK = time.process_time
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
