"""The level graph: which problem is upper of which, validated as a DAG."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from .errors import GraphError


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
        self.order = self._topological_order()
        if len(self.names) > 1:
            for name in self.names:
                if not self.children[name] and not self.parents[name]:
                    raise GraphError(
                        f"problem {name!r} is not connected to any other problem; add it to "
                        "dependencies or leave it out of problems"
                    )
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
        """Kahn's algorithm; ties keep the order in which the problems were given."""
        import heapq

        index = {n: i for i, n in enumerate(self.names)}
        indegree = {n: len(self.parents[n]) for n in self.names}
        ready = [index[n] for n in self.names if indegree[n] == 0]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            node = self.names[heapq.heappop(ready)]
            order.append(node)
            for child in self.children[node]:
                indegree[child] -= 1
                if indegree[child] == 0:
                    heapq.heappush(ready, index[child])
        if len(order) < len(self.names):
            cycle = self._find_cycle({n for n in self.names if indegree[n] > 0})
            raise GraphError(
                "the dependencies contain a cycle: "
                + " → ".join(cycle)
                + "; a level graph must be acyclic (remove one of these edges)"
            )
        return order

    def _find_cycle(self, candidates: set[str]) -> list[str]:
        # Every node left by Kahn's algorithm has a parent that is also left: walk parents
        # until a node repeats, then report that loop in the upper → lower direction.
        node = min(candidates, key=self.names.index)
        path: list[str] = []
        while node not in path:
            path.append(node)
            node = next(p for p in self.parents[node] if p in candidates)
        loop = path[path.index(node) :]
        loop.reverse()
        start = min(range(len(loop)), key=lambda i: self.names.index(loop[i]))
        loop = loop[start:] + loop[:start]
        return [*loop, loop[0]]

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
