"""PLACEHOLDER: being implemented."""

class PixelEmbedder:
    def __init__(self, *a, **k):
        raise NotImplementedError


