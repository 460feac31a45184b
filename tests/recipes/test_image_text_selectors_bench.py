import json

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from recipes.benchmarks.image_text_selectors import (
    Planted,
    main,
    paper_semdedup_m,
    reference_cluster_top_k,
    reference_image_based,
    within_cluster_ss,
)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "out.json"
    threads = torch.get_num_threads()
    main(["--quick", "--rows", "1200", "--threads", "1", "--output", str(path)])
    assert torch.get_num_threads() == threads  # the run restores the thread settings it changed
    return json.loads(path.read_text())


def test_semdedup_ours_equals_released_code_and_drops_exactly_the_planted_copies(quick):
    assert [r["n_clusters"] for r in quick["semdedup"]] == [2, 1]
    for row in quick["semdedup"]:
        assert row["same_rows"] is True
        assert row["kept"] == row["reference_kept"]
        # 10% of 1,200 rows are planted copies: one row of each pair goes, nothing else.
        assert row["planted_copies"] == 120
        assert row["dropped"] == row["dropped_planted"] == row["dropped_distinct_pairs"] == 120
        assert row["dropped_unplanted"] == 0
        assert row["largest_max_abs_m_difference"] < 1e-5
        assert row["largest_matrix_bytes"] == row["largest_cluster"] ** 2 * 4
    assert quick["semdedup"][1]["largest_cluster"] == 1200  # one cluster holds every row
    assert "same rows" in quick["table"] and "ROWS DIFFER" not in quick["table"]


def test_cluster_top_k_and_image_based_agree_with_their_references(quick):
    ctk, img = quick["cluster_top_k"], quick["image_based"]
    assert ctk["kept"] == ctk["reference_kept"] == 360
    assert ctk["ours_reproduced_from_its_assignment"] is True
    assert 0 < ctk["overlap"] <= 1 and ctk["ours_inertia"] > 0 and ctk["reference_inertia"] > 0
    assert img["same_rows_on_our_centres"] is True and img["rows_differing_on_our_centres"] == 0
    assert 0 < img["precision"] <= 1 and img["recall"] > 0.9
    for row in (ctk, img):
        assert 1 <= row["ours_kmeans_steps"] <= 100 and row["ours_kmeans_s"] > 0
    assert img["ours_inertia"] > 0 and img["reference_inertia"] > 0
    assert quick["nemo_curator"].startswith("not run")


def test_paper_semdedup_m_is_the_column_max_of_the_upper_triangle():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.6, 0.8]])
    # Row 3 repeats row 2 (similarity 1); row 0 has nothing before it; negatives clip to the zeroed triangle.
    np.testing.assert_allclose(paper_semdedup_m(x).numpy(), [0.0, 0.0, 0.8, 1.0], atol=1e-6)


def test_reference_cluster_top_k_splits_the_budget_proportionally():
    assign = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    score = np.array([0.1, 0.9, 0.5, 0.7, 0.3, 0.8, 0.2, 0.6, 0.95, 0.4])
    # 5 of 10: cluster 0 gets 2 (its 0.9 and 0.7), cluster 1 gets 3 (0.95, 0.8, 0.6).
    assert reference_cluster_top_k(assign, 2, score, 5).tolist() == [1, 3, 5, 7, 8]


def test_within_cluster_ss_matches_scikit_learn_inertia():
    x = np.random.default_rng(0).normal(size=(300, 4))
    km = KMeans(n_clusters=5, n_init=1, random_state=0).fit(x)
    assert within_cluster_ss(x, km.labels_) == pytest.approx(km.inertia_, rel=1e-6)


def test_reference_image_based_keeps_the_clusters_a_target_row_hits():
    pool = np.array([[1, 0], [0.99, 0.141], [0, 1], [0.141, 0.99]], dtype=np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    centres = np.array([[1, 0], [0, 1]], dtype=np.float32)
    target = np.array([[0.2, 0.98]], dtype=np.float32)
    assert reference_image_based(pool, target, 2, 0, centres).tolist() == [2, 3]


def test_planted_ground_truth_marks_each_copy_and_its_source():
    data = Planted(200, 16, 5, 0.1, 20, 2, seed=3)
    pair = data.pair
    assert (pair >= 0).sum() == 40 and np.bincount(pair[pair >= 0]).tolist() == [2] * 20
    unit = data.emb / np.linalg.norm(data.emb, axis=1, keepdims=True)
    for p in range(20):
        a, b = np.flatnonzero(pair == p)
        assert unit[a] @ unit[b] > 0.999
        assert data.component[a] == data.component[b]
