"""What a run prints: each message once, the per-epoch EX line kept above the progress bar, no avoidable noise."""

from __future__ import annotations

import io
import logging
import re
import sys

import pytest

from text2sql.job.console import ConsoleFormatter, DropNoise, LiveStdoutHandler
from text2sql.tracking.logger import drop_unset_wandb_options


def _logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"test_console.{id(handler)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def test_live_stdout_handler_follows_sys_stdout(monkeypatch):
    handler = LiveStdoutHandler()
    later = io.StringIO()
    monkeypatch.setattr(sys, "stdout", later)  # what Rich's live display does while the bar is drawn
    _logger(handler).info("epoch 0: execution accuracy 0.500")
    assert later.getvalue() == "epoch 0: execution accuracy 0.500\n"


def test_a_line_logged_under_a_live_progress_bar_is_printed_above_it():
    """Under Rich's live display the line goes through the display's console (printed above the bar); a plain
    StreamHandler bound to the original stdout writes around the display, where the next refresh erases it."""
    from rich.console import Console
    from rich.progress import Progress

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100)
    live_logger = _logger(LiveStdoutHandler())
    bypass = io.StringIO()
    plain_logger = _logger(logging.StreamHandler(bypass))
    with Progress(console=console, auto_refresh=False) as progress:
        progress.add_task("Epoch 0", total=10)
        live_logger.info("epoch 0: execution accuracy 0.812")
        plain_logger.info("epoch 0: hidden")
        progress.refresh()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())
    assert "epoch 0: execution accuracy 0.812" in text
    assert text.index("epoch 0: execution accuracy 0.812") < text.rindex("Epoch 0")  # above the final bar
    assert "hidden" not in text and bypass.getvalue() == "epoch 0: hidden\n"


def test_noise_filter_and_console_format():
    tip = logging.LogRecord("lightning.pytorch.utilities.rank_zero", logging.INFO, "", 0,
                            "💡 Tip: For seamless cloud logging ... litlogger", None, None)
    info = logging.LogRecord("text2sql.eval.callback", logging.INFO, "", 0, "epoch %d: ok", (1,), None)
    warn = logging.LogRecord("text2sql.model.load", logging.WARNING, "", 0, "mismatch", None, None)
    assert not DropNoise().filter(tip) and DropNoise().filter(info)
    fmt = ConsoleFormatter()
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] epoch 1: ok", fmt.format(info))
    assert fmt.format(warn).endswith("] WARNING text2sql.model.load: mismatch")


def test_wandb_logger_no_longer_passes_the_deprecated_anonymous_option(tmp_path):
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(project="p", save_dir=str(tmp_path), offline=True)
    assert "anonymous" in logger._wandb_init  # what makes W&B warn on every run
    drop_unset_wandb_options([logger, object()])
    assert "anonymous" not in logger._wandb_init
    explicit = WandbLogger(project="p", save_dir=str(tmp_path), offline=True, anonymous=True)
    drop_unset_wandb_options([explicit])
    assert explicit._wandb_init["anonymous"] == "allow"  # a value the user set is kept


@pytest.mark.slow
def test_smoke_run_prints_each_message_once_and_the_ex_line(smoke_run, smoke_output):
    """A real `train.py debug=smoke` (conftest's shared run: W&B offline, not silenced): Lightning's lines once, the
    EX line with its change each epoch, none of the warnings a user cannot act on."""
    run_dir, proc = smoke_run[0], smoke_output
    out = proc.stdout + proc.stderr
    for message in ("GPU available: False", "`Trainer.fit` stopped", "Seed set to 42", "saved the trained adapter"):
        assert out.count(message) == 1, (message, out[-4000:])
    assert re.search(r"epoch 0: execution accuracy \d\.\d{3} \(first\) on 16 dev examples; easy", out)
    assert re.search(r"epoch 1: execution accuracy \d\.\d{3} \([+-]\d\.\d{3}\) on 16 dev examples", out)
    for noise in ("FutureWarning", "Tip:", "litlogger", "anonymous", "LeafSpec", "Loading weights",
                  "Setting accelerator to CPU", "kernels-community",
                  "Run summary", "Run history", "Epoch 1/1", "it/s", "weights_only"):  # issue 29: in a `> log`
        assert noise not in out, (noise, out[-4000:])
    log = (run_dir / "train.log").read_text()
    assert log.count("GPU available: False") == 1 and "epoch 1: execution accuracy" in log


def test_noise_of_issue_29_is_dropped(capsys):
    """`past_key_values` FutureWarnings (even behind a filter a later import put in front), Lightning's
    "`weights_only` was not set", DeepSpeed's "Setting accelerator to CPU"; what a user acts on stays."""
    import logging
    import warnings

    from text2sql.job.console import DropNoise, quiet_libraries

    quiet_libraries()
    with warnings.catch_warnings():
        warnings.showwarning = lambda m, c, *args, **kwargs: print(f"{c.__name__}: {m}", file=sys.stderr)
        quiet_libraries()  # wraps the display hook in place now
        warnings.simplefilter("always")  # a library's filter in front of ours
        warnings.warn("`past_key_values` is deprecated and will be removed in version 5.40.0 for `f`. Use `cache` "
                      "instead.", FutureWarning)
        warnings.warn("a warning a user acts on", UserWarning)
    err = capsys.readouterr().err
    assert "past_key_values" not in err and "a warning a user acts on" in err
    record = logging.LogRecord("lightning", logging.INFO, "", 0, "`weights_only` was not set, defaulting to `False`.",
                               None, None)
    assert not DropNoise().filter(record)
    deepspeed = logging.getLogger("DeepSpeed")
    assert not deepspeed.filter(logging.LogRecord("DeepSpeed", logging.WARNING, "", 0, "Setting accelerator to CPU. "
                                                  "If you have GPU or other accelerator, ...", None, None))
    assert deepspeed.filter(logging.LogRecord("DeepSpeed", logging.WARNING, "", 0, "a real problem", None, None))


def test_the_training_bar_is_off_when_stdout_is_a_file(monkeypatch):
    """A `> log` held the Rich bar's last frame (issue 29); TrainingProgress's plain lines stand in there."""
    from text2sql.job.console import rich_progress_bar

    monkeypatch.setattr("sys.stdout.isatty", lambda: False, raising=False)
    assert rich_progress_bar().is_disabled
    monkeypatch.setattr("sys.stdout.isatty", lambda: True, raising=False)
    assert rich_progress_bar().is_enabled
