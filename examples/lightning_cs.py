"""Train a small CNN with the Convolutional Similarity (CS) regulariser in PyTorch Lightning.

The loss of a training step is cross-entropy plus ``beta`` times the CS of every conv layer
(:class:`convsim.ConvSimilarity`); each step also logs the unweighted CS of every layer
(``reg.per_layer()``) as ``cs/<layer>``, so the logger shows which layers' filters decorrelate.
Data: Fashion-MNIST when a copy is found (``convsim.data.load``: ``--data-dir``, ``$CONVSIM_DATA``,
``~/.cache/convsim``, the Debian package; ``--download`` fetches it), otherwise, or with
``--synthetic``, convsim's seeded synthetic images.

    pip install convsim[lightning]            # add [tensorboard] for --logger tensorboard
    python examples/lightning_cs.py --epochs 3
    python examples/lightning_cs.py --synthetic --max-steps 50 --beta 0.1

Logs go to ``--out`` (default ``runs/lightning_cs``): ``lightning_logs/version_N/metrics.csv``,
or TensorBoard event files with ``--logger tensorboard``.
"""

from __future__ import annotations

import argparse
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from convsim import ConvSimilarity
from convsim import data as convsim_data


class SmallCNN(nn.Module):
    """Three 3×3 conv layers (16, 32, 32 channels) with ReLU, max-pooling, global average pooling, a linear head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class CSClassifier(L.LightningModule):
    """A classifier trained on cross-entropy + beta * CS, logging the CS of every conv layer."""

    def __init__(self, beta: float = 0.01, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = SmallCNN()
        # ConvSimilarity reads the conv weights on every call and owns no parameters: it works
        # wherever Lightning moves the model (devices, DDP).
        self.reg = ConvSimilarity(self.model, beta=beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        ce = F.cross_entropy(logits, y)
        cs = self.reg()  # beta * sum over layers of the CS, differentiable
        self.log_dict({"train_ce": ce, "train_cs": cs, "train_acc": (logits.argmax(1) == y).float().mean()})
        self.log_dict({f"cs/{name}": value.detach() for name, value in self.reg.per_layer().items()})
        return ce + cs

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log_dict({"val_loss": F.cross_entropy(logits, y), "val_acc": (logits.argmax(1) == y).float().mean()})

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def load_split(split: str, synthetic: bool, data_dir: str | None, download: bool) -> tuple[TensorDataset, str]:
    """One split as normalised float tensors: Fashion-MNIST if found (or downloaded), else synthetic."""
    name = "synthetic" if synthetic else "fashion-mnist"
    try:
        x, y = convsim_data.load(name, split, root=data_dir, download=download)
    except convsim_data.DatasetNotFoundError:
        name = "synthetic"
        x, y = convsim_data.load(name, split)
    return TensorDataset(convsim_data.normalize(x, name), y), name


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3, help="epochs to train (default 3)")
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (default: no limit)")
    p.add_argument("--beta", type=float, default=0.01, help="weight of the CS regulariser (default 0.01)")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    p.add_argument("--batch-size", type=int, default=128, help="minibatch size (default 128)")
    p.add_argument("--synthetic", action="store_true", help="synthetic images instead of Fashion-MNIST")
    p.add_argument("--data-dir", default=None, help="folder searched first for Fashion-MNIST")
    p.add_argument("--download", action="store_true", help="download Fashion-MNIST when no copy is found")
    p.add_argument("--logger", choices=("csv", "tensorboard"), default="csv", help="where metrics go (default csv)")
    p.add_argument("--out", default="runs/lightning_cs", help="folder of the logs (default runs/lightning_cs)")
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator: auto, cpu, gpu, ... (default auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the shuffling (default 0)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train as the flags say; returns the last logged metrics (name -> float)."""
    args = parse_args(argv)
    L.seed_everything(args.seed, verbose=False)
    train_set, name = load_split("train", args.synthetic, args.data_dir, args.download)
    test_set, _ = load_split("test", name == "synthetic", args.data_dir, args.download)
    print(f"data: {name}, {len(train_set)} training and {len(test_set)} test images")
    model = CSClassifier(beta=args.beta, lr=args.lr)
    logger: Any = (CSVLogger if args.logger == "csv" else TensorBoardLogger)(args.out)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        max_steps=args.max_steps,
        accelerator=args.accelerator,
        devices=1,
        logger=logger,
        log_every_n_steps=10,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(
        model,
        DataLoader(train_set, batch_size=args.batch_size, shuffle=True),
        DataLoader(test_set, batch_size=1000),
    )
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    print(", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())))
    return metrics


if __name__ == "__main__":
    main()
