"""Reading a torch checkpoint (``torch.save`` zip format) into numpy, without torch.

The zip holds ``<name>/data.pkl`` (a pickle of the state dict, whose tensors point by
key at raw little-endian storages ``<name>/data/<key>``). The unpickler here accepts only
what a plain state dict needs (``collections.OrderedDict``, torch's typed storage names
and ``torch._utils._rebuild_tensor_v2``/``_rebuild_parameter``); anything else in the
pickle (code, other classes) is refused, so a hostile file cannot run code.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from typing import Dict

import numpy as np

_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
           "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
           "ByteStorage": np.uint8, "BoolStorage": np.bool_}


#: the largest storage read (an embedder's weights are a few MB; a zip member that
#: expands beyond this is damaged or hostile)
MAX_STORAGE_BYTES = 1 << 30


class CheckpointError(Exception):
    """A file that is not a plain torch state dict; the message says what was found."""


class _Storage:
    __slots__ = ("dtype", "data")

    def __init__(self, dtype, data: bytes):
        self.dtype, self.data = dtype, data


def _rebuild_tensor(storage: _Storage, offset, size, stride, *_):
    """A tensor of ``size`` and ``stride`` (in elements) at ``offset`` of its storage,
    checked to lie inside the storage: a crafted file cannot make it read past it."""
    base = np.frombuffer(storage.data, dtype=storage.dtype)
    size, stride = tuple(size), tuple(stride)
    if not (isinstance(offset, int) and len(size) == len(stride)
            and all(isinstance(v, int) for v in size + stride)):
        raise CheckpointError("a tensor's offset, size and stride are not integers of one length")
    if offset < 0 or any(n < 0 for n in size) or any(s < 0 for s in stride):
        raise CheckpointError(f"a tensor with a negative offset, size or stride ({offset}, {size}, {stride})")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= len(base):
        raise CheckpointError(f"a tensor of size {list(size)} at offset {offset} reaches element {last} of a "
                              f"storage of {len(base)}: the file is damaged or crafted")
    if not size:
        return np.array(base[offset])
    item = base.itemsize
    view = np.lib.stride_tricks.as_strided(base[offset:], shape=size, strides=tuple(s * item for s in stride))
    return np.array(view)  # an owned, contiguous copy


def _rebuild_parameter(data, requires_grad, backward_hooks, *_):
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, zf: zipfile.ZipFile, prefix: str):
        super().__init__(f)
        self.zf, self.prefix = zf, prefix

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in _DTYPES:
            return name
        raise CheckpointError(f"the checkpoint's pickle asks for {module}.{name}, which a plain state dict of "
                              "tensors never does; refusing to load it")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            raise CheckpointError(f"unknown persistent id {pid!r} in the checkpoint")
        kind, key = pid[1], str(pid[2])
        dtype = _DTYPES.get(kind if isinstance(kind, str) else getattr(kind, "__name__", ""))
        if dtype is None:
            raise CheckpointError(f"storage type {kind!r} is not supported")
        name = f"{self.prefix}/data/{key}"
        try:
            size = self.zf.getinfo(name).file_size
            if size > MAX_STORAGE_BYTES:
                raise CheckpointError(f"the storage {key!r} holds {size} bytes, more than any embedder's "
                                      f"({MAX_STORAGE_BYTES} at most); refusing to load it")
            data = self.zf.read(name)
            if len(data) % np.dtype(dtype).itemsize:
                raise CheckpointError(f"the storage {key!r} ({len(data)} bytes) is not a whole number of "
                                      f"{np.dtype(dtype).name} elements")
        except KeyError:
            raise CheckpointError(f"the checkpoint lacks the storage {key!r}") from None
        return _Storage(dtype, data)


def read_state_dict(path) -> Dict[str, np.ndarray]:
    """name -> numpy array of a ``torch.save``d state dict."""
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: not a torch checkpoint in zip format ({e})") from None
    with zf:
        pkl = [n for n in zf.namelist() if n.endswith("/data.pkl")]
        if len(pkl) != 1:
            raise CheckpointError(f"{path}: expected one data.pkl in the zip, found {len(pkl)}")
        prefix = pkl[0][: -len("/data.pkl")]
        with zf.open(pkl[0]) as f:
            try:
                state = _Unpickler(f, zf, prefix).load()
            except CheckpointError:
                raise
            except Exception as e:  # a damaged pickle
                raise CheckpointError(f"{path}: cannot read its state dict ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return dict(state)
