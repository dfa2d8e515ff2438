"""One LeaSE iteration through mlo, against the same math by hand, and against Betty.

Part 1 — mlo vs hand-written PyTorch (the default LeaSE: differentiable PGD explanations,
``darts`` on the explainer and the audience, ``explicit`` through the explanations). One
iteration = one engine tick: audience, explain, explainer, relearn updates. Reports the
median time (every version built in this process, rounds interleaved, and the medians of
the paired ratios), the peak memory of an iteration (each version in its own subprocess:
the most heap in use at any forward or backward pass of an iteration, above the heap in
use before it) and the number of forward and backward passes per iteration.

Part 2 — mlo vs the four levels wired as in Betty's saliency-aware NAS example: the
explanations are computed inside the audience's ``training_step`` and ``darts`` is used
on both inner levels, so Betty recomputes the PGD explanations at every finite-difference
evaluation. Both use sign-PGD explanations and the same solvers. ``betty`` has the SANAS
example's dependencies (explainer → audience included), ``betty-light`` drops that edge.

Every time is also given in plain explainer training steps (``plain``), the unit the
issue's estimate for Betty (about 40) is stated in.

    python benchmarks/lease_step.py [--rounds 5] [--pgd-steps 7]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

import mlo
from problems.lease import AudienceHyper, ExplanationConfig, LeaseHyper, ResNet, build
from problems.lease.explanations import explanation_mask, random_start
from problems.nas import ArchitectureWeights, SearchHyper, Supernet

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import betty_problem, quiet_betty, random_batches

BATCH, SIZE, CLASSES = 8, 16, 10
STD = torch.full((3,), 0.25)


def batches(n: int, seed: int):
    return random_batches(n, BATCH, SIZE, torch.Generator().manual_seed(seed), CLASSES)


DATA = {"explainer": batches(4, 1), "audience": batches(4, 2), "relearn": batches(4, 3)}


def models(args):
    torch.manual_seed(0)
    supernet = Supernet(CLASSES, args.layers, args.channels)
    arch = ArchitectureWeights()
    audience = ResNet(args.audience, CLASSES)
    return supernet, arch, audience


def lease_hyper(args, differentiable: bool) -> LeaseHyper:
    return LeaseHyper(
        explanation=ExplanationConfig(steps=args.pgd_steps, differentiable=differentiable),
        audience=AudienceHyper(arch=args.audience),
    )


# --------------------------------------------------------------------------- mlo


def mlo_version(args, differentiable: bool = True):
    supernet, arch, audience = models(args)
    problems, deps = build(
        supernet,
        arch,
        DATA["explainer"],
        DATA["audience"],
        DATA["relearn"],
        num_classes=CLASSES,
        batch_size=BATCH,
        total_updates=10_000,
        image_shape=(3, SIZE, SIZE),
        pixel_std=STD,
        hyper=lease_hyper(args, differentiable),
        audience=audience,
        seed=0,
    )
    engine = mlo.Engine(problems, deps, mlo.EngineConfig(progress=False))
    return engine.step, arch


# --------------------------------------------------------------------------- by hand


class Cycle:
    def __init__(self, data):
        self.data, self.position = data, 0

    def next(self):
        batch = self.data[self.position % len(self.data)]
        self.position += 1
        return batch


def hand_version(args):
    """The default LeaSE iteration written out in plain PyTorch."""
    supernet, arch, audience = models(args)
    search, hyper = SearchHyper(), lease_hyper(args, True)
    w_params, v_params, a_params = (list(m.parameters()) for m in (supernet, audience, arch))
    w_opt, w_sched = search.weight_optimizer(w_params, 10_000)
    a = hyper.audience
    v_opt, v_sched = a.optimizer(v_params, 10_000)
    a_opt = search.arch_optimizer(a_params)
    streams = {k: Cycle(v) for k, v in DATA.items()}
    state = {
        "mask": torch.zeros(BATCH, 3, SIZE, SIZE),
        "explain_batch": None,
        "explainer_batch": None,
    }

    def explainer_loss(x, y):
        return F.cross_entropy(supernet(x, arch.normalized()), y)

    def audience_loss(x, y, mask):
        return F.cross_entropy(audience(x), y) + hyper.gamma * F.cross_entropy(
            audience(x * mask), y
        )

    def explanation(x, y):
        gen = torch.Generator().manual_seed(streams["audience"].position)
        start = random_start(x.shape, hyper.explanation, STD, gen, x.device, x.dtype)
        forward = lambda inputs: supernet(inputs, arch.normalized())  # noqa: E731
        return explanation_mask(forward, x, y, start, hyper.explanation, STD)

    def sgd(params, grads, opt, sched, clip):
        for p, g in zip(params, grads):
            p.grad = g
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()

    def finite_difference(params, v, loss_fn, wrt, xi):
        """−ξ [∇_wrt loss(θ + r v) − ∇_wrt loss(θ − r v)] / 2r, perturbing in place."""
        r = 0.01 / torch.linalg.vector_norm(torch.stack(torch._foreach_norm(v)))
        with torch.no_grad():
            torch._foreach_add_(params, torch._foreach_mul(v, r))
        plus = torch.autograd.grad(loss_fn(), wrt, allow_unused=True, materialize_grads=True)
        with torch.no_grad():
            torch._foreach_add_(params, torch._foreach_mul(v, -2 * r))
        minus = torch.autograd.grad(loss_fn(), wrt, allow_unused=True, materialize_grads=True)
        with torch.no_grad():
            torch._foreach_add_(params, torch._foreach_mul(v, r))
        return [-xi * (p - m) / (2 * r) for p, m in zip(plus, minus)]

    def step():
        if state["explain_batch"] is None:  # the audience's first batch is explain's next
            state["explain_batch"] = DATA["audience"][0]
        # audience
        x, y = state["explain_batch"]
        sgd(
            v_params,
            torch.autograd.grad(audience_loss(x, y, state["mask"]), v_params),
            v_opt,
            v_sched,
            a.grad_clip,
        )
        # explain
        x, y = state["explain_batch"] = streams["audience"].next()
        with torch.no_grad():
            state["mask"] = explanation(x, y).detach()
        # explainer (its objective reads neither E nor V: a plain step)
        x, y = state["explainer_batch"] = streams["explainer"].next()
        sgd(
            w_params,
            torch.autograd.grad(explainer_loss(x, y), w_params),
            w_opt,
            w_sched,
            search.grad_clip,
        )
        # relearn: adjoint propagation written out
        xv, yv = streams["relearn"].next()
        f = F.cross_entropy(audience(xv), yv) + hyper.lam * explainer_loss(xv, yv)
        grads = torch.autograd.grad(f, [*a_params, *w_params, *v_params])
        adj_a = list(grads[: len(a_params)])
        adj_w = list(grads[len(a_params) : len(a_params) + len(w_params)])
        adj_v = list(grads[len(a_params) + len(w_params) :])
        xe, ye = state["explain_batch"]
        mask = state["mask"].clone().requires_grad_(True)
        (adj_e,) = finite_difference(
            v_params,
            adj_v,
            lambda: audience_loss(xe, ye, mask),
            [mask],
            v_opt.param_groups[0]["lr"],
        )
        response = explanation(xe, ye)  # with a graph: differentiable PGD
        through = torch.autograd.grad(
            response,
            [*a_params, *w_params],
            grad_outputs=adj_e,
            allow_unused=True,
            materialize_grads=True,
        )
        adj_a = [g + t for g, t in zip(adj_a, through[: len(a_params)])]
        adj_w = [g + t for g, t in zip(adj_w, through[len(a_params) :])]
        xt, yt = state["explainer_batch"]
        implicit = finite_difference(
            w_params, adj_w, lambda: explainer_loss(xt, yt), a_params, w_opt.param_groups[0]["lr"]
        )
        for p, g, i in zip(a_params, adj_a, implicit):
            p.grad = g + i
        a_opt.step()
        a_opt.zero_grad(set_to_none=True)

    return step, arch


def plain_version(args):
    """One plain training step of the explainer: the unit the iterations are counted in."""
    supernet, arch, _ = models(args)
    params = list(supernet.parameters())
    w_opt, w_sched = SearchHyper().weight_optimizer(params, 10_000)
    stream = Cycle(DATA["explainer"])

    def step():
        x, y = stream.next()
        with torch.no_grad():
            weights = arch.normalized()
        loss = F.cross_entropy(supernet(x, weights), y)
        for p, g in zip(params, torch.autograd.grad(loss, params)):
            p.grad = g
        w_opt.step()
        w_opt.zero_grad(set_to_none=True)
        w_sched.step()

    return step, arch


# --------------------------------------------------------------------------- Betty


def betty_version(args, explainer_to_audience: bool = True):
    """Betty's wiring: explanations inside the audience's training_step, darts below.

    The dependencies are those of Betty's SANAS example (``examples/SANAS``):
    ``u2l = {relearn: [audience, explainer]}``, ``l2u = {explainer: [audience, relearn],
    audience: [relearn]}``. The edge explainer → audience says what LeaSE's graph says
    too (the explanations, so the audience's best response, depend on W); Betty then
    propagates along the path relearn → audience → explainer → relearn as well, and every
    finite difference through the audience recomputes the PGD explanations.
    ``explainer_to_audience=False`` drops that edge (a lighter wiring, also reported).
    """
    try:
        import betty.hypergradient as betty_hypergradient
        from betty.configs import Config, EngineConfig
        from betty.engine import Engine
        from betty.problems import ImplicitProblem
    except ImportError:
        return None
    quiet_betty()
    original_darts = betty_hypergradient.darts

    def darts_guarded(vector, curr, prev):
        # Betty 0.1.1's darts divides by the vector's norm. On the explainer → audience
        # path that vector is exactly zero with sign-PGD (W reaches the audience only
        # through a zero derivative) and the division writes NaN into W. A vector of
        # 1e-12s (whose squares stay above float32's smallest normal) keeps both
        # finite-difference evaluations, so the cost, and returns ~1e-12 instead of 0.
        if not torch.stack(torch._foreach_norm(vector)).any():
            vector = [torch.full_like(v, 1e-12) for v in vector]
        return original_darts(vector, curr, prev)

    betty_hypergradient.jvp_fn_mapping["darts"] = darts_guarded
    supernet, arch, audience = models(args)
    search, hyper = SearchHyper(), lease_hyper(args, False)
    explain_position = [0]

    class BExplainer(ImplicitProblem):
        def training_step(self, batch):
            x, y = batch
            return F.cross_entropy(self.module(x, self.relearn.module.normalized()), y)

    class BAudience(ImplicitProblem):
        def training_step(self, batch):
            x, y = batch
            weights = self.relearn.module.normalized()
            gen = torch.Generator().manual_seed(explain_position[0])
            start = random_start(x.shape, hyper.explanation, STD, gen, x.device, x.dtype)
            mask = explanation_mask(
                lambda i: supernet(i, weights), x, y, start, hyper.explanation, STD
            )
            loss = F.cross_entropy(self.module(x), y) + hyper.gamma * F.cross_entropy(
                self.module(x * mask), y
            )
            # Betty differentiates the audience's loss w.r.t. A (and W, on the path through
            # the explainer) and fails on an unused input; both enter the sign-PGD
            # explanations only through a zero derivative.
            unused = 0.0 * weights.normal.sum() + 0.0 * weights.reduce.sum()
            if explainer_to_audience:
                unused = unused + 0.0 * sum(p.sum() for p in supernet.parameters())
            return loss + unused

    class BRelearn(ImplicitProblem):
        def training_step(self, batch):
            x, y = batch
            explainer = self.explainer.module(x, self.module.normalized())
            return F.cross_entropy(self.audience.module(x), y) + hyper.lam * F.cross_entropy(
                explainer, y
            )

    a = hyper.audience
    w_opt, _ = search.weight_optimizer(supernet.parameters(), 10_000)
    v_opt, _ = a.optimizer(audience.parameters(), 10_000)
    a_opt = search.arch_optimizer(arch.parameters())
    explainer = betty_problem(
        BExplainer,
        "explainer",
        Config(type="darts", darts_alpha=0.01, gradient_clipping=search.grad_clip),
        supernet,
        w_opt,
        DATA["explainer"],
    )
    audience_problem = betty_problem(
        BAudience,
        "audience",
        Config(type="darts", darts_alpha=0.01, gradient_clipping=a.grad_clip),
        audience,
        v_opt,
        DATA["audience"],
    )
    relearn = betty_problem(
        BRelearn,
        "relearn",
        Config(first_order=True, retain_graph=True),
        arch,
        a_opt,
        DATA["relearn"],
    )
    engine = Engine(
        [relearn, explainer, audience_problem],
        config=EngineConfig(train_iters=1),
        dependencies={
            "u2l": {relearn: [audience_problem, explainer]},
            "l2u": {
                explainer: [audience_problem, relearn] if explainer_to_audience else [relearn],
                audience_problem: [relearn],
            },
        },
    )

    def step():
        explain_position[0] += 1
        engine.global_step += 1
        engine.train_step()

    return step, arch


# --------------------------------------------------------------------------- measuring


def heap_bytes() -> int:
    """Bytes the C heap has handed out (glibc mallinfo2: arenas plus mmapped blocks),
    which is where PyTorch's CPU tensors live."""
    info = _mallinfo2()
    return info.uordblks + info.hblkhd


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo2() -> _MallInfo2:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    return libc.mallinfo2()


@contextmanager
def counting_passes(supernet_forward: list, audience_forward: list, backward: list, heap: list):
    """Count forward passes and autograd calls, and sample the heap around each of them
    (the peak of an iteration lies next to a forward or a backward pass)."""

    def on_forward(module, inputs, output):
        if isinstance(module, Supernet):
            supernet_forward.append(1)
        elif isinstance(module, ResNet):
            audience_forward.append(1)
        else:
            return
        heap.append(heap_bytes())

    hooks = [torch.nn.modules.module.register_module_forward_hook(on_forward)]
    original = torch.autograd.grad
    # mlo calls autograd's engine directly (mlo.autodiff.products.vjp), without torch.autograd.grad.
    engine_call = mlo.autodiff.products._engine_run_backward

    def counting(function):
        def counted(*a, **k):
            backward.append(1)
            heap.append(heap_bytes())
            out = function(*a, **k)
            heap.append(heap_bytes())
            return out

        return counted

    torch.autograd.grad = counting(original)
    mlo.autodiff.products._engine_run_backward = counting(engine_call)
    try:
        yield
    finally:
        torch.autograd.grad = original
        mlo.autodiff.products._engine_run_backward = engine_call
        for h in hooks:
            h.remove()


def footprint(factory, args) -> dict:
    """Peak heap and passes of one iteration, after a warm-up one (run in a process of
    its own; the times come from :func:`interleaved`)."""
    step, _ = factory(args)
    step()  # warm-up: optimizer states, lazy allocations
    supernet_f, audience_f, backward, heap = [], [], [], []
    gc.collect()
    base = heap_bytes()
    with counting_passes(supernet_f, audience_f, backward, heap):
        step()
    return {
        "peak_bytes": max(heap) - base,
        "supernet_forward": len(supernet_f),
        "audience_forward": len(audience_f),
        "backward": len(backward),
    }


VERSIONS = {
    "plain": plain_version,
    "mlo": lambda args: mlo_version(args, True),
    "hand": hand_version,
    "mlo-sign": lambda args: mlo_version(args, False),
    "betty": betty_version,
    "betty-light": lambda args: betty_version(args, explainer_to_audience=False),
}


def interleaved(args) -> dict[str, list[float]]:
    """Seconds per iteration of every available version, built in this process and timed
    in interleaved rounds (after one warm-up iteration each)."""
    steps = {}
    for name, factory in VERSIONS.items():
        built = factory(args)
        if built is not None:
            steps[name] = built[0]
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return times


def paired(times: dict[str, list[float]], a: str, b: str) -> float:
    """The median over rounds of ``a``'s time over ``b``'s."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def run_child(name: str, args) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        name,
        "--pgd-steps",
        str(args.pgd_steps),
        "--layers",
        str(args.layers),
        "--channels",
        str(args.channels),
        "--threads",
        str(args.threads),
        "--audience",
        args.audience,
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pgd-steps", type=int, default=7)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--audience", choices=["resnet18", "resnet_small", "resnet_tiny"], default="resnet_tiny"
    )
    parser.add_argument("--child", choices=list(VERSIONS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        if VERSIONS[args.child](args) is None:
            print(json.dumps(None))
            return
        print(json.dumps(footprint(VERSIONS[args.child], args)))
        return

    print(
        f"LeaSE iteration: supernet {args.layers} cells x {args.channels} channels, tiny "
        f"ResNet audience, batch {BATCH}, {SIZE}x{SIZE} images, {args.pgd_steps}-step PGD, "
        f"{args.rounds} rounds, {args.threads} threads, torch {torch.__version__}"
    )
    times = interleaved(args)
    results = {name: run_child(name, args) for name in VERSIONS}  # memory and passes
    unit = statistics.median(times["plain"])
    for name, r in results.items():
        if r is None:
            print(f"  {name:11s} not available (pip install betty-ml)")
            continue
        median = statistics.median(times[name])
        print(
            f"  {name:11s} median {1e3 * median:8.1f} ms ={median / unit:5.1f} plain"
            f" steps   peak +{r['peak_bytes'] / 2**20:6.1f} MiB   passes: supernet fwd "
            f"{r['supernet_forward']:3d}, audience fwd {r['audience_forward']:3d}, "
            f"autograd.grad {r['backward']:3d}"
        )
    mlo_r, hand = results["mlo"], results["hand"]
    ratio_hand = paired(times, "mlo", "hand")
    print(f"  time ratio   mlo / hand-written = {ratio_hand:.3f}  (target ≤ 1.05)")
    print(
        f"  memory ratio mlo / hand-written = "
        f"{mlo_r['peak_bytes'] / max(hand['peak_bytes'], 1):.3f}  (target ≤ 1.10)"
    )
    if results["betty"] is not None:
        ratio = paired(times, "mlo-sign", "betty")
        light = paired(times, "mlo-sign", "betty-light")
        print(
            f"  time ratio   mlo / Betty, SANAS wiring (sign-PGD, darts below) = {ratio:.3f}"
            "  (target ≤ 0.4)"
        )
        print(f"  time ratio   mlo / Betty, without the explainer → audience edge = {light:.3f}")


if __name__ == "__main__":
    main()
