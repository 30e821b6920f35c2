"""The train job, for both task families: ``run_train(TrainConfig(...), progress=callback) -> TrainResult``.

A classifier (a ConvNet ``--arch``, or a classifier ``--init`` file) trains with cross-entropy
(:mod:`csc_cli.jobs.classifier.train`); an autoencoder (``--arch ctrl_dcgan32`` / ``ctrl_resnet``, or
an autoencoder ``--init`` file) plays the CTRL rate-reduction game
(:mod:`csc_cli.jobs.autoencoder.train`). This module is the one place that knows both.

Either is a run of one skeleton (:mod:`csc_cli.jobs.run`), writing into ``config.out`` (default
``runs/<dataset>-<arch>-<csc>``): ``config.json`` (the resolved config), ``metrics.jsonl`` (one JSON
line per epoch), ``summary.csv``, ``model.safetensors`` (the selected model: the last epoch, or the
best on a held-out split of the training data -- never on the test set) and ``state.safetensors``
(everything needed to resume, the run's config included). Progress comes as typed events
(:mod:`csc_cli.jobs.events`).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from ..checkpoint import read_card
from .autoencoder.train import run_ctrl_train
from .classifier.train import run_classifier_train
from .events import ProgressFn
from .run import TrainResult
from .train_config import TrainConfig
from .train_data import make_data
from .training import csc_layer_stats, lr_at

__all__ = ["TrainConfig", "TrainResult", "run_train", "make_data", "lr_at", "csc_layer_stats", "config_fields"]


def run_train(config: TrainConfig, progress: Optional[ProgressFn] = None) -> TrainResult:
    """Train what ``config`` describes: an autoencoder by the CTRL game, anything else as a classifier."""
    if config.autoencoder or (config.init and _is_autoencoder_file(config.init)):
        return run_ctrl_train(config, progress)
    return run_classifier_train(config, progress)


def _is_autoencoder_file(path: str) -> bool:
    return read_card(path).task == "autoencoder"


def config_fields() -> Dict[str, Any]:
    """Field name -> default, for recipes and the CLI."""
    return TrainConfig.defaults()
