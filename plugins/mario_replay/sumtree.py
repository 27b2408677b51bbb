"""A sum tree: O(log n) priority updates and proportional sampling."""

from __future__ import annotations

import numpy as np


class SumTree:
    """Leaves hold priorities; each inner node holds the sum of its children.

    Stored as one array of ``2 * size`` where node ``i`` has children ``2i`` and
    ``2i + 1`` and the leaves start at ``size`` (a power of two >= capacity).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.size = 1 << (capacity - 1).bit_length()
        self.nodes = np.zeros(2 * self.size, dtype=np.float64)

    @property
    def total(self) -> float:
        return float(self.nodes[1])

    def __getitem__(self, index: np.ndarray | int) -> np.ndarray:
        return self.nodes[np.asarray(index) + self.size]

    def update(self, indices: np.ndarray, priorities: np.ndarray) -> None:
        indices = np.asarray(indices, dtype=np.int64)
        priorities = np.asarray(priorities, dtype=np.float64)
        if np.any(priorities < 0) or not np.all(np.isfinite(priorities)):
            raise ValueError("priorities must be finite and >= 0")
        if np.any((indices < 0) | (indices >= self.capacity)):
            raise IndexError("index out of the tree's capacity")
        # Last write wins for repeated indices, as with sequential updates.
        nodes = indices + self.size
        self.nodes[nodes] = priorities
        parents = np.unique(nodes // 2)
        while parents[0] >= 1:
            self.nodes[parents] = self.nodes[2 * parents] + self.nodes[2 * parents + 1]
            if parents[0] == 1:
                break
            parents = np.unique(parents // 2)

    def find(self, values: np.ndarray) -> np.ndarray:
        """Leaf index for each cumulative value in ``[0, total)``."""
        values = np.asarray(values, dtype=np.float64).copy()
        nodes = np.ones(len(values), dtype=np.int64)
        while nodes[0] < self.size:
            left = 2 * nodes
            go_right = values >= self.nodes[left]
            values -= np.where(go_right, self.nodes[left], 0.0)
            nodes = np.where(go_right, left + 1, left)
        return np.minimum(nodes - self.size, self.capacity - 1)

    def sample(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """Stratified proportional sampling: one draw in each of ``batch_size`` equal slices."""
        if self.total <= 0:
            raise ValueError("cannot sample from an empty tree")
        bounds = np.linspace(0.0, self.total, batch_size + 1)
        values = rng.uniform(bounds[:-1], bounds[1:])
        return self.find(np.minimum(values, np.nextafter(self.total, 0)))
