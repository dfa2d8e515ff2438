"""The solver interface and the registry.

A solver answers one question for a level ``D``: given a vector ``v`` shaped like
``θ_D``, what is ``J_{D,U}ᵀ v`` for every parent ``U`` of ``D`` at once, where
``J_{D,U} = ∂θ_D*/∂θ_U`` is the best-response Jacobian. The engine calls it once per
edge group during adjoint propagation and never needs to know which solver it is.

A solver is also its own configuration: a frozen pydantic model whose fields are the
solver's knobs. Register new ones with ``register``; they are then usable by name
in [`mlo.ProblemConfig`][mlo.ProblemConfig], without editing ``mlo/``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from pydantic import ConfigDict
from torch import Tensor

from ..autodiff import SecondOrder
from ..autodiff.finite_difference import FiniteDifferenceSecondOrder
from ..autodiff.forward import ForwardSecondOrder
from ..autodiff.grouped_conv import grouped_double_backward
from ..autodiff.linalg import Vector
from ..autodiff.products import Hold
from ..autodiff.recompute import RecomputedSecondOrder
from ..autodiff.trajectory import Trajectory
from ..errors import SetupError
from ..options import Options

Objective = Callable[..., Tensor]


@dataclass
class Level:
    """What a solver may see of the lower level ``D`` whose Jacobian it applies.

    ``objective(params=None, batch=None)`` evaluates ``f_D`` at D's current batch (or
    ``batch``) with D's parameters replaced by ``params`` when given; the parameters of
    every other problem stay as they are. ``response()``, for a level that implements
    ``Problem.best_response``, recomputes D's solution as a differentiable function of the
    other problems' current parameters.
    """

    name: str
    params: list[Tensor]
    objective: Objective
    learning_rate: float | None
    grad_clip: float | None = None
    trajectory: Trajectory | None = None
    response: Callable[[], list[Tensor]] | None = None
    average: Callable[[Vector], Vector] | None = None
    """Under data parallelism (``EngineConfig(distributed="ddp")``), the average over
    ranks of a vector shaped like D's parameters; ``None`` on one process. A solver passes
    every such product of D's objective through it (``SecondOrder`` does, for ``H v``), so
    that it works with the global batch's Hessian; its results for the parents need no
    averaging (the engine averages adjoints where they are used)."""
    second_order: Callable[[], SecondOrder] | None = None
    """The level's Hessian-vector and mixed products (a fresh object per call): of
    ``f_D``'s partial gradient, or, for a level trained by its total gradient
    (``ProblemConfig(jacobian="total")`` on a level that reads its own lower levels), of
    that total gradient (``mlo.nested.TotalSecondOrder``). ``None``: the partial
    products of ``objective``."""
    total: bool = False
    """Whether ``second_order`` gives the products of D's total gradient."""
    total_gradient: Callable[[list[Tensor], Any], Vector] | None = None
    """For a level trained by its total gradient: ``total_gradient(params, batch)`` is
    that gradient with D's parameters replaced by ``params`` (D's descendants at their
    current values and best responses), differentiable in ``params`` and in the other
    levels' parameters; what ``unroll`` replays D's steps with. ``None`` otherwise."""
    create_graph: bool = False
    """Whether the products a solver returns must be differentiable in turn (an upper
    level that is itself nested differentiates through them)."""
    optimizer: Any = None
    """The level's ``torch.optim.Optimizer`` (``None`` for an explicit level), for solvers
    that read its state (``sama``'s Adam preconditioner); its state is keyed by
    ``own_params``."""
    own_params: list[Tensor] = field(default_factory=list)
    """The level's own parameter tensors, in the order of ``params`` (which may be
    stand-ins for them while a computation substitutes them)."""
    one_system: Callable[[Vector, Sequence[Sequence[Tensor]]], list[Vector]] | None = None
    """For a nested level with ``ProblemConfig(jacobian="one_system")``: its
    \\(J_{D,U}^\top v\\) for the parents' parameter lists, by one solve per level of its
    lower levels' tree (``mlo.hypergradient.one_system``)."""
    hvp: str = "reverse"
    """How ``products()`` are taken where they need not be differentiable further
    (``ProblemConfig(hvp=...)``): ``"reverse"`` (``SecondOrder``), ``"recompute"``
    (``RecomputedSecondOrder``), ``"forward"`` (``ForwardSecondOrder``) or
    ``"finite_difference"`` (``FiniteDifferenceSecondOrder``, at ``hvp_radius``)."""
    hvp_radius: float = 0.01
    hold: Hold | None = None
    """``hold(keep)``: a context in which no level's parameter except ``keep`` requires
    gradients (``Evaluator.held``); ``None``: nothing is held."""
    memo: dict[Any, Any] = field(default_factory=dict)
    """Choices a solver makes once for the level and keeps for the engine's lifetime
    (``cg``'s ``fuse_mixed="auto"``); the engine gives each level the same dict on every
    call, a fresh one by default."""
    grouped_convolutions: dict[str, bool] = field(default_factory=dict)
    """Whether the level's objective has grouped convolutions (``"met"``), once
    ``twice_differentiable`` has evaluated it; the engine gives each level the same dict
    on every call, a fresh one by default."""
    diagnose: bool = True
    """Whether the solver's diagnostics will be read. The engine asks for them on the
    ticks it reports (the first, every ``log_every``-th and the last) and in
    [`mlo.Engine.hypergradient`][mlo.Engine.hypergradient]; on other ticks a solver may skip
    the arithmetic that only its diagnostics need and return none."""

    @property
    def hvp_applies(self) -> bool:
        """Whether D's products are taken as ``hvp`` says: not where they must be
        differentiable further, nor for a nested level's total gradient or one system."""
        return not self.create_graph and self.second_order is None and self.one_system is None

    def twice_differentiable(self, *args: Any, **kwargs: Any) -> Tensor:
        """``objective(*args, **kwargs)`` for a graph that is differentiated twice in
        reverse mode (Hessian-vector products, ``unroll``'s replay) and, unless
        ``create_graph``, no further: then its grouped convolutions take their double
        backward one call per term (``mlo.autodiff.grouped_conv``), not one per group.
        A level whose first such evaluation met no grouped convolution is evaluated
        plainly from then on (``grouped_convolutions``): the context looks at every
        operation, about 2 % of a tiny tick."""
        if self.create_graph or self.grouped_convolutions.get("met") is False:
            return self.objective(*args, **kwargs)
        with grouped_double_backward() as context:
            loss = self.objective(*args, **kwargs)
        self.grouped_convolutions.setdefault("met", context.recorded > 0)
        return loss

    def products(self) -> SecondOrder:
        """D's second-order products (see ``second_order``)."""
        if self.second_order is not None:
            return self.second_order()
        if not self.hvp_applies or self.hvp == "reverse":
            objective = self.twice_differentiable()
            return SecondOrder(objective, self.params, self.average, self.create_graph)

        def objective(params: list[Tensor]) -> Tensor:  # f with D's parameters replaced
            return self.objective(params=params)

        if self.hvp == "recompute":
            return RecomputedSecondOrder(
                lambda params: self.twice_differentiable(params=params),
                self.params,
                self.average,
                self.hold,
                forward_objective=objective,
                memo=self.memo,
            )
        if self.hvp == "forward":
            return ForwardSecondOrder(objective, self.params, self.average, self.name, self.hold)
        if self.hvp == "finite_difference":
            return FiniteDifferenceSecondOrder(
                objective, self.params, self.hvp_radius, self.average
            )
        return SecondOrder(self.objective(), self.params, self.average, self.create_graph)

    def default_step(self, value: float | None, solver: str, knob: str) -> float:
        """``value`` if given, else D's learning rate (which an explicit level lacks)."""
        if value is not None:
            return value
        if self.learning_rate is None:
            raise SetupError(
                f"solver {solver!r} on level {self.name!r}: the level has no optimizer to take "
                f"a learning rate from; set {solver}({knob}=...) explicitly"
            )
        return self.learning_rate


@dataclass
class SolverResult:
    """``vjps[i]`` is ``J_{D,U_i}ᵀ v`` shaped like parent ``i``'s parameters."""

    vjps: list[Vector]
    diagnostics: dict[str, Tensor] = field(default_factory=dict)


class Solver(Options, ABC):
    """Base class of all solvers (and of their configurations)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: ClassVar[str] = ""
    needs_trajectory: ClassVar[bool] = False
    zero_jacobian: ClassVar[bool] = False  # True: vjp is always zero (nothing propagates)
    # True: the solver works from Level.products(), so it is exact for a nested level
    # when those are the total gradient's products (ProblemConfig(jacobian="total")).
    supports_total: ClassVar[bool] = False
    # True: with ProblemConfig(jacobian=None) a nested level uses its total Jacobian; a
    # solver that approximates H⁻¹ by a scaled identity (darts, sama) defaults to partial.
    total_by_default: ClassVar[bool] = True
    needs_best_response: ClassVar[bool] = False  # True: only for levels with best_response
    # True: ProblemConfig(hvp=...) applies to its products (describe() shows it).
    takes_products: ClassVar[bool] = False
    # True: under hvp="auto" its products move to "recompute" (the gradient's graph built
    # again for each product) when reverse mode runs out of memory; that holds less.
    recompute_when_out_of_memory: ClassVar[bool] = False

    @abstractmethod
    def vjp(self, level: Level, v: Vector, parents: Sequence[Sequence[Tensor]]) -> SolverResult:
        r"""Return \(J_{D,U}^\top v\) for each parameter list in ``parents``."""

    def warnings(self, diagnostics: dict[str, float]) -> list[str]:
        """Human-readable warnings for materialised diagnostics (none by default)."""
        return []

    def products(self, unroll_steps: int) -> int:
        """Autograd passes one call of [`vjp`][mlo.solvers.Solver.vjp] takes (the gradient
        its products differentiate, Hessian-vector and mixed products), for the engine's
        cost estimate (``Engine.describe``). On a nested level each pass is one through the
        level's total gradient, which the estimate prices. Two by default; a solver of
        your own overrides it when it knows better."""
        return 2

    def products_on(self, unroll_steps: int, memo: Mapping[Any, Any], apart: bool) -> int:
        """[`products`][mlo.solvers.Solver.products] on one level: ``memo`` holds the
        choices the solver made there so far (``Level.memo``), and ``apart`` says that each
        product must be a pass of its own (a nested level's total products, or products
        from a graph built for each, in forward mode or by differences; ``cg`` takes its
        mixed products inside its Hessian-vector products' passes only on a retained
        reverse-mode graph). By default ``products(unroll_steps)``."""
        return self.products(unroll_steps)


class ImplicitSolver(Solver):
    r"""Solvers built on the implicit function theorem at a stationary point of ``f_D``:

    \(J_{D,U}^\top v = -\partial^2 f_D / \partial\theta_U \partial\theta_D \cdot w\) with
    \(w \approx H_D^{-1} v\).

    Subclasses supply ``w``. The mixed product for all parents comes from one backward
    pass, so ``w`` is shared by all of them. For a nested level the products are those
    of its total gradient (``Level.products()``), which makes the solver exact there too.
    """

    supports_total: ClassVar[bool] = True
    takes_products: ClassVar[bool] = True
    recompute_when_out_of_memory: ClassVar[bool] = True

    @abstractmethod
    def inverse_hvp(
        self, hessian: SecondOrder, v: Vector, level: Level
    ) -> tuple[Vector, dict[str, Tensor]]:
        r"""Approximate \(H_D^{-1} v\)."""

    def vjp(self, level: Level, v: Vector, parents: Sequence[Sequence[Tensor]]) -> SolverResult:
        if level.one_system is not None:
            return SolverResult(level.one_system(v, parents))
        flat = [t for group in parents for t in group]
        mixed, diagnostics = self.mixed_inverse(level.products(), v, level, flat)
        return SolverResult(split_by_parents([-m for m in mixed], parents), diagnostics)

    def mixed_inverse(
        self, hessian: SecondOrder, v: Vector, level: Level, others: Sequence[Tensor]
    ) -> tuple[Vector, dict[str, Tensor]]:
        r"""\(\partial^2 f_D / \partial y \partial\theta_D \cdot w\) for each tensor
        \(y\) in ``others``, with \(w\) = ``inverse_hvp(hessian, v, level)``, and the
        solver's diagnostics. By default the mixed product is one more pass after the
        solve; a solver whose \(w\) is a combination of the vectors it multiplies by
        \(H_D\) may take the mixed products in those passes instead (``cg``)."""
        w, diagnostics = self.inverse_hvp(hessian, v, level)
        return hessian.mixed(w, others), diagnostics

    def products(self, unroll_steps: int) -> int:
        """The gradient, its Hessian-vector products (``iterations``, where it has them),
        and one mixed product."""
        return getattr(self, "iterations", 1) + 2


def split_by_parents(flat: list[Tensor], groups: Sequence[Sequence[Tensor]]) -> list[Vector]:
    """``flat``, one tensor per parameter of all parents in order, as one list per parent
    (``groups``: the parents' parameters), the shape of ``SolverResult.vjps``."""
    out, start = [], 0
    for group in groups:
        out.append(flat[start : start + len(group)])
        start += len(group)
    return out


_REGISTRY: dict[str, type[Solver]] = {}

S = TypeVar("S", bound=type[Solver])


def register(name: str) -> Callable[[S], S]:
    """Class decorator: make a ``Solver`` subclass available under ``name``."""

    def decorate(cls: S) -> S:
        if not (isinstance(cls, type) and issubclass(cls, Solver)):
            raise SetupError(f"@register({name!r}) needs a subclass of mlo.solvers.Solver")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise SetupError(f"a solver named {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def available() -> list[str]:
    """Names of all registered solvers."""
    return sorted(_REGISTRY)


def resolve(spec: Any) -> Solver:
    """A solver instance from a name or an instance."""
    if isinstance(spec, Solver):
        return spec
    if isinstance(spec, str):
        cls = _REGISTRY.get(spec)
        if cls is None:
            raise SetupError(
                f"unknown solver {spec!r}; valid solvers are: {', '.join(available())} "
                "(or register your own with @mlo.solvers.register)"
            )
        return cls()
    raise SetupError(
        f"solver must be a solver name or a mlo.solvers.Solver instance, got {type(spec).__name__}"
    )
