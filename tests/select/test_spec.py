import pytest

import hf_prune as hp
from hf_prune.select.spec import parse_spec, run_spec


def test_parse_spec_values():
    fn, kwargs = parse_spec("random:fraction=0.25,seed=3,label_column=label,x=[1,2],flag=true,none=null")
    assert fn is hp.select.random
    assert kwargs == {"fraction": 0.25, "seed": 3, "label_column": "label", "x": [1, 2], "flag": True, "none": None}


def test_parse_spec_errors():
    with pytest.raises(ValueError, match="unknown selector 'nope'"):
        parse_spec("nope:fraction=0.1")
    with pytest.raises(ValueError, match="not key=value"):
        parse_spec("random:fraction")


def test_run_spec(blobs):
    ds, _, _ = blobs
    sub = run_spec(ds, "random:fraction=0.5,seed=1", seed=2)
    assert sub["row_id"] == hp.select.random(ds, fraction=0.5, seed=2)["row_id"]
