"""The linear-chain CRF against brute-force enumeration of every tag sequence on tiny cases."""
import itertools

import torch

from mmapps.crf import LinearChainCRF


def _crf(n=3, allowed=None, start_allowed=None, seed=0):
    torch.manual_seed(seed)
    crf = LinearChainCRF(n, allowed, start_allowed)
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_()
    return crf


def _path_score(crf, em, path):
    start, trans, end = crf._scores()
    s = start[path[0]] + end[path[-1]] + sum(em[t, k] for t, k in enumerate(path))
    return s + sum(trans[a, b] for a, b in zip(path, path[1:]))


def test_log_likelihood_matches_enumeration_with_padding():
    crf = _crf(3)
    em = torch.randn(2, 4, 3)
    tags = torch.tensor([[0, 2, 1, 1], [2, 1, 0, 0]])
    mask = torch.tensor([[True] * 4, [True, True, False, False]])  # second sequence has length 2
    ll = crf.log_likelihood(em, tags, mask)
    for b, n in enumerate([4, 2]):
        scores = torch.stack([_path_score(crf, em[b], p) for p in itertools.product(range(3), repeat=n)])
        expected = _path_score(crf, em[b], tags[b, :n].tolist()) - torch.logsumexp(scores, 0)
        assert torch.allclose(ll[b], expected, atol=1e-5)
    assert (ll < 0).all()


def test_viterbi_is_the_enumerated_argmax_and_respects_constraints():
    allowed = torch.ones(3, 3, dtype=torch.bool)
    allowed[0, 2] = False  # tag 2 may not follow tag 0 (like I-X after O)
    start_allowed = torch.tensor([True, True, False])
    crf = _crf(3, allowed, start_allowed, seed=3)
    em = torch.randn(1, 5, 3)
    em[0, :, 2] += 3.0  # emissions that want the forbidden tag everywhere
    best = crf.decode(em, [5])[0]
    paths = [p for p in itertools.product(range(3), repeat=5)]
    scores = torch.stack([_path_score(crf, em[0], p) for p in paths])
    assert tuple(best) == paths[int(scores.argmax())]
    assert best[0] != 2 and all(not (a == 0 and b == 2) for a, b in zip(best, best[1:]))


def test_training_learns_a_transition_the_emissions_do_not_show():
    # emissions are uninformative between tags 1 and 2; the data always has 2 after 1
    crf = LinearChainCRF(3)
    opt = torch.optim.Adam(crf.parameters(), lr=0.1)
    em = torch.zeros(8, 3, 3)
    em[:, 0, 1] = 5.0
    tags = torch.tensor([[1, 2, 2]] * 8)
    mask = torch.ones(8, 3, dtype=torch.bool)
    before = crf.nll(em, tags, mask).item()
    for _ in range(60):
        opt.zero_grad()
        loss = crf.nll(em, tags, mask)
        loss.backward()
        opt.step()
    assert loss.item() < before * 0.2
    assert crf.decode(em[:1], [3])[0] == [1, 2, 2]
    assert crf.decode(em[:1], [0]) == [[]]
