"""Training losses: symmetric InfoNCE, and VM-NET's top-Q triplet loss plus soft intra-modal structure loss.

All take L2-normalised embeddings `audio` (B, E) and `video` (B, E) whose row i is a true pair.

* `info_nce`: cross-entropy over cosine similarities times 1/temperature, both directions (video -> audio
  and audio -> video), averaged; every other clip in the batch is a negative (paper eq. 1).
* `triplet_top_q`: for each positive pair and each in-batch negative, in both directions, the hinge
  max(0, margin + d(anchor, positive) - d(anchor, negative)) with d the Euclidean distance between unit
  vectors; only the Q largest hinges in the batch are averaged (VM-NET's "top Q most violated matches").
* `soft_structure`: VM-NET's soft intra-modal structure constraint as we read it: for each anchor, its K
  nearest in-batch neighbours in the input space; for every pair (j, k) of them the embedding should keep
  the input space's order of d(i, j) and d(i, k). The penalty is |sign(dx_ij - dx_ik) - tanh((de_ij - de_ik)
  / scale)| / 2, in [0, 1]: 0 when the order is kept with room to spare, 1 when it is reversed.
* `vmnet_loss`: triplet + weight * (structure(audio) + structure(video)) / 2, weight 1 = equal weighting.
* `distill_kl`: ensemble distillation (Hinton et al. 2015, applied to the in-batch retrieval distributions):
  the KL divergence from the teachers' averaged softmax over the batch (each teacher's own similarities times
  its own 1/temperature) to the student's, for video and audio queries alike; compute_loss adds it times
  loss.distill_weight, on logits divided by loss.distill_temperature (times its square).
* `label_loss`: the label-aware auxiliary objective (loss.label_weight): multi-label binary cross-entropy of
  linear classifiers on each branch's embedding against the training clips' labels (the loss.label_count
  most frequent ones). The classifiers live beside the model (tivm.train.trainer.LabelClassifiers), never in
  its checkpoint, so what is exported is unchanged.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

DIST_EPS = 1e-12  # keeps sqrt differentiable for identical vectors


def info_nce(audio: torch.Tensor, video: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE with cosine similarity; logit_scale = 1 / temperature."""
    logits = logit_scale * (video @ audio.T)  # row: a video query, columns: all audio in the batch
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def unit_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between rows of unit vectors x (N, E) and y (M, E): sqrt(2 - 2 cos)."""
    return torch.sqrt((2.0 - 2.0 * (x @ y.T)).clamp_min(DIST_EPS))


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between the rows of any x (N, D)."""
    squared = (x * x).sum(dim=1)
    d2 = squared[:, None] + squared[None, :] - 2.0 * (x @ x.T)
    return torch.sqrt(d2.clamp_min(DIST_EPS))


def triplet_violations(audio: torch.Tensor, video: torch.Tensor, margin: float) -> torch.Tensor:
    """All 2 B (B - 1) cross-modal hinges (video anchors then audio anchors), flattened."""
    d = unit_distances(video, audio)  # d[i, j] = |v_i - a_j|
    positive = torch.diagonal(d)
    off = ~torch.eye(d.shape[0], dtype=torch.bool, device=d.device)
    video_anchor = F.relu(margin + positive[:, None] - d)  # negatives a_j for anchor v_i
    audio_anchor = F.relu(margin + positive[None, :] - d)  # negatives v_i for anchor a_j (column j)
    return torch.cat((video_anchor[off], audio_anchor.T[off]))


def triplet_top_q(audio: torch.Tensor, video: torch.Tensor, margin: float = 0.2, top_q: int = 200) -> torch.Tensor:
    """Mean of the top_q largest cross-modal triplet hinges in the batch."""
    hinges = triplet_violations(audio, video, margin)
    q = min(int(top_q), hinges.numel())
    return torch.topk(hinges, q).values.mean()


def structure_triples(inputs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(anchor, j, l) index triples: j != l among each anchor's k nearest in-batch neighbours in input space."""
    with torch.no_grad():
        d = pairwise_distances(inputs.float())
        d.fill_diagonal_(float("inf"))
        k = min(int(k), inputs.shape[0] - 1)
        neighbours = torch.topk(d, k, dim=1, largest=False).indices  # (B, k)
        b = inputs.shape[0]
        jj, ll = torch.triu_indices(k, k, offset=1, device=inputs.device)
        anchor = torch.arange(b, device=inputs.device)[:, None].expand(b, jj.numel())
        return anchor.reshape(-1), neighbours[:, jj].reshape(-1), neighbours[:, ll].reshape(-1)


def soft_structure(inputs: torch.Tensor, embeddings: torch.Tensor, k: int = 10, scale: float = 0.1) -> torch.Tensor:
    """Soft intra-modal structure loss of one modality (inputs: (B, D) input-space vectors)."""
    if inputs.shape[0] < 3 or k < 2:
        return embeddings.sum() * 0.0
    anchor, j, m = structure_triples(inputs, k)
    with torch.no_grad():
        dx = pairwise_distances(inputs.float())
        target = torch.sign(dx[anchor, j] - dx[anchor, m])
    de = unit_distances(embeddings, embeddings)
    kept = torch.tanh((de[anchor, j] - de[anchor, m]) / scale)
    return 0.5 * (target - kept).abs().mean()


def vmnet_loss(audio: torch.Tensor, video: torch.Tensor, audio_inputs: torch.Tensor, video_inputs: torch.Tensor,
               margin: float = 0.2, top_q: int = 200, structure_k: int = 10, structure_weight: float = 1.0,
               structure_scale: float = 0.1) -> torch.Tensor:
    """VM-NET's objective: top-Q triplet loss plus the soft structure loss of both modalities."""
    triplet = triplet_top_q(audio, video, margin, top_q)
    structure = 0.5 * (soft_structure(audio_inputs, audio, structure_k, structure_scale)
                       + soft_structure(video_inputs, video, structure_k, structure_scale))
    return triplet + structure_weight * structure


def distill_kl(logits: torch.Tensor, teacher_logits: list[torch.Tensor]) -> torch.Tensor:
    """Mean over queries of KL(teachers || student) for the in-batch distributions, both directions averaged.
    logits (B, B): the student's, row i = video query i over the batch's audio; teacher_logits: the same for
    each teacher (no gradient). The target is the mean of the teachers' softmaxes (the ensemble's distribution),
    per row for video queries and per column for audio queries."""
    if not teacher_logits:
        raise ValueError("distillation needs at least one teacher")
    with torch.no_grad():
        rows = torch.stack([F.softmax(t.float(), dim=1) for t in teacher_logits]).mean(dim=0)
        cols = torch.stack([F.softmax(t.float(), dim=0) for t in teacher_logits]).mean(dim=0)
    kl_rows = (torch.xlogy(rows, rows) - rows * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    kl_cols = (torch.xlogy(cols, cols) - cols * F.log_softmax(logits, dim=0)).sum(dim=0).mean()
    return 0.5 * (kl_rows + kl_cols)


DEFAULT_LABEL_COUNT = 1000


def label_settings(loss_config: dict) -> tuple[float, int]:
    """(loss.label_weight, loss.label_count) of a loss block: the auxiliary label objective's weight (0: off)
    and how many of the most frequent training labels it predicts."""
    return float(loss_config.get("label_weight", 0.0)), int(loss_config.get("label_count", DEFAULT_LABEL_COUNT))


def label_loss(audio_logits: torch.Tensor, video_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of both branches' label logits (B, K) against multi-hot targets (B, K), summed
    over the K labels (a clip's multi-label loss, so the weight does not shrink as K grows), averaged over
    clips and branches."""
    targets = targets.float()
    return 0.5 * (F.binary_cross_entropy_with_logits(audio_logits, targets, reduction="sum")
                  + F.binary_cross_entropy_with_logits(video_logits, targets, reduction="sum")) / targets.shape[0]


def compute_loss(loss_config: dict, logit_scale: torch.Tensor, audio_emb: torch.Tensor, video_emb: torch.Tensor,
                 audio_ref: torch.Tensor | None = None, video_ref: torch.Tensor | None = None,
                 teacher_logits: list[torch.Tensor] | None = None) -> torch.Tensor:
    """The loss a config names for one batch: "infonce", or "triplet_structure" (needs the reference
    input-space vectors, Head.reference_features); plus loss.distill_weight times distill_kl towards the
    teachers' in-batch logits when that weight is above 0 (teacher_logits then required)."""
    weight = float(loss_config.get("distill_weight", 0.0))
    loss = _base_loss(loss_config, logit_scale, audio_emb, video_emb, audio_ref, video_ref)
    if weight > 0:
        if not teacher_logits:
            raise ValueError("loss.distill_weight needs the teachers' in-batch logits (tivm-train --teacher)")
        # Hinton et al.'s softening: both sides' logits divided by T, the term scaled by T^2 so that its
        # gradients keep their size; teachers are near one-hot on the pairs they trained on, T > 1 lets
        # their ranking of the other clips through
        soft = float(loss_config.get("distill_temperature", 1.0))
        student = logit_scale * (video_emb @ audio_emb.T) / soft
        loss = loss + weight * soft * soft * distill_kl(student, [t / soft for t in teacher_logits])
    return loss


def _base_loss(loss_config: dict, logit_scale: torch.Tensor, audio_emb: torch.Tensor, video_emb: torch.Tensor,
               audio_ref: torch.Tensor | None, video_ref: torch.Tensor | None) -> torch.Tensor:
    kind = loss_config.get("kind", "infonce")
    if kind == "infonce":
        return info_nce(audio_emb, video_emb, logit_scale)
    if kind == "triplet_structure":
        if audio_ref is None or video_ref is None:
            raise ValueError("the triplet_structure loss needs the input-space reference features")
        return vmnet_loss(audio_emb, video_emb, audio_ref, video_ref,
                          margin=float(loss_config.get("margin", 0.2)), top_q=int(loss_config.get("top_q", 200)),
                          structure_k=int(loss_config.get("structure_k", 10)),
                          structure_weight=float(loss_config.get("structure_weight", 1.0)),
                          structure_scale=float(loss_config.get("structure_scale", 0.1)))
    raise ValueError(f"unknown loss kind {kind!r} (infonce | triplet_structure)")
