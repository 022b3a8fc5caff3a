"""Step metrics: a JSONL file, a console progress bar with ETA, the experiment trackers of
``train.report_to`` (TensorBoard, W&B, MLflow: :mod:`.tracking`), and a PNG of the reward curves
(overall, per shadow RM, per prompt category) and of the behaviour (refusal on harmful and benign
prompts, repetition, distinct-2) at the end.

Only rank 0 writes. Metric names are flat ``group/name`` strings (``reward/category/insult``),
the same in the JSONL file, every tracker and the plot.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Optional

from ..errors import UserError
from ..io import write_jsonl_atomic
from ..scrub import scrub

# Shown on the progress bar, in this order, when present.
_BAR_KEYS = (("reward/mean", "reward"), ("kl", "kl"), ("refusal/harmful", "ref_h"), ("refusal/benign", "ref_b"),
             ("degen/repetitive", "rep"), ("completion/len_mean", "len"), ("time/step", "s/step"))


class MetricsLogger:
    """Append one JSON object per step to ``metrics.jsonl`` and show progress (rank 0 only)."""

    def __init__(self, output_dir: Path, total_steps: int, start_step: int = 0, enabled: bool = True,
                 report_to: tuple = (), config: Optional[dict] = None, run_name: Optional[str] = None):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self._bar = None
        self._trackers: list = []
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _truncate_after(self.path, start_step)  # a resumed run redoes the steps after its checkpoint
        from tqdm.auto import tqdm

        from .tracking import open_trackers

        self._trackers = open_trackers(list(report_to), Path(output_dir), config, start_step, run_name)
        self._bar = tqdm(total=total_steps, initial=start_step, desc="grpo", unit="step", dynamic_ncols=True)

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        from .tracking import scalars

        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(scrub(json.dumps(record)) + "\n")
        for tracker in self._trackers:
            tracker.log(step, scalars(record))
        if self._bar is not None:
            self._bar.set_postfix({short: f"{metrics[k]:.3g}" for k, short in _BAR_KEYS
                                   if isinstance(metrics.get(k), (int, float))}, refresh=False)
            self._bar.update(1)

    def write(self, message: str) -> None:
        """Print a line without breaking the progress bar."""
        if self.enabled:
            (self._bar.write if self._bar is not None else print)(message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        for tracker in self._trackers:
            tracker.close()
        self._bar, self._trackers = None, []


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics file. A torn last line (the run was killed while appending it) is
    dropped with a warning; a bad line anywhere else is a UserError naming ``file:line``."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_bytes().split(b"\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    records = []
    for i, line in enumerate(lines[:last + 1]):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if i == last:
                warnings.warn(f"{path}:{i + 1}: dropped a torn last line (a run killed while writing it)",
                              RuntimeWarning, stacklevel=2)
                break
            raise UserError(f"not a metrics record: {e}", where=f"{path}:{i + 1}") from None
        records.append(record)
    return records


def _truncate_after(path: Path, step: int) -> None:
    if path.is_file():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            records = read_metrics(path)
        for w in caught:
            print(f"srmir: warning: {w.message}", flush=True)
        write_jsonl_atomic(path, [r for r in records if r.get("step", 0) <= step])


def _clean(value):
    """JSON-safe scalars: NaN/inf become None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def reward_trend(records: list[dict], fraction: float = 1 / 3) -> dict[str, tuple[float, float]]:
    """{key: (mean over the first ``fraction`` of the steps, mean over the last)} for the combined
    reward and every per-category reward: one noisy step says little, a third of the run does."""
    keys = ["reward/mean"] + sorted({k for r in records for k in r if k.startswith("reward/category/")})
    out = {}
    for key in keys:
        values = [float(r[key]) for r in records if isinstance(r.get(key), (int, float))]
        n = max(1, int(len(values) * fraction))
        if len(values) >= 2:
            out[key] = (sum(values[:n]) / n, sum(values[-n:]) / n)
    return out


def format_trend(trend: dict[str, tuple[float, float]]) -> list[str]:
    """Markdown table rows of :func:`reward_trend`."""
    lines = ["| reward | first third | last third | change |", "|---|---:|---:|---:|"]
    for key, (early, late) in trend.items():
        name = "combined" if key == "reward/mean" else key.rsplit("/", 1)[1]
        lines.append(f"| {name} | {early:+.3f} | {late:+.3f} | {late - early:+.3f} |")
    return lines


def plot_rewards(metrics_file: Path, png: Path, smooth: int = 5) -> Optional[Path]:
    """Reward curves per prompt category and per shadow RM (moving average over ``smooth`` steps)."""
    records = read_metrics(metrics_file)
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("reward/category/", "reward by prompt category"), ("reward/rm/", "score by shadow RM (all prompts)"),
              (None, "behaviour (refusal, degeneration)"))
    fig, axes = plt.subplots(1, 3, figsize=(22, 4.5))
    for ax, (prefix, title) in zip(axes, panels):
        if prefix is None:  # the signs of reward hacking: refusing everything, looping
            for key in ("refusal/harmful", "refusal/benign", "degen/repetitive", "degen/distinct2"):
                ax.plot(*_series(records, key, smooth), lw=1.5, label=key)
            ax.set_ylim(-0.02, 1.02)
        else:
            ax.plot(*_series(records, "reward/mean", smooth), color="black", lw=2.5, label="combined reward")
            for key in sorted({k for r in records for k in r if k.startswith(prefix)}):
                ax.plot(*_series(records, key, smooth), lw=1.2, label=key[len(prefix):])
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: curves stay visible
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(f".{png.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(png)
    return png


def _series(records: list[dict], key: str, smooth: int) -> tuple[list[int], list[float]]:
    """(steps, moving average of the last ``smooth`` logged values) for the steps that have ``key``."""
    steps, values = [], []
    for r in records:
        if isinstance(r.get(key), (int, float)):
            steps.append(r["step"])
            values.append(float(r[key]))
    averaged = [sum(values[max(0, i - smooth + 1): i + 1]) / len(values[max(0, i - smooth + 1): i + 1])
                for i in range(len(values))]
    return steps, averaged
