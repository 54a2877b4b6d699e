"""mn04 without torch: the network as an ONNX graph, run by ONNX Runtime in fp32.

``build_model(state)`` writes the graph from the published state dict (read without
torch by ``ptfile``) with every BatchNorm folded into its convolution, in the layout of
``mn04_spec``: the stem, 15 inverted residual blocks (1x1 expansion, depthwise k x k
with its stride, squeeze-excitation as two 1x1 convolutions on the channel means,
1x1 projection, the residual), the 1x1 to 384, the global average (the embedding) and
the AudioSet classifier (384 -> 512 -> 527). ``convert(weights)`` writes it once to
the converted-embedder folder (``converted_dir``), named by the source's sha256, which
is also recorded in the file's metadata; ``MN04OnnxEmbedder`` runs it.

Measured (tests/test_mn04_onnx.py, docs/benchmarks.md): equal to the torch module within
cosine 0.9999 on real windows.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from ..audio.frontend import MN04_MEL
from .base import EmbedderInfo, MelEmbedder
from .mn04_spec import EMBED_DIM, MN04_BLOCKS, N_AUDIOSET, fold_bn
from .weights import MN04_WEIGHTS, WeightsError, resolve, sha256_of, user_cache

#: ONNX opset of the graph (ReduceMean takes its axes as an attribute up to 17)
OPSET = 17
CONVERTER_VERSION = "1"


def converted_dir() -> Path:
    """Where converted embedders go: $EDGEQMOE_CACHE_DIR, else the user cache."""
    env = os.environ.get("EDGEQMOE_CACHE_DIR")
    if env:
        return Path(env).expanduser() / "embedders"
    return user_cache() / "embedders"


def converted_path(sha256: str) -> Path:
    return converted_dir() / f"mn04-fp32-{sha256[:16]}-v{CONVERTER_VERSION}.onnx"


def _fold(state: Dict[str, np.ndarray], conv: str, bn: str):
    """Conv weight and BatchNorm (eval) -> folded (weight, bias), float32."""
    w, b = fold_bn(state, conv, bn)
    return w.astype(np.float32), b.astype(np.float32)


def build_model(state: Dict[str, np.ndarray], source_sha256: str = "") -> bytes:
    """The serialised ONNX model of mn04 from its state dict."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    counter = [0]

    def name(prefix: str) -> str:
        counter[0] += 1
        return f"{prefix}_{counter[0]}"

    def const(arr: np.ndarray, prefix: str) -> str:
        n = name(prefix)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), n))
        return n

    def conv(x: str, w: np.ndarray, b: np.ndarray, stride: int = 1, groups: int = 1) -> str:
        k = w.shape[-1]
        out = name("conv")
        nodes.append(helper.make_node("Conv", [x, const(w, "w"), const(b, "b")], [out], kernel_shape=[k, k],
                                      strides=[stride, stride], pads=[(k - 1) // 2] * 4, group=groups))
        return out

    def op(kind: str, *inputs: str, **attrs) -> str:
        out = name(kind.lower())
        nodes.append(helper.make_node(kind, list(inputs), [out], **attrs))
        return out

    def act(x: str, kind: Optional[str]) -> str:
        if kind is None:
            return x
        return op("Relu", x) if kind == "RE" else op("HardSwish", x)

    def conv_bn(x: str, key: str, stride: int = 1, groups: int = 1, a: Optional[str] = None) -> str:
        w, b = _fold(state, f"{key}.0", f"{key}.1")
        return act(conv(x, w, b, stride, groups), a)

    x = conv_bn("mel", "features.0", stride=2, a="HS")
    for i, (cin, _k, exp, cout, se, a, stride) in enumerate(MN04_BLOCKS, start=1):
        key, j, y = f"features.{i}.block", 0, x
        if exp != cin:
            y, j = conv_bn(y, f"{key}.{j}", a=a), j + 1
        y, j = conv_bn(y, f"{key}.{j}", stride=stride, groups=exp, a=a), j + 1
        if se:
            p = f"{key}.{j}.conc_se_layers.0"
            s = op("ReduceMean", y, axes=[2, 3], keepdims=1)
            w1, b1 = state[f"{p}.fc1.weight"], state[f"{p}.fc1.bias"]
            w2, b2 = state[f"{p}.fc2.weight"], state[f"{p}.fc2.bias"]
            s = op("Relu", conv(s, w1[:, :, None, None].astype(np.float32), b1.astype(np.float32)))
            s = op("Sigmoid", conv(s, w2[:, :, None, None].astype(np.float32), b2.astype(np.float32)))
            y, j = op("Mul", y, s), j + 1
        y = conv_bn(y, f"{key}.{j}")
        x = op("Add", x, y) if stride == 1 and cin == cout else y
    x = conv_bn(x, "features.16", a="HS")
    nodes.append(helper.make_node("ReduceMean", [x], ["embedding"], axes=[2, 3], keepdims=0))
    h = op("Gemm", "embedding", const(state["classifier.2.weight"].astype(np.float32), "fc"),
           const(state["classifier.2.bias"].astype(np.float32), "fcb"), transB=1)
    h = op("HardSwish", h)
    nodes.append(helper.make_node("Gemm", [h, const(state["classifier.5.weight"].astype(np.float32), "fc"),
                                           const(state["classifier.5.bias"].astype(np.float32), "fcb")],
                                  ["logits"], transB=1))
    graph = helper.make_graph(
        nodes, "mn04", [helper.make_tensor_value_info("mel", TensorProto.FLOAT, ["batch", 1, 128, "frames"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", EMBED_DIM]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", N_AUDIOSET])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgeqmoe",
                              producer_version=CONVERTER_VERSION)
    model.ir_version = 8
    helper.set_model_props(model, {"source": MN04_WEIGHTS.filename, "source_sha256": source_sha256,
                                   "converter": f"edgeqmoe mn04_onnx v{CONVERTER_VERSION}", "precision": "fp32"})
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _model_bytes(src: Path, digest: str) -> bytes:
    from .ptfile import CheckpointError, read_state_dict

    try:
        return build_model(read_state_dict(src), digest)
    except (CheckpointError, KeyError) as e:
        raise WeightsError(f"{src}: cannot convert it ({e})") from None


def convert(weights: Optional[str] = None, out: Optional[str] = None, data: Optional[bytes] = None) -> Path:
    """The pretrained weights (sha256 checked) -> the ONNX file; returns its path.
    Written to a temporary name and renamed, so a stop never leaves half a file."""
    src = resolve(MN04_WEIGHTS, weights)
    digest = sha256_of(src)
    path = Path(out) if out else converted_path(digest)
    data = data if data is not None else _model_bytes(src, digest)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise WeightsError(f"cannot write the converted embedder to {path} ({e}); set EDGEQMOE_CACHE_DIR to a "
                           "writable folder") from None
    return path


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
        import onnx  # noqa: F401
    except ImportError:
        return False
    return True


class MN04OnnxEmbedder(MelEmbedder):
    """mn04 on ONNX Runtime, fp32, on our numpy log-mel: the same interface and the same
    numbers (cosine >= 0.9999) as the torch module, without torch."""

    info = EmbedderInfo(id="mn04", version="1", sample_rate=MN04_MEL.sample_rate, dim=EMBED_DIM)
    mel_spec = MN04_MEL
    runtime = "onnxruntime-fp32"

    def __init__(self, weights: Optional[str] = None, threads: int = 1, say=None):
        import onnxruntime as ort

        src = resolve(MN04_WEIGHTS, weights)
        digest = sha256_of(src)
        path = converted_path(digest)
        self.converted = not path.is_file()
        model: object = str(path)
        if self.converted:  # first start with these weights: under a second, said once by the caller
            data = _model_bytes(src, digest)
            try:
                convert(str(src), str(path), data)
                if say is not None:
                    say(f"converting the mn04 weights {src} for ONNX Runtime (once) into {path}")
            except WeightsError as e:  # nowhere to keep it: convert at every start instead, and say so
                model, path = data, None
                if say is not None:
                    say(f"{e}; converting the mn04 weights in memory at every start until then")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads sleep: power
        try:
            self.session = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # a damaged converted file: say where, it is rebuilt once removed
            raise WeightsError(f"the converted embedder {path} cannot be loaded ({e}); delete it and start again "
                               "to convert anew.") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("source_sha256") != digest:
            raise WeightsError(f"{path} was converted from other weights (sha256 {meta.get('source_sha256')!r}); "
                               "delete it and start again.")
        self.weights_path, self.model_path = str(src), (str(path) if path is not None else None)

    def forward_mel(self, mel: np.ndarray):
        """mel (B, 128, T) -> (embeddings (B, 384), logits (B, 527))."""
        x = np.ascontiguousarray(mel, dtype=np.float32)[:, None]
        e, lg = self.session.run(["embedding", "logits"], {"mel": x})
        return e, lg


