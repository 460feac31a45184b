"""PLACEHOLDER: being implemented."""

def less(*a, **k):
    raise NotImplementedError


