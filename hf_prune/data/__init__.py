"""Offline and Hub dataset loaders returning DatasetDicts with train/test splits, image decoding,
image–caption pools (`load_scenes`, templated captions, any image–text dataset through `load_image_text`)
and prompt/response tokenisation for instruction data (`tokenize_prompt_response`).

Example:
    >>> from hf_prune.data import load_fashion_mnist
    >>> ds = load_fashion_mnist()        # local IDX files when installed, else the Hub
"""

from .bigbench import BBH_TASKS, bigbench_path, load_bigbench
from .captions import (
    DEFAULT_TEMPLATES,
    DIGIT_CAPTION_NAMES,
    DIGIT_TEMPLATES,
    FASHION_MNIST_CAPTION_NAMES,
    FASHION_MNIST_TEMPLATES,
    load_digits_captions,
    load_fashion_mnist_captions,
    with_captions,
)
from .chat import PLAIN_ROLE_PREFIXES, encode_messages, render_messages, tokenize_messages
from .digits import load_digits
from .fashion_mnist import (
    DEFAULT_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_HUB_ID,
    load_fashion_mnist,
    read_idx,
)
from .hub import load_cifar10, load_cifar100, load_image_dataset
from .image_text import check_image_text, load_image_text
from .images import encode_png, images_to_arrow, read_images
from .instruction_formats import from_alpaca, from_flan, from_oasst
from .instruction_pool import build_instruction_pool
from .instructions import (
    EVAL_FEATURES,
    INSTRUCTION_FEATURES,
    INSTRUCTION_ROLES,
    MESSAGES_FEATURE,
    check_instructions,
    instruction_dataset,
    message_problem,
)
from .prompts import IGNORE_INDEX, encode_prompt_response, tokenize_prompt_response
from .scenes import SCENE_ATTRIBUTES, load_scenes, render_scenes, scene_zero_shot_classes
from .sharegpt import SHAREGPT_ROLES, load_sharegpt, sharegpt_path

__all__ = [
    "DEFAULT_FASHION_MNIST_DIR", "FASHION_MNIST_CLASSES", "FASHION_MNIST_HUB_ID", "IGNORE_INDEX", "encode_png",
    "encode_prompt_response", "images_to_arrow", "load_cifar10", "load_cifar100", "load_digits", "load_fashion_mnist",
    "load_image_dataset", "read_idx", "read_images", "tokenize_prompt_response",
    "DEFAULT_TEMPLATES", "DIGIT_CAPTION_NAMES", "DIGIT_TEMPLATES", "FASHION_MNIST_CAPTION_NAMES",
    "FASHION_MNIST_TEMPLATES", "load_digits_captions", "load_fashion_mnist_captions", "with_captions",
    "check_image_text", "load_image_text", "SCENE_ATTRIBUTES", "load_scenes", "render_scenes",
    "scene_zero_shot_classes",
    "PLAIN_ROLE_PREFIXES", "encode_messages", "render_messages", "tokenize_messages",
    "EVAL_FEATURES", "INSTRUCTION_FEATURES", "INSTRUCTION_ROLES", "MESSAGES_FEATURE", "check_instructions",
    "message_problem", "instruction_dataset", "from_alpaca", "from_flan", "from_oasst", "build_instruction_pool",
    "SHAREGPT_ROLES", "load_sharegpt", "sharegpt_path",
    "BBH_TASKS", "bigbench_path", "load_bigbench",
]
