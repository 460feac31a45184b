"""PLACEHOLDER: being implemented."""

def k_center_greedy(*a, **k):
    raise NotImplementedError


