"""Where the tests find the GEFCom2012 wind series, and how they skip without it.

The series has no open licence, so Pavana does not carry it: a fresh clone has no copy, and
its tests skip, saying why. CI keeps the project's shared data folder beside the checkout, and
there they run (`pavana_data.external_wind_csv`: `PAVANA_WIND_CSV`, else
../shared/data/power/ from the working directory).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pavana_data import external_wind_csv


def gefcom_csv() -> Path:
    """The series' path, or a skip that names how to provide it."""
    path = external_wind_csv()
    if path is None or not path.is_file():
        pytest.skip("the GEFCom2012 wind series is not here (no open licence, so not in the repository): "
                    "set PAVANA_WIND_CSV to its path, or run from a checkout with ../shared/data/power/ beside it")
    return path
