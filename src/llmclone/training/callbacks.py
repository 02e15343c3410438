"""Trainer callbacks: progress bar with loss, tokens/s and ETA; metrics.jsonl; stop-and-save on Ctrl-C."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm
from transformers import TrainerCallback

from llmclone.dataset.io import private_umask


class ProgressBar(TrainerCallback):
    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.last_tokens = 0
        self.last_time = 0.0
        self.postfix: dict[str, str] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:  # one bar, not one per GPU
            return
        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training", unit="step",
                        dynamic_ncols=True)
        self.last_time = time.time()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if self.bar is None or not logs:
            return
        now = time.time()
        if "loss" in logs:
            self.postfix["loss"] = f"{logs['loss']:.3f}"
        if "eval_loss" in logs:
            self.postfix["eval"] = f"{logs['eval_loss']:.3f}"
        tokens = logs.get("num_tokens")
        if tokens is not None and now > self.last_time:
            if self.last_tokens:
                self.postfix["tok/s"] = f"{(tokens - self.last_tokens) / (now - self.last_time):.0f}"
            self.last_tokens, self.last_time = tokens, now
        self.bar.set_postfix(self.postfix, refresh=True)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()


class MetricsFile(TrainerCallback):
    """Appends every log (train loss, eval loss, learning rate, tokens) to metrics.jsonl."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not logs or not state.is_world_process_zero:
            return
        row = {"step": state.global_step, "epoch": round(state.epoch or 0, 4), "time": round(time.time(), 1)}
        row |= {k: v for k, v in logs.items() if isinstance(v, int | float)}
        with private_umask(), open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


class CtrlCStop(TrainerCallback):
    """After Ctrl-C, save a checkpoint at the end of the current step and stop.

    And no checkpoint or evaluation after the last step. transformers saves one there, but a finished run's clone
    is written from the model in memory and its work folder removed (that save is the tokenizer too, tens of
    MB on Gemma); train() evaluates once at the end, on the whole held-out set."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.session.interrupted:
            control.should_save = True
            control.should_training_stop = True
        elif state.global_step >= state.max_steps:
            control.should_save = False
            control.should_evaluate = False  # train() evaluates once at the end, on the whole held-out set
