"""Training throughput in real events: what padding costs, measured on the batches training actually runs.

`ThroughputCallback` counts the real (attention-mask) and total input positions of every training batch (the
trainer calls `record` from its training step, on every process) and the wall time of training steps, evaluation
and checkpointing excluded. Each training log gets `real_events_per_s` and `padding_fraction` since the previous
one, and the final train metrics `train_real_events_per_s`, `train_padding_fraction` over the whole session.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments


class ThroughputCallback(TrainerCallback):
    """Real events/s and the padding fraction of training batches (see the module docstring)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._real: torch.Tensor | None = None  # real events since the last log, on the batches' device
        self._positions = 0  # input positions (real + padding) since the last log
        self._device = torch.device("cpu")  # of the last batch: every process gathers on its own device
        self._seconds = 0.0
        self._total = [0.0, 0.0, 0.0]  # real, positions, seconds of the session
        self._last: float | None = None

    def record(self, inputs: dict[str, Any]) -> None:
        """Count one training micro-batch (kept on its device: no synchronisation per step)."""
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = inputs["input_ids"] != 0
        real = mask.sum()
        self._real = real if self._real is None else self._real + real
        self._device = real.device
        self._positions += mask.numel()

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self.reset()
        self._last = time.perf_counter()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        now = time.perf_counter()
        if self._last is not None:
            self._seconds += now - self._last
        self._last = now

    def _pause(self, *args: Any, **kwargs: Any) -> None:
        self._last = time.perf_counter()  # evaluation and saving are not training time

    on_evaluate = on_save = _pause

    def log_entries(self, gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    final: bool = False) -> dict[str, float]:
        """Entries for a training log since the previous one, or with `final` the session's totals; `gather`
        (`accelerator.gather`) sums the counts of every process, so call it on every process."""
        real = self._real if self._real is not None else torch.zeros((), dtype=torch.long, device=self._device)
        counts = torch.stack([real.long(), torch.tensor(self._positions, dtype=torch.long, device=real.device)])
        if gather is not None:
            counts = gather(counts.reshape(1, 2)).reshape(-1, 2).sum(dim=0)
        real, positions = (float(x) for x in counts.tolist())
        seconds = self._seconds
        self._total = [self._total[0] + real, self._total[1] + positions, self._total[2] + seconds]
        self._real, self._positions, self._seconds = None, 0, 0.0
        prefix = "train_" if final else ""
        if final:
            real, positions, seconds = self._total
        if not positions:
            return {}
        return {f"{prefix}real_events_per_s": real / seconds if seconds > 0 else float("nan"),
                f"{prefix}padding_fraction": 1.0 - real / positions}


def machine_summary() -> str:
    """One line for a benchmark report's header: CPU model, logical cores, torch version and intra-op threads.

    Cores come from `os.cpu_count()`: `nproc` reports OMP_NUM_THREADS when it is set (1 core for a one-thread run).
    """
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                 platform.processor() or platform.machine())
    return (f"{model}, {os.cpu_count()} CPU cores, {platform.system()} {platform.machine()}, torch "
            f"{torch.__version__}, {torch.get_num_threads()} thread(s)")
