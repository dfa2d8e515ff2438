"""How a level's gradient through the levels below it is made (DESIGN §2).

Read in this order:

- ``evaluator``: a level's objective at its current batch, with any
  level's parameters substituted: the only way the rest of this package touches problems;
- ``jacobian``: whether a level's best-response Jacobian is the
  total (nested) or the partial one;
- ``adjoint``: adjoint propagation over the level graph, asking each
  lower level's solver for ``J_{D,U}ᵀ v``;
- ``nested``: the Hessian-vector and mixed products of a nested
  level's total gradient;
- ``total``: ``Hypergradients``, which composes them: total
  gradients, and the [`mlo.solvers.Level`][mlo.solvers.Level] view each solver gets;
- ``cost``: the autograd passes a tick takes in either mode, counted from the graph and
  the solvers (``Engine.describe`` shows them; the engine warns when exactness is dear).
"""
