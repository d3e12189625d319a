"""A diffusers model folder (or hub id) as a DiffusionModel: schedule, target and time from its configs.

Needs the optional ``diffusers`` package (``pip install "diffbench[diffusers]"``), imported only
when such a model is loaded. The noise schedule and prediction target come from the scheduler
config, never from the weights (see MODELS.md); sampling choices in that config (spacing, solver,
clipping) belong to the suite and are recorded as unused. Supported denoisers: ``UNet2DModel``
(unconditional or class-conditional), ``DiTTransformer2DModel`` (class-conditional, null class
for guidance), ``UNet2DConditionModel`` with a CLIP text encoder (``prompts`` option); a ``vae``
makes it a latent model whose samples are decoded after the timed sampling.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from diffbench.checkpoints import file_sha256
from diffbench.conditioning import ClassLabels, Prompts, read_prompts
from diffbench.denoiser import DiffusionModel
from diffbench.noise import DiscreteVP, NoiseSchedule, RectifiedFlow, check_train_steps
from diffbench.targets import TARGETS

INSTALL = 'pip install "diffbench[diffusers]"'
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
# Variance-preserving discrete schedulers: all share the β table keys below.
VP_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler",
                 "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler",
                 "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler",
                 "DEISMultistepScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
                 "DPMSolverSDEScheduler", "SASolverScheduler", "LCMScheduler", "TCDScheduler")
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
# Keys that define the model (its training schedule and target); all others are sampling choices.
VP_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
           "rescale_betas_zero_snr", "prediction_type")
FLOW_KEYS = ("num_train_timesteps", "shift")
# Model-defining keys diffbench cannot honour: key -> value that is fine.
VP_REFUSED = {"timestep_type": "discrete", "use_flow_sigmas": False}
FLOW_REFUSED = {"use_dynamic_shifting": False, "shift_terminal": None, "invert_sigmas": False}
ZERO_SNR_ALPHA = 2.0 ** -24  # ᾱ_T used for a zero terminal SNR, as diffusers' Euler and DPM schedulers do
DENOISER_FOLDERS = ("unet", "transformer")


class ConfigError(ValueError):
    """A diffusers config value diffbench cannot honour; the message names the file and field."""


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise ValueError(f"model 'diffusers' needs the diffusers package: {INSTALL}") from None
    return diffusers


MAX_JSON_BYTES = 16 << 20  # a config is a few kB; a trained β table for 100,000 steps is ~2 MB


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
        if len(raw) > MAX_JSON_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_JSON_BYTES >> 20} MiB; not a diffusers config")
        data = json.loads(raw)
    except ConfigError:
        raise
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON
        text = (str(getattr(exc, "strerror", None) or exc).splitlines() or [""])[0]
        raise ConfigError(f"{path}: cannot read JSON ({type(exc).__name__}: {text})") from None
    except RecursionError:
        raise ConfigError(f"{path}: JSON nested too deeply to be a config") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


# --- scheduler config → noise schedule, target, network time ------------------------------------

def _class_defaults(cls: type) -> dict[str, Any]:
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _refuse(config: dict[str, Any], refused: dict[str, Any], where: str) -> None:
    for key, fine in refused.items():
        if config.get(key) not in (fine, None):
            raise ConfigError(f"{where}: {key}={config[key]!r} is not supported by diffbench (only {fine!r})")


def schedule_from_config(config: dict[str, Any], where: str = "scheduler_config.json"
                         ) -> tuple[NoiseSchedule, str, Callable[[float, float], float] | None, dict[str, Any]]:
    """(noise schedule, target name, network-time map, recorded info) from a diffusers scheduler config."""
    diffusers = _diffusers()
    name = config.get("_class_name")
    if name not in VP_SCHEDULERS + FLOW_SCHEDULERS:
        raise ConfigError(f"{where}: _class_name={name!r} is not a scheduler diffbench can read; supported: "
                          f"{', '.join(VP_SCHEDULERS + FLOW_SCHEDULERS)}")
    cls = getattr(diffusers, name, None)
    if cls is None:
        raise ConfigError(f"{where}: _class_name={name!r} is not in diffusers {diffusers.__version__}")
    defaults = _class_defaults(cls)
    keys = FLOW_KEYS if name in FLOW_SCHEDULERS else VP_KEYS
    filled = {k: defaults[k] for k in keys if k not in config and k in defaults}
    values = {**filled, **{k: config[k] for k in keys if k in config}}
    try:  # before diffusers allocates its tables
        check_train_steps(values.get("num_train_timesteps", 1000), "num_train_timesteps")
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if values.get("trained_betas") is not None:
        betas = values["trained_betas"]
        if not (isinstance(betas, list) and all(isinstance(b, (int, float)) and not isinstance(b, bool)
                                                and math.isfinite(b) for b in betas)):
            raise ConfigError(f"{where}: trained_betas must be a list of finite numbers")
    unused = sorted(k for k in config if not k.startswith("_") and k not in keys)
    info: dict[str, Any] = {"scheduler_class": name, "config_defaults_used": filled, "config_keys_unused": unused}
    if name in FLOW_SCHEDULERS:
        _refuse(config, FLOW_REFUSED, where)
        return _flow(values, where, info)
    _refuse(config, VP_REFUSED, where)
    return _vp(cls, values, where, info)


def _vp(cls: type, values: dict[str, Any], where: str, info: dict[str, Any]):
    pred = values.get("prediction_type", "epsilon")
    if pred not in PREDICTION_TYPES:
        raise ConfigError(f"{where}: prediction_type={pred!r} is not supported; use one of "
                          f"{', '.join(PREDICTION_TYPES)}")
    try:  # diffusers' own β arithmetic (float32, as the model was trained), not a re-derivation
        alphas_cumprod = cls(**values).alphas_cumprod.double().numpy()
    except NotImplementedError as exc:
        raise ConfigError(f"{where}: beta_schedule={values.get('beta_schedule')!r}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    alphas_cumprod = alphas_cumprod.copy()
    if alphas_cumprod[-1] <= 0.0:  # zero terminal SNR (Lin et al. 2024): σ_T = ∞ has no σ-space point
        if alphas_cumprod[-2] > ZERO_SNR_ALPHA:
            alphas_cumprod[-1] = ZERO_SNR_ALPHA
            info["terminal_alphas_cumprod"] = "2**-24 (zero terminal SNR, clamped as diffusers' Euler/DPM do)"
        else:  # 2^-24 would not be below ᾱ_{T-1}: continue the table's last ratio instead
            alphas_cumprod[-1] = alphas_cumprod[-2] ** 2 / alphas_cumprod[-3]
            info["terminal_alphas_cumprod"] = (f"{alphas_cumprod[-1]:.6g} (zero terminal SNR; ᾱ_(T-1)²/ᾱ_(T-2), "
                                               "since 2**-24 is not below ᾱ_(T-1))")
    try:
        schedule = DiscreteVP(alphas_cumprod=alphas_cumprod)
    except ValueError as exc:
        raise ConfigError(f"{where}: the β schedule gives an unusable ᾱ table: {exc}") from None
    schedule.name = f"diffusers-{values.get('beta_schedule', 'linear')}" if values.get("trained_betas") is None \
        else "diffusers-trained-betas"
    info.update({k: v for k, v in values.items() if k != "trained_betas"})
    return schedule, PREDICTION_TYPES[pred], None, info


def _flow(values: dict[str, Any], where: str, info: dict[str, Any]):
    steps = int(values.get("num_train_timesteps", 1000))
    shift = values.get("shift", 1.0)
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not 0 < shift < math.inf:
        raise ConfigError(f"{where}: shift={shift!r} must be a positive finite number")
    shift = float(shift)
    # diffusers' flow grid reaches s = shift(1/T) at the low end and s = 1 (σ = ∞) at the top; diffbench
    # starts one training step below pure noise, s = shift(1 - 1/T): σ_max = shift (T - 1)
    schedule = RectifiedFlow(sigma_min=shift / (steps - 1), sigma_max=shift * (steps - 1), shift=shift)
    info.update(values)

    def time_input(sigma: float, t: float) -> float:  # network time: flow time s times T
        return sigma / (1.0 + sigma) * steps

    return schedule, "flow", time_input, info


# --- the folder: denoiser, text encoder, VAE ------------------------------------------------------

def resolve_path(path: str, allow_download: bool) -> Path:
    """A local folder as given, else a hub id from the local cache, else (when allowed) downloaded."""
    if not path:
        raise ValueError("model 'diffusers' needs options.path: a diffusers folder or hub id")
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise ValueError(f"path {path!r} is a file; give the diffusers model folder")
    if path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise ValueError(f"path {path!r}: no such folder (and not a hub id owner/name)")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.safetensors"]
    try:
        return Path(snapshot_download(path, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if not allow_download or offline:
        why = "HF_HUB_OFFLINE is set" if offline else "pass allow_download: true to download it"
        raise ValueError(f"path {path!r}: no such folder and not in the local hub cache ({why})")
    try:
        return Path(snapshot_download(path, allow_patterns=patterns))
    except Exception as exc:
        first = (str(exc).splitlines() or [""])[0]
        raise ValueError(f"path {path!r}: download failed: {type(exc).__name__}: {first}") from None


def _folders(root: Path) -> dict[str, Path]:
    """Component folders: denoiser, scheduler and optional vae/text_encoder/tokenizer (or a legacy flat folder)."""
    if (root / "model_index.json").is_file():
        found = {name: root / name for name in ("scheduler", "vae", "text_encoder", "tokenizer")
                 if (root / name).is_dir()}
        for name in DENOISER_FOLDERS:
            if (root / name / "config.json").is_file():
                found["denoiser"] = root / name
                break
        if "scheduler" not in found and (root / "scheduler_config.json").is_file():
            found["scheduler"] = root
        if "denoiser" not in found and (root / "config.json").is_file():
            found["denoiser"] = root  # legacy layout: weights and config at the top
    elif (root / "config.json").is_file() and (root / "scheduler_config.json").is_file():
        found = {"denoiser": root, "scheduler": root}
    else:
        raise ValueError(f"{root}: not a diffusers model folder (no model_index.json, or config.json with "
                         "scheduler_config.json)")
    for need in ("denoiser", "scheduler"):
        if need not in found:
            raise ValueError(f"{root}: no {need} (looked for {', '.join(DENOISER_FOLDERS) if need == 'denoiser' else 'scheduler/'})")
    return found


def _weights_hash(folders: list[Path]) -> str:
    h = hashlib.sha256()
    for folder in folders:
        for f in sorted(folder.iterdir()):
            if f.is_file() and f.suffix in (".safetensors", ".bin", ".json", ".txt"):
                h.update(f"{folder.name}/{f.name}:{file_sha256(f)}\n".encode())
    return h.hexdigest()


def _load(folder: Path, library: Any) -> Any:
    config = _read_json(folder / "config.json")
    name = config.get("_class_name") or (config.get("architectures") or [None])[0]
    # the config names a class; only the library's model classes may load (a pipeline class, for
    # one, would import the modules its model_index.json names)
    base = library.ModelMixin if library.__name__ == "diffusers" else library.PreTrainedModel
    cls = getattr(library, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(f"{folder / 'config.json'}: class {name!r} is not a {library.__name__} model class")
    try:  # safetensors preferred; a .bin is read with torch.load(weights_only=True): no pickle code runs
        extra = {"low_cpu_mem_usage": False} if library.__name__ == "diffusers" else {"trust_remote_code": False}
        module = cls.from_pretrained(folder, local_files_only=True, **extra)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder}: cannot load {name}: {str(exc).splitlines()[0]}") from None
    return module.eval().requires_grad_(False)


class DiffusersNetwork(torch.nn.Module):
    """network(x_t, t, cond) for a diffusers denoiser (cond passed as ``cond_kw``; a variance half dropped),
    with the folder's text encoder and VAE, so that moving or copying the network moves them too."""

    def __init__(self, denoiser: torch.nn.Module, cond_kw: str, channels: int | None) -> None:
        super().__init__()
        self.denoiser, self.cond_kw, self.channels = denoiser, cond_kw, channels
        self.text_encoder: torch.nn.Module | None = None
        self.tokenizer: Any = None
        self.prompt_length = 0
        self.vae: torch.nn.Module | None = None
        self.vae_scale, self.vae_shift = 1.0, 0.0

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        out = self.denoiser(x_t, t, **{self.cond_kw: cond}, return_dict=False)[0]
        return out if self.channels is None else out[:, : self.channels]

    def encode_text(self, texts: list[str]) -> Tensor:
        """CLIP last hidden state of padded prompts, as Stable Diffusion pipelines condition the UNet."""
        ids = self.tokenizer(texts, padding="max_length", max_length=self.prompt_length, truncation=True,
                             return_tensors="pt").input_ids
        return self.text_encoder(ids.to(next(self.text_encoder.parameters()).device), return_dict=False)[0]

    def decode(self, z: Tensor) -> Tensor:
        """Images from latents: VAE decode of z / scaling_factor + shift_factor."""
        with torch.inference_mode():
            return self.vae.decode(z / self.vae_scale + self.vae_shift, return_dict=False)[0]


MAX_SIDE = 1 << 16  # pixels (or latent cells) per side; channels at most 4096


def _dimension(value: Any, limit: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= limit


def _shape(config: dict[str, Any], where: Path) -> tuple[int, ...]:
    size = config.get("sample_size")
    channels = config.get("in_channels")
    if size is None or channels is None:
        raise ConfigError(f"{where / 'config.json'}: needs sample_size and in_channels to know the sample shape")
    side = [size, size] if not isinstance(size, list) else size
    if not (len(side) == 2 and all(_dimension(v, MAX_SIDE) for v in side) and _dimension(channels, 4096)):
        raise ConfigError(f"{where / 'config.json'}: sample_size {size!r} and in_channels {channels!r} must be "
                          f"positive integers (at most {MAX_SIDE} per side, 4096 channels)")
    return (channels, side[0], side[1])


def _learned_variance(config: dict[str, Any], where: Path) -> int | None:
    """Channels to keep when the network also outputs a variance (out = 2 × in channels), else None."""
    cin, cout = config.get("in_channels"), config.get("out_channels")
    if cout is None or cout == cin:
        return None
    if cout == 2 * cin:
        return int(cin)
    raise ConfigError(f"{where / 'config.json'}: out_channels={cout} is neither in_channels ({cin}) nor twice it")


def _table_rows(module: torch.nn.Module, name: str) -> int | None:
    emb = module.get_submodule(name) if name else None
    return getattr(emb, "num_embeddings", None)


def _class_condition(denoiser: torch.nn.Module, config: dict[str, Any], num_classes: int, where: Path):
    """ClassLabels for a class-conditional UNet2DModel/DiT, with whether label num_classes (null) exists."""
    if config.get("_class_name") == "UNet2DModel":
        if config.get("num_class_embeds") is None:
            if num_classes:
                raise ConfigError(f"{where / 'config.json'}: num_class_embeds is null: the UNet is unconditional, "
                                  "so options.num_classes must stay 0")
            return None
        rows = _table_rows(denoiser, "class_embedding")
    else:  # DiT: LabelEmbedding with one extra row for the null class when trained with label dropout
        rows = next((m.embedding_table.num_embeddings for m in denoiser.modules()
                     if type(m).__name__ == "LabelEmbedding"), None)
        if rows is None:
            raise ConfigError(f"{where}: {config.get('_class_name')} has no label embedding")
    classes = num_classes or (rows if config.get("_class_name") == "UNet2DModel" else rows - 1)
    if not 0 < classes <= rows:
        raise ValueError(f"options.num_classes={num_classes} does not fit the label table of {rows} rows")
    return ClassLabels(classes, has_null=rows > classes)  # guidance needs the null label


def _add_text_encoder(network: DiffusersNetwork, folders: dict[str, Path], prompts: str) -> Prompts:
    """Prompts encoded by the folder's CLIP text encoder (once per batch, outside the timed loop)."""
    if not prompts:
        raise ValueError("this text-conditioned model needs options.prompts: a text file with one prompt per line")
    for need in ("text_encoder", "tokenizer"):
        if need not in folders:
            raise ValueError(f"text-conditioned model without a {need}/ folder")
    import transformers

    network.text_encoder = _load(folders["text_encoder"], transformers)
    network.tokenizer = transformers.AutoTokenizer.from_pretrained(folders["tokenizer"], local_files_only=True,
                                                                   trust_remote_code=False)
    network.prompt_length = network.tokenizer.model_max_length
    return Prompts(read_prompts(prompts), network.encode_text, source=str(prompts))


def _add_vae(network: DiffusersNetwork, folder: Path) -> dict[str, Any]:
    network.vae = _load(folder, _diffusers())
    network.vae_scale = float(network.vae.config.get("scaling_factor") or 0.18215)
    network.vae_shift = float(network.vae.config.get("shift_factor") or 0.0)
    return {"vae_class": type(network.vae).__name__, "vae_scaling_factor": network.vae_scale,
            "vae_shift_factor": network.vae_shift}


def diffusers_model(*, path: str = "", prompts: str = "", num_classes: int = 0,
                    allow_download: bool = False) -> DiffusionModel:
    """A diffusers model folder or hub id: schedule and target from its scheduler config (diffusers library)."""
    diffusers = _diffusers()
    root = resolve_path(path, allow_download)
    folders = _folders(root)
    sched_file = folders["scheduler"] / "scheduler_config.json"
    schedule, target, time_input, info = schedule_from_config(_read_json(sched_file), str(sched_file))
    den_dir = folders["denoiser"]
    config = _read_json(den_dir / "config.json")
    kind = config.get("_class_name")
    if kind == "UNet2DModel" and config.get("time_embedding_type", "positional") != "positional":
        raise ConfigError(f"{den_dir / 'config.json'}: time_embedding_type={config['time_embedding_type']!r} "
                          "(score-SDE σ input) is not supported; only 'positional'")
    if kind not in ("UNet2DModel", "DiTTransformer2DModel", "UNet2DConditionModel"):
        raise ConfigError(f"{den_dir / 'config.json'}: _class_name={kind!r} is not supported; supported: "
                          "UNet2DModel, DiTTransformer2DModel, UNet2DConditionModel")
    denoiser = _load(den_dir, diffusers)
    text = kind == "UNet2DConditionModel"
    network = DiffusersNetwork(denoiser, "encoder_hidden_states" if text else "class_labels",
                               _learned_variance(config, den_dir))
    if text:
        condition = _add_text_encoder(network, folders, prompts)
    elif prompts:
        raise ValueError(f"options.prompts given, but {kind} is not text-conditioned")
    else:
        condition = _class_condition(denoiser, config, num_classes, den_dir)
    latent = _add_vae(network, folders["vae"]) if "vae" in folders else {}
    info.update({"path": str(path), "denoiser_class": kind, **latent,
                 "learned_variance_dropped": _learned_variance(config, den_dir) is not None})
    return DiffusionModel(
        name="diffusers", network=network, schedule=schedule, target=TARGETS[target], shape=_shape(config, den_dir),
        num_classes=condition.num_classes if isinstance(condition, ClassLabels) else None, condition=condition,
        checkpoint_hash=_weights_hash([p for k, p in folders.items()]), dataset=None, data_range=(-1.0, 1.0),
        info=info, time_input=time_input, decoder=network.decode if latent else None,
    )


diffusers_model.option_help = {
    "path": "a diffusers model folder (model_index.json, scheduler/, unet/ or transformer/), relative to the suite "
            "file; a hub id only with allow_download",
    "prompts": "text file of prompts, one a line, for text-conditioned models (relative to the suite file)",
    "num_classes": "class labels 0..num_classes-1 for class-conditional models (0: from the config)",
    "allow_download": "let diffusers fetch a hub id (off: nothing downloads at run time)",
}
diffusers_model.path_options = {"path": "path-or-id", "prompts": "path"}
