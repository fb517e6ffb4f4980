"""workdir.check_fit: loaded variables against the model's, each difference named."""

import numpy as np
import pytest

from adverse_vision import workdir


def _tree(**shapes):
    return {"params": {name: {"kernel": np.zeros(shape)} for name, shape in shapes.items()}}


def test_variable_shapes_names_every_leaf_by_path():
    assert workdir.variable_shapes(_tree(conv=(3, 3, 4, 8), head=(8,))) == {
        "['params']['conv']['kernel']": (3, 3, 4, 8), "['params']['head']['kernel']": (8,)}


def test_check_fit_accepts_the_same_shapes():
    workdir.check_fit(_tree(conv=(3, 3, 4, 8)), _tree(conv=(3, 3, 4, 8)), "the checkpoint")


@pytest.mark.parametrize("loaded, message", [
    (_tree(conv=(3, 3, 4, 8)), r"the checkpoint does not fit this model: missing \['params'\]\['head'\]"),
    (_tree(conv=(3, 3, 4, 8), head=(8,), extra=(1,), more=(2,)),
     r"unexpected \['params'\]\['extra'\]\['kernel'\] and 1 more"),
    (_tree(conv=(3, 3, 4, 16), head=(16,)),
     r"\['params'\]\['conv'\]\['kernel'\] has shape \(3, 3, 4, 16\), the model needs \(3, 3, 4, 8\) "
     r"\(1 more differ\)"),
])
def test_check_fit_names_the_first_difference(loaded, message):
    with pytest.raises(ValueError, match=message):
        workdir.check_fit(loaded, _tree(conv=(3, 3, 4, 8), head=(8,)), "the checkpoint")
