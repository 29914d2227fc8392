"""PyTorch beside oomlab for scripts/gpu-check.sh: the same BERT from the same config.json, random
weights, torch.no_grad, torch.cuda.max_memory_allocated at oomlab's b*, and PyTorch's own
largest batch at the same capacity (set_per_process_memory_fraction), with the attention
PyTorch picks by default (sdpa) and with eager attention (which, like candle, materializes the
scores).

usage: python3 scripts/gpu_check_torch.py OUT CONFIG_JSON
"""
import json
import os
import sys

out, config_path = sys.argv[1], sys.argv[2]
try:
    import torch
    import transformers
    from transformers import BertConfig, BertModel
except ImportError as e:
    print(f"PyTorch comparison skipped: {e}")
    raise SystemExit(0)
if not torch.cuda.is_available():
    print("PyTorch comparison skipped: torch sees no GPU")
    raise SystemExit(0)
raw = json.load(open(config_path))
if raw.get("model_type") != "bert":
    print(f"PyTorch comparison skipped: written for BERT, {config_path} is {raw.get('model_type')}")
    raise SystemExit(0)

auto = json.load(open(os.path.join(out, "auto.json")))
cap = auto["capacity_bytes"]
total = torch.cuda.get_device_properties(0).total_memory
torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), 0)
GIB = 1 << 30
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
      f"{torch.cuda.get_device_name(0)}; capacity {cap / GIB:.3f} GiB as "
      f"set_per_process_memory_fraction({cap / total:.4f}) of {total / GIB:.2f} GiB "
      "(PyTorch's fraction leaves the CUDA context out; oomlab's capacity holds it)")


def build(dtype, impl):
    cfg = BertConfig.from_dict(raw)
    cfg._attn_implementation = impl
    with torch.device("cuda"):  # initialized on the GPU: seconds less per model
        try:
            model = BertModel(cfg, add_pooling_layer=False)
        except TypeError:
            model = BertModel(cfg)
    return model.to(dtype=dtype).eval()


def peak(model, batch, seq):
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    ids = torch.randint(0, raw["vocab_size"], (batch, seq), device="cuda")
    with torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def fits(model, batch, seq):
    try:
        peak(model, batch, seq)
        return True
    except torch.cuda.OutOfMemoryError:
        return False


def largest(model, seq, start):
    """Exact largest batch: gallop from oomlab's b* (or 1), then bisect."""
    lo, hi = 0, max(1, start)
    while fits(model, hi, seq):
        lo, hi = hi, hi * 2
        if hi > 1 << 15:
            return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(model, mid, seq) else (lo, mid)
    return lo


def f(v):
    return "-" if v is None else f"{v / GIB:.3f}"


print(f"\n{'curve':<14} {'oomlab b*':>9} {'torch eager b*':>14} {'torch sdpa b*':>13} "
      f"{'oomlab pool peak':>16} {'torch eager peak':>16} {'torch sdpa peak':>15}   (GiB, at oomlab's b*)")
for dname in ("f32", "f16", "bf16"):
    curves = [x for x in auto["boundaries"] if x["dtype"] == dname]
    res = {}
    for impl in ("eager", "sdpa"):
        model = build(DTYPES[dname], impl)
        for b in curves:
            star, seq = b["max_batch"], b["seq"]
            top = largest(model, seq, star or 1)
            p = peak(model, star, seq) if star and fits(model, star, seq) else None
            res[(seq, impl)] = (top, p)
        del model
        torch.cuda.empty_cache()
    for b in curves:
        star, seq = b["max_batch"], b["seq"]
        trial = next((t for t in auto["trials"] if t["seq"] == seq and t["dtype"] == dname
                      and t["batch"] == star and t["outcome"] == "fit"), None)
        e, s_ = res[(seq, "eager")], res[(seq, "sdpa")]
        print(f"seq {seq} {dname:<8} {str(star):>9} {e[0]:>14} {s_[0]:>13} "
              f"{f(trial and trial['total_bytes']):>16} {f(e[1]):>16} {f(s_[1]):>15}", flush=True)
print("torch b*: the largest batch PyTorch ran under the memory fraction; eager attention "
      "materializes the scores as candle does, sdpa (PyTorch's default) may not")
