"""PLACEHOLDER: being implemented."""

class RandomNetEmbedder:
    def __init__(self, *a, **k):
        raise NotImplementedError


