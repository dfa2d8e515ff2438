"""Differentiation building blocks, independent of levels and graphs.

- ``products``: vector-Jacobian products straight through autograd's
  engine, gradients, and ``SecondOrder`` (matrix-free Hessian-vector and mixed
  products of one objective);
- ``linalg``: arithmetic on lists of tensors (a level's parameters as one
  vector), without host synchronisation;
- ``functional_optim``: SGD and Adam steps as differentiable functions;
- ``trajectory``: the optimizer steps a level took, recorded for replay;
- ``grouped_conv``: grouped convolutions whose double backward takes each term in one
  call (PyTorch's takes the weight's term one group at a time).
"""

from .products import SecondOrder, gradient, gradient_or_none, materialized, vjp

__all__ = ["SecondOrder", "gradient", "gradient_or_none", "materialized", "vjp"]
