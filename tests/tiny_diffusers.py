"""Tiny randomly initialised diffusers model folders, written with save_pretrained (no download).

Used by the adapter and parity tests, and by CI: ``python tests/tiny_diffusers.py build/tiny-ddpm``
writes the 1×8×8 pixel-space DDPM folder that ``suites/tiny-diffusers.yaml`` benchmarks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

SIZE = 8  # pixels (pixel models) or latent cells (latent models) per side
PROMPT_LENGTH = 8
VP = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}


def _index(root: Path, pipeline: str, **parts: tuple[str, str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(
        json.dumps({"_class_name": pipeline, **{k: list(v) for k, v in parts.items()}})
    )


def scheduler(root: Path, cls: str = "DDIMScheduler", **config) -> dict:
    """Write ``root/scheduler/scheduler_config.json`` for diffusers class ``cls``; return the config."""
    import diffusers

    sched = getattr(diffusers, cls)(**config)
    sched.save_pretrained(root / "scheduler")
    return dict(sched.config)


def unet(
    root: Path,
    *,
    seed: int = 0,
    channels: int = 3,
    out_channels: int | None = None,
    num_class_embeds: int | None = None,
    size: int = SIZE,
) -> torch.nn.Module:
    """A two-level UNet2DModel with one attention level, ~20k parameters, at ``root/unet``."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    net = UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=out_channels or channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        attention_head_dim=4,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        num_class_embeds=num_class_embeds,
    )
    net.save_pretrained(root / "unet")
    return net.eval()


def pixel_ddpm(root: Path, *, prediction_type: str = "epsilon", seed: int = 0, channels: int = 3, **sched) -> Path:
    """Unconditional pixel-space UNet2DModel + DDIMScheduler config, like google/ddpm-cifar10-32."""
    unet(root, seed=seed, channels=channels)
    scheduler(root, **{**VP, "prediction_type": prediction_type, **sched})
    _index(root, "DDPMPipeline", unet=("diffusers", "UNet2DModel"), scheduler=("diffusers", "DDIMScheduler"))
    return root


def vae(root: Path, *, seed: int = 1, latent_channels: int = 4) -> torch.nn.Module:
    """An AutoencoderKL that maps 3×16×16 images to 4×8×8 latents, at ``root/vae``."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    net = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=2 * SIZE,
        scaling_factor=0.5,
    )
    net.save_pretrained(root / "vae")
    return net.eval()


def latent_dit(root: Path, *, num_classes: int = 10, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """Class-conditional latent DiT (learned variance: 8 output channels for 4 in) + VAE, like facebook/DiT."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    net = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=SIZE,
        patch_size=2,
        num_embeds_ada_norm=num_classes,
        norm_num_groups=4,
    )
    net.save_pretrained(root / "transformer")
    vae(root)
    scheduler(root, **{**VP, "prediction_type": prediction_type})
    _index(
        root,
        "DiTPipeline",
        transformer=("diffusers", "DiTTransformer2DModel"),
        vae=("diffusers", "AutoencoderKL"),
        scheduler=("diffusers", "DDIMScheduler"),
    )
    return root


def text_unet(root: Path, *, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """Text-conditioned pixel UNet2DConditionModel with a tiny CLIP text encoder and tokenizer."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    tok_dir = root / "tokenizer-src"
    tok_dir.mkdir(parents=True, exist_ok=True)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(
        str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=PROMPT_LENGTH
    ).save_pretrained(root / "tokenizer")
    torch.manual_seed(seed)
    CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=PROMPT_LENGTH,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    ).save_pretrained(root / "text_encoder")
    UNet2DConditionModel(
        sample_size=SIZE,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=16,
        attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ).save_pretrained(root / "unet")
    scheduler(
        root,
        **{
            **VP,
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "prediction_type": prediction_type,
        },
    )
    _index(
        root,
        "StableDiffusionPipeline",
        unet=("diffusers", "UNet2DConditionModel"),
        text_encoder=("transformers", "CLIPTextModel"),
        tokenizer=("transformers", "CLIPTokenizer"),
        scheduler=("diffusers", "DDIMScheduler"),
    )
    return root


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/tiny_diffusers.py OUT_DIR  (writes a tiny 1x8x8 pixel-space DDPM folder)")
    print(pixel_ddpm(Path(sys.argv[1]), channels=1))
