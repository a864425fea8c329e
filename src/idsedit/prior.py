"""Prior: one diffusers text-to-image pipeline behind a small surface.

Every distillation method talks to a diffusion model through :meth:`Prior.eps` only:

    eps_1, ..., eps_n = prior.eps([z_t_1, ..., z_t_n], t, [cond_1, ..., cond_n], guidance)

which runs ONE batched UNet call ``[uncond * z_t_1 .. uncond * z_t_n, cond_1 * z_t_1 .. cond_n * z_t_n]`` (the
official IDS batch order), converts v-predictions to eps, and applies classifier-free guidance
``eps = eps_u + w (eps_c - eps_u)``. Diffusers specifics (SDXL's pooled embeddings and time ids, dtypes, the VAE's
scaling factor) stay in this file.
"""

from __future__ import annotations

import json
import os
import re
import threading
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from . import diffusion as D
from .errors import ModelLoadError, IdseditError

BUNDLED_MODEL = Path(__file__).resolve().parent / "assets" / "mini-sd"

_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}
_PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")


@dataclass(frozen=True)
class Cond:
    """Text conditioning of one prompt, ready for classifier-free guidance.

    ``embeds`` is (2, L, D): row 0 the negative/unconditional prompt, row 1 the prompt. SDXL adds ``pooled``
    (2, P); its ``time_ids`` are built per call from the latent size.
    """

    prompt: str
    negative: str
    embeds: Tensor
    pooled: Tensor | None = None


@dataclass
class UNetCounter:
    """UNet calls made through the prior: forward calls, samples pushed through, backward passes."""

    forward: int = 0
    samples: int = 0
    backward: int = 0

    def snapshot(self) -> dict:
        return {"forward": self.forward, "samples": self.samples, "backward": self.backward}


TEXT_CACHE_SIZE = 256   # (prompt, negative) pairs kept by Prior.encode_text (least recently used dropped first)
CLIP_VOCAB_SIZE = 49408  # the open CLIP BPE vocabulary of every real Stable Diffusion text encoder


def check_device(name: str | None) -> None:
    """Raise IdseditError for a --device that torch cannot parse or that this machine does not have."""
    if name is None:
        return
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise IdseditError(f"unknown --device {name!r}: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise IdseditError(f"--device {name}: no CUDA GPU is usable by this PyTorch build: use --device cpu "
                               "(or install a CUDA build of PyTorch)")
        if dev.index is not None and dev.index >= count:
            raise IdseditError(f"--device {name}: only {count} CUDA device(s) exist (cuda:0..cuda:{count - 1})")
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise IdseditError(f"--device {name}: Apple MPS is not available here: use --device cpu")


def pick_device(device: str | None = None) -> torch.device:
    """The given device (checked), else CUDA, else MPS, else CPU."""
    if device:
        check_device(device)
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """The given dtype, else fp16 on CUDA/MPS (as the official code) and fp32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype:
        if dtype.lower() not in _DTYPES:
            raise IdseditError(f"unknown dtype {dtype!r}: use one of fp32, fp16, bf16")
        return _DTYPES[dtype.lower()]
    return torch.float16 if device.type in ("cuda", "mps") else torch.float32


class Prior:
    """A Stable-Diffusion-family pipeline (SD 1.x, SD 2.x eps or v, SDXL) seen as a score model.

    Build with :func:`load_prior` or ``Prior(pipe)``. The UNet, VAE and text encoders are frozen
    (``requires_grad_(False)``) and put in eval mode once, here; methods never touch them. The VAE runs in fp32.

    Sharing one prior between threads (a web server): the weights are read-only and every per-call state is
    per thread: ``with prior.counting() as calls:`` counts only the current thread's UNet calls, CDS's feature
    hooks capture only the registering thread's forwards, and the text cache is locked. ``prior.calls`` is the
    process-wide total. ``prior.lock`` (a re-entrant lock) is for callers: hold it for a whole edit when a
    server shares one prior and must run edits one at a time (e.g. to bound memory); nothing here takes it.
    """

    def __init__(self, pipe, *, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                 name: str = ""):
        unet = getattr(pipe.unet, "_orig_mod", pipe.unet)  # a torch.compile'd UNet is checked as the original
        unet_class = next((c.__name__ for c in type(unet).__mro__ if c.__name__ == "UNet2DConditionModel"),
                          type(unet).__name__)
        check_model_type(unet_class, unet.config, int(pipe.vae.config.latent_channels), name or type(pipe).__name__)
        self.device = pick_device(str(device) if device is not None else None)
        self.dtype = pick_dtype(self.device, dtype)
        self.name = name
        self.pipe = pipe
        for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
            module = getattr(pipe, part, None)
            if module is not None:
                module.requires_grad_(False).eval()
        self.unet = pipe.unet.to(self.device, self.dtype)
        self.vae = pipe.vae.to(self.device, torch.float32)
        for part in ("text_encoder", "text_encoder_2"):
            if getattr(pipe, part, None) is not None:
                getattr(pipe, part).to(self.device, self.dtype)
        self.is_sdxl = getattr(pipe, "text_encoder_2", None) is not None
        sched = pipe.scheduler
        self.prediction_type = sched.config.get("prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ModelLoadError(f"prediction type {self.prediction_type!r} is not supported (epsilon, v_prediction)")
        self.num_train_timesteps = int(sched.config.num_train_timesteps)
        self.alphas_cumprod = sched.alphas_cumprod.to(torch.float32).to(self.device)
        self.betas = sched.betas.to(torch.float32).to(self.device)
        self.alphas = sched.alphas.to(torch.float32).to(self.device)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.shift_factor = float(getattr(self.vae.config, "shift_factor", None) or 0.0)
        self.resolution = int(self.unet.config.sample_size) * self.vae_scale_factor
        self.latent_multiple = self.vae_scale_factor * 2 ** (len(self.unet.config.down_block_types) - 1)
        self.tokenizer = pipe.tokenizer
        self.max_tokens = int(self.tokenizer.model_max_length)
        self.calls = UNetCounter()      # every call from every thread
        self.lock = threading.RLock()   # hold for a whole edit when sharing this prior (see the class docstring)
        self._count_lock = threading.Lock()
        self._local = threading.local()  # .counters: the current thread's open counting() blocks
        self._text_cache: OrderedDict[tuple[str, str], Cond] = OrderedDict()
        self._text_lock = threading.Lock()
        self.vocabulary = closed_vocabulary(pipe)  # None: open (CLIP BPE) vocabulary, no prompt warnings
        folder = _pipeline_folder(pipe)
        self.is_bundled = folder is not None and folder.resolve() == BUNDLED_MODEL

    # ----------------------------------------------------------------------------------------------- counting
    @contextmanager
    def counting(self):
        """``with prior.counting() as calls:`` -> a UNetCounter of the UNet calls made by THIS thread in the block.

        Nested blocks each count their own calls; a backward pass is credited to the blocks open when its
        forward ran (autograd may run it on another thread).
        """
        counter = UNetCounter()
        stack = self._local.__dict__.setdefault("counters", [])
        stack.append(counter)
        try:
            yield counter
        finally:
            stack.remove(counter)

    def _counters(self) -> list[UNetCounter]:
        return [self.calls, *getattr(self._local, "counters", ())]

    def _count(self, counters: list[UNetCounter], forward: int = 0, samples: int = 0, backward: int = 0) -> None:
        with self._count_lock:
            for c in counters:
                c.forward += forward
                c.samples += samples
                c.backward += backward

    # ----------------------------------------------------------------------------------------------- text
    def check_prompt(self, prompt: str, what: str = "prompt") -> str:
        """Validate a prompt: error if empty; one-line warnings if longer than the text encoder's limit, or (for a
        closed-vocabulary prior such as the bundled mini prior) if it uses words outside the vocabulary."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise IdseditError(f"the {what} is empty: give a short description such as \"a photo of a cat\"")
        n = len(self.tokenizer(prompt).input_ids)
        if n > self.max_tokens:
            warnings.warn(f"the {what} has {n} tokens, more than this model's limit of {self.max_tokens}: "
                          f"it is truncated to the first {self.max_tokens - 2} tokens", stacklevel=2)
        unknown = self.unknown_words(prompt)
        if unknown:
            model = "the bundled mini prior" if self.is_bundled else "this model"
            warnings.warn(f"the {what} {prompt!r} has words that {model} does not know (unknown: {', '.join(unknown)}): "
                          "it was trained on a closed vocabulary; for real images pass --model with a Stable "
                          "Diffusion folder or hub id", stacklevel=2)
        return prompt

    def unknown_words(self, prompt: str) -> list[str]:
        """Words of ``prompt`` (lowercased letter runs, in order, once each) that are not whole tokens of a
        closed vocabulary; always [] for an open vocabulary (real Stable Diffusion)."""
        if self.vocabulary is None:
            return []
        words = dict.fromkeys(re.findall(r"[a-z]+", prompt.lower()))
        return [w for w in words if w not in self.vocabulary]

    @torch.no_grad()
    def encode_text(self, prompt: str, negative: str = "") -> Cond:
        """Embeddings of (negative, prompt), cached per pair (the TEXT_CACHE_SIZE most recently used pairs)."""
        key = (prompt, negative)
        with self._text_lock:  # one encoding at a time: catch_warnings below is process-global state
            if key in self._text_cache:
                self._text_cache.move_to_end(key)
                return self._text_cache[key]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # negative_prompt=None when none is given: SDXL's pipelines then use ZERO unconditional (and pooled)
                # embeddings when force_zeros_for_empty_prompt is set, as SDXL is sampled; SD 1.x/2.x encode "".
                out = self.pipe.encode_prompt(prompt=prompt, device=self.device, num_images_per_prompt=1,
                                              do_classifier_free_guidance=True, negative_prompt=negative or None)
            if self.is_sdxl:
                cond, uncond, pooled_c, pooled_u = out
                pooled = torch.cat([pooled_u, pooled_c]).to(self.dtype)
            else:
                cond, uncond = out[0], out[1]
                pooled = None
            embeds = torch.cat([uncond, cond]).to(self.dtype)
            self._text_cache[key] = Cond(prompt, negative, embeds, pooled)
            while len(self._text_cache) > TEXT_CACHE_SIZE:
                self._text_cache.popitem(last=False)
            return self._text_cache[key]

    def release_text_encoders(self) -> None:
        """Free the text encoders once every prompt is encoded (saves memory; encode_text then needs the cache)."""
        for part in ("text_encoder", "text_encoder_2"):
            if getattr(self.pipe, part, None) is not None:
                setattr(self.pipe, part, None)

    # ----------------------------------------------------------------------------------------------- VAE
    def encode(self, images: Tensor, *, grad: bool = False) -> Tensor:
        """Images (B,3,H,W) in [0,1] -> latents (B,C,H/f,W/f): (mean of q(z|x) - shift) * scaling_factor.

        ``grad=True`` keeps the autograd graph through the VAE encoder (render -> encode -> distill for radiance
        fields; the VAE's weights stay frozen, gradients flow to ``images``); ``grad=False`` runs without a graph.
        """
        with torch.enable_grad() if grad else torch.no_grad():
            x = images.to(self.device, self.vae.dtype) * 2 - 1
            z = self.vae.encode(x).latent_dist.mean
            return (z - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Latents -> images (B,3,H,W) in [0,1]."""
        x = self.vae.decode(z.to(self.device, torch.float32) / self.scaling_factor + self.shift_factor).sample
        return (x / 2 + 0.5).clamp(0, 1)

    # ----------------------------------------------------------------------------------------------- UNet
    def alpha_bar(self, t: Tensor | int, ndim: int = 4) -> Tensor:
        """ab_t, shaped (B,1,...,1)."""
        return D.gather(self.alphas_cumprod, D.timesteps_like(t, 1, self.device), ndim)

    def _added_cond(self, conds: list[Cond], rows: list[int], z: Tensor) -> dict | None:
        if not self.is_sdxl:
            return None
        h, w = z.shape[-2] * self.vae_scale_factor, z.shape[-1] * self.vae_scale_factor
        pooled = torch.cat([conds[i].pooled[r:r + 1] for r, i in rows])
        time_ids = torch.tensor([[h, w, 0, 0, h, w]], device=self.device, dtype=self.dtype).expand(len(rows), 6)
        return {"text_embeds": pooled.repeat_interleave(z.shape[0] // len(rows), 0),
                "time_ids": time_ids.repeat_interleave(z.shape[0] // len(rows), 0)}

    def model_output(self, z_t: Tensor, t: Tensor, embeds: Tensor, added: dict | None = None) -> Tensor:
        """Raw UNet output (eps or v) for a batch, in fp32. Counts the call (and its backward, if any)."""
        x = z_t.to(self.dtype)
        counters = self._counters()
        if x.requires_grad:  # count a backward pass when a gradient reaches the UNet's input (from any output)
            x = x.view_as(x)
            x.register_hook(partial(self._count_backward, counters))
        out = self.unet(x, t, encoder_hidden_states=embeds, added_cond_kwargs=added, return_dict=False)[0]
        self._count(counters, forward=1, samples=z_t.shape[0])
        return out.float() if out.dtype in (torch.float16, torch.bfloat16) else out

    def _count_backward(self, counters: list[UNetCounter], grad: Tensor) -> None:
        self._count(counters, backward=1)

    def to_eps(self, out: Tensor, z_t: Tensor, ab: Tensor) -> Tensor:
        """Model output -> eps (identity for epsilon models, eps = sqrt(1-ab) z_t + sqrt(ab) v for v models)."""
        return D.eps_from_v(z_t, out, ab) if self.prediction_type == "v_prediction" else out

    def eps(self, z_ts: list[Tensor], t: Tensor | int, conds: list[Cond], guidance: float) -> list[Tensor]:
        """Guided eps for each (z_t_i, cond_i), all in ONE UNet call.

        Batch order: [uncond z_t_1 .. uncond z_t_n, cond_1 z_t_1 .. cond_n z_t_n] (the official IDS order).
        ``guidance == 1`` runs only the conditional half. Each z_t_i is (B,C,H,W) with the same B.
        """
        n, b = len(z_ts), z_ts[0].shape[0]
        with_uncond = guidance != 1.0
        rows = ([(0, i) for i in range(n)] if with_uncond else []) + [(1, i) for i in range(n)]
        z = torch.cat([z_ts[i] for _, i in rows])                                  # (len(rows)*B, C, H, W)
        emb = torch.cat([conds[i].embeds[r:r + 1].expand(b, -1, -1) for r, i in rows])
        tt = D.timesteps_like(t, b, self.device).repeat(len(rows))                # (len(rows)*B,)
        out = self.model_output(z, tt, emb, self._added_cond(conds, rows, z))
        out = self.to_eps(out, z, D.gather(self.alphas_cumprod, tt, z.ndim))
        chunks = out.split(b)
        if not with_uncond:
            return list(chunks)
        return [D.cfg(chunks[i], chunks[n + i], guidance) for i in range(n)]


# --------------------------------------------------------------------------------------------------- model types
SUPPORTED_MODELS = ("idsedit supports plain text-to-image latent diffusion models (SD 1.x, SD 2.x, SDXL: a "
                    "UNet2DConditionModel whose input and output channels equal the VAE's latent channels)")


def check_model_type(unet_class: str, unet_config, latent_channels: int, where: str) -> None:
    """Raise a one-line ModelLoadError for a UNet that is not a plain text-to-image latent UNet: another class, or
    in/out channels that differ from the VAE's latent channels (inpainting: 9 in, InstructPix2Pix: 8 in), or
    extra class/image conditioning."""
    get = unet_config.get if isinstance(unet_config, dict) else lambda k, d=None: getattr(unet_config, k, d)
    n_in, n_out = get("in_channels", 4), get("out_channels", 4)
    kind = {9: " (an inpainting model)", 8: " (an InstructPix2Pix model)"}.get(n_in, "")
    if unet_class != "UNet2DConditionModel":
        problem = f"its UNet is a {unet_class}"
    elif n_in != latent_channels:
        problem = f"its UNet takes {n_in} input channels but its VAE makes {latent_channels}-channel latents{kind}"
    elif n_out != latent_channels:
        problem = f"its UNet predicts {n_out} channels but its VAE makes {latent_channels}-channel latents"
    elif get("class_embed_type") is not None or get("addition_embed_type") not in (None, "text_time"):
        extra = get("class_embed_type") or get("addition_embed_type")
        problem = f"its UNet needs extra {extra!r} conditioning"
    else:
        return
    raise ModelLoadError(f"{where} is not supported: {problem}; {SUPPORTED_MODELS}")


# --------------------------------------------------------------------------------------------------- vocabulary
MINI_EXPORT_RECORD = "training.json"  # written by idsedit.mini.export next to the pipeline (its "recipe" marks it)


def _pipeline_folder(pipe) -> Path | None:
    name = getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path", None)
    return Path(name) if name and Path(name).is_dir() else None


def closed_vocabulary(pipe) -> frozenset[str] | None:
    """The whole-word tokens of a closed-vocabulary prior, or None for an open (CLIP BPE) vocabulary.

    Closed: the tokenizer is smaller than CLIP's open 49408-token BPE vocabulary (every real Stable Diffusion
    has that one), or the pipeline's folder carries idsedit's mini-export record (``training.json`` with a
    ``recipe``). The words are the vocabulary's end-of-word tokens (``red</w>`` -> ``red``) made of letters.
    """
    tok = getattr(pipe, "tokenizer", None)
    if tok is None:
        return None
    vocab = tok.get_vocab()
    closed = len(vocab) < CLIP_VOCAB_SIZE
    folder = _pipeline_folder(pipe)
    if not closed and folder is not None and (folder / MINI_EXPORT_RECORD).is_file():
        try:
            closed = "recipe" in json.loads((folder / MINI_EXPORT_RECORD).read_text())
        except (OSError, ValueError):
            closed = False
    if not closed:
        return None
    return frozenset(w[:-4] for w in vocab if w.endswith("</w>") and w[:-4].isalpha())


# --------------------------------------------------------------------------------------------------- loading
def _looks_like_path(model: str) -> bool:
    """A local folder unless it has the hub's ``org/name`` shape and no such path exists."""
    return os.path.exists(model) or model.startswith((".", "/", "~")) or model.count("/") != 1


def check_model_folder(path: Path, allow_pickle: bool = False) -> None:
    """Raise ModelLoadError naming what is wrong with a diffusers folder (missing parts, pickle-only weights)."""
    if not path.is_dir():
        raise ModelLoadError(f"model folder {path} does not exist")
    index = path / "model_index.json"
    if not index.is_file():
        raise ModelLoadError(f"{path} is not a diffusers model folder: model_index.json is missing")
    try:
        parts = json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{index} is not valid JSON ({e})") from None
    for part in ("unet", "vae", "text_encoder"):
        if part not in parts or parts[part] in (None, [None, None]):
            raise ModelLoadError(f"{path} has no {part} in model_index.json: idsedit needs unet, vae and text_encoder")
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if part not in parts or parts[part] in (None, [None, None]):
            continue
        folder = path / part
        if not folder.is_dir():
            raise ModelLoadError(f"model folder {path} is missing its {part}/ folder")
        files = [f.name for f in folder.iterdir()]
        if not any(f.endswith(".safetensors") or f.endswith(".safetensors.index.json") for f in files):
            pickles = [f for f in files if f.endswith(_PICKLE_SUFFIXES)]
            if not pickles:
                raise ModelLoadError(f"model folder {path} has no weights in {part}/")
            if not allow_pickle:
                raise ModelLoadError(f"{path}/{part} has only pickle weights ({pickles[0]}); pickle files can run code: "
                                     "convert them to safetensors, or pass --allow-pickle if you trust the source")
    unet_class = parts["unet"][1] if isinstance(parts["unet"], list) and len(parts["unet"]) == 2 else None
    try:
        unet_cfg = json.loads((path / "unet" / "config.json").read_text())
        vae_cfg = json.loads((path / "vae" / "config.json").read_text())
    except (OSError, ValueError):
        return  # a missing or broken config is the loader's error to report
    check_model_type(unet_class or unet_cfg.get("_class_name", "?"), unet_cfg, int(vae_cfg.get("latent_channels", 4)),
                     f"model folder {path}")


def load_prior(model: str | os.PathLike | None = None, *, device: str | None = None, dtype: str | None = None,
               allow_pickle: bool = False) -> Prior:
    """Load a diffusers text-to-image pipeline as a :class:`Prior`.

    ``model``: a local diffusers folder or a hub id; None means the bundled mini prior. Weights load from
    safetensors only unless ``allow_pickle``.
    """
    if model is None:
        if not (BUNDLED_MODEL / "model_index.json").is_file():
            raise ModelLoadError("no model given and the bundled mini prior is not installed: pass --model with a "
                                 "diffusers folder or hub id")
        model = BUNDLED_MODEL
    model = str(model)
    local = _looks_like_path(model)
    if local:
        path = Path(model).expanduser()
        if path.is_file():
            raise ModelLoadError(f"{path} is a file: idsedit needs a diffusers model folder (model_index.json, unet/, "
                                 "vae/, text_encoder/, tokenizer/, scheduler/)")
        check_model_folder(path, allow_pickle)
        model = str(path)
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    from diffusers import DiffusionPipeline
    from safetensors import SafetensorError

    with quiet_libraries():
        # Only the libraries' load errors become "could not load" (a bug in our own code keeps its traceback).
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # allow_pickle: prefer safetensors, accept pickle where a part has nothing else (None);
                # otherwise safetensors only (True).
                pipe = DiffusionPipeline.from_pretrained(model, torch_dtype=dt,
                                                         use_safetensors=None if allow_pickle else True,
                                                         safety_checker=None, requires_safety_checker=False,
                                                         local_files_only=local)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError, SafetensorError) as e:
            reason = _first_sentence(e)
            if local:
                raise ModelLoadError(f"could not load the model folder {model}: {reason}") from None
            raise ModelLoadError(f"could not load {model!r}: it is not a local folder and the model hub did not "
                                 f"provide it ({reason}); pass --model with a local diffusers folder") from None
        _check_pipeline(pipe, model)
        return Prior(pipe, device=dev, dtype=dt, name=model)


_quiet_lock = threading.Lock()
_quiet_state: dict = {"depth": 0, "saved": []}   # nesting depth of quiet_libraries() and what the outermost saved


@contextmanager
def quiet_libraries():
    """diffusers and transformers log only errors and draw no model-loading bars inside the block; every global
    state changed here is restored exactly when the outermost block exits (blocks may nest and overlap across
    threads). huggingface_hub's download progress bars are left alone, so a first download shows its progress.

    (transformers' own ``disable_progress_bar()`` would also switch off huggingface_hub's bars for the whole
    process, so its module flag is set directly instead.)
    """
    with _quiet_lock:
        if _quiet_state["depth"] == 0:
            _quiet_state["saved"] = _silence_libraries()
        _quiet_state["depth"] += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_state["depth"] -= 1
            if _quiet_state["depth"] == 0:
                _restore_libraries(_quiet_state["saved"])


def _silence_libraries() -> list:
    """Set diffusers/transformers to errors only, no loading bars; return what to restore."""
    from diffusers.utils import logging as dlogging

    saved = [(dlogging, dlogging.get_verbosity(), dlogging.is_progress_bar_enabled())]
    dlogging.set_verbosity_error()
    dlogging.disable_progress_bar()
    try:
        from transformers.utils import logging as tlogging
    except ImportError:
        return saved
    saved.append((tlogging, tlogging.get_verbosity(), getattr(tlogging, "_tqdm_active", None)))
    tlogging.set_verbosity_error()
    if hasattr(tlogging, "_tqdm_active"):
        tlogging._tqdm_active = False   # transformers' "Loading weights" bar only, not huggingface_hub's
    return saved


def _restore_libraries(saved: list) -> None:
    for module, verbosity, bar in saved:
        module.set_verbosity(verbosity)
        if module.__name__.startswith("diffusers"):
            (module.enable_progress_bar if bar else module.disable_progress_bar)()
        elif bar is not None:
            module._tqdm_active = bar


def _first_sentence(e: BaseException, limit: int = 240) -> str:
    """The first sentence of an exception's message (whole words, at most ``limit`` characters)."""
    text = " ".join(str(e).split()) or type(e).__name__
    cut = text.find(". ")
    text = text[: cut + 1] if 0 < cut < limit else text
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def _check_pipeline(pipe, model: str) -> None:
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if getattr(pipe, part, None) is None:
            raise ModelLoadError(f"{model} loaded without a {part}: idsedit needs a Stable-Diffusion-family pipeline")
    if not hasattr(pipe, "encode_prompt"):
        raise ModelLoadError(f"{model} is a {type(pipe).__name__}, not a Stable-Diffusion-family pipeline")


def _quiet_transformers() -> None:
    """Silence transformers' import-time notices (e.g. about torchvision) for the WHOLE process (the benchmark's
    worker subprocesses; it also hides huggingface_hub's progress bars). Library code uses :func:`quiet_libraries`."""
    try:
        from transformers.utils import logging as tlogging
    except ImportError:
        return
    tlogging.set_verbosity_error()
    tlogging.disable_progress_bar()
