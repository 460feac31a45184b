"""Map-able embedders: batched callables for ``Dataset.map(..., batched=True)``."""

from ..data.prompts import tokenize_prompt_response  # its home is hf_prune.data; kept here for 0.1.0 code
from .clip import CLIPEmbedder
from .distributed import batch_aligned_bounds, map_distributed, shard_name
from .hidden_states import HiddenStateEmbedder
from .image import ImageEmbedder
from .lora_gradients import LoRAGradientEmbedder
from .pixels import PixelEmbedder
from .random_net import RandomNetEmbedder
from .text import TextEmbedder

__all__ = ["CLIPEmbedder", "HiddenStateEmbedder", "ImageEmbedder", "LoRAGradientEmbedder", "PixelEmbedder",
           "RandomNetEmbedder", "TextEmbedder", "batch_aligned_bounds", "map_distributed", "shard_name",
           "tokenize_prompt_response"]
