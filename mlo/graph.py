"""The level graph: which problem is upper of which, validated as a DAG."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


class GraphError(ValueError):
    """The problems or dependencies do not form a valid level graph."""


class LevelGraph:
    """A DAG over problem names. An edge ``U → L`` means U is upper of L."""

    def __init__(self, names: Sequence[str], edges: Iterable[tuple[str, str]]) -> None:
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise GraphError(
                    f"two problems are named {name!r}; every problem needs a unique name"
                )
            seen.add(name)
        self.names = list(names)
        self.children: dict[str, list[str]] = {n: [] for n in names}
        self.parents: dict[str, list[str]] = {n: [] for n in names}
        for upper, lower in edges:
            for end in (upper, lower):
                if end not in seen:
                    raise GraphError(
                        f"dependencies name {end!r}, which is not one of the problems "
                        f"({', '.join(self.names)}); pass it in problems=[...] or fix the name"
                    )
            if upper == lower:
                raise GraphError(f"problem {upper!r} is listed as its own lower level")
            if lower in self.children[upper]:
                continue
            self.children[upper].append(lower)
            self.parents[lower].append(upper)
        if len(self.names) > 1:
            for name in self.names:
                if not self.children[name] and not self.parents[name]:
                    raise GraphError(
                        f"problem {name!r} is not connected to any other problem; add it to "
                        "dependencies or leave it out of problems"
                    )
        self.order = self._topological_order()
        self._rank = {n: i for i, n in enumerate(self.order)}
        for name in self.names:
            self.children[name].sort(key=self._rank.__getitem__)
            self.parents[name].sort(key=self._rank.__getitem__)
        self.roots = [n for n in self.order if not self.parents[n]]

    @classmethod
    def from_dependencies(
        cls, names: Sequence[str], dependencies: Mapping[str, Sequence[str]]
    ) -> LevelGraph:
        edges = []
        for upper, lowers in dependencies.items():
            if isinstance(lowers, str):
                lowers = [lowers]
            edges.extend((upper, lower) for lower in lowers)
        return cls(names, edges)

    def _topological_order(self) -> list[str]:
        # Depth-first search, so that a cycle can be reported as a path.
        state: dict[str, int] = {}  # 1 = on the stack, 2 = done
        order: list[str] = []
        stack: list[str] = []

        def visit(node: str) -> None:
            state[node] = 1
            stack.append(node)
            for child in self.children[node]:
                if state.get(child) == 1:
                    cycle = [*stack[stack.index(child) :], child]
                    raise GraphError(
                        "the dependencies contain a cycle: "
                        + " → ".join(cycle)
                        + "; a level graph must be acyclic (remove one of these edges)"
                    )
                if child not in state:
                    visit(child)
            stack.pop()
            state[node] = 2
            order.append(node)

        for name in self.names:
            if name not in state:
                visit(name)
        order.reverse()
        return order

    def descendants(self, name: str) -> list[str]:
        """All levels below ``name``, in topological order (uppers first)."""
        found: set[str] = set()
        frontier = [name]
        while frontier:
            for child in self.children[frontier.pop()]:
                if child not in found:
                    found.add(child)
                    frontier.append(child)
        return sorted(found, key=self._rank.__getitem__)

    def edges(self) -> list[tuple[str, str]]:
        return [(u, lo) for u in self.order for lo in self.children[u]]
