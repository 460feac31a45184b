"""The lm-evaluation-harness backend of `recipes.trainer.llm_eval.evaluate_tasks`, on local task files.

lm-eval (``pip install lm-eval``) runs offline on local files: the prompts `evaluate_tasks` built (few-shot
turns included, already rendered with the chat template or the plain format) are written to one JSONL
file per task and kind in a temporary folder, each with a task YAML (``dataset_path: json``,
``dataset_kwargs: {data_files: ...}``, ``doc_to_text: prompt``, ``target_delimiter: ""``,
``num_fewshot: 0``): ``output_type: multiple_choice`` (``doc_to_choice: choices``, ``doc_to_target: gold``,
metrics ``acc`` and ``acc_norm``) for the rows with choices, ``output_type: generate_until`` (greedy,
``max_gen_toks = max_new_tokens``) for exact match. `lm_eval.simple_evaluate` then runs them with
``HFLM(pretrained=model, tokenizer=...)`` and a ``TaskManager(include_path=folder, include_defaults=False)``
(indexing lm-eval's own few thousand task YAMLs takes ~15 s and is not needed). Everything reads local
files, so ``HF_HUB_OFFLINE=1`` holds; MMLU/TydiQA/BBH from the Hub are lm-eval's own task names for
users with a network, outside this function.

What comes from lm-eval: multiple-choice ``acc``/``acc_norm`` per row (its own log-likelihoods and
argmax) and the generated text; the generations are cut and scored by `answers_match` exactly as the
native backend's, so the two backends differ only in the model calls. Tokens match the native backend:
``add_bos_token=False`` for chat-templated text (the template wrote its special tokens), lm-eval's
default (the tokenizer's own special tokens unless the text starts with BOS) for plain text. The
tokenizer is deep-copied first, because lm-eval sets a missing pad token on the tokenizer it is given.
Generation runs until an end-of-sequence token or ``max_new_tokens`` (no ``until`` string), so the
newline rule is applied afterwards to the same greedy text. ``n_truncated`` is counted by the native
tokenisation rule, which lm-eval shares. lm-eval runs one full pass per choice where the native backend
shares a row's prompt across its choices, so it is the slower of the two (on 3-shot BBH rows with
SmolLM2-135M on a CPU the native full-pass mode, lm-eval's computation, took 3.5x the shared one for the
multiple-choice part); it is here to check the native numbers and for lm-eval's own Hub tasks.

Example:
    >>> metrics = evaluate_tasks(model, tokenizer, rows, backend="lm_eval")   # same keys as "native"
"""

from __future__ import annotations

import copy
import json
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .llm_eval import _cut_generation, _encode_pair, _resolve_device, encode_text

__all__ = ["import_lm_eval", "run_lm_eval", "write_task_files"]

_INSTALL_HINT = "backend='lm_eval' needs lm-evaluation-harness: pip install lm-eval"


def import_lm_eval():
    """``lm_eval`` with its ``tasks`` and HF model modules loaded; `ImportError` with the install command.

    Example:
        >>> lm_eval = import_lm_eval()
        >>> lm_eval.simple_evaluate
    """
    try:
        import lm_eval
        import lm_eval.models.huggingface  # noqa: F401
        import lm_eval.tasks  # noqa: F401
    except ImportError as error:
        raise ImportError(_INSTALL_HINT) from error
    return lm_eval


def _yaml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML scalar, whatever the characters


def _task_name(task: str, kind: str, index: int) -> str:
    slug = re.sub(r"[^0-9A-Za-z_]+", "_", task)[:40]
    return f"hf_prune_{kind}_{index}_{slug}"


def _metric(name: str) -> list[str]:
    return [f"  - metric: {name}", "    aggregation: mean", "    higher_is_better: true"]


def write_task_files(
    folder: str | os.PathLike,
    prompts: Sequence[str],
    tasks: Sequence[str],
    answers: Sequence[str],
    choices: Sequence[Sequence[str]],
    *,
    metrics: Sequence[str] = ("exact_match", "multiple_choice"),
    max_new_tokens: int = 32,
) -> dict[str, tuple[str, str]]:
    """Write one JSONL + task YAML per task and kind into ``folder``; returns ``{lm-eval name: (task, kind)}``.

    ``kind`` is ``"multiple_choice"`` (the task's rows with choices) or ``"exact_match"`` (all its rows).
    Each JSONL line holds ``row`` (the position in ``prompts``), ``prompt``, ``answer``, ``choices`` and
    ``gold`` (the answer's index in ``choices``; -1 for a generative row).

    Example:
        >>> names = write_task_files(tmp, ["<|user|>\\nx?\\n<|assistant|>\\n"], ["t"], ["yes"], [["yes", "no"]])
        >>> sorted(kind for _, kind in names.values())
        ['exact_match', 'multiple_choice']
    """
    folder = Path(folder)
    names: dict[str, tuple[str, str]] = {}
    for index, task in enumerate(dict.fromkeys(tasks)):
        rows = [i for i, t in enumerate(tasks) if t == task]
        kinds = []
        if "multiple_choice" in metrics and any(choices[i] for i in rows):
            kinds.append(("multiple_choice", [i for i in rows if choices[i]]))
        if "exact_match" in metrics:
            kinds.append(("exact_match", rows))
        for kind, kind_rows in kinds:
            name = _task_name(task, kind, index)
            data = folder / f"{name}.jsonl"
            with open(data, "w", encoding="utf-8") as handle:
                for i in kind_rows:
                    gold = list(choices[i]).index(answers[i]) if choices[i] else -1
                    handle.write(json.dumps({"row": i, "prompt": prompts[i], "answer": answers[i],
                                             "choices": list(choices[i]), "gold": gold}) + "\n")
            lines = [f"task: {name}", "dataset_path: json", "dataset_kwargs:", "  data_files:",
                     f"    test: {_yaml_string(str(data))}", "test_split: test", "num_fewshot: 0",
                     "doc_to_text: prompt", 'target_delimiter: ""']
            if kind == "multiple_choice":
                lines += ["output_type: multiple_choice", "doc_to_target: gold", "doc_to_choice: choices",
                          "metric_list:", *_metric("acc"), *_metric("acc_norm")]
            else:
                lines += ["output_type: generate_until", "doc_to_target: answer", "generation_kwargs:",
                          "  until: []", "  do_sample: false", f"  max_gen_toks: {int(max_new_tokens)}",
                          "metric_list:", *_metric("exact_match")]
            (folder / f"{name}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
            names[name] = (task, kind)
    return names


def _truncation(tokenizer, prompts, choices, template, metrics, max_new_tokens, max_length) -> np.ndarray:
    truncated = np.zeros(len(prompts), dtype=bool)
    for i, prompt in enumerate(prompts):
        if "exact_match" in metrics:
            truncated[i] |= len(encode_text(tokenizer, prompt, template=template)) > max_length - max_new_tokens
        if "multiple_choice" in metrics:
            truncated[i] |= any(sum(map(len, _encode_pair(tokenizer, prompt, c, template))) > max_length + 1
                                for c in choices[i])
    return truncated


def run_lm_eval(
    model,
    tokenizer,
    prompts: Sequence[str],
    tasks: Sequence[str],
    answers: Sequence[str],
    choices: Sequence[Sequence[str]],
    *,
    template: str,
    metrics: Sequence[str],
    max_new_tokens: int,
    batch_size: int,
    max_length: int,
    device=None,
) -> dict[str, Any]:
    """Per-row outcomes from lm-evaluation-harness, in the form `evaluate_tasks` summarises.

    Returns ``{"generations": [str] | None, "acc": {row: bool}, "acc_norm": {row: bool},
    "loglikelihoods": {row: [float]}, "truncated": bool array}``. The model is moved to ``device``
    (default as in the native backend), evaluated in eval mode and given back on its device in its mode.

    Example:
        >>> out = run_lm_eval(model, tok, prompts, tasks, answers, choices, template="plain",
        ...                   metrics=("multiple_choice",), max_new_tokens=8, batch_size=8, max_length=512)
    """
    import torch

    lm_eval = import_lm_eval()
    was_training, home = model.training, next(model.parameters()).device
    device = _resolve_device(device, home)
    out: dict[str, Any] = {"generations": [""] * len(prompts) if "exact_match" in metrics else None,
                           "acc": {}, "acc_norm": {}, "loglikelihoods": {}}
    try:
        if device != home:
            model.to(device)
        model.eval()
        with tempfile.TemporaryDirectory(prefix="hf_prune_lm_eval_") as folder:
            names = write_task_files(folder, prompts, tasks, answers, choices, metrics=metrics,
                                     max_new_tokens=max_new_tokens)
            lm = lm_eval.models.huggingface.HFLM(
                pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=batch_size, max_length=max_length,
                add_bos_token=False if template == "chat" else None)
            manager = lm_eval.tasks.TaskManager(include_path=folder, include_defaults=False)
            with torch.inference_mode():
                results = lm_eval.simple_evaluate(model=lm, tasks=list(names), task_manager=manager, num_fewshot=0,
                                                  log_samples=True, bootstrap_iters=0)
    finally:
        if device != home:
            model.to(home)
        model.train(was_training)
    for name, (_, kind) in names.items():
        for sample in results["samples"][name]:
            row = int(sample["doc"]["row"])
            if kind == "multiple_choice":
                out["acc"][row], out["acc_norm"][row] = bool(sample["acc"]), bool(sample["acc_norm"])
                out["loglikelihoods"][row] = [float(resp[0][0]) for resp in sample["resps"]]
            else:
                out["generations"][row] = _cut_generation(sample["resps"][0][0])
    out["truncated"] = _truncation(tokenizer, prompts, choices, template, metrics, max_new_tokens, max_length)
    return out
