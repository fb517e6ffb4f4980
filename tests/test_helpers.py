"""The test helpers themselves: where the reference data is found and what a missing file does."""

import os

import pytest

from tests import helpers


def test_reference_dir_is_beside_the_repository():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert helpers.REFERENCE_DIR == os.path.join(os.path.dirname(root), "shared", "reference")


def test_present_reference_file_gives_its_path(tmp_path, monkeypatch):
    (tmp_path / "x.npz").write_bytes(b"")
    monkeypatch.setattr(helpers, "REFERENCE_DIR", str(tmp_path))
    monkeypatch.setenv("CI", "true")
    assert helpers.reference("x.npz") == str(tmp_path / "x.npz")


@pytest.mark.parametrize("ci", [None, "", "false", "1"])
def test_missing_reference_skips_outside_ci(tmp_path, monkeypatch, ci):
    monkeypatch.setattr(helpers, "REFERENCE_DIR", str(tmp_path))
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="absent.npz not found"):
        helpers.reference("absent.npz")


@pytest.mark.parametrize("ci", ["true", "TRUE", "true\n"])
def test_missing_reference_fails_in_ci(tmp_path, monkeypatch, ci):
    monkeypatch.setattr(helpers, "REFERENCE_DIR", str(tmp_path))
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match="absent.npz not found.*CI=true"):
        helpers.reference("absent.npz")
