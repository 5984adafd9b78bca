"""`benchmarks/ablations.py` end to end at a three-step budget: each variant is trained with its
switch, scored on one held-out batch, summarised against the default, and reused when asked
(the README's ablation table comes from it)."""

import importlib.util
import json
import os
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.markers import one_pass_only

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_ablations():
    sys.path.insert(0, str(BENCHMARKS))  # its own imports: machine, report
    try:
        spec = importlib.util.spec_from_file_location("ablations", BENCHMARKS / "ablations.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def test_spread_is_half_the_range_and_rows_compare_to_the_default():
    ablations = load_ablations()
    assert ablations.spread([1.0, 3.0, None]) == (2.0, 1.0)
    assert ablations.spread([2.0]) == (2.0, None)
    runs = [{"variant": v, "held_out_loss": [0.1, loss], "videos_per_s": speed}
            for v, loss, speed in (("default", 0.2, 10.0), ("default", 0.4, 10.0),
                                   ("detach", 0.45, 12.0))]
    rows = {r["variant"]: r for r in ablations.summarise(runs, ["default", "detach"])}
    assert rows["default"]["loss_finest"] == pytest.approx(0.3)
    assert rows["default"]["loss_finest_spread"] == pytest.approx(0.1)
    assert rows["detach"]["loss_finest_vs_default"] == pytest.approx(1.5)
    assert rows["detach"]["speed_vs_default"] == pytest.approx(1.2)
    assert rows["detach"]["paper_fvd_vs_default"] == pytest.approx(397.3 / 378.2)


@one_pass_only
def test_variants_train_with_their_switch_and_are_reused(tmp_path, capsys):
    ablations = load_ablations()
    out, table = tmp_path / "runs", tmp_path / "ablations.json"
    argv = ["--budget", "0.0075", "--variants", "default", "detach", "--seeds", "0",
            "--preset", "tiny", "--batch-size", "4", "--held-out", "4",
            "--out-dir", str(out), "--json", str(table)]
    assert ablations.main(argv + ["--speed-repeats", "1"]) == 0
    result = json.loads(table.read_text())
    runs = {r["variant"]: r for r in result["runs"]}
    assert set(runs) == {"default", "detach"}
    for run in runs.values():
        assert run["steps"] == 3 and len(run["held_out_loss"]) == 3
        assert all(np.isfinite(run["held_out_loss"]))
    # Each run is its own model: the switch is in its saved config, and the two are scored
    # on the same held-out batch yet give other losses. Not before the third step: the
    # fusion's context kernel starts at zero, so no gradient reaches a coarse level through
    # it in the first step, and the scored EMA averages the weights each step starts from.
    for variant, detached in (("default", False), ("detach", True)):
        model = keras.saving.load_model(out / f"{variant}_s0.keras", compile=False)
        assert model.backbone.get_config()["detach_context"] is detached
    assert runs["default"]["held_out_loss"] != runs["detach"]["held_out_loss"]
    rows = {r["variant"]: r for r in result["rows"]}
    assert rows["default"]["loss_finest_vs_default"] == pytest.approx(1.0)
    # Speed: timed side by side in processes of their own, not the runs' own figures.
    assert set(result["speed"]) == {"default", "detach"}
    for variant, row in rows.items():
        assert row["videos_per_s"] == result["speed"][variant] > 0
        assert row["run_videos_per_s"] == runs[variant]["videos_per_s"]
    assert "detach" in capsys.readouterr().out
    # --reuse scores the runs in --out-dir again without training them.
    mtime = os.path.getmtime(out / "detach_s0.keras")
    assert ablations.main(argv + ["--reuse", "--speed-repeats", "0"]) == 0
    assert os.path.getmtime(out / "detach_s0.keras") == mtime
    reused = json.loads(table.read_text())
    assert reused["speed"] is None
    assert [r["videos_per_s"] for r in reused["rows"]] == [
        r["run_videos_per_s"] for r in reused["rows"]]
    again = {r["variant"]: r for r in reused["runs"]}
    assert again["detach"]["held_out_loss"] == pytest.approx(runs["detach"]["held_out_loss"])
