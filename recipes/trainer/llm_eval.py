"""Evaluation of a causal LM on instruction task rows: exact match of greedy generations and
multiple-choice log-likelihood, per task and averaged over tasks.

Rows are in the instruction schema of `hf_prune.data`: ``messages`` (a conversation ending in the gold
assistant turn), ``task``, ``answer`` (the gold text) and, optionally, ``choices`` (the options of a
multiple-choice row; ``[]`` or no column for a generative row).

Prompts. The prompt of a row is its conversation without the final assistant turn, preceded by
``few_shot`` solved examples of the same task drawn from ``shots`` (e.g. the validation split). The shots
are drawn once per task (seeded by ``seed`` and the task name, the same for every row of the task, as BBH's
fixed few-shot prompts) and enter as earlier turns of one conversation: the row's system turns first, then
each shot's user/assistant turns (shots' own system turns dropped), then the row's turns. That conversation
is rendered by `hp.data.render_messages` with ``add_generation_prompt=True``, the function training renders
with: the tokenizer's chat template (``template="chat"``) or the plain Tulu format (``template="plain"``,
``<|user|>\\n...\\n<|assistant|>\\n``), so training and evaluation see the same text, and it is tokenised with
training's special tokens (none added to chat-templated text, the tokenizer's default, e.g. a Llama BOS, to
plain text; `encode_text`). Keep ``shots`` disjoint from the evaluated rows; nothing here removes overlaps.

Multiple choice (rows with non-empty ``choices``). The score of a choice is log P(choice | prompt), summed
over the choice's tokens. Tokenisation is lm-evaluation-harness's: trailing whitespace of the prompt moves
to the front of the continuation, ``prompt + choice`` is tokenised whole and split at the length of the
tokenised prompt (so a token merged across the boundary counts as prompt, exactly as lm-eval scores it);
only when that leaves no continuation token is the split moved back to the longest common prefix of the two
tokenisations. The answer follows the generation prompt directly (no separator), as in training.
``multiple_choice_acc`` is the share of rows whose highest sum is the gold choice,
``multiple_choice_acc_norm`` the same with each sum divided by the choice's length in characters
(lm-eval's ``acc_norm``). Ties go to the lower choice position. The choices of a row share one forward
pass of the prompt (its KV cache), a pass per row instead of one per choice (`choice_loglikelihoods`).

Exact match (every row). Greedy decoding, batched with left padding, stops at an end-of-sequence token or
at the first newline after the first non-blank character, or after ``max_new_tokens``. The generated text is
left-stripped and cut at that newline; `normalize_answer` then lowercases, collapses whitespace and strips
surrounding punctuation and quotes from both it and ``answer``, and an option label such as BBH's ``(A)``
matches ``A``, ``A)``, ``(a)`` or a generation starting ``(A) ...`` (`answers_match`).

Length. A sequence longer than ``max_length`` tokens keeps its last ``max_length`` tokens (lm-eval's left
truncation; for generation the prompt keeps its last ``max_length - max_new_tokens``); such rows are
counted per task in ``n_truncated``.

The accuracy of a task. ``accuracy`` is ``multiple_choice_acc`` when every row of the task has choices
and ``exact_match`` otherwise (LESS reports BBH by exact match; pass ``metrics=("exact_match",)`` to make
exact match the accuracy of every task). ``average`` is the unweighted mean of the tasks' ``accuracy``, as
BBH and LESS report; ``average_<metric>`` averages one metric over the tasks that have it.

Several processes. Under an initialised ``torch.distributed`` group (``accelerate launch``, ``torchrun``) with
more than one process, the native backend shares the rows out: rank ``r`` of ``W`` evaluates rows ``r, r+W, ...``
(strided, so every rank gets prompts of all lengths and tasks), the per-row outcomes are gathered, and every
rank returns the whole result. Each rank needs the whole model (the unwrapped one under DDP). The rows are
the same as on one process; only the padding partners of a row change, so log-likelihoods can differ by
float rounding (on CPU, at the 1e-6 level) and a greedy token by a near tie. ``shard=False`` evaluates every
row on every rank; the ``lm_eval`` backend always does.

Backends. ``backend="native"`` is this module. ``backend="lm_eval"`` writes the same prompts to local JSONL
files and task YAMLs and runs lm-evaluation-harness on them offline (`recipes.trainer.lm_eval_backend`);
its multiple-choice numbers are lm-eval's own, its generations are scored by `answers_match` as above.

Example:
    >>> from recipes.trainer.llm_eval import evaluate_tasks
    >>> metrics = evaluate_tasks(model, tokenizer, pool["test"], shots=pool["validation"], few_shot=3,
    ...                          template="chat", max_new_tokens=16, batch_size=8)
    >>> metrics["average"], metrics["tasks"]["logical_deduction"]["multiple_choice_acc"]
"""

from __future__ import annotations

import copy
import inspect
import re
import string
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from tqdm.auto import tqdm

from hf_prune.data.chat import TEMPLATES, render_messages
from hf_prune.data.instructions import message_problem
from hf_prune.ops.checks import check_positive_int
from hf_prune.ops.columns import check_columns

__all__ = [
    "METRICS", "TEMPLATES", "answers_match", "build_prompts", "choice_loglikelihoods", "encode_text",
    "evaluate_tasks", "generate_answers", "multiple_choice_outcomes", "normalize_answer", "render_prompt",
    "summarize",
]

METRICS = ("exact_match", "multiple_choice")
_PUNCTUATION = string.punctuation + "\u201c\u201d\u2018\u2019"
_OPTION = re.compile(r"^\(?([a-z])\)?$")
_LEADING_OPTION = re.compile(r"^\(([a-z])\)(?:\s|$)|^([a-z])\)(?:\s|$)")


# ----------------------------------------------------------------------------------------------- prompts
def render_prompt(tokenizer, messages: Sequence[dict], *, template: str = "chat") -> str:
    """The prompt text of a conversation that ends with a user turn, ready for the assistant's answer.

    The rendering training uses (`hp.data.render_messages` with ``add_generation_prompt=True``): the
    tokenizer's chat template (``template="chat"``) or the plain Tulu format (``"plain"``).

    Example:
        >>> render_prompt(tokenizer, [{"role": "user", "content": "2+2?"}], template="plain")
        '<|user|>\\n2+2?\\n<|assistant|>\\n'
    """
    if template not in TEMPLATES:
        raise ValueError(f"`template` must be one of {TEMPLATES}, got {template!r}")
    return render_messages(tokenizer, list(messages), template=template, add_generation_prompt=True)[0]


def _check_messages(messages: Any, row: int, column: str = "messages") -> list[dict]:
    problem = message_problem(messages)
    if problem is not None:
        raise ValueError(f"row {row}: column {column!r} has an invalid conversation: {problem[0]} ({problem[1]})")
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"row {row}: column {column!r} must end with the gold assistant turn, "
                         f"it ends with a {messages[-1]['role']!r} turn")
    if all(turn["role"] == "system" for turn in messages[:-1]):
        raise ValueError(f"row {row}: column {column!r} has no user turn before its final assistant turn")
    return messages


def _task_rng(seed: int, task: str) -> np.random.Generator:
    # crc32, not hash(): the same shots in every process and run.
    return np.random.default_rng([int(seed), zlib.crc32(task.encode("utf-8"))])


def _draw_shots(shots: Dataset | None, tasks: Sequence[str], few_shot: int, seed: int) -> dict[str, list[list]]:
    if few_shot == 0:
        return {task: [] for task in tasks}
    if shots is None:
        raise ValueError(f"few_shot={few_shot} needs `shots` (e.g. the validation split)")
    check_columns(shots, "messages", "task")
    shot_tasks = shots["task"]
    drawn = {}
    for task in tasks:
        positions = [i for i, t in enumerate(shot_tasks) if t == task]
        if len(positions) < few_shot:
            raise ValueError(f"task {task!r} has {len(positions)} rows in `shots`, fewer than few_shot={few_shot}")
        picked = sorted(_task_rng(seed, task).choice(len(positions), size=few_shot, replace=False).tolist())
        rows = shots.select([positions[i] for i in picked])["messages"]
        drawn[task] = [_check_messages(m, positions[i], "shots.messages") for m, i in zip(rows, picked)]
    return drawn


def _conversation(messages: list[dict], shot_messages: list[list[dict]]) -> list[dict]:
    """[row system turns] + [each shot's non-system turns] + [the row's other turns, minus the answer]."""
    system = [m for m in messages[:-1] if m["role"] == "system"]
    body = [m for m in messages[:-1] if m["role"] != "system"]
    shots = [dict(m) for shot in shot_messages for m in shot if m["role"] != "system"]
    return [dict(m) for m in system] + shots + [dict(m) for m in body]


def build_prompts(
    eval_rows: Dataset,
    tokenizer,
    *,
    shots: Dataset | None = None,
    few_shot: int = 0,
    template: str = "chat",
    seed: int = 0,
) -> list[str]:
    """The prompt text of every row: its few-shot conversation without the gold answer, rendered.

    See the module docstring for the rule (shots drawn once per task, earlier turns of one conversation).

    Example:
        >>> prompts = build_prompts(pool["test"], tokenizer, shots=pool["validation"], few_shot=3, template="plain")
        >>> prompts[0].endswith("<|assistant|>\\n")
        True
    """
    check_columns(eval_rows, "messages", "task")
    if template not in TEMPLATES:
        raise ValueError(f"`template` must be one of {TEMPLATES}, got {template!r}")
    few_shot = check_positive_int("few_shot", few_shot, minimum=0)
    tasks = eval_rows["task"]
    drawn = _draw_shots(shots, list(dict.fromkeys(tasks)), few_shot, seed)
    return [render_prompt(tokenizer, _conversation(_check_messages(m, i), drawn[t]), template=template)
            for i, (m, t) in enumerate(zip(eval_rows["messages"], tasks))]


# ----------------------------------------------------------------------------------------- tokenisation
def encode_text(tokenizer, text: str, *, template: str = "chat") -> list[int]:
    """Token ids of a rendered ``text`` with special tokens as training adds them (`hp.data.encode_messages`).

    ``template="chat"``: none (the chat template wrote its own); ``"plain"``: the tokenizer's default
    (a Llama tokenizer prepends BOS) unless ``text`` already starts with the BOS text. lm-evaluation-harness
    is run with the same rule (``add_bos_token=False`` for chat), so both backends see the same tokens.

    Example:
        >>> encode_text(tokenizer, "<|user|>\\n2+2?\\n<|assistant|>\\n", template="plain")
    """
    if template == "chat":
        return list(tokenizer.encode(text, add_special_tokens=False))
    prefix_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    prefix = tokenizer.decode(prefix_id) if prefix_id is not None else ""
    if prefix and text.startswith(prefix):
        return list(tokenizer.encode(text, add_special_tokens=False))
    return list(tokenizer.encode(text))


def _encode_pair(tokenizer, context: str, continuation: str, template: str) -> tuple[list[int], list[int]]:
    """lm-eval's context/continuation split (see the module docstring)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = encode_text(tokenizer, context + continuation, template=template)
    context_ids = encode_text(tokenizer, context, template=template)
    split = len(context_ids)
    if split >= len(whole):
        split = 0
        while split < min(len(whole), len(context_ids)) and whole[split] == context_ids[split]:
            split += 1
        split = min(split, len(whole) - 1)
    return whole[:split], whole[split:]


# ------------------------------------------------------------------------------------- model plumbing
def _pad_id(tokenizer) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if value is not None:
            return int(value)
    return 0  # unreachable; keeps type checkers quiet


def _eos_ids(model, tokenizer) -> list[int]:
    ids = set()
    for value in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return sorted(ids)


def _default_max_length(model) -> int:
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def _resolve_device(device, home: torch.device) -> torch.device:
    """``device`` if given; else the model's own accelerator, or CUDA for a CPU model when there is one."""
    if device is not None:
        return torch.device(device)
    if home.type != "cpu" or not torch.cuda.is_available():
        return home
    return torch.device("cuda")


def _length_order(lengths: Sequence[int]) -> list[int]:
    # Longest first (like lm-eval) so batches pad little; stable for equal lengths.
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def _sum_logprobs(logits: torch.Tensor, targets: Sequence[int]) -> float:
    # Half precision is summed in float32; float32/float64 models keep their precision.
    logprobs = (logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits).log_softmax(-1)
    return float(logprobs.gather(-1, torch.tensor(targets, device=logits.device)[:, None]).sum())


def _full_sequences(model, pad: int, sequences, targets, positions, batch_size, device, out, bar) -> None:
    """Score ``positions`` by full forward passes over context + continuation, right-padded batches."""
    order = [positions[i] for i in _length_order([len(sequences[p]) for p in positions])]
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        width = max(len(sequences[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):  # right padding: a causal model's real positions are unaffected
            ids[row, :len(sequences[i])] = torch.tensor(sequences[i])
            mask[row, :len(sequences[i])] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for row, i in enumerate(batch):
            n, end = len(targets[i]), len(sequences[i])
            if n:
                out[i] = _sum_logprobs(logits[row, end - n:end], targets[i])
        bar.update(len(batch))


def _cache_name(model) -> str:
    """The forward argument (and output field) of the KV cache: ``cache`` since transformers 5.2x, before
    that ``past_key_values`` (a peft model is asked about its base model)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _shared_context(model, pad: int, context: list[int], members, conts, batch_size, device, out, bar) -> None:
    """Score continuations of one context: the context once (KV cache), then the continuations together."""
    name = _cache_name(model)
    result = model(input_ids=torch.tensor([context], device=device), use_cache=True)
    context_cache = getattr(result, name)
    first = result.logits[0, -1]
    for i in members:  # the context's last position predicts every continuation's first token
        out[i] = _sum_logprobs(first[None], conts[i][:1])
    rest = [i for i in members if len(conts[i]) > 1]
    for start in range(0, len(rest), batch_size):
        batch = rest[start:start + batch_size]
        cache = context_cache if len(rest) <= batch_size else copy.deepcopy(context_cache)
        cache.batch_repeat_interleave(len(batch))
        width = max(len(conts[i]) - 1 for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.ones((len(batch), len(context) + width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, :len(conts[i]) - 1] = torch.tensor(conts[i][:-1])
            mask[row, len(context) + len(conts[i]) - 1:] = 0
        positions = torch.arange(len(context), len(context) + width).expand(len(batch), -1)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                       use_cache=True, **{name: cache}).logits
        for row, i in enumerate(batch):
            out[i] += _sum_logprobs(logits[row, :len(conts[i]) - 1], conts[i][1:])
    bar.update(len(members))


@torch.inference_mode()
def choice_loglikelihoods(
    model,
    tokenizer,
    requests: Sequence[tuple[str, str]],
    *,
    template: str = "chat",
    batch_size: int = 8,
    max_length: int | None = None,
    share_context: bool = True,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Summed log P(continuation | context) for each ``(context, continuation)`` pair, batched.

    Returns ``(loglikelihoods, truncated)``: float64 sums and a bool per pair that says whether the
    sequence lost tokens to ``max_length`` (default: the model's maximum positions). With
    ``share_context`` (default) the pairs whose context tokens are identical (the choices of one row) run
    the context once and the continuations on its KV cache, a forward pass per row instead of one per
    choice; otherwise, and for truncated pairs, each context + continuation is one sequence of right-padded
    batches (lm-eval's computation; the two agree to rounding). The model must already be in eval mode on
    ``device`` (`evaluate_tasks` does that).

    Example:
        >>> lls, _ = choice_loglikelihoods(model, tokenizer, [("Q: 2+2?\\nA:", " 4"), ("Q: 2+2?\\nA:", " 5")])
    """
    max_length = max_length or _default_max_length(model)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    pairs = [_encode_pair(tokenizer, c, x, template) for c, x in requests]
    sequences, targets, truncated = [], [], np.zeros(len(pairs), dtype=bool)
    for i, (context_ids, cont_ids) in enumerate(pairs):
        full = context_ids + cont_ids
        if len(full) > max_length + 1:
            full, truncated[i] = full[-(max_length + 1):], True
        sequences.append(full[:-1])  # the last token is only a target
        targets.append(full[len(full) - min(len(cont_ids), len(full) - 1):])
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (context_ids, cont_ids) in enumerate(pairs):
        if share_context and not truncated[i] and context_ids and cont_ids:
            groups.setdefault(tuple(context_ids), []).append(i)
    shared = {i for members in groups.values() if len(members) > 1 for i in members}
    out = np.zeros(len(pairs), dtype=np.float64)
    pad = _pad_id(tokenizer)
    with tqdm(total=len(pairs), desc="choice log-likelihoods", disable=not progress) as bar:
        _full_sequences(model, pad, sequences, targets, [i for i in range(len(pairs)) if i not in shared],
                        batch_size, device, out, bar)
        for context, members in groups.items():
            if len(members) > 1:
                _shared_context(model, pad, list(context), members, [c for _, c in pairs], batch_size, device,
                                out, bar)
    return out, truncated


class _StopAtNewline:
    """Stops each row once its generated text has a newline after its first non-blank character."""

    def __init__(self, tokenizer, prompt_width: int):
        self.tokenizer, self.prompt_width = tokenizer, prompt_width

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width:], skip_special_tokens=True)
        return torch.tensor(["\n" in text.lstrip() for text in texts], device=input_ids.device)


def _cut_generation(text: str) -> str:
    return text.lstrip().split("\n", 1)[0]


@torch.inference_mode()
def generate_answers(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    template: str = "chat",
    max_new_tokens: int = 32,
    batch_size: int = 8,
    max_length: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> tuple[list[str], np.ndarray]:
    """Greedy answers to ``prompts`` (batched, left padding), cut as the module docstring says.

    Returns ``(answers, truncated)``. The model must already be in eval mode on ``device``.

    Example:
        >>> answers, _ = generate_answers(model, tokenizer, ["<|user|>\\n2+2?\\n<|assistant|>\\n"], max_new_tokens=4)
    """
    from transformers import GenerationConfig, StoppingCriteriaList

    max_length = max_length or _default_max_length(model)
    keep = max(1, max_length - max_new_tokens)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    encoded = [encode_text(tokenizer, p, template=template) for p in prompts]
    truncated = np.array([len(e) > keep for e in encoded], dtype=bool)
    encoded = [e[-keep:] for e in encoded]
    pad, eos = _pad_id(tokenizer), _eos_ids(model, tokenizer)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad,
                              eos_token_id=eos or None, temperature=None, top_p=None, top_k=None)
    answers: list[str] = [""] * len(encoded)
    order = _length_order([len(e) for e in encoded])
    for start in tqdm(range(0, len(order), batch_size), desc="greedy generation", disable=not progress):
        batch = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
            mask[row, width - len(encoded[i]):] = 1
        generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                   generation_config=config,
                                   stopping_criteria=StoppingCriteriaList([_StopAtNewline(tokenizer, width)]))
        for i, new in zip(batch, generated[:, width:].tolist()):
            # What follows a row's end-of-sequence token is padding, which need not be a special token.
            stop = next((j for j, token in enumerate(new) if token in eos), len(new))
            answers[i] = _cut_generation(tokenizer.decode(new[:stop], skip_special_tokens=True))
    return answers, truncated


# ------------------------------------------------------------------------------------------- scoring
def normalize_answer(text: str) -> str:
    """Lowercase, collapse whitespace, strip surrounding punctuation/quotes; ``"(A)"`` → ``"a"``.

    Example:
        >>> normalize_answer("  Yes. "), normalize_answer("(B)"), normalize_answer('"Paris"')
        ('yes', 'b', 'paris')
    """
    text = " ".join(str(text).lower().split()).strip(_PUNCTUATION + " ")
    option = _OPTION.match(text)
    return option.group(1) if option else text


def answers_match(prediction: str, answer: str) -> bool:
    """Exact match after `normalize_answer`; an option label gold (``"(A)"``) also matches ``"(A) text"``.

    Example:
        >>> answers_match("(a) the first one", "(A)"), answers_match("No.", "no"), answers_match("yes", "no")
        (True, True, False)
    """
    gold, pred = normalize_answer(answer), normalize_answer(prediction)
    if pred == gold:
        return True
    if _OPTION.match(answer.strip().lower()):
        leading = _LEADING_OPTION.match(" ".join(prediction.lower().split()))
        return bool(leading) and (leading.group(1) or leading.group(2)) == gold
    return False


def _check_rows(eval_rows: Dataset, tasks: Sequence[str] | None) -> tuple[list[int], list[str], list, list]:
    check_columns(eval_rows, "messages", "task", "answer")
    if len(eval_rows) == 0:
        raise ValueError("`eval_rows` is empty")
    all_tasks = eval_rows["task"]
    for i, task in enumerate(all_tasks):
        if not isinstance(task, str) or not task:
            raise ValueError(f"row {i}: column 'task' must be a non-empty string, got {task!r}")
    if tasks is not None:
        tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        missing = [t for t in tasks if t not in set(all_tasks)]
        if missing or not tasks:
            raise ValueError(f"`tasks` {missing or tasks!r} have no rows in `eval_rows` "
                             f"(its tasks: {sorted(set(all_tasks))})")
    positions = [i for i, t in enumerate(all_tasks) if tasks is None or t in tasks]
    answers = eval_rows["answer"]
    choices = eval_rows["choices"] if "choices" in eval_rows.column_names else [[] for _ in answers]
    rows_answers, rows_choices = [], []
    for i in positions:
        answer, options = answers[i], choices[i] if choices[i] is not None else []
        if not isinstance(answer, str) or not answer.strip():
            raise ValueError(f"row {i}: column 'answer' must be a non-empty string, got {answer!r}")
        if not isinstance(options, list) or not all(isinstance(c, str) and c for c in options):
            raise ValueError(f"row {i}: column 'choices' must be a list of non-empty strings, got {options!r}")
        if options and answer not in options:
            raise ValueError(f"row {i}: the answer {answer!r} is not among its choices {options!r} "
                             "(column 'choices')")
        rows_answers.append(answer)
        rows_choices.append(list(options))
    return positions, [all_tasks[i] for i in positions], rows_answers, rows_choices


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def summarize(
    tasks: Sequence[str],
    choices: Sequence[list[str]],
    exact: Sequence[bool] | None,
    mc_acc: dict[int, bool],
    mc_acc_norm: dict[int, bool],
    truncated: np.ndarray,
) -> dict[str, Any]:
    """Per-task metrics and their unweighted averages from per-row outcomes (see the module docstring).

    ``exact`` is one bool per row or ``None`` (not measured); ``mc_acc``/``mc_acc_norm`` map a row position
    to its outcome for rows with choices.

    Example:
        >>> summarize(["a", "a"], [[], []], [True, False], {}, {}, np.zeros(2, bool))["average"]
        0.5
    """
    out_tasks: dict[str, dict[str, Any]] = {}
    for task in dict.fromkeys(tasks):
        rows = [i for i, t in enumerate(tasks) if t == task]
        mc_rows = [i for i in rows if choices[i]]
        entry = {
            "n": len(rows),
            "n_multiple_choice": len(mc_rows),
            "n_truncated": int(truncated[rows].sum()),
            "exact_match": _mean([exact[i] for i in rows]) if exact is not None else None,
            "multiple_choice_acc": _mean([mc_acc[i] for i in mc_rows if i in mc_acc]),
            "multiple_choice_acc_norm": _mean([mc_acc_norm[i] for i in mc_rows if i in mc_acc_norm]),
        }
        use_mc = entry["multiple_choice_acc"] is not None and len(mc_rows) == len(rows)
        entry["accuracy_metric"] = "multiple_choice_acc" if use_mc or exact is None else "exact_match"
        entry["accuracy"] = entry[entry["accuracy_metric"]]
        out_tasks[task] = entry
    result: dict[str, Any] = {"average": _mean([e["accuracy"] for e in out_tasks.values() if e["accuracy"] is not None])}
    for metric in ("exact_match", "multiple_choice_acc", "multiple_choice_acc_norm"):
        result[f"average_{metric}"] = _mean([e[metric] for e in out_tasks.values() if e[metric] is not None])
    result["n"] = len(tasks)
    result["tasks"] = out_tasks
    return result


def evaluate_tasks(
    model,
    tokenizer,
    eval_rows: Dataset,
    *,
    shots: Dataset | None = None,
    few_shot: int = 0,
    template: str = "chat",
    max_new_tokens: int = 32,
    batch_size: int = 8,
    max_length: int | None = None,
    metrics: Sequence[str] = METRICS,
    tasks: Sequence[str] | None = None,
    seed: int = 0,
    share_context: bool = True,
    device: torch.device | str | None = None,
    backend: str = "native",
    return_predictions: bool = False,
    progress: bool = True,
    shard: bool = True,
) -> dict[str, Any]:
    """Exact match and multiple-choice accuracy of ``model`` per task of ``eval_rows``, and their averages.

    Returns ``{"average", "average_exact_match", "average_multiple_choice_acc",
    "average_multiple_choice_acc_norm", "n", "tasks": {task: {"n", "n_multiple_choice", "n_truncated",
    "exact_match", "multiple_choice_acc", "multiple_choice_acc_norm", "accuracy", "accuracy_metric"}},
    "settings"}`` (a metric not measured is ``None``); with ``return_predictions`` also ``"predictions"``,
    one dict per evaluated row (its position, task, prompt, generation and choice log-likelihoods).
    The module docstring gives every rule. ``device=None`` uses CUDA when available; the model is moved
    there for the evaluation, put in eval mode under ``inference_mode``, and given back on its device in
    its mode. ``eval_rows`` and ``shots`` are not modified.

    Args:
        model: a causal LM (transformers or peft) returning ``.logits``.
        tokenizer: its tokenizer (a chat template for ``template="chat"``).
        eval_rows: rows with ``messages``, ``task``, ``answer`` and optionally ``choices``.
        shots: rows the few-shot examples are drawn from, per task (e.g. the validation split).
        few_shot: solved examples per prompt.
        template: ``"chat"`` (the tokenizer's chat template) or ``"plain"`` (the Tulu format).
        max_new_tokens: generation budget for exact match.
        batch_size: sequences per forward pass / generation batch.
        max_length: tokens per sequence before left truncation (default: the model's maximum positions).
        metrics: any of ``"exact_match"``, ``"multiple_choice"``.
        tasks: evaluate only these tasks (each must have rows).
        seed: seeds the per-task draw of shots.
        share_context: score a row's choices on one pass of its prompt (`choice_loglikelihoods`); ``False``
            runs one full sequence per choice in cross-row batches (lm-eval's computation), which can use a
            large GPU better when rows are many and choices few.
        device: where the model runs.
        backend: ``"native"`` or ``"lm_eval"`` (lm-evaluation-harness on local task files).
        return_predictions: include per-row predictions.
        progress: show progress bars (on the first rank only when the rows are shared out).
        shard: under ``torch.distributed`` with several processes, share the rows out over the ranks and
            gather the outcomes (the module docstring); every rank must call this with the same arguments.

    Example:
        >>> metrics = evaluate_tasks(model, tokenizer, pool["test"], shots=pool["validation"], few_shot=3)
        >>> round(metrics["average"], 3), metrics["tasks"]["navigate"]["accuracy_metric"]
    """
    if backend not in ("native", "lm_eval"):
        raise ValueError(f"`backend` must be 'native' or 'lm_eval', got {backend!r}")
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    if not metrics or any(m not in METRICS for m in metrics):
        raise ValueError(f"`metrics` must be a non-empty subset of {METRICS}, got {metrics!r}")
    batch_size = check_positive_int("batch_size", batch_size)
    max_new_tokens = check_positive_int("max_new_tokens", max_new_tokens)
    if max_length is not None:
        max_length = check_positive_int("max_length", max_length, minimum=max_new_tokens + 1)
    positions, row_tasks, answers, choices = _check_rows(eval_rows, tasks)
    selected = eval_rows.select(positions) if len(positions) < len(eval_rows) else eval_rows
    prompts = build_prompts(selected, tokenizer, shots=shots, few_shot=few_shot, template=template, seed=seed)
    settings = {"backend": backend, "few_shot": few_shot, "template": template, "max_new_tokens": max_new_tokens,
                "max_length": max_length or _default_max_length(model), "metrics": metrics, "seed": seed,
                "share_context": bool(share_context)}
    if backend == "lm_eval":
        from .lm_eval_backend import run_lm_eval

        outcome = run_lm_eval(model, tokenizer, prompts, row_tasks, answers, choices, template=template,
                              metrics=metrics, max_new_tokens=max_new_tokens, batch_size=batch_size,
                              max_length=settings["max_length"], device=device)
    else:
        rank, world = _ranks() if shard else (0, 1)
        settings["processes"] = world
        mine = list(range(rank, len(prompts), world))
        outcome = _run_native(model, tokenizer, [prompts[i] for i in mine], [answers[i] for i in mine],
                              [choices[i] for i in mine], template=template, metrics=metrics,
                              max_new_tokens=max_new_tokens, batch_size=batch_size,
                              max_length=settings["max_length"], share_context=share_context, device=device,
                              progress=progress and rank == 0)
        if world > 1:
            outcome = _gather_outcomes(outcome, mine, len(prompts), world)
    generations = outcome["generations"]
    exact = [answers_match(g, a) for g, a in zip(generations, answers)] if generations is not None else None
    result = summarize(row_tasks, choices, exact, outcome["acc"], outcome["acc_norm"], outcome["truncated"])
    result["settings"] = settings
    if return_predictions:
        result["predictions"] = [
            {"row": positions[i], "task": row_tasks[i], "prompt": prompts[i], "answer": answers[i],
             "generation": generations[i] if generations is not None else None,
             "exact_match": exact[i] if exact is not None else None,
             "choice_loglikelihoods": outcome["loglikelihoods"].get(i)}
            for i in range(len(prompts))]
    return result


def _ranks() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised torch.distributed group, ``(0, 1)`` without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _gather_outcomes(outcome: dict[str, Any], mine: list[int], n: int, world: int) -> dict[str, Any]:
    """Every rank's per-row outcomes (keyed by local position) put back at the rows' global positions."""
    parts: list[Any] = [None] * world
    torch.distributed.all_gather_object(parts, (mine, outcome))
    merged: dict[str, Any] = {"generations": None, "acc": {}, "acc_norm": {}, "loglikelihoods": {},
                              "truncated": np.zeros(n, dtype=bool)}
    if outcome["generations"] is not None:
        merged["generations"] = [None] * n
    for rows, part in parts:
        for local, row in enumerate(rows):
            if merged["generations"] is not None:
                merged["generations"][row] = part["generations"][local]
            merged["truncated"][row] = part["truncated"][local]
            for key in ("acc", "acc_norm", "loglikelihoods"):
                if local in part[key]:
                    merged[key][row] = part[key][local]
    return merged


def multiple_choice_outcomes(
    loglikelihoods: Sequence[float], choices: Sequence[str], answer: str
) -> tuple[bool, bool]:
    """``(acc, acc_norm)`` of one row: is the gold choice the argmax of the sums / of the sums per character?

    Ties go to the lower choice position (`numpy.argmax`), as in lm-evaluation-harness.

    Example:
        >>> multiple_choice_outcomes([-2.0, -3.0], ["a", "bbbb"], "bbbb")
        (False, True)
    """
    lls = np.asarray(loglikelihoods, dtype=np.float64)
    lengths = np.array([len(c) for c in choices], dtype=np.float64)
    gold = list(choices).index(answer)
    return int(np.argmax(lls)) == gold, int(np.argmax(lls / lengths)) == gold


def _run_native(model, tokenizer, prompts, answers, choices, *, template, metrics, max_new_tokens, batch_size,
                max_length, share_context, device, progress) -> dict[str, Any]:
    """Per-row outcomes of the native backend; the model is moved/evaluated and given back as it was."""
    was_training, home = model.training, next(model.parameters()).device
    device = _resolve_device(device, home)
    truncated = np.zeros(len(prompts), dtype=bool)
    out: dict[str, Any] = {"generations": None, "acc": {}, "acc_norm": {}, "loglikelihoods": {}}
    try:
        if device != home:
            model.to(device)
        model.eval()
        if "exact_match" in metrics:
            out["generations"], gen_truncated = generate_answers(
                model, tokenizer, prompts, template=template, max_new_tokens=max_new_tokens, batch_size=batch_size,
                max_length=max_length, device=device, progress=progress)
            truncated |= gen_truncated
        if "multiple_choice" in metrics:
            requests = [(prompts[i], c) for i, options in enumerate(choices) for c in options]
            lls, cut = choice_loglikelihoods(model, tokenizer, requests, template=template, batch_size=batch_size,
                                             max_length=max_length, share_context=share_context, device=device,
                                             progress=progress)
            start = 0
            for i, options in enumerate(choices):
                if options:
                    stop = start + len(options)
                    truncated[i] |= bool(cut[start:stop].any())
                    out["loglikelihoods"][i] = lls[start:stop].tolist()
                    out["acc"][i], out["acc_norm"][i] = multiple_choice_outcomes(lls[start:stop], options, answers[i])
                    start = stop
    finally:
        if device != home:
            model.to(home)
        model.train(was_training)
    out["truncated"] = truncated
    return out
