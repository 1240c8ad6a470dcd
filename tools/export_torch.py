#!/usr/bin/python3
"""Export a pruned PyTorch model to a safetensors file that maskjit loads.

Library use (any nn.Module built from nn.Linear / nn.Sequential / activations,
with FakeSparsity or FakeStructuredSparsity parametrizations on Linear weights):

    import export_torch
    export_torch.export(model, example_input, "model.safetensors", spec="mlp:16,32,8:act=relu")

The file holds, under PyTorch's own key names:
  * the model's state_dict ("0.parametrizations.weight.original", "0.bias", ...),
  * every mask under "<mod>.parametrizations.weight.0.mask" (FakeSparsity hides its
    mask from state_dict; maskjit wants it). A FakeStructuredSparsity row mask is
    stored as its [out] vector under the same key and listed in the metadata
    "maskjit.structured" (comma-separated keys),
  * "input" (the example input) and "expected" (the model's output on it,
    computed under torch.no_grad()), all float32,
  * __metadata__ {"maskjit.model": spec, "maskjit.generator": ..., "torch.version": ...}.

maskjit rebuilds the architecture from the spec string (include/maskjit/models.h):
"mut", "mut-nobias", "mlp:IN,H1,...,OUT[:act=relu|gelu|gelu_tanh|sigmoid|tanh|none][:bias=0|1]".
When spec is None and the model is an nn.Sequential of Linear layers with one
activation between them, the spec is inferred.

Command line (builds the model a spec names, prunes it, exports it):

    /usr/bin/python3 tools/export_torch.py --spec mlp:16,32,8:act=relu --density 0.5 \
        --batch 4 --seed 0 -o out.safetensors
    # --sparsifier: masks from torch's WeightNormSparsifier, sparse_block_shape (1, 4)
    # --structured: FakeStructuredSparsity row masks instead of unstructured masks
"""
import argparse
import os
import sys

import torch
from torch import nn
from torch.nn.utils import parametrize

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402

try:
    from torch.ao.pruning.sparsifier import utils as sparsity_utils
except ImportError:  # torch < 2.0 names the package torch.ao.sparsity
    from torch.ao.sparsity.sparsifier import utils as sparsity_utils

FakeSparsity = sparsity_utils.FakeSparsity

try:
    from torch.ao.pruning._experimental.pruner import FakeStructuredSparsity
except ImportError:
    class FakeStructuredSparsity(nn.Module):
        """Row mask parametrization, as in later torch.ao.pruning (absent from 1.13):
        forward(x) = mask.reshape(-1, 1, ...) * x, mask hidden from state_dict."""

        def __init__(self, mask):
            super().__init__()
            self.register_buffer("mask", mask)

        def forward(self, x):
            assert isinstance(self.mask, torch.Tensor)
            assert self.mask.shape[0] == x.shape[0]
            shape = [1] * len(x.shape)
            shape[0] = -1
            return self.mask.reshape(shape) * x

        def state_dict(self, *args, **kwargs):
            return {}

MASK_SUFFIX = ".parametrizations.weight.0.mask"

ACTIVATIONS = {
    "relu": lambda: nn.ReLU(),
    "gelu": lambda: nn.GELU(),
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "sigmoid": lambda: nn.Sigmoid(),
    "tanh": lambda: nn.Tanh(),
    "none": lambda: nn.Identity(),
}


class ModelUnderTest(nn.Module):
    """The seed's ModelUnderTest with the bias branch doing what it meant:
    weights 1, 2, 3 and biases 10, 20, 30."""

    def __init__(self, bias=True):
        super().__init__()
        self.linear = nn.Linear(16, 16, bias=bias)
        self.seq = nn.Sequential(nn.Linear(16, 16, bias=bias), nn.Linear(16, 16, bias=bias))
        with torch.no_grad():
            for lin, w, b in ((self.linear, 1.0, 10.0), (self.seq[0], 2.0, 20.0),
                              (self.seq[1], 3.0, 30.0)):
                lin.weight.fill_(w)
                if bias:
                    lin.bias.fill_(b)

    def forward(self, x):
        x = self.linear(x)
        x = self.seq(x)
        return x


def parse_mlp_spec(spec):
    """'mlp:16,32,8:act=relu:bias=1' -> (widths, act, bias)."""
    parts = spec.split(":")
    if parts[0] != "mlp" or len(parts) < 2:
        raise ValueError(f"not an mlp spec: {spec!r}")
    widths = [int(w) for w in parts[1].split(",")]
    if len(widths) < 2 or min(widths) < 1:
        raise ValueError(f"mlp spec {spec!r} needs at least two positive widths")
    act, bias = "relu", True
    for opt in parts[2:]:
        key, _, value = opt.partition("=")
        if key == "act" and value in ACTIVATIONS:
            act = value
        elif key == "bias" and value in ("0", "1"):
            bias = value == "1"
        else:
            raise ValueError(f"mlp spec {spec!r}: bad option {opt!r}")
    return widths, act, bias


def build_model(spec):
    """The torch model a maskjit spec names (random default init for mlp)."""
    if spec == "mut":
        return ModelUnderTest(bias=True)
    if spec == "mut-nobias":
        return ModelUnderTest(bias=False)
    widths, act, bias = parse_mlp_spec(spec)
    layers = []
    for i in range(len(widths) - 1):
        if i > 0:
            layers.append(ACTIVATIONS[act]())
        layers.append(nn.Linear(widths[i], widths[i + 1], bias=bias))
    return nn.Sequential(*layers)


def infer_spec(model):
    """'mlp:...' for an nn.Sequential of Linear layers with one activation between them."""
    if not isinstance(model, nn.Sequential):
        return None
    mods = list(model)
    linears = mods[0::2]
    acts = mods[1::2]
    if not mods or len(mods) % 2 != 1 or not all(isinstance(m, nn.Linear) for m in linears):
        return None
    names = []
    for a in acts:
        if isinstance(a, nn.ReLU):
            names.append("relu")
        elif isinstance(a, nn.GELU):
            names.append("gelu_tanh" if a.approximate == "tanh" else "gelu")
        elif isinstance(a, nn.Sigmoid):
            names.append("sigmoid")
        elif isinstance(a, nn.Tanh):
            names.append("tanh")
        elif isinstance(a, nn.Identity):
            names.append("none")
        else:
            return None
    if len(set(names)) > 1:
        return None
    biases = {lin.bias is not None for lin in linears}
    if len(biases) != 1:
        return None
    widths = [linears[0].in_features] + [lin.out_features for lin in linears]
    for a, b in zip(linears, linears[1:]):
        if a.out_features != b.in_features:
            return None
    spec = "mlp:" + ",".join(str(w) for w in widths)
    spec += ":act=" + (names[0] if names else "relu")
    spec += ":bias=" + ("1" if biases.pop() else "0")
    return spec


def collect_masks(model):
    """{mask key: (mask tensor, structured?)} for every parametrized weight.
    Raises ValueError for a parametrization maskjit cannot rebuild."""
    masks = {}
    for path, mod in model.named_modules():
        if not parametrize.is_parametrized(mod):
            continue
        for pname, plist in mod.parametrizations.items():
            where = f"{path or '<root>'}.{pname}"
            if pname != "weight":
                raise ValueError(f"{where}: only 'weight' parametrizations can be exported")
            if not isinstance(mod, nn.Linear):
                raise ValueError(f"{where}: parametrized {type(mod).__name__}; only Linear is supported")
            if len(plist) != 1:
                raise ValueError(f"{where}: {len(plist)} chained parametrizations; export supports one mask")
            p = plist[0]
            kind = type(p).__name__
            weight_shape = tuple(plist.original.shape)
            if kind == "FakeSparsity":
                if tuple(p.mask.shape) != weight_shape:
                    raise ValueError(f"{where}: mask shape {tuple(p.mask.shape)} != weight {weight_shape}")
                structured = False
            elif kind == "FakeStructuredSparsity":
                if tuple(p.mask.shape) != (weight_shape[0],):
                    raise ValueError(f"{where}: row mask shape {tuple(p.mask.shape)} != ({weight_shape[0]},)")
                structured = True
            else:
                raise ValueError(f"{where}: parametrization {kind} is not FakeSparsity or FakeStructuredSparsity")
            key = (path + "." if path else "") + "parametrizations.weight.0.mask"
            masks[key] = (p.mask.detach().to(torch.float32).contiguous(), structured)
    return masks


def export(model, example_input, path, spec=None, generator="tools/export_torch.py",
           extra_metadata=None):
    """Writes model + masks + input + expected output to `path` (safetensors).
    Returns the dict of tensors written."""
    if spec is None:
        spec = infer_spec(model)
        if spec is None:
            raise ValueError("cannot infer a maskjit spec for this model: pass spec=")
    masks = collect_masks(model)
    tensors = {}
    for key, value in model.state_dict().items():
        if key.endswith(MASK_SUFFIX):
            continue  # a mask leaking into state_dict: written below, once
        if not value.is_floating_point():
            raise ValueError(f"state_dict entry {key} has dtype {value.dtype}; maskjit reads float tensors")
        tensors[key] = value.detach().to(torch.float32).contiguous()
    for key, (mask, _) in masks.items():
        tensors[key] = mask
    if "input" in tensors or "expected" in tensors:
        raise ValueError("the model has a tensor named 'input' or 'expected'")
    x = example_input.detach().to(torch.float32).contiguous()
    was_training = model.training
    model.eval()
    with torch.no_grad():
        y = model(x)
    model.train(was_training)
    tensors["input"] = x
    tensors["expected"] = y.detach().to(torch.float32).contiguous()
    metadata = {"maskjit.model": spec, "maskjit.generator": generator,
                "torch.version": torch.__version__}
    structured = [k for k, (_, s) in masks.items() if s]
    if structured:
        metadata["maskjit.structured"] = ",".join(structured)
    if extra_metadata:
        metadata.update(extra_metadata)
    safetensors_io.save(path, tensors, metadata)
    return tensors


def linear_modules(model):
    return [(path, m) for path, m in model.named_modules() if isinstance(m, nn.Linear)]


def random_mask(shape, density, gen):
    """Exactly round(density * numel) ones at random places."""
    n = 1
    for s in shape:
        n *= s
    keep = int(round(density * n))
    flat = torch.zeros(n)
    flat[torch.randperm(n, generator=gen)[:keep]] = 1.0
    return flat.reshape(shape)


def prune_random(model, density, gen, structured=False):
    """FakeSparsity (or FakeStructuredSparsity row) masks of the given density on every Linear."""
    for _, lin in linear_modules(model):
        if structured:
            p = FakeStructuredSparsity(random_mask((lin.out_features,), density, gen))
        else:
            p = FakeSparsity(random_mask(tuple(lin.weight.shape), density, gen))
        parametrize.register_parametrization(lin, "weight", p)


def prune_weight_norm(model, density):
    """torch's WeightNormSparsifier with (1, 4) blocks: attaches FakeSparsity masks."""
    try:
        from torch.ao.pruning import WeightNormSparsifier
    except ImportError:
        from torch.ao.sparsity import WeightNormSparsifier
    sparsifier = WeightNormSparsifier(sparsity_level=1.0 - density, sparse_block_shape=(1, 4),
                                      zeros_per_block=4)
    config = [{"tensor_fqn": (path + "." if path else "") + "weight"}
              for path, _ in linear_modules(model)]
    sparsifier.prepare(model, config)
    sparsifier.step()
    return sparsifier


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", required=True, help="mut | mut-nobias | mlp:IN,...,OUT[:act=..][:bias=0|1]")
    ap.add_argument("--density", type=float, default=0.5, help="fraction of weights kept (0..1)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sparsifier", action="store_true", help="WeightNormSparsifier masks, (1,4) blocks")
    ap.add_argument("--structured", action="store_true", help="FakeStructuredSparsity row masks")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args(argv)
    if not 0.0 <= args.density <= 1.0:
        ap.error(f"--density {args.density} is outside [0, 1]")
    if args.batch < 1:
        ap.error(f"--batch {args.batch} must be >= 1")
    if args.sparsifier and args.structured:
        ap.error("--sparsifier and --structured exclude each other")
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    try:
        model = build_model(args.spec)
    except ValueError as e:
        ap.error(str(e))
    if args.sparsifier:
        prune_weight_norm(model, args.density)
    else:
        prune_random(model, args.density, gen, structured=args.structured)
    in_features = linear_modules(model)[0][1].in_features
    x = torch.randn(args.batch, in_features, generator=gen)
    tensors = export(model, x, args.output, spec=args.spec)
    print(f"wrote {args.output}: {len(tensors)} tensors, spec {args.spec}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
