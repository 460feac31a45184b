import numpy as np
import pytest

import hf_prune as hp
from hf_prune.corrupt import symmetric_label_noise
from hf_prune.data import load_digits
from hf_prune.ops.checks import (
    as_generator,
    check_bool,
    check_choice,
    check_nonnegative,
    check_optional_positive,
    check_positive,
    check_positive_int,
    check_probability,
    check_seed,
    seed_int,
)
from tests.conftest import make_dataset

BAD_SEEDS = [True, 1.0, -1, "0", None, [0]]


def test_number_checks_return_canonical_values_and_name_the_parameter():
    assert check_positive_int("k", np.int64(3)) == 3 and type(check_positive_int("k", np.int64(3))) is int
    assert check_positive_int("n", 0, minimum=0) == 0
    assert check_nonnegative("g", np.float32(0.5)) == 0.5
    assert check_positive("eps", 1) == 1.0
    assert check_optional_positive("d", None) is None and check_optional_positive("d", 2) == 2.0
    assert check_probability("rate", 1) == 1.0
    cases = [
        (check_positive_int, ("k", True)), (check_positive_int, ("k", 2.0)), (check_positive_int, ("k", 0)),
        (check_nonnegative, ("k", -1e-9)), (check_nonnegative, ("k", float("inf"))), (check_nonnegative, ("k", "1")),
        (check_positive, ("k", 0.0)), (check_positive, ("k", float("nan"))), (check_positive, ("k", False)),
        (check_optional_positive, ("k", 0)), (check_probability, ("k", 1.5)), (check_probability, ("k", float("nan"))),
        (check_choice, ("k", "x", ("a", "b"))), (check_choice, ("k", True, (1, 2))),
        (check_bool, ("k", 1)), (check_bool, ("k", "True")),
    ]
    for check, args in cases:
        with pytest.raises(ValueError, match="`k`"):
            check(*args)


def test_choice_and_bool():
    assert check_choice("metric", "l2", ("cosine", "l2", "ip")) == "l2"
    with pytest.raises(ValueError, match=r"`metric` must be one of \('cosine', 'l2', 'ip'\), got 'euclidean'"):
        check_choice("metric", "euclidean", ("cosine", "l2", "ip"))
    assert check_bool("descending", np.bool_(False)) is False


def test_one_seed_rule():
    assert check_seed(np.int32(4)) == 4
    gen = np.random.default_rng(0)
    assert check_seed(gen) is gen
    for bad in BAD_SEEDS:
        with pytest.raises(ValueError, match="`seed` must be an integer ≥ 0 or a numpy.random.Generator"):
            check_seed(bad)
    with pytest.raises(ValueError, match="`rng`"):
        check_seed(-3, "rng")
    # A Generator gives one draw: the same state gives the same int, and the Generator advances.
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    assert seed_int(a) == seed_int(b) == int(np.random.default_rng(7).integers(2**63 - 1))
    assert seed_int(a) != seed_int(np.random.default_rng(7))
    assert seed_int(5) == 5


def test_as_generator():
    gen = np.random.default_rng(1)
    assert as_generator(gen) is gen
    assert as_generator(3).integers(1000) == np.random.default_rng(3).integers(1000)
    assert as_generator(3, 2).integers(1000) == np.random.default_rng([3, 2]).integers(1000)
    drawn = seed_int(np.random.default_rng(1))
    assert as_generator(np.random.default_rng(1), 2).integers(1000) == np.random.default_rng([drawn, 2]).integers(1000)


def test_selectors_take_an_int_or_a_generator_seed(blobs):
    ds, _, labels = blobs
    # An int seed keeps its rows: group g draws from default_rng([seed, g]) (here `random`'s choice).
    sub = hp.select.random(ds, size=9, label_column="label", seed=3)
    expected = []
    for g, (c, k) in enumerate(zip(range(3), [4, 3, 2])):
        rows = np.flatnonzero(labels == c)
        expected.extend(rows[np.random.default_rng([3, g]).choice(len(rows), size=k, replace=False)])
    assert sub["row_id"] == sorted(expected)
    # The same Generator state gives the same rows: those of the int it draws, which provenance records.
    with_gen = hp.select.random(ds, size=9, label_column="label", seed=np.random.default_rng(11))
    again = hp.select.random(ds, size=9, label_column="label", seed=np.random.default_rng(11))
    drawn = seed_int(np.random.default_rng(11))
    assert with_gen["row_id"] == again["row_id"]
    assert with_gen["row_id"] == hp.select.random(ds, size=9, label_column="label", seed=drawn)["row_id"]
    assert hp.provenance(with_gen)[-1]["params"]["seed"] == drawn
    # Selectors with per-group pickers and chained ones (combine) follow the same rule.
    for select in (lambda s: hp.select.k_center_greedy(ds, size=6, label_column="label", seed=s),
                   lambda s: hp.select.combine(ds, baseline="random", then="norm", size=6, seed=s)):
        assert select(np.random.default_rng(2))["row_id"] == select(seed_int(np.random.default_rng(2)))["row_id"]


@pytest.mark.parametrize("bad", BAD_SEEDS)
def test_bad_seeds_name_seed_everywhere(blobs, bad):
    ds, _, _ = blobs
    calls = [
        lambda: hp.select.random(ds, fraction=0.5, seed=bad),
        lambda: hp.select.top_k(ds, fraction=0.5, score_column="score", seed=bad),
        lambda: hp.select.combine(ds, baseline="random", size=4, seed=bad),
        lambda: hp.score.ssp(ds, n_clusters=2, seed=bad),
        lambda: symmetric_label_noise(ds, rate=0.1, seed=bad),
        lambda: load_digits(seed=bad),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="`seed`"):
            call()


def test_generator_seeds_outside_select():
    ds = make_dataset(np.random.default_rng(0).normal(size=(30, 4)), label=np.arange(30) % 3)
    one = symmetric_label_noise(ds, rate=0.3, seed=np.random.default_rng(5))
    two = symmetric_label_noise(ds, rate=0.3, seed=seed_int(np.random.default_rng(5)))
    assert one["label"] == two["label"]
    a = hp.score.ssp(ds, n_clusters=2, seed=np.random.default_rng(5), backend="torch")
    b = hp.score.ssp(ds, n_clusters=2, seed=seed_int(np.random.default_rng(5)), backend="torch")
    assert a["ssp"] == b["ssp"]


def test_embedder_seed_follows_the_same_rule():
    with pytest.raises(ValueError, match="`seed`"):
        hp.embed.RandomNetEmbedder(seed=-1, image_column="img")
    drawn = seed_int(np.random.default_rng(9))
    assert hp.embed.RandomNetEmbedder(seed=np.random.default_rng(9), image_column="img").seed == drawn


def test_shared_checks_replace_local_copies(blobs):
    ds, _, _ = blobs
    for call, name in [
        (lambda: hp.select.top_k(ds, fraction=0.5, score_column="score", descending=1), "descending"),
        (lambda: hp.select.ccs(ds, fraction=0.5, score_column="score", descending="yes"), "descending"),
        (lambda: hp.select.norm_sampling(ds, fraction=0.5, inverse=0), "inverse"),
        (lambda: hp.select.norm_sampling(ds, fraction=0.5, mode="greedy"), "mode"),
        (lambda: hp.select.moderate(ds, fraction=0.5, center="mode"), "center"),
    ]:
        with pytest.raises(ValueError, match=f"`{name}` must be"):
            call()


def test_gradient_projection_seed_takes_a_generator():
    pytest.importorskip("peft")
    from tests.embed.test_lora_gradients import _tiny_lora_model

    model = _tiny_lora_model()
    emb = hp.embed.LoRAGradientEmbedder(model, dim=8, seed=np.random.default_rng(3), device="cpu")
    assert emb.projection.seed == seed_int(np.random.default_rng(3))
    with pytest.raises(ValueError, match="`seed`"):
        hp.embed.LoRAGradientEmbedder(model, dim=8, seed="3", device="cpu")
