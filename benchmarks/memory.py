"""Peak memory of a hypergradient tick, per solver, against a plain training step of the
same network: the DARTS supernet (problems.nas), CPU, one fresh process per measurement.

Each child builds the supernet and its architecture weights, draws its batches, resets the
process's peak resident set (Linux: ``/proc/self/clear_refs``), runs ``--ticks`` ticks and
reports the peak resident growth over the resident set before the first tick, and the
median time per tick. ``plain`` is the supernet's own training step (forward, backward,
its optimizer's step, the architecture held); the others are mlo's DARTS search with that
solver on the supernet level (``unroll`` at K = 1, 2, 4, 8 replays K supernet steps;
``-forward``: the same solver with ``ProblemConfig(hvp="forward")``; ``-recompute``: with
``ProblemConfig(hvp="recompute")`` (the gradient's graph built for each product); ``-fd``: with
``ProblemConfig(hvp="finite_difference")`` (r = 0.01); ``unroll`` checkpoints its replay
from K = 4 on by default, ``-checkpoint`` and ``-one_graph`` force either way, and with
``-forward`` each replayed step's second-order products are one forward-over-reverse
pass; ``-separate``: cg with ``fuse_mixed=False``, its mixed product one pass after the
iterations instead of a part of each). ``betty-darts``, ``betty-cg`` and ``betty-neumann``
run the same search in Betty's own engine (betty-ml, the dev extra), with its hypergradient
of that type (5 iterations, as mlo's). With
``--network lease`` the search is LeaSE's four levels on the same supernet (a tiny ResNet
audience, 2-step differentiable PGD explanations), the solver on the explainer and the
audience, against the same plain supernet step.
Rounds alternate the configurations; the script prints medians over rounds and the ratios
to ``plain``.

    python benchmarks/memory.py [--rounds 2] [--ticks 3] [--layers 3] [--channels 8]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

CONFIGS = [
    "plain",
    "first_order",
    "darts",
    "sama",
    "cg",
    "neumann",
    "cg-forward",
    "neumann-forward",
    "cg-recompute",
    "neumann-recompute",
    "cg-separate",
    "cg-fd",
    "neumann-fd",
    "unroll1",
    "unroll2",
    "unroll4",
    "unroll8",
    "unroll2-checkpoint",
    "unroll4-one_graph",
    "unroll8-one_graph",
    "unroll4-forward",
    "unroll8-forward",
    "betty-darts",
    "betty-cg",
    "betty-neumann",
]
# Betty's own engine (betty-ml 0.1.1) on the same search: its type="darts", "cg" and
# "neumann" hypergradients, 5 iterations for the last two, as mlo's rows above.
BETTY = {"betty-darts", "betty-cg", "betty-neumann"}


def _status(field: str) -> int:
    """A ``/proc/self/status`` figure, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _supernet(args):
    """The supernet, its architecture and 4 training and 4 validation batches, seeded."""
    from problems.nas import ArchitectureWeights, Supernet

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import random_batches

    torch.set_num_threads(1)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    device = torch.device(args.device)
    net = Supernet(10, args.layers, args.channels).to(device)
    arch = ArchitectureWeights().to(device)
    train, val = (
        [(x.to(device), y.to(device)) for x, y in random_batches(4, args.batch, args.size, gen)]
        for _ in range(2)
    )
    return net, arch, train, val, gen


def _plain_step(net, arch, train, steps: int):
    """The supernet's own training step (forward, backward, SGD), the architecture held."""
    from problems.nas import SearchHyper

    optimizer, _ = SearchHyper().weight_optimizer(net.parameters(), 10_000)
    batches = iter(train * steps)
    with torch.no_grad():
        held = arch.normalized()  # the architecture is held in a plain step

    def step() -> None:
        x, y = next(batches)
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(x, held), y)
        loss.backward()
        optimizer.step()

    return step


def _betty_step(net, arch, train, val, kind: str, device: str):
    """One iteration of the same DARTS search in Betty's engine: a supernet step, then an
    architecture step with Betty's ``kind`` hypergradient (5 iterations for cg and
    neumann), with the optimizers of ``problems.nas.SearchHyper``."""
    import torch.nn.functional as F
    from betty.configs import Config
    from betty.problems import ImplicitProblem
    from common import betty_bilevel_step, betty_problem, quiet_betty

    from problems.nas import SearchHyper

    quiet_betty()
    hyper = SearchHyper()
    w_opt, _ = hyper.weight_optimizer(net.parameters(), 10_000)
    a_opt = hyper.arch_optimizer(arch.parameters())

    class Weights(ImplicitProblem):
        def training_step(self, batch):
            x, y = batch
            return F.cross_entropy(self.module(x, self.arch.module.normalized()), y)

    class Arch(ImplicitProblem):
        def training_step(self, batch):
            x, y = batch
            return F.cross_entropy(self.weights.module(x, self.module.normalized()), y)

    solver = {
        "darts": Config(type="darts", darts_alpha=0.01),
        "cg": Config(type="cg", cg_iterations=5),
        "neumann": Config(type="neumann", neumann_iterations=5, neumann_alpha=0.01),
    }[kind]
    weights = betty_problem(Weights, "weights", solver, net, w_opt, train, device)
    upper = Config(first_order=True, retain_graph=True)
    architecture = betty_problem(Arch, "arch", upper, arch, a_opt, val, device)
    return betty_bilevel_step(architecture, weights)


def child(config: str, args) -> dict:
    import mlo

    net, arch, train, val, gen = _supernet(args)
    if config == "plain":
        step = _plain_step(net, arch, train, args.ticks)
    elif config in BETTY:
        step = _betty_step(net, arch, train, val, config.split("-")[1], args.device)
    else:
        separate = config.endswith("-separate")  # cg's mixed product as its own pass
        config = config.removesuffix("-separate")
        solvers = {
            "cg": mlo.solvers.CG(iterations=5, fuse_mixed=False if separate else "auto"),
            "neumann": mlo.solvers.Neumann(iterations=5),
        }
        name = config.split("-")[0]
        solver = solvers.get(name, "unroll" if name.startswith("unroll") else name)
        unroll = int(name[len("unroll") :]) if name.startswith("unroll") else 1
        if config.endswith(("-checkpoint", "-one_graph")):
            solver = mlo.solvers.Unroll(checkpoint=config.endswith("-checkpoint"))
        problems, deps = search_levels(net, arch, train, val, args, gen, solver, unroll)
        hvp = {"-forward": "forward", "-fd": "finite_difference", "-recompute": "recompute"}
        hvp = hvp.get(config[len(name) :])
        if hvp:  # the same solver, its products by another route
            for problem in problems:
                if problem.config.solver.name == name.rstrip("0123456789"):
                    problem.config = problem.config.model_copy(update={"hvp": hvp})
        step = mlo.Engine(problems, deps, mlo.EngineConfig(progress=False)).step
    device = torch.device(args.device)
    if device.type == "cuda":  # the most memory allocated, over what was allocated before
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # the peak starts again from here
        before = _status("VmRSS")
    times = []
    for _ in range(args.ticks):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - before
        return {"peak": peak, "live": peak, "ms": 1e3 * statistics.median(times)}
    peak = _status("VmHWM") - before
    # One more tick under the profiler: the live tensors' peak, free of the allocator's
    # caching (what max_memory_allocated measures on a GPU).
    return {"peak": peak, "live": _live_peak(step), "ms": 1e3 * statistics.median(times)}


def search_levels(net, arch, train, val, args, gen, solver, unroll: int = 1):
    """The search's levels (``args.network``) with ``solver`` and ``unroll`` steps where
    the benchmark varies them: on the supernet level of the DARTS search, or on LeaSE's
    explainer and audience."""
    import mlo
    from problems.nas import build_darts

    if args.network != "lease":
        return build_darts(
            net, arch, train, val, total_updates=10_000, solver=solver, unroll_steps=unroll
        )
    problems, deps = lease_levels(net, arch, train, val, args, gen)
    for problem in problems:  # the explainer's and the audience's Jacobians
        if problem.name in ("explainer", "audience"):
            update = {"solver": mlo.solvers.resolve(solver), "unroll_steps": unroll}
            problem.config = problem.config.model_copy(update=update)
    return problems, deps


def lease_levels(net, arch, train, val, args, gen):
    """LeaSE's four levels on the same supernet (``problems.lease.build``): a tiny ResNet
    audience on its own batches, 2-step differentiable PGD explanations."""
    from common import random_batches

    from problems.lease import AudienceHyper, ExplanationConfig, LeaseHyper, ResNet, build

    audience_data = random_batches(4, args.batch, args.size, gen)
    hyper = LeaseHyper(
        explanation=ExplanationConfig(steps=2), audience=AudienceHyper(arch="resnet_tiny")
    )
    return build(
        net,
        arch,
        train,
        audience_data,
        val,
        num_classes=10,
        batch_size=args.batch,
        total_updates=10_000,
        image_shape=(3, args.size, args.size),
        pixel_std=torch.full((3,), 0.25),
        hyper=hyper,
        audience=ResNet("resnet_tiny", 10),
        seed=0,
    )


def _live_peak(step) -> int:
    """The most bytes of tensors alive at once during ``step()``, from the profiler's
    allocation and free records (CPU), read raw: building its per-operator event tree
    would take far longer than the step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    records = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for record in sorted(records, key=lambda e: e.start_ns()):
        live += record.nbytes()  # negative for a free
        peak = max(peak, live)
    return peak


def graph_sizes(args) -> None:
    """Why exact products cost what they cost here: the live-tensor peak of a plain step
    and of a cg(5) tick, and the bytes an exact reverse-over-reverse product must keep
    (the forward's saved tensors, then with the first backward's, built with
    ``create_graph``), with the architecture held fixed and with it differentiable (as the
    mixed product needs it); then what one product costs and holds in each exact mode
    (``hvp="reverse"``, ``"recompute"``, ``"forward"``), and one mixed product in
    recompute's two ways."""
    import dataclasses

    import mlo
    from problems.nas import build_darts

    net, arch, train, val, _ = _supernet(args)
    plain = _plain_step(net, arch, train, 2)
    plain()
    mib = 2**20
    print(f"live tensors at the peak of a plain step: {_live_peak(plain) / mib:.1f} MiB")
    problems, deps = build_darts(
        net, arch, train, val, total_updates=10_000, solver=mlo.solvers.CG(iterations=5)
    )
    tick = mlo.Engine(problems, deps, mlo.EngineConfig(progress=False)).step
    tick()
    print(f"live tensors at the peak of a cg(5) tick: {_live_peak(tick) / mib:.1f} MiB")
    x, y = train[0]
    params = list(net.parameters())
    for differentiable in (False, True):
        weights = arch.normalized()
        if not differentiable:
            weights = held = dataclasses.replace(
                weights, **{k: v.detach() for k, v in vars(weights).items() if v is not None}
            )
        storages: set[tuple[int, int]] = set()

        def pack(t: torch.Tensor, storages=storages) -> torch.Tensor:
            storages.add((t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = torch.nn.functional.cross_entropy(net(x, weights), y)
            forward = sum(n for _, n in storages)
            gradient = torch.autograd.grad(loss, params, create_graph=True)
            both = sum(n for _, n in storages)
        del gradient, loss
        print(
            f"architecture {'differentiable' if differentiable else 'held'}: the forward "
            f"saves {forward / mib:.1f} MiB; with the create_graph backward, "
            f"{both / mib:.1f} MiB"
        )
    _product_costs(net, held, x, y, params)
    _mixed_costs(net, arch, x, y, params)


def _objectives(net, weights, x, y):
    """The supernet's loss on ``(x, y)`` as a function of its parameter tensors, with
    the architecture weights ``weights()`` (held or differentiable), and the same
    evaluated as the solvers evaluate it for reverse-mode products (grouped convolutions
    whose double backward takes one call a term)."""
    from torch.func import functional_call

    from mlo.autodiff.grouped_conv import grouped_double_backward

    names = [n for n, _ in net.named_parameters()]

    def objective(tensors):
        out = functional_call(net, dict(zip(names, tensors)), (x, weights()))
        return torch.nn.functional.cross_entropy(out, y)

    def twice(tensors):
        with grouped_double_backward():
            return objective(tensors)

    return objective, twice


def _median_ms(runs: dict, rounds: int) -> dict[str, float]:
    """Each run's median time in ms over ``rounds`` rounds, the runs interleaved."""
    times = {k: [] for k in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {k: 1e3 * statistics.median(t) for k, t in times.items()}


def _mixed_costs(net, arch, x, y, params, rounds: int = 3) -> None:
    """What one mixed product (by the architecture) holds and takes with
    ``hvp="recompute"``: in reverse mode (the objective evaluated with the architecture
    free, the gradient's graph built, a double backward) and forward-over-reverse (what
    recompute takes where the objective's operations have forward-mode rules)."""
    from mlo.autodiff.recompute import RecomputedSecondOrder

    objective, twice = _objectives(net, arch.normalized, x, y)
    alphas = list(arch.parameters())
    vector = [torch.randn_like(p) for p in params]
    runs = {
        "reverse": lambda: RecomputedSecondOrder(twice, params).mixed(vector, alphas),
        "forward-over-reverse": lambda: RecomputedSecondOrder(
            twice, params, forward_objective=objective
        ).mixed(vector, alphas),
    }
    peaks = {k: _live_peak(run) for k, run in runs.items()}
    ms = _median_ms(runs, rounds)
    a, b = (run() for run in runs.values())
    apart = max(float((p - q).abs().max()) for p, q in zip(a, b)) / max(
        float(p.abs().max()) for p in a
    )
    print(
        "one mixed product with hvp='recompute' (the architecture differentiated): "
        + ", ".join(f"by {k}: {peaks[k] / 2**20:.1f} MiB live, {ms[k]:.1f} ms" for k in runs)
        + f"; forward / reverse: {peaks['forward-over-reverse'] / peaks['reverse']:.2f}x "
        f"the live tensors, {ms['forward-over-reverse'] / ms['reverse']:.2f}x the time (they "
        f"differ by {apart:.1e} of the largest entry)"
    )


def _product_costs(net, weights, x, y, params, rounds: int = 3) -> None:
    """What one Hessian-vector product costs in each mode, against a plain forward and
    backward pass: operations (``mlo.autodiff.op_cost``) and the median time over
    interleaved rounds. Reverse mode builds the gradient's graph once (``build``) and
    takes each product by one double backward through it; forward mode takes each by one
    forward-over-reverse pass."""
    from mlo.autodiff.forward import forward_product
    from mlo.autodiff.op_cost import OperationCost
    from mlo.autodiff.recompute import RecomputedSecondOrder

    objective, twice = _objectives(net, lambda: weights, x, y)
    vector = [torch.randn_like(p) for p in params]

    def plain():
        return torch.autograd.grad(objective(params), params)

    def build():
        return torch.autograd.grad(twice(params), params, create_graph=True)

    recomputed = RecomputedSecondOrder(twice, params)
    recomputed.hvp(vector)  # its forward pass, kept: what follows are products from it

    def rebuilt():  # hvp="recompute": the gradient's graph built from the kept forward's
        return recomputed.hvp(vector)

    def evaluation():  # the forward pass alone, which recompute takes once for a solve
        return objective(params)

    kept = {  # the retained graphs the reverse products differentiate
        "graph": build(),
        "pytorch": torch.autograd.grad(objective(params), params, create_graph=True),
    }
    runs = {
        "plain forward and backward": plain,
        "evaluation (the forward pass alone)": evaluation,
        "build (create_graph backward)": build,
        "reverse product (one double backward)": lambda: torch.autograd.grad(
            kept["graph"], params, vector, retain_graph=True
        ),
        "forward product (forward-over-reverse)": lambda: forward_product(
            objective, params, vector, None
        ),
        "recompute product (a create_graph backward from the kept forward, and a double "
        "backward)": rebuilt,
        "pytorch's reverse product (grouped convolutions' double backward one group at a "
        "time)": lambda: torch.autograd.grad(kept["pytorch"], params, vector, retain_graph=True),
    }
    operations = {}
    for name, run in runs.items():
        with OperationCost() as cost:
            run()
        operations[name] = cost.total
    ms = _median_ms(runs, rounds)
    base = "plain forward and backward"
    print("one Hessian-vector product, architecture held (operations; median ms):")
    for name in runs:
        print(
            f"  {name}: {operations[name]:.3g} operations "
            f"({operations[name] / operations[base]:.2f}x plain), {ms[name]:.1f} ms "
            f"({ms[name] / ms[base]:.2f}x plain)"
        )
    labels = list(runs)
    reverse, forward, recompute = (operations[k] for k in labels[3:6])
    reverse_product, forward_product_ = runs[labels[3]](), runs[labels[4]]()
    largest = max(a.abs().max() for a in reverse_product)
    apart = max((a - b).abs().max() for a, b in zip(reverse_product, forward_product_)) / largest
    print(
        f"  forward / reverse product: {forward / reverse:.2f}x the operations, "
        f"{ms[labels[4]] / ms[labels[3]]:.2f}x the time (the two products differ by at "
        f"most {float(apart):.1e} of the largest entry)"
    )

    def reverse_one():  # the graph built and kept, as for the next product
        graph = build()
        torch.autograd.grad(graph, params, vector, retain_graph=True)

    del reverse_product, forward_product_
    kept.clear()
    # One product each: nothing is kept between products but the retained graph, which
    # reverse_one holds through its product (five would hold no more, and the profiler's
    # records of five forward products alone take gigabytes).
    peaks = {
        "plain": _live_peak(plain),
        "reverse": _live_peak(reverse_one),
        # a first product: its forward pass, then the product from it
        "recompute": _live_peak(lambda: RecomputedSecondOrder(twice, params).hvp(vector)),
        "forward": _live_peak(runs[labels[4]]),
    }
    print(
        "  live tensors at the peak of a product: "
        + ", ".join(
            f"{k} {n / 2**20:.1f} MiB ({n / peaks['plain']:.2f}x)"
            for k, n in peaks.items()
            if k != "plain"
        )
        + f" (a plain forward and backward: {peaks['plain'] / 2**20:.1f} MiB)"
    )
    print(
        f"  recompute / reverse product: {recompute / reverse:.2f}x the operations, "
        f"{ms[labels[5]] / ms[labels[3]]:.2f}x the time; recompute / forward product: "
        f"{recompute / forward:.2f}x the operations, {ms[labels[5]] / ms[labels[4]]:.2f}x "
        "the time"
    )
    print(
        "  reverse product / pytorch's (the same double backward, grouped convolutions one "
        f"call a term): {ms[labels[3]] / ms[labels[6]]:.2f}x the time"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ticks", type=int, default=3)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu (peak resident growth, and live tensors from the profiler) or cuda "
        "(torch.cuda.max_memory_allocated over what was allocated before the first tick)",
    )
    parser.add_argument("--only", nargs="+", choices=CONFIGS, default=CONFIGS)
    parser.add_argument(
        "--network",
        choices=["darts", "lease"],
        default="darts",
        help="the DARTS search, or LeaSE's four levels on the same supernet",
    )
    parser.add_argument(
        "--graph-sizes",
        action="store_true",
        help="print the live-tensor peaks of a plain step and a cg(5) tick, the graph "
        "an exact product keeps, and one product's operations, time and memory in each "
        "exact mode",
    )
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.graph_sizes:
        graph_sizes(args)
        return
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda needs a GPU, and torch sees none")
    if BETTY & set(args.only):
        if args.network == "lease":
            parser.error(
                "the betty-* configurations run the DARTS search; leave out --network lease"
            )
        if args.layers < 3:
            parser.error(
                "the betty-* configurations need --layers 3 or more: with fewer cells some "
                "architecture weights are unused, and Betty's hypergradients refuse that"
            )
        if importlib.util.find_spec("betty") is None:
            print("betty-ml is not installed (the dev extra): its rows are left out")
            args.only = [c for c in args.only if c not in BETTY]
    keys = ("ticks", "layers", "channels", "batch", "size", "network", "device")
    passed = [f"--{k}={getattr(args, k)}" for k in keys]
    what = "DARTS" if args.network == "darts" else "LeaSE (4 levels) on a"
    print(
        f"{what} supernet {args.layers} cells x {args.channels} channels, batch {args.batch}, "
        f"{args.size}x{args.size} images, {args.ticks} ticks, {args.device}, 1 thread, "
        f"torch {torch.__version__}; {args.rounds} rounds of fresh processes"
    )
    found: dict[str, list[dict]] = {c: [] for c in args.only}
    for _ in range(args.rounds):
        for config in args.only:
            done = subprocess.run(
                [sys.executable, __file__, "--child", config, *passed],
                capture_output=True,
                text=True,
                check=True,
                cwd=Path(__file__).resolve().parents[1],
            )
            found[config].append(json.loads(done.stdout.strip().splitlines()[-1]))
    peak, live, ms = (
        {c: statistics.median(r[key] for r in runs) for c, runs in found.items()}
        for key in ("peak", "live", "ms")
    )
    base = "plain" if "plain" in peak else None
    kind = "allocated" if args.device.startswith("cuda") else "resident"
    print(f"peak: {kind} growth; live: tensors alive at once (the profiler), one more tick")
    print("config           peak MiB   ms/tick   peak / plain   live / plain   time / plain")
    for c in args.only:
        ratio = f"{peak[c] / peak[base]:.2f}" if base else "-"
        alive = f"{live[c] / live[base]:.2f}" if base else "-"
        slower = f"{ms[c] / ms[base]:.2f}" if base else "-"
        print(
            f"{c:15s}  {peak[c] / 2**20:8.1f}  {ms[c]:8.1f}  {ratio:>13}  {alive:>13}  {slower:>13}"
        )


if __name__ == "__main__":
    main()
