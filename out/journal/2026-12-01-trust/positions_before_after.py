"""Before/after of the position-scope defect on the embedded default: steered vs unsteered text, one prompt at a time."""
import json, sys, torch
from lib.data import load_subset, DEFAULT_PROMPTS
from lib.extract import extract
from lib.generation import Steering, generate, render_chat
from lib.models import load_model
from lib.vectors import mean_difference
torch.set_num_threads(2)
model, tok = load_model()
math = [render_chat(tok, e.prompt) for e in load_subset("math")[:32]]
howto = [render_chat(tok, e.prompt) for e in load_subset("howto")[:32]]
a = extract(model, tok, math, layers=[10], use_cache=False, progress=False)
b = extract(model, tok, howto, layers=[10], use_cache=False, progress=False)
vector = mean_difference(a, b)
prompts = list(DEFAULT_PROMPTS)[:8]
out = {"code": sys.argv[1], "layer": 10, "coefficient": 4.0, "prompts": len(prompts)}
plain = [generate(model, tok, [p], max_new_tokens=24, progress=False)[0] for p in prompts]
for scope in ("all", "prompt", "generated"):
    steering = Steering(vector * 4.0, positions=scope)
    texts = [generate(model, tok, [p], max_new_tokens=24, steering=steering, progress=False)[0] for p in prompts]
    out[scope] = {"differ_from_unsteered": sum(t != q for t, q in zip(texts, plain)), "texts": texts}
    out[scope + "_equals_all"] = None
for scope in ("prompt", "generated"):
    out[scope + "_equals_all"] = sum(t == q for t, q in zip(out[scope]["texts"], out["all"]["texts"]))
out["unsteered"] = plain
print(json.dumps({k: v for k, v in out.items()}, indent=1))
