"""lib.kits.delta_ablation: variants of a trained weight delta (Fierro & Roger 2025 weight steering), checked against
hand computations, planted subspaces and PEFT's own DoRA parameters. Each test's docstring names the one-line mutation
of the module it catches."""

from __future__ import annotations

import copy
import math

import peft
import pytest
import torch

from lib.choice_evals import ChoiceRow
from lib.kits import delta_ablation as da
from lib.kits.adapters import merge_to_delta
from lib.models import tiny_model
from lib.weights import RESIDUAL_WRITES, WeightDelta, as_matrix, module_role


@pytest.fixture(scope="module")
def qwen2():
    return tiny_model("qwen2", n_layers=3, hidden=64, seed=2)


def dense_delta(model, seed: int = 0, scale: float = 0.01) -> WeightDelta:
    """A random delta on every parameter (matrices, biases, norms, embeddings): every kind of tensor a split meets."""
    generator = torch.Generator().manual_seed(seed)
    return WeightDelta({n: scale * torch.randn(p.shape, generator=generator) for n, p in model.named_parameters()})


def orthonormal(rows: int, cols: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(rows, cols, generator=generator, dtype=torch.float64))[0]


def by_name(variants: list[da.Variant], family: str = "") -> dict[str, da.Variant]:
    return {v.name: v for v in variants if v.family == family}


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1)


# ----------------------------------------------------------------------------- roles and layers (module roles
# themselves: tests/test_weights.py)


def test_role_variants_pick_the_right_tensors_and_share_storage(qwen2):
    """Catches: "writes" built from the wrong roles (e.g. q instead of o), reads not the complement of writes,
    or selection copying tensors (the notebook builds dozens of crops)."""
    delta = dense_delta(qwen2)
    variants = by_name(da.role_variants(delta))
    assert set(variants["writes"].delta.names) == {n for n in delta.names
                                                   if n.endswith(("o_proj.weight", "down_proj.weight"))}
    attn_reads = {n for n in delta.names if ".self_attn." in n and "o_proj" not in n}
    assert set(variants["attn_read"].delta.names) == attn_reads
    assert set(variants["mlp_read"].delta.names) == {n for n in delta.names if "gate_proj" in n or "up_proj" in n}
    assert set(variants["other"].delta.names) == {n for n in delta.names if any(k in n for k in ("norm", "embed",
                                                                                             "lm_head"))}
    assert variants["full"].delta.names == delta.names
    name = variants["writes"].delta.names[0]
    assert variants["writes"].delta[name].data_ptr() == delta[name].data_ptr()


def test_layer_thirds_by_hand():
    """Catches: an off-by-one in the thirds' boundaries (e.g. floor(3 b / (n - 1)))."""
    assert da.layer_thirds(6) == {"early": [0, 1], "mid": [2, 3], "late": [4, 5]}
    assert [len(v) for v in da.layer_thirds(30).values()] == [10, 10, 10]
    assert da.layer_thirds(30)["mid"] == list(range(10, 20))
    assert da.layer_thirds(4) == {"early": [0, 1], "mid": [2], "late": [3]}


# ----------------------------------------------------------------------------- every split sums back


def test_every_split_sums_back_to_the_full_delta(qwen2):
    """Catches: any part dropped or counted twice in any split (roles, thirds, single-layer keep/leave-out, SVD
    rank bands, energy groups, base-SVD top/rest, DoRA parts, basis keep/drop), e.g. a band slice `slice(b + 1,
    None)` or `drop = m - 2 * keep`."""
    delta = dense_delta(qwen2)
    roles = by_name(da.role_variants(delta))
    for names in (("writes", "reads"), ("attention", "mlp", "other"), ("attn_read", "mlp_read", "writes", "other")):
        da.check_sums_to(delta, [roles[n] for n in names], what=str(names))
    layers = by_name(da.layer_variants(delta, n_layers=3))
    da.check_sums_to(delta, [layers[n] for n in ("early", "mid", "late", "non_block")], what="thirds")
    assert not layers["non_block"].empty
    for i in range(3):
        da.check_sums_to(delta, [layers[f"L{i}_only"], layers[f"L{i}_out"]], what=f"layer {i}")
    svd = da.svd_variants(delta)
    for group in ("svd_rank", "svd_energy"):
        parts = [v for v in svd if v.group in (group, "non_matrix")]
        assert len(parts) == 4
        da.check_sums_to(delta, parts, rtol=1e-5, what=group)
    base = da.base_subspace_variants(delta, qwen2, ranks=(4, 16))
    non_matrix = by_name(base)["non_matrix"]
    for r in (4, 16):
        da.check_sums_to(delta, [by_name(base)[f"base_top{r}"], by_name(base)[f"base_rest{r}"], non_matrix])
    da.check_sums_to(delta, da.dora_variants(delta, qwen2), what="dora")
    families = {"a": delta, "b": dense_delta(qwen2, seed=1)}
    basis = da.basis_variants(families, ks=(4, 16))
    for family, fam_delta in families.items():
        writes = by_name(da.role_variants(fam_delta))["writes"]
        for label in ("shared4", "shared16", "own4", "own16", "rand4", "rand16"):
            found = by_name(basis, family)
            da.check_sums_to(writes, [found[f"{label}_keep"], found[f"{label}_drop"]], what=f"{family} {label}")


def test_check_sums_to_raises_when_a_component_is_missing_or_wrong(qwen2):
    """Catches: a check that only compares total norms, or that passes when a band is left out or perturbed."""
    delta = dense_delta(qwen2)
    bands = [v for v in da.svd_variants(delta) if v.group in ("svd_rank", "non_matrix")]
    da.check_sums_to(delta, bands)
    with pytest.raises(ValueError, match="do not sum"):
        da.check_sums_to(delta, bands[1:])
    name = bands[0].delta.names[0]
    flipped = WeightDelta({name: -bands[0].delta[name]})
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        da.check_sums_to(delta, bands + [flipped, flipped])
    with pytest.raises(ValueError, match="not in the full delta"):
        da.check_sums_to(delta, bands + [WeightDelta({"model.layers.9.extra.weight": torch.ones(2)})])


# ----------------------------------------------------------------------------- SVD bands by hand


def test_svd_bands_and_energy_groups_against_a_planted_spectrum():
    """Catches: bands over all min(out, in) singular values instead of the effective rank, `vh.T` for `vh`
    (pieces would not be the planted rank-one terms), or the energy cut counted after instead of before a
    direction."""
    u, v = orthonormal(16, 16, 0), orthonormal(12, 12, 1)
    s = torch.tensor([9.0, 8, 7, 6, 5, 4, 3, 2], dtype=torch.float64)  # effective rank 8 of min(16, 12) = 12
    term = [s[i] * torch.outer(u[:, i], v[:, i]) for i in range(8)]
    name = "model.layers.0.mlp.down_proj.weight"
    delta = WeightDelta({name: sum(term).float(), "model.layers.0.mlp.down_proj.bias": torch.ones(16)})
    found = by_name(da.svd_variants(delta))
    torch.testing.assert_close(found["svd_top25"].delta[name].double(), term[0] + term[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(found["svd_mid50"].delta[name].double(), sum(term[2:6]), atol=1e-5, rtol=0)
    torch.testing.assert_close(found["svd_bottom25"].delta[name].double(), term[6] + term[7], atol=1e-5, rtol=0)
    assert found["non_matrix"].delta.names == ["model.layers.0.mlp.down_proj.bias"]
    # energies S^2 = 50, 30, 15, 5 (of 100): energy before each 0, .5, .8, .95 -> groups {0}, {1, 2}, {3}
    s = torch.tensor([50.0, 30, 15, 5], dtype=torch.float64).sqrt()
    u, v = orthonormal(6, 4, 2), orthonormal(5, 4, 3)
    term = [s[i] * torch.outer(u[:, i], v[:, i]) for i in range(4)]
    found = by_name(da.svd_variants(WeightDelta({name: sum(term).float()})))
    torch.testing.assert_close(found["energy_0-50"].delta[name].double(), term[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(found["energy_50-90"].delta[name].double(), term[1] + term[2], atol=1e-5, rtol=0)
    torch.testing.assert_close(found["energy_90-100"].delta[name].double(), term[3], atol=1e-5, rtol=0)
    assert found["non_matrix"].empty


# ----------------------------------------------------------------------------- base-weight SVD lens


def test_base_svd_lens_and_subspace_projection_by_hand():
    """W0 = U diag(3, 2, 1) V^T with different rotations U, V, so left and right cannot be confused.
    Catches: C = U0^T dW U0 (right vectors on the wrong side), the top-k block read as C[:k] (rows only), or
    left/right projections swapped."""
    name = "model.layers.0.self_attn.o_proj.weight"
    u, v = orthonormal(3, 3, 10), orthonormal(3, 3, 11)
    base = {name: (u @ torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)) @ v.T).float()}

    def rotated(core: torch.Tensor) -> WeightDelta:  # a delta given by its coordinates in W0's singular bases
        return WeightDelta({name: (u @ core.double() @ v.T).float()})

    rows = {r["k"]: r for r in da.base_svd_lens(rotated(torch.diag(torch.tensor([1.0, 0.0, 1.0]))), base, ks=(1, 2, 3))}
    assert rows[1]["top_k_fraction"] == pytest.approx(0.5) and rows[2]["top_k_fraction"] == pytest.approx(0.5)
    assert rows[3]["top_k_fraction"] == pytest.approx(1.0) and rows[1]["chance"] == pytest.approx(1 / 9)
    ones = rotated(torch.ones(3, 3))
    lens = da.base_svd_lens(ones, base, ks=(1, 2))
    assert [r["top_k_fraction"] for r in lens] == [pytest.approx(1 / 9), pytest.approx(4 / 9)]
    keep = by_name(da.base_subspace_variants(ones, base, ranks=(1,)))["base_top1"].delta[name]
    torch.testing.assert_close(keep.double(), torch.outer(u[:, 0], v[:, 0]), atol=1e-6, rtol=0)
    left = by_name(da.base_subspace_variants(ones, base, ranks=(1,), side="left"))["base_top1"].delta[name]
    torch.testing.assert_close(left.double(), torch.outer(u[:, 0], v.sum(1)), atol=1e-6, rtol=0)
    right = by_name(da.base_subspace_variants(ones, base, ranks=(1,), side="right"))["base_top1"].delta[name]
    torch.testing.assert_close(right.double(), torch.outer(u.sum(1), v[:, 0]), atol=1e-6, rtol=0)
    # a [2, 3] base: column 2 is outside W0's row space, so a delta there has no coordinates at all
    wide = {name: torch.tensor([[2.0, 0, 0], [0, 1, 0]])}
    outside = WeightDelta({name: torch.tensor([[0.0, 0, 1], [0, 0, 0]])})
    assert da.base_svd_lens(outside, wide, ks=(2,))[0]["in_span_fraction"] == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- DoRA


@pytest.mark.parametrize(("arch", "targets"), [("llama", ["q_proj", "o_proj", "down_proj"]),
                                               ("gpt2", ["c_attn", "c_proj", "c_fc"])])
def test_dora_magnitude_and_direction_match_peft_parameters(arch, targets):
    """Against PEFT's own DoRA (random A, B and a changed magnitude vector, merged): magnitude-only has W0's row
    directions and PEFT's magnitude as row norms; direction-only has the direction of W0 + s B A and W0's row norms.
    Catches: norms over dim 0 (columns) instead of each output row, or GPT-2's Conv1D left untransposed."""
    base = tiny_model(arch, n_layers=2, seed=1)
    torch.manual_seed(0)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False, use_dora=True,
                             fan_in_fan_out=arch == "gpt2")
    model = peft.get_peft_model(copy.deepcopy(base), config)
    expected = {}
    with torch.no_grad():
        for module_name, module in model.named_modules():
            if isinstance(module, peft.tuners.lora.LoraLayer):
                magnitude = module.lora_magnitude_vector["default"].weight
                magnitude.mul_(1 + 0.3 * torch.rand(magnitude.shape))  # a magnitude change the direction lacks
                low_rank = module.lora_B["default"].weight @ module.lora_A["default"].weight * module.scaling["default"]
                expected[module_name.removeprefix("base_model.model.") + ".weight"] = (magnitude.clone(), low_rank)
    delta = merge_to_delta(base, model)
    parts = by_name(da.dora_variants(delta, base))
    da.check_sums_to(delta, parts.values(), what="dora")
    assert 0 < parts["dora_residual"].meta["residual_fraction"] < math.inf
    for name, (magnitude, low_rank) in expected.items():
        w0 = as_matrix(name, base.get_parameter(name).detach()).double()
        mag = w0 + as_matrix(name, parts["dora_magnitude"].delta[name]).double()
        dirn = w0 + as_matrix(name, parts["dora_direction"].delta[name]).double()
        torch.testing.assert_close(mag.norm(dim=1), magnitude.double(), atol=1e-5, rtol=1e-5)
        assert cosine_rows(mag, w0).min() > 1 - 1e-9
        torch.testing.assert_close(dirn.norm(dim=1), w0.norm(dim=1), atol=1e-5, rtol=1e-5)
        assert cosine_rows(dirn, w0 + low_rank.double()).min() > 1 - 1e-9


# ----------------------------------------------------------------------------- IA3


def _ia3_delta(base, seed: int) -> tuple[WeightDelta, dict[str, torch.Tensor]]:
    """PEFT's own IA3 on every linear of a tiny llama (down_proj gated on its input), with random gates, merged;
    and the gate vectors PEFT holds, by parameter name."""
    torch.manual_seed(seed)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = peft.IA3Config(target_modules=targets, feedforward_modules=["down_proj"], init_ia3_weights=False)
    model = peft.get_peft_model(copy.deepcopy(base), config)
    gates = {}
    for module_name, module in model.named_modules():
        if isinstance(module, peft.tuners.ia3.IA3Layer):
            gates[module_name.removeprefix("base_model.model.") + ".weight"] = \
                module.ia3_l["default"].detach().flatten().clone()
    return merge_to_delta(base, model), gates


def test_ia3_gates_are_read_back_from_peft_ia3_and_split_attention_from_mlp():
    """Against PEFT's own IA3 (random gates l, merged): each tensor's gate read from dense weights is PEFT's l - 1
    (on the output rows, on the input columns for down_proj), and also l_pos - l_neg for a weight-steering
    difference; attention + MLP gates sum to dW; a LoRA-shaped delta is refused. Catches: the gate sides swapped,
    the fit over the wrong axis, or the roles mixed up (o_proj counted as MLP)."""
    base = tiny_model("llama", n_layers=2, seed=1)
    positive, l_pos = _ia3_delta(base, 0)
    negative, l_neg = _ia3_delta(base, 1)
    for delta, expected in ((positive, {n: g - 1 for n, g in l_pos.items()}),
                            (positive - negative, {n: l_pos[n] - l_neg[n] for n in l_pos})):
        gates = da.ia3_gates(delta, base)
        assert set(gates) == set(expected) == set(delta.names)
        for name, found in gates.items():
            assert found["side"] == ("input" if "down_proj" in name else "output"), name
            torch.testing.assert_close(found["gate"], expected[name].double(), atol=1e-4, rtol=1e-4)
            assert found["residual"] < 1e-4
        parts = by_name(da.ia3_variants(delta, base))
        da.check_sums_to(delta, parts.values(), what="ia3 gates")
        assert parts["ia3_other"].empty
        assert {n.split(".")[-2] for n in parts["attention_gates"].delta.names} == {"q_proj", "k_proj", "v_proj",
                                                                                   "o_proj"}
        assert {n.split(".")[-2] for n in parts["mlp_gates"].delta.names} == {"gate_proj", "up_proj", "down_proj"}
        assert parts["mlp_gates"].meta["gate_norms"].keys() == set(parts["mlp_gates"].delta.names)
    with pytest.raises(ValueError, match="not an IA3 delta.*families=\\['ia3'\\]"):
        da.ia3_gates(dense_delta(base), base)


# ----------------------------------------------------------------------------- cross-adapter bases


def planted_families(stored_transposed: bool = False, seed: int = 0,
                     noise: float = 1e-5) -> tuple[dict[str, WeightDelta], torch.Tensor]:
    """Three families whose residual writes share one rank-4 subspace U of a 64-dim residual stream (plus `noise`),
    and a read tensor (q_proj / c_attn) that the basis must leave out."""
    u = orthonormal(64, 4, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    writes = {"o": 64, "down": 128}
    if stored_transposed:
        names = {"o": "transformer.h.0.attn.c_proj.weight", "down": "transformer.h.0.mlp.c_proj.weight",
                 "read": "transformer.h.0.attn.c_attn.weight"}
    else:
        names = {"o": "model.layers.0.self_attn.o_proj.weight", "down": "model.layers.0.mlp.down_proj.weight",
                 "read": "model.layers.0.self_attn.q_proj.weight"}
    families = {}
    for family in ("lora", "dora", "ia3"):
        tensors = {}
        for key, width in writes.items():
            matrix = u @ torch.randn(4, width, generator=generator, dtype=torch.float64)
            matrix = matrix + noise * torch.randn(64, width, generator=generator, dtype=torch.float64)
            tensors[names[key]] = (matrix.T if stored_transposed else matrix).float()
        tensors[names["read"]] = torch.randn(64, 64, generator=generator)
        families[family] = WeightDelta(tensors)
    return families, u


def readout(delta: WeightDelta, seed: int = 0) -> float:
    """A fixed linear readout of the residual writes: sum over tensors of r^T dW x (r, x seeded per tensor)."""
    total = 0.0
    for name in sorted(delta.names):
        if module_role(name) not in RESIDUAL_WRITES:
            continue
        matrix = as_matrix(name, delta[name]).double()
        generator = torch.Generator().manual_seed(seed + len(name))
        r, x = torch.randn(matrix.shape[0], generator=generator, dtype=torch.float64), \
            torch.randn(matrix.shape[1], generator=generator, dtype=torch.float64)
        total += float(r @ matrix @ x)
    return total


@pytest.mark.parametrize("stored_transposed", [False, True])
def test_planted_shared_subspace_is_kept_by_the_basis_and_removed_by_drop(stored_transposed):
    """Catches: the shared basis taken from right singular vectors or from the stack's wrong axis, GPT-2's Conv1D
    read as [out, in] (the families' input spaces differ, so a K=4 basis there keeps about a third), or read
    tensors let into the basis variants."""
    families, _ = planted_families(stored_transposed)
    variants = da.basis_variants(families, ks=(4, 8))
    for family, delta in families.items():
        writes = by_name(da.role_variants(delta))["writes"]
        found = by_name(variants, family)
        assert set(found["shared4_keep"].delta.names) == set(writes.delta.names)
        assert found["shared4_keep"].meta["k"] == dict.fromkeys(writes.delta.names, 4)
        keep, drop = found["shared4_keep"], found["shared4_drop"]
        assert keep.norm() / writes.norm() > 0.9999
        assert drop.norm() / writes.norm() < 1e-3
        assert da.retained(readout(keep.delta), readout(writes.delta)) == pytest.approx(1.0, abs=1e-3)
        assert abs(da.retained(readout(drop.delta), readout(writes.delta))) < 1e-3
        assert found["own4_keep"].norm() / writes.norm() > 0.9999  # each family alone has the same rank-4 span
        assert found["shared8_keep"].norm() / writes.norm() > 0.9999  # 4 more (noise) directions keep the rest
    exact, _ = planted_families(stored_transposed, noise=0.0)  # without noise the stack has rank 4: K=8 is clipped
    clipped = by_name(da.basis_variants(exact, ks=(8,)), "lora")["shared8_keep"]
    assert clipped.meta["k"] == dict.fromkeys(clipped.delta.names, 4)
    assert by_name(da.basis_variants(exact, ks=(8,)), "lora")["rand8_keep"].meta["k"] == clipped.meta["k"]


def test_random_basis_keeps_about_k_over_d_of_a_linear_readout():
    """The rank-matched random null on a full-rank 64-dim toy: mean retained readout over seeds ~ K/d.
    Catches: a random basis without orthonormalisation (keeps ~K, not K/d), or the null drawn from the family's
    own directions (keeps ~1)."""
    generator = torch.Generator().manual_seed(5)
    name = "model.layers.0.self_attn.o_proj.weight"
    delta = WeightDelta({name: torch.randn(64, 64, generator=generator)})
    x = torch.randn(64, generator=generator, dtype=torch.float64)
    v = delta[name].double() @ x
    r = v / v.norm()  # a fixed readout: the direction dW writes along, so each seed's ratio is v^T P v / |v|^2

    def effect(d: WeightDelta) -> float:
        return float(r @ d[name].double() @ x)

    for k in (8, 16):
        ratios = [da.retained(effect(by_name(da.basis_variants({"f": delta}, ks=(k,), seed=seed), "f")[
            f"rand{k}_keep"].delta), effect(delta)) for seed in range(60)]
        assert sum(ratios) / len(ratios) == pytest.approx(k / 64, abs=0.02)
    shared = by_name(da.basis_variants({"f": delta}, ks=(8,)), "f")["shared8_keep"]
    assert shared.meta["k"] == {name: 8}  # a full-rank toy: K is not clipped


# ----------------------------------------------------------------------------- controls


def test_norm_matched_random_and_rescaling(qwen2):
    """Catches: the random delta scaled to the total norm instead of each tensor's, a seed that does not fix the
    draw, or norm_matched scaling by the ratio the wrong way round."""
    delta = dense_delta(qwen2)
    first, again, other = (da.norm_matched_random(delta, seed=s) for s in (0, 0, 1))
    assert first.delta.names == delta.names
    for name in delta.names:
        assert float(first.delta[name].double().norm()) == pytest.approx(float(delta[name].double().norm()), rel=1e-5)
        assert torch.equal(first.delta[name], again.delta[name])
        assert not torch.equal(first.delta[name], other.delta[name])
    writes = by_name(da.role_variants(delta))["writes"]
    matched = da.norm_matched(writes, delta)
    assert matched.norm() == pytest.approx(delta.norm(), rel=1e-6) and matched.name == "writes@norm"
    assert da.norm_matched(writes, 2.0).norm() == pytest.approx(2.0, rel=1e-6)
    with pytest.raises(ValueError, match="zero"):
        da.norm_matched(da.zero_variant(delta), 1.0)
    empty = by_name(da.role_variants(WeightDelta({"model.layers.0.self_attn.q_proj.weight": torch.ones(2, 2)})))
    assert empty["writes"].empty and empty["writes"].norm() == 0.0


# ----------------------------------------------------------------------------- what a variant's name says


def test_builders_set_the_fields_their_names_say(qwen2):
    """Each builder's fields, written out by hand, and the same fields read back from the names (how a record scored
    before fields were saved is read). Catches a builder giving another block, rank or part than its name (e.g.
    `layer=i + 1`, keep and drop swapped), a cross basis filed under the projected family instead of the basis's,
    or a control that forgets the crop it controls."""
    delta = dense_delta(qwen2)
    families, _ = planted_families()  # lora, dora, ia3: the digit in ia3 makes `in_ia34_keep` need the families
    roles = by_name(da.role_variants(delta))
    layers = by_name(da.layer_variants(delta, 3))
    basis = by_name(da.basis_variants(families, ks=(4,)), "lora")
    base = by_name(da.base_subspace_variants(delta, qwen2, ranks=(4,)))
    controls = by_name(da.sufficiency_controls(roles["writes"], delta, seed=0), "")
    fields = da.VariantFields
    assert roles["writes"].fields == fields("writes") and layers["mid"].fields == fields("mid")
    assert layers["L2_only"].fields == fields("layer_only", layer=2)
    assert layers["L0_out"].fields == fields("layer_out", layer=0)
    assert basis["shared4_keep"].fields == fields("shared", k=4, part="keep")
    assert basis["own4_drop"].fields == fields("own", k=4, part="drop")
    assert basis["rand4_keep"].fields == fields("random_basis", k=4, part="keep")
    assert basis["in_ia34_drop"].fields == fields("cross", k=4, part="drop", basis_family="ia3")
    assert base["base_top4"].fields == fields("base", k=4, part="keep")
    assert base["base_rest4"].fields == fields("base", k=4, part="drop")
    assert controls["writes@norm"].fields == fields("norm_matched", control_of="writes")
    assert controls["writes~rand"].fields == fields("random", control_of="writes")
    assert controls["writes~rand"].group == "sufficiency" and controls["writes~rand"].meta == {"of": "writes"}
    assert da.norm_matched_random(delta, seed=1).fields == fields("random")
    assert da.zero_variant(delta).fields == fields("zero")
    every = [*roles.values(), *layers.values(), *da.svd_variants(delta), *base.values(),
             *da.dora_variants(delta, qwen2), *da.basis_variants(families, ks=(4, 8)), *controls.values(),
             da.zero_variant(delta), da.norm_matched_random(delta, seed=1)]
    for variant in every:
        assert fields.from_name(variant.name, families) == variant.fields, variant.name


def test_names_that_do_not_say_their_basis_family_are_refused():
    """`in_ia332_keep` is ia3's basis at K=32 or ia33's at K=2: the run's families decide, and without one that
    fits the name is refused rather than guessed. Catches a greedy or lazy regex standing in for the families."""
    assert da.VariantFields.from_name("in_ia332_keep", ["ia3", "lora"]) == da.VariantFields(
        "cross", k=32, part="keep", basis_family="ia3")
    assert da.VariantFields.from_name("in_ia332_keep", ["ia33"]).k == 2
    with pytest.raises(ValueError, match="more than one family"):
        da.VariantFields.from_name("in_ia332_keep", ["ia3", "ia33"])
    with pytest.raises(ValueError, match="no family"):
        da.VariantFields.from_name("in_ia332_keep", [])


# ----------------------------------------------------------------------------- rows and retention


def test_row_identity_is_enforced():
    """Catches: rows compared as sets (order lost), the coefficient grid left out of the check or digest, or a
    saved digest trusted without recomputing it."""
    rows = [ChoiceRow("r1", "Is it?", 1), ChoiceRow("r2", "Was it?", -1), ChoiceRow("r3", "Will it?", 1)]
    reference = da.eval_grid(rows, [-2, 0, 2])
    assert reference.rows == ("r1", "r2", "r3") and reference.coefficients == (-2.0, 0.0, 2.0)
    da.check_same_rows(reference, da.eval_grid(["r1", "r2", "r3"], [-2.0, 0.0, 2.0]))
    da.check_same_rows(reference.as_dict(), reference.digest)
    with pytest.raises(ValueError, match="rows differ.*'r3'"):
        da.check_same_rows(reference, da.eval_grid(rows[:2], [-2, 0, 2]))
    with pytest.raises(ValueError, match="another order"):
        da.check_same_rows(reference, da.eval_grid(rows[::-1], [-2, 0, 2]))
    with pytest.raises(ValueError, match="coefficient grids differ"):
        da.check_same_rows(reference, da.eval_grid(rows, [-2, 0, 4]))
    with pytest.raises(ValueError, match="digests differ"):
        da.check_same_rows(reference.digest, da.eval_grid(rows, [-2, 0, 4]).digest)
    with pytest.raises(ValueError, match="does not match"):
        da.EvalGrid.from_dict({**reference.as_dict(), "coefficients": [-1, 0, 1]})


def test_retained_and_its_negligible_effect_policy():
    """Catches: dividing by a full effect of ~0 (retention of noise), the floor ignored, or NaN full effects
    passing as valid."""
    assert da.retained(0.5, 2.0) == 0.25
    assert da.retained([1.0, -1.0], [2.0, 4.0]) == [0.5, -0.25]
    with pytest.raises(da.NegligibleEffectError, match=r"entries \[1\]"):
        da.retained([1.0, 1.0], [2.0, 0.0])
    with pytest.raises(da.NegligibleEffectError):
        da.retained(0.001, 0.005, floor=0.01)
    with pytest.raises(da.NegligibleEffectError):
        da.retained(1.0, float("nan"))
    out = da.retained([1.0, 1.0, 1.0], [2.0, 1e-9, float("nan")], on_negligible="nan")
    assert out[0] == 0.5 and math.isnan(out[1]) and math.isnan(out[2])


def test_cross_family_basis_keeps_a_shared_subspace_and_not_a_private_one():
    """f projected on g's own top-K (`in_<g><K>_keep`): with the planted shared rank-4 span every family keeps all
    of its writes in every other family's basis; with a private span per family (orthogonal) it keeps nothing, while
    the shared basis, fitted to f too, still keeps f's writes (the case the cross control exists for). Catches the
    cross basis taken from f itself, or from the stack, and keep + drop not summing to the writes."""
    families, _ = planted_families(noise=0.0)
    variants = da.basis_variants(families, ks=(4,))
    for family, delta in families.items():
        writes = by_name(da.role_variants(delta))["writes"]
        found = by_name(variants, family)
        others = [g for g in families if g != family]
        assert {f"in_{g}4_keep" for g in others} <= set(found) and f"in_{family}4_keep" not in found
        for g in others:
            assert found[f"in_{g}4_keep"].norm() / writes.norm() > 0.9999
            da.check_sums_to(writes, [found[f"in_{g}4_keep"], found[f"in_{g}4_drop"]], what=f"{family} in {g}")
    private = {}  # each family writes into its own rank-2 span, orthogonal to the others'
    frame = orthonormal(64, 6, 7)
    generator = torch.Generator().manual_seed(3)
    for i, family in enumerate(("lora", "pissa", "dora")):
        span = frame[:, 2 * i: 2 * i + 2]
        private[family] = WeightDelta({"model.layers.0.self_attn.o_proj.weight":
                                       (span @ torch.randn(2, 64, generator=generator, dtype=torch.float64)).float()})
    found = by_name(da.basis_variants(private, ks=(2,)), "lora")
    writes = private["lora"]
    assert max(found[f"in_{g}2_keep"].norm() for g in ("pissa", "dora")) / writes.norm() < 1e-5
    assert found["own2_keep"].norm() / writes.norm() > 0.9999
    by_k = by_name(da.basis_variants(private, ks=(6,)), "lora")  # the stacked basis of rank 6 holds lora's span
    assert by_k["shared6_keep"].norm() / writes.norm() > 0.9999 and by_k["in_pissa6_keep"].norm() / writes.norm() < 1e-5
    assert not any(v.name.startswith("in_") for v in da.basis_variants(private, ks=(2,), cross=False))


def test_basis_variants_of_one_family_are_those_of_the_whole_call():
    """`families=[f]` (the notebook builds one family at a time) must give f's variants of the full call exactly:
    the shared basis still sees every family and the random null draws the same frames. Catches the filter applied
    before stacking (the shared basis would be f's own) or the random draw moved inside the family loop."""
    families, _ = planted_families()
    whole = da.basis_variants(families, ks=(4, 8), seed=3)
    for family in families:
        alone = da.basis_variants(families, ks=(4, 8), seed=3, families=[family])
        assert {v.family for v in alone} == {family}
        expected = by_name(whole, family)
        assert [v.name for v in alone] == list(expected)
        for variant in alone:
            other = expected[variant.name]
            assert variant.meta["k"] == other.meta["k"]
            assert all(torch.equal(variant.delta[n], other.delta[n]) for n in other.delta.names)
    with pytest.raises(ValueError, match=r"families=\['nope'\] have no delta"):
        da.basis_variants(families, ks=(4,), families=["nope"])


def test_norm_shares_put_each_part_beside_what_a_random_delta_of_the_same_shapes_gives():
    """Catches a share read without its chance value, or a chance value from a delta of other shapes or norms:
    (1) a split by tensor has exactly the chance share (the random deltas keep every tensor's norm); (2) a pure
    magnitude change of W0's rows holds all of the norm in DoRA's magnitude part, where random deltas of the same
    shape put about 1/sqrt(in) (first order: each row's change along W0's row)."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 16, generator=generator), torch.randn(4, 16, generator=generator) * 3
    delta = WeightDelta({"a.weight": a, "b.weight": b})

    def by_tensor(d):
        return [da.select(d, lambda n: n == "a.weight", "a"), da.select(d, lambda n: n == "b.weight", "b")]

    rows = {row["part"]: row for row in da.norm_shares(by_tensor, delta, seeds=(1, 2))}
    assert rows["a"]["share"] == pytest.approx(float(a.norm() / torch.cat([a.flatten(), b.flatten()]).norm()))
    for row in rows.values():
        assert row["chance"] == pytest.approx(row["share"], rel=1e-6) and len(row["chance_values"]) == 2

    name = "model.layers.0.mlp.down_proj.weight"
    w0 = torch.randn(32, 400, generator=generator)
    scaled_rows = w0 * (1e-3 * torch.randn(32, 1, generator=generator))  # each row longer or shorter, same direction
    dora = {row["part"]: row for row in da.norm_shares(lambda d: da.dora_variants(d, {name: w0}),
                                                        WeightDelta({name: scaled_rows}), seeds=(1, 2, 3))}
    assert dora["dora_magnitude"]["share"] == pytest.approx(1.0, abs=1e-3)
    assert dora["dora_magnitude"]["chance"] == pytest.approx(1 / math.sqrt(400), rel=0.15)
    assert dora["dora_magnitude"]["ratio_to_chance"] == pytest.approx(math.sqrt(400), rel=0.15)
    with pytest.raises(ValueError, match="seeds is empty"):
        da.norm_shares(by_tensor, delta, seeds=())
