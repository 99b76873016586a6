"""Public data that Pavana carries, so a fresh clone and an installed package work alone.

Each folder holds one source with its licence and attribution beside it (`README.md`,
`LICENSE`): `traces/` (Azure LLM inference traces, CC-BY 4.0) and `profiles/` (Vidur's GPU
operator profiles, MIT). The files ship as package data, so code finds them through this
module rather than by a path relative to the source tree, which does not exist once installed.

`PAVANA_DATA_DIR` points at another folder of the same layout (for instance a larger
collection of traces); it is read on every call, so a test or a command can set it late.
Data without an open licence (the GEFCom2012 wind series) is never here: Pavana's built-in
wind model (`cluster/wind.py`) stands in for it.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

ENV_VAR = "PAVANA_DATA_DIR"


class DataMissing(FileNotFoundError):
    """A data file that neither `PAVANA_DATA_DIR` nor the package holds."""


def data_root() -> Path:
    """`PAVANA_DATA_DIR` when set, else this package's own folder."""
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override)
    return Path(str(files(__name__)))


def data_path(*parts: str) -> Path:
    """The file `parts` under the data root; `DataMissing` names where it was looked for."""
    path = data_root().joinpath(*parts)
    if not path.exists():
        where = f"{ENV_VAR}={os.environ[ENV_VAR]}" if os.environ.get(ENV_VAR) else "the pavana_data package"
        raise DataMissing(f"data: no {'/'.join(parts)} in {where} ({path})")
    return path


def trace_path(name: str) -> Path:
    """One of the Azure LLM inference traces: `code` or `conv`."""
    return data_path("traces", f"AzureLLMInferenceTrace_{name}.csv")


def profiles_dir() -> Path:
    """The folder of the Vidur GPU operator profiles."""
    return data_path("profiles")


# -- data that is not carried ----------------------------------------------------------------
WIND_CSV_ENV_VAR = "PAVANA_WIND_CSV"
GEFCOM_WIND_NAME = "gefcom2012_wind_5farms_hourly.csv"
# Where the project's shared data folder keeps the GEFCom2012 series, beside a checkout:
# looked up from the working directory (a checkout's root), never from the package's location.
SHARED_WIND_CSV = Path("..") / "shared" / "data" / "power" / GEFCOM_WIND_NAME


def external_wind_csv(explicit: str | Path | None = None) -> Path | None:
    """The GEFCom2012 wind series, which has no open licence and so is not in Pavana: the path
    given, else `PAVANA_WIND_CSV`, else the shared data folder beside the working directory
    when it is there; None when none of these names a file (a given path that is missing is
    returned as it is, for the caller's error to name)."""
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get(WIND_CSV_ENV_VAR)
    if env:
        return Path(env)
    beside = Path.cwd() / SHARED_WIND_CSV
    return beside.resolve() if beside.is_file() else None
