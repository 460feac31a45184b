"""Map-able embedders: batched callables for ``Dataset.map(..., batched=True)``."""

from .clip import CLIPEmbedder
from .image import ImageEmbedder
from .lora_gradients import LoRAGradientEmbedder, tokenize_prompt_response
from .pixels import PixelEmbedder
from .random_net import RandomNetEmbedder
from .text import TextEmbedder

__all__ = ["CLIPEmbedder", "ImageEmbedder", "LoRAGradientEmbedder", "PixelEmbedder", "RandomNetEmbedder", "TextEmbedder",
           "tokenize_prompt_response"]
