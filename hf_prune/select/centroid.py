"""PLACEHOLDER: being implemented."""

def moderate(*a, **k):
    raise NotImplementedError


def easy(*a, **k):
    raise NotImplementedError


def hard(*a, **k):
    raise NotImplementedError


