"""Experiment trackers (``train.report_to``): TensorBoard, Weights & Biases, MLflow.

Each receives the run's config once, at the start, and every step's metrics under the same flat
names as ``metrics.jsonl`` (``reward/category/insult``), numbers only (NaN was already turned into
null there, and a null is not sent). ``metrics.jsonl`` stays the record srmir itself reads (resume,
plots, trends); a tracker is a view of it.

Offline by default, never a network call srmir makes on its own:

- ``tensorboard`` — event files in ``<output_dir>/tensorboard``; a resumed run purges the steps
  after its checkpoint (they are redone);
- ``wandb`` — ``WANDB_MODE`` is wandb's own switch (``offline`` writes ``<output_dir>/wandb``);
  project ``WANDB_PROJECT`` (default ``srmir``); a resumed run continues the same run id;
- ``mlflow`` — ``MLFLOW_TRACKING_URI`` when set, else the local file store ``<output_dir>/mlruns``
  (MLflow 3 keeps file stores behind ``MLFLOW_ALLOW_FILE_STORE``, which srmir then sets);
  experiment ``MLFLOW_EXPERIMENT_NAME`` (default ``srmir``); the config as flat ``section.key``
  params.

Each package is an optional extra; a tracker asked for without its package is one ``srmir: error``
line naming the extra (``pip install 'srmir[wandb]'``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from ..errors import UserError

def _require(module: str, tracker: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"the {tracker} tracker needs the package '{tracker}': pip install 'srmir[{tracker}]'",
                        where="train.report_to") from None


def check_available(trackers: list[str]) -> None:
    """Fail at setup (not after the first step) when a tracker's package is missing."""
    for name in trackers:
        _require(name, name)  # each package imports under its tracker's name


class TensorBoard:
    def __init__(self, output_dir: Path, run_name: str, config: dict, start_step: int):
        _require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(output_dir / "tensorboard"), purge_step=start_step + 1)
        if start_step == 0:
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class WandB:
    def __init__(self, output_dir: Path, run_name: str, config: dict, start_step: int):
        wandb = _require("wandb", "wandb")
        id_file = output_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if start_step > 0 and id_file.is_file() else None
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "srmir"), name=run_name, id=run_id,
                              resume="allow" if run_id else None, dir=str(output_dir),
                              config=None if run_id else config, reinit="create_new")
        id_file.write_text(self.run.id + "\n")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


class MLflow:
    def __init__(self, output_dir: Path, run_name: str, config: dict, start_step: int):
        _require("mlflow", "mlflow")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # the local file store: MLflow 3 keeps it in maintenance mode, behind this opt-in
            uri = (output_dir / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "srmir")
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        id_file = output_dir / "mlflow_run_id"
        if start_step > 0 and id_file.is_file():  # a resumed run continues its MLflow run
            self.run_id = id_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
            id_file.write_text(self.run_id + "\n")
            params = [Param(k, str(v)[:6000]) for k, v in _flatten(config).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, step: int, scalars: dict[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in scalars.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


# Three interchangeable trackers with one signature (STYLE 11): a registry.
TRACKERS = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}


def open_trackers(names: list[str], output_dir: Path, config: Optional[dict], start_step: int,
                  run_name: Optional[str] = None) -> list:
    """The trackers named in ``names``, started (rank 0 only: the caller decides)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    run_name = run_name or output_dir.resolve().name
    return [TRACKERS[name](output_dir, run_name, config or {}, start_step) for name in names]


def scalars(record: dict) -> dict[str, float]:
    """The numeric metrics of a JSONL record (``step``, text and nulls left out)."""
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _flatten(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj}
