"""Betty 0.2's ``Env``: state that several problems share, such as the task a
meta-learning program samples each outer step. The engine gives it the device and the
problems (``self.<name>``) and calls ``initialize()``; the program calls its ``step()``
where it wants (typically in an engine's ``train_step`` override)."""

from __future__ import annotations

from typing import Any


class Env:
    """A shared environment (Betty 0.2.1's attributes)."""

    env: Any = None
    train_data_loader: Any = None
    device: Any = None
    _strategy: str | None = None
    _world_size: int | None = None
    _rank: int | None = None
    _local_rank: int | None = None

    def initialize(self) -> None:
        """Called once by the engine, after the device is set."""

    def step(self, *args: Any, **kwargs: Any) -> Any:
        """Advance the environment (the program defines it)."""
        raise NotImplementedError(f"{type(self).__name__} must implement step()")

    def configure_device(self, device: Any) -> None:
        """Set the device the problems compute on."""
        self.device = device
