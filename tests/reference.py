"""Hand-written pieces of the explicit reference computations in the hypergradient tests."""

from __future__ import annotations


def sgd_step(params, grads, record):
    """torch.optim.SGD's step (momentum, dampening 0, weight decay), written out, with the
    hyperparameters and momentum buffers of an unroll trajectory record."""
    out = []
    for p, g, state, rule in zip(params, grads, record.optimizer_state, record.rules):
        h = dict(rule.hyper)
        d = g + h["weight_decay"] * p
        buf = state.get("momentum_buffer")
        buf = d if buf is None else h["momentum"] * buf + d
        out.append(p - h["lr"] * buf)
    return out


def pinned(current, computed):
    """Values of ``current``, derivatives of ``computed``: the total derivative at the
    engine's current state, through the written-out computation."""
    return [c.detach() + (x - x.detach()) for c, x in zip(current, computed)]
