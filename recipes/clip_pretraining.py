"""Pretrain CLIP (a `transformers.CLIPModel`) on an image–caption pool or a pruned subset of it.

Launch (CPU, one GPU, several GPUs: pick the accelerate config; ``python -m recipes.clip_pretraining``
runs it without accelerate's launcher):

    accelerate launch --config_file recipes/accelerate_configs/cpu.yaml recipes/clip_pretraining.py \\
        --num_train 4000 --num_test 1000 --model tiny --epochs 8 --output_dir runs/clip_scenes

    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml recipes/clip_pretraining.py \\
        --config recipes/configs/clip_vitb32_cc12m.yaml --subset_path subsets/cc12m_infomax_30 --seeds 0 1 2

(``--subset_path`` is a selector's output saved with ``save_to_disk``, e.g. ``hp.select.infomax`` over a
CLIP-score column and image embeddings of the same pool; ``--selector "random:fraction=0.3"`` runs one
inline.)

Options come from the `DataConfig` and `TrainConfig` dataclasses below (``--help``), or from a flat
YAML file given with ``--config x.yaml`` (command-line flags override it).

GPU settings (`recipes/configs/clip_vitb32_cc12m.yaml`) follow the InfoMax paper's App. A.2, which follows
CLIP: ViT-B/32 trained from scratch for 32 epochs, AdamW, weight decay 0.2, global batch 2048, one
warm-up epoch, then cosine decay from a peak learning rate of 1e-4, bf16 autocast. The CPU defaults
are scaled down (a tiny ViT + text transformer, batch 128, peak lr 1e-3 with one warm-up epoch; from
scratch the loss sits near ln(batch) for the first ~100-150 steps before it drops, so runs need a few
hundred steps).

Data. ``--dataset scenes`` (default) is the offline procedural pool `hf_prune.data.load_scenes`
(sized by ``--num_train``/``--num_test``/``--image_size``; the test split has one object per scene by
default, so its zero-shot labels are unambiguous); ``digits_captions`` and ``fashion_mnist_captions`` are
the templated caption versions of those datasets; anything else is a Hub id or a saved dataset read by
`hf_prune.data.load_image_text` (``--image_column``/``--text_column``; ``--label_column`` and
``--class_names`` enable zero-shot and linear-probe evaluation). Both splits go through
`hf_prune.data.check_image_text` (missing columns, empty or non-string captions, undecodable images are
errors naming the column). Images are decoded once into ``uint8`` tensors, resized to the model's
image size, and normalised per batch; captions are tokenized once, padded/truncated to ``--max_length``.
The training rows are the whole train split or a subset (``--subset_path``/``--subset_hub_id``/
``--selector``, exactly as in the image-classification recipe, `recipes.trainer.data.subset_rows`).
``--web_noise_rates '{"mismatch": 0.1, ...}'`` applies `hf_prune.corrupt.web_noise` (seeded by
``--corruption_seed``) to the train split before any subset is taken; metrics report the share of
corrupted pairs in the training rows.

Tokenizer. ``--tokenizer NAME`` loads any `AutoTokenizer`; a Hub/local ``--model`` uses its own. For
``tiny``/``small`` the default is a word-level tokenizer trained (`tokenizers`) on the training
captions, saved to ``<output_dir>/seed_<s>/model`` with the final weights (so a run works offline and
`hf_prune.embed.CLIPEmbedder` can load the result as a reference CLIP). A tokenizer with more tokens than
the checkpoint's text embedding has rows is an error naming both sizes.

Training: symmetric InfoNCE over the *global* batch (`recipes.trainer.contrastive.clip_loss`: features
all-gathered with gradients routed back to their process, so the loss and gradients equal one process on
the same batch) with CLIP's learnable temperature (``logit_scale``, clamped at ln 100), AdamW (no weight
decay on biases, LayerNorm/embedding-free 1-D parameters and ``logit_scale``, as OpenCLIP), warm-up then
cosine per step. ``--gradient_accumulation_steps k`` averages the gradients of k batches per update (the
negatives of each loss are its own batch, so it is not a k times larger contrastive batch; the
learning-rate schedule still counts batches). The loop,
checkpoints (``--resume_from_checkpoint latest|PATH``, staged so a kill never leaves a complete-looking
folder), seeds and metrics aggregation come from `recipes.trainer`. With several processes, accelerate
evens out an epoch's last batch by repeating pairs from its start (``even_batches``), so that batch
may hold a pair twice (a single process trains on the shorter last batch as it is). ``train_accuracy`` in the history is
the in-batch image→text top-1 accuracy.

Dynamics. ``--record_dynamics`` records per epoch and training pair, from the training forward pass
(`recipes.trainer.contrastive.PairDynamicsRecorder`): ``pair_loss`` (image→text + text→image
cross-entropy against the global batch) and ``i2t_rank`` (rank of the true caption among the batch's
captions), plus the standard ``dynamics`` struct computed from the image→text row as if the batch's
captions were the classes (``true_prob`` = softmax probability of the true caption, so DUAL, EL2N and
forgetting scores work on pairs; ``kl_to_previous`` is 0 because the columns change every epoch). Saved
to ``<output_dir>/seed_<s>/dynamics`` with ``row_id``, joinable with `hf_prune.dynamics.attach_dynamics`
(the struct; ``pair_loss``/``i2t_rank`` with ``dynamics_column="pair_loss"``, ``output_column="pair_loss"``).

Evaluation on the clean test split (after training, and with ``--eval_each_epoch`` every epoch):
zero-shot accuracy per attribute (class text embeddings averaged over the prompt templates, as CLIP),
image→text and text→image retrieval R@1/5/10 (one caption per image), and linear-probe accuracy on the
frozen image features (`recipes.trainer.probe.LinearProbe`, trained on up to ``--probe_train_size``
training rows). Outputs: ``config.json`` (configs, argv, git SHA, versions), per seed
``seed_<s>/metrics.json``, ``seed_<s>/checkpoints/epoch_<k>``, ``seed_<s>/model`` (weights, tokenizer and image processor: a reference CLIP for
`hf_prune.embed.CLIPEmbedder` and CLIP-score filtering),
and ``metrics.json`` with mean ± std over ``--seeds``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from datasets import ClassLabel, Dataset
from transformers import HfArgumentParser

import hf_prune as hp
from hf_prune.ops.columns import read_labels, read_vector
from recipes.trainer.checkpoints import replace_folder
from recipes.trainer.config import RunConfig, RunOptions, parse_config, run_metadata, write_json
from recipes.trainer.contrastive import PairDynamicsBuffer, PairDynamicsRecorder, clip_loss, pair_statistics
from recipes.trainer.data import EpochSampler, channel_statistics, identity_collate, subset_rows
from recipes.trainer.dynamics import save_dynamics
from recipes.trainer.loop import StepOutput, TrainState, lr_lambda, resume, train_epochs
from recipes.trainer.metrics import aggregate_runs
from recipes.trainer.probe import LinearProbe

# OpenAI CLIP's pixel statistics, used with Hub checkpoints (trained with them).
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]  # ids 0..3; eos ≠ 2 selects CLIP's eos-position pooling
MODEL_SIZES = {
    "tiny": {"hidden": 64, "layers": 2, "heads": 4, "patch": 8, "projection": 64},
    "small": {"hidden": 256, "layers": 4, "heads": 4, "patch": 8, "projection": 256},
}


@dataclass
class DataConfig:
    dataset: str = field(
        default="scenes", metadata={"help": "scenes, digits_captions, fashion_mnist_captions, a Hub id or a saved dataset."}
    )
    num_train: int = field(default=20000, metadata={"help": "scenes: training pairs."})
    num_test: int = field(default=2000, metadata={"help": "scenes: test pairs."})
    image_size: int = field(default=64, metadata={"help": "scenes: rendered image size (pixels)."})
    max_objects: int = field(default=3, metadata={"help": "scenes: most objects per training scene."})
    test_max_objects: int = field(default=1, metadata={"help": "scenes: most objects per test scene (1: unambiguous labels)."})
    data_seed: int = field(default=0, metadata={"help": "Seed of the generated pool and of its captions."})
    zero_shot_attributes: str = field(default="shape,color", metadata={"help": "scenes: attributes for zero-shot and probes."})
    image_column: str = field(default="image", metadata={"help": "Image column of a Hub/saved dataset."})
    text_column: str = field(default="caption", metadata={"help": "Caption column of a Hub/saved dataset."})
    label_column: str | None = field(default=None, metadata={"help": "Hub/saved dataset: class column for zero-shot and probe."})
    class_names: str | None = field(default=None, metadata={"help": "Comma-separated class names (default: the ClassLabel's)."})
    templates: str | None = field(default=None, metadata={"help": "JSON list of prompt templates with one '{}'."})
    train_split: str = field(default="train", metadata={"help": "Training split name."})
    test_split: str = field(default="test", metadata={"help": "Test split name."})
    test_size: int | None = field(
        default=None, metadata={"help": "Hold out this many train rows as the test split when --test_split does not exist."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training rows."})
    max_test_samples: int | None = field(default=None, metadata={"help": "Keep only the first N test rows."})
    subset_path: str | None = field(default=None, metadata={"help": "save_to_disk subset (with row_id) to train on."})
    subset_hub_id: str | None = field(default=None, metadata={"help": "Hub dataset id of a subset (with row_id) to train on."})
    subset_split: str = field(default="train", metadata={"help": "Split of a subset DatasetDict."})
    selector: str | None = field(
        default=None, metadata={"help": "Inline selection 'name:key=value,...' calling hf_prune.select.<name> on the train split."}
    )
    web_noise_rates: str | None = field(default=None, metadata={"help": "JSON {kind: rate} for hf_prune.corrupt.web_noise."})
    corruption_seed: int = field(default=0, metadata={"help": "Seed of the web noise (fixed across training seeds)."})


@dataclass
class TrainConfig(RunOptions):
    output_dir: str = field(default="runs/clip_pretraining", metadata={"help": "Where checkpoints, metrics and dynamics go."})
    model: str = field(default="tiny", metadata={"help": "tiny, small, or a CLIPModel Hub id / local path."})
    pretrained: bool = field(default=True, metadata={"help": "Hub/local model: load its weights (else its config only)."})
    tokenizer: str | None = field(default=None, metadata={"help": "AutoTokenizer id/path (default: the model's, or trained)."})
    vocab_size: int = field(default=2048, metadata={"help": "Size of the tokenizer trained on the captions."})
    max_length: int = field(default=32, metadata={"help": "Caption length in tokens (padded/truncated)."})
    epochs: int = field(default=10, metadata={"help": "Training epochs."})
    batch_size: int = field(default=128, metadata={"help": "Global batch size (split across processes; the loss sees all of it)."})
    eval_batch_size: int = field(default=512, metadata={"help": "Batch size of the evaluation encoders."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimizer update."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate (App. A.2 on GPU: 1e-4)."})
    weight_decay: float = field(default=0.2, metadata={"help": "AdamW weight decay (not on biases, norms, logit_scale)."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.98, metadata={"help": "AdamW beta2 (CLIP's ViT setting)."})
    adam_epsilon: float = field(default=1e-6, metadata={"help": "AdamW epsilon."})
    warmup_epochs: float = field(default=1.0, metadata={"help": "Linear warm-up in epochs before the cosine decay."})
    mixed_precision: str = field(default="no", metadata={"help": "no, bf16 or fp16 autocast (accelerate)."})
    linear_probe: bool = field(default=True, metadata={"help": "Linear-probe accuracy on frozen image features."})
    probe_train_size: int = field(default=5000, metadata={"help": "Training rows (the first ones) the probe is fitted on."})
    save_model: bool = field(default=True, metadata={"help": "Save the final weights and tokenizer to seed_<s>/model."})


# ------------------------------------------------------------------------------------------------- data


@dataclass
class ZeroShotTask:
    """One zero-shot / linear-probe task: class names, prompt templates and the label column of both splits."""

    name: str
    class_names: list[str]
    templates: list[str]
    column: str


def _load_pool(cfg: DataConfig) -> tuple[Dataset, Dataset, list[ZeroShotTask], str, str]:
    """The train and test splits, the evaluation tasks, and the image and caption column names."""
    image_column, text_column = "image", "caption"
    if cfg.dataset == "scenes":
        ds = hp.data.load_scenes(
            num_train=cfg.num_train, num_test=cfg.num_test, image_size=cfg.image_size, max_objects=cfg.max_objects,
            test_max_objects=cfg.test_max_objects, seed=cfg.data_seed,
        )
        tasks = []
        for attribute in [a.strip() for a in cfg.zero_shot_attributes.split(",") if a.strip()]:
            names, templates = hp.data.scene_zero_shot_classes(attribute)
            tasks.append(ZeroShotTask(attribute, names, templates, attribute))
    elif cfg.dataset in ("digits_captions", "fashion_mnist_captions"):
        digits = cfg.dataset == "digits_captions"
        ds = hp.data.load_digits_captions(seed=cfg.data_seed) if digits else hp.data.load_fashion_mnist_captions(seed=cfg.data_seed)
        names = hp.data.DIGIT_CAPTION_NAMES if digits else hp.data.FASHION_MNIST_CAPTION_NAMES
        templates = hp.data.DIGIT_TEMPLATES if digits else hp.data.FASHION_MNIST_TEMPLATES
        tasks = [ZeroShotTask("label", list(names), list(templates), "label")]
    else:
        # Columns keep the user's names, so every error names the column as it was given.
        ds = hp.data.load_image_text(cfg.dataset, image_column=cfg.image_column, text_column=cfg.text_column, rename=False,
                                     check=False)
        image_column, text_column = cfg.image_column, cfg.text_column
        if cfg.test_split not in ds and cfg.test_size and cfg.train_split in ds:
            # Web pools (CC3M/CC12M shards) have one split: hold out a fixed, seeded part as the clean test split.
            held = ds[cfg.train_split].train_test_split(test_size=cfg.test_size, seed=cfg.data_seed, shuffle=True)
            ds = {cfg.train_split: held["train"], cfg.test_split: held["test"]}
        for split in (cfg.train_split, cfg.test_split):
            if split not in ds:
                raise KeyError(f"{cfg.dataset!r} has no split {split!r} (--train_split/--test_split); it has {list(ds)}")
        ds = {"train": ds[cfg.train_split], "test": ds[cfg.test_split]}
        tasks = []
        if cfg.label_column:
            feature = ds["test"].features.get(cfg.label_column)
            if feature is None:
                raise KeyError(f"--label_column {cfg.label_column!r} is not a column; the test split has {ds['test'].column_names}")
            if cfg.class_names:
                names = [n.strip() for n in cfg.class_names.split(",")]
            elif isinstance(feature, ClassLabel):
                names = list(feature.names)
            else:
                raise ValueError(f"--label_column {cfg.label_column!r} is not a ClassLabel: give --class_names")
            tasks = [ZeroShotTask(cfg.label_column, names, list(hp.data.DEFAULT_TEMPLATES), cfg.label_column)]
    if cfg.templates:
        templates = json.loads(cfg.templates)
        if not isinstance(templates, list) or not templates or any(not isinstance(t, str) or t.count("{}") != 1 for t in templates):
            raise ValueError(f"--templates must be a JSON list of strings with one '{{}}' each, got {cfg.templates!r}")
        for task in tasks:
            task.templates = templates
    train, test = ds["train"], ds["test"]
    if cfg.max_train_samples is not None:
        train = train.select(range(min(cfg.max_train_samples, len(train))))
    if cfg.max_test_samples is not None:
        test = test.select(range(min(cfg.max_test_samples, len(test))))
    for split, data in (("train", train), ("test", test)):
        if len(data) == 0:
            raise ValueError(f"the {split} split is empty")
        hp.data.check_image_text(data, image_column=image_column, text_column=text_column)
    return train, test, tasks, image_column, text_column


def images_to_tensor(dataset: Dataset, column: str, size: int) -> torch.Tensor:
    """``uint8`` ``(N, 3, size, size)`` images: grey images repeated to RGB, resized once (bilinear, antialiased)."""
    pixels = torch.from_numpy(hp.data.read_images(dataset, image_column=column)).permute(0, 3, 1, 2).contiguous()
    if pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1).contiguous()
    if pixels.shape[1] != 3:
        raise ValueError(f"images in {column!r} have {pixels.shape[1]} channels; CLIP takes RGB (or grey)")
    if pixels.shape[2:] != (size, size):
        chunks = []
        for block in pixels.split(1024):
            resized = F.interpolate(block.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            chunks.append(resized.round().clamp(0, 255).to(torch.uint8))
        pixels = torch.cat(chunks)
    return pixels


class PairDataset(torch.utils.data.Dataset):
    """In-memory images and tokenized captions; ``__getitems__`` gathers a batch in one indexing op."""

    def __init__(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        self.pixels, self.input_ids, self.attention_mask = pixels, input_ids, attention_mask

    def __len__(self):
        return len(self.pixels)

    def __getitem__(self, index):
        return self.__getitems__([index])

    def __getitems__(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {"pixels": self.pixels[idx], "input_ids": self.input_ids[idx], "attention_mask": self.attention_mask[idx],
                "positions": idx}


# ----------------------------------------------------------------------------------- model and tokenizer


def train_tokenizer(captions: list[str], vocab_size: int, max_length: int):
    """A lower-cased word-level tokenizer of the captions (``[BOS] words [EOS]``), as a `PreTrainedTokenizerFast`.

    Example:
        >>> tok = train_tokenizer(["a red circle", "a blue square"], vocab_size=64, max_length=8)
        >>> tok("a red square")["input_ids"][0] == tok.bos_token_id
        True
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    tokenizer.train_from_iterator(captions, trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS))
    bos, eos = tokenizer.token_to_id("[BOS]"), tokenizer.token_to_id("[EOS]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", bos), ("[EOS]", eos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]",
        model_max_length=max_length,
    )


def _is_builtin(name: str) -> bool:
    return name in MODEL_SIZES


def build_clip(name: str, tokenizer, *, image_size: int, max_length: int, pretrained: bool = True):
    """``tiny``/``small`` CLIPModel from a config sized to the tokenizer, or a Hub id / local path.

    The tokenizer must fit the text embedding and ``max_length`` the position embedding: otherwise a
    `ValueError` names both sizes.

    Example:
        >>> model = build_clip("tiny", train_tokenizer(captions, 512, 32), image_size=64, max_length=32)
    """
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    if _is_builtin(name):
        size = MODEL_SIZES[name]
        common = {"hidden_size": size["hidden"], "intermediate_size": 4 * size["hidden"], "num_hidden_layers": size["layers"],
                  "num_attention_heads": size["heads"]}
        text = CLIPTextConfig(
            vocab_size=len(tokenizer), max_position_embeddings=max_length, pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **common,
        )
        vision = CLIPVisionConfig(image_size=image_size, patch_size=size["patch"], num_channels=3, **common)
        config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=size["projection"])
        model = CLIPModel(config)
    elif pretrained:
        model = CLIPModel.from_pretrained(name)
    else:
        model = CLIPModel(CLIPConfig.from_pretrained(name))
    rows = model.config.text_config.vocab_size
    if len(tokenizer) > rows:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model {name!r} has a text embedding of {rows} rows "
            "(--tokenizer does not match --model)"
        )
    positions = model.config.text_config.max_position_embeddings
    if max_length > positions:
        raise ValueError(f"--max_length {max_length} is longer than the model's {positions} text positions")
    return model


def _features(output) -> torch.Tensor:
    # get_*_features return a tensor in transformers 4 and an output object (projected pooler_output) in 5.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class Normalizer:
    """uint8 ``(B, 3, H, W)`` → float pixels normalised with per-channel ``mean``/``std`` (in [0, 1] units)."""

    def __init__(self, mean, std):
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean.to(pixels.device), self.std.to(pixels.device)
        return (pixels.float() / 255.0 - mean) / std


def image_processor(image_size: int, normalize: Normalizer):
    """A `CLIPImageProcessor` doing what the recipe does to an image (resize to ``image_size``, the same
    mean/std), saved beside the weights so `hf_prune.embed.CLIPEmbedder` embeds like the recipe."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        image_mean=normalize.mean.flatten().tolist(), image_std=normalize.std.flatten().tolist(), do_convert_rgb=True,
    )


# ------------------------------------------------------------------------------------------- evaluation


def retrieval_recall(image_features: torch.Tensor, text_features: torch.Tensor, ks=(1, 5, 10)) -> dict[str, float]:
    """Image→text and text→image recall@k when row ``i`` of both is a pair (one caption per image).

    The true item's rank counts the items scored higher, and those scored equal at a lower position.

    Example:
        >>> retrieval_recall(torch.eye(3), torch.eye(3))["i2t_R@1"]
        1.0
    """
    sim = image_features.float() @ text_features.float().T
    out = {}
    for name, matrix in (("i2t", sim), ("t2i", sim.T)):
        true = matrix.diagonal()[:, None]
        n = matrix.shape[0]
        lower = torch.arange(n)[None, :] < torch.arange(n)[:, None]
        rank = ((matrix > true) | ((matrix == true) & lower)).sum(1)
        for k in ks:
            out[f"{name}_R@{k}"] = float((rank < k).float().mean())
    return out


def zero_shot_accuracy(image_features: torch.Tensor, class_features: torch.Tensor, labels: np.ndarray) -> float:
    """Top-1 accuracy of predicting ``argmax_c <image, class_c>`` (ties to the lower class id).

    Example:
        >>> zero_shot_accuracy(torch.eye(2), torch.eye(2), np.array([0, 1]))
        1.0
    """
    predictions = (image_features.float() @ class_features.float().T).argmax(1).cpu().numpy()
    return float((predictions == np.asarray(labels)).mean())


@torch.no_grad()
def class_embeddings(model, tokenizer, task: ZeroShotTask, max_length: int, device) -> torch.Tensor:
    """One unit vector per class: the mean of its normalised prompt embeddings, renormalised (CLIP's ensemble)."""
    prompts = [t.format(name) for name in task.class_names for t in task.templates]
    tokens = tokenizer(prompts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    features = _features(model.get_text_features(input_ids=tokens["input_ids"].to(device),
                                                 attention_mask=tokens["attention_mask"].to(device)))
    features = F.normalize(features.float(), dim=-1).view(len(task.class_names), len(task.templates), -1).mean(1)
    return F.normalize(features, dim=-1)


@torch.no_grad()
def encode(model, normalize: Normalizer, pixels, input_ids, attention_mask, batch_size: int, device):
    """Normalised image features (and text features when ``input_ids`` is given), batch by batch."""
    images, texts = [], []
    for start in range(0, len(pixels), batch_size):
        rows = slice(start, start + batch_size)
        images.append(F.normalize(_features(model.get_image_features(pixel_values=normalize(pixels[rows].to(device)))).float(), dim=-1))
        if input_ids is not None:
            texts.append(F.normalize(_features(model.get_text_features(
                input_ids=input_ids[rows].to(device), attention_mask=attention_mask[rows].to(device))).float(), dim=-1))
    return torch.cat(images).cpu(), (torch.cat(texts).cpu() if texts else None)


# ------------------------------------------------------------------------------------- one training run


def _tokenize(tokenizer, captions: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = tokenizer(captions, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return tokens["input_ids"], tokens["attention_mask"]


def _param_groups(model, weight_decay: float) -> list[dict]:
    # OpenCLIP: no decay on gains/biases (1-D tensors) and the temperature.
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        (no_decay if parameter.ndim < 2 or "logit_scale" in name else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _corruption_counts(rows: Dataset) -> dict[str, Any]:
    if "is_corrupted" not in rows.column_names:
        return {}
    flags = read_vector(rows, "is_corrupted", dtype=np.int64)
    out: dict[str, Any] = {"is_corrupted": int(flags.sum()), "share": float(flags.mean()) if len(flags) else 0.0}
    if "corruption" in rows.column_names:
        kinds = [k for k in rows["corruption"] if k is not None]
        out["by_kind"] = {kind: kinds.count(kind) for kind in sorted(set(kinds))}
    return out


def _check_options(cfg: TrainConfig) -> None:
    if cfg.mixed_precision not in ("no", "bf16", "fp16"):
        raise ValueError(f"--mixed_precision must be no, bf16 or fp16, got {cfg.mixed_precision!r}")
    if cfg.save_total_limit is not None and cfg.save_total_limit < 1:
        raise ValueError(f"--save_total_limit must be at least 1 (or unset), got {cfg.save_total_limit}")
    if cfg.gradient_accumulation_steps < 1:
        raise ValueError(f"--gradient_accumulation_steps must be at least 1, got {cfg.gradient_accumulation_steps}")
    if cfg.max_length < 3:
        raise ValueError(f"--max_length must leave room for a word between [BOS] and [EOS], got {cfg.max_length}")


def train_run(config: RunConfig) -> dict[str, Any]:
    """Train and evaluate one seed; returns (and writes) its metrics."""
    from transformers import AutoTokenizer

    cfg, data_cfg, out = config.train, config.data, config.output_dir
    _check_options(cfg)
    accelerator = Accelerator(
        cpu=cfg.cpu, step_scheduler_with_optimizer=False, mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
    )
    set_seed(config.seed)
    train, test, tasks, image_column, text_column = _load_pool(data_cfg)
    if "row_id" in train.column_names:
        train = train.rename_column("row_id", "source_row_id")  # a subset of something larger: positions rule here
    if data_cfg.web_noise_rates:
        rates = json.loads(data_cfg.web_noise_rates)
        train = hp.corrupt.web_noise(train, rates=rates, image_column=image_column, text_column=text_column,
                                     seed=data_cfg.corruption_seed)
    rows = subset_rows(
        train, subset_path=data_cfg.subset_path, subset_hub_id=data_cfg.subset_hub_id, subset_split=data_cfg.subset_split,
        selector=data_cfg.selector, seed=config.seed, required_columns=(image_column, text_column),
    )
    train_rows = train.select(rows.row_ids) if rows.standalone is None else rows.standalone
    if rows.standalone is not None:
        hp.data.check_image_text(train_rows, image_column=image_column, text_column=text_column)
    captions = list(train_rows[text_column])

    if cfg.tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer)
    elif not _is_builtin(cfg.model):
        tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    else:
        tokenizer = train_tokenizer(captions, cfg.vocab_size, cfg.max_length)
    if tokenizer.pad_token is None:
        raise ValueError(f"the tokenizer {cfg.tokenizer or cfg.model!r} has no pad token (--tokenizer)")
    set_seed(config.seed)  # model init does not depend on what data loading consumed
    image_size = data_cfg.image_size if _is_builtin(cfg.model) else None
    model = build_clip(cfg.model, tokenizer, image_size=image_size or 224, max_length=cfg.max_length, pretrained=cfg.pretrained)
    image_size = model.config.vision_config.image_size

    pixels = images_to_tensor(train_rows, image_column, image_size)
    test_pixels = images_to_tensor(test, image_column, image_size)
    input_ids, attention_mask = _tokenize(tokenizer, captions, cfg.max_length)
    test_ids, test_mask = _tokenize(tokenizer, list(test[text_column]), cfg.max_length)
    normalize = Normalizer(*channel_statistics(pixels)) if _is_builtin(cfg.model) else Normalizer(CLIP_MEAN, CLIP_STD)

    processes = accelerator.num_processes
    if cfg.batch_size % processes:
        raise ValueError(f"the batch size {cfg.batch_size} is not divisible by the {processes} processes")
    sampler = EpochSampler(len(pixels), config.seed)
    loader = torch.utils.data.DataLoader(
        PairDataset(pixels, input_ids, attention_mask), batch_size=cfg.batch_size // processes, sampler=sampler,
        collate_fn=identity_collate,
    )
    optimizer = torch.optim.AdamW(
        _param_groups(model, cfg.weight_decay), lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_epsilon,
    )
    steps_per_epoch = math.ceil(len(pixels) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, round(cfg.warmup_epochs * steps_per_epoch)))
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    unwrapped = accelerator.unwrap_model(model)
    state = TrainState()
    accelerator.register_for_checkpointing(state)
    recorder = buffer = None
    if cfg.record_dynamics:
        recorder = PairDynamicsRecorder(len(pixels))
        accelerator.register_for_checkpointing(recorder)
        buffer = PairDynamicsBuffer(recorder, accelerator)
    checkpoint_dir = out / "checkpoints"
    resume(accelerator, checkpoint_dir, cfg.resume_from_checkpoint, state)

    def step(batch, generator: torch.Generator) -> StepOutput:
        output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       pixel_values=normalize(batch["pixels"]))
        contrastive = clip_loss(output.image_embeds, output.text_embeds, unwrapped.logit_scale)
        extras = pair_statistics(contrastive) if buffer is not None else None
        return StepOutput(contrastive.loss, contrastive.logits_per_image, contrastive.labels, batch["positions"], extras)

    def evaluate_now(with_probe: bool) -> dict[str, Any]:
        unwrapped.eval()
        with accelerator.autocast():
            images, texts = encode(unwrapped, normalize, test_pixels, test_ids, test_mask, cfg.eval_batch_size, accelerator.device)
            result: dict[str, Any] = {"retrieval": retrieval_recall(images, texts), "zero_shot": {}, "linear_probe": {}}
            for task in tasks:
                classes = class_embeddings(unwrapped, tokenizer, task, cfg.max_length, accelerator.device).cpu()
                result["zero_shot"][task.name] = zero_shot_accuracy(images, classes, read_labels(test, task.column))
            probe_tasks = [t for t in tasks if t.column in train_rows.column_names] if with_probe else []
            if probe_tasks:
                n = min(cfg.probe_train_size, len(pixels))
                train_images, _ = encode(unwrapped, normalize, pixels[:n], None, None, cfg.eval_batch_size, accelerator.device)
                for task in probe_tasks:
                    test_set = Dataset.from_dict({"emb": images.numpy(), "label": read_labels(test, task.column)})
                    probe = LinearProbe(test_set, embedding_column="emb", label_column="label")
                    labels = read_labels(train_rows.select(range(n)), task.column)
                    result["linear_probe"][task.name] = probe.accuracy_of(train_images.numpy(), labels)
        unwrapped.train()
        zero_shot = list(result["zero_shot"].values())
        result["zero_shot_mean"] = float(np.mean(zero_shot)) if zero_shot else float("nan")
        return result

    train_epochs(
        accelerator, model, optimizer, scheduler, train_loader, sampler, step, state=state, num_epochs=cfg.epochs,
        total_steps=total_steps, seed=config.seed, buffer=buffer,
        evaluate_epoch=(lambda: evaluate_now(False)["zero_shot_mean"]) if cfg.eval_each_epoch else None,
        checkpoint_dir=checkpoint_dir if cfg.checkpointing else None, save_total_limit=cfg.save_total_limit,
    )

    result = evaluate_now(cfg.linear_probe)
    pruning_ratio = 1.0 - len(pixels) / len(train)
    metrics = {
        "seed": config.seed,
        "zero_shot": result["zero_shot"],
        "zero_shot_mean": result["zero_shot_mean"],
        "retrieval": result["retrieval"],
        "linear_probe": result["linear_probe"],
        "logit_scale": float(unwrapped.logit_scale.detach()),
        "test_size": len(test),
        "train_time_s": state.train_time,
        "dynamics_time_s": state.dynamics_time,
        "epoch_times_s": [h["time_s"] for h in state.history],
        "epochs": state.epoch,
        "iterations": state.step,
        "batch_size": cfg.batch_size,
        "train_size": len(pixels),
        "full_train_size": len(train),
        "pruning_ratio": pruning_ratio,
        "subset": {**rows.info, "train_size": len(pixels), "full_train_size": len(train), "pruning_ratio": pruning_ratio},
        "corrupted_in_train": _corruption_counts(train_rows),
        "model": cfg.model,
        "image_size": image_size,
        "vocab_size": len(tokenizer),
        "num_parameters": sum(p.numel() for p in unwrapped.parameters()),
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "history": state.history,
    }
    if accelerator.is_main_process:
        if recorder is not None and recorder.epochs:
            target = save_dynamics(recorder, rows.row_ids, out / "dynamics", cfg.dynamics_column,
                                   extra_columns=PairDynamicsRecorder.EXTRA_FIELDS)
            metrics["dynamics_path"] = str(target)
            metrics["dynamics_epochs"] = recorder.epochs
        if cfg.save_model:
            staging = out / "model.incomplete"
            unwrapped.save_pretrained(str(staging))
            tokenizer.save_pretrained(str(staging))
            image_processor(image_size, normalize).save_pretrained(str(staging))
            replace_folder(staging, out / "model")
            metrics["model_path"] = str(out / "model")
        write_json(out / "metrics.json", metrics)
    accelerator.wait_for_everyone()
    accelerator.free_memory()
    return metrics


def make_parser() -> HfArgumentParser:
    return HfArgumentParser((DataConfig, TrainConfig))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse options, train every seed, write ``config.json`` and the aggregated ``metrics.json``.

    Example:
        >>> summary = main(["--num_train", "512", "--num_test", "128", "--epochs", "2", "--output_dir", "runs/x"])
        >>> summary["zero_shot"]["color"]["mean"]
    """
    data_cfg, train_cfg = parse_config(make_parser(), argv)
    if len(train_cfg.seeds) == 0:
        raise ValueError("--seeds needs at least one seed")
    if train_cfg.resume_from_checkpoint not in (None, "latest") and len(train_cfg.seeds) > 1:
        raise ValueError("a checkpoint path resumes one run; use --resume_from_checkpoint latest with several seeds")
    _check_options(train_cfg)
    out = Path(train_cfg.output_dir)
    state = PartialState(cpu=train_cfg.cpu)
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", run_metadata({"data": data_cfg, "train": train_cfg}, argv))
    runs = [train_run(RunConfig(data_cfg, train_cfg, seed, out / f"seed_{seed}")) for seed in train_cfg.seeds]
    summary = {
        "seeds": list(train_cfg.seeds),
        **aggregate_runs(runs, ["zero_shot_mean", "train_time_s"], nested=["zero_shot", "retrieval", "linear_probe"]),
        "train_size": runs[0]["train_size"],
        "full_train_size": runs[0]["full_train_size"],
        "corrupted_in_train": runs[0]["corrupted_in_train"],
        "epochs": runs[0]["epochs"],
        "iterations": runs[0]["iterations"],
        "runs": [str(out / f"seed_{seed}" / "metrics.json") for seed in train_cfg.seeds],
    }
    if state.is_main_process:
        write_json(out / "metrics.json", summary)
        parts = [f"{name} {100 * v['mean']:.1f}%" for name, v in summary["zero_shot"].items()]
        state.print(f"zero-shot {', '.join(parts) or 'n/a'}; i2t R@1 {100 * summary['retrieval']['i2t_R@1']['mean']:.1f}%")
    return summary


if __name__ == "__main__":
    main()
