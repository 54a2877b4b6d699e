"""The AudioSet-pretrained mn04 audio CNN (MobileNetV3-Large layout at width 0.4),
written here from its specification so that its parameter names match the published
state dict, plus the embedder that feeds it our numpy log-mel.

Input: log-mel (batch, 1, 128, frames) of 32 kHz audio. Outputs: the 384-d embedding
(global average of the last feature map) and 527 AudioSet logits.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn

from .mn04_spec import BN_EPS, EMBED_DIM, MN04_BLOCKS, N_AUDIOSET  # noqa: F401



def _act(name: str) -> nn.Module:
    return nn.ReLU(inplace=True) if name == "RE" else nn.Hardswish(inplace=True)


def conv_bn_act(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: str | None = None) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout, eps=BN_EPS)]
    if act:
        layers.append(_act(act))
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """Channel squeeze-excitation: mean over (freq, time) -> fc1 -> ReLU -> fc2 ->
    sigmoid -> scale each channel."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, squeeze)
        self.fc2 = nn.Linear(squeeze, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3))
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))
        return x * s[:, :, None, None]


class ConcurrentSE(nn.Module):
    """Holds the SE layer(s) under the published key path ``conc_se_layers.0``."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.conc_se_layers = nn.ModuleList([SqueezeExcite(channels, squeeze)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conc_se_layers[0](x)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, k: int, exp: int, cout: int, se: int, act: str, stride: int):
        super().__init__()
        layers: List[nn.Module] = []
        if exp != cin:
            layers.append(conv_bn_act(cin, exp, 1, act=act))
        layers.append(conv_bn_act(exp, exp, k, stride, groups=exp, act=act))
        if se:
            layers.append(ConcurrentSE(exp, se))
        layers.append(conv_bn_act(exp, cout, 1))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MN04(nn.Module):
    """mn04: features.0 (3x3 stride-2 stem), 15 inverted residual blocks, features.16
    (1x1 to 384), global average pool; classifier 384 -> 512 -> 527."""

    def __init__(self):
        super().__init__()
        feats: List[nn.Module] = [conv_bn_act(1, 8, 3, 2, act="HS")]
        feats += [InvertedResidual(*b) for b in MN04_BLOCKS]
        feats.append(conv_bn_act(64, EMBED_DIM, 1, act="HS"))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(EMBED_DIM, 512), nn.Hardswish(inplace=True),
            nn.Dropout(0.2), nn.Linear(512, N_AUDIOSET))

    def forward(self, mel: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """mel (B, 1, 128, T) -> (embedding (B, 384), logits (B, 527))."""
        f = self.features(mel)
        emb = f.mean(dim=(2, 3))
        logits = self.classifier(f)
        return emb, logits


class MN04Embedding(nn.Module):
    """The embedding alone (no AudioSet classifier): what the daemon needs."""

    def __init__(self, features: nn.Module):
        super().__init__()
        self.features = features

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.features(mel).mean(dim=(2, 3))


# ----------------------------------------------------------------------------- embedder

import copy  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

from ..audio.frontend import MN04_MEL, log_mel  # noqa: E402
from .base import EmbedderInfo, MelEmbedder  # noqa: E402
from .weights import MN04_WEIGHTS, WeightsError, resolve  # noqa: E402


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy with every Conv2d + BatchNorm2d pair folded into one conv (eval only)."""
    model = copy.deepcopy(model).eval()
    for mod in model.modules():
        if isinstance(mod, nn.Sequential):
            for i in range(len(mod) - 1):
                if isinstance(mod[i], nn.Conv2d) and isinstance(mod[i + 1], nn.BatchNorm2d):
                    mod[i] = torch.nn.utils.fusion.fuse_conv_bn_eval(mod[i], mod[i + 1])
                    mod[i + 1] = nn.Identity()
    return model


class MN04Embedder(MelEmbedder):
    """mn04 on our numpy log-mel: 384-d embeddings (and 527 AudioSet logits).

    Weights are resolved (explicit path, $EDGEQMOE_WEIGHTS_DIR, user cache), checked
    against their sha256 and loaded with ``weights_only=True``. Inference runs on
    ``threads`` torch threads (one by default: two were slower and noisier on a
    2-core machine), BatchNorm folded into the convolutions and the graph frozen
    with TorchScript where available (eager otherwise).
    """

    info = EmbedderInfo(id="mn04", version="1", sample_rate=MN04_MEL.sample_rate, dim=EMBED_DIM)
    mel_spec = MN04_MEL
    runtime = "torch-fp32"

    def __init__(self, weights: str | None = None, threads: int = 1, script: bool = True):
        path = resolve(MN04_WEIGHTS, weights)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a file with the right sha256 that torch cannot read
            raise WeightsError(f"mn04 weights at {path} could not be loaded: {e}") from None
        if threads:
            torch.set_num_threads(threads)
        model = MN04()
        model.load_state_dict(state, strict=True)
        self.weights_path = str(path)
        self.model = fold_batchnorm(model)
        self.embedding_model = MN04Embedding(self.model.features)
        self.scripted = False
        if script:
            try:
                with warnings.catch_warnings(), torch.inference_mode():
                    warnings.simplefilter("ignore")
                    self.model = torch.jit.freeze(torch.jit.script(self.model))
                    self.embedding_model = torch.jit.freeze(torch.jit.script(self.embedding_model.eval()))
                self.scripted = True
            except Exception:  # TorchScript gone or failing: the eager model is the same maths
                pass

    def forward_mel(self, mel: np.ndarray):
        """mel (B, 128, T) -> (embeddings (B, 384), logits (B, 527)) as numpy."""
        with torch.inference_mode():
            e, l = self.model(torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32))[:, None])
        return e.numpy(), l.numpy()

    def _embed_batch(self, waves: np.ndarray) -> np.ndarray:
        mel = log_mel(waves, MN04_MEL, variant=self.front_end)
        with torch.inference_mode():
            return self.embedding_model(torch.from_numpy(mel)[:, None]).numpy()

