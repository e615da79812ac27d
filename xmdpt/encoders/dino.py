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
from typing import Any, Optional

import torch
import torch.nn.functional as F

from xmdpt.core.config import EncodersConfig
from xmdpt.encoders.dino_backbone import PATCH_SIZE, build_backbone, standin_sincos_positions
from xmdpt.core.storage import filesystem
from xmdpt.core.precision import autocast_context

logger = logging.getLogger(__name__)

ROLES = ("image", "pose")
_ROLE_SEED_OFFSET = {"image": 0, "pose": 1}  # two stand-ins of the same architecture must differ
# token statistics saved beside a stand-in's weights (not timm keys: split off before load_state_dict)
_MEAN_KEY, _STD_KEY = "xmdpt_token_mean", "xmdpt_token_std"


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
        self.precision = "bf16" if self.device.type == "cuda" else "fp32"  # see xmdpt.core.precision
        self.num_tokens = 1 + (input_size // PATCH_SIZE) ** 2
        self.dim = int(model.embed_dim)
        self.token_mean: Optional[torch.Tensor] = None  # (S, D): see fit_standardization
        self.token_std: Optional[torch.Tensor] = None

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
        if enc.standin_pos_embed == "sincos":
            standin_sincos_positions(model)
        logger.warning("%s token encoder: random-feature STAND-IN %s (depth %d, seed %d, %s positions), not DINOv2 "
                       "weights", role, model_id, enc.standin_depth, seed, enc.standin_pos_embed)
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
        stats = {k: state.pop(k) for k in (_MEAN_KEY, _STD_KEY) if k in state}
        model.load_state_dict(state, strict=True)
        encoder = cls(model, role=role, model_id=model_id, standin=standin, input_size=enc.token_input_size,
                      seed=seed, depth=depth, device=device)
        if stats:
            if set(stats) != {_MEAN_KEY, _STD_KEY}:
                raise ValueError(f"{uri}: token statistics incomplete: has {sorted(stats)}, expected both "
                                 f"{_MEAN_KEY} and {_STD_KEY}")
            encoder.set_standardization(stats[_MEAN_KEY], stats[_STD_KEY])
        return encoder

    # ---- standardisation (stand-ins) ----
    def set_standardization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Tokens come out as ``(tokens - mean) / std``; ``mean``/``std`` are (S, D), ``std`` > 0."""
        shape = (self.num_tokens, self.dim)
        if tuple(mean.shape) != shape or tuple(std.shape) != shape:
            raise ValueError(f"{self.model_id}: token statistics of shape {tuple(mean.shape)}/{tuple(std.shape)}, "
                             f"expected {shape}")
        if not bool((std > 0).all()):
            raise ValueError(f"{self.model_id}: token std must be > 0 everywhere")
        self.token_mean = mean.detach().float().to(self.device)
        self.token_std = std.detach().float().to(self.device)

    def fit_standardization(self, raw: torch.Tensor, floor: float = 0.1) -> None:
        """Per-position, per-channel statistics of unstandardised tokens ``raw`` (M, S, D).

        The std is floored at ``floor`` times its median, so a position that never changes (a skeleton
        image's always-black corner) comes out near 0 instead of amplifying rounding noise.
        """
        if raw.ndim != 3 or raw.shape[0] < 2:
            raise ValueError(f"need (M >= 2, S, D) tokens to fit statistics, got {tuple(raw.shape)}")
        raw = raw.double()
        std = raw.std(dim=0)
        std = std.clamp_min(floor * float(std.median()))
        self.set_standardization(raw.mean(dim=0).float(), std.float())

    @property
    def spec(self) -> dict[str, Any]:
        """What produced the tokens: id, stand-in flag, seed, depth, input size, token shape."""
        return {"id": self.model_id, "role": self.role, "standin": self.standin, "seed": self.seed,
                "depth": self.depth, "input_size": self.input_size, "num_tokens": self.num_tokens, "dim": self.dim,
                "standardized": self.token_mean is not None,
                "label": "random-feature stand-in" if self.standin else "pretrained DINOv2"}

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens of prepared inputs.

        Args:
            x: (N, 3, input_size, input_size), from :func:`prepare_image` / :func:`prepare_pose`.

        Returns:
            (N, S, D) float32: the normed ``[CLS; patches]`` of the last block, standardised when the
            encoder has token statistics (:meth:`fit_standardization`).
        """
        tokens = self.raw_tokens(x)
        if self.token_mean is not None:
            tokens = (tokens - self.token_mean) / self.token_std
        return tokens

    @torch.no_grad()
    def raw_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`__call__` without the standardisation."""
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
        if self.token_mean is not None:
            state[_MEAN_KEY] = self.token_mean.cpu().contiguous()
            state[_STD_KEY] = self.token_std.cpu().contiguous()
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
        state = dict(self.model.state_dict())
        if self.token_mean is not None:
            state.update({_MEAN_KEY: self.token_mean, _STD_KEY: self.token_std})
        for k, v in sorted(state.items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()
