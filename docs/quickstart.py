"""The home page's example: tune ridge regression's penalty by its
hypergradient, on scikit-learn's diabetes data (442 real patients, shipped
with the package)."""

import torch
import torch.nn.functional as F
from sklearn.datasets import load_diabetes
from torch import nn

import mlo

data = load_diabetes(return_X_y=True)
x, y = (torch.tensor(a, dtype=torch.float64) for a in data)
y = (y - y.mean()) / y.std()
train = [(x[:300], y[:300])]  # one full batch each
val = [(x[300:], y[300:])]


class Fit(mlo.Problem):
    """Lower level: w*(λ) = argmin ‖Xw − y‖²/n + e^λ‖w‖²."""

    def training_step(self, batch):
        inputs, targets = batch
        lam = self.penalty.module.log_lam.exp()
        penalty = lam * self.module.weight.pow(2).sum()
        error = F.mse_loss(self.module(inputs).squeeze(1), targets)
        return error + penalty


class Penalty(mlo.Problem):
    """Upper level: min over λ of the validation error of w*(λ)."""

    def training_step(self, batch):
        inputs, targets = batch
        return F.mse_loss(self.fit.module(inputs).squeeze(1), targets)


torch.manual_seed(0)
model = nn.Linear(10, 1).double()
start = torch.tensor(-2.0, dtype=torch.float64)
log_lam = nn.ParameterDict({"log_lam": nn.Parameter(start)})
fit = Fit(
    "fit",
    model,
    torch.optim.SGD(model.parameters(), lr=0.5),
    data=train,
    config=mlo.ProblemConfig(solver="cg", unroll_steps=50),
)
penalty = Penalty(
    "penalty",
    log_lam,
    torch.optim.Adam(log_lam.parameters(), lr=0.1),
    data=val,
)
engine = mlo.Engine(
    [penalty, fit],
    {"penalty": ["fit"]},
    mlo.EngineConfig(progress=False),
)
engine.describe()
for tick in range(1, 31):
    engine.step()
    if tick % 10 == 0:
        losses = engine.losses()
        lam = log_lam["log_lam"].exp().item()
        mse = losses["penalty"]
        print(f"tick {tick}: validation MSE {mse:.4f}, λ = {lam:.4f}")
