"""DINOv2 token encoders (timm): ``[CLS; patch tokens]`` of the last, normalised layer.

The paper encodes the source image with ViT-g/14 (``vit_giant_patch14_dinov2.lvd142m``, 257 x 1536
tokens at 224 px) and the rendered target skeleton with ViT-B/14 (``vit_base_patch14_dinov2.lvd142m``,
257 x 768). timm's ``forward_features`` returns exactly the normed ``[CLS; patches]`` sequence for
these ids (one prefix token, no register tokens — checked in :meth:`TokenEncoder.__init__`).

Inputs are prepared as the authors do (PAPER.md §1.7): images stay in [-1, 1], skeleton images are
in [0, 1] divided by their maximum, both resized to ``encoders.token_input_size`` with bicubic
interpolation **without** antialiasing, and **no** ImageNet mean/std normalisation.

Offline (``encoders.pretrained: false``, the embedded default) the encoders are *random-feature
stand-ins*: the same timm family (``standin_*`` ids), ``depth=standin_depth``, randomly initialised
from a fixed seed. They are labelled ``standin: true`` in :attr:`TokenEncoder.spec`, in the logs and
in the cache manifest, and their weights are saved (safetensors) next to the cache so downstream
stages load exactly the same encoder. Weights are only ever fetched from the hub when
``pretrained=True``; offline that fails at once with an error naming the model id, the cache folder
looked in and the setting that points at a local copy.

**Position embeddings of the pretrained encoders** (PAPER.md §1.7). The authors load DINOv2 from
``torch.hub`` (``dinov2_vitb14`` / ``dinov2_vitg14``): the model keeps its 37x37 position grid (518 px)
and, at every forward of a 224-px input, resamples it to 16x16 with
``F.interpolate(mode="bicubic", scale_factor=((16 + 0.1) / 37,) * 2, antialias=False)``. timm's
``create_model(pretrained=True, img_size=224)`` instead resamples once at load, with antialiasing,
which gives different tokens for the same weights. The pretrained path here therefore builds the
timm model at its native 518 px and replaces its position-embedding step by the hub's per-forward
interpolation (:func:`hub_interpolate_pos_embed`), so the tokens are the authors'. Weights come from
timm's hub id, or from a local file (``encoders.image_encoder_weights`` / ``pose_encoder_weights``)
in timm's safetensors layout or the torch-hub ``.pth`` layout (read with ``weights_only=True``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import types
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from xmdpt.config import EncodersConfig
from xmdpt.precision import autocast_context
from xmdpt.ops.storage import filesystem

logger = logging.getLogger(__name__)

ROLES = ("image", "pose")
PATCH_SIZE = 14
HUB_IMG_SIZE = 518  # the torch-hub DINOv2 models' native size: a 37x37 position grid
HUB_INTERPOLATE_OFFSET = 0.1  # dinov2 `interpolate_offset`
# torch.hub entry points the authors load, per timm id (for messages and the hub-layout import)
HUB_NAMES = {"vit_giant_patch14_dinov2.lvd142m": "dinov2_vitg14", "vit_base_patch14_dinov2.lvd142m": "dinov2_vitb14",
             "vit_large_patch14_dinov2.lvd142m": "dinov2_vitl14", "vit_small_patch14_dinov2.lvd142m": "dinov2_vits14"}
_ROLE_SEED_OFFSET = {"image": 0, "pose": 1}  # two stand-ins of the same architecture must differ


def prepare_image(images: torch.Tensor, size: int) -> torch.Tensor:
    """Image-encoder input: bicubic resize without antialias, values kept in [-1, 1].

    Args:
        images: (N, 3, H, W) float in [-1, 1].
        size: ``encoders.token_input_size`` (224 in the paper).

    Returns:
        (N, 3, size, size) float32.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"prepare_image expects (N, 3, H, W) images in [-1, 1], got {tuple(images.shape)}")
    x = images.float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=False)
    return x  # (N, 3, size, size)


def prepare_pose(skeletons: torch.Tensor, size: int) -> torch.Tensor:
    """Pose-encoder input: skeleton images scaled to [0, 1] by their own maximum, then resized.

    Args:
        skeletons: (N, 3, H, W) rendered skeletons, uint8 or float (any non-negative range).
        size: ``encoders.token_input_size``.

    Returns:
        (N, 3, size, size) float32; an empty skeleton (no visible keypoints) stays all zeros.
    """
    if skeletons.ndim != 4 or skeletons.shape[1] != 3:
        raise ValueError(f"prepare_pose expects (N, 3, H, W) skeleton images, got {tuple(skeletons.shape)}")
    x = skeletons.float()
    peak = x.amax(dim=(1, 2, 3), keepdim=True)  # (N, 1, 1, 1)
    x = x / torch.where(peak > 0, peak, torch.ones_like(peak))
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=False)
    return x  # (N, 3, size, size)


def skeletons_to_tensor(skeletons) -> torch.Tensor:
    """uint8 (N, H, W, 3) numpy/tensor -> uint8 (N, 3, H, W) tensor."""
    t = torch.as_tensor(skeletons)
    return t.permute(0, 3, 1, 2).contiguous()


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set (as huggingface_hub reads it)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hf_cache_dir() -> str:
    """The Hugging Face hub cache folder that ``from_pretrained`` looks in."""
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover - very old huggingface_hub
        return os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "hub")


def _weights_setting(role: Optional[str]) -> str:
    return f"encoders.{role}_encoder_weights" if role else "encoders.<role>_encoder_weights"


def check_hub_reachable(model_id: str, role: Optional[str] = None) -> None:
    """Offline and not cached: fail now with the model id, the cache folder and the setting to use."""
    if not hub_offline():
        return
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(model_id)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if repo:
        for fname in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(repo, fname), str):
                return
    raise RuntimeError(
        f"cannot load pretrained weights for {model_id!r}: HF_HUB_OFFLINE is set and hub id {repo or '(none)'} "
        f"is not in the Hugging Face cache {hf_cache_dir()}. Point {_weights_setting(role)} (or "
        "`xmdpt import-official --image-encoder/--pose-encoder`) at a local copy: timm's model.safetensors or "
        f"the torch-hub {HUB_NAMES.get(model_id, 'dinov2')}_pretrain.pth; or run once with network access; "
        "or set encoders.pretrained=false for the seeded random-feature stand-ins."
    )


def hub_interpolate_pos_embed(pos_embed: torch.Tensor, grid_hw: tuple[int, int],
                              offset: float = HUB_INTERPOLATE_OFFSET) -> torch.Tensor:
    """The torch-hub DINOv2 resampling of ``[cls; M x M]`` position embeddings to an ``h x w`` patch grid.

    The patch part is resampled in float32 with ``F.interpolate(mode="bicubic", antialias=False,
    scale_factor=((h + offset) / M, (w + offset) / M))`` — the scale factor, not the output size,
    sets the sampling positions — and the CLS entry is kept.

    Args:
        pos_embed: (1, 1 + M*M, D).
        grid_hw: (h, w) patches of the input.

    Returns:
        (1, 1 + h*w, D) float32 (``pos_embed`` itself, as float32, when the grid already matches).
    """
    n = pos_embed.shape[1] - 1
    m = int(math.isqrt(n))
    if m * m != n:
        raise ValueError(f"position embedding of {n} patch entries is not a square grid")
    h, w = int(grid_hw[0]), int(grid_hw[1])
    pos = pos_embed.float()
    if (h, w) == (m, m):
        return pos
    dim = pos.shape[-1]
    grid = pos[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2)  # (1, D, M, M)
    out = F.interpolate(grid, scale_factor=((h + offset) / m, (w + offset) / m), mode="bicubic", antialias=False)
    if tuple(out.shape[-2:]) != (h, w):
        raise RuntimeError(f"hub interpolation gave a {tuple(out.shape[-2:])} grid, expected {(h, w)}")
    return torch.cat([pos[:, :1], out.permute(0, 2, 3, 1).reshape(1, h * w, dim)], dim=1)


def _hub_pos_embed(self, x: torch.Tensor) -> torch.Tensor:
    """timm ``VisionTransformer._pos_embed`` replaced by the hub's per-forward interpolation (NHWC input)."""
    b, h, w, c = x.shape
    x = torch.cat([self.cls_token.expand(b, -1, -1), x.reshape(b, h * w, c)], dim=1)  # concat, then add
    return self.pos_drop(x + hub_interpolate_pos_embed(self.pos_embed, (h, w)).to(x.dtype))


def use_hub_pos_embed(model: torch.nn.Module) -> torch.nn.Module:
    """Make a timm DINOv2 built with ``dynamic_img_size=True`` add position embeddings as the hub model does."""
    if not getattr(model, "dynamic_img_size", False):
        raise ValueError("use_hub_pos_embed needs a timm ViT built with dynamic_img_size=True")
    if getattr(model, "reg_token", None) is not None or getattr(model, "no_embed_class", False):
        raise ValueError("use_hub_pos_embed: register-token DINOv2 variants are not supported")
    model._pos_embed = types.MethodType(_hub_pos_embed, model)
    model.hub_pos_embed = True
    return model


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``.pth``/``.pt``/``.bin`` tensor file (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and isinstance(sd.get("model"), dict):
        sd = sd["model"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: expected a plain state dict of tensors")
    return sd


def load_backbone_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load DINOv2 weights in timm's layout or the torch-hub layout (``mask_token``, ``mlp.w12``/``w3``).

    Raises ``ValueError`` naming the file and the missing / unexpected keys and shape mismatches.
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    sd = read_weights_file(path)
    sd = checkpoint_filter_fn(dict(sd), model)  # hub layout -> timm's; the 518 grid needs no resampling here
    ours = model.state_dict()
    missing = sorted(set(ours) - set(sd))
    unexpected = sorted(set(sd) - set(ours))
    wrong = sorted(f"{k}: expected {tuple(ours[k].shape)}, got {tuple(sd[k].shape)}"
                   for k in set(ours) & set(sd) if tuple(ours[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or wrong:
        raise ValueError(f"{path}: not DINOv2 weights of this architecture: missing {missing[:8]}"
                         f"{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                         f"{'...' if len(unexpected) > 8 else ''}, shape mismatches {wrong[:8]}")
    model.load_state_dict(sd, strict=True)


def build_backbone(model_id: str, *, pretrained: bool, img_size: int, depth: Optional[int] = None,
                   seed: Optional[int] = None, weights: Optional[str] = None, hub_pos_embed: bool = False,
                   role: Optional[str] = None, **overrides: Any) -> torch.nn.Module:
    """A timm DINOv2 ViT without head (``num_classes=0``).

    ``hub_pos_embed=True`` (the pretrained path) builds the model at the hub's native 518 px and
    interpolates the position grid at every forward as the torch-hub model does; the input may then
    be any multiple of 14 (224 for the paper). Otherwise the model is built at ``img_size``.

    ``pretrained=True`` loads weights: from ``weights`` (a local file, timm or hub layout) when given,
    else from the model hub (or its cache) — the only place the hub is touched. Otherwise the model is
    randomly initialised under ``torch.manual_seed(seed)`` in a forked RNG, so the same seed gives the
    same weights in any process.
    """
    import timm

    kwargs: dict[str, Any] = {"num_classes": 0, **overrides}
    if hub_pos_embed:
        kwargs.update(img_size=HUB_IMG_SIZE, dynamic_img_size=True)
    else:
        kwargs["img_size"] = img_size
    if depth is not None:
        kwargs["depth"] = depth
    if pretrained and weights:
        model = timm.create_model(model_id, pretrained=False, **kwargs)
        load_backbone_weights(model, weights)
        logger.info("loaded %s weights from %s", model_id, weights)
    elif pretrained:
        check_hub_reachable(model_id, role)
        logger.info("loading pretrained %s from the model hub", model_id)
        try:
            model = timm.create_model(model_id, pretrained=True, **kwargs)
        except (OSError, RuntimeError, ValueError) as e:
            raise RuntimeError(f"cannot load pretrained weights for {model_id!r} (hub cache {hf_cache_dir()}; "
                               f"a local copy goes in {_weights_setting(role)}): {e}") from e
    else:
        if seed is None:
            raise ValueError(f"{model_id}: a random-init stand-in needs a seed")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(model_id, pretrained=False, **kwargs)
    return use_hub_pos_embed(model) if hub_pos_embed else model


def token_spec(enc: EncodersConfig, role: str) -> dict[str, Any]:
    """The :attr:`TokenEncoder.spec` of ``from_config(enc, role)`` without weights or downloads.

    The architecture is built on the meta device (no memory, no hub), which also checks that the
    timm id exists and yields one CLS token and no register tokens.
    """
    if role not in ROLES:
        raise ValueError(f"unknown token encoder role {role!r}; expected one of {list(ROLES)}")
    if enc.pretrained:
        model_id = enc.image_encoder if role == "image" else enc.pose_encoder
        depth, seed = None, None
    else:
        model_id = enc.standin_image_encoder if role == "image" else enc.standin_pose_encoder
        depth, seed = enc.standin_depth, enc.standin_seed + _ROLE_SEED_OFFSET[role]
    with torch.device("meta"):
        model = build_backbone(model_id, pretrained=False, img_size=enc.token_input_size, depth=depth, seed=seed or 0,
                               hub_pos_embed=enc.pretrained)
    return TokenEncoder(model, role=role, model_id=model_id, standin=not enc.pretrained,
                        input_size=enc.token_input_size, seed=seed, depth=depth, device="meta").spec


def encoder_weights_setting(enc: EncodersConfig, role: str) -> str:
    """The local weights file configured for a pretrained ``role`` encoder ("" = the hub)."""
    return enc.image_encoder_weights if role == "image" else enc.pose_encoder_weights


class TokenEncoder:
    """A frozen DINOv2 encoder returning ``[CLS; patches]`` tokens.

    Attributes:
        model: the timm ViT (eval, no grad).
        role: "image" (source appearance) or "pose" (rendered skeleton).
        num_tokens: S = 1 + (input_size / 14)^2.
        dim: token width (Dr for images, Dp for poses).
    """

    def __init__(self, model: torch.nn.Module, *, role: str, model_id: str, standin: bool, input_size: int,
                 seed: Optional[int] = None, depth: Optional[int] = None, device: str | torch.device = "cpu") -> None:
        if role not in ROLES:
            raise ValueError(f"unknown token encoder role {role!r}; expected one of {list(ROLES)}")
        prefix = int(getattr(model, "num_prefix_tokens", 1))
        regs = int(getattr(model, "num_reg_tokens", 0))
        if prefix != 1 or regs != 0:
            raise ValueError(f"{model_id}: expected exactly one prefix token (CLS) and no register tokens, "
                             f"got num_prefix_tokens={prefix}, num_reg_tokens={regs}")
        self.model = model.to(device).eval().requires_grad_(False)
        self.role, self.model_id, self.standin = role, model_id, standin
        self.input_size, self.seed, self.depth = input_size, seed, depth
        self.device = torch.device(device)
        self.precision = "bf16" if self.device.type == "cuda" else "fp32"  # see xmdpt.precision
        self.num_tokens = 1 + (input_size // PATCH_SIZE) ** 2
        self.dim = int(model.embed_dim)

    @classmethod
    def from_config(cls, enc: EncodersConfig, role: str, device: str | torch.device = "cpu") -> "TokenEncoder":
        """The paper's pretrained encoder (``enc.pretrained``) or the seeded stand-in for ``role``."""
        if role not in ROLES:
            raise ValueError(f"unknown token encoder role {role!r}; expected one of {list(ROLES)}")
        if enc.pretrained:
            model_id = enc.image_encoder if role == "image" else enc.pose_encoder
            model = build_backbone(model_id, pretrained=True, img_size=enc.token_input_size, hub_pos_embed=True,
                                   weights=encoder_weights_setting(enc, role) or None, role=role)
            return cls(model, role=role, model_id=model_id, standin=False, input_size=enc.token_input_size,
                       device=device)
        model_id = enc.standin_image_encoder if role == "image" else enc.standin_pose_encoder
        seed = enc.standin_seed + _ROLE_SEED_OFFSET[role]
        model = build_backbone(model_id, pretrained=False, img_size=enc.token_input_size, depth=enc.standin_depth,
                               seed=seed)
        logger.warning("%s token encoder: random-feature STAND-IN %s (depth %d, seed %d), not DINOv2 weights",
                       role, model_id, enc.standin_depth, seed)
        return cls(model, role=role, model_id=model_id, standin=True, input_size=enc.token_input_size,
                   seed=seed, depth=enc.standin_depth, device=device)

    @classmethod
    def from_weights(cls, enc: EncodersConfig, role: str, uri: str, device: str | torch.device = "cpu") -> "TokenEncoder":
        """Rebuild the encoder of ``from_config(enc, role)`` and load saved safetensors weights from ``uri``.

        No hub access: the architecture comes from the config, the weights from the file.
        """
        from safetensors.torch import load as load_safetensors

        if enc.pretrained:
            model_id = enc.image_encoder if role == "image" else enc.pose_encoder
            depth, seed, standin = None, None, False
        else:
            model_id = enc.standin_image_encoder if role == "image" else enc.standin_pose_encoder
            depth, seed, standin = enc.standin_depth, enc.standin_seed + _ROLE_SEED_OFFSET[role], True
        model = build_backbone(model_id, pretrained=False, img_size=enc.token_input_size, depth=depth, seed=seed or 0,
                               hub_pos_embed=enc.pretrained)
        fs, path = filesystem(uri)
        with fs.open(path, "rb") as f:
            state = load_safetensors(f.read())
        model.load_state_dict(state, strict=True)
        return cls(model, role=role, model_id=model_id, standin=standin, input_size=enc.token_input_size,
                   seed=seed, depth=depth, device=device)

    @property
    def spec(self) -> dict[str, Any]:
        """What produced the tokens: id, stand-in flag, seed, depth, input size, token shape."""
        return {"id": self.model_id, "role": self.role, "standin": self.standin, "seed": self.seed,
                "depth": self.depth, "input_size": self.input_size, "num_tokens": self.num_tokens, "dim": self.dim,
                "label": "random-feature stand-in" if self.standin else "pretrained DINOv2"}

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens of prepared inputs.

        Args:
            x: (N, 3, input_size, input_size), from :func:`prepare_image` / :func:`prepare_pose`.

        Returns:
            (N, S, D) float32: the normed ``[CLS; patches]`` of the last block.
        """
        if x.ndim != 4 or x.shape[1:] != (3, self.input_size, self.input_size):
            raise ValueError(f"{self.model_id}: expected (N, 3, {self.input_size}, {self.input_size}) inputs, "
                             f"got {tuple(x.shape)}; prepare them with prepare_image/prepare_pose")
        x = x.to(self.device, torch.float32)
        with autocast_context(self.device, self.precision):  # bf16: as the authors' DINO passes on CUDA
            tokens = self.model.forward_features(x)  # (N, S, D)
        if tokens.shape[1] != self.num_tokens:
            raise RuntimeError(f"{self.model_id}: got {tokens.shape[1]} tokens, expected {self.num_tokens}")
        return tokens.float()

    # ---- persistence ----
    def state_bytes(self) -> bytes:
        """The weights as safetensors bytes."""
        from safetensors.torch import save as save_safetensors

        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        return save_safetensors(state, metadata={"model_id": self.model_id, "role": self.role,
                                                 "standin": str(self.standin), "seed": str(self.seed)})

    def save(self, uri: str) -> str:
        """Write the weights to ``uri`` (safetensors; local path or URL). Returns ``uri``."""
        fs, path = filesystem(uri)
        parent = path.rsplit("/", 1)[0]
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with fs.open(path, "wb") as f:
            f.write(self.state_bytes())
        return uri

    def fingerprint(self) -> str:
        """sha256 of the weights (compare encoders across processes)."""
        h = hashlib.sha256()
        for k, v in sorted(self.model.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()
