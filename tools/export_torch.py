#!/usr/bin/python3
"""Export a PyTorch model to a file that maskjit loads, checked at export time.

Any nn.Module (library use):

    import export_torch
    export_torch.export(model, example_inputs, "model.safetensors")

records the model with torch.jit.trace and writes a maskjit trace file (the
format of `maskjit trace -o`: the IR text in the metadata "maskjit.ir",
tensors under PyTorch's state-dict names). It holds:
  * every parameter and buffer under its state_dict key; masks stay separate
    params multiplied in by the IR: FakeSparsity / FakeStructuredSparsity
    parametrizations as `mul(<mod>.parametrizations.weight.0.mask,
    <mod>.parametrizations.weight.original)`, torch.nn.utils.prune as
    `mul(<mod>.weight_mask, <mod>.weight_orig)`; so live mode sees mask edits
    and frozen mode specialises on them,
  * "input" and PyTorch's "expected" output (several inputs/outputs: "input.0",
    "expected.0", ...), and the same for random inputs at two other batch
    sizes under "input.batchN" / "expected.batchN" (`batches=(1, 5)`),
  * metadata: "maskjit.generator", "torch.version", "maskjit.batches" and
    "maskjit.origins" (JSON: IR value "%5" -> module path "encoder.attn.query"),
  * with intermediates=True (--intermediates): PyTorch's value of every op
    node for each stored input, "maskjit.node.<id>" and
    "maskjit.node.<id>.batchN", and "maskjit.sources" (JSON: "%5" ->
    "model.py:41"), so that `maskjit check` names the first node that
    diverges (see export()).
The batch (dim 0 of every input) becomes B; sizes read from x.shape stay
B-relative. nn.MultiheadAttention (and nn.TransformerEncoderLayer /
nn.TransformerEncoder on it) is traced with grad on, off PyTorch's fused
inference kernels, in a form that keeps the heads as their own dim
(_mha_batch_first); prune'd weights are traced as mask * orig wherever
they are read (_pruned_as_properties). An op maskjit lacks, or a graph that cannot work at any batch,
is refused with the reason, the op, the module path and the source line.

With spec= (e.g. "mlp:16,32,8:act=relu"), the file is instead a spec file
that maskjit rebuilds from the spec string (include/maskjit/models.h), with
the state_dict, the masks under "<mod>.parametrizations.weight.0.mask" (a
FakeStructuredSparsity row mask as its [out] vector, listed in
"maskjit.structured"; a prune'd weight as weight_orig -> "...original"),
"input", "expected" and metadata "maskjit.model".

Both kinds are read back and compared with the model (at the example's batch
and at the other batch sizes) before they replace `path`, then run through
`maskjit check` when the binary is found (build/maskjit, $MASKJIT or PATH).

Command line:

    /usr/bin/python3 tools/export_torch.py --module model.py:make_model --inputs 4x16 -o out.safetensors
    # --intermediates: store every node's PyTorch value, for `maskjit check` to say where
    /usr/bin/python3 tools/export_torch.py --spec mlp:16,32,8:act=relu --density 0.5 \
        --batch 4 --seed 0 -o out.safetensors
    # --sparsifier: masks from torch's WeightNormSparsifier, sparse_block_shape (1, 4)
    # --structured: FakeStructuredSparsity row masks instead of unstructured masks
"""
import argparse
import contextlib
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune

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
    "silu": lambda: nn.SiLU(),
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


def _spec_tensors(model, example_input, spec, generator, extra_metadata):
    """The tensors and metadata of a spec export: model + masks + input +
    expected output. Prune'd layers are stored as maskjit's parametrized keys."""
    masks = collect_masks(model)
    masks.update(_prune_masks(model))
    tensors = {}
    renamed = _prune_renames(model)
    for key, value in model.state_dict().items():
        if key.endswith(MASK_SUFFIX) or renamed.get(key) == "":
            continue  # a mask leaking into state_dict, or a prune mask: written below, once
        key = renamed.get(key, key)
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
    return tensors, metadata



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


# ---------------------------------------------------------------------------
# Any nn.Module -> a maskjit trace file (the format of `maskjit trace -o`).
#
# Why torch.jit.trace and not torch.fx.symbolic_trace: fx runs forward on
# Proxy objects, so Hugging Face-style code that unpacks shapes
# (`b, s, _ = x.shape`), loops over them or calls non-torch helpers fails
# to trace; torch.jit.trace runs forward on real tensors and records every
# aten op with its module scope and source line, and records shape reads
# (aten::size) so sizes derived from the batch stay symbolic. What it cannot
# see (Python control flow on values) is caught by retracing at other batch
# sizes (check_inputs) and by comparing the written file with the model there.
# ---------------------------------------------------------------------------


class ExportError(ValueError):
    """The model cannot be exported to a checked maskjit file; the message says why."""


_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
_FLOAT32 = 6  # torch's ScalarType code for float32 in traced graphs
MJ_RTOL, MJ_ATOL = 1.3e-6, 1e-5  # torch.testing.assert_close's float32 tolerances
MAX_RANK = 4
B = "B"  # the symbolic batch dim in shapes


class _T:
    """A tensor value of the IR being built: its id and shape (ints and B).
    logical: a view of rank > 4 that PyTorch holds for a moment (ShuffleNet's
    channel shuffle: view to [B, g, C/g, H, W], transpose(1, 2), view back);
    the IR value merges its dims from 3 on, and only reshapes, transposes
    and permutes of the first three dims and identities may read it."""

    def __init__(self, vid, shape, logical=None):
        self.id, self.shape = vid, tuple(shape)
        self.logical = tuple(logical) if logical else None


class _Sym:
    """An int the trace read from a shape: coef * B (or a plain int: use int)."""

    def __init__(self, coef):
        self.coef = coef

    def __repr__(self):
        return "B" if self.coef == 1 else f"{self.coef}*B"


def _sizes(shape):
    """A value's shape as the trace reads it from x.shape (B as _Sym(1)), for _reshape_to."""
    return [_Sym(1) if d == B else d for d in shape]


class _Mod:
    """A module (or a parametrization container) reached by prim::GetAttr."""

    def __init__(self, path, obj):
        self.path, self.obj = path, obj


def _shape_str(shape):
    return "f32[" + ",".join(str(d) for d in shape) + "]"


def _ir_name(name):
    if not name or len(name) > 1024 or any(not 32 <= ord(c) < 127 for c in name):
        raise ExportError(f"tensor name {name!r} is not 1-1024 printable ASCII characters")
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _broadcast(a, b, what, batch_dims=False):
    """NumPy broadcast of two IR shapes, as docs/IR.md defines it with B (B
    only with B or 1); batch_dims: the shapes are a matmul's leading dims."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        elif batch_dims:
            raise ExportError(f"{what}: cannot broadcast batch dims {_shape_str(a)} and {_shape_str(b)}")
        else:
            raise ExportError(f"{what}: cannot broadcast {_shape_str(a)} with {_shape_str(b)}")
    return tuple(reversed(out))


class _Builder:
    """Emits maskjit IR text (docs/IR.md) and the tensors the file needs."""

    def __init__(self, model, state, origin_of):
        self.model = model
        self.state = state          # key -> tensor: every param/buffer to store
        self.lines = []
        self.params = {}            # key -> _T
        self.first_input = None     # _T: where a value expanded to the batch gets B
        self.consts = 0
        self.tensors = {}           # name -> float32 tensor for params and large consts
        self.origins = {}           # "%id" -> module path
        self.sources = {}           # "%id" -> "model.py:52", the model's line that made it
        self.origin_of = origin_of  # (operand ids, on_input) -> module path of the node
        self.node = None            # the torch node being emitted (for messages)
        self.on_input = set()       # ids of values that depend on an input

    def _add(self, text, shape, data=None, operands=(), origin=None):
        vid = len(self.lines)
        for d in shape:
            if d != B and d < 0:
                raise ExportError(f"{self.where()}: negative size in {_shape_str(shape)}")
        if not 1 <= len(shape) <= MAX_RANK:
            raise ExportError(f"{self.where()}: a value of rank {len(shape)}; maskjit tensors have "
                              f"rank 1-{MAX_RANK}")
        self.lines.append(f"%{vid} = {text} : {_shape_str(shape)}" +
                          (f" = [{data}]" if data is not None else ""))
        if text.startswith("input ") or any(o.id in self.on_input for o in operands):
            self.on_input.add(vid)
        if origin is None:
            origin = self.origin_of([o.id for o in operands], vid in self.on_input)
        if origin is not None:
            self.origins[f"%{vid}"] = origin
        if self.node is not None and not text.startswith(("input ", "param ", "const ")):
            src = _source_line(self.node)
            if src:
                self.sources[f"%{vid}"] = src
        return _T(vid, shape)

    def where(self):
        return _describe(self.model, self.node) if self.node is not None else "export"

    def input(self, name, shape):
        t = self._add(f"input {_ir_name(name)}", shape)
        self.first_input = self.first_input or t
        return t

    def param(self, key, tensor):
        if key not in self.params:
            if tensor.dtype == torch.bool and key.endswith((MASK_SUFFIX, "_mask")):
                # an N:M sparsifier's mask (WeightNormSparsifier with fewer zeros
                # per block than the block holds) is bool; mask * weight promotes
                # it to 0.0/1.0, so the float mask gives the same product
                tensor = tensor.to(torch.float32)
            t = _as_f32(tensor, key)
            shape = tuple(t.shape) if t.dim() > 0 else (1,)
            owner = key.rsplit(".", 1)[0] if "." in key else ""
            self.params[key] = self._add(f"param {_ir_name(key)}", shape, origin=owner)
            self.tensors[key] = t.reshape(shape)
        return self.params[key]

    def const(self, tensor):
        """A tensor the trace captured (or a Python scalar) as an IR const."""
        t = tensor.detach().to(torch.float32).contiguous()
        shape = tuple(t.shape) if t.dim() > 0 else (1,)
        t = t.reshape(shape)
        self.consts += 1
        name = f"maskjit.const.{self.consts}"
        if name in self.state:
            raise ExportError(f"the model has a tensor named {name!r}, which the exporter uses")
        if t.numel() <= 64:  # small consts inline, as maskjit's printer does
            data = ", ".join(float(v).hex() for v in t.flatten().tolist())
            return self._add(f"const {_ir_name(name)}", shape, data)
        self.tensors[name] = t
        return self._add(f"const {_ir_name(name)}", shape)

    def op(self, name, operands, shape, act=None, attrs=None):
        """attrs: (name, value) pairs written as {name=value, ...} (docs/IR.md)."""
        text = name + " " + ", ".join(f"%{o.id}" for o in operands)
        if act:
            text += " {act=" + act + "}"
        if attrs:
            text += " {" + ", ".join(f"{k}={_attr_text(v)}" for k, v in attrs) + "}"
        return self._add(text, shape, operands=operands)

    def text(self, outputs):
        return "maskjit-ir 1\n" + "".join(l + "\n" for l in self.lines) + \
            "return " + ", ".join(f"%{o.id}" for o in outputs) + "\n"


def _as_f32(t, what):
    if not t.is_floating_point():
        raise ExportError(f"{what} has dtype {t.dtype}; maskjit computes in float32")
    return t.detach().to(torch.float32).contiguous()


def _module_path(node):
    """'encoder.attn.query' from the node's scope '__module.encoder/__module.encoder.attn.query'."""
    scope = node.scopeName()
    if not scope:
        return ""
    last = scope.split("/")[-1]
    return last[len("__module."):] if last.startswith("__module.") else last


def _source_line(node):
    """'model.py:41': the first frame of the node's stack outside PyTorch itself."""
    try:
        text = node.sourceRange()
    except RuntimeError:
        return None
    frames = []
    for f in str(text).splitlines():
        m = re.match(r"(.*)\((\d+)\): ", f)
        if m and os.path.abspath(m.group(1)) == os.path.join(_TORCH_DIR, "jit", "_trace.py"):
            break  # what follows called torch.jit.trace: not the model's code
        if m:
            frames.append(m)
    for m in frames:
        where = os.path.abspath(m.group(1))
        if not where.startswith(_TORCH_DIR + os.sep) and where != os.path.abspath(__file__):
            return f"{os.path.basename(m.group(1))}:{m.group(2)}"
    # No frame in the user's code (an nn.Sequential calls the layer): PyTorch's own.
    return f"{os.path.basename(frames[0].group(1))}:{frames[0].group(2)}" if frames else None


def _describe(model, node):
    """'aten::leaky_relu at encoder.act (LeakyReLU), model.py:41'."""
    path = _module_path(node)
    try:
        cls = type(model.get_submodule(path)).__name__ if path else type(model).__name__
    except AttributeError:
        cls = "?"
    text = f"{node.kind()} at {path or '<root>'} ({cls})"
    src = _source_line(node)
    return text + (f", {src}" if src else "")


def _non_float_attr(model, node, path, t):
    """The refusal of an integer or bool parameter or buffer, naming the op
    that reads it (the GetAttr node itself says nothing) and what to do."""
    users = [u.user for u in node.output().uses() if u.user.kind() != "prim::GetAttr"]
    text = f"{path} has dtype {t.dtype}; maskjit computes in float32"
    if users:
        text += f" (used by {_describe(model, users[0])})"
        kind = users[0].kind()
        if kind == "aten::embedding":
            return text + ": export the model from the embedding's output on"
    if t.dtype == torch.bool:
        return text + ": write the mask as 0.0/1.0 floats to multiply by, or as 0/-inf to add"
    return text


# ---- the op table: aten op -> emitter ------------------------------------
# An emitter gets (ctx, node, ins) with ins the node's inputs resolved to _T
# (tensor), _Sym/int/float/bool/None/list (trace-time values) or _Mod, and
# returns the node's outputs as a list. Adding an op is one entry here.

def _tensor(cx, v, what="operand"):
    if isinstance(v, _T):
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        if isinstance(v, _Sym):
            raise ExportError(f"{cx.b.where()}: uses the batch size as a tensor value; maskjit's "
                              "IR has no such op")
        raise ExportError(f"{cx.b.where()}: {what} is {v!r}, not a tensor")
    return cx.b.const(torch.tensor(float(v)))


def _const_arg(cx, v, what, allowed=None):
    if isinstance(v, (_T, _Sym, _Mod)):
        raise ExportError(f"{cx.b.where()}: {what} must be a constant of the trace")
    if allowed is not None and v not in allowed:
        raise ExportError(f"{cx.b.where()}: {what} = {v!r} (maskjit supports {allowed})")
    return v


def _identity(cx, node, ins):
    return [ins[0]]


def _to(cx, node, ins):
    # aten::to(self, dtype, ...), to(self, device, dtype, ...), to(self, other, ...)
    for v in ins[1:3]:
        if isinstance(v, int) and not isinstance(v, bool) and v != _FLOAT32:
            raise ExportError(f"{cx.b.where()}: converts to dtype code {v}; maskjit computes "
                              "in float32 only")
        if isinstance(v, _T):
            break
    return [_tensor(cx, ins[0])]


def _dropout(cx, node, ins):
    if _const_arg(cx, ins[2], "train") is not False:
        raise ExportError(f"{cx.b.where()}: dropout in training mode (call model.eval())")
    return [ins[0]]


def _weight_bias(cx, x, w, bias):
    """The operands x, w and, if given, the bias ([out], out = w.shape[0])."""
    ops = [x, w]
    if bias is not None:
        b = _tensor(cx, bias, "bias")
        if b.shape != (w.shape[0],):
            raise ExportError(f"{cx.b.where()}: bias {_shape_str(b.shape)} is not [{w.shape[0]}]")
        ops.append(b)
    return ops


def _linear(cx, node, ins):
    x, w = _tensor(cx, ins[0]), _tensor(cx, ins[1], "weight")
    bias = ins[2] if len(ins) > 2 else None
    if len(w.shape) != 2 or B in w.shape:
        raise ExportError(f"{cx.b.where()}: weight {_shape_str(w.shape)} is not [out, in]")
    if x.shape[-1] != w.shape[1]:
        raise ExportError(f"{cx.b.where()}: input {_shape_str(x.shape)} vs weight {_shape_str(w.shape)}")
    ops = _weight_bias(cx, x, w, bias)
    return [cx.b.op("linear", ops, x.shape[:-1] + (w.shape[0],))]


def _matmul(cx, node, ins):
    a, b = _tensor(cx, ins[0]), _tensor(cx, ins[1])
    if not (2 <= len(a.shape) <= MAX_RANK and 2 <= len(b.shape) <= MAX_RANK):
        raise ExportError(f"unsupported: {cx.b.where()}: matmul of {_shape_str(a.shape)} and "
                          f"{_shape_str(b.shape)}; maskjit's matmul takes ranks 2-4")
    if a.shape[-1] != b.shape[-2] or a.shape[-1] == B or b.shape[-1] == B:
        raise ExportError(f"{cx.b.where()}: matmul {_shape_str(a.shape)} x {_shape_str(b.shape)}")
    lead = _broadcast(a.shape[:-2], b.shape[:-2], cx.b.where(), batch_dims=True)
    return [cx.b.op("matmul", [a, b], lead + (a.shape[-2], b.shape[-1]))]


def _transpose_dims(cx, x, d0, d1):
    r = len(x.logical or x.shape)
    d0, d1 = sorted((d0 % r, d1 % r))
    if d0 == d1:
        return [x]
    if x.logical:
        if d1 >= MAX_RANK - 1:
            raise _wide_error(cx, x)
        logical = list(x.logical)
        logical[d0], logical[d1] = logical[d1], logical[d0]
        y = _transpose_dims(cx, _T(x.id, x.shape), d0, d1)[0]
        return [_T(y.id, y.shape, logical)]
    shape = list(x.shape)
    shape[d0], shape[d1] = shape[d1], shape[d0]
    return [cx.b.op("transpose", [x], tuple(shape), attrs=[("dim0", d0), ("dim1", d1)])]


def _t(cx, node, ins):
    x = _tensor(cx, ins[0])
    return [x] if len(x.shape) < 2 else _transpose_dims(cx, x, 0, 1)


def _transpose(cx, node, ins):
    x = _tensor(cx, ins[0])
    return _transpose_dims(cx, x, _const_arg(cx, ins[1], "dim"), _const_arg(cx, ins[2], "dim"))


def _permute(cx, node, ins):
    x = _tensor(cx, ins[0])
    r = len(x.logical or x.shape)
    dims = [_const_arg(cx, d, "dim") % r for d in ins[1]]
    if dims == list(range(r)):
        return [x]
    if x.logical:
        if dims[MAX_RANK - 1:] != list(range(MAX_RANK - 1, r)):
            raise _wide_error(cx, x)
        y = _permute(cx, node, [_T(x.id, x.shape), dims[:MAX_RANK - 1] + [MAX_RANK - 1]])[0]
        return [_T(y.id, y.shape, tuple(x.logical[d] for d in dims))]
    shape = tuple(x.shape[d] for d in dims)
    return [cx.b.op("permute", [x], shape, attrs=[("perm", dims)])]


def _slices(cx, x, dim, sizes):
    """Consecutive slices of x along dim with the given sizes."""
    r = len(x.shape)
    d = dim % r
    if x.shape[d] == B:
        raise ExportError(f"unsupported: {cx.b.where()}: splits the batch dim; maskjit slices "
                          "concrete dims only")
    out, start = [], 0
    for n in sizes:
        shape = list(x.shape)
        shape[d] = n
        out.append(x if n == x.shape[d] else
                   cx.b.op("slice", [x], tuple(shape), attrs=[("dim", d), ("start", start),
                                                              ("end", start + n)]))
        start += n
    return out


def _split_size(cx, x, dim, verb):
    """The size of the dim that chunk or split cuts (never the batch)."""
    size = x.shape[dim % len(x.shape)]
    if size == B:
        raise ExportError(f"unsupported: {cx.b.where()}: {verb} the batch dim")
    return size


def _chunk(cx, node, ins):
    x = _tensor(cx, ins[0])
    n, dim = _const_arg(cx, ins[1], "chunks"), _const_arg(cx, ins[2], "dim")
    size = _split_size(cx, x, dim, "chunks")
    step = -(-size // n)
    sizes = [min(step, size - i) for i in range(0, size, step)]
    return [_slices(cx, x, dim, sizes)]


def _split(cx, node, ins):
    x = _tensor(cx, ins[0])
    arg, dim = _const_arg(cx, ins[1], "split_size"), _const_arg(cx, ins[2], "dim")
    size = _split_size(cx, x, dim, "splits")
    sizes = list(arg) if isinstance(arg, list) else [min(arg, size - i) for i in range(0, size, arg)]
    return [_slices(cx, x, dim, sizes)]


def _slice(cx, node, ins):
    # aten::slice(x, dim, start, end, step)
    x = _tensor(cx, ins[0])
    d = _const_arg(cx, ins[1], "dim") % len(x.shape)
    size = x.shape[d]
    step = _const_arg(cx, ins[4], "step")
    start, end = ins[2], ins[3]
    if size == B:
        if (start in (None, 0)) and (end is None or (isinstance(end, int) and end >= 2 ** 62)) and step == 1:
            return [x]
        raise ExportError(f"unsupported: {cx.b.where()}: slices the batch dim")
    start = 0 if start is None else _const_arg(cx, start, "start")
    end = size if end is None else min(_const_arg(cx, end, "end"), size)
    start, end = (v + size if v < 0 else v for v in (start, end))
    if step != 1:
        raise ExportError(f"unsupported: {cx.b.where()}: slice with step {step}")
    if start == 0 and end == size:
        return [x]
    shape = list(x.shape)
    shape[d] = end - start
    return [cx.b.op("slice", [x], tuple(shape), attrs=[("dim", d), ("start", start), ("end", end)])]


def _select(cx, node, ins):
    # aten::select(x, dim, index): x[:, i] is a one-wide slice without its dim
    x = _tensor(cx, ins[0])
    d = _const_arg(cx, ins[1], "dim") % len(x.shape)
    if x.shape[d] == B:
        raise ExportError(f"unsupported: {cx.b.where()}: indexes the batch dim")
    size, i = x.shape[d], _const_arg(cx, ins[2], "index")
    if not -size <= i < size:
        raise ExportError(f"{cx.b.where()}: index {i} out of range for dim {d} of size {size}")
    i %= size
    shape = list(x.shape)
    shape[d] = 1
    y = x if size == 1 else cx.b.op("slice", [x], tuple(shape),
                                    attrs=[("dim", d), ("start", i), ("end", i + 1)])
    del shape[d]
    return [_reshape_to(cx, y, _sizes(shape))]


def _squeeze(cx, node, ins):
    # aten::squeeze(x) or (x, dim): drops size-1 dims (never the batch)
    x = _tensor(cx, ins[0])
    if len(ins) > 1:
        d = _const_arg(cx, ins[1], "dim") % max(len(x.shape), 1)
        drop = [d] if x.shape[d] == 1 else []
    else:
        drop = [d for d, v in enumerate(x.shape) if v == 1]
    return [_reshape_to(cx, x, [v for d, v in enumerate(_sizes(x.shape)) if d not in drop])]


def _clamp(cx, node, ins):
    # aten::clamp(x, min, max): max(x, min) then min(., max), as PyTorch's kernel
    x = _tensor(cx, ins[0])
    for opname, bound in (("maximum", ins[1]), ("minimum", ins[2])):
        if bound is not None:
            c = _tensor(cx, float(_const_arg(cx, bound, opname)) if not isinstance(bound, _T) else bound)
            x = cx.b.op(opname, [x, c], _broadcast(x.shape, c.shape, cx.b.where()))
    return [x]


def _hard(kind):
    # PyTorch's kernels: hardsigmoid min(max(x + 3, 0), 6) / 6, hardswish
    # x * min(max(x + 3, 0), 6) / 6, each step rounded as here (bit for bit)
    def emit(cx, node, ins):
        x = _tensor(cx, ins[0])
        t = cx.b.op("add", [x, _tensor(cx, 3.0)], x.shape)
        t = cx.b.op("maximum", [t, _tensor(cx, 0.0)], x.shape)
        t = cx.b.op("minimum", [t, _tensor(cx, 6.0)], x.shape)
        if kind == "hardswish":
            t = cx.b.op("mul", [x, t], x.shape)
        return [cx.b.op("div", [t, _tensor(cx, 6.0)], x.shape)]
    return emit


def _cat(cx, node, ins):
    xs = [_tensor(cx, v) for v in ins[0]]
    d = _const_arg(cx, ins[1], "dim") % len(xs[0].shape)
    if len(xs) == 1:
        return [xs[0]]
    if any(x.shape[d] == B for x in xs):
        raise ExportError(f"unsupported: {cx.b.where()}: cat of {len(xs)} tensors along dim {d}")
    # an IR cat takes up to 8 operands: more (DenseNet's layers) nest, the
    # first 8 in one cat (which cse shares between layers that begin alike)
    while len(xs) > 1:
        part, xs = xs[:8], xs[8:]
        shape = list(part[0].shape)
        shape[d] = sum(x.shape[d] for x in part)
        xs.insert(0, cx.b.op("cat", part, tuple(shape), attrs=[("dim", d)]))
    return [xs[0]]


def _stack(cx, node, ins):
    # aten::stack(xs, dim): each x with a new size-1 dim, then cat
    xs = [_tensor(cx, v) for v in ins[0]]
    d = _const_arg(cx, ins[1], "dim") % (len(xs[0].shape) + 1)
    return _cat(cx, node, [[_unsqueeze(cx, node, [x, d])[0] for x in xs], d])


def _expand(cx, node, ins):
    # aten::expand(x, sizes, implicit): x * ones of the broadcast shape,
    # which is x exactly (x * 1.0f == x, NaN and -0 included)
    x = _tensor(cx, ins[0])
    sizes = _const_arg(cx, ins[1], "size") if not isinstance(ins[1], list) else ins[1]
    if not isinstance(sizes, list) or len(sizes) < len(x.shape):
        raise ExportError(f"{cx.b.where()}: expand to {sizes!r}")
    lead = len(sizes) - len(x.shape)
    if B not in x.shape and len(sizes) >= 1 and (isinstance(sizes[0], _Sym) and sizes[0].coef == 1) and \
            (lead == 1 or (lead == 0 and x.shape[0] == 1)):
        return [_expand_to_batch(cx, x, sizes[1:])]
    target, ones = [], []
    for i, s in enumerate(sizes):
        have = x.shape[i - lead] if i >= lead else None
        if isinstance(s, _Sym) or (s == -1 and have == B):
            if have != B:
                raise ExportError(f"unsupported: {cx.b.where()}: expands {_shape_str(x.shape)} to the batch "
                                  "dim; maskjit types get B from an input")
            target.append(B)
            ones.append(1)
        elif s == -1:
            target.append(have)
            ones.append(1)
        elif isinstance(s, int) and not isinstance(s, bool) and (have is None or have in (1, s)):
            target.append(s)
            ones.append(s if have != s else 1)
        else:
            raise ExportError(f"{cx.b.where()}: expand {_shape_str(x.shape)} to {sizes!r}")
    if tuple(target) == x.shape:
        return [x]
    one = cx.b.const(torch.ones(ones))
    return [cx.b.op("mul", [x, one], _broadcast(x.shape, one.shape, cx.b.where()))]


def _expand_to_batch(cx, x, rest):
    # a value without the batch (ViT's class token [1, 1, d]) repeated for
    # every item: the IR's expand over an input viewed as [B, 1, n] gives
    # [B, 1, numel] of 0.0f + x (x exactly, but -0 becomes +0), then the shape
    tail = x.shape[1:] if len(x.shape) == len(rest) + 1 else x.shape
    shape = []
    for s, have in zip(rest, tail):
        if s == -1 or s == have:
            shape.append(have)
        elif have == 1 and isinstance(s, int) and not isinstance(s, bool) and s >= 1:
            raise ExportError(f"unsupported: {cx.b.where()}: expands {_shape_str(x.shape)} to the batch "
                              "and along another dim at once")
        else:
            raise ExportError(f"{cx.b.where()}: expand {_shape_str(x.shape)} to {[B] + list(rest)!r}")
    inp = cx.b.first_input
    flat = _reshape_to(cx, x, [_numel(x.shape)])
    n_in = _numel([d for d in inp.shape if d != B])
    per_item = _reshape_to(cx, inp, [_Sym(1), 1, n_in])
    y = cx.b.op("expand", [per_item, flat], (B, 1, _numel(x.shape)))
    return _reshape_to(cx, y, [_Sym(1)] + shape)


def _abs(cx, node, ins):
    # |x| as maximum(x, -x): maskjit's maximum gives +0 for -0 and keeps NaN
    x = _tensor(cx, ins[0])
    return [cx.b.op("maximum", [x, cx.b.op("neg", [x], x.shape)], x.shape)]


def _binary(opname, reverse=False):
    def emit(cx, node, ins):
        a, b = ins[0], ins[1]
        if not isinstance(a, _T) and not isinstance(b, _T):
            return [_sym_arith(cx, node.kind(), a, b)]
        if len(ins) > 2 and _const_arg(cx, ins[2], "alpha") != 1:
            raise ExportError(f"unsupported: {cx.b.where()}: alpha = {ins[2]!r}")
        a, b = _tensor(cx, a), _tensor(cx, b)
        if reverse:
            a, b = b, a
        return [cx.b.op(opname, [a, b], _broadcast(a.shape, b.shape, cx.b.where()))]
    return emit


def _unary(opname):
    def emit(cx, node, ins):
        x = _tensor(cx, ins[0])
        return [cx.b.op(opname, [x], x.shape)]
    return emit


def _gelu(cx, node, ins):
    approx = _const_arg(cx, ins[1] if len(ins) > 1 else "none", "approximate", ("none", "tanh"))
    x = _tensor(cx, ins[0])
    return [cx.b.op("gelu" if approx == "none" else "gelu_tanh", [x], x.shape)]


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def _wide_error(cx, x):
    return ExportError(f"{cx.b.where()}: a value of rank {len(x.logical)} ({_shape_str(x.logical)}); "
                       f"maskjit tensors have rank 1-{MAX_RANK}, and a view of higher rank may only be "
                       f"reshaped, or have its first {MAX_RANK - 1} dims transposed")


def _reshape_to(cx, x, sizes):
    """x reshaped to sizes (ints, B as _Sym(1), -1): the batch must stay a whole dim.
    More than 4 sizes, the batch among the first 3: a logical view (_T)."""
    xshape = x.logical or x.shape
    out, infer = [], None
    for i, s in enumerate(sizes):
        if isinstance(s, _Sym):
            if s.coef != 1:
                raise ExportError(
                    f"{cx.b.where()}: size {s!r} at dim {i} mixes the batch with other dims; "
                    "maskjit types have B only as a whole dim")
            out.append(B)
        elif s == -1 and infer is None:
            infer = i
            out.append(-1)
        elif isinstance(s, int) and not isinstance(s, bool) and s >= 0:
            out.append(s)
        else:
            raise ExportError(f"{cx.b.where()}: size {s!r} at dim {i}")
    n_in, c_in = xshape.count(B), _numel([d for d in xshape if d != B])
    n_out, c_out = out.count(B), _numel([d for d in out if d not in (B, -1)])
    if infer is not None:
        if n_in == n_out + 1 and c_out == c_in:
            out[infer] = B  # -1 stands for exactly the batch
        elif n_in == n_out and c_out and c_in % c_out == 0:
            out[infer] = c_in // c_out
        else:
            raise ExportError(
                f"{cx.b.where()}: -1 in {sizes} would be a multiple of the batch "
                f"(input {_shape_str(xshape)}); maskjit types have B only as a whole dim")
    if n_in != out.count(B):
        raise ExportError(
            f"{cx.b.where()}: reshapes {_shape_str(xshape)} to {_shape_str(out)}: the batch "
            f"size was baked into the trace as a constant (trace-time batch {cx.batch}); take "
            "sizes from x.shape or use -1 so the graph works at any batch")
    if _numel([d for d in out if d != B]) != c_in:
        raise ExportError(f"{cx.b.where()}: reshape {_shape_str(xshape)} to {_shape_str(out)}")
    out = tuple(out)
    if len(out) > MAX_RANK and B not in out[MAX_RANK - 1:]:
        ir = out[:MAX_RANK - 1] + (_numel(out[MAX_RANK - 1:]),)
        y = _T(x.id, x.shape) if ir == x.shape else cx.b.op("reshape", [x], ir)
        return _T(y.id, y.shape, out)
    if out == x.shape:
        return _T(x.id, x.shape) if x.logical else x
    return cx.b.op("reshape", [x], out)


def _view(cx, node, ins):
    sizes = ins[1]
    if not isinstance(sizes, list):
        raise ExportError(f"{cx.b.where()}: size argument {sizes!r}")
    return [_reshape_to(cx, _tensor(cx, ins[0]), sizes)]


def _flatten(cx, node, ins):
    x = _tensor(cx, ins[0])
    r = len(x.shape)
    s, e = (_const_arg(cx, d, "dim") % max(r, 1) for d in ins[1:3])
    merged = x.shape[s:e + 1]
    if B in merged and len([d for d in merged if d != 1]) > 1:
        raise ExportError(f"{cx.b.where()}: flattens the batch with other dims "
                          f"({_shape_str(x.shape)}, dims {s}..{e}); maskjit types have B only as "
                          "a whole dim")
    mid = B if B in merged else _numel(merged)
    sizes = _sizes(x.shape[:s]) + _sizes([mid]) + _sizes(x.shape[e + 1:])
    return [_reshape_to(cx, x, sizes)]


def _unsqueeze(cx, node, ins):
    x = _tensor(cx, ins[0])
    d = _const_arg(cx, ins[1], "dim") % (len(x.shape) + 1)
    sizes = _sizes(x.shape)
    sizes.insert(d, 1)
    return [_reshape_to(cx, x, sizes)]


def _size(cx, node, ins):
    x = _tensor(cx, ins[0])
    dims = _sizes(x.shape)
    if len(ins) == 1:
        return [dims]
    return [dims[_const_arg(cx, ins[1], "dim") % len(dims)]]


def _sym_arith(cx, kind, a, b):
    """Trace-time int arithmetic on sizes: the result must stay c or c*B."""
    op = kind.split("::")[1].rstrip("_")
    ca, cb = (v.coef if isinstance(v, _Sym) else v for v in (a, b))
    sa, sb = isinstance(a, _Sym), isinstance(b, _Sym)
    if not sa and not sb:
        return {"mul": lambda: a * b, "add": lambda: a + b, "sub": lambda: a - b,
                "floor_divide": lambda: a // b, "div": lambda: a / b}[op]()
    if op == "mul" and not (sa and sb):
        return _Sym(ca * cb)
    if op in ("floor_divide", "div") and sa and not sb and cb and ca % cb == 0:
        return _Sym(ca // cb)
    raise ExportError(f"{cx.b.where()}: size arithmetic {a!r} {op} {b!r} does not give a whole "
                      "batch dim; maskjit types have B only as a whole dim")


def _div_sizes(cx, node, ins):
    if isinstance(ins[0], _T) or isinstance(ins[1], _T):
        if len(ins) > 2 and ins[2] is not None:
            raise ExportError(f"unsupported: {cx.b.where()}: division with rounding_mode={ins[2]!r}")
        return _binary("div")(cx, node, ins[:2])
    return [_sym_arith(cx, node.kind(), ins[0], ins[1])]


def _attr_text(v):
    if isinstance(v, list):
        return "[" + ",".join(str(int(x)) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return repr(float(v))


def _attr_unary(opname, names, defaults=None):
    """x, then the op's scalar arguments in aten's order, as attributes."""
    def emit(cx, node, ins):
        x = _tensor(cx, ins[0])
        args = list(ins[1:1 + len(names)]) + list((defaults or [])[len(ins) - 1:])
        attrs = [(n, float(_const_arg(cx, a, n))) for n, a in zip(names, args)]
        return [cx.b.op(opname, [x], x.shape, attrs=attrs)]
    return emit


def _elu(cx, node, ins):
    # aten::elu(x, alpha, scale, input_scale): maskjit's elu has scale 1
    if len(ins) > 2 and (_const_arg(cx, ins[2], "scale") != 1 or _const_arg(cx, ins[3], "input_scale") != 1):
        raise ExportError(f"unsupported: {cx.b.where()}: elu with scale {ins[2]!r}, input_scale {ins[3]!r}")
    return _attr_unary("elu", ["alpha"])(cx, node, ins[:2])


def _pow(cx, node, ins):
    x, e = ins[0], ins[1]
    if not isinstance(x, _T) or isinstance(e, _T):
        raise ExportError(f"unsupported: {cx.b.where()}: pow with a tensor exponent; maskjit's pow "
                          "takes a constant exponent")
    return [cx.b.op("pow", [x], x.shape, attrs=[("exponent", float(_const_arg(cx, e, "exponent")))])]


def _reduce(opname):
    def emit(cx, node, ins):
        # aten::sum/mean(x, dims, keepdim, dtype)
        x = _tensor(cx, ins[0])
        dims = ins[1] if len(ins) > 1 else None
        keep = bool(_const_arg(cx, ins[2], "keepdim")) if len(ins) > 2 else False
        if isinstance(dims, list) and len(dims) > 1:
            # neighbouring dims (x.mean((2, 3)): global average pooling) are
            # one dim of their product, reduced as PyTorch does: one sum
            # over all their elements, then one division
            ds = sorted({_const_arg(cx, v, "dim") % len(x.shape) for v in dims})
            if ds != list(range(ds[0], ds[0] + len(ds))) or any(x.shape[v] == B for v in ds):
                raise ExportError(f"unsupported: {cx.b.where()}: {opname} over dims {dims!r}; maskjit "
                                  "reduces one dim, or neighbouring dims other than the batch")
            sym = _sizes(x.shape)
            merged = sym[:ds[0]] + [_numel(x.shape[ds[0]:ds[-1] + 1])] + sym[ds[-1] + 1:]
            y = emit(cx, node, [_reshape_to(cx, x, merged), [ds[0]], keep] + list(ins[3:]))[0]
            if keep:
                y = _reshape_to(cx, y, sym[:ds[0]] + [1] * len(ds) + sym[ds[-1] + 1:])
            return [y]
        if dims is None or (isinstance(dims, list) and len(dims) != 1):
            raise ExportError(f"unsupported: {cx.b.where()}: {opname} over dims {dims!r}; maskjit "
                              "reduces one dim at a time")
        d = _const_arg(cx, dims[0] if isinstance(dims, list) else dims, "dim")
        if len(ins) > 3 and ins[3] is not None and ins[3] != _FLOAT32:
            raise ExportError(f"{cx.b.where()}: {opname} to dtype code {ins[3]}")
        r = len(x.shape)
        dd = d % r
        shape = list(x.shape)
        if keep:
            shape[dd] = 1
        else:
            if r < 2:
                raise ExportError(f"unsupported: {cx.b.where()}: {opname} of a rank-1 value to a scalar")
            del shape[dd]
        return [cx.b.op(opname, [x], tuple(shape), attrs=[("dim", d), ("keepdim", keep)])]
    return emit


def _softmax(opname):
    def emit(cx, node, ins):
        x = _tensor(cx, ins[0])
        if len(ins) > 2 and ins[2] is not None and ins[2] != _FLOAT32:
            raise ExportError(f"{cx.b.where()}: {opname} to dtype code {ins[2]}")
        return [cx.b.op(opname, [x], x.shape, attrs=[("dim", _const_arg(cx, ins[1], "dim"))])]
    return emit


def _affine_operands(cx, ops, w, b, opname):
    """Appends the optional weight and bias of a norm to ops: a bias only
    after a weight (the IR's optional operands are positional)."""
    if w is not None:
        ops.append(_tensor(cx, w, "weight"))
        if b is not None:
            ops.append(_tensor(cx, b, "bias"))
    elif b is not None:
        raise ExportError(f"unsupported: {cx.b.where()}: {opname} with a bias but no weight")


def _layer_norm(cx, node, ins):
    # aten::layer_norm(x, normalized_shape, weight, bias, eps, cudnn_enable)
    x = _tensor(cx, ins[0])
    ns = _const_arg(cx, ins[1], "normalized_shape")
    if not isinstance(ns, list) or len(ns) != 1 or ns[0] != x.shape[-1]:
        raise ExportError(f"unsupported: {cx.b.where()}: layer_norm over {ns!r} of "
                          f"{_shape_str(x.shape)}; maskjit normalises the last dim only")
    ops = [x]
    _affine_operands(cx, ops, ins[2], ins[3], "layer_norm")
    return [cx.b.op("layer_norm", ops, x.shape, attrs=[("eps", float(_const_arg(cx, ins[4], "eps")))])]


def _pair(cx, v, what, length=2):
    """An int or an int[1|2] of the trace as [a, b] (PyTorch's _pair)."""
    v = _const_arg(cx, v, what)
    if isinstance(v, bool) or not isinstance(v, (int, list)) or \
            (isinstance(v, list) and (len(v) not in (1, length) or
                                      not all(isinstance(e, int) and not isinstance(e, bool) for e in v))):
        raise ExportError(f"unsupported: {cx.b.where()}: {what} = {v!r}; maskjit takes one or two ints")
    v = [v] if isinstance(v, int) else v
    return [int(v[0]), int(v[-1])]


def _rank4(cx, x, what):
    if len(x.shape) != 4 or x.shape[0] != B or B in x.shape[1:]:
        raise ExportError(f"unsupported: {cx.b.where()}: {what} of {_shape_str(x.shape)}; maskjit's "
                          "CNN ops take [B, C, H, W] with the batch in dim 0")


def _window_out(cx, size, k, s, p, d, what, ceil=False):
    # PyTorch's: with ceil_mode the size rounds up, but the last window
    # starts inside the input or its left padding
    n = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil else 0)) // s + 1
    if ceil and (n - 1) * s >= size + p:
        n -= 1
    if s < 1 or p < 0 or d < 1 or k < 1 or n < 1:
        raise ExportError(f"{cx.b.where()}: {what}: window {k} (stride {s}, padding {p}, dilation {d}) "
                          f"does not fit a size of {size}")
    return n


def _conv(cx, x, w, bias, stride, padding, dilation, groups):
    _rank4(cx, x, "conv2d")
    if len(w.shape) != 4 or B in w.shape:
        raise ExportError(f"{cx.b.where()}: conv weight {_shape_str(w.shape)} is not [out, in/groups, kh, kw]")
    if groups < 1 or x.shape[1] != w.shape[1] * groups or w.shape[0] % groups:
        raise ExportError(f"{cx.b.where()}: conv2d of {_shape_str(x.shape)} with weight "
                          f"{_shape_str(w.shape)} and groups {groups}")
    ops = _weight_bias(cx, x, w, bias)
    oh = _window_out(cx, x.shape[2], w.shape[2], stride[0], padding[0], dilation[0], "conv2d")
    ow = _window_out(cx, x.shape[3], w.shape[3], stride[1], padding[1], dilation[1], "conv2d")
    attrs = [("stride", stride), ("padding", padding), ("dilation", dilation), ("groups", groups)]
    return [cx.b.op("conv2d", ops, (B, w.shape[0], oh, ow), attrs=attrs)]


def _conv1d(cx, x, w, bias, stride, padding, dilation, groups):
    """Conv1d as a conv2d over one row: x [B, C, L] as [B, C, 1, L], the
    weight [O, C/g, K] as [O, C/g, 1, K]; each output element sees the same
    products in the same order."""
    if len(x.shape) != 3 or x.shape[0] != B:
        raise ExportError(f"{cx.b.where()}: conv1d of {_shape_str(x.shape)}; maskjit takes [B, C, L]")
    one = []
    for v, what in ((stride, "stride"), (padding, "padding"), (dilation, "dilation")):
        v = _const_arg(cx, v, what)
        if isinstance(v, str):
            raise ExportError(f"unsupported: {cx.b.where()}: padding={v!r}; give the padding as a number")
        v = v if isinstance(v, list) else [v]
        if len(v) != 1 or not isinstance(v[0], int) or isinstance(v[0], bool):
            raise ExportError(f"unsupported: {cx.b.where()}: conv1d {what} = {v!r}")
        one.append(v[0])
    x4 = _reshape_to(cx, x, [_Sym(1), x.shape[1], 1, x.shape[2]])
    w4 = _reshape_to(cx, w, [w.shape[0], w.shape[1], 1, w.shape[2]])
    y = _conv(cx, x4, w4, bias, [1, one[0]], [0, one[1]], [1, one[2]], groups)[0]
    return [_reshape_to(cx, y, [_Sym(1), y.shape[1], y.shape[3]])]


def _padding_arg(cx, v):
    if isinstance(v, str):
        raise ExportError(f"unsupported: {cx.b.where()}: padding={v!r}; give the padding as numbers")
    return _pair(cx, v, "padding")


def _convolution(cx, node, ins):
    # aten::_convolution(x, w, b, stride, padding, dilation, transposed, output_padding, groups, ...)
    if _const_arg(cx, ins[6], "transposed"):
        raise ExportError(f"unsupported: {cx.b.where()}: transposed convolution")
    w = _tensor(cx, ins[1], "weight")
    if len(w.shape) == 3:
        return _conv1d(cx, _tensor(cx, ins[0]), w, ins[2], ins[3], ins[4], ins[5],
                       _const_arg(cx, ins[8], "groups"))
    if len(w.shape) != 4:
        raise ExportError(f"unsupported: {cx.b.where()}: a convolution with weight "
                          f"{_shape_str(w.shape)}; maskjit has 1-D and 2-D convolutions (Conv1d, Conv2d)")
    return _conv(cx, _tensor(cx, ins[0]), w, ins[2], _pair(cx, ins[3], "stride"),
                 _padding_arg(cx, ins[4]), _pair(cx, ins[5], "dilation"), _const_arg(cx, ins[8], "groups"))


def _convolution_mode(cx, node, ins):
    # aten::_convolution_mode(x, w, b, stride, padding: str, dilation, groups): padding="same"/"valid"
    w = _tensor(cx, ins[1], "weight")
    mode = _const_arg(cx, ins[4], "padding")
    if len(w.shape) == 3:  # Conv1d
        stride, dilation = _const_arg(cx, ins[3], "stride"), _const_arg(cx, ins[5], "dilation")
        s1 = stride[0] if isinstance(stride, list) else stride
        d1 = dilation[0] if isinstance(dilation, list) else dilation
        total = d1 * (w.shape[2] - 1)
        if mode != "valid" and (mode != "same" or s1 != 1 or total % 2):
            raise ExportError(f"unsupported: {cx.b.where()}: padding={mode!r} with kernel "
                              f"{list(w.shape[2:])}, stride {s1}, dilation {d1}; maskjit pads "
                              "both sides equally (give the padding as a number)")
        return _conv1d(cx, _tensor(cx, ins[0]), w, ins[2], s1, 0 if mode == "valid" else total // 2, d1,
                       _const_arg(cx, ins[6], "groups"))
    if len(w.shape) != 4:
        raise ExportError(f"unsupported: {cx.b.where()}: a convolution with weight "
                          f"{_shape_str(w.shape)}; maskjit has 2-D convolutions (Conv2d)")
    stride, dilation = _pair(cx, ins[3], "stride"), _pair(cx, ins[5], "dilation")
    if mode == "valid":
        padding = [0, 0]
    else:
        total = [dilation[i] * (w.shape[2 + i] - 1) for i in range(2)]
        if mode != "same" or stride != [1, 1] or any(t % 2 for t in total):
            raise ExportError(f"unsupported: {cx.b.where()}: padding={mode!r} with kernel "
                              f"{list(w.shape[2:])}, stride {stride}, dilation {dilation}; maskjit pads "
                              "both sides equally (give the padding as numbers)")
        padding = [t // 2 for t in total]
    return _conv(cx, _tensor(cx, ins[0]), w, ins[2], stride, padding, dilation,
                 _const_arg(cx, ins[6], "groups"))


def _conv1d_op(cx, node, ins):
    # aten::conv1d(x, w, b, stride, padding, dilation, groups)
    return _conv1d(cx, _tensor(cx, ins[0]), _tensor(cx, ins[1], "weight"), ins[2], ins[3], ins[4], ins[5],
                   _const_arg(cx, ins[6], "groups"))


def _conv2d(cx, node, ins):
    # aten::conv2d(x, w, b, stride, padding, dilation, groups)
    return _conv(cx, _tensor(cx, ins[0]), _tensor(cx, ins[1], "weight"), ins[2], _pair(cx, ins[3], "stride"),
                 _padding_arg(cx, ins[4]), _pair(cx, ins[5], "dilation"), _const_arg(cx, ins[6], "groups"))


def _batch_norm(cx, node, ins):
    # aten::batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps, cudnn)
    x = _tensor(cx, ins[0])
    if len(x.shape) in (2, 3) and x.shape[0] == B and B not in x.shape[1:]:
        # BatchNorm1d over [B, C] or [B, C, L]: per channel, as over [B, C, L, 1]
        x4 = _reshape_to(cx, x, [_Sym(1), x.shape[1], x.shape[2] if len(x.shape) == 3 else 1, 1])
        y = _batch_norm(cx, node, [x4] + list(ins[1:]))[0]
        return [_reshape_to(cx, y, [_Sym(1)] + list(x.shape[1:]))]
    _rank4(cx, x, "batch_norm")
    if _const_arg(cx, ins[5], "training") is not False:
        raise ExportError(f"{cx.b.where()}: batch_norm in training mode (call model.eval())")
    if ins[3] is None or ins[4] is None:
        raise ExportError(f"unsupported: {cx.b.where()}: batch_norm without running statistics "
                          "(track_running_stats=False)")
    c = (x.shape[1],)
    ops = [x, _tensor(cx, ins[3], "running_mean"), _tensor(cx, ins[4], "running_var")]
    _affine_operands(cx, ops, ins[1], ins[2], "batch_norm")
    for o in ops[1:]:
        if o.shape != c:
            raise ExportError(f"{cx.b.where()}: batch_norm parameter {_shape_str(o.shape)} is not "
                              f"[{c[0]}]")
    return [cx.b.op("batch_norm", ops, x.shape, attrs=[("eps", float(_const_arg(cx, ins[7], "eps")))])]


def _pool(opname):
    def emit(cx, node, ins):
        # max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)
        # avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
        x = _tensor(cx, ins[0])
        _rank4(cx, x, opname)
        k = _pair(cx, ins[1], "kernel_size")
        st = _const_arg(cx, ins[2], "stride")
        s = k if st is None or st == [] else _pair(cx, st, "stride")
        p = _pair(cx, ins[3], "padding")
        if opname == "max_pool2d":
            if _pair(cx, ins[4], "dilation") != [1, 1]:
                raise ExportError(f"unsupported: {cx.b.where()}: max_pool2d with dilation")
            ceil = _const_arg(cx, ins[5], "ceil_mode")
        else:
            ceil = _const_arg(cx, ins[4], "ceil_mode")
            if len(ins) > 6 and ins[6] is not None:
                raise ExportError(f"unsupported: {cx.b.where()}: avg_pool2d with divisor_override")
        if p[0] * 2 > k[0] or p[1] * 2 > k[1]:
            raise ExportError(f"{cx.b.where()}: {opname}: padding {p} is more than half the kernel {k}")
        oh = _window_out(cx, x.shape[2], k[0], s[0], p[0], 1, opname, bool(ceil))
        ow = _window_out(cx, x.shape[3], k[1], s[1], p[1], 1, opname, bool(ceil))
        attrs = [("kernel", k), ("stride", s), ("padding", p)]
        if opname == "avg_pool2d":
            attrs.append(("count_include_pad", bool(_const_arg(cx, ins[5], "count_include_pad"))))
        if ceil:
            attrs.append(("ceil_mode", True))
        return [cx.b.op(opname, [x], x.shape[:2] + (oh, ow), attrs=attrs)]
    return emit


def _adaptive_avg_pool2d(cx, node, ins):
    x = _tensor(cx, ins[0])
    _rank4(cx, x, "adaptive_avg_pool2d")
    size = _const_arg(cx, ins[1], "output_size")
    size = [size, size] if isinstance(size, int) else list(size)
    if len(size) == 1:
        size = size * 2
    size = [x.shape[2 + i] if v is None else v for i, v in enumerate(size)]
    if len(size) != 2 or any(not isinstance(v, int) or v < 1 for v in size):
        raise ExportError(f"unsupported: {cx.b.where()}: adaptive_avg_pool2d to {size!r}")
    return [cx.b.op("adaptive_avg_pool2d", [x], x.shape[:2] + tuple(size), attrs=[("size", size)])]


OPS = {
    "aten::linear": _linear,
    "aten::matmul": _matmul,
    "aten::mm": _matmul,
    "aten::t": _t,
    "aten::transpose": _transpose,
    "aten::permute": _permute,
    "aten::bmm": _matmul,
    "aten::chunk": _chunk,
    "aten::split": _split,
    "aten::split_with_sizes": _split,
    "aten::slice": _slice,
    "aten::cat": _cat,
    "aten::stack": _stack,
    "aten::abs": _abs,
    "aten::expand": _expand,
    "aten::select": _select,
    "aten::squeeze": _squeeze,
    "aten::clamp": _clamp,
    "aten::add": _binary("add"),
    "aten::sub": _binary("sub"),
    "aten::rsub": _binary("sub", reverse=True),
    "aten::mul": _binary("mul"),
    "aten::relu": _unary("relu"),
    "aten::sigmoid": _unary("sigmoid"),
    "aten::tanh": _unary("tanh"),
    "aten::gelu": _gelu,
    "aten::silu": _unary("silu"),
    "aten::neg": _unary("neg"),
    "aten::exp": _unary("exp"),
    "aten::log": _unary("log"),
    "aten::sqrt": _unary("sqrt"),
    "aten::rsqrt": _unary("rsqrt"),
    "aten::maximum": _binary("maximum"),
    "aten::minimum": _binary("minimum"),
    "aten::pow": _pow,
    "aten::leaky_relu": _attr_unary("leaky_relu", ["slope"], [0.01]),
    "aten::elu": _elu,
    "aten::hardtanh": _attr_unary("hardtanh", ["min", "max"], [-1.0, 1.0]),
    "aten::hardswish": _hard("hardswish"),
    "aten::hardsigmoid": _hard("hardsigmoid"),
    "aten::relu6": lambda cx, node, ins: _attr_unary("hardtanh", ["min", "max"])(cx, node, [ins[0], 0.0, 6.0]),
    "aten::softplus": _attr_unary("softplus", ["beta", "threshold"], [1.0, 20.0]),
    "aten::sum": _reduce("sum"),
    "aten::mean": _reduce("mean"),
    "aten::softmax": _softmax("softmax"),
    "aten::log_softmax": _softmax("log_softmax"),
    "aten::layer_norm": _layer_norm,
    "aten::_convolution": _convolution,
    "aten::conv2d": _conv2d,
    "aten::conv1d": _conv1d_op,
    "aten::_convolution_mode": _convolution_mode,
    "aten::batch_norm": _batch_norm,
    "aten::max_pool2d": _pool("max_pool2d"),
    "aten::avg_pool2d": _pool("avg_pool2d"),
    "aten::adaptive_avg_pool2d": _adaptive_avg_pool2d,
    "aten::dropout": _dropout,
    "aten::feature_dropout": _dropout,
    "aten::alpha_dropout": _dropout,
    "aten::feature_alpha_dropout": _dropout,
    "aten::contiguous": _identity,
    "aten::detach": _identity,
    "aten::clone": _identity,
    "aten::alias": _identity,
    "aten::to": _to,
    "aten::view": _view,
    "aten::reshape": _view,
    "aten::flatten": _flatten,
    "aten::unsqueeze": _unsqueeze,
    "aten::size": _size,
    "aten::floor_divide": _div_sizes,
    "aten::div": _div_sizes,
    "prim::NumToTensor": _identity,
    "aten::Int": _identity,
    "aten::ScalarImplicit": _identity,
}
# In-place forms: the same op; the mutated tensor is rebound to the result.
INPLACE = {k + "_": v for k, v in OPS.items()
           if k in ("aten::add", "aten::sub", "aten::mul", "aten::relu", "aten::sigmoid", "aten::hardtanh", "aten::relu6",
                    "aten::tanh", "aten::dropout", "aten::silu", "aten::hardswish", "aten::hardsigmoid",
                    "aten::leaky_relu", "aten::elu", "aten::clamp")}
# Ops that may read a logical view of rank > 4 (_T.logical).
_LOGICAL_OK = {"aten::view", "aten::reshape", "aten::transpose", "aten::permute", "aten::contiguous",
               "aten::clone", "aten::detach", "aten::alias"}
# Ops whose result shares storage with their first input (for in-place checks).
_ALIASING = {"aten::view", "aten::reshape", "aten::flatten", "aten::unsqueeze", "aten::t",
             "aten::transpose", "aten::permute", "aten::contiguous", "aten::detach",
             "aten::alias", "aten::to", "aten::dropout", "aten::feature_dropout",
             "aten::alpha_dropout", "aten::feature_alpha_dropout"}


class _Ctx:
    def __init__(self, builder, batch):
        self.b, self.batch = builder, batch


def _resolve_attr(mod, name):
    """prim::GetAttr on a module: a submodule or a tensor attribute."""
    obj = mod.obj
    if isinstance(obj, nn.Module) and name in obj._modules:
        return obj._modules[name]
    return getattr(obj, name)


def _translate(model, traced, inputs, input_names, state):
    """torch.jit.trace's graph -> (IR text, tensors, origins)."""
    graph = traced.inlined_graph
    torch._C._jit_pass_dce(graph)
    nodes = list(graph.nodes())
    order = {n: i for i, n in enumerate(nodes)}
    current = [None]

    def origin(operand_ids, on_input):
        """The module a new IR value comes from ("" = the root's forward): the
        node's scope; for a param its owner; for a weight computed outside
        any forward (prune's pre-hook) the module of its operands."""
        node = current[0]
        if node is None:
            return None
        path = _module_path(node)
        if not path and not on_input:
            for ref in operand_ids:
                path = bld.origins.get(f"%{ref}", "")
                if path:
                    break
        return path

    bld = _Builder(model, state, origin)
    cx = _Ctx(bld, inputs[0].shape[0])
    env = {}
    alias_root = {}  # value -> the value whose storage it shares (views, detach, ...)
    values = {v.unique(): v for n in nodes for v in n.outputs()}
    values.update({v.unique(): v for v in graph.inputs()})
    g_inputs = list(graph.inputs())
    env[g_inputs[0].unique()] = _Mod("", model)
    if len(g_inputs) - 1 != len(inputs):
        raise ExportError(f"the traced graph takes {len(g_inputs) - 1} inputs, "
                          f"{len(inputs)} example inputs were given")
    for v, x, name in zip(g_inputs[1:], inputs, input_names):
        env[v.unique()] = bld.input(name, (B,) + tuple(x.shape[1:]))
    for node in nodes:
        current[0] = node
        bld.node = node
        kind = node.kind()
        if kind == "prim::Constant":
            val = node.output().toIValue() if node.hasAttributes() else None
            if isinstance(val, torch.Tensor):
                if val.dim() > 0 and val.dtype != torch.float32:
                    raise ExportError(f"{bld.where()}: a captured {val.dtype} tensor; maskjit "
                                      "computes in float32")
                val = bld.const(val) if val.dim() > 0 else val.item()
            env[node.output().unique()] = val
            continue
        ins = [env[v.unique()] for v in node.inputs()]
        if kind == "prim::GetAttr":
            mod = ins[0]
            name = node.s("name")
            path = f"{mod.path}.{name}" if mod.path else name
            obj = _resolve_attr(mod, name)
            if isinstance(obj, torch.Tensor) and not obj.is_floating_point() and \
                    not (obj.dtype == torch.bool and path.endswith((MASK_SUFFIX, "_mask"))):
                raise ExportError(_non_float_attr(bld.model, node, path, obj))
            if isinstance(obj, torch.Tensor):
                env[node.output().unique()] = bld.param(path, obj)
            else:
                env[node.output().unique()] = _Mod(path, obj)
            continue
        if kind == "prim::ListConstruct" or kind == "prim::TupleConstruct":
            env[node.output().unique()] = list(ins)
            continue
        if kind in ("prim::ListUnpack", "prim::TupleUnpack"):
            for o, v in zip(node.outputs(), ins[0]):
                env[o.unique()] = v
            continue
        emit = OPS.get(kind) or INPLACE.get(kind)
        if emit is None:
            raise ExportError(f"unsupported: {_describe(model, node)}")
        if kind not in _LOGICAL_OK:
            for v in ins:
                for item in (v if isinstance(v, list) else [v]):
                    if isinstance(item, _T) and item.logical:
                        raise _wide_error(cx, item)
        outs = emit(cx, node, ins)
        if kind in INPLACE:
            _check_inplace(bld, node, env, alias_root, values, order)
            env[node.inputsAt(0).unique()] = outs[0]
        for o, v in zip(node.outputs(), outs):
            env[o.unique()] = v
            if kind in _ALIASING:
                src = node.inputsAt(0).unique()
                alias_root[o.unique()] = alias_root.get(src, src)
    current[0] = None
    bld.node = None
    rets = list(graph.outputs())
    outs = []
    for r in rets:
        v = env[r.unique()]
        for item in (v if isinstance(v, list) else [v]):
            if not isinstance(item, _T):
                raise ExportError(f"the model returns {item!r}; maskjit graphs return tensors")
            if item.logical:
                raise _wide_error(cx, item)
            outs.append(item)
    return bld.text(outs), bld.tensors, (bld.origins, bld.sources), [o.shape for o in outs]


def _check_inplace(bld, node, env, alias_root, values, order):
    """An in-place op is rebound functionally: refused when another name for
    the same storage (a view of it, or what it views) is read after it."""
    first = node.inputsAt(0).unique()
    if any(env[first] is p for p in bld.params.values()):
        raise ExportError(f"{bld.where()}: modifies a parameter in place")
    root = alias_root.get(first, first)
    group = {v for v, r in alias_root.items() if r == root} | {root}
    for other in group - {first}:
        if any(order.get(u.user, -1) > order[node] for u in values[other].uses()):
            raise ExportError(f"{bld.where()}: an in-place op on a tensor that shares storage "
                              "with another one read later; maskjit's IR has no aliasing")


# ---- reading back what was written ----------------------------------------

_LINE = re.compile(r'%(\d+) = (\w+)(.*?) : f32\[([^\]]*)\](?: = \[(.*)\])?$')
_NAME = re.compile(r'"((?:[^"\\]|\\.)*)"')
_REF_OPS = {
    "linear": lambda a: F.linear(a[0], a[1], a[2] if len(a) > 2 else None),
    "matmul": lambda a: torch.matmul(a[0], a[1]),
    "add": lambda a: a[0] + a[1],
    "sub": lambda a: a[0] - a[1],
    "mul": lambda a: a[0] * a[1],
    "relu": lambda a: torch.relu(a[0]),
    "gelu": lambda a: F.gelu(a[0]),
    "gelu_tanh": lambda a: F.gelu(a[0], approximate="tanh"),
    "sigmoid": lambda a: torch.sigmoid(a[0]),
    "tanh": lambda a: torch.tanh(a[0]),
    "silu": lambda a: F.silu(a[0]),
    "neg": lambda a: -a[0],
    "exp": lambda a: torch.exp(a[0]),
    "log": lambda a: torch.log(a[0]),
    "sqrt": lambda a: torch.sqrt(a[0]),
    "rsqrt": lambda a: torch.rsqrt(a[0]),
    "div": lambda a: a[0] / a[1],
    "maximum": lambda a: torch.maximum(a[0], a[1]),
    "minimum": lambda a: torch.minimum(a[0], a[1]),
}

# ops with attributes: (operands, attribute dict) -> tensor
_REF_ATTR_OPS = {
    "transpose": lambda a, t: a[0].transpose(int(t.get("dim0", -2)), int(t.get("dim1", -1))),
    "permute": lambda a, t: a[0].permute(*t["perm"]),
    "slice": lambda a, t: a[0].narrow(int(t["dim"]), int(t["start"]), int(t["end"]) - int(t["start"])),
    "cat": lambda a, t: torch.cat(a, int(t["dim"])),
    "pow": lambda a, t: a[0] ** t["exponent"],
    "leaky_relu": lambda a, t: F.leaky_relu(a[0], t.get("slope", 0.01)),
    "elu": lambda a, t: F.elu(a[0], t.get("alpha", 1.0)),
    "hardtanh": lambda a, t: F.hardtanh(a[0], t.get("min", -1.0), t.get("max", 1.0)),
    "softplus": lambda a, t: F.softplus(a[0], t.get("beta", 1.0), t.get("threshold", 20.0)),
    "sum": lambda a, t: a[0].sum(int(t["dim"]), keepdim=bool(t.get("keepdim", False))),
    "mean": lambda a, t: a[0].mean(int(t["dim"]), keepdim=bool(t.get("keepdim", False))),
    "softmax": lambda a, t: torch.softmax(a[0], int(t["dim"])),
    "log_softmax": lambda a, t: torch.log_softmax(a[0], int(t["dim"])),
    "layer_norm": lambda a, t: F.layer_norm(a[0], a[0].shape[-1:], a[1] if len(a) > 1 else None,
                                            a[2] if len(a) > 2 else None, t.get("eps", 1e-5)),
    "conv2d": lambda a, t: F.conv2d(a[0], a[1], a[2] if len(a) > 2 else None, t.get("stride", [1, 1]),
                                    t.get("padding", [0, 0]), t.get("dilation", [1, 1]),
                                    int(t.get("groups", 1))),
    "batch_norm": lambda a, t: F.batch_norm(a[0], a[1], a[2], a[3] if len(a) > 3 else None,
                                            a[4] if len(a) > 4 else None, False, 0.0, t.get("eps", 1e-5)),
    "max_pool2d": lambda a, t: F.max_pool2d(a[0], t["kernel"], t.get("stride", t["kernel"]),
                                            t.get("padding", [0, 0]), ceil_mode=bool(t.get("ceil_mode", False))),
    "avg_pool2d": lambda a, t: F.avg_pool2d(a[0], t["kernel"], t.get("stride", t["kernel"]),
                                            t.get("padding", [0, 0]), ceil_mode=bool(t.get("ceil_mode", False)),
                                            count_include_pad=bool(t.get("count_include_pad", True))),
    "adaptive_avg_pool2d": lambda a, t: F.adaptive_avg_pool2d(a[0], t["size"]),
}


def _parse_attrs(rest):
    m = re.search(r"\{([^}]*)\}\s*$", rest)
    out = {}
    if m:
        body = m.group(1)
        for lm in re.finditer(r"(\w+)=\[([^\]]*)\]", body):
            out[lm.group(1)] = [int(v) for v in lm.group(2).split(",") if v.strip()]
        body = re.sub(r"\w+=\[[^\]]*\]", "", body)
        for part in body.split(","):
            if "=" in part:
                k, v = (x.strip() for x in part.split("=", 1))
                out[k] = {"true": True, "false": False}.get(v, None)
                if out[k] is None:
                    try:
                        out[k] = float.fromhex(v) if v.startswith(("0x", "-0x")) else float(v)
                    except ValueError:
                        out[k] = v
    return out


def reference_run(text, tensors, inputs, every_value=False):
    """Evaluates maskjit IR text (docs/IR.md) with PyTorch ops on `inputs`:
    an independent reading of a written file, used to validate it. Returns
    the outputs; with every_value, the value of every node, by id."""
    lines = [l for l in text.split("\n") if l.strip()]
    if not lines or lines[0] != "maskjit-ir 1" or not lines[-1].startswith("return "):
        raise ExportError("the IR text has no 'maskjit-ir 1' header or no return line")
    batch = inputs[0].shape[0]
    vals, n_in = [], 0
    for line in lines[1:-1]:
        m = _LINE.match(line)
        if not m or int(m.group(1)) != len(vals):
            raise ExportError(f"IR line not understood: {line}")
        op, rest, data = m.group(2), m.group(3), m.group(5)
        shape = [batch if d == B else int(d) for d in m.group(4).split(",")]
        if op in ("input", "param", "const"):
            name = _NAME.search(rest).group(1).replace('\\"', '"').replace("\\\\", "\\")
            if op == "input":
                v, n_in = inputs[n_in], n_in + 1
            elif data is not None:
                v = torch.tensor([float.fromhex(x) for x in data.split(", ")],
                                 dtype=torch.float32).reshape(shape)
            else:
                v = tensors[name]
        elif op == "reshape":
            v = vals[int(re.search(r"%(\d+)", rest).group(1))].reshape(shape)
        elif op == "expand":  # 0.0f + b[j] over x's leading dims
            ids = [int(i) for i in re.findall(r"%(\d+)", rest)]
            v = torch.zeros(shape) + (vals[ids[1]] if len(ids) > 1 else 0.0)
        elif op in _REF_OPS:
            v = _REF_OPS[op]([vals[int(i)] for i in re.findall(r"%(\d+)", rest)])
        elif op in _REF_ATTR_OPS:
            operands = [vals[int(i)] for i in re.findall(r"%(\d+)", rest.split("{")[0])]
            v = _REF_ATTR_OPS[op](operands, _parse_attrs(rest))
        else:
            raise ExportError(f"IR op {op} has no reference here")
        if list(v.shape) != shape:
            raise ExportError(f"IR line {line}: PyTorch gives shape {list(v.shape)} at batch {batch}")
        vals.append(v)
    if every_value:
        return vals
    return [vals[int(i)] for i in re.findall(r"%(\d+)", lines[-1])]


NODE_PREFIX = "maskjit.node."  # PyTorch's node values: "maskjit.node.<id><suffix>"


def _node_values(text, tensors, inputs, suffix):
    """{"maskjit.node.<id><suffix>": value} for every op node of the IR (not
    inputs, params or consts), as PyTorch's ops compute the graph."""
    ops = {int(m.group(1)) for m in map(_LINE.match, text.split("\n")[1:])
           if m and m.group(2) not in ("input", "param", "const")}
    vals = reference_run(text, tensors, inputs, every_value=True)
    return {f"{NODE_PREFIX}{i}{suffix}": vals[i].to(torch.float32).contiguous() for i in sorted(ops)}


def _max_abs(a, b):
    return float((a - b).abs().max()) if a.numel() else 0.0


def _compare(got, want, what):
    """Raises ExportError unless every output is within maskjit's float32 tolerances."""
    if len(got) != len(want):
        raise ExportError(f"{what}: {len(got)} outputs, the model gives {len(want)}")
    for i, (g, w) in enumerate(zip(got, want)):
        if tuple(g.shape) != tuple(w.shape):
            raise ExportError(f"{what}: output {i} has shape {list(g.shape)}, the model's "
                              f"{list(w.shape)}")
        if not torch.allclose(g, w, rtol=MJ_RTOL, atol=MJ_ATOL, equal_nan=True):
            raise ExportError(f"{what}: output {i} differs from the model's by up to "
                              f"{_max_abs(g, w):.3g} (rtol {MJ_RTOL}, atol {MJ_ATOL})")


def find_maskjit():
    """The maskjit binary: $MASKJIT, this checkout's build/maskjit, or maskjit on PATH."""
    env = os.environ.get("MASKJIT")
    if env:
        return env
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    local = os.path.join(root, "build", "maskjit")
    if os.access(local, os.X_OK):
        return local
    return shutil.which("maskjit")


def _maskjit_check(path, maskjit, log):
    """Runs `maskjit check` on the written file; raises ExportError if it fails.
    maskjit: "auto" (find_maskjit), a path, or None/False to skip."""
    binary = find_maskjit() if maskjit == "auto" else maskjit
    if not binary:
        if maskjit == "auto":
            log("maskjit binary not found (set MASKJIT=PATH): the file was checked against "
                "PyTorch only")
        return
    try:
        proc = subprocess.run([binary, "check", path], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, timeout=600)
    except OSError as e:
        raise ExportError(f"cannot run {binary}: {e}") from None
    if proc.returncode != 0 and maskjit == "auto" and "the CLI runs traces with one" in proc.stdout:
        # A limit of this maskjit's command line, not of the file: say so.
        log(f"not checked by {binary} check (its CLI runs traces with one [batch, features] "
            "input): the file was checked against PyTorch only")
        return
    if proc.returncode != 0:
        raise ExportError(f"`maskjit check` refuses the file (exit {proc.returncode}):\n"
                          f"{proc.stdout.rstrip()}")
    log(f"checked with {binary} check: PASS")


def _write_checked(path, tensors, metadata, validate, maskjit, log):
    """Writes to a temporary file beside path, validates it, then renames it
    into place: a refused export leaves no file and an existing one untouched."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".export.", suffix=".safetensors",
                               dir=directory)
    os.close(fd)
    try:
        safetensors_io.save(tmp, tensors, metadata)
        validate(*safetensors_io.load(tmp))
        _maskjit_check(tmp, maskjit, log)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ---- prune'd layers (torch.nn.utils.prune) ---------------------------------

def _pruned_layers(model):
    """[(path, module, name)] for every `name_orig` * `name_mask` reparametrization."""
    out = []
    for path, mod in model.named_modules():
        for key in list(mod._parameters):
            if key.endswith("_orig") and key[:-5] + "_mask" in mod._buffers:
                out.append((path, mod, key[:-5]))
    return out


@contextlib.contextmanager
def _pruned_as_properties(model):
    """While tracing, each torch.nn.utils.prune'd tensor is a property that
    computes `mask * orig` (the pruning method's own apply_mask) on every
    read, as parametrize does. prune keeps the product as a plain attribute
    that a forward pre-hook refreshes, so a module whose weight another one
    reads without calling it (nn.MultiheadAttention's out_proj) would put a
    stale product into the trace as a constant; and the masks would be lost."""
    saved = []
    try:
        for _, mod, name in _pruned_layers(model):
            hooks = [h for h in mod._forward_pre_hooks.values()
                     if isinstance(h, prune.BasePruningMethod) and h._tensor_name == name]
            if len(hooks) != 1 or name not in mod.__dict__:
                continue  # not prune's own reparametrization: traced as it is
            saved.append((mod, mod.__class__, dict(mod._forward_pre_hooks), name, mod.__dict__[name]))
            for k in [k for k, h in mod._forward_pre_hooks.items() if h is hooks[0]]:
                del mod._forward_pre_hooks[k]
            del mod.__dict__[name]
            cls = mod.__class__
            mod.__class__ = type(cls.__name__, (cls,),
                                 {name: property(lambda self, h=hooks[0]: h.apply_mask(self))})
        yield
    finally:
        for mod, cls, hooks, name, value in reversed(saved):
            mod.__class__ = cls
            mod._forward_pre_hooks.clear()
            mod._forward_pre_hooks.update(hooks)
            mod.__dict__[name] = value


def _mha_batch_first(query, key, value, embed_dim_to_check, num_heads, in_proj_weight,
                     in_proj_bias, bias_k, bias_v, add_zero_attn, dropout_p, out_proj_weight,
                     out_proj_bias, training=True, key_padding_mask=None, need_weights=True,
                     attn_mask=None, use_separate_proj_weight=False, q_proj_weight=None,
                     k_proj_weight=None, v_proj_weight=None, static_k=None, static_v=None,
                     average_attn_weights=True):
    """F.multi_head_attention_forward's inference computation, traced in
    place of PyTorch's: the same projections, scaling, masks, softmax and
    output projection, but the heads as a dim of their own ([B, H, S, d])
    where PyTorch folds them into the batch ([B*H, S, d]), which a maskjit
    type cannot hold (its batch is a whole dim). The file is still checked
    against the model's own outputs."""
    why = None
    if bias_k is not None or bias_v is not None:
        why = "add_bias_kv=True"
    elif add_zero_attn:
        why = "add_zero_attn=True"
    elif static_k is not None or static_v is not None:
        why = "static_k or static_v"
    elif training and dropout_p > 0:
        why = "dropout in training mode"
    elif query.dim() != 3:
        why = f"an unbatched input of rank {query.dim()}"
    elif attn_mask is not None and not attn_mask.is_floating_point():
        why = "a bool attn_mask (give a float mask of 0 and -inf instead)"
    elif attn_mask is not None and attn_mask.dim() != 2:
        why = f"a {attn_mask.dim()}-D attn_mask (maskjit takes a 2-D [target, source] one)"
    elif key_padding_mask is not None and not key_padding_mask.is_floating_point():
        why = "a bool key_padding_mask (give a float mask of 0 and -inf instead)"
    elif key_padding_mask is not None and attn_mask is not None:
        why = "both attn_mask and key_padding_mask"
    if why:
        raise ExportError(f"unsupported: nn.MultiheadAttention with {why}")
    tgt_len, bsz, embed_dim = query.shape
    head_dim = embed_dim_to_check // num_heads  # a Python int: the scale is a constant
    # nn.MultiheadAttention made its batch-first inputs seq-first; back to
    # batch first before the projections (maskjit's simplify pass removes
    # the two transposes)
    q_in = query.transpose(0, 1)
    k_in = q_in if key is query else key.transpose(0, 1)
    v_in = k_in if value is key else value.transpose(0, 1)
    if not use_separate_proj_weight:
        # the packed [3E, E] projection as three [E, E] ones (row slices of
        # the weight, which frozen mode folds): each output element is the
        # same dot product, and no slices of a [B, S, 3E] result are copied
        w_q, w_k, w_v = in_proj_weight.chunk(3)
        b_q, b_k, b_v = (None, None, None) if in_proj_bias is None else in_proj_bias.chunk(3)
        q, k, v = F.linear(q_in, w_q, b_q), F.linear(k_in, w_k, b_k), F.linear(v_in, w_v, b_v)
    else:
        b_q, b_k, b_v = (None, None, None) if in_proj_bias is None else in_proj_bias.chunk(3)
        q, k, v = F._in_projection(q_in, k_in, v_in, q_proj_weight, k_proj_weight,
                                   v_proj_weight, b_q, b_k, b_v)
    src_len = k.shape[1]
    # [B, S, E] -> [B, H, S, d]
    q = q.reshape(bsz, tgt_len, num_heads, head_dim).transpose(1, 2)
    k = k.reshape(bsz, src_len, num_heads, head_dim).transpose(1, 2)
    v = v.reshape(bsz, src_len, num_heads, head_dim).transpose(1, 2)
    weights = torch.matmul(q / math.sqrt(head_dim), k.transpose(-2, -1))
    if attn_mask is not None:
        weights = weights + attn_mask
    if key_padding_mask is not None:
        weights = weights + key_padding_mask.reshape(bsz, 1, 1, src_len)
    weights = F.softmax(weights, dim=-1)
    out = torch.matmul(weights, v).transpose(1, 2).reshape(bsz, tgt_len, embed_dim_to_check)
    out = F.linear(out, out_proj_weight, out_proj_bias).transpose(0, 1)
    if not need_weights:
        return out, None
    return out, weights.sum(dim=1) / num_heads if average_attn_weights else weights


@contextlib.contextmanager
def _traceable_attention():
    """nn.MultiheadAttention (and the transformer layers built on it) calls
    F.multi_head_attention_forward at call time: while tracing, that is
    _mha_batch_first."""
    saved = F.multi_head_attention_forward
    F.multi_head_attention_forward = _mha_batch_first
    try:
        yield
    finally:
        F.multi_head_attention_forward = saved


def _prune_renames(model):
    """Spec files spell a prune'd weight as maskjit's parametrized keys:
    {"a.weight_orig": "a.parametrizations.weight.original", "a.weight_mask": ""}."""
    out = {}
    for path, mod, name in _pruned_layers(model):
        prefix = path + "." if path else ""
        if name != "weight" or not isinstance(mod, nn.Linear):
            raise ExportError(f"{prefix}{name}: pruned {type(mod).__name__}.{name}; a spec export "
                              "holds Linear weight masks only (export without spec=)")
        out[prefix + "weight_orig"] = prefix + "parametrizations.weight.original"
        out[prefix + "weight_mask"] = ""
    return out


def _prune_masks(model):
    out = {}
    _prune_renames(model)  # refuses what a spec file cannot hold
    for path, mod, _ in _pruned_layers(model):
        key = (path + "." if path else "") + "parametrizations.weight.0.mask"
        out[key] = (mod.weight_mask.detach().to(torch.float32).contiguous(), False)
    return out


# ---- export ------------------------------------------------------------------

def _other_batches(batch, batches):
    """The extra batch sizes, each distinct from the example's and each other."""
    out = []
    for b in batches:
        if int(b) < 1:
            raise ExportError(f"batch size {b} must be >= 1")
        b = int(b)
        while b == batch or b in out:
            b += 1
        out.append(b)
    return out


def _as_tuple(example_inputs):
    xs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if not xs:
        raise ExportError("no example input")
    out = []
    for i, x in enumerate(xs):
        if not isinstance(x, torch.Tensor):
            raise ExportError(f"example input {i} is a {type(x).__name__}, not a tensor")
        if x.dtype != torch.float32:
            raise ExportError(f"example input {i} has dtype {x.dtype}; maskjit runs float32")
        if not 1 <= x.dim() <= MAX_RANK:
            raise ExportError(f"example input {i} has rank {x.dim()}; maskjit inputs have rank "
                              f"1-{MAX_RANK} with the batch first")
        if x.shape[0] != xs[0].shape[0]:
            raise ExportError(f"example inputs have batch sizes {xs[0].shape[0]} and {x.shape[0]}; "
                              "dim 0 of every input is the batch")
        out.append(x.detach().contiguous())
    return tuple(out)


def _outputs(y):
    ys = list(y) if isinstance(y, (tuple, list)) else [y]
    for i, t in enumerate(ys):
        if not isinstance(t, torch.Tensor):
            raise ExportError(f"the model's output {i} is a {type(t).__name__}, not a tensor")
    return [t.detach().to(torch.float32).contiguous() for t in ys]


def _names(base, n):
    return [base] if n == 1 else [f"{base}.{i}" for i in range(n)]


def _trace(model, inputs, check_sets=None):
    """torch.jit.trace. Without check_sets: refuses a trace torch warns may
    not generalise. With them: retraces at those inputs (torch's check_inputs)
    and refuses a graph that changes with them."""
    with warnings.catch_warnings(record=True) as caught, torch.enable_grad(), _traceable_attention():
        # with grad on: PyTorch's fused inference kernels of its transformer
        # modules (aten::_transformer_encoder_layer_fwd and the like) are
        # skipped for their plain ops, which maskjit has
        warnings.simplefilter("always")
        try:
            if check_sets:
                return torch.jit.trace(model, inputs, check_inputs=check_sets)
            traced = torch.jit.trace(model, inputs, check_trace=False)
        except torch.jit.TracingCheckError as e:
            first = [l.strip() for l in str(e).strip().split("\n") if l.strip()]
            raise ExportError("the traced graph changes with the input (torch.jit.trace's check "
                              "at the other batch sizes): " + " ".join(first[:6])) from None
        except ExportError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure of tracing is the reason
            raise ExportError(f"torch.jit.trace failed: {type(e).__name__}: {e}") from None
    for w in caught:
        # PyTorch's own code (and FakeStructuredSparsity here) warns on shape
        # asserts of params; what it cannot see in the user's code is the
        # real risk, and retracing at other batch sizes checks the rest.
        # A tensor turned into a Python number (`/ math.sqrt(d)` with d from
        # x.shape) is a constant of the trace: the retrace at other batch
        # sizes, on other random inputs, refuses it if it came from the
        # batch or the data. A Python bool decides control flow, which the
        # retrace may not reach: refused here.
        where = os.path.abspath(w.filename)
        number = re.match(r"Converting a tensor to a Python (float|integer|index|number)", str(w.message))
        if issubclass(w.category, torch.jit.TracerWarning) and not number and \
                not where.startswith(_TORCH_DIR + os.sep) and where != os.path.abspath(__file__):
            raise ExportError(f"the trace may not generalise to other inputs: "
                              f"{os.path.basename(w.filename)}:{w.lineno}: {w.message}")
    return traced


def export(model, example_inputs, path, spec=None, batches=(1, 5), seed=0,
           generator="tools/export_torch.py", maskjit="auto", extra_metadata=None, log=print,
           intermediates=False):
    """Exports `model` (any nn.Module; run in eval mode) to `path` and checks it.

    Without spec: a maskjit trace file (`maskjit trace -o` format) recorded
    with torch.jit.trace. With spec: the spec file `maskjit` rebuilds from the
    spec string. Either way the written file is read back and compared with
    the model at the example's batch and at `batches`, then run through
    `maskjit check` when the binary is found (maskjit="auto", a path, or
    None to skip); a file that fails is not written. Raises ExportError with
    the reason. Returns the dict of tensors written.

    intermediates=True (trace files only) also stores PyTorch's value of every
    op node of the graph for each stored input, so that `maskjit check` can
    name the first node where maskjit parts from PyTorch: node %17's value on
    "input<suffix>" (suffix "" or ".batchN") is "maskjit.node.17<suffix>",
    computed by PyTorch's ops evaluating the exported graph (the evaluation
    that validates the file against the model's outputs); the metadata gains
    "maskjit.sources" (JSON: "%17" -> "model.py:52")."""
    if spec is not None:
        if intermediates:
            raise ExportError("intermediates=True needs a trace export (without spec=)")
        x = example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs
        return _export_spec(model, _as_tuple(x)[0], path, spec, batches, seed, generator,
                            maskjit, extra_metadata, log)
    inputs = _as_tuple(example_inputs)
    batch = inputs[0].shape[0]
    gen = torch.Generator().manual_seed(seed)
    sets = [(inputs, batch)] + [
        (tuple(torch.randn((b,) + tuple(x.shape[1:]), generator=gen) for x in inputs), b)
        for b in _other_batches(batch, batches)]
    was_training = model.training
    model.eval()
    try:
        # with grad on, as the trace: PyTorch's fused inference paths of its
        # transformer modules (taken under no_grad) give padded positions
        # other values than the modules' own math, which the graph computes
        with torch.enable_grad(), _pruned_as_properties(model):
            try:
                expected = [_outputs(model(*inputs))]
            except ExportError:
                raise
            except Exception as e:  # noqa: BLE001 - the model's own failure is the reason
                hint = ""
                if any(isinstance(m, nn.Embedding) for m in model.modules()):
                    hint = ("; nn.Embedding takes integer indices, and maskjit's inputs are float32: "
                            "export the model from the embedding's output on")
                shapes = ", ".join(_shape_str(tuple(x.shape)) for x in inputs)
                raise ExportError(f"the model fails on the example input ({shapes}): "
                                  f"{type(e).__name__}: {e}{hint}") from None
            traced = _trace(model, inputs)
            state = {k: v for k, v in model.state_dict().items()}
            try:
                text, graph_tensors, (origins, sources), out_shapes = _translate(
                    model, traced, inputs, _names("input", len(inputs)), state)
            except ExportError as e:
                seq_first = [p for p, m in model.named_modules()
                             if isinstance(m, nn.MultiheadAttention) and not m.batch_first]
                if not seq_first:
                    raise
                raise ExportError(f"{e}; note: {seq_first[0] or 'the model'} has batch_first=False, "
                                  "so its inputs are [sequence, batch, ...], but maskjit's batch is "
                                  "dim 0 of every input: build it with batch_first=True (the same "
                                  "weights) to export it") from None
            for xs, b in sets[1:]:
                try:
                    expected.append(_outputs(model(*xs)))
                except Exception as e:  # noqa: BLE001 - the model's own failure is the reason
                    raise ExportError(f"the model fails on a random input at batch {b}: "
                                      f"{type(e).__name__}: {e}") from None
            try:
                _trace(model, inputs, [xs for xs, _ in sets[1:]])
            except ExportError as e:
                # torch's check compares its graphs node by node, and flags
                # modules that read a child's parameters before calling it
                # (nn.TransformerEncoderLayer) for the order of those reads;
                # what maskjit needs is that the graph it gets does not change
                for xs, b in sets[1:]:
                    other = _translate(model, _trace(model, xs), xs, _names("input", len(xs)), state)[0]
                    if other != text:
                        raise e from None
    finally:
        model.train(was_training)
    if len(out_shapes) != len(expected[0]):
        raise ExportError(f"the graph returns {len(out_shapes)} tensors, the model "
                          f"{len(expected[0])}")
    tensors, skipped = {}, []
    for key, value in state.items():
        if value.is_floating_point():
            tensors[key] = value.detach().to(torch.float32).contiguous()
        else:
            skipped.append(key)  # maskjit reads float tensors; the graph does not use these
    tensors.update(graph_tensors)
    in_names, out_names = _names("input", len(inputs)), _names("expected", len(expected[0]))
    for (xs, b), ys in zip(sets, expected):
        suffix = "" if b == batch else f".batch{b}"
        for name, t in list(zip(in_names, xs)) + list(zip(out_names, ys)):
            if name + suffix in tensors:
                raise ExportError(f"the model has a tensor named {name + suffix!r}, which the "
                                  "file uses for its checks")
            tensors[name + suffix] = t.to(torch.float32).contiguous()
    if intermediates:
        if any(k.startswith(NODE_PREFIX) for k in tensors):
            raise ExportError(f"the model has a tensor named {NODE_PREFIX}*, which the file uses "
                              "for node values")
        for xs, b in sets:
            tensors.update(_node_values(text, tensors, list(xs),
                                        "" if b == batch else f".batch{b}"))
    metadata = {"maskjit.format": "trace-v1", "maskjit.ir": text, "maskjit.generator": generator,
                "torch.version": torch.__version__,
                "maskjit.batches": ",".join(str(b) for _, b in sets),
                "maskjit.origins": json.dumps(origins, separators=(",", ":"))}
    if skipped:
        metadata["maskjit.skipped"] = ",".join(skipped)
    if intermediates:
        metadata["maskjit.sources"] = json.dumps(sources, separators=(",", ":"))
    if extra_metadata:
        metadata.update(extra_metadata)

    def validate(file_tensors, file_meta):
        for xs, b in sets:
            suffix = "" if b == batch else f".batch{b}"
            got = reference_run(file_meta["maskjit.ir"], file_tensors,
                                [file_tensors[n + suffix] for n in in_names])
            _compare(got, [file_tensors[n + suffix] for n in out_names],
                     f"the written graph at batch {b}")

    _write_checked(path, tensors, metadata, validate, maskjit, log)
    return tensors


def _export_spec(model, x, path, spec, batches, seed, generator, maskjit, extra_metadata, log):
    """A spec file, validated by rebuilding the spec's model in PyTorch from
    the file and comparing it with `model`: a wrong spec is refused here."""
    try:
        tensors, metadata = _spec_tensors(model, x, spec, generator, extra_metadata)
        build_model(spec)
    except ExportError:
        raise
    except ValueError as e:
        raise ExportError(str(e)) from None
    gen = torch.Generator().manual_seed(seed)
    extra = [torch.randn((b,) + tuple(x.shape[1:]), generator=gen)
             for b in _other_batches(x.shape[0], batches)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            want = [_outputs(model(xb)) for xb in extra]
    finally:
        model.train(was_training)

    def validate(file_tensors, file_meta):
        rebuilt = _rebuild_spec(file_meta["maskjit.model"], file_tensors, file_meta)
        with torch.no_grad():
            for xb, yb in [(file_tensors["input"], [file_tensors["expected"]])] + \
                    list(zip(extra, want)):
                _compare(_outputs(rebuilt(xb)), yb,
                         f"spec {spec!r} rebuilt from the file, at batch {xb.shape[0]}")

    _write_checked(path, tensors, metadata, validate, maskjit, log)
    return tensors


def _rebuild_spec(spec, tensors, metadata):
    """The PyTorch model maskjit would build from a spec file: the spec's
    layers, the file's masks as parametrizations, its tensors loaded strictly."""
    model = build_model(spec)
    structured = set(filter(None, metadata.get("maskjit.structured", "").split(",")))
    weights = {}
    for key, t in tensors.items():
        if key in ("input", "expected"):
            continue
        if not key.endswith(MASK_SUFFIX):
            weights[key] = t
            continue
        path = key[:-len(MASK_SUFFIX)]
        try:
            lin = model.get_submodule(path)
        except AttributeError:
            raise ExportError(f"spec {spec!r} has no layer '{path}' (the model's mask {key})") from None
        if not isinstance(lin, nn.Linear):
            raise ExportError(f"spec {spec!r}: '{path}' is a {type(lin).__name__}, not a Linear")
        want = (lin.out_features,) if key in structured else tuple(lin.weight.shape)
        if tuple(t.shape) != want:
            raise ExportError(f"spec {spec!r}: mask {key} has shape {list(t.shape)}, the spec's "
                              f"layer needs {list(want)}")
        p = FakeStructuredSparsity(t.clone()) if key in structured else FakeSparsity(t.clone())
        parametrize.register_parametrization(lin, "weight", p)
    have = set(k for k in model.state_dict() if not k.endswith(MASK_SUFFIX))
    missing = sorted(have - set(weights))
    unexpected = sorted(set(weights) - have)
    if missing or unexpected:
        raise ExportError(f"spec {spec!r} does not describe this model: " + "; ".join(
            ([f"the spec needs {', '.join(missing)}, which the model lacks"] if missing else []) +
            ([f"the model has {', '.join(unexpected)}, which the spec lacks"] if unexpected else [])))
    try:
        model.load_state_dict(weights, strict=False)
    except RuntimeError as e:
        raise ExportError(f"spec {spec!r} does not describe this model: {e}") from None
    return model.eval()


def load_factory(spec):
    """'FILE.py:FACTORY' -> the module FACTORY() returns (FILE's directory on sys.path)."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise ExportError(f"--module {spec!r}: expected FILE.py:FACTORY")
    if not os.path.isfile(path):
        raise ExportError(f"--module {spec!r}: no file {path}")
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    mspec = importlib.util.spec_from_file_location("maskjit_user_model", path)
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    factory = getattr(mod, name, None)
    if not callable(factory):
        raise ExportError(f"--module {spec!r}: {path} has no callable {name}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise ExportError(f"--module {spec!r}: {name}() returned a {type(model).__name__}, "
                          "not an nn.Module")
    return model


def parse_shape(text):
    """'4x16' or '4,16' -> (4, 16)."""
    try:
        dims = tuple(int(d) for d in re.split(r"[x,]", text))
    except ValueError:
        dims = ()
    if not dims or min(dims) < 1:
        raise ExportError(f"--inputs {text!r}: expected positive sizes like 4x16")
    return dims


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--module", metavar="FILE.py:FACTORY",
                     help="export the nn.Module FACTORY() returns, as a trace file")
    src.add_argument("--spec", help="mut | mut-nobias | mlp:IN,...,OUT[:act=..][:bias=0|1]: "
                     "build, prune and export that model as a spec file")
    ap.add_argument("--inputs", nargs="+", metavar="SHAPE",
                    help="with --module: shape of each example input, batch first (4x16)")
    ap.add_argument("--batches", default="1,5",
                    help="other batch sizes whose outputs the file stores (default 1,5)")
    ap.add_argument("--intermediates", action="store_true",
                    help="--module: also store PyTorch's value of every graph node, so that "
                    "`maskjit check` names the first node that diverges")
    ap.add_argument("--density", type=float, default=0.5, help="--spec: fraction of weights kept (0..1)")
    ap.add_argument("--batch", type=int, default=4, help="--spec: batch of the example input")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sparsifier", action="store_true", help="--spec: WeightNormSparsifier masks, (1,4) blocks")
    ap.add_argument("--structured", action="store_true", help="--spec: FakeStructuredSparsity row masks")
    ap.add_argument("--maskjit", metavar="PATH", help="maskjit binary for the check (default: found)")
    ap.add_argument("--no-maskjit-check", action="store_true",
                    help="check against PyTorch only, not with `maskjit check`")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args(argv)
    # before the export's work: where the file goes must be able to take it
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if os.path.isdir(args.output):
        ap.error(f"-o {args.output}: is a directory (give a file name)")
    if not os.path.isdir(out_dir):
        ap.error(f"-o {args.output}: no directory {out_dir}")
    maskjit = None if args.no_maskjit_check else (args.maskjit or "auto")
    try:
        batches = [int(b) for b in args.batches.split(",") if b]
    except ValueError:
        ap.error(f"--batches {args.batches!r}: expected sizes like 1,5")
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    if args.intermediates and args.spec:
        ap.error("--intermediates needs --module")
    try:
        if args.module:
            if not args.inputs:
                ap.error("--module needs --inputs SHAPE [SHAPE ...]")
            shapes = [parse_shape(s) for s in args.inputs]  # before running the user's file
            model = load_factory(args.module)
            xs = tuple(torch.randn(shape, generator=gen) for shape in shapes)
            tensors = export(model, xs, args.output, batches=batches, seed=args.seed,
                             maskjit=maskjit, intermediates=args.intermediates)
            print(f"wrote {args.output}: {len(tensors)} tensors, a maskjit trace of {args.module}")
            return 0
        if not 0.0 <= args.density <= 1.0:
            ap.error(f"--density {args.density} is outside [0, 1]")
        if args.batch < 1:
            ap.error(f"--batch {args.batch} must be >= 1")
        if args.sparsifier and args.structured:
            ap.error("--sparsifier and --structured exclude each other")
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
        tensors = export(model, x, args.output, spec=args.spec, batches=batches, seed=args.seed,
                         maskjit=maskjit)
        print(f"wrote {args.output}: {len(tensors)} tensors, spec {args.spec}")
        return 0
    except ExportError as e:
        print(f"export_torch.py: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
