"""The σ universality score of frozen features (docs/gessl.md, "σ as an evaluation score").

GeSSL (Wang et al., arXiv 2405.01053) measures universality as the gap between a model's
task-specific predictions and those of the task-optimal model. On an evaluation episode (N ways,
K shots, Q queries per class) over frozen features:

- p_few(·|x): the posterior (softmax of the logits) of the few-shot classifier built from the K
  shots — the classifier the suite reports accuracy for;
- p_opt(·|x): the posterior of the task-optimal model, a logistic regression (``tasks.evaluation.linear``)
  fit on every labelled example of the episode's N classes except its queries [choice];
- σ_task = mean over the queries x of KL(p_opt(·|x) ‖ p_few(·|x)).

Lower is more universal; σ = 0 when the few-shot classifier is the task-optimal one. The suite
reports mean ± 1.96·s/√n over episodes per axis, and the overall score as the mean of the axes.
"""
import numpy as np
import torch
import torch.nn.functional as F

from tasks.evaluation.fewshot import CLASSIFIERS, cached_episodes, class_codes
from tasks.evaluation.linear import LOGREG_C, fit_logreg


def sigma_scores(features, labels, ways=5, shots=1, queries=15, episodes=600, seed=0, classifier="proto",
                 c_reg=LOGREG_C, chunk=100, share=slice(None)):
    """σ_task of every episode ([episodes] numpy array), on the episodes ``evaluate_fewshot`` uses;
    of the ``share`` of them alone (a slice of range(episodes)) when given.

    The task-optimal models of ``chunk`` episodes are fitted in one L-BFGS run, so a σ depends on
    the episodes fitted with it within the solver's tolerance (``tasks.evaluation.linear.fit_logreg``).
    """
    support_idx, query_idx = (t[share] for t in cached_episodes(labels, ways, shots, queries, episodes, seed))
    _, codes = class_codes(labels)
    codes = torch.as_tensor(codes)
    features = F.normalize(torch.as_tensor(features).float(), dim=1)
    pool = _members_by_class(codes)  # [C, largest class] indices, −1 as padding
    support_y = torch.arange(ways).repeat_interleave(shots)
    scores = [torch.empty(0)]  # an empty share scores nothing
    for s_idx, q_idx in zip(support_idx.split(chunk), query_idx.split(chunk)):
        n = len(s_idx)
        if not n:
            continue
        members = pool[codes[s_idx.view(n, ways, shots)[:, :, 0]]]  # [n, ways, largest], class by class
        keep = (members >= 0) & ~(members[..., None] == q_idx[:, None, None, :]).any(-1)
        members = members.clamp_min(0).view(n, -1)
        opt_y = torch.arange(ways).repeat_interleave(pool.shape[1]).expand(n, -1)
        w, b = fit_logreg(features[members], opt_y, ways, c_reg, weights=keep.view(n, -1).float())
        query = features[q_idx]
        log_p_opt = (query @ w.transpose(1, 2) + b[:, None]).log_softmax(-1)
        log_p_few = CLASSIFIERS[classifier](features[s_idx], support_y.expand(n, -1), query, ways).log_softmax(-1)
        kl = (log_p_opt.exp() * (log_p_opt - log_p_few)).sum(-1)  # [n, queries]
        scores.append(kl.mean(-1))
    return torch.cat(scores).double().numpy()


def _members_by_class(codes):
    """Indices of each class's samples as rows of a matrix, padded with −1 to the largest class."""
    order = torch.argsort(codes, stable=True)
    counts = torch.bincount(codes)
    table = torch.full((len(counts), int(counts.max())), -1, dtype=torch.int64)
    position = torch.arange(len(codes)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    table[codes[order], position] = order
    return table


def overall_score(per_axis):
    """The universality score: the mean of the axes' σ, its interval from theirs (independent axes).

    ``per_axis`` maps axis → (mean, ci95); returns (mean, ci95).
    """
    means, halves = zip(*per_axis.values())
    return float(np.mean(means)), float(np.sqrt(np.sum(np.square(halves))) / len(halves))

