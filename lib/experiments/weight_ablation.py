"""The weight-ablation experiment's steps (notebook `weight_ablation`): which part of a trained dW carries the
behaviour?

Seed "Fork plan: weight steering benchmark + analysis", second half; issue 15. Weight steering (Fierro & Roger
2025) steers with `coefficient * dW`, dW = dW_pos - dW_neg from two trained adapters (`lib.experiments.
weight_steering`, whose run folder this module reads through `lib.kits.weight_runs`). This experiment starts from
the deltas such a run saved (`save_deltas=True`) and never builds a delta from activations. It evaluates variants of
each family's dW (`lib.kits.delta_ablation`: module roles, layer thirds, single layers in and out, per-tensor SVD
bands, the base weights' singular subspaces, DoRA's magnitude and direction, the cross-adapter residual basis with
own-family and random nulls, norm-matched random and zero controls) on the run's own test rows and coefficients,
and reports per variant

    retained = swing(variant) / swing(full dW),   swing = score(+c) - score(-c) at the largest c of the grid,

beside pmass and KL on neutral text. The swing is the antisymmetric part of the effect: the journal (2026-11-24)
found weight steering raising the honesty score at both signs of the coefficient, which is not steering along an
axis, and which a one-sided ratio would count as retention. Where the behaviour has held-out written replies (the
honesty dilemmas, `data/honesty_replies.jsonl`, validation and test items: never trained on), a second metric,
`preference` (mean per-token log-prob of the honest minus the deceptive reply), is read the same way: it is the
contrast the adapters learned, measurable even when the two-choice eval has no headroom.

Row identity: the eval rows are rebuilt from the run's parameters and checked against its fingerprint
(`rows_digest`), every variant's record carries the grid's digest (`check_same_rows` before any ratio), and the full
dW re-scored here must reproduce the run's saved per-row scores.

Sufficiency: a crop that keeps the effect at a smaller norm is compared with itself at the full norm (`@norm`) and
with a random delta of its own per-tensor norms on the same tensors (`~rand`); the model is non-linear in the
coefficient, so neither a large nor a small retention of a crop means anything without them.

Each variant is scored once: one whose tensors equal an already-scored variant of the same family (`content_digest`;
e.g. IA3's attention gates are the roles group's attention crop) copies its points and records `same_as`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from lib.choice_evals import AnswerFormat, summarize
from lib.config import ModelConfig, check_choice, check_positive
from lib.evals import continuation_logprobs, mean_kl
from lib.io import repo_path, write_json
from lib.kits import delta_ablation as da
from lib.kits.choice_data import (
    LOADERS,
    WRITTEN_BEHAVIOURS,
    ContrastPair,
    Item,
    load_written_pairs,
)
from lib.kits.uncertainty import ratio_of_means
from lib.kits.weight_runs import (
    FORMATS,
    KL_RENDERING,
    SavedEntry,
    neutral_logprobs,
    orders_of,
    partial_file,
    rows_digest,
    run_split,
    saved_behaviours,
    saved_deltas,
    saved_entries,
    score_items,
)
from lib.memory import Workload
from lib.models import find_layers
from lib.weights import WeightDelta, apply_delta

# The journal's run (RESEARCH_JOURNAL.md, 2026-12-01, weight steering over families): honesty, written replies; a
# run slug under out/weight_steering/ (`source_folder`).
DEFAULT_SOURCE = "adapters=lora,pissa,delora_behaviours=honesty_contrast_source=written_save_deltas=True"
GROUPS = ("roles", "thirds", "layer_only", "layer_out", "svd", "base_svd", "dora", "ia3", "basis", "controls")
FAMILY_GROUPS = {"ia3": "ia3"}  # group -> the one family it reads
KEPT_META = ("norm_scale", "residual_fraction", "seed", "of", "gate_norms")  # variant meta saved with its scores
PARTITIONS = {  # disjoint parts whose retentions a verdict compares (each set sums to the full delta)
    "writes/reads": ("writes", "reads"),
    "attention/mlp/other": ("attention", "mlp", "other"),
    "early/mid/late": ("early", "mid", "late", "non_block"),
    "svd bands": ("svd_top25", "svd_mid50", "svd_bottom25", "non_matrix"),
    "ia3 gates": ("attention_gates", "mlp_gates", "ia3_other"),
}


@dataclass
class WeightAblationConfig(ModelConfig):
    """Which part of a trained weight-steering dW carries the behaviour (seed "Fork plan: weight steering benchmark
    + analysis"; issue 15). Starts from the deltas of `weight_steering` runs saved with `save_deltas=True`."""

    notebook: ClassVar[str] = "weight_ablation"
    resources: ClassVar[dict[str, float]] = {"num_cpus": 2}
    deltas_from: tuple[str, ...] | list[str] = (DEFAULT_SOURCE,)
    behaviour: str = "honesty"
    families: tuple[str, ...] | list[str] = ()  # () = every family the runs saved
    seed: int = 0  # the adapter seed whose dW is ablated; the other seeds give the full dW's noise
    coefficients: tuple[float, ...] | list[float] = (-1.0, 1.0)  # inside the KL budget (journal 2026-12-01)
    groups: tuple[str, ...] | list[str] = GROUPS
    ks: tuple[int, ...] | list[int] = (8, 32, 64)
    base_ranks: tuple[int, ...] | list[int] = (8, 32)
    n_random: int = 2
    sufficient: float = 0.7
    removes: float = 0.3
    batch_size: int = 16
    out_dir: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.deltas_from = [str(d) for d in self.deltas_from]
        self.families = [str(f) for f in self.families]
        self.groups = [str(g) for g in self.groups]
        if not self.deltas_from:
            raise ValueError("deltas_from=[] names no run: give weight_steering run folders saved with "
                             "save_deltas=True")
        check_choice("behaviour", self.behaviour, tuple(LOADERS))
        if not self.groups:
            raise ValueError(f"groups=[] evaluates nothing: choose from {list(GROUPS)}")
        for group in self.groups:
            check_choice("groups", group, GROUPS)
        self.coefficients = [float(c) for c in self.coefficients]
        if not self.coefficients or 0.0 in self.coefficients or len(set(self.coefficients)) != len(self.coefficients):
            raise ValueError(f"coefficients={self.coefficients} must be distinct and non-zero (0 is the base, scored "
                             "once): e.g. [-4.0, 4.0]")
        if not any(c > 0 and -c in self.coefficients for c in self.coefficients):
            raise ValueError(f"coefficients={self.coefficients} need a pair +c and -c: the swing score(+c) - "
                             "score(-c) is what a variant retains")
        self.ks = [int(k) for k in self.ks]
        self.base_ranks = [int(r) for r in self.base_ranks]
        for name in ("ks", "base_ranks"):
            if not getattr(self, name) or min(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be positive ranks, e.g. [8, 32]")
        check_positive("batch_size", self.batch_size)
        check_positive("n_random", self.n_random, allow_zero=True)
        check_positive("seed", self.seed, allow_zero=True)
        if not 0 <= self.removes < self.sufficient <= 1:
            raise ValueError(f"removes={self.removes} and sufficient={self.sufficient} must satisfy 0 <= removes < "
                             "sufficient <= 1 (a part that retains >= sufficient carries the effect; <= removes, not)")

    def workload(self) -> Workload:
        return Workload(batch=self.batch_size, tokens=256, training="none")

    def check_inputs(self) -> None:
        """The source runs exist, saved deltas for this behaviour and seed, were scored on the coefficients asked
        for, and share the eval rows and the model (cheap: JSON files only)."""
        read_sources(self)


# ----------------------------------------------------------------------------- the source runs


@dataclass(frozen=True)
class SourceRun:
    """One weight_steering run folder: its parameters, its `<behaviour>_partial.json` state and its saved deltas
    ({family: {seed: path without suffix}})."""

    folder: Path
    parameters: dict[str, Any]
    state: dict[str, Any]
    deltas: dict[str, dict[int, Path]]

    @property
    def entries(self) -> list[SavedEntry]:
        return saved_entries(self.state)


def _make_hint(folder: Path, behaviour: str) -> str:
    return (f"./just run weight_steering 'behaviours=[{behaviour}]' save_deltas=True (plus the run's other "
            f"parameters) writes one; {folder} is not such a run")


def source_folder(folder: str | Path) -> Path:
    """A run folder as given (absolute, or relative to the repository), else a run slug under
    out/weight_steering/ (what `./just run weight_steering ...` printed)."""
    path = repo_path(folder)
    slug = repo_path("out/weight_steering") / str(folder)
    return slug if not path.exists() and slug.exists() else path


def read_source(folder: str | Path, behaviour: str) -> SourceRun:
    path = source_folder(folder)
    record = path / "run.json"
    if not record.exists():
        raise FileNotFoundError(f"deltas_from: {path} has no run.json. {_make_hint(path, behaviour)}")
    run = json.loads(record.read_text())
    if run.get("notebook") != "weight_steering":
        raise ValueError(f"deltas_from: {path} is a {run.get('notebook')!r} run, not weight_steering")
    partial = partial_file(path, behaviour)
    if not partial.exists():
        raise FileNotFoundError(f"deltas_from: {path} holds no {behaviour} results (it has {saved_behaviours(path)}); "
                                "set behaviour= to one of them")
    deltas = saved_deltas(path, behaviour)
    if not deltas:
        raise FileNotFoundError(f"deltas_from: {path} saved no {behaviour} deltas (run with save_deltas=True). "
                                f"{_make_hint(path, behaviour)}")
    return SourceRun(path, run["parameters"], json.loads(partial.read_text()), deltas)


def read_sources(cfg: WeightAblationConfig) -> list[SourceRun]:
    """Every source run, checked to share model, rows and coefficients, each family from one run only, and each
    family asked for saved at `cfg.seed` with its scores at every coefficient."""
    sources = [read_source(folder, cfg.behaviour) for folder in cfg.deltas_from]
    first = sources[0]
    for source in sources:
        if source.parameters.get("model") != cfg.model:
            raise ValueError(f"model={cfg.model!r} but {source.folder} trained its deltas on "
                             f"{source.parameters.get('model')!r}: set model= to it")
        if source.state.get("rows_digest") != first.state.get("rows_digest"):
            raise ValueError(f"{source.folder} and {first.folder} scored other rows (rows_digest differs): their "
                             "deltas cannot be compared on one eval grid")
        missing = [c for c in cfg.coefficients if c not in [float(x) for x in source.parameters["weight_coeffs"]]]
        if missing:
            raise ValueError(f"coefficients={cfg.coefficients}: {missing} not in the weight_coeffs "
                             f"{source.parameters['weight_coeffs']} of {source.folder}; the full dW's saved scores "
                             "are the check that the rows are reproduced")
    owners: dict[str, Path] = {}
    for source in sources:
        for family in source.deltas:
            if family in owners:
                raise ValueError(f"family {family!r} has deltas in both {owners[family]} and {source.folder}: "
                                 "list one of them in deltas_from")
            owners[family] = source.folder
    wanted = cfg.families or sorted(owners)
    explicit = list(cfg.groups) != list(GROUPS)
    for group, family_of in FAMILY_GROUPS.items():
        if explicit and group in cfg.groups and family_of not in wanted:
            raise ValueError(f"groups has {group!r}, which reads {family_of} deltas only, but families={wanted} has "
                             f"none: add a run with {family_of} deltas to deltas_from, or drop {group!r} from groups")
    unknown = [f for f in wanted if f not in owners]
    if not unknown:
        broken = [f for f in wanted if diverged(next(s for s in sources if f in s.deltas), f, cfg.seed)]
        if broken:
            raise ValueError(f"families {broken}: the adapter training of seed {cfg.seed} diverged in the source run "
                             "(loss ended above where it started), so its dW is not a trained delta; set "
                             f"families={[f for f in wanted if f not in broken]} or retrain with a lower "
                             "family_learning_rates")
    if unknown:
        raise ValueError(f"families={unknown} have no saved {cfg.behaviour} delta in deltas_from (found "
                         f"{sorted(owners)})")
    for family in wanted:
        source = next(s for s in sources if family in s.deltas)
        if cfg.seed not in source.deltas[family]:
            raise ValueError(f"family {family!r}: no delta for seed={cfg.seed} in {source.folder} (saved seeds "
                             f"{sorted(source.deltas[family])})")
        scored = set(saved_scores(source, family, cfg.seed))
        if not set(cfg.coefficients) <= scored:
            raise ValueError(f"family {family!r} seed {cfg.seed}: the run has not scored coefficients "
                             f"{sorted(set(cfg.coefficients) - scored)} yet (resume it first)")
    return sources


def diverged(source: SourceRun, family: str, seed: int) -> bool:
    """Whether the run flagged (or its loss curves show) that this family's training diverged at `seed`."""
    return any(entry.diverged for entry in saved_scores(source, family, seed).values())


def family_sources(cfg: WeightAblationConfig, sources: Sequence[SourceRun]) -> dict[str, SourceRun]:
    """{family: the run holding its deltas}, in `cfg.families` order (default: sorted)."""
    owner = {family: source for source in sources for family in source.deltas}
    return {family: owner[family] for family in (cfg.families or sorted(owner))}


@dataclass(frozen=True)
class EvalSet:
    """The run's test items (their ids are the eval grid's rows), its answer format, the answer orders it scored
    them in ("both" since the evaluation kit, "single" before: `lib.kits.weight_runs.orders_of`), and (where
    written) the held-out reply pairs of `preference`."""

    items: list[Item]
    fmt: AnswerFormat
    pairs: list[ContrastPair]
    orders: str = "single"


def eval_set(source: SourceRun, behaviour: str) -> EvalSet:
    """Rebuild the run's test rows from its parameters and check them against its fingerprint and test ids."""
    params, state = source.parameters, source.state
    orders = orders_of(state)
    split = run_split(behaviour, params["n_train"], params["n_val"], params["n_test"], params["seed"], orders)
    fmt = FORMATS[state["format"]]
    digest = rows_digest(behaviour, fmt, split, params.get("contrast_source", "persona"), orders)
    if digest != state["rows_digest"] or [i.id for i in split["test"]] != state["split_ids"]["test"]:
        raise ValueError(f"the rows this code builds for {source.folder} differ from the ones it scored (data or "
                         "prompts changed since): re-run the weight_steering run to ablate its deltas")
    return EvalSet(split["test"], fmt, preference_pairs(behaviour, split["val"] + split["test"]), orders)


def preference_pairs(behaviour: str, held_out: Sequence[Item]) -> list[ContrastPair]:
    """Written honest / deceptive replies to the held-out (validation and test) dilemmas; none for behaviours
    without written replies."""
    if behaviour not in WRITTEN_BEHAVIOURS:
        return []
    return load_written_pairs(held_out)


def saved_scores(source: SourceRun, family: str, seed: int) -> dict[float, SavedEntry]:
    """The run's weight entries of one family and seed, by coefficient."""
    return {entry.coeff: entry for entry in source.entries if entry.is_weight(family, seed)}


def swing_of(entries: Mapping[float, SavedEntry], c: float) -> float:
    return entries[c].score - entries[-c].score


def seed_noise(source: SourceRun, family: str, c: float) -> dict[str, Any]:
    """The full dW's swing at `c` over the run's seeds of `family`: mean, std (ddof 1) and sign agreement."""
    seeds = sorted({entry.seed for entry in source.entries if entry.is_weight(family)})
    swings = []
    for seed in seeds:
        entries = saved_scores(source, family, seed)
        if c in entries and -c in entries:
            swings.append(swing_of(entries, c))
    mean = sum(swings) / len(swings) if swings else math.nan
    std = float(torch.tensor(swings, dtype=torch.float64).std()) if len(swings) > 1 else math.nan
    agree = sum((s > 0) == (mean > 0) for s in swings) / len(swings) if swings and mean != 0 else math.nan
    return {"n_seeds": len(swings), "swing_mean": mean, "swing_std": std, "sign_agreement": agree,
            "swings": swings}


# ----------------------------------------------------------------------------- evaluation


def reply_preference(model: nn.Module, tokenizer: Any, pairs: Sequence[ContrastPair],
                     batch_size: int) -> list[float]:
    """Per pair, the per-token log-prob of the positive reply minus the negative one (same prompt)."""
    prompts = [p.prompt for p in pairs] * 2
    replies = [p.positive for p in pairs] + [p.negative for p in pairs]
    logprobs = continuation_logprobs(model, tokenizer, prompts, replies, batch_size=batch_size, progress=False)
    return (logprobs[: len(pairs)] - logprobs[len(pairs):]).double().tolist()


def measure(model: nn.Module, tokenizer: Any, evals: EvalSet, reference: list[torch.Tensor], low_pmass: float,
            batch_size: int) -> dict[str, Any]:
    """One point of the grid: the choice score summary with per-row scores, KL on neutral text, preference."""
    scored = score_items(model, tokenizer, evals.items, evals.fmt, evals.orders, batch_size=batch_size)
    point = {**summarize(scored, low_pmass), "row_scores": scored["score"].tolist(),
             "kl": mean_kl(reference, neutral_logprobs(model, tokenizer, batch_size=batch_size))}
    if evals.pairs:
        rows = reply_preference(model, tokenizer, evals.pairs, batch_size)
        point["preference"], point["preference_rows"] = sum(rows) / len(rows), rows
    return point


def evaluate_variant(model: nn.Module, tokenizer: Any, variant: da.Variant, coefficients: Sequence[float],
                     evals: EvalSet, reference: list[torch.Tensor], base: dict[str, Any], low_pmass: float,
                     batch_size: int) -> dict[str, dict[str, Any]]:
    """{repr(coefficient): point} with the variant applied at each coefficient (an empty variant is the base at
    every coefficient: not re-scored)."""
    points = {}
    for c in coefficients:
        if variant.empty:
            points[repr(c)] = dict(base)
            continue
        with apply_delta(model, variant.delta, c):
            points[repr(c)] = measure(model, tokenizer, evals, reference, low_pmass, batch_size)
    return points


class Evaluations:
    """`evaluations.json` in the run folder: the grid, the base point and one record per (family, variant), written
    atomically after each variant so an interrupted run resumes without re-scoring finished variants."""

    def __init__(self, path: Path, grid: da.EvalGrid) -> None:
        self.path, self.grid = path, grid
        data = json.loads(path.read_text()) if path.exists() else {}
        if data:
            da.check_same_rows(grid.as_dict(), data["grid"])
        self.base: dict[str, Any] | None = data.get("base")
        self.records: dict[str, dict[str, Any]] = data.get("variants", {})

    @staticmethod
    def key(family: str, name: str) -> str:
        return f"{family}/{name}"

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def add(self, family: str, variant: da.Variant, points: dict[str, dict[str, Any]], full_norm: float,
            digest: str = "", same_as: str = "") -> None:
        """`digest`: the variant's `content_digest`; `same_as`: the variant whose scores these are (equal tensors)."""
        self.records[self.key(family, variant.name)] = {
            "family": family, "variant": variant.name, "group": variant.group, "fields": variant.fields.as_dict(),
            "empty": variant.empty,
            "norm": variant.norm(), "norm_ratio": variant.norm() / full_norm if full_norm > 0 else math.nan,
            "grid": self.grid.digest, "points": points, "digest": digest,
            "meta": {k: v for k, v in variant.meta.items() if k in KEPT_META} | ({"same_as": same_as} if same_as
                                                                                  else {})}
        self.save()

    def scored_as(self, family: str, digest: str) -> str | None:
        """The name of an already-scored variant of `family` with these exact tensors, if any."""
        return next((r["variant"] for r in self.records.values()
                     if r["family"] == family and digest and r.get("digest") == digest), None)

    def fields(self, record: Mapping[str, Any]) -> da.VariantFields:
        """What a record's variant name says: saved beside it, or, for a record scored before fields were saved,
        read from the name (the run's families split `in_<family><K>_<part>`)."""
        if "fields" in record:
            return da.VariantFields(**record["fields"])
        return da.VariantFields.from_name(record["variant"], {r["family"] for r in self.records.values()})

    def save(self) -> None:
        write_json(self.path, {"grid": self.grid.as_dict(), "base": self.base, "variants": self.records})


def check_reproduces_run(points: Mapping[str, Mapping[str, Any]], saved: Mapping[float, SavedEntry],
                         family: str, atol: float = 1e-3) -> float:
    """The full dW re-scored here against the run's saved per-row scores at every coefficient; returns the largest
    difference and raises above `atol` (the delta file, the rows or the scoring changed since the run)."""
    worst = 0.0
    for key, point in points.items():
        old = saved[float(key)].row_scores
        if len(old) != len(point["row_scores"]):
            raise ValueError(f"{family}: {len(point['row_scores'])} rows scored here, {len(old)} in the run")
        worst = max(worst, max(abs(a - b) for a, b in zip(point["row_scores"], old, strict=True)))
    if worst > atol:
        raise ValueError(f"{family}: the full dW re-scored here differs from the run's saved scores by {worst:.3g} "
                         f"> {atol} on some row: the saved delta or the eval is not what the run used")
    return worst


# ----------------------------------------------------------------------------- variants by group


def group_variants(group: str, family: str, deltas: Mapping[str, WeightDelta], model: nn.Module,
                   cfg: WeightAblationConfig, n_layers: int) -> Iterator[da.Variant]:
    """The variants of one group for one family, built lazily (the SVD and basis groups hold dense copies of dW).
    Deterministic: building a group twice gives the same variants (the sufficiency controls rebuild)."""
    delta = deltas[family]
    if group == "roles":
        yield from da.role_variants(delta)
    elif group in ("thirds", "layer_only", "layer_out"):
        yield from (v for v in da.layer_variants(delta, n_layers) if v.group == group)
    elif group == "svd":
        variants = da.svd_variants(delta)
        da.check_sums_to(delta, [v for v in variants if v.group in ("svd_rank", "non_matrix")], what="svd bands")
        da.check_sums_to(delta, [v for v in variants if v.group in ("svd_energy", "non_matrix")], what="svd energy")
        yield from variants
    elif group == "base_svd":
        variants = da.base_subspace_variants(delta, model, cfg.base_ranks)
        yield from (v for v in variants if v.group == "base_svd")
    elif group == "dora":
        yield from da.dora_variants(delta, model)
    elif group == "ia3":
        if family != FAMILY_GROUPS["ia3"]:
            return  # run_ablation logs the skip
        variants = da.ia3_variants(delta, model)
        da.check_sums_to(delta, variants, what="ia3 gates")
        yield from variants
    elif group == "basis":
        for k in cfg.ks:  # one K at a time: 6 dense copies of the residual writes per family, not 6 per K
            yield from da.basis_variants(deltas, ks=[k], seed=cfg.seed + k, families=[family])
    elif group == "controls":
        yield da.zero_variant(delta)
        for seed in range(cfg.n_random):
            yield da.norm_matched_random(delta, seed=seed)
    else:
        raise ValueError(f"unknown group {group!r}; choose from {GROUPS}")


@dataclass(frozen=True)
class Ablation:
    """What `run_ablation` scored, for the tables, the verdict and the results (the notebook dug into a dict; issue
    "The weight wing and one way in", item 3): the evaluations, the run holding each family's deltas, the rebuilt
    eval set, the deltas, the largest row gap of each full dW against its run's saved scores, the seed noise of
    each full swing, and the seconds it took."""

    store: Evaluations
    owners: dict[str, SourceRun]
    evals: EvalSet
    deltas: dict[str, WeightDelta]
    reproduced: dict[str, float]
    noise: dict[str, dict[str, Any]]
    seconds: float

    def table(self, cfg: WeightAblationConfig) -> pd.DataFrame:
        return retained_table(self.store, self.owners, cfg)


def run_ablation(cfg: WeightAblationConfig, model: nn.Module, tokenizer: Any, out: Path,
                 log: Callable[[str], Any] = print, progress: bool = True) -> Ablation:
    """Every group's variants for every family, then the sufficiency controls of the crops that retain on an
    identifiable metric (`crops_to_control`); resumable from `out/evaluations.json`."""
    from tqdm.auto import tqdm

    started = time.time()
    sources = read_sources(cfg)
    owners = family_sources(cfg, sources)
    evals = eval_set(sources[0], cfg.behaviour)
    grid = da.eval_grid(evals.items, cfg.coefficients)
    store = Evaluations(out / "evaluations.json", grid)
    reference = neutral_logprobs(model, tokenizer, batch_size=cfg.batch_size)
    low_pmass = float(sources[0].parameters.get("low_pmass", 0.5))
    if store.base is None:
        store.base = measure(model, tokenizer, evals, reference, low_pmass, cfg.batch_size)
        store.save()
    saved_base = next(entry for entry in sources[0].entries if entry.method == "none")
    base_gap = max(abs(a - b) for a, b in zip(store.base["row_scores"], saved_base.row_scores, strict=True))
    if base_gap > 1e-3:
        raise ValueError(f"the base model scores the rows differently from the run (by {base_gap:.3g}): another "
                         "model or eval than the deltas were trained and scored with")
    deltas = {family: WeightDelta.load(owners[family].deltas[family][cfg.seed]) for family in owners}
    n_layers = len(find_layers(model)[1])
    reproduced: dict[str, float] = {}

    def run(family: str, variants: Sequence[da.Variant], desc: str) -> None:
        todo = [v for v in variants if Evaluations.key(family, v.name) not in store]
        for variant in tqdm(todo, desc=desc, disable=not progress or not todo, leave=False):
            digest = variant.delta.content_digest()
            twin = store.scored_as(family, digest)  # e.g. IA3's attention_gates is roles' attention
            if twin is not None:
                points = copy.deepcopy(store.records[Evaluations.key(family, twin)]["points"])
            else:
                points = evaluate_variant(model, tokenizer, variant, cfg.coefficients, evals, reference, store.base,
                                          low_pmass, cfg.batch_size)
            store.add(family, variant, points, deltas[family].norm(), digest, twin or "")

    for group, family_of in FAMILY_GROUPS.items():
        skipped = [f for f in owners if f != family_of]
        if group in cfg.groups and skipped:
            log(f"group {group} reads {family_of} deltas only: skipped for {', '.join(skipped)}")
    for group in cfg.groups:
        for family in owners:
            group_started = time.time()
            run(family, list(group_variants(group, family, deltas, model, cfg, n_layers)), f"{family} {group}")
            log(f"[{time.time() - started:7.1f} s] {family} {group} ({time.time() - group_started:.0f} s)")
    for family in owners:  # the full dW is in "roles"; score it even when that group was not asked for
        full = da.select(deltas[family], lambda n: True, "full", "roles")
        run(family, [full], f"{family} full")
        reproduced[family] = check_reproduces_run(store.records[Evaluations.key(family, "full")]["points"],
                                                  saved_scores(owners[family], family, cfg.seed), family)
    noise = {family: seed_noise(owners[family], family, max(cfg.coefficients)) for family in owners}
    table = retained_table(store, owners, cfg)
    for family, names in crops_to_control(table, full_effects(table, noise), cfg).groupby("family").variant:
        wanted = set(names)
        built = [v for group in cfg.groups for v in group_variants(group, family, deltas, model, cfg, n_layers)
                 if v.name in wanted]
        controls = [c for v in built for c in da.sufficiency_controls(v, deltas[family], cfg.seed)]
        run(family, controls, f"{family} sufficiency")
    log(f"[{time.time() - started:7.1f} s] all variants scored")
    return Ablation(store, owners, evals, deltas, reproduced, noise, time.time() - started)


# ----------------------------------------------------------------------------- tables and verdict


IDENTIFIABLE = {"retained": "identifiable", "retained_preference": "preference_identifiable"}


def crops_to_control(table: pd.DataFrame, effects: pd.DataFrame, cfg: WeightAblationConfig) -> pd.DataFrame:
    """The crops that get `@norm` / `~rand` controls: smaller than the full dW and retaining >= sufficient on a
    metric whose full swing is identifiable for that family (a ratio to a swing inside noise is noise, and its
    controls would cost a scored variant each for nothing)."""
    flags = effects.set_index("family")
    readable = pd.DataFrame(index=table.index)
    for column, flag in IDENTIFIABLE.items():
        if column in table and flag in flags:  # a family without a flag counts as not identifiable
            readable[column] = table[column].where(table.family.map(flags[flag]).fillna(False).astype(bool))
    best = readable.max(axis=1) if len(readable.columns) else pd.Series(math.nan, index=table.index)
    return table[(best >= cfg.sufficient) & (table.norm_ratio < 0.95) & (table.variant != "full")
                 & ~table.group.isin(["sufficiency", "control"]) & (table.control_of == "")]


def swing(points: Mapping[str, Mapping[str, Any]], c: float, key: str = "score") -> float:
    value = points[repr(c)].get(key), points[repr(-c)].get(key)
    return math.nan if None in value else float(value[0]) - float(value[1])


def row_swings(points: Mapping[str, Mapping[str, Any]], c: float, key: str = "row_scores") -> np.ndarray:
    """[rows] each row's swing, its value at +c minus at -c (rows paired across the two; `key="preference_rows"`
    for the reply preference's pairs), in float64: what the swing's SE, the retained interval and a sum of crops
    (journal 2026-12-07, sub-additivity) resample."""
    return (np.asarray(points[repr(c)][key], dtype=np.float64)
            - np.asarray(points[repr(-c)][key], dtype=np.float64))


def retained_interval(points: Mapping[str, Mapping[str, Any]], full: Mapping[str, Mapping[str, Any]], c: float,
                      key: str = "row_scores", seed: int = 0) -> tuple[float, float]:
    """The 95% paired bootstrap interval over rows of retained = mean row swing of the variant / mean row swing of
    the full dW at `c` (`lib.kits.uncertainty.ratio_of_means`; rows resampled together in both). (NaN, NaN) where
    the rows are missing or the ratio is undefined on too many draws (a full swing near 0: nothing to retain).
    Why (issue "One evaluation kit"): verdicts sat on point retentions against cuts (LoRA attention 0.528 against
    0.5) with no interval."""
    if key not in points[repr(c)] or key not in full[repr(c)]:
        return math.nan, math.nan
    try:
        estimate = ratio_of_means(row_swings(points, c, key), row_swings(full, c, key), seed=seed)
    except ValueError:  # undefined on > 1% of the draws, or fewer than 2 rows
        return math.nan, math.nan
    return estimate.low, estimate.high


def row_swing_se(points: Mapping[str, Mapping[str, Any]], c: float, key: str = "row_scores") -> float:
    """Standard error of the per-row swing (rows paired across +c and -c; `key="preference_rows"` for the reply
    preference's pairs)."""
    if key not in points[repr(c)]:
        return math.nan
    diff = torch.from_numpy(row_swings(points, c, key))
    return float(diff.std() / math.sqrt(len(diff))) if len(diff) > 1 else math.nan


FIELD_COLUMNS = tuple(f.name for f in dataclasses.fields(da.VariantFields))  # kind, k, part, layer, ...


def retained_table(store: Evaluations, owners: Mapping[str, Any], cfg: WeightAblationConfig) -> pd.DataFrame:
    """One row per (family, variant): norm ratio, swing and retained (with its 95% interval over rows,
    `retained_interval`) for the score (and preference), pmass and KL at
    +c and -c (c the largest coefficient), retained per coefficient pair, and last the variant's fields
    (`FIELD_COLUMNS`, what its name says) to filter on. Every record's grid is checked against the full dW's first
    (`check_same_rows`)."""
    c = max(cfg.coefficients)
    pairs = sorted(x for x in cfg.coefficients if x > 0 and -x in cfg.coefficients)
    rows, fields = [], []
    for family in owners:
        full = store.records.get(Evaluations.key(family, "full"))
        if full is None:
            continue
        for record in store.records.values():
            if record["family"] != family:
                continue
            da.check_same_rows(full["grid"], record["grid"])
            points, full_points = record["points"], full["points"]
            row = {"family": family, "group": record["group"], "variant": record["variant"],
                   "norm_ratio": record["norm_ratio"], "empty": record["empty"],
                   "swing": swing(points, c), "swing_se": row_swing_se(points, c),
                   "retained": da.retained(swing(points, c), swing(full_points, c), floor=1e-12,
                                           on_negligible="nan")}
            row["retained_low"], row["retained_high"] = retained_interval(points, full_points, c)
            if "preference" in points[repr(c)]:
                row["preference_swing"] = swing(points, c, "preference")
                row["preference_se"] = row_swing_se(points, c, "preference_rows")
                row["retained_preference"] = da.retained(row["preference_swing"], swing(full_points, c, "preference"),
                                                         floor=1e-12, on_negligible="nan")
                row["retained_preference_low"], row["retained_preference_high"] = retained_interval(
                    points, full_points, c, "preference_rows")
            for x in pairs[:-1]:
                row[f"retained@{x:g}"] = da.retained(swing(points, x), swing(full_points, x), floor=1e-12,
                                                     on_negligible="nan")
            for sign, label in ((1, "+"), (-1, "-")):
                point = points[repr(sign * c)]
                row[f"pmass{label}"], row[f"kl{label}"] = point["pmass"], point["kl"]
            rows.append(row)
            fields.append(store.fields(record).as_dict())
    frame = pd.DataFrame(rows)
    # The basis variants split the residual writes only (o and down projections), so beside their share of the full
    # dW's swing they get their share of the writes' own swing: within the writes, does the subspace carry it?
    for column, base in (("retained", "swing"), ("retained_preference", "preference_swing")):
        if column not in frame or frame.empty:
            continue
        writes = frame[frame.variant == "writes"].set_index("family")[base]
        frame[f"{column}_of_writes"] = [
            row[base] / writes[row.family] if row.group == "basis" and row.family in writes.index
            and abs(writes[row.family]) > 1e-12 else math.nan for _, row in frame.iterrows()]
    described = pd.DataFrame(fields, index=frame.index, columns=list(FIELD_COLUMNS))
    intervals = [c for c in frame.columns if c.endswith(("_low", "_high"))]  # after the older columns, fields last
    frame = frame[[c for c in frame.columns if c not in intervals] + intervals]
    return frame.join(described.astype({"k": "Int64", "layer": "Int64"}))


def full_effects(table: pd.DataFrame, noise: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Per family: the full dW's swing here, its row SE, the seeds' std of the swing in the run, and whether the
    swing stands out of both (|swing| > 2 x the larger): only then is a ratio to it a retention."""
    rows = []
    for family, group in table[table.variant == "full"].groupby("family"):
        full = group.iloc[0]
        seeds = noise.get(family, {})
        floor = max(full.swing_se, seeds.get("swing_std", math.nan) if seeds.get("n_seeds", 0) > 1 else 0.0)
        row = {"family": family, "swing": full.swing, "swing_se": full.swing_se,
               "seed_swing_std": seeds.get("swing_std"), "n_seeds": seeds.get("n_seeds"),
               "sign_agreement": seeds.get("sign_agreement"), "noise": floor,
               "identifiable": bool(abs(full.swing) > 2 * floor) if not math.isnan(floor) else False}
        if "preference_swing" in group:  # no seed spread recorded for it: the pairs' SE is its noise
            row["preference_swing"], row["preference_se"] = full.preference_swing, full.preference_se
            row["preference_identifiable"] = bool(abs(full.preference_swing) > 2 * full.preference_se)
        rows.append(row)
    return pd.DataFrame(rows)


def _rows(table: pd.DataFrame, **columns: Any) -> pd.DataFrame:
    """The rows whose columns hold these values (`family=`, `variant=` or a variant field such as `kind=`, `k=`)."""
    match = pd.Series(True, index=table.index)
    for column, value in columns.items():
        match &= table[column].eq(value).fillna(False).astype(bool)
    return table[match]


def _retained(table: pd.DataFrame, family: str, column: str = "retained", **variant: Any) -> float:
    """`column` of the family's one variant selected by name (`variant=`) or by fields (`kind=`, `k=`, ...)."""
    hit = _rows(table, family=family, **variant)
    return float(hit[column].iloc[0]) if len(hit) and column in hit else math.nan


def _interval(table: pd.DataFrame, family: str, column: str, **variant: Any) -> tuple[float, float]:
    """The 95% interval of `column` for the family's one variant (`retained_table`'s `<column>_low/_high`)."""
    return (_retained(table, family, f"{column}_low", **variant), _retained(table, family, f"{column}_high", **variant))


def by_interval(at_least: Mapping[str, tuple[float, float]], threshold: float,
                at_most: Mapping[str, tuple[float, float]] | None = None, removes: float = 0.0) -> str:
    """A rule's answer from intervals: "holds" when every `at_least` part's interval is >= `threshold` and every
    `at_most` part's is <= `removes`; "fails" when some interval lies wholly on the wrong side; "inconclusive"
    otherwise (a missing interval is inconclusive). The point rules above read only the point values."""
    at_most = at_most or {}
    lows = [low for low, _ in at_least.values()] + [-high for _, high in at_most.values()]
    highs = [high for _, high in at_least.values()] + [-low for low, _ in at_most.values()]
    cuts = [threshold] * len(at_least) + [-removes] * len(at_most)
    if any(high < cut for high, cut in zip(highs, cuts, strict=True)):
        return "fails"
    if all(not math.isnan(low) and low >= cut for low, cut in zip(lows, cuts, strict=True)):
        return "holds"
    return "inconclusive"


def verdict(table: pd.DataFrame, effects: pd.DataFrame, cfg: WeightAblationConfig,
            column: str = "retained") -> list[dict[str, Any]]:
    """Rules of ours (each labelled `"by": "ours"`, thresholds `cfg.sufficient` / `cfg.removes`), each with whether
    it fired and its numbers, on `column` ("retained" for the choice score, "retained_preference" for the held-out
    reply preference). They grew from the seed's rules but are not its rules: the shared subspace here reads any K
    and the writes' own swing; the seed's rules as written are `seed_rules`. The rules:
    - identifiable: the full dW's swing exceeds 2x its noise (row SE, seed std); without it no rule below counts;
    - shared subspace: for some K, every family's shared<K>_keep retains >= sufficient of the residual writes' own
      swing (the basis splits the writes only; `<column>_of_writes`, the writes' share of the full dW beside it),
      its shared<K>_drop <= removes, and the rank-matched random keep <= removes; K at or above the stacked
      deltas' rank keeps all of the writes and is reported as degenerate;
    - cross-family subspace: for some K, each family projected on every other family's own top-K keeps >=
      sufficient and drops <= removes (the shared basis saw the family itself; this one did not);
    - not identifiable with this basis: for some K, keep and drop both retain >= 0.5 in most families;
    - localised: in a partition, one part retains >= sufficient, the others <= removes, and the part's `~rand`
      control <= removes (when the part is a crop);
    - distributed: in a partition, two or more disjoint parts each retain >= 0.5 (the partitions include the
      single layers when `layer_only` was scored);
    - necessary layer: leaving one block out (`L<i>_out`) keeps <= removes; beside it "no layer necessary" when
      every leave-one-layer-out keeps >= sufficient;
    - cross-family gaps: the spread of a variant's retention across families against the within-family noise
      (seed std / |swing|)."""
    families = sorted(set(table.family))
    if column not in table or table[column].isna().all():
        return [{"rule": "metric", "fired": False, "text": f"{column}: not measured"}]
    rules: list[dict[str, Any]] = []
    flag = IDENTIFIABLE[column]
    by_family = effects.set_index("family")
    ok = [f for f in families if f in by_family.index and bool(by_family.loc[f, flag])]
    rules.append({"rule": "identifiable", "fired": bool(ok), "families": ok,
                  "text": f"full dW moves the metric beyond its noise in {len(ok)}/{len(families)} families "
                          f"({', '.join(ok) or 'none'})"})
    if not ok:
        rules.append({"rule": "verdict", "fired": True, "text": "not identifiable: the full dW's effect is within "
                      "noise, so no retention ratio means anything (negative result)"})
        return [{"by": "ours", **rule} for rule in rules]
    within = f"{column}_of_writes" if f"{column}_of_writes" in table else column
    writes_share = {f: _retained(table, f, column, variant="writes") for f in ok}
    for k in cfg.ks:
        keep = {f: _retained(table, f, within, kind="shared", k=k, part="keep") for f in ok}
        drop = {f: _retained(table, f, within, kind="shared", k=k, part="drop") for f in ok}
        rand = {f: _retained(table, f, within, kind="random_basis", k=k, part="keep") for f in ok}
        if any(math.isnan(v) for v in keep.values()):
            continue
        numbers = {f: {"keep": round(keep[f], 3), "drop": round(drop[f], 3), "rand_keep": round(rand[f], 3),
                       "writes_of_full": round(writes_share[f], 3)} for f in ok}
        cross_keep, cross_drop = _cross(table, ok, k, "keep", within, min), _cross(table, ok, k, "drop", within, max)
        if cross_keep:  # another family's own basis is never degenerate for this one: read it at every K
            across = all(cross_keep[f] >= cfg.sufficient and cross_drop[f] <= cfg.removes for f in cross_keep)
            rules.append({"rule": f"cross-family subspace K={k}", "fired": across,
                          "numbers": {f: {"keep_min": round(cross_keep[f], 3), "drop_max": round(cross_drop[f], 3)}
                                      for f in cross_keep},
                          "text": f"K={k}, each family projected on every other family's own top-{k}: keep (worst) "
                                  f"{_fmt(cross_keep)}, drop (worst) {_fmt(cross_drop)}"})
        shared_drop = _rows(table, kind="shared", k=k, part="drop")
        empty_drop = shared_drop[shared_drop.family.isin(ok)].norm_ratio
        if len(empty_drop) and (empty_drop < 1e-3).all():  # float32 merge noise, not a direction
            rules.append({"rule": f"shared subspace K={k}", "fired": False, "numbers": numbers,
                          "text": f"K={k}: degenerate, at or above the stacked deltas' rank (drop is empty): keep is "
                                  "all of the writes"})
            continue
        shared = all(keep[f] >= cfg.sufficient and drop[f] <= cfg.removes and abs(rand[f]) <= cfg.removes for f in ok)
        both = sum(keep[f] >= 0.5 and drop[f] >= 0.5 for f in ok) > len(ok) / 2
        rules.append({"rule": f"shared subspace K={k}", "fired": shared, "numbers": numbers,
                      "text": f"K={k}, of the writes' swing: keep {_fmt(keep)}, drop {_fmt(drop)}, random keep "
                              f"{_fmt(rand)} (the writes carry {_fmt(writes_share)} of the full dW's)"
                              + (f"; but in another family's own basis only {_fmt(cross_keep)} (weak: the stacked "
                                 "basis holds each family's own directions)"
                                 if shared and cross_keep and min(cross_keep.values()) < cfg.sufficient else "")})
        if both:
            rules.append({"rule": f"not identifiable with basis K={k}", "fired": True, "numbers": numbers,
                          "text": f"K={k}: both keep and drop retain >= 0.5 in most families"})
    for family in ok:
        for partition, parts in _partitions(table, family).items():
            values = {p: _retained(table, family, column, variant=p) for p in parts}
            values = {p: v for p, v in values.items() if not math.isnan(v)}
            if len(values) < 2:
                continue
            strong = [p for p, v in values.items() if v >= cfg.sufficient]
            weak = [p for p, v in values.items() if v <= cfg.removes]
            rand = {p: _retained(table, family, column, kind="random", control_of=p) for p in strong}
            if len(strong) == 1 and len(weak) == len(values) - 1:
                control = rand[strong[0]]
                norm = _rows(table, family=family, variant=strong[0]).norm_ratio
                whole = bool(len(norm)) and float(norm.iloc[0]) >= 0.95  # holds the norm: no crop to control
                fired = whole or (not math.isnan(control) and abs(control) <= cfg.removes)
                note = ("it holds >= 95% of the norm" if whole else "its ~rand control not scored yet (resume the run)"
                        if math.isnan(control) else f"its ~rand control {control:.2f}")
                answer = by_interval({strong[0]: _interval(table, family, column, variant=strong[0])},
                                     cfg.sufficient, {p: _interval(table, family, column, variant=p) for p in weak},
                                     cfg.removes)
                rules.append({"rule": f"localised ({partition})", "family": family, "fired": fired,
                              "part": strong[0], "numbers": values, "control": control, "by_interval": answer,
                              "text": f"{family}: {strong[0]} retains {values[strong[0]]:.2f}, the rest <= "
                                      f"{cfg.removes}; {note}; by the 95% intervals: {answer}"})
            half = [p for p, v in values.items() if v >= 0.5]
            if len(half) >= 2:
                answer = by_interval({p: _interval(table, family, column, variant=p) for p in half}, 0.5)
                rules.append({"rule": f"distributed ({partition})", "family": family, "fired": True, "parts": half,
                              "numbers": values, "by_interval": answer,
                              "text": f"{family}: {', '.join(half)} each retain >= 0.5; by the 95% intervals: "
                                      f"{answer}"})
        left_out = {p: _retained(table, family, column, variant=p)
                    for p in _single_layers(table, family, "layer_out")}
        left_out = {p: v for p, v in left_out.items() if not math.isnan(v)}
        if left_out:
            lowest = min(left_out, key=left_out.__getitem__)
            necessary = [p for p, v in left_out.items() if v <= cfg.removes]
            redundant = all(v >= cfg.sufficient for v in left_out.values())
            rules.append({"rule": "necessary layer", "family": family, "fired": bool(necessary), "parts": necessary,
                          "lowest": {lowest: round(left_out[lowest], 3)},
                          "text": f"{family}: leaving out {', '.join(necessary) or 'any one block'} "
                                  + (f"keeps <= {cfg.removes}" if necessary else f"keeps more than {cfg.removes}")
                                  + f" (lowest: {lowest} {left_out[lowest]:.2f})"})
            rules.append({"rule": "no layer necessary", "family": family, "fired": redundant,
                          "text": f"{family}: every leave-one-layer-out keeps "
                                  + (f">= {cfg.sufficient}" if redundant else f"at least {left_out[lowest]:.2f}")})
    if len(ok) > 1:
        # within-family noise in retention units: the full swing's spread over seeds (score), or its pairs' SE
        # (preference: the source run recorded no seeds of it), over |full swing|
        spread_of, swing_of_full = (("seed_swing_std", "swing") if column == "retained"
                                    else ("preference_se", "preference_swing"))
        noise = {}
        for f in ok:
            sd, full_swing = by_family.loc[f, spread_of], by_family.loc[f, swing_of_full]
            noise[f] = float(sd) / abs(float(full_swing)) if sd is not None and not pd.isna(sd) and full_swing \
                else math.nan
        known = [v for v in noise.values() if not math.isnan(v)]
        spread = table[table.family.isin(ok) & (table.control_of == "")].groupby(
            "variant")[column].agg(lambda s: float(s.max() - s.min()))
        widest = spread.sort_values(ascending=False).head(5)
        rules.append({"rule": "cross-family gaps", "fired": bool(known) and any(g > 2 * max(known) for g in widest),
                      "widest": {k: round(v, 3) for k, v in widest.items()},
                      "within_family_noise": {f: round(v, 3) for f, v in noise.items()},
                      "text": "widest cross-family retention gaps " + _fmt(widest.to_dict())
                              + f"; within-family noise ({spread_of} / |full swing|) " + _fmt(noise)})
    return [{"by": "ours", **rule} for rule in rules]


SEED_FAMILIES = ("lora", "dora", "pissa", "delora", "oft")  # the families the seed's shared-core rule names
SEED_K = 32  # the seed's K for the shared basis
SEED_KEEPS = 0.7  # the seed's ">=0.7x behavior"
MOST_REMOVED = 0.5  # our reading of the seed's "removes most of it": the drop retains <= half


def _reading(table: pd.DataFrame, family: str, column: str, **variant: Any) -> dict[str, Any] | None:
    """One quantity a seed rule read: the variant's name, its retention and 95% interval (None if not scored)."""
    hit = _rows(table, family=family, **variant)
    if not len(hit):
        return None
    row = hit.iloc[0]
    low, high = (float(row.get(f"{column}_{end}", math.nan)) for end in ("low", "high"))
    return {"family": family, "variant": str(row.variant), "value": round(float(row[column]), 4),
            "low": round(low, 4), "high": round(high, 4)}


def _answer(keeps: Sequence[dict[str, Any]], drops: Sequence[dict[str, Any]] = (), *, any_of: bool = False,
            keeps_at: float = SEED_KEEPS, removes_to: float = MOST_REMOVED) -> str:
    """holds / fails / inconclusive from the readings' intervals (`by_interval`): every keep >= keeps_at and every
    drop <= removes_to; with `any_of`, the rule holds when one keep does, fails when all fail."""
    interval = {r["variant"] + "/" + r["family"]: (r["low"], r["high"]) for r in keeps}
    if any_of:
        answers = [by_interval({name: bounds}, keeps_at) for name, bounds in interval.items()]
        return "holds" if "holds" in answers else "fails" if answers and set(answers) == {"fails"} else "inconclusive"
    return by_interval(interval, keeps_at, {r["variant"] + "/" + r["family"]: (r["low"], r["high"]) for r in drops},
                       removes_to)


def seed_rules(table: pd.DataFrame, effects: pd.DataFrame, column: str = "retained_preference") -> list[dict[str, Any]]:
    """The seed's decision rules as the seed writes them (seed "Fork plan: weight steering benchmark + analysis";
    issue "Corrections", requirement 3), each answering holds / fails / inconclusive / cannot run from the 95%
    intervals of `retained_table` and listing every quantity it read. "Behavior" is the full dW's effect on
    `column` (a retention of the full swing, never of a part's swing). Quoted from the seed:

    1. shared core: "if `keep_B_shared_K32` retains >=0.7x behavior across LoRA / DoRA / PiSSA / DeLoRA / OFT and
       `drop_B_shared_K32` removes most of it". Read: `shared32_keep` >= 0.7 and `shared32_drop` <= 0.5 (our reading
       of "most") in all five families. It cannot run when a family is missing, or when K=32 is at or above the
       stacked deltas' rank (the drop is empty: rank-8 pairs give dW of rank <= 16), which needs adapters of rank
       >= 32 trained for it.
    2. basin divergence (the seed names the rule; its wording is not in this repository, the reading is ours): each
       family keeps >= 0.7 of its behaviour in its own top-K (`own<K>_keep`) but <= 0.5 in every other family's
       (`in_<g><K>_keep`), at the largest K where the own drop is not empty.
    3. "top-k or write-not-read keeps behavior": per family, the per-tensor top singular band (`svd_top25`), its own
       top-K of the writes (`own<K>_keep`, every K scored) or the residual writes alone (`writes`) keeps >= 0.7.
    4. "complement/tail/many layers keep behavior": per family, the complement of the shared basis
       (`shared<K>_drop`, non-degenerate K), the spectrum's tail (`svd_bottom25`) or, many layers (our reading), every
       leave-one-layer-out (`L<i>_out`) keeps >= 0.7.
    5. "MLP up/gate carries behavior -> feature-space steering": per family, `mlp_read` (up and gate only) keeps
       >= 0.7.

    The 0.7 of rules 2-5 is the seed's number from rule 1, applied by us. A family whose full dW is not identifiable
    (`full_effects`) answers "inconclusive" for every rule. The notebook's other rules (`verdict`) are ours."""
    flag = IDENTIFIABLE.get(column)
    by_family = effects.set_index("family") if len(effects) else effects
    families = list(dict.fromkeys(table.family))
    ok = [f for f in families if flag in by_family and f in by_family.index and bool(by_family.loc[f, flag])]
    rules: list[dict[str, Any]] = []

    def degenerate(family: str, kind: str, k: int) -> bool:
        hit = _rows(table, family=family, kind=kind, k=k, part="drop")
        return bool(len(hit)) and float(hit.norm_ratio.iloc[0]) < 1e-3

    # 1. shared core
    quoted = ("if `keep_B_shared_K32` retains >=0.7x behavior across LoRA / DoRA / PiSSA / DeLoRA / OFT and "
              "`drop_B_shared_K32` removes most of it")
    keeps = [r for f in families if (r := _reading(table, f, column, kind="shared", k=SEED_K, part="keep"))]
    drops = [r for f in families if (r := _reading(table, f, column, kind="shared", k=SEED_K, part="drop"))]
    missing = [f for f in SEED_FAMILIES if f not in families]
    why = []
    if missing:
        why.append(f"families {missing} are not in this run")
    if not keeps:
        why.append(f"shared{SEED_K}_keep was not scored (ks must include {SEED_K})")
    elif any(degenerate(f, "shared", SEED_K) for f in families):
        why.append(f"K={SEED_K} is at or above the stacked deltas' rank (shared{SEED_K}_drop is empty): it needs "
                   f"adapters of rank >= {SEED_K} trained for it")
    answer = "cannot run" if why else _answer(keeps, drops) if set(ok) == set(families) else "inconclusive"
    rules.append({"rule": "shared core", "by": "seed", "quoted": quoted, "answer": answer, "why": "; ".join(why),
                  "read": keeps + drops, "conclusion": "a shared subspace carries the behaviour across families"})
    # 2. basin divergence
    def ks_of(kind: str) -> list[int]:
        return sorted({int(k) for k in _rows(table, kind=kind).k.dropna()}) if "kind" in table else []

    ks = ks_of("own")
    usable = [k for k in ks if not any(degenerate(f, "own", k) for f in families)]
    k = max(usable) if usable else None
    own = [r for f in families if k is not None and (r := _reading(table, f, column, kind="own", k=k, part="keep"))]
    cross = [r for f in families for g in families if g != f and k is not None
             and (r := _reading(table, f, column, kind="cross", basis_family=g, k=k, part="keep"))]
    if k is None or not own or not cross:
        answer, why = "cannot run", "needs two families' own and cross-family bases at a K below their rank"
    else:
        answer, why = (_answer(own, cross) if set(ok) == set(families) else "inconclusive"), ""
    rules.append({"rule": "basin divergence", "by": "ours (the seed names the rule)", "quoted": "basin-divergence",
                  "answer": answer, "why": why, "k": k, "read": own + cross,
                  "conclusion": "families reach the behaviour in different subspaces"})
    # 3-5, per family
    per_family = (
        ("top-k or write-not-read", "top-k or write-not-read keeps behavior",
         lambda f: [_reading(table, f, column, variant="svd_top25"), _reading(table, f, column, variant="writes")]
         + [_reading(table, f, column, kind="own", k=x, part="keep") for x in usable],
         "a low-rank or residual-write edit carries the behaviour"),
        ("complement/tail/many layers", "complement/tail/many layers keep behavior",
         lambda f: [_reading(table, f, column, kind="shared", k=x, part="drop") for x in ks_of("shared")
                    if not degenerate(f, "shared", x)] + [_reading(table, f, column, variant="svd_bottom25")],
         "the behaviour is distributed"),
        ("MLP up/gate", "MLP up/gate carries behavior -> feature-space steering",
         lambda f: [_reading(table, f, column, variant="mlp_read")], "feature-space steering"),
    )
    for name, text, read_of, conclusion in per_family:
        for family in families:
            read = [r for r in read_of(family) if r]
            answer = "cannot run" if not read else _answer(read, any_of=True) if family in ok else "inconclusive"
            extra = {}
            if name.startswith("complement"):
                left_out = [r for p in _single_layers(table, family, "layer_out")
                            if (r := _reading(table, family, column, variant=p))]
                if left_out:
                    every = _answer(left_out) if family in ok else "inconclusive"
                    extra["many_layers"] = every
                    read += left_out
                    answer = "holds" if "holds" in (answer, every) else (
                        "fails" if answer in ("fails", "cannot run") and every == "fails" else "inconclusive")
            why = ("none of the variants it reads was scored" if not read else "" if family in ok else
                   "the full dW's effect on this metric is within its noise (not identifiable)")
            rules.append({"rule": name, "by": "seed", "quoted": text, "family": family, "answer": answer,
                          "why": why, "read": read, "conclusion": conclusion, **extra})
    for rule in rules:
        rule["identifiable"] = [f for f in families if f in ok]
    return rules


def seed_rules_table(rules: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per rule (and family): who wrote it, its answer, and every quantity it read as `name value [low,
    high]`."""
    return pd.DataFrame([{"rule": r["rule"], "by": r["by"], "family": r.get("family", "all"), "answer": r["answer"],
                          "read": "; ".join(f"{q['family']} {q['variant']} {q['value']:.3f} [{q['low']:.3f}, "
                                            f"{q['high']:.3f}]" for q in r["read"]),
                          "why": r.get("why", "")} for r in rules])


SINGLE_LAYER_KINDS = ("layer_only", "layer_out")  # one block alone, every block but one


def _single_layers(table: pd.DataFrame, family: str, kind: str) -> list[str]:
    """The names of the family's scored variants of `kind` ("layer_only" or "layer_out"), in block order."""
    return list(_rows(table, family=family, kind=kind).sort_values("layer").variant)


def _partitions(table: pd.DataFrame, family: str) -> dict[str, tuple[str, ...]]:
    """PARTITIONS, plus "single layers" (every `L<i>_only` and non_block) when the layer_only group was scored."""
    layers = _single_layers(table, family, "layer_only")
    return {**PARTITIONS, "single layers": (*layers, "non_block")} if layers else dict(PARTITIONS)


def _cross(table: pd.DataFrame, families: Sequence[str], k: int, part: str, column: str,
           worst: Callable[[Iterable[float]], float]) -> dict[str, float]:
    """Per family, the worst retention of its `in_<g><k>_<part>` variants over the other families g (min for keep,
    max for drop); families with none scored are left out."""
    found = {}
    for f in families:
        values = [_retained(table, f, column, kind="cross", basis_family=g, k=k, part=part) for g in families
                  if g != f]
        values = [v for v in values if not math.isnan(v)]
        if values:
            found[f] = float(worst(values))
    return found


def _fmt(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in values.items())


def verdict_text(rules: Sequence[Mapping[str, Any]]) -> str:
    fired = [r for r in rules if r["fired"] and r["rule"] not in ("identifiable",)]
    return "; ".join(r["text"] for r in fired) or "no rule fired: " + "; ".join(r["text"] for r in rules[:2])


def lens_table(deltas: Mapping[str, WeightDelta], model: nn.Module, ks: Sequence[int]) -> pd.DataFrame:
    """Does dW ride the base weights' top singular directions? Per family, role and k: the share of ||dW||^2 in the
    top-k x top-k block of U0^T dW V0 (`lib.kits.delta_ablation.base_svd_lens`), its energy-weighted mean over
    tensors, and what an isotropic random dW would put there."""
    rows = []
    for family, delta in deltas.items():
        frame = pd.DataFrame(da.base_svd_lens(delta, model, ks))
        frame["energy"] = [float(delta[n].double().pow(2).sum()) for n in frame.name]
        for (role, k), group in frame.groupby(["role", "k"]):
            weight = group.energy / group.energy.sum()
            rows.append({"family": family, "role": role, "k": k,
                         "top_k_fraction": float((group.top_k_fraction * weight).sum()),
                         "chance": float(group.chance.mean()), "tensors": len(group)})
    return pd.DataFrame(rows)


def shares_table(deltas: Mapping[str, WeightDelta], model: nn.Module, ranks: Sequence[int],
                 seeds: Sequence[int] = (1, 2, 3)) -> pd.DataFrame:
    """Per family: the share of ||dW|| in DoRA's magnitude and direction parts and in the base weights' top-r
    singular subspaces, each beside its chance value, the same share for random deltas with dW's per-tensor norms
    (`lib.kits.delta_ablation.norm_shares`; issue "Corrections", requirement 4: "direction, not magnitude" rested on
    a magnitude share of 0.041 where chance is about 0.042)."""
    splits = {"dora": lambda d: da.dora_variants(d, model),
              "base_svd": lambda d: da.base_subspace_variants(d, model, ranks)}
    rows = []
    for family, delta in deltas.items():
        for split, parts in splits.items():
            for row in da.norm_shares(parts, delta, seeds):
                if row["part"] != "non_matrix":
                    rows.append({"family": family, "split": split, **{k: v for k, v in row.items()
                                                                    if k != "chance_values"},
                                 "chance_min": min(row["chance_values"]), "chance_max": max(row["chance_values"])})
    return pd.DataFrame(rows)


def retained_figure(table: pd.DataFrame, column: str = "retained", path: Path | None = None) -> Any:
    """Retention per variant (rows, grouped) and family (columns) as a heatmap, 1 = the full dW."""
    import matplotlib.pyplot as plt

    data = table[~table.kind.isin(SINGLE_LAYER_KINDS)].pivot_table(
        index=["group", "variant"], columns="family", values=column, aggfunc="first")
    fig, axis = plt.subplots(figsize=(2 + 1.2 * data.shape[1], 0.22 * len(data) + 1.5))
    image = axis.imshow(data.to_numpy(dtype=float), cmap="RdBu_r", vmin=-1.5, vmax=1.5, aspect="auto")
    axis.set_yticks(range(len(data)), [f"{g}: {v}" for g, v in data.index], fontsize=7)
    axis.set_xticks(range(data.shape[1]), list(data.columns))
    axis.set_title(f"{column} (swing of variant / swing of full dW)")
    fig.colorbar(image, ax=axis, shrink=0.6)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def layer_figure(table: pd.DataFrame, column: str = "retained", path: Path | None = None) -> Any:
    """Single-layer keep and leave-one-layer-out retention against the block index, per family."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5), sharey=True)
    for axis, kind in zip(axes, ("only", "out"), strict=True):
        part = table[table.kind == f"layer_{kind}"]
        for family, group in part.groupby("family"):
            layers = group.layer.astype(int)
            order = layers.argsort()
            axis.plot(layers.iloc[order], group[column].iloc[order], marker="o", label=family)
        axis.axhline(0, color="k", lw=0.7)
        axis.axhline(1, color="k", lw=0.7, ls=":")
        axis.set(xlabel="block", title=f"block {kind}" if kind == "only" else "all blocks but one")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    axes[0].set_ylabel(column)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def results(cfg: WeightAblationConfig, ablation: Ablation, table: pd.DataFrame, effects: pd.DataFrame,
            rules: Mapping[str, list[dict[str, Any]]],
            by_seed: Mapping[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """The run's record: `rules` are ours (`verdict`), `by_seed` the seed's rules as written (`seed_rules`)."""
    store = ablation.store
    c = max(cfg.coefficients)
    full = table[table.variant == "full"].set_index("family")
    summary = {
        "main_metric": f"{cfg.behaviour} score with the full dW at +{c:g} (seed {cfg.seed}), mean over families",
        "main": float(full.index.map(lambda f: store.records[Evaluations.key(f, 'full')]['points'][repr(c)]['score'])
                      .to_series().mean()),
        "baseline": float(store.base["score"]),
        "side_effect_metric": f"KL on neutral text at +{c:g}, nats/token, mean over families",
        "side_effect": float(full["kl+"].mean()),
        "verdict_score": verdict_text(rules["retained"]),
        "verdict_preference": verdict_text(rules.get("retained_preference", [])) if "retained_preference" in rules
        else "not measured",
        "seed_rules": {column: {f"{r['rule']} ({r.get('family', 'all')})": r["answer"] for r in found}
                       for column, found in (by_seed or {}).items()},
        "families": list(ablation.owners), "variants_scored": len(store.records),
        "reproduced_max_row_gap": ablation.reproduced, "seconds": round(ablation.seconds, 1),
    }
    return {"parameters": cfg.as_dict(), "summary": summary, "kl_rendering": KL_RENDERING,
            "full_effects": json.loads(effects.to_json(orient="records")), "verdict": rules,
            "seed_rules": dict(by_seed or {}),
            "table": json.loads(table.to_json(orient="records"))}
