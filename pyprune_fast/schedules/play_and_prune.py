"""Play and Prune (Singh et al., IJCAI 2019): prune as far as an accuracy tolerance allows.

Two players. AFP (adaptive filter pruning): in every group the `fraction` of channels with the
lowest L1 norm form the unimportant set U, and `penalty()` = lam * sum of |w| over U's producing
weights pushes them towards zero; channels of U whose norm (relative to the group's mean) falls
under the threshold tau are the candidates. PRC (pruning-rate controller), at the end of every epoch (epochs count from 0), with
`evaluate()` the user's validation accuracy (higher is better, the model in eval mode) and `drop`
its fall from the accuracy at construction:
- drop > tolerance: no pruning; lam is halved and the epoch fine-tunes.
- otherwise, with slack = tolerance - drop: the candidates are zeroed (their outputs become exact
  zeros), evaluated, and restored. If the zeroed model's drop is within the tolerance they are removed
  for real, which computes exactly what was evaluated, and tau and lam grow by (1 + slack / tolerance).
  If not, the lower-norm half of the candidates is tried, down to one channel; when even one channel
  cannot go, nothing more can, and pruning stops (`done`). With no candidates, tau grows as above.
So no pruned state is kept whose measured drop exceeds the tolerance. Groups whose dead channels
are not exact (`dead_channels_are_exact`: an op mixes them, as a LayerNorm or a mean across channels
does, or reads them where they are no longer zero) are left alone: zeroing would not be exact there.
"""

from __future__ import annotations

import numbers
from typing import Callable

import torch

from ..graph import dead_channels_are_exact, kill_channels, named_tensors, positions
from ..methods.base import channel_view, member_tensors
from ..plan import Plan
from .base import Schedule

__all__ = ["PlayAndPrune"]


class PlayAndPrune(Schedule):
    name = "PlayAndPrune"

    def __init__(self, model, example_inputs, evaluate: Callable[[], float], tolerance: float = 0.01,
                 lam: float = 1e-4, fraction: float = 0.1, tau: float = 0.5, ignored_layers=(), **graph):
        if not callable(evaluate):
            raise TypeError(f"PlayAndPrune: evaluate must be callable, got {type(evaluate).__name__}")
        for key, value, ok in (("tolerance", tolerance, lambda v: 0 < v < 1), ("lam", lam, lambda v: v >= 0),
                               ("fraction", fraction, lambda v: 0 < v < 1), ("tau", tau, lambda v: v > 0)):
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not ok(value):
                raise ValueError(f"PlayAndPrune: {key} out of range, got {value!r}")
        super().__init__(model, example_inputs, ignored_layers, **graph)
        self.evaluate, self.tolerance, self.lam, self.fraction, self.tau = evaluate, float(tolerance), float(lam), float(fraction), float(tau)
        self.baseline = float(evaluate())
        self.target = f"accuracy drop at most {self.tolerance:g} from {self.baseline:.4f}"
        self._refresh()

    # ---- AFP ----

    def _refresh(self) -> None:
        """The graph of the current model (after a change of shapes), its groups and their weights; then
        `_rescore`."""
        self.graph = self._graph()
        tensors = named_tensors(self.model)
        # channels go one by one: groups read in divisions (a grouped conv's) stay whole
        self.groups = [g for g in self.graph.prunable_groups if dead_channels_are_exact(self.graph, g) and g.divisions == 1]
        self.weights = [[m for m, _ in member_tensors(tensors, g, "producer", min_ndim=2)] for g in self.groups]
        self._rescore()

    def _rescore(self) -> None:
        """Each group's channel norms (relative to its mean) and U, from the current weights."""
        tensors = named_tensors(self.model)
        self.norms, self.unimportant = [], []
        for g, weights in zip(self.groups, self.weights):
            n = torch.zeros(g.channels, dtype=torch.float64)
            for m in weights:
                n += channel_view(tensors[m.name].detach(), m, g.channels).reshape(g.channels, -1).abs().sum(1).double().cpu()
            n /= n.mean().clamp_min(1e-12)
            self.norms.append(n)
            size = min(max(int(self.fraction * g.channels), 1), g.channels - 1)
            self.unimportant.append(torch.argsort(n, stable=True)[:size])

    def penalty(self) -> torch.Tensor:
        """lam * sum of |w| over the producing weights of every group's unimportant set U."""
        total = super().penalty()
        if self.done or self.lam == 0:
            return total
        tensors = named_tensors(self.model)
        for weights, u in zip(self.weights, self.unimportant):
            for m in weights:
                t = tensors[m.name]
                total = total + t.index_select(m.dim, positions(u, m.offset, m.block).to(t.device)).abs().sum()
        return self.lam * total

    # ---- PRC ----

    def _candidates(self) -> list[tuple[int, int, float]]:
        """(group position, channel, relative norm) of U's channels under tau, lowest norm first; each
        group keeps at least one channel."""
        out = []
        for i, (g, n, u) in enumerate(zip(self.groups, self.norms, self.unimportant)):
            chosen = [c for c in u.tolist() if n[c] < self.tau][: g.channels - 1]
            out += [(i, c, float(n[c])) for c in chosen]
        return sorted(out, key=lambda r: r[2])

    def _accuracy_zeroed(self, cands) -> float:
        """Accuracy with the candidates' outputs zeroed; the weights are restored after."""
        tensors = named_tensors(self.model)
        touched = {m.name for i, _, _ in cands for m in self.groups[i].members if m.role == "producer"}
        saved = {n: tensors[n].detach().clone() for n in touched}
        try:
            for i in sorted({i for i, _, _ in cands}):
                kill_channels(self.graph, self.groups[i], torch.tensor([c for j, c, _ in cands if j == i]))
            return float(self.evaluate())
        finally:
            with torch.no_grad():
                for n, t in saved.items():
                    tensors[n].copy_(t)

    def _step(self, epoch: int, optimizer) -> bool:
        if self.done:
            return False
        self._rescore()  # step() checked that the shapes, so the graph, are as _refresh left them
        slack = self.tolerance - (self.baseline - float(self.evaluate()))
        if slack < 0:
            self.lam *= 0.5
            self._record(epoch, f"drop over tolerance by {-slack:.4f}: fine-tuning", pruned=0)
            return False
        cands = self._candidates()
        if not cands:
            self.done = not self.groups  # every group down to one channel
            self.tau *= 1 + slack / self.tolerance
            return False
        while cands:
            accuracy = self._accuracy_zeroed(cands)
            if self.baseline - accuracy <= self.tolerance:
                grow = 1 + (self.tolerance - (self.baseline - accuracy)) / self.tolerance
                self.tau, self.lam = self.tau * grow, self.lam * grow
                plan = Plan(self.graph)
                for i in sorted({i for i, _, _ in cands}):
                    plan.remove(self.groups[i], [c for j, c, _ in cands if j == i])
                what = f"removed {len(cands)} channels, accuracy {accuracy:.4f}"
                self._apply_plan(epoch, optimizer, lambda: (plan, what, False))
                self.events[-1].update(accuracy=accuracy, pruned=len(cands))
                self._refresh()
                return True
            if len(cands) == 1:
                self.done = True  # not even the weakest channel can go within the tolerance
                self._record(epoch, "nothing more can be pruned within the tolerance", pruned=0)
                return False
            cands = cands[: len(cands) // 2]
        return False

    def state_dict(self) -> dict:
        return {**super().state_dict(), "baseline": self.baseline, "lam": self.lam, "tau": self.tau}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.baseline, self.lam, self.tau = state["baseline"], state["lam"], state["tau"]
        self._refresh()
