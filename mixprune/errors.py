"""One exception hierarchy: every user-facing failure is a MixpruneError.

The CLI turns any of these into a single line on stderr and exit code 2.
"""


class MixpruneError(Exception):
    """Bad input or an unusable artifact: one clear line, exit code 2."""

    exit_code = 2


class ConfigError(MixpruneError):
    """A flag, TOML file or rule table that cannot be used."""


class ModelError(MixpruneError):
    """Unknown model name, pretrained weights that cannot be had, a model that fails to build."""


class CutError(ModelError):
    """A structured cut that cannot be made (a model Torch-Pruning cannot cut, a ratio that
    removes every channel) or replayed (weights that do not match their recorded cut)."""


class CheckpointError(MixpruneError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


class DataError(MixpruneError):
    """Missing or malformed dataset, empty calibration set."""


class RunDirError(MixpruneError):
    """A run directory, stage output or candidate that is missing or inconsistent."""


class ExportError(MixpruneError):
    """A model that fails to export to ONNX or an ONNX file that cannot be used."""


class DeviceError(MixpruneError):
    """Unknown device, malformed profile, unreachable host, a runner that failed."""


class BenchmarkError(MixpruneError):
    """A model that cannot be benchmarked (missing, not ONNX, refused by onnxruntime)."""


class BundleError(MixpruneError):
    """A release bundle that is corrupt, tampered with or unsafe to extract."""


class ExecutorError(MixpruneError):
    """An executor that cannot start: Ray not installed, a cluster that cannot be reached."""
