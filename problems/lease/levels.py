"""The four levels of LeaSE on the mlo engine.

    explainer:  W*(A)      = argmin_W  CE(f(x; A, W), y)                       x ∈ D_tr
    explain:    E*(A, W*)  = the explainer's explanations of its predictions on the
                             audience's examples (``explanations.py``)
    audience:   V*(E)      = argmin_V  CE(g(x; V), y) + γ · CE(g(x ⊙ E; V), y)  the same x
    relearn:    min_A  CE(g(x; V*), y) + λ · CE(f(x; A, W*), y)                 x ∈ D_val

``f`` is the DARTS supernet with architecture ``A`` and weights ``W``; ``g`` the audience's
fixed network with weights ``V``. Edges: relearn → explainer, relearn → explain,
explainer → explain, explain → audience.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from problems.nas.search import ImageLevel, cross_entropy

from .explanations import ExplanationConfig, explanation_mask, random_start


class Explanations(nn.Module):
    """``E``: one explanation mask per example of the audience's current batch."""

    def __init__(self, batch_size: int, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.mask = nn.Parameter(torch.zeros(batch_size, *image_shape))


class Explainer(ImageLevel):
    r"""``W``: the supernet's weights, trained on search-train.

    With ``adversarial`` set (the ``lease-author`` preset) it trains on \(x + \delta\), \(\delta\)
    the explanation method's perturbation of its own batch at the current weights, held
    constant (sign steps have derivative zero), as in the authors' public code.
    """

    adversarial: ExplanationConfig | None = None
    pixel_std: Tensor = torch.ones(3)

    def training_step(self, batch):
        x, y = self.images(batch)
        weights = self.relearn.module.normalized()
        if self.adversarial is not None:
            x = x + self._perturbation(x, y, weights)
        with self.autocast():
            logits = self.module(x, weights)
        return cross_entropy(logits, y)

    def _perturbation(self, x: Tensor, y: Tensor, weights) -> Tensor:
        def forward(inputs: Tensor) -> Tensor:
            with self.autocast():
                return self.module(inputs, weights)

        start = torch.zeros_like(x)
        with torch.no_grad():
            return explanation_mask(forward, x, y, start, self.adversarial, self.pixel_std)


class Explain(ImageLevel):
    """``E``: explanations of the explainer on the audience's examples (explicit level).

    ``best_response`` runs the explanation method; the ``explicit`` solver differentiates
    through it. The random start of PGD is drawn from a generator seeded by this level's
    data position, so an update and every later recomputation for the same batch (and a
    resumed run) use the same start.
    """

    explanation: ExplanationConfig = ExplanationConfig()
    pixel_std: Tensor = torch.ones(3)
    seed: int = 0

    def forward_fn(self):
        weights = self.relearn.module.normalized()
        supernet = self.explainer.module

        def forward(inputs: Tensor) -> Tensor:
            with self.autocast():
                return supernet(inputs, weights)

        return forward

    def best_response(self, batch) -> list[Tensor]:
        x, y = self.images(batch)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.stream.position)
        start = random_start(
            x.shape, self.explanation, self.pixel_std, generator, x.device, x.dtype
        )
        mask = explanation_mask(self.forward_fn(), x, y, start, self.explanation, self.pixel_std)
        return [mask.to(self.module.mask.dtype)]

    def training_step(self, batch):
        r"""A diagnostic: the explainer's loss on its own explained inputs \(x \odot E\)."""
        x, y = self.images(batch)
        return cross_entropy(self.forward_fn()(x * self.module.mask), y)


class Audience(ImageLevel):
    """``V``: the audience network, on its examples and on their explanations."""

    gamma: float = 1.0

    def training_step(self, batch):
        x, y = self.images(batch)
        explained = x * self.explain.module.mask
        with self.autocast():
            plain = self.module(x)
            taught = self.module(explained)
        return cross_entropy(plain, y) + self.gamma * cross_entropy(taught, y)


class Relearn(ImageLevel):
    """``A``: the architecture, on search-validation, by the audience's and explainer's loss.

    ``fixed_audience``, when set, is an audience network that is never trained (the
    ``lease-author`` preset), read in place of the ``audience`` level.
    """

    lam: float = 1.0
    fixed_audience: nn.Module | None = None

    def training_step(self, batch):
        x, y = self.images(batch)
        audience_net = (
            self.fixed_audience if self.fixed_audience is not None else self.audience.module
        )
        with self.autocast():
            audience = audience_net(x)
            explainer = self.explainer.module(x, self.module.normalized())
        return cross_entropy(audience, y) + self.lam * cross_entropy(explainer, y)
