"""PLACEHOLDER: being implemented."""

class LoRAGradientEmbedder:
    def __init__(self, *a, **k):
        raise NotImplementedError


