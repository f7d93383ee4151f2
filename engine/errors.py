"""Errors the engine raises for callers: each names the file, tensor or setting at fault."""


class MergeScopeError(Exception):
    """Base of every error the engine raises on purpose; the message is meant for users."""


class SettingsError(MergeScopeError, ValueError):
    """An environment setting is malformed."""


class PathNotAllowedError(MergeScopeError, PermissionError):
    """A path resolves outside the configured model roots."""


class CheckpointError(MergeScopeError, ValueError):
    """A checkpoint is missing, unsafe (pickle-only), truncated, corrupt or holds NaN/Inf."""


class IncompatibleModelsError(MergeScopeError, ValueError):
    """Checkpoints that must line up (architecture, tensors, shapes, vocabulary) do not."""


class RecipeError(MergeScopeError, ValueError):
    """A merge recipe is invalid: unknown method, missing parameter, bad schedule."""


class InsufficientMemoryError(MergeScopeError, MemoryError):
    """A job's estimated memory exceeds what the machine has; raised before it starts."""


class DataError(MergeScopeError, ValueError):
    """Parallel data is empty, misaligned or unusable (e.g. a span that tokenises to nothing)."""


class UnsupportedModelError(MergeScopeError, TypeError):
    """A model family lacks what an analysis needs (e.g. no gate_proj MLP)."""
