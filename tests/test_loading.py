"""load_prior: safetensors/pickle preference in mixed folders, unsupported model types, the libraries' global
logging/progress state, and which errors become ModelLoadError."""

from __future__ import annotations

import importlib
import shutil

import pytest
import torch
from safetensors.torch import load_file

import idsedit.prior as P
from idsedit.errors import ModelLoadError
from idsedit.models_from_config import build_pipeline, shape_config
from conftest import TINY_MODEL

UNET_ST = "unet/diffusion_pytorch_model.safetensors"
VAE_ST = "vae/diffusion_pytorch_model.safetensors"
TE_ST = "text_encoder/model.safetensors"


def _to_pickle(folder, st_name, bin_name, delta=0.0, keep=False):
    """Write the weights of ``st_name`` (+ delta) as the pickle file ``bin_name``; drop the safetensors unless keep."""
    sd = {k: v + delta for k, v in load_file(str(folder / st_name)).items()}
    torch.save(sd, folder / bin_name)
    if not keep:
        (folder / st_name).unlink()


def _same(module, st_path):
    ref = load_file(str(st_path))
    state = module.state_dict()
    return all(torch.equal(state[k].float(), v.float()) for k, v in ref.items() if k in state)


# ------------------------------------------------------------------------------------------- --allow-pickle
def test_allow_pickle_accepts_pickle_only_where_nothing_else_exists(tmp_path):
    """unet and text encoder: pickle only; vae: safetensors only. --allow-pickle must load all three."""
    folder = tmp_path / "mixed"
    shutil.copytree(TINY_MODEL, folder)
    _to_pickle(folder, UNET_ST, "unet/diffusion_pytorch_model.bin")
    _to_pickle(folder, TE_ST, "text_encoder/pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="only pickle weights"):
        P.load_prior(str(folder), device="cpu", dtype="fp32")
    prior = P.load_prior(str(folder), device="cpu", dtype="fp32", allow_pickle=True)
    assert _same(prior.unet, TINY_MODEL / UNET_ST)
    assert _same(prior.vae, TINY_MODEL / VAE_ST) and _same(prior.pipe.text_encoder, TINY_MODEL / TE_ST)


@pytest.mark.parametrize("allow_pickle", [True, False])
def test_safetensors_win_when_a_part_has_both(tmp_path, allow_pickle):
    """vae and text encoder hold safetensors AND a different pickle file: the safetensors are the ones loaded."""
    folder = tmp_path / "both"
    shutil.copytree(TINY_MODEL, folder)
    _to_pickle(folder, VAE_ST, "vae/diffusion_pytorch_model.bin", delta=1.0, keep=True)
    _to_pickle(folder, TE_ST, "text_encoder/pytorch_model.bin", delta=1.0, keep=True)
    prior = P.load_prior(str(folder), device="cpu", dtype="fp32", allow_pickle=allow_pickle)
    assert _same(prior.vae, TINY_MODEL / VAE_ST)
    assert _same(prior.pipe.text_encoder, TINY_MODEL / TE_ST)


# ------------------------------------------------------------------------------------------- model types
def _pipeline_with_unet(**unet_overrides):
    cfg = shape_config("tiny")
    cfg["unet"].update(unet_overrides)
    return build_pipeline(cfg, seed=0)


@pytest.mark.parametrize("in_channels, kind", [(9, "inpainting"), (8, "InstructPix2Pix")])
def test_unsupported_unets_are_refused_at_load_time(tmp_path, in_channels, kind):
    pipe = _pipeline_with_unet(in_channels=in_channels)
    with pytest.raises(ModelLoadError, match=f"{in_channels} input channels.*{kind}.*supports plain text-to-image") as e:
        P.Prior(pipe, device="cpu", dtype="fp32")
    assert "\n" not in str(e.value)
    folder = tmp_path / kind
    pipe.save_pretrained(str(folder), safe_serialization=True)
    with pytest.raises(ModelLoadError, match=f"model folder .*{kind}.*{in_channels} input channels") as e:
        P.load_prior(str(folder), device="cpu", dtype="fp32")
    assert "\n" not in str(e.value) and "SD 1.x, SD 2.x, SDXL" in str(e.value)


def test_a_unet_that_is_not_a_text_conditioned_unet_is_refused():
    from diffusers import UNet2DModel

    pipe = _pipeline_with_unet()
    pipe.unet = UNet2DModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                            block_out_channels=(32, 64), down_block_types=("DownBlock2D", "DownBlock2D"),
                            up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=32)
    with pytest.raises(ModelLoadError, match="its UNet is a UNet2DModel"):
        P.Prior(pipe, device="cpu", dtype="fp32")
    with pytest.raises(ModelLoadError, match="predicts 8 channels"):
        P.Prior(_pipeline_with_unet(out_channels=8), device="cpu", dtype="fp32")


# ------------------------------------------------------------------------------------------- global state
def _library_state():
    import huggingface_hub.utils as hub
    hub_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")  # the module, not the class
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    return {"diffusers": (dlogging.get_verbosity(), dlogging.is_progress_bar_enabled()),
            "transformers": (tlogging.get_verbosity(), tlogging.is_progress_bar_enabled()),
            "huggingface_hub": (hub.are_progress_bars_disabled(), dict(hub_tqdm.progress_bar_states))}


@pytest.fixture
def unusual_library_state():
    """Non-default verbosity/progress settings for all three libraries (restored after the test)."""
    import huggingface_hub.utils as hub
    hub_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")  # the module, not the class
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    d = (dlogging.get_verbosity(), dlogging.is_progress_bar_enabled())
    t = (tlogging.get_verbosity(), tlogging.is_progress_bar_enabled())
    h = dict(hub_tqdm.progress_bar_states)
    dlogging.set_verbosity_info()
    dlogging.disable_progress_bar()
    tlogging.set_verbosity_warning()
    hub.enable_progress_bars()
    hub.disable_progress_bars("huggingface_hub.some_group")
    yield
    dlogging.set_verbosity(d[0])
    (dlogging.enable_progress_bar if d[1] else dlogging.disable_progress_bar)()
    tlogging.set_verbosity(t[0])
    tlogging._tqdm_active = t[1]
    hub_tqdm.progress_bar_states.clear()
    hub_tqdm.progress_bar_states.update(h)


def test_load_prior_restores_every_library_state_and_shows_downloads(tmp_path, monkeypatch, unusual_library_state):
    import diffusers
    import huggingface_hub.utils as hub
    from huggingface_hub import constants

    before = _library_state()
    during = []
    original = diffusers.DiffusionPipeline.from_pretrained

    def spy(*args, **kwargs):
        during.append(hub.are_progress_bars_disabled())
        return original(*args, **kwargs)

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", spy)
    P.load_prior(str(TINY_MODEL), device="cpu", dtype="fp32")
    assert _library_state() == before
    corrupt = tmp_path / "corrupt"
    shutil.copytree(TINY_MODEL, corrupt)
    (corrupt / UNET_ST).write_bytes((corrupt / UNET_ST).read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="could not load"):
        P.load_prior(str(corrupt), device="cpu", dtype="fp32")
    assert _library_state() == before
    if constants.HF_HUB_DISABLE_PROGRESS_BARS is not True:
        assert during == [False, False]  # download progress bars stay on while loading


# ------------------------------------------------------------------------------------------- error mapping
@pytest.mark.parametrize("base", [RuntimeError, KeyError, TypeError, ValueError, OSError])
def test_a_bug_inside_prior_construction_keeps_its_own_exception(monkeypatch, base):
    class OurBug(base):
        pass

    def broken_init(self, *args, **kwargs):
        raise OurBug("a bug in idsedit, not a model-folder problem")

    monkeypatch.setattr(P.Prior, "__init__", broken_init)
    with pytest.raises(OurBug) as e:
        P.load_prior(str(TINY_MODEL), device="cpu", dtype="fp32")
    assert not isinstance(e.value, ModelLoadError)


def test_quiet_libraries_nests_and_overlaps_across_threads(unusual_library_state):
    """Overlapping blocks (A enters, B enters, A leaves, B leaves) restore the state from before A."""
    import threading

    before = _library_state()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    inside_b = []

    def a():
        with P.quiet_libraries():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def b():
        a_in.wait(10)
        with P.quiet_libraries():
            b_in.set()
            a_out.wait(10)
            inside_b.append(_library_state()["transformers"][0])

    threads = [threading.Thread(target=f) for f in (a, b)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert inside_b == [40]   # still quiet (logging.ERROR) while B is inside, after A left
    assert _library_state() == before
