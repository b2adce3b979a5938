"""What a training run prints: each message once, no avoidable warnings, the per-epoch EX line kept on screen.

Why this exists: out of the box, Lightning adds its own console handler to the `lightning` logger, so every
Lightning line appears twice (once through it, once through Hydra's root handlers); libraries emit
deprecation warnings and tips the user cannot act on; and a plain `StreamHandler` holds the *original*
`sys.stdout`, so lines logged while Rich's live progress bar is on screen are overwritten by its next
refresh. `LiveStdoutHandler` (Hydra's console handler, conf/hydra/job_logging/console.yaml) writes to
whatever `sys.stdout` is at the time: under the progress bar that is Rich's proxy, which prints the line
above the bar. Everything also goes to the run's `train.log`. Importing this module is cheap (no torch).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings

# Warnings the user cannot act on (they come from inside transformers / Lightning / PEFT).
_IGNORED_WARNINGS = (
    (FutureWarning, r".*is_gradient_checkpointing.*is deprecated"),      # transformers 5, called by PEFT
    (FutureWarning, r"`past_key_values` is deprecated"),                 # transformers 5, called by PEFT
    (Warning, r".*isinstance\(treespec, LeafSpec\). is deprecated"),    # torch 2.13, called by Lightning
)
# Log records that are advertising, not information.
_IGNORED_MESSAGES = ("💡 Tip:",
                     "`weights_only` was not set")  # Lightning, at every checkpoint it saves (info, not a choice)
_DEEPSPEED_CPU = "Setting accelerator to CPU"  # DeepSpeed at import without a GPU (merge, predict, CPU runs)


class LiveStdoutHandler(logging.StreamHandler):
    """A console handler bound to the current `sys.stdout`, not the one that existed at configuration time."""

    def __init__(self, stream=None):  # `stream` is accepted for logging.config and ignored
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ / setStream assign it: the property wins
        pass


class ConsoleFormatter(logging.Formatter):
    """`HH:MM:SS message` for information, with the level and logger name for warnings and errors."""

    def __init__(self, fmt: str | None = None, datefmt: str | None = "%H:%M:%S", **_):
        super().__init__("[%(asctime)s] %(message)s", datefmt)
        self._loud = logging.Formatter("[%(asctime)s] %(levelname)s %(name)s: %(message)s", datefmt)

    def format(self, record: logging.LogRecord) -> str:
        return (self._loud if record.levelno >= logging.WARNING else super()).format(record)


class DropNoise(logging.Filter):
    """Drops records that only advertise (Lightning's LitLogger tip)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not message.startswith(_IGNORED_MESSAGES)


def _ignore_warnings() -> None:
    for category, message in _IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    _drop_at_display()


def _is_noise(message, category) -> bool:
    return any(issubclass(category, cat) and re.match(pattern, str(message)) for cat, pattern in _IGNORED_WARNINGS)


def _drop_at_display() -> None:
    """Also drop the listed warnings where they are shown (`warnings.showwarning`, the documented hook): a library
    imported later (Lightning, DeepSpeed) puts its own filters in front of ours, and the first filter wins."""
    shown = warnings.showwarning
    if getattr(shown, "_text2sql", False):
        return

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if not _is_noise(message, category):
            shown(message, category, filename, lineno, file, line)

    showwarning._text2sql = True  # type: ignore[attr-defined]
    warnings.showwarning = showwarning


class _DropDeepSpeedCpu(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_DEEPSPEED_CPU)


def quiet_model_bars(local_model: bool) -> None:
    """transformers' "Loading weights" / "Writing model shards" bars: off for the locally built tiny model
    (milliseconds each) and when stderr is not a terminal (a file would keep every frame); a real checkpoint on a
    terminal keeps them."""
    if local_model or not sys.stderr.isatty():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def rich_progress_bar(**kwargs):
    """The training bar (conf/callbacks/default.yaml): Lightning's RichProgressBar on a terminal; when stdout is a
    file (`> log`, SLURM, nohup) it is disabled with Lightning's own switch (`ProgressBar.disable`), so the log holds
    no bar frames: job/progress.py's plain lines stand in."""
    from lightning.pytorch.callbacks import RichProgressBar

    bar = RichProgressBar(**kwargs)
    if not sys.stdout.isatty():
        bar.disable()
    return bar


def quiet_libraries() -> None:
    """Third-party noise of every command that loads a model (train, predict, merge), before its imports.

    bitsandbytes logs at import, on CPUs with AVX512-BF16, that it found no `kernels` package for a faster CPU
    4-bit kernel (`kernels` downloads it from the hub); it then uses its own kernel, so the line is a hint, not
    a problem, and only the CPU tests run 4-bit. Its errors still show. With `kernels` installed (0.19 here), that
    package's own logger adds that it skips the publisher check for the kernel repo offline: the same hint.
    """
    for name in ("bitsandbytes", "kernels"):
        logging.getLogger(name).setLevel(logging.ERROR)
    deepspeed = logging.getLogger("DeepSpeed")  # DeepSpeed's own logger: its level is set at import, filters stay
    if not any(isinstance(f, _DropDeepSpeedCpu) for f in deepspeed.filters):
        deepspeed.addFilter(_DropDeepSpeedCpu())
    os.environ.setdefault("WANDB_QUIET", "true")  # no history/summary block at the end (the run's metrics.json
    # and W&B hold them); an offline run's header still says where its data is (`text2sql sync RUN_DIR`)
    _ignore_warnings()


def quiet_resume() -> None:
    """A resumed run's checkpoint dir holds the checkpoints it resumes from: Lightning's warning that the dir
    "exists and is not empty" is then expected (call after Lightning's import, which resets filters)."""
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


def quiet_after_imports(local_model: bool = False) -> None:
    """One line per message: Lightning's own console handler goes when the root logger already prints.

    `local_model`: the model is the locally built tiny one, whose load and save bars (milliseconds each)
    are noise; a real checkpoint keeps its download and loading bars.
    """
    _ignore_warnings()  # again: Lightning's import puts its own warning filters in front
    root = logging.getLogger()
    if root.handlers:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning"):
            logger = logging.getLogger(name)
            for handler in list(logger.handlers):
                if type(handler) is logging.StreamHandler:  # Lightning's, added at import
                    logger.removeHandler(handler)
            logger.propagate = True
    quiet_model_bars(local_model)
