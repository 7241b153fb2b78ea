"""A linear-chain conditional random field over per-token emission scores: any token head can train its tag
sequence jointly (negative log-likelihood of the whole gold sequence) and decode it with Viterbi.

Hard constraints (e.g. BIO: no I-X after O) are given as ``allowed[prev, cur]`` / ``start_allowed[cur]`` masks:
forbidden moves get a large negative score that no learned transition can outweigh, in training and decoding.
Sequences are left-aligned: ``mask[b, t]`` is True for the first ``length_b`` positions.
"""
from __future__ import annotations

import torch
from torch import nn

FORBIDDEN = -1e4


class LinearChainCRF(nn.Module):
    """Learned start / transition / end scores over ``n_tags`` tags.

    Args:
        n_tags: number of tags.
        allowed: optional [n_tags, n_tags] bool, allowed[prev, cur]; default everything allowed.
        start_allowed: optional [n_tags] bool, tags a sequence may start with.
    """

    def __init__(self, n_tags: int, allowed: torch.Tensor | None = None, start_allowed: torch.Tensor | None = None):
        super().__init__()
        self.n_tags = n_tags
        self.transitions = nn.Parameter(torch.zeros(n_tags, n_tags))
        self.start = nn.Parameter(torch.zeros(n_tags))
        self.end = nn.Parameter(torch.zeros(n_tags))
        # buffers, not parameters: the constraints are part of the model's definition, saved with its weights
        self.register_buffer("trans_penalty", torch.zeros(n_tags, n_tags))
        self.register_buffer("start_penalty", torch.zeros(n_tags))
        self.set_constraints(allowed, start_allowed)

    def set_constraints(self, allowed: torch.Tensor | None = None, start_allowed: torch.Tensor | None = None) -> None:
        """(Re)set the hard constraints; None allows everything."""
        n = self.n_tags
        allowed = torch.ones(n, n, dtype=torch.bool) if allowed is None else allowed.bool()
        start_allowed = torch.ones(n, dtype=torch.bool) if start_allowed is None else start_allowed.bool()
        if allowed.shape != (n, n) or start_allowed.shape != (n,):
            raise ValueError(f"constraint masks must be [{n}, {n}] and [{n}]")
        with torch.no_grad():
            self.trans_penalty.copy_(torch.where(allowed, 0.0, FORBIDDEN))
            self.start_penalty.copy_(torch.where(start_allowed, 0.0, FORBIDDEN))

    def _scores(self):
        return self.start + self.start_penalty, self.transitions + self.trans_penalty, self.end

    def log_likelihood(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log p(tags | emissions) per sequence: emissions [B, T, n], tags [B, T] (any value where masked),
        mask [B, T] bool (left-aligned). Sequences of length 0 get 0."""
        emissions = emissions.float()
        B, T, _ = emissions.shape
        mask = mask.bool()
        tags = torch.where(mask, tags, torch.zeros_like(tags)).long()
        start, trans, end = self._scores()
        lengths = mask.sum(1)
        # score of the gold path
        idx = torch.arange(B, device=emissions.device)
        emit = emissions.gather(2, tags.unsqueeze(-1)).squeeze(-1) * mask
        gold = start[tags[:, 0]] + emit.sum(1)
        if T > 1:
            step = trans[tags[:, :-1], tags[:, 1:]] * mask[:, 1:]
            gold = gold + step.sum(1)
        last = tags[idx, (lengths - 1).clamp(min=0)]
        gold = gold + end[last]
        # log partition by the forward algorithm; masked steps carry alpha over unchanged
        alpha = start + emissions[:, 0]
        for t in range(1, T):
            nxt = torch.logsumexp(alpha.unsqueeze(2) + trans.unsqueeze(0), 1) + emissions[:, t]
            alpha = torch.where(mask[:, t:t + 1], nxt, alpha)
        log_z = torch.logsumexp(alpha + end, 1)
        return torch.where(lengths > 0, gold - log_z, torch.zeros_like(gold))

    def nll(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood per token (comparable in scale to a per-token cross-entropy)."""
        mask = mask.bool()
        return -self.log_likelihood(emissions, tags, mask).sum() / mask.sum().clamp(min=1)

    @torch.no_grad()
    def decode(self, emissions: torch.Tensor, lengths: list[int]) -> list[list[int]]:
        """The highest-scoring tag sequence of each item (Viterbi), as lists of tag indices of its length."""
        emissions = emissions.float()
        start, trans, end = self._scores()
        out = []
        for b, n in enumerate(lengths):
            if n == 0:
                out.append([])
                continue
            score = start + emissions[b, 0]
            back = []
            for t in range(1, n):
                best, arg = (score.unsqueeze(1) + trans).max(0)
                back.append(arg)
                score = best + emissions[b, t]
            seq = [int((score + end).argmax())]
            for arg in reversed(back):
                seq.append(int(arg[seq[-1]]))
            out.append(seq[::-1])
        return out
