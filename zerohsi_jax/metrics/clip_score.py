"""CLIP score between a prompt and rendered frames, and frame-to-frame CLIP consistency, with
open_clip (Torch, imported here only). Weights are the user's: no file, no score."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLIP_HELP = (
    "CLIP metrics need open_clip (pip install open-clip-torch, in the torch extra) and the weights of the "
    "model, e.g. ViT-B-32 'laion2b_s34b_b79k' saved as open_clip_pytorch_model.bin from "
    "https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K; pass its path as checkpoint"
)


class ClipWeightsError(FileNotFoundError):
    """The CLIP weights file is missing; the message says which file to supply."""


def load_clip(model_name: str = "ViT-B-32", checkpoint=None, *, device: str = "cpu", allow_random: bool = False):
    """(model, preprocess, tokenizer). `checkpoint` must exist; `allow_random` (tests only) builds
    the architecture with random weights instead."""
    try:
        import open_clip
    except ImportError as err:
        raise ImportError(CLIP_HELP) from err
    if checkpoint is None and not allow_random:
        raise ClipWeightsError(f"no CLIP checkpoint given. {CLIP_HELP}")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ClipWeightsError(f"CLIP checkpoint {checkpoint} does not exist. {CLIP_HELP}")
    model, _, preprocess = open_clip.create_model_and_transforms(
        model_name, pretrained=str(checkpoint) if checkpoint is not None else None, device=device
    )
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(model_name)


def clip_scores(frames: np.ndarray, prompt: str, clip) -> dict[str, float]:
    """CLIP score (100 x mean cosine similarity of the prompt to each frame, clipped at 0 as in
    Hessel et al.) and consistency (mean cosine similarity of consecutive frames)."""
    import torch
    from PIL import Image

    model, preprocess, tokenizer = clip
    device = next(model.parameters()).device
    images = torch.stack([preprocess(Image.fromarray(np.asarray(f, np.uint8))) for f in frames]).to(device)
    with torch.no_grad():
        img = model.encode_image(images)
        txt = model.encode_text(tokenizer([prompt]).to(device))
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    score = float(100.0 * torch.clamp(img @ txt.T, min=0).mean())
    consistency = float((img[1:] * img[:-1]).sum(-1).mean()) if len(frames) > 1 else 1.0
    return {"clip_score": score, "clip_consistency": consistency}
