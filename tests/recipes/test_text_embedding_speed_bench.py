"""The text-embedding speed benchmark runs on a tiny encoder and a tiny ShareGPT file: every line timed, the
vectors compared, the results stored."""

import json

import pytest
import torch
import transformers as T
from tokenizers import Tokenizer, models, pre_tokenizers

from recipes.benchmarks import text_embedding_speed as bench

WORDS = ["[PAD]", "[UNK]", "the", "cat", "dog", "sat", "on", "mat", "ran", "a", "red", "why", "did", "?"]
PROMPTS = ["why did the cat sit on the mat ?", "the dog ran", "a red cat", "why ?",
           "the cat sat on a red mat on the mat and the dog ran on the mat", "dog dog", "a cat ran ?"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    T.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(folder / "model")
    torch.manual_seed(0)
    config = T.BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=24, max_position_embeddings=12)
    T.BertModel(config, add_pooling_layer=False).save_pretrained(folder / "model")
    conversations = [{"id": str(i), "conversations": [{"from": "human", "value": p}, {"from": "gpt", "value": "ok"}]}
                     for i, p in enumerate(PROMPTS)]
    (folder / "sharegpt.json").write_text(json.dumps(conversations))
    return folder


def _run(inputs, tmp_path, *extra):
    return bench.main(["--rows", "6", "--batch-size", "2", "--warmup", "2", "--blocks", "2", "--threads", "1",
                       "--model", str(inputs / "model"), "--sharegpt-path", str(inputs / "sharegpt.json"),
                       "--output-dir", str(tmp_path), *extra])


def test_both_embedder_lines_are_timed_agree_and_are_stored(inputs, tmp_path):
    out = _run(inputs, tmp_path, "--skip-reference")
    assert set(out["seconds"]) == {"unsorted", "sorted"} and all(s > 0 for s in out["seconds"].values())
    assert out["settings"]["rows"] == 6 and out["ratio_to"] == "sorted" and out["ratios"]["sorted"] == 1.0
    # Sorting by length changes only the padding, never the vectors.
    assert out["max_abs_difference"]["unsorted vs sorted"] < 1e-6
    assert out["tokens"]["truncated_rows"] == 1  # the long prompt is cut at the model's 12 positions
    assert json.loads((tmp_path / "results.json").read_text())["seconds"] == out["seconds"]


@pytest.mark.slow
def test_sentence_transformers_is_timed_on_the_same_rows_and_gives_the_same_vectors(inputs, tmp_path):
    pytest.importorskip("sentence_transformers")
    out = _run(inputs, tmp_path)
    assert out["ratio_to"] == "sentence-transformers" and set(out["ratios"]) == {"unsorted", "sorted",
                                                                                 "sentence-transformers"}
    assert max(out["max_abs_difference"].values()) < 1e-5


def test_bad_options_are_named(tmp_path):
    with pytest.raises(SystemExit, match="--rows"):
        bench.main(["--rows", "0", "--output-dir", str(tmp_path)])
