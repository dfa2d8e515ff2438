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
    """``W``: the supernet's weights, trained on search-train."""

    def training_step(self, batch):
        x, y = self.images(batch)
        with self.autocast():
            logits = self.module(x, self.relearn.module.normalized())
        return cross_entropy(logits, y)


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
        """A diagnostic: the explainer's loss on its own explained inputs ``x ⊙ E``."""
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
    """``A``: the architecture, on search-validation, by the audience's and explainer's loss."""

    lam: float = 1.0

    def training_step(self, batch):
        x, y = self.images(batch)
        with self.autocast():
            audience = self.audience.module(x)
            explainer = self.explainer.module(x, self.module.normalized())
        return cross_entropy(audience, y) + self.lam * cross_entropy(explainer, y)
