"""PLACEHOLDER: being implemented."""

def dual(*a, **k):
    raise NotImplementedError


def dual_beta(*a, **k):
    raise NotImplementedError


def beta_sampling(*a, **k):
    raise NotImplementedError


