"""Minimal safetensors writer/reader (json + struct), for maskjit's PyTorch scripts.

The `safetensors` Python package is not available here, and the format is
small: an 8-byte little-endian header length N, N bytes of UTF-8 JSON (padded
with spaces), then the raw little-endian tensor bytes. The JSON maps each
tensor name to {"dtype", "shape", "data_offsets": [begin, end]} relative to
the data section, plus an optional "__metadata__" of string -> string.

    from safetensors_io import save, load
    save("x.safetensors", {"w": torch.ones(2, 3)}, metadata={"k": "v"})
    tensors, metadata = load("x.safetensors")   # dict name -> torch.Tensor, in file order

Keys are written in the order given (maskjit's loader keeps file order).
"""
import json
import os
import struct
import tempfile

import numpy as np
import torch

# torch dtype -> (safetensors name, numpy little-endian dtype used for the bytes)
_DTYPES = {
    torch.float32: ("F32", "<f4"),
    torch.float16: ("F16", "<f2"),
    torch.bfloat16: ("BF16", "<u2"),  # numpy has no bfloat16: go through the raw bits
    torch.float64: ("F64", "<f8"),
    torch.int8: ("I8", "<i1"),
    torch.uint8: ("U8", "<u1"),
    torch.int16: ("I16", "<i2"),
    torch.int32: ("I32", "<i4"),
    torch.int64: ("I64", "<i8"),
    torch.bool: ("BOOL", "<u1"),
}
_BY_NAME = {name: (tdtype, npdtype) for tdtype, (name, npdtype) in _DTYPES.items()}


def _tensor_bytes(t):
    t = t.detach().cpu().contiguous()
    if t.dtype not in _DTYPES:
        raise ValueError(f"dtype {t.dtype} has no safetensors name here")
    name, npdtype = _DTYPES[t.dtype]
    if t.dtype == torch.bfloat16:
        arr = t.view(torch.int16).numpy().view(np.uint16)
    elif t.dtype == torch.bool:
        arr = t.to(torch.uint8).numpy()
    else:
        arr = t.numpy()
    return name, arr.astype(npdtype, copy=False).tobytes()


def dumps(tensors, metadata=None):
    """Returns the file's bytes. tensors: mapping name -> torch.Tensor (order kept)."""
    header = {}
    if metadata:
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"metadata must map str -> str, got {k!r}: {v!r}")
        header["__metadata__"] = dict(metadata)
    chunks = []
    offset = 0
    for key, t in tensors.items():
        if key == "__metadata__":
            raise ValueError("a tensor may not be named __metadata__")
        name, data = _tensor_bytes(t)
        header[key] = {"dtype": name, "shape": list(t.shape),
                       "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)  # data section 8-aligned
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def save(path, tensors, metadata=None):
    """Writes atomically (temp file in the same directory, then rename)."""
    blob = dumps(tensors, metadata)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".tmp.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def loads(blob):
    """Parses bytes: returns (dict name -> torch.Tensor in file order, metadata dict)."""
    if len(blob) < 8:
        raise ValueError("too short for a safetensors file")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        raise ValueError(f"header length {n} runs past the end ({len(blob)} bytes)")
    header = json.loads(blob[8:8 + n].decode("utf-8"))  # dicts keep JSON order
    data = blob[8 + n:]
    metadata = header.pop("__metadata__", {}) or {}
    out = {}
    for key, info in header.items():
        tdtype, npdtype = _BY_NAME[info["dtype"]]
        begin, end = info["data_offsets"]
        arr = np.frombuffer(data[begin:end], dtype=npdtype).copy()
        if tdtype == torch.bfloat16:
            t = torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
        elif tdtype == torch.bool:
            t = torch.from_numpy(arr).to(torch.bool)
        else:
            t = torch.from_numpy(arr.astype(arr.dtype.newbyteorder("=")))
        out[key] = t.reshape(info["shape"])
    return out, metadata


def load(path):
    with open(path, "rb") as f:
        return loads(f.read())
