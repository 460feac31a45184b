import json

import numpy as np
from datasets import load_from_disk
from huggingface_hub import DatasetCard

import hf_prune as hp
from tests.conftest import make_dataset


def _subset():
    ds = make_dataset(np.eye(10), label=[0, 1] * 5)
    first = hp.select.random(ds, size=6, seed=1)
    return ds, hp.select.random(first, size=3, label_column="label", seed=2)


def test_card_lists_every_step_with_parameters():
    ds, sub = _subset()
    card = hp.hub.dataset_card(sub, repo_id="me/tiny", source="toy")
    text = card.content
    assert "# tiny" in text and "Source dataset: `toy`" in text
    assert text.count("`random`") == 2 and "`seed=2`" in text and ds._fingerprint in text
    blob = text.split("```json\n")[1].split("```")[0]
    assert json.loads(blob) == hp.provenance(sub)
    assert card.data.tags == ["hf_prune", "data-pruning", "coreset"]


def test_save_subset_round_trip(tmp_path):
    _, sub = _subset()
    path = hp.hub.save_subset(sub, tmp_path / "sub")
    loaded = load_from_disk(path)
    assert loaded["row_id"] == sub["row_id"]
    assert hp.provenance(loaded) == hp.provenance(sub)  # provenance survives save_to_disk
    assert "`random`" in DatasetCard.load(tmp_path / "sub" / "README.md").content


def test_push_subset_pushes_data_then_card(monkeypatch):
    _, sub = _subset()
    calls = []
    monkeypatch.setattr(type(sub), "push_to_hub", lambda self, repo_id, **kw: calls.append(("data", repo_id, kw)))
    monkeypatch.setattr(DatasetCard, "push_to_hub", lambda self, repo_id, **kw: calls.append(("card", repo_id, kw)))
    hp.hub.push_subset(sub, "me/tiny", private=True)
    assert [c[0] for c in calls] == ["data", "card"] and calls[0][2]["private"] is True
    assert calls[1][2]["repo_type"] == "dataset"
