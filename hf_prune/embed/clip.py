"""PLACEHOLDER: being implemented."""

class CLIPEmbedder:
    def __init__(self, *a, **k):
        raise NotImplementedError


