"""``train.report_to``: the real TensorBoard, MLflow and W&B (offline) writers receive the config
once and every numeric metric under the JSONL names, read back from what they wrote; a tracker
without its package is one error line naming the extra."""
from __future__ import annotations

import glob
import json
import struct
import sys

import pytest

from srmir.errors import UserError
from srmir.trainer.metrics import MetricsLogger, read_metrics

CONFIG = {"grpo": {"beta": 0.04, "group_size": 8}, "train": {"lr": 1e-6}}
STEPS = {1: {"reward/mean": 0.5, "kl": float("nan"), "reward/category/insult": 0.25, "note": "text"},
         2: {"reward/mean": 0.75, "kl": 0.125, "reward/category/insult": 0.5, "note": "text"}}


def run_logger(folder, report_to, start_step=0, steps=(1, 2)):
    logger = MetricsLogger(folder, total_steps=3, start_step=start_step, report_to=report_to, config=CONFIG)
    for step in steps:
        logger.log(step, STEPS[step])
    logger.close()


def test_tensorboard_event_file_holds_the_jsonl_metrics(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra (installed by setup.sh --dev)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_logger(tmp_path, ["tensorboard"])
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    # NaN went to the JSONL as null and is not sent; text is not a scalar
    assert scalars == {"reward/mean": [(1, 0.5), (2, 0.75)], "kl": [(2, 0.125)],
                       "reward/category/insult": [(1, 0.25), (2, 0.5)]}
    jsonl_keys = {k for r in read_metrics(tmp_path / "metrics.jsonl") for k, v in r.items()
                  if isinstance(v, float)}
    assert set(scalars) == jsonl_keys  # the same names as metrics.jsonl
    assert "beta" in events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()


def test_mlflow_file_store_holds_params_and_metrics(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow extra (installed by setup.sh --dev)")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_logger(tmp_path, ["mlflow"], steps=(1,))
    run_logger(tmp_path, ["mlflow"], start_step=1, steps=(2,))  # resumed: the same MLflow run continues
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    runs = client.search_runs([client.get_experiment_by_name("srmir").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    assert runs[0].data.params == {"grpo.beta": "0.04", "grpo.group_size": "8", "train.lr": "1e-06"}
    history = {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
               for key in ("reward/mean", "kl", "reward/category/insult")}
    assert history == {"reward/mean": [(1, 0.5), (2, 0.75)], "kl": [(2, 0.125)],
                       "reward/category/insult": [(1, 0.25), (2, 0.5)]}


def wandb_records(path):
    """The protobuf records of a ``.wandb`` file (a LevelDB-style log: 7-byte header, then records in
    32 KiB blocks, each chunk with a 7-byte header of checksum, length and type)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    pos, block, chunks, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero padding to the end of the block
            pos += block - pos % block
            continue
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def test_wandb_offline_run_holds_the_metrics_and_config(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb extra (installed by setup.sh --dev)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_logger(tmp_path, ["wandb"])
    files = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1  # offline: written locally, nothing sent
    records = wandb_records(files[0])
    def key(item):  # W&B stores "a/b" as the nested key [a, b]
        return item.key or "/".join(item.nested_key)

    history = [{key(i): json.loads(i.value_json) for i in r.history.item if not key(i).startswith("_")}
               for r in records if r.WhichOneof("record_type") == "history"]
    assert history == [{"reward/mean": 0.5, "reward/category/insult": 0.25},
                       {"reward/mean": 0.75, "kl": 0.125, "reward/category/insult": 0.5}]
    config = {i.key: json.loads(i.value_json) for r in records if r.WhichOneof("record_type") == "run"
              for i in r.run.config.update}
    assert config["grpo"] == {"beta": 0.04, "group_size": 8}


@pytest.mark.parametrize("tracker", ["tensorboard", "wandb", "mlflow"])
def test_a_tracker_without_its_package_names_the_extra(tmp_path, monkeypatch, tracker):
    monkeypatch.setitem(sys.modules, tracker, None)  # import → ImportError, as when not installed
    with pytest.raises(UserError) as e:
        MetricsLogger(tmp_path, total_steps=2, report_to=[tracker])
    assert str(e.value) == (f"train.report_to: the {tracker} tracker needs the package '{tracker}': "
                            f"pip install 'srmir[{tracker}]'")
