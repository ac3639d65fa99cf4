import json, os, sys, tempfile, torch
os.environ["STEERLAB_CACHE"] = tempfile.mkdtemp()
from lib.data import load_subset
from lib.extract import extract
from lib.generation import Steering, render_chat
from lib.models import load_model, model_fingerprint
from lib.vectors import mean_difference
torch.set_num_threads(2)
model, tok = load_model()
import shutil
from lib.models import embedded_model_dir
math = [render_chat(tok, e.prompt) for e in load_subset("math")[:16]]
howto = [render_chat(tok, e.prompt) for e in load_subset("howto")[:16]]
vector = mean_difference(extract(model, tok, math, layers=[10], progress=False), extract(model, tok, howto, layers=[10], progress=False))
steering = Steering(vector * 4.0)
plain = extract(model, tok, math, layers=[15], progress=False)[15]
with steering.apply(model):
    served = extract(model, tok, math, layers=[15], progress=False)[15]
    fresh = extract(model, tok, math, layers=[15], use_cache=False, progress=False)[15]
rel = lambda a, b: float((a - b).norm() / b.norm())
out = {"code": sys.argv[1], "inside_steer_served_vs_fresh_steered_rel_diff": rel(served, fresh),
       "steered_vs_unsteered_rel_diff": rel(fresh, plain), "served_equals_unsteered": bool(torch.equal(served, plain))}
f0 = model_fingerprint(model)
with torch.no_grad():
    model.get_input_embeddings().weight[7] += 1e-3
out["fingerprint_changes_after_editing_embedding_row_7"] = model_fingerprint(model) != f0
print(json.dumps(out))
