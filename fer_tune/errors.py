"""User-facing errors: the CLI prints them as one line on stderr and exits with status 2."""


class FerTuneError(Exception):
    """Base of every error caused by the user's input (a file, a config, a flag), not by a bug."""


class DataError(FerTuneError):
    """Unreadable or malformed dataset: the message names the file and the row or image."""


class ConfigError(FerTuneError):
    """Invalid run config or search space: the message starts with the dotted key path (`model.kernels`)."""


class DeviceError(FerTuneError):
    """The device asked for cannot be used: no CUDA, fewer GPUs than asked for, an unsupported precision."""


def check(ok: bool, key: str, msg: str) -> None:
    """Raise `ConfigError("<key>: <msg>")` unless `ok`: the one way configs and spaces report a bad value."""
    if not ok:
        raise ConfigError(f"{key}: {msg}")
