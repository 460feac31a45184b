"""PLACEHOLDER: being implemented."""

class TextEmbedder:
    def __init__(self, *a, **k):
        raise NotImplementedError


