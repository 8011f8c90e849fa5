"""BASIC: centred, projected image similarity and centred text similarity, fused by Harris' rule.

Psomas et al., "Instance-Level Composed Image Retrieval" (NeurIPS 2025). Image features are
centred by an image mean (a file, or the gallery's own mean); text features by the mean of an
object-phrase corpus; the query image is projected on the top eigenvectors of the contrastive
scatter ``C = (1 - a) A^T A / (n_A - 1) - a B^T B / (n_B - 1)`` (A: objects, B: styles); both
similarities are shifted and scaled by calibration minima, clamped at 0 and fused with
``S = s_v s_t - lambda (s_v + s_t)^2``.
"""

from __future__ import annotations

import torch

from cir.scoring.fusion import l2_normalize

#: The reference code adds this constant to every entry of the contrastive scatter.
SCATTER_SHIFT = 1e-5


def contrastive_projection(
    objects: torch.Tensor, styles: torch.Tensor, a: float = 0.2, components: int = 250
) -> torch.Tensor:
    """The (D, D) projector ``V^T V`` on the top eigenvectors of the contrastive scatter.

    Args:
        objects: centred object-phrase embeddings A (n_A, D).
        styles: centred style-phrase embeddings B (n_B, D).
        a: weight of the style scatter.
        components: how many eigenvectors to keep at most; only those with a positive
            eigenvalue are kept, as in the reference code.
    """
    if objects.shape[0] < 2 or styles.shape[0] < 2:
        raise ValueError("contrastive PCA needs at least two object and two style phrases")
    a_scatter = objects.T @ objects / (objects.shape[0] - 1)
    b_scatter = styles.T @ styles / (styles.shape[0] - 1)
    scatter = (1.0 - a) * a_scatter - a * b_scatter + SCATTER_SHIFT
    values, vectors = torch.linalg.eigh(scatter.double())
    order = values.argsort(descending=True)
    keep = min(components, int((values > 0).sum()))
    basis = vectors[:, order[:keep]]  # (D, keep)
    return (basis @ basis.T).to(objects.dtype)


def contextualize(pairs: torch.Tensor) -> torch.Tensor:
    """Mean of normalised embeddings of "{object} {text}" and "{text} {object}", normalised.

    Args:
        pairs: (Q, P, D) raw or normalised embeddings of the 2 x n_objects phrasings.
    """
    return l2_normalize(l2_normalize(pairs).mean(dim=-2))


def expand_query(
    centred_query: torch.Tensor,
    neighbours: torch.Tensor,
    neighbour_sims: torch.Tensor,
    projection: torch.Tensor,
    temperature: float = 0.1,
) -> torch.Tensor:
    """Query expansion: weighted mean of the query and its neighbours, then projected.

    The query itself joins its neighbours with similarity 1; weights are
    ``exp(temperature * sim)`` normalised to sum to 1 (the reference code's 0.1 multiplies).

    Args:
        centred_query: centred, unprojected query image embeddings (Q, D).
        neighbours: centred gallery embeddings of the top neighbours (Q, M, D).
        neighbour_sims: their similarities to the projected query (Q, M).
        projection: the (D, D) projector.
        temperature: factor inside the exponential.
    """
    feats = torch.cat([neighbours, centred_query.unsqueeze(-2)], dim=-2)
    ones = torch.ones_like(neighbour_sims[..., :1])
    weights = torch.exp(temperature * torch.cat([neighbour_sims, ones], dim=-1))
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return (feats * weights.unsqueeze(-1)).sum(dim=-2) @ projection


def similarity_minima(
    centred_images: torch.Tensor, centred_texts: torch.Tensor
) -> tuple[float, float]:
    """Calibration minima ``(min image-image, min text-image)`` of centred similarities.

    The reference code measures them on a synthetic paired set; here any calibration images
    (a sample of the gallery by default) and texts (the object corpus) can be used.
    """
    image_min = (centred_images @ centred_images.T).min()
    text_min = (centred_texts @ centred_images.T).min()
    return float(image_min), float(text_min)


def basic_scores(
    image_query: torch.Tensor,
    text_query: torch.Tensor,
    gallery: torch.Tensor,
    image_mean: torch.Tensor,
    image_min: float | None = None,
    text_min: float | None = None,
    harris_lambda: float = 0.1,
) -> torch.Tensor:
    """Harris fusion ``s_v s_t - lambda (s_v + s_t)^2`` of normalised, rectified similarities.

    Args:
        image_query: centred (and projected, expanded) query image embeddings (Q, D).
        text_query: centred query text embeddings (Q, D).
        gallery: a chunk of normalised gallery embeddings (n, D); centred here.
        image_mean: the image mean (D,).
        image_min: calibration minimum of image-image similarity; with ``text_min`` the
            similarities become ``(s - min) / |image_min|`` (both divided by the image one).
            None skips this normalisation.
        text_min: calibration minimum of text-image similarity.
        harris_lambda: the Harris weight.

    Returns:
        Scores (Q, n).
    """
    g = gallery.to(image_query.dtype)
    mean = image_mean.to(image_query.dtype)
    text_query = text_query.to(image_query.dtype)
    # q.(g - m) = q.g - q.m: centre through a per-query offset instead of copying the chunk
    sim_image = (image_query @ g.T).sub_((image_query @ mean).unsqueeze(1))
    sim_text = (text_query @ g.T).sub_((text_query @ mean).unsqueeze(1))
    if image_min is not None and text_min is not None:
        scale = abs(image_min) or 1.0
        sim_image.sub_(image_min).div_(scale)
        sim_text.sub_(text_min).div_(scale)
    sim_image.clamp_(min=0)
    sim_text.clamp_(min=0)
    penalty = (sim_image + sim_text).square_().mul_(harris_lambda)
    return sim_image.mul_(sim_text).sub_(penalty)
