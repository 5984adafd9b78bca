"""`benchmarks/tile_overlap.py` (the README's Table 4): the cost it counts per strategy, its
summary against tiles without overlap, and a run end to end on the bundled model."""

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from tests.markers import one_pass_only

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_tile_overlap():
    sys.path.insert(0, str(BENCHMARKS))  # its own imports: machine, report
    try:
        spec = importlib.util.spec_from_file_location("tile_overlap",
                                                      BENCHMARKS / "tile_overlap.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def test_strategies_name_the_axes_they_overlap_and_their_cost_is_counted():
    import keras_hpdm

    bench = load_tile_overlap()
    assert bench.STRATEGIES["none"] == (0.0, 0.0, 0.0)
    assert bench.STRATEGIES["f-h"] == (0.5, 0.5, 0.0)  # the paper's best, generate's default
    assert bench.STRATEGIES["w"] == (0.0, 0.0, 0.5)
    assert set(bench.STRATEGIES) == set(bench.PAPER_TABLE4)
    # The bundled model's pyramid: levels of 4x16x16, 8x32x32, 16x64x64 in 4x16x16 tiles.
    # Per axis, n tiles without overlap and 2n - 1 at half a tile; steps 32, 16, 8.
    spec = keras_hpdm.PyramidSpec(patch_size=(4, 16, 16), num_levels=3, pyramid_time=True)
    steps = [32, 16, 8]
    assert bench.tile_steps(spec, steps, (0, 0, 0)) == 32 + 16 * 2**3 + 8 * 4**3
    assert bench.tile_steps(spec, steps, (0.5, 0.5, 0)) == 32 + 16 * 3 * 3 * 2 + 8 * 7 * 7 * 4
    assert bench.tile_steps(spec, steps, (0.5, 0.5, 0.5)) == 32 + 16 * 3**3 + 8 * 7**3


def test_rows_pair_each_seed_with_tiles_without_overlap():
    bench = load_tile_overlap()

    def record(strategy, seed, fvd, persistence):
        return {"strategy": strategy, "seed": seed,
                "scores": {"fvd": fvd, "persistence": persistence}}

    records = [record("none", 0, 200.0, 0.8), record("none", 1, 300.0, 0.9),
               record("f-h", 0, 180.0, 0.9), record("f-h", 1, 330.0, 0.9)]
    tiles = {"none": 100, "f-h": 250}
    rows = {r["strategy"]: r for r in bench.summarise(
        records, ["none", "f-h"], tiles, seconds={"none": 2.0, "f-h": 5.0})}
    assert rows["none"]["fvd"] == pytest.approx(250.0)
    assert rows["none"]["fvd_spread"] == pytest.approx(50.0)
    assert rows["none"]["persistence_spread"] == pytest.approx(0.05)
    assert rows["f-h"]["fvd_beats_none"] == 1  # better at seed 0, worse at seed 1
    assert rows["f-h"]["fvd_vs_none"] == pytest.approx((180 / 200 + 330 / 300) / 2)
    assert rows["none"]["fvd_vs_none"] == pytest.approx(1.0)
    assert rows["f-h"]["tile_steps_vs_none"] == pytest.approx(2.5)
    assert rows["f-h"]["time_vs_none"] == pytest.approx(2.5)
    assert rows["f-h"]["paper_fvd_large_vs_none"] == pytest.approx(436.81 / 475.05)
    with pytest.raises(SystemExit):  # every strategy is compared with tiles without overlap
        bench.parse_args(["--strategies", "f-h"])


@one_pass_only
def test_strategies_are_scored_on_the_bundled_model_and_reused(tmp_path, capsys):
    bench = load_tile_overlap()
    out, table = tmp_path / "records", tmp_path / "tile_overlap.json"
    argv = ["--strategies", "none", "h", "--seeds", "0", "--per-class", "1", "--fvd", "0",
            "--steps", "2", "2", "2", "--out-dir", str(out), "--json", str(table)]
    assert bench.main(argv + ["--speed-repeats", "1"]) == 0
    result = json.loads(table.read_text())
    records = {r["strategy"]: r for r in result["records"]}
    assert records["h"]["settings"]["overlap"] == [0.0, 0.5, 0.0]
    assert records["none"]["settings"]["overlap"] == [0.0, 0.0, 0.0]
    for record in records.values():
        assert record["scores"]["num_videos"] == 10
        assert record["settings"]["num_steps"] == [2, 2, 2]
    # Other tiles draw other videos from the same noise.
    assert records["h"]["scores"]["noise_effect"] != records["none"]["scores"]["noise_effect"]
    rows = {r["strategy"]: r for r in result["rows"]}
    assert rows["none"]["tile_steps"] == 2 * (1 + 8 + 64)
    assert rows["h"]["tile_steps"] == 2 * (1 + 2 * 3 * 2 + 4 * 7 * 4)
    assert set(result["seconds"]) == {"none", "h"}
    assert rows["h"]["time_vs_none"] == pytest.approx(
        result["seconds"]["h"] / result["seconds"]["none"])
    assert "tile steps per video" in capsys.readouterr().out
    # --reuse scores the records again without generating; one made with other settings is
    # made again.
    mtime = os.path.getmtime(out / "h_s0.json")
    stale = json.loads((out / "none_s0.json").read_text())
    stale["settings"]["per_class"] = 3
    (out / "none_s0.json").write_text(json.dumps(stale))
    assert bench.main(argv + ["--reuse", "--speed-repeats", "0"]) == 0
    assert os.path.getmtime(out / "h_s0.json") == mtime
    assert "none_s0.json was made with other settings" in capsys.readouterr().out
    assert json.loads((out / "none_s0.json").read_text())["settings"]["per_class"] == 1
    reused = json.loads(table.read_text())
    assert reused["seconds"] is None
    assert {r["strategy"]: r["scores"] for r in reused["records"]}["h"] == \
        records["h"]["scores"]
