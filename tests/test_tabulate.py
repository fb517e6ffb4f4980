"""tabulate: tables of finished runs, mean +- sample std over seeds, paired differences."""

import json
import subprocess
import sys

import pytest

from adverse_vision import tabulate
from tests.helpers import ROOT


def _run(folder, seed, evals, final=400, total=400, preempted=False):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"seed": seed, "total_steps": total}))
    (folder / "summary.json").write_text(json.dumps(
        {"final_step": final, "preempted": preempted, "evals": evals}))


@pytest.fixture
def runs(tmp_path):
    for seed, (night, day) in enumerate([(0.70, 0.20), (0.60, 0.30), (0.80, 0.10)]):
        _run(tmp_path / f"ir_{seed}", seed, {"night": {"mAP": night, "EN": 6.5, "SCD": None},
                                             "day": {"mAP": day}})
    for seed, (night, day) in enumerate([(0.10, 0.50), (0.20, 0.60)]):
        _run(tmp_path / f"vis_{seed}", seed, {"night": {"mAP": night, "EN": 5.0, "SCD": None},
                                              "day": {"mAP": day}})
    (tmp_path / "ir_0.log").write_text("a file beside the workdirs: not a run")
    return tmp_path


def test_table_and_paired_differences(runs):
    text = tabulate.report([f"infrared={runs}/ir_*", f"visible-light={runs}/vis_*"],
                           ["night/mAP", "day/mAP", "night/EN", "night/SCD"],
                           paired_specs=["infrared-visible-light"])
    lines = text.splitlines()
    assert lines[0] == "| arm | seeds | night/mAP | day/mAP | night/EN | night/SCD |"
    # mean and sample std of 70, 60, 80: 70 and 10
    assert lines[2] == ("| infrared | 0, 1, 2 | 70.00 ± 10.00 (70.00 / 60.00 / 80.00) | "
                        "20.00 ± 10.00 (20.00 / 30.00 / 10.00) | 6.50 ± 0.00 (6.50 / 6.50 / 6.50)"
                        " | n/a |")
    assert lines[3].startswith("| visible-light | 0, 1 | 15.00 ± 7.07 (10.00 / 20.00) |")
    # a metric of one arm only: n/a in the other's row
    _run(runs / "restorer_0", 0, {"night": {"mAP": 0.5, "psnr": 21.0}, "day": {"mAP": 0.5}})
    two = tabulate.report([f"restorer={runs}/restorer_*", f"infrared={runs}/ir_*"],
                          ["night/psnr", "night/mAP"]).splitlines()
    assert two[2] == "| restorer | 0 | 21.00 | 50.00 |"
    assert two[3].startswith("| infrared | 0, 1, 2 | n/a | 70.00 ± 10.00")
    # seeds 0 and 1 only: night 60 and 40, day -30 and -30
    assert ("infrared minus visible-light, per seed: night/mAP 50.00 ± 14.14 (60.00 / 40.00); "
            "day/mAP -30.00 ± 0.00 (-30.00 / -30.00)") in text


def test_bad_input_is_named(runs):
    with pytest.raises(ValueError, match="no workdir matches"):
        tabulate.report([f"x={runs}/nothing_*"], ["night/mAP"])
    with pytest.raises(ValueError, match="no run has 'dusk/mAP' .the evaluations: day, night"):
        tabulate.report([f"x={runs}/ir_*"], ["dusk/mAP"])
    with pytest.raises(ValueError, match="no run has 'night/PSNR' .its metrics: EN, SCD, mAP"):
        tabulate.report([f"x={runs}/ir_*"], ["night/PSNR"])
    with pytest.raises(ValueError, match="must be ENTRY/METRIC"):
        tabulate.report([f"x={runs}/ir_*"], ["mAP"])
    with pytest.raises(ValueError, match="must be NAME=PATTERN"):
        tabulate.report([f"{runs}/ir_*"], ["night/mAP"])
    with pytest.raises(ValueError, match="A-B with two arm names"):
        tabulate.report([f"x={runs}/ir_*"], ["night/mAP"], paired_specs=["x-y"])
    _run(runs / "cut_0", 0, {"night": {"mAP": 0.1}}, final=120)
    with pytest.raises(ValueError, match="cut_0: the run stopped at step 120 of 400"):
        tabulate.report([f"x={runs}/cut_*"], ["night/mAP"])
    (runs / "none_0").mkdir()
    with pytest.raises(ValueError, match="none_0: no summary.json"):
        tabulate.report([f"x={runs}/none_*"], ["night/mAP"])


def test_command_line(runs):
    out = subprocess.run([sys.executable, "-m", "adverse_vision.tabulate", "--arm",
                          f"ir={runs}/ir_*", "--columns", "night/mAP"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert "| ir | 0, 1, 2 | 70.00 ± 10.00" in out
    bad = subprocess.run([sys.executable, "-m", "adverse_vision.tabulate", "--arm",
                          f"ir={runs}/ir_*", "--columns", "dusk/mAP"], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith(
        "error: ") and "no run has 'dusk/mAP'" in bad.stderr
