"""The selector contract, checked for every registered selector (`hf_prune.select.registry`).

One tiny dataset (60 rows in classes of 24/20/16, clustered 8-d ``emb``, distinct positive ``score``,
a 12-epoch ``dynamics`` list) serves every selector; a call names the input columns its registry
entry needs. What each test checks holds for every selector, so a new selector is covered by being
registered; method-specific properties stay in the per-method test files.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from datasets import Dataset

import hf_prune as hp
from hf_prune.ops.checks import seed_int
from hf_prune.ops.columns import add_column
from hf_prune.select import registry, spec
from hf_prune.select._core import split_budget

COUNTS = (24, 20, 16)
COLUMNS = {"embedding_column": "emb", "score_column": "score", "dynamics_column": "dynamics"}
SELECTORS = registry.selectors()
BUDGETED = [info for info in SELECTORS if info.budget]


def contract_data() -> Dataset:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), COUNTS)
    centers = rng.normal(scale=4.0, size=(3, 8))
    ds = Dataset.from_dict({"label": labels.tolist()})
    ds = add_column(ds, "emb", (centers[labels] + rng.normal(size=(len(labels), 8))).astype(np.float32))
    ds = add_column(ds, "score", (rng.permutation(len(labels)) + 1).astype(np.float32) / (len(labels) + 1))
    return add_column(ds, "dynamics", rng.random((len(labels), 12)).astype(np.float32))


DATA = contract_data()  # never modified (checked below); built once for the module


# Required options that are not input columns, built from the contract data. A selector with another
# required option fails `test_every_required_option_has_a_contract_value` until it is added here.
REQUIRED = {"target": lambda: DATA.select(range(0, 60, 6))}  # image_based: target embeddings in "emb"


def required_options(info) -> list[str]:
    params = list(inspect.signature(info.fn).parameters.values())[1:]
    return [p.name for p in params if p.default is inspect.Parameter.empty and p.name not in info.needs]


def inputs(info) -> dict:
    """The needed columns and required options of a call of ``info.fn`` on the contract data."""
    needed = {column: COLUMNS[column] for column in info.needs}
    return needed | {name: REQUIRED[name]() for name in required_options(info) if name in REQUIRED}


def call(info, dataset=DATA, **kwargs):
    """``info.fn`` on ``dataset`` with its needed columns, and a budget unless it takes none."""
    needed = inputs(info)
    if not info.budget:
        kwargs = {"min_value": 0.3, **kwargs}
    elif "fraction" not in kwargs and "size" not in kwargs:
        kwargs = {"size": 10, **kwargs}
    return info.fn(dataset, **{**needed, **kwargs})


def ids(sub) -> list[int]:
    return np.asarray(sub["row_id"]).tolist()


def by_name(infos):
    return pytest.mark.parametrize("info", infos, ids=[info.name for info in infos])


# --- the registry -------------------------------------------------------------------------------


def test_the_package_exports_the_registry():
    assert hp.select.__all__ == [*registry.names(), *hp.select.HELPERS]
    # Every selector 0.1.0 exported is registered (combine is a helper, prefix is new); a module that
    # registers selectors must be imported by the package, or the first assertion fails.
    assert set(registry.names()) >= set([
        "beta_sampling", "ccs", "d2_pruning", "dual", "dual_beta", "easy", "gm_matching", "gram_schmidt", "hard",
        "herding", "infomax", "k_center_greedy", "moderate", "norm_sampling", "probcover", "random", "threshold",
        "top_k", "typiclust", "facility_location", "graph_cut", "log_determinant", "disparity_min", "disparity_sum"])
    for info in SELECTORS:
        assert getattr(hp.select, info.name) is info.fn
        assert info.family in registry.FAMILIES and info.summary and info.summary == inspect.getdoc(info.fn).split("\n")[0]
    assert {info.name for info in registry.selectors("submodular")} >= {
        "facility_location", "graph_cut", "log_determinant", "disparity_min", "disparity_sum"}
    assert "threshold" in [info.name for info in SELECTORS if not info.budget]
    assert spec.available_selectors() == sorted([*registry.names(), "combine"])


@by_name(SELECTORS)
def test_every_required_option_has_a_contract_value(info):
    assert set(required_options(info)) <= set(REQUIRED), "add a value for it to REQUIRED in this file"


@by_name(SELECTORS)
def test_registry_entry_matches_the_signature(info):
    params = inspect.signature(info.fn).parameters
    assert list(params)[0] == "dataset"
    assert all(p.kind is p.KEYWORD_ONLY for p in list(params.values())[1:])
    assert set(info.needs) <= set(params) and info.device == ("device" in params)
    assert info.ordered == ("rank_column" in params) == ("initial_subset" in params)
    if info.budget:
        assert {name: params[name].default for name in ("fraction", "size", "seed", "label_column")} == {
            "fraction": None, "size": None, "seed": 0, "label_column": None}


def test_the_decorator_rejects_signatures_that_break_the_contract(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # nothing registered here leaks out
    declare = registry.selector(family="baseline")

    def positional(dataset, fraction=None, *, size=None, label_column=None, seed=0):
        """Doc."""

    def other_seed(dataset, *, fraction=None, size=None, label_column=None, seed=1):
        """Doc."""

    def no_device(dataset, *, fraction=None, size=None, label_column=None, seed=0):
        """Doc."""

    def half_ordered(dataset, *, fraction=None, size=None, label_column=None, seed=0, rank_column=None):
        """Doc."""

    with pytest.raises(TypeError, match="keyword-only"):
        declare(positional)
    with pytest.raises(TypeError, match="seed=0"):
        declare(other_seed)
    with pytest.raises(TypeError, match="lacks `device`"):
        registry.selector(family="baseline", device=True)(no_device)
    with pytest.raises(TypeError, match="needs \\['embedding_column'\\]"):
        registry.selector(family="baseline", needs=("embedding_column",))(no_device)
    with pytest.raises(TypeError, match="initial_subset"):
        declare(half_ordered)
    with pytest.raises(ValueError, match="family"):
        registry.selector(family="greedy")
    with pytest.raises(ValueError, match="already registered"):
        registry.selector(family="baseline")(inspect.unwrap(hp.select.random))


def test_a_body_without_its_own_provenance_step_is_an_error(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @registry.selector(family="baseline")
    def passthrough(dataset, *, fraction=None, size=None, label_column=None, seed=0):
        """Return a selection made by another method."""
        return hp.select.random(dataset, fraction=fraction, size=size, label_column=label_column, seed=seed)

    with pytest.raises(RuntimeError, match="passthrough must return the Dataset of its own provenance step"):
        passthrough(DATA, size=3)


# --- keyword-only arguments and budgets -----------------------------------------------------------


@by_name(SELECTORS)
def test_options_are_keyword_only(info):
    with pytest.raises(TypeError):
        info.fn(DATA, 0.5)
    with pytest.raises(TypeError, match="Dataset"):
        call(info, dataset=DATA.to_dict())


@by_name(BUDGETED)
def test_budget_rules(info):
    for budget in ({"fraction": 0.5, "size": 5}, {}):
        with pytest.raises(ValueError, match="exactly one of `fraction` or `size`"):
            info.fn(DATA, **inputs(info), **budget)
    with pytest.raises(ValueError, match="`size`=61 is larger than the number of rows \\(60\\)"):
        call(info, size=61)
    with pytest.raises(ValueError, match="`fraction`"):
        call(info, fraction=1.5)
    # round(f·n), half to even: 0.125·60 = 7.5 → 8; 0.175·60 = 10.5 → 10.
    assert len(call(info, fraction=0.125)) == 8
    assert len(call(info, fraction=0.175)) == 10
    # Per class, the split of `split_budget`: 10 over 24/20/16 → 4/3/3; every class keeps its own rows.
    sub = call(info, size=10, label_column="label")
    labels = np.asarray(DATA["label"])
    assert np.bincount(labels[ids(sub)], minlength=3).tolist() == split_budget(np.array(COUNTS), 10).tolist() == [4, 3, 3]
    assert np.asarray(sub["label"]).tolist() == labels[ids(sub)].tolist()


# --- row_id -------------------------------------------------------------------------------------------


def same_rows(sub, source):
    """The rows of ``sub`` are the rows of ``source`` at ``sub["row_id"]`` (every input column)."""
    picked = source.select(ids(sub))
    for column in DATA.column_names:
        np.testing.assert_array_equal(np.asarray(sub[column]), np.asarray(picked[column]), err_msg=column)


@by_name(SELECTORS)
def test_row_id_maps_back_through_chained_shuffled_and_filtered_inputs(info):
    first = call(info, size=40) if info.budget else call(info, min_value=0.2)
    assert ids(first) == sorted(ids(first)) and len(set(ids(first))) == len(first)
    same_rows(first, DATA)
    second = call(info, dataset=first, size=12) if info.budget else call(info, dataset=first, min_value=0.5)
    assert set(ids(second)) <= set(ids(first))
    same_rows(second, DATA)  # ids of the original data, not positions in `first`
    for view in (DATA.shuffle(seed=1), DATA.filter(lambda label: label != 1, input_columns="label")):
        sub = call(info, dataset=view, size=8) if info.budget else call(info, dataset=view)
        same_rows(sub, view)


@by_name(SELECTORS)
def test_the_input_is_untouched(info):
    fingerprint, description, table = DATA._fingerprint, DATA.info.description, DATA.data.table
    kwargs = {"rank_column": "rank"} if info.ordered else {}
    call(info, label_column="label", **kwargs) if info.budget else call(info, **kwargs)
    assert DATA._fingerprint == fingerprint and DATA.info.description == description
    assert DATA.column_names == ["label", "emb", "score", "dynamics"] and DATA.data.table.equals(table)


# --- determinism and seeds ------------------------------------------------------------------------------


@by_name(BUDGETED)
def test_same_seed_same_rows_int_or_generator(info):
    assert ids(call(info, size=12, seed=4, label_column="label")) == ids(call(info, size=12, seed=4, label_column="label"))
    # A Generator gives one draw (taken from the caller's Generator, as Dataset.shuffle(generator=...)
    # does), used as that int seed would be and recorded as the step's seed.
    generator, reference = np.random.default_rng(7), np.random.default_rng(7)
    from_generator = call(info, size=12, seed=generator)
    drawn = seed_int(reference)
    assert generator.integers(2**32) == reference.integers(2**32)
    assert hp.provenance(from_generator)[-1]["params"]["seed"] == drawn
    assert ids(call(info, size=12, seed=np.random.default_rng(7))) == ids(from_generator)
    assert ids(call(info, size=12, seed=drawn)) == ids(from_generator)


# --- errors name the column or parameter ----------------------------------------------------------------------


@by_name(SELECTORS)
def test_errors_name_the_column_or_parameter(info):
    for column in info.needs:
        with pytest.raises(KeyError, match="'missing_column'"):
            call(info, **{column: "missing_column"})
    if not info.budget:
        return
    with pytest.raises(KeyError, match="'missing_label'"):
        call(info, label_column="missing_label")
    for seed in (-1, 1.5, "0", None, True):
        with pytest.raises(ValueError, match="`seed`"):
            call(info, seed=seed)
    with pytest.raises(ValueError, match="empty"):
        call(info, dataset=DATA.select([]), fraction=0.5)


# --- provenance and fingerprint -------------------------------------------------------------------------------


@by_name(SELECTORS)
def test_provenance_step_and_fingerprint(info):
    kwargs = {"size": 30, "seed": 3, "label_column": "label"} if info.budget else {"min_value": 0.3}
    sub = call(info, **kwargs)
    step = hp.provenance(sub)[-1]
    assert step["method"] == info.name and not step["stale"]
    for name, value in kwargs.items():
        assert step["params"][name] == value, name
    if info.budget:
        assert step["params"]["fraction"] is None
    assert step["input_fingerprint"] == DATA._fingerprint and step["input_rows"] == len(DATA)
    assert step["output_fingerprint"] == sub._fingerprint and step["output_rows"] == len(sub)
    assert step["library"] == "hf_prune" and step["version"] == hp.__version__
    # The fingerprint is derived from the input, method and arguments: the same call gives the same one,
    # any other parameter (even one that keeps the same rows) a different one.
    assert call(info, **kwargs)._fingerprint == sub._fingerprint
    other = {**kwargs, "size": 31} if info.budget else {**kwargs, "min_value": 0.31}
    assert call(info, **other)._fingerprint != sub._fingerprint
    if info.budget:
        assert call(info, **{**kwargs, "seed": 4})._fingerprint != sub._fingerprint
    # A chained step reads exactly what the first one wrote: neither is stale.
    again = call(info, dataset=sub, size=5) if info.budget else call(info, dataset=sub, min_value=0.5)
    assert [s["stale"] for s in hp.provenance(again)] == [False, False]
    assert hp.provenance(again)[-1]["input_fingerprint"] == sub._fingerprint


@by_name([info for info in SELECTORS if info.ordered])
def test_ordered_selections_record_the_same_fingerprint_they_return(info):
    sub = call(info, size=10, rank_column="rank")
    assert hp.provenance(sub)[-1]["output_fingerprint"] == sub._fingerprint
    assert call(info, size=10)._fingerprint != sub._fingerprint  # rank_column is a parameter too


def test_derive_fingerprint_hashes_arguments_by_name_and_value():
    base = registry.derive_fingerprint("abc", "random", {"size": 3, "seed": 0, "initial_subset": [1, 2]})
    assert registry.derive_fingerprint("abc", "random", {"initial_subset": np.array([1, 2]), "seed": 0, "size": 3}) == base
    assert registry.derive_fingerprint("abc", "random", {"size": 3, "seed": 0, "initial_subset": [1, 2],
                                                         "device": "cuda"}) == base  # same rows on every device
    for changed in ({"size": 4, "seed": 0, "initial_subset": [1, 2]}, {"size": 3, "seed": 0, "initial_subset": [2, 1]}):
        assert registry.derive_fingerprint("abc", "random", changed) != base
    assert registry.derive_fingerprint("abd", "random", {"size": 3, "seed": 0, "initial_subset": [1, 2]}) != base
    assert registry.derive_fingerprint("abc", "top_k", {"size": 3, "seed": 0, "initial_subset": [1, 2]}) != base
