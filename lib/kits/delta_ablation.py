"""Variants of a trained weight delta, to ask which part of dW carries the behaviour.

Weight steering (Fierro & Roger 2025, "Steering language models with weight arithmetic") applies
`coefficient * dW` with `dW = dW_pos - dW_neg`, dense deltas merged from persona adapters (`lib.weights`). The
analysis evaluates *variants* of one trained dW (a crop by module role or layer, a band of its singular directions,
its projection on a subspace, a norm-matched random control) on the exact eval rows and coefficient grid of the full
dW and reports `retained = effect(variant) / effect(full dW)`. This module builds those variants from the trained
deltas (and, for the lenses that need them, the base weights) alone: never from activations, so a variant cannot
smuggle in information about the eval rows. A kit, not the core: the weight_ablation experiment is its one user,
and what a parameter is (module role, block, stored orientation) lives in `lib.weights` (issue "The weight wing and
one way in", item 2).

Conventions:
- Every variant is a `Variant` (a short stable `name` for a table, a `group` naming the split it belongs to, its
  `VariantFields` (what the name says, as data: kind, rank k, keep/drop part, layer, control of), the adapter
  `family` where one applies, and a `WeightDelta`). A split's parts sum back to what they split (`check_sums_to`
  raises otherwise); tests/test_delta_ablation.py checks every split.
- Selection variants (roles, layers) share the full delta's tensors (no copies), so building dozens of them costs no
  memory; never modify a variant's tensors in place.
- Matrices are read as [out, in] (`as_matrix`): an `nn.Linear` weight already is; GPT-2's Conv1D stores [in, out]
  and is transposed. "Left singular vectors" are therefore always in the output space; for `o`/`down` that is the
  residual stream.
- Cropping shrinks the norm and the model is non-linear in the coefficient, so a crop that retains the effect at a
  smaller norm is not evidence by itself: every sufficiency claim needs its `norm_matched` control and
  `norm_matched_random` null.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from numbers import Real
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from lib.weights import (
    ATTENTION,
    ATTENTION_READS,
    MLP,
    MLP_READS,
    RESIDUAL_WRITES,
    WeightDelta,
    as_matrix,
    conv1d_names,
    from_matrix,
    layer_of,
    module_role,
)

# ----------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class VariantFields:
    """What a variant's name says, as fields to filter on; the name stays the table key (saved CSVs and journal
    tables use it). Names such as `shared32_keep`, `L4_only` or `mid~rand` were parsed back with regexes, and
    `in_ia332_keep` does not even say whether it is family ia3 at K=32 or ia33 at K=2 (issue "The weight wing and
    one way in", item 3).

    `kind`: the name itself for a variant without parameters ("writes", "mid", "svd_top25", "dora_magnitude",
    "zero"); "layer_only" / "layer_out" (block `layer` alone / every block but it); "shared", "own",
    "random_basis", "cross" (a residual-stream basis of rank `k`, `part` "keep" or "drop"; "cross" is family
    `basis_family`'s own basis); "base" (the base weights' top-`k` singular subspace, `part` "keep" or "drop");
    "random" (a norm-matched random delta); "norm_matched" (a crop rescaled to the full norm).
    `control_of`: the crop a sufficiency control (`<crop>@norm`, `<crop>~rand`) is the control of."""

    kind: str
    k: int | None = None
    part: str = ""
    layer: int | None = None
    basis_family: str = ""
    control_of: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_name(cls, name: str, families: Collection[str] = ()) -> VariantFields:
        """The fields of a variant scored before they were saved beside its name (evaluations.json records without
        "fields"), read back from the name once, here. `families` are the run's families: `in_<family><K>_<part>`
        cannot be split without them."""
        for suffix, kind in (("@norm", "norm_matched"), ("~rand", "random")):
            if name.endswith(suffix):
                return cls(kind, control_of=name.removesuffix(suffix))
        if match := re.fullmatch(r"L(\d+)_(only|out)", name):
            return cls(f"layer_{match[2]}", layer=int(match[1]))
        if match := re.fullmatch(r"(shared|own|rand)(\d+)_(keep|drop)", name):
            return cls(BASIS_KINDS[match[1]], k=int(match[2]), part=match[3])
        if match := re.fullmatch(r"base_(top|rest)(\d+)", name):
            return cls("base", k=int(match[2]), part="keep" if match[1] == "top" else "drop")
        if re.fullmatch(r"random_s\d+", name):
            return cls("random")
        if re.fullmatch(r"in_.+\d+_(keep|drop)", name):
            found = [cls("cross", k=int(match[1]), part=match[2], basis_family=family) for family in families
                     if (match := re.fullmatch(rf"in_{re.escape(family)}(\d+)_(keep|drop)", name))]
            if len(found) != 1:
                raise ValueError(f"variant {name!r}: {'no' if not found else 'more than one'} family of "
                                 f"{sorted(families)} is the basis it was projected on")
            return found[0]
        return cls(name)


BASIS_KINDS = {"shared": "shared", "own": "own", "rand": "random_basis"}  # basis label in a name -> its kind


@dataclass(frozen=True)
class Variant:
    """One variant of a delta: `name` is short and stable (a table key), `group` the split it belongs to, `fields`
    what the name says as data, `family` the adapter family where the variant is family-specific (cross-adapter
    bases), `empty` when nothing was kept (the delta is then one zero tensor, so applying it is the base model
    exactly)."""

    name: str
    group: str
    delta: WeightDelta
    fields: VariantFields
    family: str = ""
    empty: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def norm(self) -> float:
        return self.delta.norm()


def _zero_delta(delta: WeightDelta) -> WeightDelta:
    # one zero tensor (the smallest) keeps a WeightDelta non-empty and applicable to the same model
    name = min(delta.names, key=lambda n: (delta[n].numel(), n))
    return WeightDelta({name: torch.zeros_like(delta[name])}, {"op": "zero"})


def _variant(name: str, group: str, tensors: Mapping[str, torch.Tensor], full: WeightDelta, family: str = "",
             fields: VariantFields | None = None, **meta: Any) -> Variant:
    fields = fields or VariantFields(name)
    if not tensors:
        return Variant(name, group, _zero_delta(full), fields, family, True, dict(meta))
    return Variant(name, group, WeightDelta(dict(tensors), {**full.meta, "variant": name}), fields, family, False,
                   dict(meta))


def select(delta: WeightDelta, keep: Callable[[str], bool], name: str, group: str = "select",
           family: str = "", fields: VariantFields | None = None) -> Variant:
    """The tensors whose parameter name satisfies `keep` (shared with `delta`, not copied); empty if none does.
    `fields` default to a variant without parameters (kind = name)."""
    return _variant(name, group, {n: delta[n] for n in delta.names if keep(n)}, delta, family, fields)


def zero_variant(delta: WeightDelta) -> Variant:
    """The zero delta: every coefficient gives the base model (the floor of every retained table)."""
    return Variant("zero", "control", _zero_delta(delta), VariantFields("zero"), "", True)


def role_variants(delta: WeightDelta, roles: Mapping[str, str] | None = None) -> list[Variant]:
    """Crops by module role, group "roles": full; writes (o + down: what writes into the residual stream) and
    reads (everything else); attention (q, k, v, qkv, o), mlp (gate, up, down, fc) and other (embeddings, norms,
    LM head); attn_read (q, k, v, qkv) and mlp_read (gate, up, fc).
    Partitions: writes + reads, attention + mlp + other, attn_read + mlp_read + writes + other."""
    role = {n: module_role(n, roles) for n in delta.names}
    picks: dict[str, Callable[[str], bool]] = {
        "full": lambda n: True,
        "writes": lambda n: role[n] in RESIDUAL_WRITES,
        "reads": lambda n: role[n] not in RESIDUAL_WRITES,
        "attention": lambda n: role[n] in ATTENTION,
        "mlp": lambda n: role[n] in MLP,
        "other": lambda n: role[n] == "other",
        "attn_read": lambda n: role[n] in ATTENTION_READS,
        "mlp_read": lambda n: role[n] in MLP_READS,
    }
    return [select(delta, pick, name, "roles") for name, pick in picks.items()]


def layer_thirds(n_layers: int) -> dict[str, list[int]]:
    """Blocks 0..n-1 split into "early", "mid", "late": block b goes to third floor(3 b / n) (30 -> 10/10/10)."""
    if n_layers < 1:
        raise ValueError(f"n_layers={n_layers} must be >= 1")
    thirds: dict[str, list[int]] = {"early": [], "mid": [], "late": []}
    for block in range(n_layers):
        thirds[("early", "mid", "late")[3 * block // n_layers]].append(block)
    return thirds


def layer_variants(delta: WeightDelta, n_layers: int | None = None) -> list[Variant]:
    """Crops by decoder block: group "thirds" (early, mid, late, and non_block for tensors outside the blocks),
    group "layer_only" (`L<i>_only`: block i alone) and group "layer_out" (`L<i>_out`: every tensor but block i's).

    Pass the model's block count as `n_layers` (the delta may not touch the last blocks); by default it is the
    largest block index in the delta plus one."""
    layer = {n: layer_of(n, allow_none=True) for n in delta.names}
    present = sorted({i for i in layer.values() if i is not None})
    if n_layers is None:
        if not present:
            raise ValueError("the delta touches no decoder block; layer variants need block parameters")
        n_layers = present[-1] + 1
    if present and present[-1] >= n_layers:
        raise ValueError(f"the delta touches block {present[-1]} but n_layers={n_layers}")
    variants = []
    for name, blocks in layer_thirds(n_layers).items():
        chosen = set(blocks)
        variants.append(select(delta, lambda n, chosen=chosen: layer[n] in chosen, name, "thirds"))
    variants.append(select(delta, lambda n: layer[n] is None, "non_block", "thirds"))
    for i in range(n_layers):
        variants.append(select(delta, lambda n, i=i: layer[n] == i, f"L{i}_only", "layer_only",
                               fields=VariantFields("layer_only", layer=i)))
    for i in range(n_layers):
        variants.append(select(delta, lambda n, i=i: layer[n] != i, f"L{i}_out", "layer_out",
                               fields=VariantFields("layer_out", layer=i)))
    return variants


# ----------------------------------------------------------------------------- norm-matched controls


def norm_matched_random(delta: WeightDelta, seed: int = 0, name: str | None = None) -> Variant:
    """A Gaussian random delta on the same parameters whose every tensor has the Frobenius norm of `delta`'s
    (seeded; same seed, same delta). The null for "any perturbation this large, placed in these tensors, would do"."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for n in delta.names:  # sorted names: the draw of each tensor depends on the seed only
        target = delta[n].double().norm()
        noise = torch.randn(delta[n].shape, generator=generator, dtype=torch.float64)
        scale = target / noise.norm() if target > 0 and noise.norm() > 0 else 0.0
        tensors[n] = (noise * scale).to(device=delta[n].device, dtype=delta[n].dtype)
    return _variant(name or f"random_s{seed}", "control", tensors, delta, fields=VariantFields("random"), seed=seed)


def norm_shares(split: Callable[[WeightDelta], Sequence[Variant]], delta: WeightDelta,
                seeds: Sequence[int] = (1, 2, 3)) -> list[dict[str, Any]]:
    """Each part's share of the delta's norm (||part|| / ||delta||) beside its chance value: the same share for
    random deltas with `delta`'s per-tensor norms (`norm_matched_random`, one per seed), through the same `split`.

    Why (issue "Corrections", requirement 4): "LoRA's magnitude part holds 0.041 of the norm" read as "direction,
    not magnitude", but a random delta of the same shape puts about 1/sqrt(576) = 0.042 there. A geometric share
    means something only beside what an unrelated delta of the same shapes gives. `split` is e.g.
    `lambda d: dora_variants(d, base)`."""
    if not seeds:
        raise ValueError("seeds is empty: the chance value is a mean over at least one random delta")
    total = delta.norm()
    if total == 0:
        raise ValueError("the delta is zero: its parts have no share of its norm")
    chance: dict[str, list[float]] = {}
    for seed in seeds:
        random = norm_matched_random(delta, seed).delta
        for part in split(random):
            chance.setdefault(part.name, []).append(part.norm() / random.norm())
    rows = []
    for part in split(delta):
        values = chance.get(part.name, [])
        mean = float(np.mean(values)) if values else math.nan
        share = part.norm() / total
        rows.append({"part": part.name, "share": share, "chance": mean, "chance_values": values,
                     "ratio_to_chance": share / mean if mean else math.nan})
    return rows


def norm_matched(variant: Variant, reference_norm: float | WeightDelta | Variant) -> Variant:
    """`variant` rescaled to a total Frobenius norm (a float, or the norm of a delta or variant): a crop that
    shrinks the norm must be compared with itself at the full norm, since the model is non-linear in the
    coefficient (Fierro & Roger 2025 compare methods at matched side effects for the same reason)."""
    target = reference_norm if isinstance(reference_norm, (int, float)) else reference_norm.norm()
    current = variant.norm()
    if variant.empty or current == 0.0:
        raise ValueError(f"variant {variant.name!r} is zero: it cannot be rescaled to norm {target:.4g}")
    scale = float(target) / current
    scaled = WeightDelta({n: d * scale for n, d in variant.delta.deltas.items()}, {**variant.delta.meta,
                                                                                   "norm_scale": scale})
    fields = VariantFields("norm_matched", control_of=variant.name)
    return Variant(f"{variant.name}@norm", variant.group, scaled, fields, variant.family, False,
                   {**variant.meta, "norm_scale": scale})


def sufficiency_controls(crop: Variant, full: WeightDelta | Variant, seed: int) -> list[Variant]:
    """The two controls a crop that retains at a smaller norm needs: `<crop>@norm`, the crop rescaled to the full
    delta's norm, and `<crop>~rand` (group "sufficiency"), a random delta with the crop's per-tensor norms on the
    same tensors: does any perturbation this large, there, do it?"""
    random = norm_matched_random(crop.delta, seed=seed, name=f"{crop.name}~rand")
    return [norm_matched(crop, full), Variant(random.name, "sufficiency", random.delta,
                                              VariantFields("random", control_of=crop.name), crop.family, False,
                                              {"of": crop.name})]


# ----------------------------------------------------------------------------- the sum check


def check_sums_to(full: WeightDelta | Variant, parts: Iterable[WeightDelta | Variant], rtol: float = 1e-5,
                  what: str = "parts") -> None:
    """Raise unless the parts add up to `full`, tensor by tensor, within `rtol` of each tensor's norm (absent
    tensors are zeros). A split whose parts do not sum back has lost or double-counted part of dW, so its
    retention numbers would not partition anything."""
    full_delta = full.delta if isinstance(full, Variant) else full
    left = {n: d.double().clone() for n, d in full_delta.deltas.items()}
    for part in parts:
        for n, d in (part.delta if isinstance(part, Variant) else part).deltas.items():
            if n in left:
                left[n] -= d.double().to(left[n].device)
            elif d.abs().max() > 0:
                raise ValueError(f"{what}: {n} is in a part but not in the full delta")
    errors = {n: (float(r.norm()), float(full_delta[n].double().norm())) for n, r in left.items()}
    relative = {n: error / norm if norm > 0 else (math.inf if error > 0 else 0.0) for n, (error, norm) in
                errors.items()}
    worst = max(relative, key=relative.__getitem__)
    if relative[worst] > rtol:
        raise ValueError(f"{what} do not sum to the full delta: {worst} misses by {errors[worst][0]:.3g} "
                         f"(tensor norm {errors[worst][1]:.3g}, relative {relative[worst]:.3g} > rtol {rtol})")


# ----------------------------------------------------------------------------- SVD of dW


def _svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.linalg.svd(matrix.double(), full_matrices=False)


def _pieces(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, groups: Sequence[slice]) -> list[torch.Tensor]:
    # the last group takes whatever the others leave, so the pieces sum to U S Vh exactly up to rounding
    return [(u[:, g] * s[g]) @ vh[g] for g in groups]


def svd_variants(delta: WeightDelta, bands: tuple[float, float] = (0.25, 0.75),
                 energy: tuple[float, float] = (0.5, 0.9), rank_rtol: float = 1e-4) -> list[Variant]:
    """Per-tensor SVD bands of every 2-D tensor (dW = U S V^T, in [out, in] orientation).

    Group "svd_rank": the top `bands[0]`, middle and bottom `1 - bands[1]` of the tensor's effective singular
    directions, `svd_top25`, `svd_mid50`, `svd_bottom25` by default. The effective rank counts singular values above
    `rank_rtol * s_max`: the difference of two rank-8 LoRAs has rank <= 16 plus float32 merge noise near 1e-7 s_max,
    and counting that noise would put all of the signal in the top band. Directions below it go to the bottom band
    (each band takes ceil(fraction * rank) directions), so the bands still sum to dW.
    Group "svd_energy": directions grouped by the energy (sum of S^2) before them: the smallest top set holding
    `energy[0]` of it (`energy_0-50`), the directions up to `energy[1]` (`energy_50-90`) and the tail.
    Tensors that are not matrices (biases, norm scales, IA3-like vectors) are in neither: variant `non_matrix`
    (group "non_matrix") holds them, so each group plus `non_matrix` is the full delta.
    Each band is a dense copy of the matrices: 6 copies of dW's matrices in memory at once.
    """
    lo, hi = bands
    cut_a, cut_b = energy
    if not 0 < lo < hi < 1 or not 0 < cut_a < cut_b < 1:
        raise ValueError(f"bands={bands} and energy={energy} must be two increasing fractions in (0, 1)")
    rank_names = (f"svd_top{round(100 * lo)}", f"svd_mid{round(100 * (hi - lo))}", f"svd_bottom{round(100 * (1 - hi))}")
    energy_names = (f"energy_0-{round(100 * cut_a)}", f"energy_{round(100 * cut_a)}-{round(100 * cut_b)}",
                    f"energy_{round(100 * cut_b)}-100")
    by_rank: list[dict[str, torch.Tensor]] = [{}, {}, {}]
    by_energy: list[dict[str, torch.Tensor]] = [{}, {}, {}]
    non_matrix, ranks = {}, {}
    for n, d in delta.deltas.items():
        if d.ndim != 2:
            non_matrix[n] = d
            continue
        u, s, vh = _svd(as_matrix(n, d))
        rank = int((s > rank_rtol * s[0]).sum()) if s.numel() and s[0] > 0 else 0
        ranks[n] = rank
        a, b = math.ceil(lo * rank), math.ceil(hi * rank)
        rank_groups = (slice(0, a), slice(a, b), slice(b, None))
        total = float((s**2).sum())
        before = torch.cumsum(s**2, 0) - s**2  # energy of the directions above each one
        frac = before / total if total > 0 else torch.ones_like(s)
        first, second = int((frac < cut_a).sum()), int((frac < cut_b).sum())
        energy_groups = (slice(0, first), slice(first, second), slice(second, None))
        for store, groups in ((by_rank, rank_groups), (by_energy, energy_groups)):
            for target, piece in zip(store, _pieces(u, s, vh, groups), strict=True):
                target[n] = from_matrix(n, piece).to(dtype=d.dtype, device=d.device)
    variants = [_variant(name, "svd_rank", part, delta, ranks=ranks) for name, part in zip(rank_names, by_rank,
                                                                                             strict=True)]
    variants += [_variant(name, "svd_energy", part, delta) for name, part in zip(energy_names, by_energy, strict=True)]
    variants.append(_variant("non_matrix", "non_matrix", non_matrix, delta))
    return variants


# ----------------------------------------------------------------------------- base-weight SVD lens


def _base_params(base: nn.Module | Mapping[str, torch.Tensor],
                 transposed: Collection[str] | None) -> tuple[Mapping[str, torch.Tensor], Collection[str] | None]:
    # a model says which of its weights are Conv1D; a state dict falls back on the names (see output_axis)
    if isinstance(base, nn.Module):
        return dict(base.named_parameters()), conv1d_names(base) if transposed is None else transposed
    return base, transposed


def base_coordinates(delta_matrix: torch.Tensor, base_matrix: torch.Tensor) -> torch.Tensor:
    """C = U0^T dW V0 for W0 = U0 S0 V0^T (thin SVD, both [out, in]): dW in the base's singular coordinates,
    rows and columns ordered by W0's singular values (largest first)."""
    if delta_matrix.shape != base_matrix.shape:
        raise ValueError(f"delta shape {tuple(delta_matrix.shape)} != base shape {tuple(base_matrix.shape)}")
    u0, _, v0h = _svd(base_matrix)
    return u0.T @ delta_matrix.double() @ v0h.T


def base_svd_lens(delta: WeightDelta, base: nn.Module | Mapping[str, torch.Tensor],
                  ks: Sequence[int] = (8, 32, 128), roles: Mapping[str, str] | None = None,
                  transposed: Collection[str] | None = None) -> list[dict[str, Any]]:
    """Does dW ride the pretrained directions? One row per (2-D tensor, k): `top_k_fraction` = the share of
    ||dW||^2 in the top-k x top-k block of C = U0^T dW V0, `in_span_fraction` = ||C||^2 / ||dW||^2 (below 1 when
    W0 is not square and dW leaves its row or column space), and `chance` = k^2 / (out * in), what an isotropic
    random dW would put in that block. k is clipped at min(out, in). `base` is the model or its state dict
    (`transposed`: see `output_axis`)."""
    params, transposed = _base_params(base, transposed)
    rows = []
    for n, _, dw, w0 in _matrices_with_base(delta, params, transposed, non_matrix={}):
        coords = base_coordinates(dw, w0)
        total = float((dw ** 2).sum())
        out_dim, in_dim = dw.shape
        for k in ks:
            k_eff = min(int(k), min(out_dim, in_dim))
            rows.append({"name": n, "layer": layer_of(n, allow_none=True), "role": module_role(n, roles), "k": k_eff,
                         "top_k_fraction": float((coords[:k_eff, :k_eff] ** 2).sum()) / total if total else math.nan,
                         "in_span_fraction": float((coords**2).sum()) / total if total else math.nan,
                         "chance": k_eff * k_eff / (out_dim * in_dim)})
    return rows


def _matrices_with_base(delta: WeightDelta, params: Mapping[str, torch.Tensor], transposed: Collection[str],
                        non_matrix: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor, torch.Tensor,
                                                                            torch.Tensor]]:
    """(name, delta tensor, dW as a float64 [out, in] matrix, W0 as [out, in]) for each 2-D tensor of `delta`;
    1-D tensors go into `non_matrix`. A matrix missing from the base weights raises."""
    for n, d in delta.deltas.items():
        if d.ndim != 2:
            non_matrix[n] = d
            continue
        if n not in params:
            raise ValueError(f"{n} is in the delta but not in the base weights")
        yield (n, d, as_matrix(n, d.detach().cpu(), transposed).double(),
               as_matrix(n, params[n].detach().cpu(), transposed))


def base_subspace_variants(delta: WeightDelta, base: nn.Module | Mapping[str, torch.Tensor],
                           ranks: Sequence[int] = (8, 32),
                           side: Literal["both", "left", "right"] = "both",
                           transposed: Collection[str] | None = None) -> list[Variant]:
    """dW projected on the top-r singular subspaces of each base matrix W0 (group "base_svd"): `base_top<r>` keeps
    P_L dW P_R (P_L = U0r U0r^T on the output side, P_R = V0r V0r^T on the input side; `side` keeps one of them
    only) and `base_rest<r>` is dW minus that. Non-matrix tensors are in `non_matrix` (group "non_matrix"), so
    top + rest + non_matrix is the full delta for every r."""
    if side not in ("both", "left", "right"):
        raise ValueError(f"side={side!r}; choose 'both', 'left' or 'right'")
    params, transposed = _base_params(base, transposed)
    kept: dict[int, dict[str, torch.Tensor]] = {int(r): {} for r in ranks}
    rest: dict[int, dict[str, torch.Tensor]] = {int(r): {} for r in ranks}
    non_matrix: dict[str, torch.Tensor] = {}
    for n, d, dw, w0 in _matrices_with_base(delta, params, transposed, non_matrix):
        u0, _, v0h = _svd(w0)
        for r in kept:
            left, right = u0[:, :r], v0h[:r].T
            piece = dw
            if side in ("both", "left"):
                piece = left @ (left.T @ piece)
            if side in ("both", "right"):
                piece = (piece @ right) @ right.T
            kept[r][n] = from_matrix(n, piece, transposed).to(dtype=d.dtype, device=d.device)
            rest[r][n] = from_matrix(n, dw - piece, transposed).to(dtype=d.dtype, device=d.device)
    variants = []
    for r in kept:
        for name, part, tensors in ((f"base_top{r}", "keep", kept[r]), (f"base_rest{r}", "drop", rest[r])):
            variants.append(_variant(name, "base_svd", tensors, delta, fields=VariantFields("base", k=r, part=part),
                                     side=side))
    variants.append(_variant("non_matrix", "non_matrix", non_matrix, delta))
    return variants


# ----------------------------------------------------------------------------- DoRA: magnitude vs direction


def dora_variants(delta: WeightDelta, base: nn.Module | Mapping[str, torch.Tensor],
                  transposed: Collection[str] | None = None) -> list[Variant]:
    """Split W' = W0 + dW into DoRA's magnitude and direction (Liu et al. 2024) from dense weights only (group
    "dora"). DoRA writes W' = m * V / ||V|| with one norm per output unit: PEFT's `DoraLinearLayer.get_weight_norm`
    takes `linalg.norm(weight, dim=1)` of the [out, in] weight (Conv1D transposed first), i.e. over the inputs of
    each output row. So:
    - `dora_magnitude` = W0 with each output row rescaled to W''s row norm, minus W0 (W0's directions, W''s norms);
    - `dora_direction` = W' with each output row rescaled to W0's row norm, minus W0 (W''s directions, W0's norms);
    - `dora_residual` = dW minus both: the two do not add up to dW (the change is multiplicative), and this part,
    with every non-matrix tensor, makes the three sum to dW; `meta["residual_fraction"]` is its share of ||dW||.
    Rows where W0 or W' is zero are left unchanged by both (their change is in the residual)."""
    params, transposed = _base_params(base, transposed)
    magnitude: dict[str, torch.Tensor] = {}
    direction: dict[str, torch.Tensor] = {}
    residual: dict[str, torch.Tensor] = {}
    for n, d, dw, w0 in _matrices_with_base(delta, params, transposed, residual):
        w0 = w0.double()
        w1 = w0 + dw
        n0, n1 = w0.norm(dim=1, keepdim=True), w1.norm(dim=1, keepdim=True)
        ok = (n0 > 0) & (n1 > 0)
        mag = torch.where(ok, w0 * (n1 / n0.clamp_min(1e-300)), w0) - w0
        dirn = torch.where(ok, w1 * (n0 / n1.clamp_min(1e-300)), w0) - w0
        for store, value in ((magnitude, mag), (direction, dirn), (residual, w1 - w0 - mag - dirn)):
            store[n] = from_matrix(n, value, transposed).to(dtype=d.dtype, device=d.device)
    res = _variant("dora_residual", "dora", residual, delta)
    fraction = res.norm() / delta.norm() if delta.norm() > 0 else math.nan
    return [_variant("dora_magnitude", "dora", magnitude, delta), _variant("dora_direction", "dora", direction, delta),
            replace(res, meta={"residual_fraction": fraction})]


# ----------------------------------------------------------------------------- IA3: attention vs MLP gates


def ia3_gates(delta: WeightDelta, base: nn.Module | Mapping[str, torch.Tensor],
              transposed: Collection[str] | None = None, rtol: float = 1e-2) -> dict[str, dict[str, Any]]:
    """The gate vector behind each tensor of an IA3 delta, or an error if the delta is not one.

    IA3 (Liu et al. 2022) learns one scaling vector l per module: on the output of most modules, on the input of
    the feed-forward down projection. Merged, dW = diag(l - 1) W0 (output gate: rows of W0 scaled) or
    W0 diag(l - 1) (input gate: columns); a weight-steering difference of two IA3 adapters keeps that form. Per
    tensor the gate g is the least-squares row (or column) scale of W0 that gives dW, the side with the smaller
    relative residual wins, and a residual above `rtol` raises: the "ia3" ablation group means something only
    for deltas of this shape. Returns {name: {"side": "output"|"input", "gate": g, "residual": r}}."""
    params, transposed = _base_params(base, transposed)
    gates: dict[str, dict[str, Any]] = {}
    for n, _, dw, w0 in _matrices_with_base(delta, params, transposed, {}):
        w0 = w0.double()
        size = dw.norm()
        if size == 0:
            gates[n] = {"side": "output", "gate": torch.zeros(w0.shape[0], dtype=torch.float64), "residual": 0.0}
            continue
        fits = {}
        for side, axis in (("output", 1), ("input", 0)):
            gate = (dw * w0).sum(axis) / (w0 * w0).sum(axis).clamp_min(1e-300)
            fitted = gate[:, None] * w0 if axis == 1 else w0 * gate[None, :]
            fits[side] = (float((dw - fitted).norm() / size), gate)
        side = min(fits, key=lambda k: fits[k][0])
        residual, gate = fits[side]
        if residual > rtol:
            raise ValueError(f"{n}: the delta is no row or column scaling of the base weight (relative residual "
                             f"{residual:.3g} > {rtol}), so it is not an IA3 delta: use the 'ia3' group on IA3 "
                             "deltas only (families=['ia3'])")
        gates[n] = {"side": side, "gate": gate, "residual": residual}
    return gates


def ia3_variants(delta: WeightDelta, base: nn.Module | Mapping[str, torch.Tensor],
                 roles: Mapping[str, str] | None = None, transposed: Collection[str] | None = None,
                 rtol: float = 1e-2) -> list[Variant]:
    """Group "ia3": keep the attention gates (q, k, v, o) or the MLP gates (gate, up, down) of an IA3 delta, with
    `other` for anything else, so the three sum to dW. `ia3_gates` first checks that dW is IA3-shaped;
    `meta["gate_norms"]` holds each tensor's |l_pos - l_neg| (the size of the gate the behaviour moved)."""
    gates = ia3_gates(delta, base, transposed, rtol)
    role = {n: module_role(n, roles) for n in delta.names}
    norms = {n: float(g["gate"].norm()) for n, g in gates.items()}
    picks = {"attention_gates": lambda n: role[n] in ATTENTION, "mlp_gates": lambda n: role[n] in MLP,
             "ia3_other": lambda n: role[n] not in ATTENTION | MLP}
    variants = [select(delta, pick, name, "ia3") for name, pick in picks.items()]
    return [replace(v, meta={**v.meta, "gate_norms": {n: norms[n] for n in v.delta.names if n in norms}})
            for v in variants]


# ----------------------------------------------------------------------------- cross-adapter bases


def _left_basis(matrices: Sequence[torch.Tensor], k: int, rank_rtol: float = 1e-6) -> torch.Tensor:
    """Top-k left singular vectors [out, k'] of [M_1 | M_2 | ...] (from the Gram sum M M^T, never the wide
    stack), k' clipped at the stack's numerical rank (singular values above rank_rtol * s_max)."""
    gram = sum(m.double() @ m.double().T for m in matrices)
    values, vectors = torch.linalg.eigh(gram)
    values, vectors = values.flip(0), vectors.flip(1)  # descending
    if values[0] <= 0:
        return vectors[:, :0]
    rank = int((values > (rank_rtol**2) * values[0]).sum())
    return vectors[:, : min(int(k), rank)]


def residual_write_names(delta: WeightDelta, roles: Mapping[str, str] | None = None) -> list[str]:
    """The 2-D tensors whose output space is the residual stream (roles o and down)."""
    return [n for n in delta.names if delta[n].ndim == 2 and module_role(n, roles) in RESIDUAL_WRITES]


def random_orthonormal(dim: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random k-frame [dim, k] (QR of a Gaussian matrix, column signs fixed by R's diagonal)."""
    q, r = torch.linalg.qr(torch.randn(dim, k, generator=generator, dtype=torch.float64))
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1.0
    return q * signs


def basis_variants(deltas: Mapping[str, WeightDelta], ks: Sequence[int] = (8, 32, 64),
                   roles: Mapping[str, str] | None = None, normalize: bool = True, seed: int = 0,
                   transposed: Collection[str] | None = None, cross: bool = True,
                   families: Collection[str] | None = None) -> list[Variant]:
    """Is there one residual-stream subspace that every adapter family writes the behaviour into?

    For each residual-writing tensor (o, down: output space = the residual stream; see `residual_write_names`) the
    families' [out, in] matrices are stacked side by side, [dW_f1 | dW_f2 | ...], and U_K holds the stack's top-K
    left singular vectors (K clipped at its numerical rank; with `normalize` each family's matrix is scaled to unit
    norm first, so a family with a large delta does not own the basis). Per family f and K, group "basis":
    - `shared<K>_keep` = U_K U_K^T dW_f and `shared<K>_drop` = (I - U_K U_K^T) dW_f;
    - `own<K>_keep` / `own<K>_drop`: the same with f's own top-K left singular vectors (top-k and tail);
    - `rand<K>_keep` / `rand<K>_drop`: a seeded random orthonormal basis of the same rank per tensor, the null:
      a linear readout keeps K/d of the effect on average;
    - with `cross`, `in_<g><K>_keep` / `in_<g><K>_drop` for every other family g: f projected on g's own top-K.
      The shared basis is fitted to f's own delta too, so it can keep f's effect by holding f's top directions
      alone (journal 2026-12-01: own-basis keep as high as shared); g's basis never saw f, so retention there is
      evidence that the families write into one subspace.
    Only residual-writing tensors appear, so each keep + drop is `select(... writes)` of dW_f; `meta["k"]` has the
    rank used per tensor; `transposed`: see `output_axis`. `families` builds the variants of those families only
    (every family still shapes the shared basis): one family at a time holds a sixth of the dense copies."""
    if not deltas:
        raise ValueError("deltas is empty: give {family: WeightDelta}")
    wanted = list(deltas) if families is None else list(families)
    unknown = sorted(set(wanted) - set(deltas))
    if unknown:
        raise ValueError(f"families={unknown} have no delta; choose from {sorted(deltas)}")
    names = sorted({n for delta in deltas.values() for n in residual_write_names(delta, roles)})
    if not names:
        raise ValueError("no residual-writing (o_proj / down_proj / c_proj) 2-D tensor in any delta; pass roles=")
    generator = torch.Generator().manual_seed(seed)
    parts: dict[tuple[str, str], dict[str, torch.Tensor]] = defaultdict(dict)  # (family, variant) -> tensors
    ranks: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)  # (family, label + K) -> rank per tensor
    for n in names:
        mats = {f: as_matrix(n, d[n].detach().cpu(), transposed).double() for f, d in deltas.items() if n in d.deltas}
        shapes = {tuple(m.shape) for m in mats.values()}
        if len(shapes) != 1:
            raise ValueError(f"{n}: families' shapes differ {sorted(shapes)}; are the deltas from one base model?")
        stack = [m / m.norm() if normalize and m.norm() > 0 else m for m in mats.values()]
        own_bases = {f: _left_basis([m], max(ks)) for f, m in mats.items()}
        for k in ks:
            shared = _left_basis(stack, k)
            null = random_orthonormal(shared.shape[0], shared.shape[1], generator)  # rank-matched to the shared basis
            for family, m in mats.items():
                if family not in wanted:
                    continue
                bases = [("shared", shared), ("own", own_bases[family][:, :k]), ("rand", null)]
                if cross:
                    bases += [(f"in_{g}", own_bases[g][:, :k] if g in own_bases else m.new_zeros(m.shape[0], 0))
                              for g in deltas if g != family]  # g without this tensor: an empty basis
                for label, basis in bases:
                    keep = basis @ (basis.T @ m)
                    for part, value in (("keep", keep), ("drop", m - keep)):
                        parts[family, f"{label}{k}_{part}"][n] = from_matrix(n, value, transposed).to(deltas[family][n])
                    ranks[family, f"{label}{k}"][n] = basis.shape[1]
    labels = {f: ["shared", "own", "rand"] + ([f"in_{g}" for g in deltas if g != f] if cross else [])
              for f in deltas}
    def fields(label: str, k: int, part: str) -> VariantFields:
        if label.startswith("in_"):
            return VariantFields("cross", k=k, part=part, basis_family=label.removeprefix("in_"))
        return VariantFields(BASIS_KINDS[label], k=k, part=part)

    return [_variant(f"{label}{k}_{part}", "basis", parts[family, f"{label}{k}_{part}"], delta, family,
                     fields(label, k, part), k=ranks[family, f"{label}{k}"])
            for family, delta in deltas.items() if family in wanted for k in ks for label in labels[family]
            for part in ("keep", "drop")]


# ----------------------------------------------------------------------------- rows and retention


@dataclass(frozen=True)
class EvalGrid:
    """What an effect was measured on: the eval rows (ids or texts, in order) and the coefficient grid. A variant's
    effect is only comparable with the full dW's when both grids are equal (`check_same_rows`)."""

    rows: tuple[str, ...]
    coefficients: tuple[float, ...]

    @property
    def digest(self) -> str:
        payload = json.dumps({"rows": list(self.rows), "coefficients": [repr(c) for c in self.coefficients]})
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def as_dict(self) -> dict[str, Any]:
        return {"rows": list(self.rows), "coefficients": list(self.coefficients), "digest": self.digest}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalGrid:
        grid = eval_grid(data["rows"], data["coefficients"])
        if "digest" in data and data["digest"] != grid.digest:
            raise ValueError(f"saved digest {data['digest']} does not match its rows and coefficients ({grid.digest})")
        return grid


def _row_key(row: Any) -> str:
    if isinstance(row, (str, int)):
        return str(row)
    for attribute in ("id", "prompt"):  # e.g. lib.choice_evals.ChoiceRow
        if hasattr(row, attribute):
            return str(getattr(row, attribute))
    raise TypeError(f"an eval row must be a str/int id or text, or have .id or .prompt; got {type(row).__name__}")


def eval_grid(rows: Iterable[Any], coefficients: Iterable[float]) -> EvalGrid:
    """An `EvalGrid` from row ids or texts (or objects with `.id` / `.prompt`) and coefficients (as floats)."""
    return EvalGrid(tuple(_row_key(r) for r in rows), tuple(float(c) for c in coefficients))


def check_same_rows(reference: EvalGrid | Mapping[str, Any] | str,
                    candidate: EvalGrid | Mapping[str, Any] | str) -> None:
    """Raise unless `candidate` was measured on the reference's rows (same order) and coefficient grid, naming what
    differs. Either side may be an `EvalGrid`, its `as_dict()`, or a bare digest (then only the digests compare)."""
    grids = [g if isinstance(g, (EvalGrid, str)) else EvalGrid.from_dict(g) for g in (reference, candidate)]
    ref, cand = grids
    if isinstance(ref, str) or isinstance(cand, str):
        digests = [g if isinstance(g, str) else g.digest for g in grids]
        if digests[0] != digests[1]:
            raise ValueError(f"eval grid digests differ: reference {digests[0]}, candidate {digests[1]} (other rows "
                             "or coefficients; compare full EvalGrids to see which)")
        return
    problems = []
    if ref.rows != cand.rows:
        if sorted(ref.rows) == sorted(cand.rows):
            problems.append("the same rows in another order (effects are paired by row)")
        else:
            missing = [r for r in ref.rows if r not in set(cand.rows)]
            extra = [r for r in cand.rows if r not in set(ref.rows)]
            problems.append(f"rows differ: {len(ref.rows)} vs {len(cand.rows)}; missing from the candidate "
                            f"{missing[:3]}{'...' if len(missing) > 3 else ''}, extra {extra[:3]}"
                            f"{'...' if len(extra) > 3 else ''}")
    if ref.coefficients != cand.coefficients:
        problems.append(f"coefficient grids differ: {list(ref.coefficients)} vs {list(cand.coefficients)}")
    if problems:
        raise ValueError("the variant was not measured on the full delta's eval grid: " + "; ".join(problems))


class NegligibleEffectError(ValueError):
    """The full delta's effect is within the floor of zero: a ratio to it measures noise, not retention."""


def retained(effect_variant: float | Sequence[float], effect_full: float | Sequence[float], *,
             floor: float = 1e-6, on_negligible: Literal["raise", "nan"] = "raise") -> float | list[float]:
    """effect(variant) / effect(full dW), elementwise for sequences (e.g. one per coefficient).

    Policy for a negligible full effect (|effect_full| <= `floor`): "raise" (default) raises
    `NegligibleEffectError` naming the entries; "nan" returns NaN there. Pass the noise level of the full effect
    (e.g. its seed standard deviation) as `floor`: a ratio to an effect inside the noise is meaningless however it
    is computed. Negative ratios are kept: the variant pushes the other way."""
    scalar = isinstance(effect_full, Real)
    variants = [float(effect_variant)] if scalar else [float(v) for v in effect_variant]  # type: ignore[arg-type]
    fulls = [float(effect_full)] if scalar else [float(v) for v in effect_full]  # type: ignore[union-attr]
    if len(variants) != len(fulls):
        raise ValueError(f"{len(variants)} variant effects vs {len(fulls)} full effects")
    if on_negligible not in ("raise", "nan"):
        raise ValueError(f"on_negligible={on_negligible!r}; choose 'raise' or 'nan'")
    small = [i for i, f in enumerate(fulls) if not abs(f) > floor]  # NaN counts as negligible
    if small and on_negligible == "raise":
        raise NegligibleEffectError(f"full-delta effect {[fulls[i] for i in small]} at entries {small} is within "
                                    f"floor={floor} of zero; retention is undefined there (on_negligible='nan' "
                                    "marks them NaN)")
    ratios = [math.nan if i in small else v / f for i, (v, f) in enumerate(zip(variants, fulls, strict=True))]
    return ratios[0] if scalar else ratios
