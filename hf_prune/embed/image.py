"""PLACEHOLDER: being implemented."""

class ImageEmbedder:
    def __init__(self, *a, **k):
        raise NotImplementedError


