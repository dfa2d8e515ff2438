"""How a level's gradient through the levels below it is made (DESIGN §2).

Read in this order:

- :mod:`~mlo.hypergradient.evaluator`: a level's objective at its current batch, with any
  level's parameters substituted: the only way the rest of this package touches problems;
- :mod:`~mlo.hypergradient.jacobian`: whether a level's best-response Jacobian is the
  total (nested) or the partial one;
- :mod:`~mlo.hypergradient.adjoint`: adjoint propagation over the level graph, asking each
  lower level's solver for ``J_{D,U}ᵀ v``;
- :mod:`~mlo.hypergradient.nested`: the Hessian-vector and mixed products of a nested
  level's total gradient;
- :mod:`~mlo.hypergradient.total`: :class:`Hypergradients`, which composes them: total
  gradients, and the :class:`mlo.solvers.Level` view each solver gets.
"""
