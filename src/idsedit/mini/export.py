"""Export the EMA weights of a training state as a diffusers StableDiffusionPipeline folder.

The folder loads with ``StableDiffusionPipeline.from_pretrained(path)`` offline: safetensors weights,
our CLIPTokenizer, PNDMScheduler (SD 1.x config), no safety checker. A ``training.json`` and a
``README.md`` record steps, minutes and hardware.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from ..errors import IdseditError


def build_pipeline(state: Path, ema: bool = True):
    """StableDiffusionPipeline from a state folder (EMA UNet + text encoder by default)."""
    from diffusers import StableDiffusionPipeline

    from .models import build_scheduler
    from .train import TrainConfig, build_text_and_unet, init_state, load_tensors, load_vae

    state = Path(state)
    if not (state / "unet_ema.safetensors").exists():
        raise IdseditError(f"no trained UNet in {state}: run `python -m idsedit.mini.train --stage unet` first")
    if not (state / "config.json").exists():
        raise IdseditError(f"{state} has no config.json: it is not a mini-prior training state folder")
    cfg = init_state(TrainConfig(state=state), world=None)
    vae = load_vae(cfg)
    if vae.config.scaling_factor == 1.0:
        raise IdseditError(f"{state}/vae.json has no scaling_factor: run the unet stage once (it measures it)")
    tok, te, unet = build_text_and_unet(cfg)
    suffix = "_ema" if ema else ""
    te.load_state_dict(load_tensors(state / f"text_encoder{suffix}.safetensors"))
    unet.load_state_dict(load_tensors(state / f"unet{suffix}.safetensors"))
    return StableDiffusionPipeline(vae=vae, text_encoder=te.eval(), tokenizer=tok, unet=unet.eval(),
                                   scheduler=build_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def training_record(state: Path) -> dict:
    """Steps, minutes, hardware and recipe of a state folder (for training.json)."""
    from .train import read_json

    state = Path(state)
    vae, dec, unet, cfg = (read_json(state / n, {}) for n in ("vae.json", "vae_decoder.json", "unet.json",
                                                               "config.json"))
    return {
        "vae": {k: vae.get(k) for k in ("step", "minutes", "val_psnr", "latent_std", "scaling_factor")},
        "vae_decoder_finetune": {k: dec.get(k) for k in ("step", "minutes", "val_psnr", "layers_per_block", "grown_from")
                                 if k in dec} if dec else None,
        "unet": {k: unet.get(k) for k in ("step", "minutes")},
        "unet_loss_history": unet.get("history", [])[-20:],
        "hardware": unet.get("hardware") or vae.get("hardware"),
        "recipe": cfg,
        "exported_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


README = """# idsedit mini-sd: the bundled shapes-world prior

A small text-to-image latent diffusion model in diffusers' StableDiffusionPipeline format, trained
from scratch by `python -m idsedit.mini.train` on idsedit's synthetic shapes world (64x64 renders{views},
captions such as "a red cube" or "a small red cube on a blue floor"). It exists so that idsedit
runs offline out of the box; it knows nothing outside the shapes world.

- VAE (AutoencoderKL) 64x64x3 <-> 16x16x4, scaling_factor {sf:.4f}; {vae_steps} steps, {vae_min:.1f} min{dec}; held-out PSNR {psnr:.2f} dB
- UNet2DConditionModel + CLIPTextModel (EMA weights), {unet_steps} steps, {unet_min:.1f} min{noise}
- Scheduler: SD 1.x (1000 steps, scaled_linear 0.00085-0.012, epsilon, steps_offset 1)
- Hardware: {hw}

Details: training.json. Load with `diffusers.StableDiffusionPipeline.from_pretrained(this_folder)`.
"""


def noise_recipe(recipe: dict) -> str:
    """The training noise's fine-tunes named in a recipe (config.json), e.g. "; training noise: offset 0.1 from
    step 14550, per-channel scale jitter 0.15 from step 17200", or "" for plain Gaussian noise throughout."""
    parts = []
    if recipe.get("unet_noise_offset", 0) > 0:
        parts.append(f"offset {recipe['unet_noise_offset']:g} from step {recipe.get('unet_noise_offset_start', 0)}")
    if recipe.get("unet_noise_jitter", 0) > 0:
        where = f" where t >= {recipe['unet_noise_jitter_min_t']}" if recipe.get("unet_noise_jitter_min_t", 0) else ""
        parts.append(f"per-channel scale jitter {recipe['unet_noise_jitter']:g}{where} from step "
                     f"{recipe.get('unet_noise_jitter_start', 0)}")
    return "; training noise: " + ", ".join(parts) if parts else ""


def decoder_note(dec: dict | None) -> str:
    """The README's words for the decoder-only fine-tune(s) of a training record, e.g. " + decoder-only fine-tune
    800 steps, 84.8 min" or, for a deepened decoder, " + decoder-only fine-tune 800 steps, 84.8 min, then deepened to
    2 resnets per block and fine-tuned 1000 steps, 47.0 min"."""
    if not dec:
        return ""
    grown = dec.get("grown_from")
    now = f"{dec['step']} steps, {dec['minutes'] or 0:.1f} min"
    if not grown:
        return f" + decoder-only fine-tune {now}"
    before = (f"decoder-only fine-tune {grown['step']} steps, {grown['minutes'] or 0:.1f} min, then "
              if grown.get("step") else "")
    return f" + {before}decoder deepened to {dec['layers_per_block']} resnets per block and fine-tuned {now}"


def to_fp16_files(folder: Path) -> int:
    """Rewrite every ``*/*.safetensors`` of a pipeline folder with its floating tensors in float16 (half the bytes;
    ``StableDiffusionPipeline.from_pretrained`` without ``torch_dtype`` still builds float32 modules from them).
    Returns the number of files rewritten."""
    from safetensors.torch import load_file, save_file

    files = sorted(Path(folder).glob("*/*.safetensors"))
    for f in files:
        t = load_file(str(f))
        tmp = f.with_name(f.name + ".tmp")
        save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in t.items()}, str(tmp),
                  metadata={"format": "pt"})
        os.replace(tmp, f)
    return len(files)


def export_pipeline(state: Path, out: Path, quality: dict | None = None, fp16: bool = False) -> Path:
    """Write the pipeline (fp32 safetensors, or fp16 storage with ``fp16``) + training.json + README.md to ``out``
    atomically."""
    state, out = Path(state), Path(out)
    pipe = build_pipeline(state)
    record = training_record(state)
    if quality:
        record["quality"] = quality
    tmp = out.with_name(out.name + ".tmp-export")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    if fp16:
        to_fp16_files(tmp)
        record["storage_dtype"] = "float16"
    shutil.rmtree(tmp / "tokenizer")  # ship our genuine CLIP files (vocab.json + merges.txt), not a re-serialisation
    shutil.copytree(state / "tokenizer", tmp / "tokenizer")
    (tmp / "training.json").write_text(json.dumps(record, indent=2))
    hw = record["hardware"] or {}
    recipe = record.get("recipe") or {}
    views = (f" seen from cameras all around the scene, {recipe.get('default_share', 0.25):.0%} of them from the "
             "default view" if recipe.get("world") == "multiview" else " from one default camera")
    (tmp / "README.md").write_text(README.format(
        views=views,
        sf=pipe.vae.config.scaling_factor, vae_steps=record["vae"]["step"], vae_min=record["vae"]["minutes"] or 0,
        dec=decoder_note(record["vae_decoder_finetune"]),
        psnr=(record["vae_decoder_finetune"] or record["vae"])["val_psnr"] or float("nan"),
        unet_steps=record["unet"]["step"],
        unet_min=record["unet"]["minutes"] or 0, noise=noise_recipe(recipe),
        hw=f"{hw.get('cpu')} ({hw.get('logical_cpus')} logical CPUs, {hw.get('torch_threads')} torch threads, "
           f"torch {hw.get('torch')})"))
    if out.exists():
        old = out.with_name(out.name + ".old-export")
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)
    return out
