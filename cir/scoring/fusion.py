"""Query-side fusion rules: WeiMoCIR's weighted modality fusion, PDV, plain mean ensembles.

Every function takes batched tensors (leading query dimension) and returns tensors of the same
dtype and device. Inputs need not be normalised unless stated; outputs say whether they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """L2 normalisation over the last dimension (zero vectors stay zero)."""
    return F.normalize(x, dim=-1)


def weimocir_query(
    image: torch.Tensor, text: torch.Tensor, alpha: float = 0.8, raw: bool = False
) -> torch.Tensor:
    """WeiMoCIR's fused query ``normalize((1 - alpha) * v + alpha * t)``.

    Wu et al., "Training-free Zero-shot Composed Image Retrieval via Weighted Modality Fusion and
    Similarity" (TAAI 2024). With ``raw=False`` (default) ``v`` and ``t`` are normalised first, as
    the paper writes it; ``raw=True`` mixes the inputs as given, which is what the reference code
    does with un-normalised projector outputs (pass un-normalised embeddings for that form).

    Args:
        image: reference image embeddings, shape (Q, D) (or (..., D)).
        text: modification text embeddings, same shape.
        alpha: weight of the text.
        raw: mix the inputs without normalising them first.

    Returns:
        Normalised fused queries, shape of the inputs.
    """
    if not raw:
        image, text = l2_normalize(image), l2_normalize(text)
    return l2_normalize((1.0 - alpha) * image + alpha * text)


def mean_query(embeddings: torch.Tensor) -> torch.Tensor:
    """``normalize(mean_i e_i)`` over the slot dimension: (Q, N, D) -> (Q, D)."""
    return l2_normalize(embeddings.mean(dim=-2))


def prompt_direction(composed: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """PDV's prompt directional vector ``normalize(composed) - normalize(reference)``."""
    return l2_normalize(composed) - l2_normalize(reference)


def pdv_auto_alpha_image(
    image: torch.Tensor, reference_text: torch.Tensor, delta: torch.Tensor, alpha_text: float
) -> torch.Tensor:
    """Per-query ``alpha_I`` minimising ``||q_I - q_T||`` (closed form, one value per query).

    ``q_I - q_T = (v - r) + (alpha_I - alpha_T) * delta`` with ``v``, ``r`` normalised, so the
    minimiser is ``alpha_T - <v - r, delta> / ||delta||^2``. Where ``delta`` is zero the image
    and the text do not move and any value is optimal: ``alpha_T`` is returned there.

    Returns:
        Tensor of shape (Q,) (the leading shape of the inputs).
    """
    gap = l2_normalize(image) - l2_normalize(reference_text)
    norm2 = (delta * delta).sum(dim=-1)
    shift = (gap * delta).sum(dim=-1) / norm2.clamp_min(torch.finfo(delta.dtype).tiny)
    return torch.where(norm2 > 0, alpha_text - shift, torch.full_like(norm2, alpha_text))


def pdv_query(
    image: torch.Tensor | None,
    reference_text: torch.Tensor,
    composed_text: torch.Tensor,
    alpha_image: float | torch.Tensor = 1.4,
    alpha_text: float = 1.2,
    beta: float = 0.75,
) -> torch.Tensor:
    """PDV-F query ``normalize((1 - beta) * q_I + beta * q_T)``.

    Tursun et al., "Prompt Directional Vectors for Zero-shot Composed Image Retrieval" (2025).
    With
    ``delta = normalize(E_T(composed)) - normalize(E_T(reference-only))``:
    ``q_T = normalize(E_T(reference-only)) + alpha_T * delta`` (PDV-T) and
    ``q_I = normalize(E_I(image)) + alpha_I * delta`` (PDV-I). ``alpha_T = 1, beta = 1`` gives
    ``normalize(E_T(composed))``: the base method's query, exactly.

    Args:
        image: reference image embeddings (Q, D); may be None only when ``beta == 1``.
        reference_text: embeddings of the reference-only text (the reference caption), (Q, D).
        composed_text: embeddings of the composed text (the target description), (Q, D).
        alpha_image: scale of ``delta`` on the image side (a float, or (Q,) per query).
        alpha_text: scale of ``delta`` on the text side.
        beta: weight of the text-side query in the fusion.

    Returns:
        Normalised queries (Q, D).
    """
    ref = l2_normalize(reference_text)
    delta = l2_normalize(composed_text) - ref
    q_text = ref + alpha_text * delta
    if image is None:
        if beta != 1.0:
            raise ValueError(f"PDV with beta={beta} needs the reference image embedding")
        return l2_normalize(q_text)
    if isinstance(alpha_image, torch.Tensor):
        alpha_image = alpha_image.to(delta.dtype).unsqueeze(-1)
    q_image = l2_normalize(image) + alpha_image * delta
    return l2_normalize((1.0 - beta) * q_image + beta * q_text)
