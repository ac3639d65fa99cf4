"""A live steering playground: what does this vector do at this layer and coefficient?

`playground_outputs` is the whole computation, free of widgets so tests (and headless notebook runs) call it
directly: one prompt generated once per coefficient as ONE batch with per-row coefficients (the unsteered text is
the coefficient-0 row of that batch, so it shares padding, seed and batch shape with the steered rows), and the KL
the same steering costs on neutral text (`lib.evals.next_token_kl`), one value per coefficient.

`Playground` wraps it in ipywidgets (JupyterLab renders them natively): change a control and the table
recomputes. Every control carries a `steerlab-<name>` CSS class and the table marks its text cells
`steerlab-steered` / `steerlab-unsteered`, stable hooks for a browser test.
"""

from __future__ import annotations

import difflib
import html
import math
import re
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from lib.evals import next_token_kl
from lib.generation import generate
from lib.hooks import Steering
from lib.io import repo_path
from lib.kits.data import DEFAULT_PROMPTS, NEUTRAL_TEXTS
from lib.kits.evaluation import fluency_nll
from lib.kits.text_scorers import degeneracy
from lib.models import layer_index
from lib.vectors import SteeringVector

if TYPE_CHECKING:
    import ipywidgets

POSITIONS = ("all", "prompt", "generated")
SAMPLING = ("greedy", "sampled")
VECTOR_FILE = "vector"  # the base name notebooks save their vector under (`vector.safetensors` + `vector.json`)


# ----------------------------------------------------------------------------- inputs


def parse_coefficients(text: str) -> list[float]:
    """Coefficients typed as text ("0, 2, 4, 8"; commas and/or spaces) as floats; "" is none."""
    values = []
    for item in (part for part in re.split(r"[,\s]+", text.strip()) if part):
        try:
            value = float(item)
        except ValueError:
            raise ValueError(f"coefficients={text!r}: {item!r} is not a number; write numbers separated by commas, "
                             "e.g. '0, 2, 4, 8'") from None
        if not math.isfinite(value):
            raise ValueError(f"coefficients={text!r}: {item!r} is not finite; every coefficient must be a finite "
                             "number")
        values.append(value)
    return values


def run_coefficients(coefficients: Sequence[float]) -> list[float]:
    """The rows one playground run computes: the unsteered 0 first (the baseline every row is compared with), then
    the given coefficients in order, each once."""
    values = []
    for value in coefficients:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"coefficients={list(coefficients)!r}: {value!r} is not a finite number")
        values.append(float(value))
    if not values:
        raise ValueError("coefficients is empty: give at least one coefficient to compare with the unsteered 0, "
                         "e.g. [4.0]")
    return list(dict.fromkeys([0.0, *values]))


def check_vector_layers(vector: SteeringVector | Mapping[int, Any], layers: Sequence[int]) -> list[int]:
    """`layers` as ints, each one the vector has (the playground steers only layers the vector was built for)."""
    available = sorted(getattr(vector, "vectors", vector))
    if isinstance(layers, int | str) or not list(layers):
        raise ValueError(f"layers={layers!r} selects no layer: choose one or more of the vector's layers {available}")
    try:
        chosen = [layer_index(layer) for layer in layers]
    except TypeError as error:
        raise ValueError(f"layers={list(layers)!r}: {error}") from None
    missing = [layer for layer in chosen if layer not in available]
    if missing:
        raise ValueError(f"layers={chosen!r}: the vector has no layer {', '.join(map(str, missing))}; its layers are "
                         f"{available}")
    return list(dict.fromkeys(chosen))


def resolve_vector_path(path: str | Path, parameter: str = "path") -> Path:
    """The file a vector path names: a run folder (its `vector.safetensors`), a `SteeringVector.save` base path, a
    `.safetensors` file, or a plain `{layer: [floats]}` JSON (`steering_vectors.json`). Relative paths are relative to
    the repository, as everywhere in steerlab. Errors name `parameter`."""
    if not str(path).strip():
        raise ValueError(f"{parameter}='' names no vector: give a run folder, a vector file or its base path")
    found = repo_path(path)
    if found.is_dir():
        found = found / f"{VECTOR_FILE}.safetensors"
    elif found.suffix not in (".safetensors", ".json"):
        found = found.with_name(found.name + ".safetensors")
    if not found.is_file():
        raise FileNotFoundError(f"{parameter}={str(path)!r}: no vector at {found}; give a run folder that holds "
                                f"{VECTOR_FILE}.safetensors (e.g. out/contrastive_steering/default), a vector file or "
                                "its base path")
    return found


def load_vector(path: str | Path, parameter: str = "path") -> SteeringVector:
    """A SteeringVector from any path `resolve_vector_path` accepts (a checksummed file is verified); errors name
    `parameter` and the file."""
    found = resolve_vector_path(path, parameter)
    try:
        if found.suffix == ".json" and not found.with_suffix(".safetensors").is_file():
            return SteeringVector.from_plain_json(found)
        return SteeringVector.load(found.with_suffix(""))
    except ValueError as error:
        raise ValueError(f"{parameter}={str(path)!r}: {error}") from None


# ----------------------------------------------------------------------------- the computation


@dataclass(frozen=True)
class PlaygroundRow:
    coefficient: float
    text: str
    changed: float  # 1 - word-level similarity to the unsteered text: 0 identical, 1 nothing in common
    kl: float  # mean KL(unsteered || steered) per token of neutral text, nats
    degenerate: bool = False  # repeated trigrams or non-words over half the text, or empty (text_scorers.degeneracy)
    fluency_nll: float = float("nan")  # the unsteered model's NLL per token of the text: how natural it reads


@dataclass
class PlaygroundOutputs:
    """One playground run: its settings and one row per coefficient, the unsteered 0 first."""

    prompt: str
    layers: list[int]
    positions: str
    temperature: float
    max_new_tokens: int
    seed: int
    rows: list[PlaygroundRow]

    @property
    def unsteered(self) -> PlaygroundRow:
        return self.rows[0]

    @property
    def steered(self) -> list[PlaygroundRow]:
        return self.rows[1:]

    def row(self, coefficient: float) -> PlaygroundRow:
        for row in self.rows:
            if row.coefficient == float(coefficient):
                return row
        raise KeyError(f"coefficient {coefficient} was not run; run: {[row.coefficient for row in self.rows]}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_html(self) -> str:
        """Unsteered and steered texts side by side, one column per coefficient, with the changed fraction and the
        neutral-text KL under each. Text cells carry `steerlab-unsteered` / `steerlab-steered` and the coefficient."""
        def cell(row: PlaygroundRow, content: str, tag: str = "td", kind: str = "") -> str:
            attributes = f' class="{kind}" data-coefficient="{row.coefficient:g}"' if kind else ""
            return f'<{tag}{attributes} style="{CELL_STYLE}">{content}</{tag}>'

        def kind(row: PlaygroundRow) -> str:
            return "steerlab-unsteered" if row is self.unsteered else "steerlab-steered"

        header = "".join(cell(row, "unsteered (coefficient 0)" if row is self.unsteered else
                              f"coefficient {row.coefficient:g}", "th") for row in self.rows)
        texts = "".join(cell(row, html.escape(row.text) or "<i>(empty)</i>", kind=kind(row)) for row in self.rows)
        changed = "".join(cell(row, f"{row.changed:.0%}") for row in self.rows)
        kls = "".join(cell(row, f"{row.kl:.3f}") for row in self.rows)
        fluency = "".join(cell(row, f"{row.fluency_nll:.2f}" + (" <b>degenerate</b>" if row.degenerate else ""))
                          for row in self.rows)
        sampling = "greedy" if self.temperature == 0 else \
            f"sampled at temperature {self.temperature:g}, seed {self.seed}"
        note = (f"layers {self.layers}, positions {self.positions!r}, {sampling}, {self.max_new_tokens} new tokens. "
                "changed: 1 - word-level similarity to the unsteered text. KL: mean KL(unsteered || steered) per "
                "token of neutral text, nats. Fluency: the unsteered model's NLL per token of the text (higher reads "
                "less naturally); degenerate: repeated trigrams or non-words over half of it, or empty.")
        if self.positions == "generated":
            note += " The KL is a plain forward pass, which has no generated tokens: 'generated' leaves it at 0."
        label = f'<th style="{CELL_STYLE}">{{}}</th>'
        return (f'<table class="steerlab-table" style="border-collapse: collapse">'
                f"<tr>{label.format('')}{header}</tr>"
                f"<tr>{label.format('text')}{texts}</tr>"
                f"<tr>{label.format('changed')}{changed}</tr>"
                f"<tr>{label.format('KL on neutral text')}{kls}</tr>"
                f"<tr>{label.format('fluency (NLL)')}{fluency}</tr>"
                f'</table><p style="font-size: smaller">{html.escape(note)}</p>')


CELL_STYLE = "border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; white-space: pre-wrap"


def changed_fraction(reference: str, text: str) -> float:
    """1 - difflib's similarity ratio of the two texts' words: 0 when identical, 1 when they share no word."""
    if reference == text:
        return 0.0
    return 1.0 - difflib.SequenceMatcher(None, reference.split(), text.split(), autojunk=False).ratio()


def playground_outputs(
    model: nn.Module,
    tokenizer: Any,
    prompt: str,
    vector: SteeringVector | Mapping[int, Any],
    layers: Sequence[int],
    coefficients: Sequence[float],
    positions: str = "all",
    temperature: float = 0.0,
    max_new_tokens: int = 32,
    seed: int = 0,
    *,
    neutral_texts: Sequence[str] = NEUTRAL_TEXTS,
    chat: bool = True,
    kl_batch_size: int = 16,
) -> PlaygroundOutputs:
    """Generate `prompt` at the unsteered 0 and every coefficient in one batch (the vector at `layers`, over
    `positions`), and measure the KL each coefficient costs on `neutral_texts` with the same steering.

    The steering is `Steering(vector, layers=layers, positions=positions)` at weight 1, exactly what a direct
    `lib.generate(..., steering=..., coefficients=[c])` applies, so the playground shows what a script would get.
    Inputs are checked first, each error naming its parameter. Greedy rows equal separate runs of one coefficient
    each; sampled rows come from one seeded batch, so the same settings give the same texts, but a row's sample
    may depend on the other rows beside it.
    """
    if vector is None:
        raise ValueError("vector is missing: pass a SteeringVector, or load one from a run folder or vector file")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt is empty: type the prompt to steer")
    if positions not in POSITIONS:
        raise ValueError(f"positions={positions!r} must be one of {POSITIONS}")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature < math.inf:
        raise ValueError(f"temperature={temperature!r} must be a finite number >= 0 (0: greedy)")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an int >= 1")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed={seed!r} must be an int")
    chosen = check_vector_layers(vector, layers)
    rows = run_coefficients(coefficients)
    steering = Steering(vector, layers=chosen, positions=positions)
    texts = generate(model, tokenizer, [prompt] * len(rows), max_new_tokens=max_new_tokens,
                     temperature=float(temperature), seed=seed, batch_size=len(rows), chat=chat, steering=steering,
                     coefficients=rows, progress=False)  # batch_size: every coefficient in one batch
    kl = next_token_kl(model, tokenizer, neutral_texts, steering=steering, coefficients=rows,
                       batch_size=kl_batch_size, progress=False).tolist()
    fluency = fluency_nll(model, tokenizer, [prompt] * len(rows), texts, batch_size=kl_batch_size, chat=chat)
    return PlaygroundOutputs(
        prompt=prompt, layers=chosen, positions=positions, temperature=float(temperature),
        max_new_tokens=max_new_tokens, seed=seed,
        rows=[PlaygroundRow(coefficient, text, changed_fraction(texts[0], text), value, degeneracy(text).degenerate,
                            float(nll))
              for coefficient, text, value, nll in zip(rows, texts, kl, fluency, strict=True)],
    )


# ----------------------------------------------------------------------------- the widget


def default_layers(vector: SteeringVector | Mapping[int, Any]) -> list[int]:
    """The layer a third of the way through the vector's layers (the contrastive demo's layer 10 of 30: early-middle
    layers are the usual first try), or its only layer; a starting point, the widget lets you pick others."""
    layers = sorted(getattr(vector, "vectors", vector))
    return [layers[len(layers) // 3]]


def _status(text: str, color: str = "#555") -> str:
    return f'<span style="color: {color}">{html.escape(text)}</span>'


RUNNING = _status("running...", "#b36b00")


def error_html(error: BaseException) -> str:
    """A one-line message; the traceback only for unexpected errors, folded away (input errors need none)."""
    message = _status(f"error: {error}" if isinstance(error, ValueError | FileNotFoundError) else
                      f"error: {type(error).__name__}: {error}", "#c00")
    if isinstance(error, ValueError | FileNotFoundError):
        return f'<div class="steerlab-error">{message}</div>'
    trace = html.escape("".join(traceback.format_exception(error))[-4000:])
    return (f'<div class="steerlab-error">{message}<details><summary>traceback</summary>'
            f"<pre>{trace}</pre></details></div>")


class Playground:
    """The playground widget: `display(Playground(model, tokenizer, vector))` in JupyterLab.

    Controls: prompt, vector (passed in, or a run folder / vector file path and "load"), layers (the vector's),
    coefficient slider, several coefficients ("0, 2, 4, 8": run with the slider's value as one batch), position
    scope, greedy or sampled (with temperature and seed), max new tokens. Any change recomputes
    (`playground_outputs`); text boxes and the slider report on release or Enter, so dragging queues one run, not
    dozens. While computing, the status says "running..."; errors show there as one line, not as a traceback.
    The last result is `.outputs` (None after an error).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        vector: SteeringVector | str | Path | None = None,
        *,
        prompt: str = DEFAULT_PROMPTS[0],
        layers: Sequence[int] | None = None,
        coefficient: float = 2.0,
        coefficients: str | Sequence[float] = "",
        positions: str = "all",
        temperature: float = 0.0,
        max_new_tokens: int = 32,
        seed: int = 0,
        coefficient_range: float = 16.0,
        neutral_texts: Sequence[str] = NEUTRAL_TEXTS,
        chat: bool = True,
        run: bool = True,
    ) -> None:
        import ipywidgets as widgets

        self.model, self.tokenizer, self.neutral_texts, self.chat = model, tokenizer, list(neutral_texts), chat
        self.vector: SteeringVector | None = None
        self.outputs: PlaygroundOutputs | None = None
        self._quiet = False  # True while controls are set together: one recompute after, not one per control
        limit = max(float(coefficient_range), abs(float(coefficient)))
        text = coefficients if isinstance(coefficients, str) else ", ".join(str(float(c)) for c in coefficients)
        wide = widgets.Layout(width="95%")

        self.prompt = widgets.Textarea(value=prompt, description="prompt", continuous_update=False, layout=wide,
                                       rows=3)
        self.vector_path = widgets.Text(value="" if vector is None or isinstance(vector, SteeringVector) else
                                        str(vector), description="vector", continuous_update=False,
                                        placeholder="run folder or vector file, e.g. out/contrastive_steering/default")
        self.load_button = widgets.Button(description="load", tooltip="load the vector at this path")
        self.layers = widgets.SelectMultiple(options=[], value=(), description="layers", rows=5)
        self.coefficient = widgets.FloatSlider(value=float(coefficient), min=-limit, max=limit, step=0.1,
                                               description="coefficient", continuous_update=False, readout_format=".1f")
        self.coefficients = widgets.Text(value=text, description="several", continuous_update=False,
                                         placeholder="more coefficients in the same batch, e.g. 0, 2, 4, 8")
        self.positions = widgets.Dropdown(options=POSITIONS, value=positions, description="positions")
        self.sampling = widgets.ToggleButtons(options=SAMPLING, value="sampled" if temperature > 0 else "greedy",
                                              description="decoding")
        self.temperature = widgets.BoundedFloatText(value=temperature if temperature > 0 else 0.7, min=0.01,
                                                    max=max(5.0, temperature), step=0.1, description="temperature",
                                                    continuous_update=False, disabled=temperature == 0)
        self.seed = widgets.IntText(value=seed, description="seed", continuous_update=False)
        self.max_new_tokens = widgets.BoundedIntText(value=max_new_tokens, min=1, max=1024,
                                                     description="new tokens", continuous_update=False)
        self.status = widgets.HTML(value="")
        self.output = widgets.HTML(value="")
        controls = {"prompt": self.prompt, "vector-path": self.vector_path, "load": self.load_button,
                    "layers": self.layers, "coefficient": self.coefficient, "coefficients": self.coefficients,
                    "positions": self.positions, "sampling": self.sampling, "temperature": self.temperature,
                    "seed": self.seed, "max-new-tokens": self.max_new_tokens, "status": self.status,
                    "output": self.output}
        for name, control in controls.items():
            control.add_class(f"steerlab-{name}")
        self.widget: ipywidgets.VBox = widgets.VBox([
            self.prompt,
            widgets.HBox([self.vector_path, self.load_button]),
            widgets.HBox([self.layers, widgets.VBox([self.coefficient, self.coefficients, self.positions])]),
            widgets.HBox([self.sampling, self.temperature, self.seed]),
            self.max_new_tokens,
            self.status,
            self.output,
        ])
        self.widget.add_class("steerlab-playground")

        self.load_button.on_click(lambda _: self.load(self.vector_path.value))
        self.sampling.observe(self._sampling_changed, names="value")
        for control in (self.prompt, self.layers, self.coefficient, self.coefficients, self.positions,
                        self.temperature, self.seed, self.max_new_tokens):
            control.observe(self.update, names="value")

        if isinstance(vector, SteeringVector):
            self.set_vector(vector, layers, run=run)
        elif vector is not None:
            self.load(vector, layers, run=run)
        else:
            self.status.value = _status("no vector yet: type a run folder or vector file path and press load")

    # -- display
    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    # -- vector
    def load(self, path: str | Path, layers: Sequence[int] | None = None, run: bool = True) -> None:
        """Load the vector at `path` (errors go to the status line) and recompute."""
        try:
            vector = load_vector(path)
        except (ValueError, FileNotFoundError) as error:
            self._show_error(error)
            return
        self.set_vector(vector, layers, run=run)

    def set_vector(self, vector: SteeringVector, layers: Sequence[int] | None = None, run: bool = True) -> None:
        """Use `vector`: the layer choices become its layers; `layers` (default: the current choice where the vector
        has it, else `default_layers`) is selected. Layers it lacks are reported on the status line, not raised."""
        self.vector = vector
        previous = [layer for layer in self.layers.value if layer in vector.vectors]
        wanted = list(layers) if layers is not None else previous or default_layers(vector)
        self._quiet = True
        try:
            self.layers.options = [(str(layer), layer) for layer in vector.layers]
            try:
                self.layers.value = tuple(check_vector_layers(vector, wanted))
            except ValueError as error:
                self.layers.value = ()
                self._show_error(error)
                return
        finally:
            self._quiet = False
        if run:
            self.update()

    # -- computing
    def settings(self) -> dict[str, Any]:
        """The controls' values as `playground_outputs` arguments: the unsteered 0, the slider's coefficient, then
        the several coefficients, in one batch."""
        return {
            "prompt": self.prompt.value,
            "vector": self.vector,
            "layers": list(self.layers.value),
            "coefficients": run_coefficients([self.coefficient.value, *parse_coefficients(self.coefficients.value)]),
            "positions": self.positions.value,
            "temperature": float(self.temperature.value) if self.sampling.value == "sampled" else 0.0,
            "max_new_tokens": int(self.max_new_tokens.value),
            "seed": int(self.seed.value),
        }

    def update(self, change: Any = None) -> PlaygroundOutputs | None:
        """Recompute from the controls (an `observe` callback; also callable directly). Errors become the status
        line and an empty table; the result is also kept as `.outputs`."""
        if self._quiet:
            return None
        self.status.value = RUNNING
        start = time.perf_counter()
        try:
            outputs = playground_outputs(self.model, self.tokenizer, **self.settings(),
                                         neutral_texts=self.neutral_texts, chat=self.chat)
        except Exception as error:  # shown, not raised: a widget callback's traceback would land in a log
            self._show_error(error)
            return None
        self.outputs = outputs
        self.output.value = outputs.to_html()
        self.status.value = _status(f"done in {time.perf_counter() - start:.1f} s: {len(outputs.rows)} rows in one "
                                    "batch")
        return outputs

    def show(self, outputs: PlaygroundOutputs) -> None:
        """Show `outputs` computed elsewhere for the current controls (the notebook's configured table) instead of
        computing them again. Outputs of other settings are refused, naming what differs, so the table never
        disagrees with the controls above it (the vector itself is not compared)."""
        settings = self.settings()
        shown = {"prompt": outputs.prompt, "layers": outputs.layers, "positions": outputs.positions,
                 "temperature": outputs.temperature, "max_new_tokens": outputs.max_new_tokens, "seed": outputs.seed,
                 "coefficients": [row.coefficient for row in outputs.rows]}
        differ = {name: (value, settings[name]) for name, value in shown.items() if value != settings[name]}
        if differ:
            raise ValueError("outputs were computed for other settings than the controls show: " + "; ".join(
                f"{name}={theirs!r} vs {mine!r}" for name, (theirs, mine) in differ.items()))
        self.outputs = outputs
        self.output.value = outputs.to_html()
        self.status.value = _status(f"{len(outputs.rows)} rows computed for these settings; change a control to "
                                    "recompute")

    def _show_error(self, error: BaseException) -> None:
        self.outputs = None
        self.output.value = ""
        self.status.value = error_html(error)

    def _sampling_changed(self, change: Any) -> None:
        self.temperature.disabled = change["new"] == "greedy"
        self.update()
