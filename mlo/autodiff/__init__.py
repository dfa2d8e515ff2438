"""Differentiation building blocks, independent of levels and graphs.

- :mod:`~mlo.autodiff.products`: vector-Jacobian products straight through autograd's
  engine, gradients, and :class:`SecondOrder` (matrix-free Hessian-vector and mixed
  products of one objective);
- :mod:`~mlo.autodiff.linalg`: arithmetic on lists of tensors (a level's parameters as one
  vector), without host synchronisation;
- :mod:`~mlo.autodiff.functional_optim`: SGD and Adam steps as differentiable functions;
- :mod:`~mlo.autodiff.trajectory`: the optimizer steps a level took, recorded for replay.
"""

from .products import SecondOrder, gradient, gradient_or_none, materialized, vjp

__all__ = ["SecondOrder", "gradient", "gradient_or_none", "materialized", "vjp"]
