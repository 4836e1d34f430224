"""Exceptions a person can read. Every error the engine raises on purpose derives from ReconError."""


class ReconError(Exception):
    """Base class: the message is meant to be shown to the user as is."""


class ImageError(ReconError):
    """One file could not be used as an image (names the file and the reason)."""


class DataError(ReconError):
    """A data set as a whole is unusable (missing folder, too few images, bad layout)."""


class ConfigError(ReconError):
    """A configuration has unknown keys, wrong types or out-of-range values."""


class CheckpointError(ReconError):
    """A checkpoint or bundle is truncated, of another model, of another version, or unsafe."""


class TrainingError(ReconError):
    """Training failed in a way the user can act on (NaN loss, out of memory, data vanished, disk full)."""


class TrainingCancelled(ReconError):
    """Training stopped because the user asked; the last checkpoint is kept."""
