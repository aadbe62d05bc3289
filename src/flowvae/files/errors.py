"""Errors the `flowvae` command reports on one line, and the exit status of a time box."""

from __future__ import annotations

EXIT_TIME_BOX = 75  # `flowvae train` stopped by its time box or SIGTERM/SIGUSR1 after a checkpoint: rerun to continue


class CorruptFileError(ValueError):
    """A file flowvae wrote is unreadable or is not what it should be; the message names it and the way back."""


class SettingsChanged(ValueError):
    """A run's recorded settings differ from what params.yaml gives it now; the message names the keys."""


class TimeBoxReached(RuntimeError):
    """Training stopped early (time box or signal) after writing a checkpoint; rerun to continue."""


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite, or its KL term exploded (a diverged run)."""


class WriteFailed(RuntimeError):
    """A file could not be written (disk full, quota, permissions); the message names the file and the cause."""
