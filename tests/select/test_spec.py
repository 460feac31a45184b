import pytest

import hf_prune as hp
from hf_prune.select.spec import check_spec, parse_spec, parse_value, run_spec


def test_parse_spec_values():
    fn, kwargs = parse_spec("random:fraction=0.25,seed=3,label_column=label")
    assert fn is hp.select.random
    assert kwargs == {"fraction": 0.25, "seed": 3, "label_column": "label"}
    # Options are only those the selector takes (see below); values parse as JSON, lists included.
    fn, kwargs = parse_spec("top_k:size=2,score_column=s,descending=false,label_column=null")
    assert fn is hp.select.top_k and kwargs == {"size": 2, "score_column": "s", "descending": False, "label_column": None}
    assert [parse_value(v) for v in ("[1,2]", "true", "None", "abc")] == [[1, 2], True, None, "abc"]


def test_parse_spec_errors():
    with pytest.raises(ValueError, match="unknown selector 'nope'"):
        parse_spec("nope:fraction=0.1")
    with pytest.raises(ValueError, match="not key=value"):
        parse_spec("random:fraction")


def test_run_spec(blobs):
    ds, _, _ = blobs
    sub = run_spec(ds, "random:fraction=0.5,seed=1", seed=2)
    assert sub["row_id"] == hp.select.random(ds, fraction=0.5, seed=2)["row_id"]


def test_parse_spec_rejects_unknown_and_duplicate_options():
    with pytest.raises(ValueError, match="random has no option 'sede'; its options are: fraction, size, label_column, seed"):
        parse_spec("random:fraction=0.1,sede=1")
    with pytest.raises(ValueError, match="option 'seed' is given twice"):
        parse_spec("random:seed=1,fraction=0.1,seed=2")


def test_check_spec_requires_the_selector_s_required_options():
    with pytest.raises(ValueError, match="top_k needs option\\(s\\) score_column; its options are: fraction, size, score_column"):
        check_spec("top_k:fraction=0.5")
    assert check_spec("top_k:fraction=0.5", score_column="score")[1] == {"fraction": 0.5, "score_column": "score"}


def test_run_spec_takes_required_options_from_overrides(blobs):
    ds, _, _ = blobs
    sub = run_spec(ds, "top_k:size=3", score_column="score")
    assert sub["row_id"] == hp.select.top_k(ds, size=3, score_column="score")["row_id"]
    with pytest.raises(ValueError, match="needs option"):
        run_spec(ds, "top_k:size=3")
