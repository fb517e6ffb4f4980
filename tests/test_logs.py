"""metrics.jsonl as readers see it while a run appends to it."""

import pytest

from adverse_vision import logs


def test_a_line_being_written_is_left_out(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train/loss": 2.0}\n\n'
                                           '{"step": 2, "train/lo')
    assert logs.read_metrics(str(tmp_path)) == [{"step": 1, "train/loss": 2.0}]
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train/loss": 2.0}\n')
    assert logs.read_metrics(str(tmp_path)) == [{"step": 1, "train/loss": 2.0}]


def test_a_broken_line_names_the_file_and_the_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, "tr\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 2: not a JSON record"):
        logs.read_metrics(str(tmp_path))
