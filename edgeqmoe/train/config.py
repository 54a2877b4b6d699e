"""Training configuration: the paper's hyperparameters as defaults, every one
settable in a YAML file (``edgeqmoe train CONFIG``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

from ..settings import build, field, load_yaml
from .models import EXPERT_KINDS


def expert_kind(e) -> str:
    """Accepts the paper's shorthand: 4 -> q4, 16 -> q16, 'bitnet', 'popcount' -> popcount-ptq."""
    s = str(e).strip().lower()
    if s.isdigit():
        s = f"q{s}"
    return {"popcount": "popcount-ptq", "ptq": "q8-ptq", "int8-ptq": "q8-ptq"}.get(s, s)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = field("", doc="dataset path (metadata CSV or folder); embedded on demand")
    embedder: str = field("mn04", choices=("mn04", "logmel-stats"))
    weights: Optional[str] = field(None, doc="embedder weights path")
    cache: str = field("cache", doc="embedding cache folder")
    window: Optional[float] = field(1.0, unit="s", range=(0.1, 30.0), doc="window length; null: whole clips")
    hop: Optional[float] = field(0.5, unit="s", range=(0.05, 30.0))
    folds: Tuple[int, ...] = field((), doc="dataset folds to use (empty: all)")


@dataclass(frozen=True)
class ModelConfig:
    kind: str = field("head", choices=("head", "moe"))
    expert: Union[str, int] = field("q4", doc="expert kind of a single head (4 means q4)")
    experts: Tuple[Union[str, int], ...] = field(("bitnet", "q4", "q8", "q16"), doc="expert kinds of a MoE")
    hidden: Tuple[int, ...] = field((640, 320))
    dropout: float = field(0.195, range=(0.0, 0.9))
    seeds: int = field(1, range=(1, 32), doc="heads: a seed ensemble of this many members, trained alike on the same "
                                             "rows (seeds train.seed, +1, ...), probabilities averaged, one bundle")
    top_k: int = field(2, range=(1, 16))
    temperature: float = field(1.0, range=(1e-3, 100.0))
    curiosity: bool = field(False, doc="MoE-C: Bayesian router and curiosity re-weighting (Eq. 7-8)")
    curiosity_alpha: float = field(1.0, range=(0.0, 100.0))
    mc_samples: int = field(10, range=(1, 100))
    router_dropout: float = field(0.2, range=(0.0, 0.9))

    @property
    def expert_kinds(self) -> Tuple[str, ...]:
        return tuple(expert_kind(e) for e in self.experts)

    def validate(self):
        for i, e in enumerate([self.expert] + list(self.experts)):
            if expert_kind(e) not in EXPERT_KINDS:
                key = "expert" if i == 0 else f"experts[{i - 1}]"
                return key, f"{e!r} is not an expert kind; choose one of {', '.join(EXPERT_KINDS)}"
        if self.kind == "moe" and self.seeds != 1:
            return "seeds", "a seed ensemble is of heads (kind: head); a mixture trains one model, so use seeds: 1"
        return None


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = field("auto", choices=("auto", "adamw", "adam"), doc="auto: AdamW for heads, Adam for MoE")
    lr: Optional[float] = field(None, range=(1e-7, 1.0), doc="default 5.79e-4 (head) / 1e-3 (MoE)")
    weight_decay: Optional[float] = field(None, range=(0.0, 1.0), doc="default 5.13e-3 (head) / 1e-4 (MoE)")
    batch_size: Optional[int] = field(None, range=(1, 65536), doc="default 64 (head) / 256 (MoE)")
    patience: Optional[int] = field(None, range=(1, 10000), doc="epochs; default 19 (head) / 30 (MoE)")
    max_epochs: int = field(300, range=(1, 100000))
    grad_clip: float = field(1.0, range=(0.0, 1e6))
    class_weighted: bool = True
    load_balance: float = field(1e-3, range=(0.0, 10.0))
    val_fraction: float = field(0.15, range=(0.0, 0.9), doc="share of training recordings held out for early stopping")
    seed: int = 0
    threads: int = field(1, range=(1, 256))


@dataclass(frozen=True)
class Config:
    name: str = "model"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cv: str = field("folds", choices=("5", "folds", "none"), doc="5: stratified shuffled 5-fold; folds: the dataset's")
    out: str = field("runs", doc="output folder")

    def resolved_train(self) -> dict:
        moe = self.model.kind == "moe"
        t = self.train
        return {
            "optimizer": t.optimizer if t.optimizer != "auto" else ("adam" if moe else "adamw"),
            "lr": t.lr if t.lr is not None else (1e-3 if moe else 5.79e-4),
            "weight_decay": t.weight_decay if t.weight_decay is not None else (1e-4 if moe else 5.13e-3),
            "batch_size": t.batch_size if t.batch_size is not None else (256 if moe else 64),
            "patience": t.patience if t.patience is not None else (30 if moe else 19),
        }


def load_config(path) -> Config:
    return build(Config, load_yaml(path), str(path))


def config_from_dict(d: dict, source: str = "<config>") -> Config:
    return build(Config, d, source)
