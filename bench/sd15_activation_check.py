"""SD 1.5-size random UNet: largest |activation| per top-level block (fp16 overflow check), fp32 on CPU, 16x16 latent.

    .venv/bin/python bench/sd15_activation_check.py
"""
import torch, time
torch.set_num_threads(1)
from idsedit.models_from_config import SHAPES, build_unet, build_text_encoder, load_tokenizer
t=time.time()
unet = build_unet(SHAPES["sd15"]["unet"], 0).eval().requires_grad_(False)
te = build_text_encoder(SHAPES["sd15"]["text"], 2).requires_grad_(False)
print("build", time.time()-t, sum(p.numel() for p in unet.parameters())/1e6)
tok = load_tokenizer()
ids = tok(["", "a red square"], padding="max_length", max_length=77, return_tensors="pt").input_ids
with torch.no_grad():
    emb = te(ids)[0]
print("emb absmax", emb.abs().max().item(), emb.std().item())
mx = {}
def hook(name):
    def h(m, a, o):
        o = o[0] if isinstance(o, tuple) else o
        if torch.is_tensor(o): mx[name] = max(mx.get(name, 0), o.abs().max().item())
    return h
for n, m in unet.named_modules():
    if n.count(".") <= 2 and n: m.register_forward_hook(hook(n))
z = torch.randn(2, 4, 16, 16)
with torch.no_grad():
    out = unet(z, torch.tensor([500, 500]), encoder_hidden_states=emb).sample
print("out absmax", out.abs().max().item(), out.std().item())
for n, v in sorted(mx.items(), key=lambda kv: -kv[1])[:8]: print(n, round(v, 1))
print("time", time.time()-t)
