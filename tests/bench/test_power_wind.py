"""`pavana bench power` runs anywhere: on GEFCom2012 where that file is found, else on the
built-in wind model, and it says which."""

from __future__ import annotations

import numpy as np

from benchmarks.power import wind_week
from cluster.wind import GEFCOM_LIKE


def test_without_the_gefcom_file_the_built_in_wind_is_used_and_named(tmp_path, monkeypatch):
    monkeypatch.delenv("PAVANA_WIND_CSV", raising=False)
    monkeypatch.chdir(tmp_path)  # no ../shared beside it
    series, source = wind_week(("wp1", "wp3"), 48)
    assert "built-in wind model" in source
    assert np.array_equal(series, GEFCOM_LIKE.sample(48, seed=0)[:, [0, 2]])


def test_a_given_wind_file_is_read_and_named(tmp_path, monkeypatch):
    path = tmp_path / "wind.csv"
    path.write_text("date,wp1,wp2\n2010010100,0.5,0.1\n2010010101,,0.2\n2010010102,0.25,0.3\n")
    monkeypatch.setenv("PAVANA_WIND_CSV", str(path))
    series, source = wind_week(("wp1", "wp2"), 5)
    assert source.startswith("GEFCom2012 (wind.csv)")
    assert series.tolist() == [[0.5, 0.1], [0.25, 0.3]]  # rows missing a farm are left out
