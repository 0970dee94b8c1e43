"""One user's state, UI-free: model choice, data, the edit timeline, results, chats.

Models are loaded once per process and shared read-only (``ModelStore``); everything a user
changes lives in their Session, so two users never see each other's edits. Every action
validates its input and raises UserError with a readable message.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from unlearnviz.data import load_data
from unlearnviz.data.schema import UnlearningData
from unlearnviz.errors import UserError
from unlearnviz.methods.base import choose_preset, get_method, make_hparams
from unlearnviz.methods.edit import Edit, EditStack
from unlearnviz.model.loading import LoadedModel, LoadOptions, load_model, resolve_placement
from unlearnviz.model.routing import RoutingPlan


@dataclass
class Limits:
    """Operator-configurable caps on what one request may cost."""

    max_prompt_chars: int = 4000  # chat prompt, in characters
    max_new_tokens: int = 256  # chat answer length
    max_steps: int = 1000  # training steps of one edit or one relearning attack
    max_points: int = 120  # texts (points) in the Geometry tab's PCA/UMAP views
    max_upload_mb: int = 20  # one uploaded data file
    max_sweep_points: int = 6  # edits fitted by one small sweep (Evaluate tab)

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"limit {name} must be a positive integer, got {value!r}")


def has_learned_positions(lm: LoadedModel) -> bool:
    """A table of absolute position embeddings (GPT-2's wpe, OPT's embed_positions): a hard context limit."""
    import torch

    return any(isinstance(m, torch.nn.Embedding) and name.rsplit(".", 1)[-1] in
               ("wpe", "position_embeddings", "embed_positions") for name, m in lm.model.named_modules())


def check_fits_context(lm: LoadedModel, data: UnlearningData, letter: bool = True) -> None:
    """Refuse, naming the item, data whose scored sequences are longer than the model's context
    (for models with learned absolute positions, where a longer sequence is an indexing error).

    A token covers at least a quarter of a character's UTF-8 bytes' worth of text, so only items
    whose text could come near the limit are tokenised.
    """
    from unlearnviz.evaluation.mcq import letter_prompt

    if not has_learned_positions(lm):
        return  # rotary/ALiBi models read past their nominal context (worse answers, no crash)
    tok, limit = lm.tokenizer, lm.max_length
    for split, items in (("forget", data.forget_mcq), ("retain", data.retain_mcq)):
        for i, it in enumerate(items):
            longest = max(it.choices, key=len)
            texts = [f"{it.question} {longest}", f"{it.blind_question} {longest}"]
            if letter:
                texts.append(letter_prompt(it) + " A")
            for text in texts:
                if len(text.encode("utf-8")) < limit:
                    continue  # byte-level tokenizers give at most one token per byte (plus specials)
                n = len(tok(text).input_ids)
                if n > limit:
                    raise UserError(f"{data.name}: {split} item {i + 1} is {n} tokens long; this model's context "
                                    f"is {limit} tokens: shorten its question or choices")
    if limit < 256:  # perplexity reads up to 256 tokens of each retain text
        for i, text in enumerate(data.retain_texts):
            if len(text.encode("utf-8")) >= limit and len(tok(text).input_ids) > limit:
                raise UserError(f"{data.name}: retain text {i + 1} is longer than this model's context of {limit} tokens")


class ModelStore:
    """Process-wide cache of loaded models, keyed by source and options."""

    def __init__(self) -> None:
        self._models: dict[tuple, LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, source: str, opts: LoadOptions) -> LoadedModel:
        key = (source, *resolve_placement(opts), str(opts.device_map), opts.quantization)
        with self._lock:
            if key not in self._models:
                self._models[key] = load_model(source, opts)
            return self._models[key]

    def preload(self, source: str) -> LoadedModel:
        """Load ``source`` (a name such as 'default' or 'synthetic', a folder, a hub id) with the
        default options before anyone asks, so the first user does not wait for it."""
        from unlearnviz.data.synthetic import resolve_model_source

        return self.get(resolve_model_source(source), LoadOptions())


STORE = ModelStore()


def compose_data_spec(base: str | None, parts: dict, confine=None) -> str:
    """One data spec string from a base spec and parts (part name: a source string, a list of
    them, or None for the base's own). ``confine(path) -> path``: applied to each local path,
    preset folders (``preset:NAME@DIR``) included, before it goes into the spec (the dashboard's
    folder rule); its UserError stops the load."""
    from unlearnviz.data import compose_spec
    from unlearnviz.data.sources import check_source, format_source, is_composed, parse_data_spec, source_kind

    def local(source: str) -> str:
        if source.startswith("preset:") and "@" in source:
            name, _, folder = source.partition("@")
            return f"{name}@{confine(folder)}"
        if source_kind(source) == "path":
            return confine(source)
        return source

    given = {p: (v if isinstance(v, list) else [v]) for p, v in parts.items() if v not in (None, "", [])}
    if confine is not None:
        for p, values in given.items():
            given[p] = [format_source(src.model_copy(update={"source": local(src.source)}))
                        for src in (check_source(v, p) for v in values)]
        if base and is_composed(base):
            d = parse_data_spec(base)
            if d.base:
                local(d.base)
            for p, srcs in d.parts.items():
                for src in srcs:
                    local(src.source)
        elif base:
            base = local(base)
    return compose_spec(base, given)


def data_parts(spec: str) -> dict[str, list[str]]:
    """The sources of each of the four parts of a data spec (for a view of how it is composed):
    a preset's or the parts given; a single spec's parts all read ``(that part of) SPEC``."""
    from unlearnviz.data.compose import resolve
    from unlearnviz.data.sources import PARTS, format_source, is_composed, parse_data_spec

    if not is_composed(spec):
        return {p: [spec] for p in PARTS}
    d = parse_data_spec(spec)
    return {p: [format_source(s) if s.kind != "inherit" else (d.base or "") + format_source(s) for s in v]
            for p, v in resolve(d).items()}


def data_presets() -> dict[str, str]:
    """The presets (name: what it is), for a list to choose from."""
    from unlearnviz.data.sources import PRESET_NOTES

    return dict(PRESET_NOTES)


@dataclass
class Session:
    """Everything one user has done. The dashboard (its pages and its API endpoints) reaches the
    science only through this package: these methods, and beside them ``views`` (the insight
    tabs' numbers), ``catalogue`` (what it lists), ``sweeps`` (the small sweep), ``replay`` (a
    config fitted into a Session) and ``reporting`` (a Session's HTML report), plus
    ``unlearnviz.bundle``. The CLI also uses Sessions, but calls the science directly too."""

    lm: LoadedModel | None = None
    data: UnlearningData | None = None
    stack: EditStack = field(default_factory=EditStack)
    selected: int | None = None  # which edit (index into the stack) the views compare; None = last
    before: dict | None = None  # metrics of the original model on the current data
    after: dict[int, dict] = field(default_factory=dict)  # metrics per stack index
    relearn: dict[int, dict] = field(default_factory=dict)
    attacks: dict[int, dict] = field(default_factory=dict)  # robustness cards per stack index (session.attacks)
    chats: list[dict] = field(default_factory=list)  # every turn asked, with its conversation's number
    conversation: int = 0  # the chat in progress: the turns in ``chats`` with this number
    history: list[dict] = field(default_factory=list)  # the actions, for the reproducing config
    limits: Limits = field(default_factory=Limits)

    # ---- model and data -------------------------------------------------------------------
    def load_model(self, source: str = "default", dtype: str = "auto", device: str = "auto",
                   store: ModelStore = STORE) -> dict:
        from unlearnviz.data.synthetic import resolve_model_source

        lm = store.get(resolve_model_source(source.strip() or "default"), LoadOptions(dtype=dtype, device=device))
        if self.lm is not lm:
            self.stack, self.after, self.relearn, self.before, self.selected = EditStack(), {}, {}, None, None
            self.attacks = {}
        self.lm = lm
        self.history.append({"action": "load_model", "model": source, "dtype": dtype, "device": device})
        return lm.info()

    def load_data(self, spec: str, max_bytes: int | None = None) -> dict:
        """Any data spec (``unlearnviz.data.sources``: a single set, a preset, or four parts);
        corpora are chunked with the loaded model's tokenizer. ``max_bytes``: the cap on local
        files (the dashboard passes its upload limit for visitors' files; None: no cap)."""
        data = load_data(spec.strip(), tokenizer=self.lm.tokenizer if self.lm is not None else None,
                         max_bytes=max_bytes)
        if self.lm is not None:
            check_fits_context(self.lm, data, letter=False)
        self.data = data
        self.before, self.after, self.relearn, self.attacks = None, {}, {}, {}
        self.history.append({"action": "load_data", "data": spec})
        return self.data_summary()

    def load_parts(self, forget_corpus=None, retain_corpus=None, forget_mcq=None, retain_mcq=None,
                   base: str | None = None, max_bytes: int | None = None, confine=None) -> dict:
        """Data composed of four parts, each a source string (or a list of them; None: that part
        of ``base``); ``confine``: a check applied to every local path first (the dashboard's
        ``--data-dir`` rule), returning the path to use. Returns the data summary."""
        spec = compose_data_spec(base, {"forget_corpus": forget_corpus, "retain_corpus": retain_corpus,
                                        "forget_mcq": forget_mcq, "retain_mcq": retain_mcq}, confine=confine)
        return self.load_data(spec, max_bytes=max_bytes)

    def data_summary(self) -> dict:
        """The data's counts and overlap (``overlap_sample``: texts per side it was measured on, when
        a corpus is larger), its provenance, and where it was composed, each part's sources."""
        d = self.require_data()
        out = {**d.summary(), "provenance": d.provenance}
        if d.parts:
            out["parts"] = {p: {"sources": v["sources"], "count": v["count"]} for p, v in d.parts.items()}
        return out

    def require_model(self) -> LoadedModel:
        if self.lm is None:
            raise UserError("load a model first (Model tab)")
        return self.lm

    def require_data(self) -> UnlearningData:
        if self.data is None:
            raise UserError("load forget/retain data first (Data tab)")
        return self.data

    # ---- edits ----------------------------------------------------------------------------
    def run_edit(self, method: str, overrides: dict | None = None, progress=None, should_stop=None,
                 evaluate: bool = True, data_spec: str | None = None, budget_bytes: int | None = None,
                 preset: str | None = None) -> dict:
        """Fit one edit on top of the stack. ``data_spec``: fit it on another data set (continual
        unlearning on a new forget set, as a config's ``edits[i].data``); the session's data stays.
        ``preset``: the method's preset of that name under ``overrides`` (``none``: the defaults;
        None: the one matching the model, if no overrides are given: ``methods.base.choose_preset``);
        the edit's meta records it and ``out["preset_note"]`` says what was chosen.
        A fit whose planned peak memory is over what the device has (or ``budget_bytes``) is refused
        before it starts (``session.planning``)."""
        lm = self.require_model()
        data = load_data(data_spec.strip(), tokenizer=lm.tokenizer) if data_spec else self.require_data()
        spec = get_method(str(method or "").strip())
        if overrides is not None and not isinstance(overrides, dict):
            raise UserError(f"hyperparameters must be a JSON object of name: value, got {type(overrides).__name__}")
        choice = choose_preset(spec, lm.model.config, overrides, preset, lambda: lm.fingerprint(refresh=False))
        hparams = make_hparams(spec.hparams_cls, choice.overrides)
        if getattr(hparams, "max_tokens", 0) > lm.max_length and has_learned_positions(lm):
            raise UserError(f"max_tokens={hparams.max_tokens} is over this model's context of {lm.max_length} tokens")
        if getattr(hparams, "steps", 0) > self.limits.max_steps:
            raise UserError(f"steps={hparams.steps} is over this server's limit of {self.limits.max_steps}")
        check_fits_context(lm, data, letter=False)
        from unlearnviz.session.planning import check_fit

        check_fit(lm, data, spec.name, hparams, self.stack, budget_bytes)
        fp = lm.fingerprint(refresh=False)
        prior = self.stack.plan()
        t0 = time.perf_counter()
        edit = spec.fit(lm, data, hparams, progress=progress, should_stop=should_stop, prior=prior)
        edit.meta.update({"label": f"{len(self.stack) + 1}. {method}", "data": data.name,
                          "data_hash": data.content_hash(), "fit_s": time.perf_counter() - t0,
                          "data_spec": data_spec or (self._last("load_data") or {}).get("data")})
        if choice.record:
            edit.meta["preset"] = choice.record
        self.stack.push(edit)
        self.selected = None
        self.history.append({"action": "run_edit", "method": method, "hparams": overrides or {},
                             **({"data": data_spec} if data_spec else {}), **({"preset": preset} if preset else {})})
        out = {"index": len(self.stack) - 1, "method": method, "fit_s": edit.meta["fit_s"],
               "steps": edit.meta.get("steps"), "preset": (choice.record or {}).get("name"),
               "preset_note": choice.message}
        if evaluate:
            out["metrics"] = self.evaluate(should_stop=should_stop)
        if lm.fingerprint(refresh=False) != fp:
            raise AssertionError("base weights changed")  # never expected: edits act through hooks
        return out

    def describe_unlearned(self, source: str) -> dict:
        """What importing ``source`` (a checkpoint or LoRA adapter made by another tool) would read
        and keep beside the loaded base, before anything is read but file headers."""
        from unlearnviz.methods.imports import describe_unlearned

        return describe_unlearned(str(source or "").strip())

    def import_unlearned(self, source: str, evaluate: bool = True, should_stop=None, allow_pickle: bool = False,
                         progress=None) -> dict:
        """Push a checkpoint or LoRA adapter made by another tool onto the stack as an edit: the
        tensors in which it differs from the loaded base, routed per row like a fitted edit (so
        every view compares it with the original in one batched pass). Its config entry is
        ``{method: imported, source: ...}`` (re-imported on replay). ``allow_pickle``: the
        operator's opt-in for .bin sources."""
        from unlearnviz.methods.imports import import_unlearned

        lm = self.require_model()
        source = str(source or "").strip()
        if not source:
            raise UserError("name the unlearned checkpoint (a folder, a .gguf file or a hub id) or LoRA adapter")
        fp = lm.fingerprint(refresh=False)
        t0 = time.perf_counter()
        edit = import_unlearned(lm, source, allow_pickle=allow_pickle, progress=progress)
        edit.meta.update({"label": f"{len(self.stack) + 1}. {edit.label()}", "fit_s": time.perf_counter() - t0})
        self.stack.push(edit)
        self.selected = None
        self.history.append({"action": "import_unlearned", "source": edit.hparams.get("source", source)})
        out = {"index": len(self.stack) - 1, "method": edit.method, "label": edit.label(),
               "import": edit.meta.get("import", {}), "import_s": edit.meta["fit_s"]}
        if evaluate and self.data is not None:
            out["metrics"] = self.evaluate(should_stop=should_stop)
        if lm.fingerprint(refresh=False) != fp:
            raise AssertionError("base weights changed")  # never expected: edits act through hooks
        return out

    def undo(self) -> dict:
        edit = self.stack.undo()
        self.after.pop(len(self.stack), None)
        self.relearn.pop(len(self.stack), None)
        self.attacks.pop(len(self.stack), None)
        self.selected = None
        self.history.append({"action": "undo"})
        return {"undone": edit.label(), "remaining": len(self.stack)}

    def select(self, index: int | None) -> None:
        if index is not None and not 0 <= index < len(self.stack):
            raise UserError(f"there is no edit {index}")
        self.selected = index

    @property
    def current_index(self) -> int | None:
        if not len(self.stack):
            return None
        return self.selected if self.selected is not None else len(self.stack) - 1

    def plan(self, rows=None) -> RoutingPlan | None:
        """The selected edit together with everything stacked before it."""
        idx = self.current_index
        return None if idx is None else self.stack.plan(upto=idx, rows=rows)

    def current_edit(self) -> Edit | None:
        idx = self.current_index
        return None if idx is None else self.stack.edits[idx]

    # ---- evaluation -----------------------------------------------------------------------
    def evaluate(self, letter: bool = False, progress=None, should_stop=None) -> dict:
        from unlearnviz.evaluation.mcq import evaluate

        lm, data = self.require_model(), self.require_data()
        check_fits_context(lm, data, letter)
        if self.before is None:
            self.before = evaluate(lm, data, letter=letter, progress=progress, should_stop=should_stop)
        result = {"before": self.before}
        idx = self.current_index
        if idx is not None:
            if idx not in self.after:
                self.after[idx] = evaluate(lm, data, plan=self.plan(), letter=letter, progress=progress,
                                           should_stop=should_stop)
            result["after"] = self.after[idx]
        return result

    # ---- chat -----------------------------------------------------------------------------
    def conversation_turns(self) -> list[dict]:
        """The turns of the chat in progress, oldest first (each: prompt, both answers, the edit)."""
        return [c for c in self.chats if c.get("conversation") == self.conversation]

    def new_conversation(self) -> None:
        """Start a fresh chat: both models forget the earlier turns (the log in ``chats`` keeps them)."""
        self.conversation = 1 + max([self.conversation, *(c.get("conversation", 0) for c in self.chats)])

    def prompt_match(self, prompt: str) -> dict:
        """Whether ``prompt`` concerns a fact of the loaded data: the longest subject of a forget or
        retain question that appears in it (case-insensitive); ``{"part": None}`` when none does."""
        text, best = prompt.casefold(), {"part": None, "subject": None, "question": None}
        if self.data is None:
            return best
        for part, items in (("forget", self.data.forget_mcq), ("retain", self.data.retain_mcq)):
            for it in items:
                subject = it.subject.strip()
                if subject and subject.casefold() in text and len(subject) > len(best["subject"] or ""):
                    best = {"part": part, "subject": subject, "question": it.question}
        return best

    def chat_stream(self, prompt: str, max_new_tokens: int = 48, temperature: float = 0.0, should_stop=None,
                    follow_up: bool = False):
        """Both models answer ``prompt`` in one batch; the turn is kept in ``chats``. ``follow_up``:
        each model continues its own side of the chat in progress (a chat begun under another edit
        starts afresh); otherwise the prompt opens a new conversation (a one-shot question, as a
        config's chats are replayed)."""
        from unlearnviz.generation import GenSettings, stream_side_by_side

        lm = self.require_model()
        if not prompt.strip():
            raise UserError("the prompt is empty; type a question")
        if len(prompt) > self.limits.max_prompt_chars:
            raise UserError(f"the prompt is {len(prompt)} characters; the limit is {self.limits.max_prompt_chars}")
        if not 1 <= max_new_tokens <= self.limits.max_new_tokens:
            raise UserError(f"max new tokens must be 1..{self.limits.max_new_tokens}")
        if not 0 <= temperature <= 5:
            raise UserError("temperature must be between 0 and 5")
        turns = self.conversation_turns()
        if turns and (not follow_up or turns[-1].get("edit_index") != self.current_index):
            self.new_conversation()
            turns = []
        settings = GenSettings(max_new_tokens=int(max_new_tokens), temperature=float(temperature))
        state = None
        for state in stream_side_by_side(lm, prompt, self.plan(), settings, should_stop=should_stop,
                                         history_original=[(t["prompt"], t["original"]) for t in turns],
                                         history_edited=[(t["prompt"], t["edited"]) for t in turns]):
            yield state
        if state is not None:
            original, edited = state.texts(lm.tokenizer)
            self.chats.append({"prompt": prompt, "original": original, "edited": edited,
                               "first_divergence": state.first_divergence(),
                               "edit": self.current_edit().label() if self.current_edit() else None,
                               "edit_index": self.current_index, "max_new_tokens": int(max_new_tokens),
                               "temperature": float(temperature), "conversation": self.conversation,
                               "turn": len(turns)})

    def chat(self, prompt: str, max_new_tokens: int = 48, temperature: float = 0.0) -> dict:
        state = None
        for state in self.chat_stream(prompt, max_new_tokens, temperature):
            pass
        original, edited = state.texts(self.lm.tokenizer)
        return {"original": original, "edited": edited, "first_divergence": state.first_divergence()}

    # ---- export ---------------------------------------------------------------------------
    def export_edit(self, folder: Path) -> Path:
        from unlearnviz.methods.edit import save_edit

        edit = self.current_edit()
        if edit is None:
            raise UserError("there is no edit to export yet (Unlearn tab)")
        edit.meta["metrics"] = {"before": self.before, "after": self.after.get(self.current_index)}
        return save_edit(edit, folder, self.require_model(), stack_index=self.current_index)

    def export_checkpoint(self, folder: Path) -> dict:
        """A standalone Hugging Face checkpoint in ``folder`` of the selected edit with every edit
        stacked before it, folded into the weights where that is exact (the rest is written beside
        them); returns the export's manifest entry, with a ``note`` where a plain load differs."""
        from unlearnviz.methods.edit import export_checkpoint

        idx = self.current_index
        if idx is None:
            raise UserError("there is no edit yet (Unlearn tab)")
        return export_checkpoint(self.require_model(), EditStack(self.stack.edits[: idx + 1]), folder)

    # ---- relearning attack ----------------------------------------------------------------
    def run_relearn(self, steps: int = 40, lr: float = 1e-4, eval_every: int = 10, seed: int = 0,
                    progress=None, should_stop=None) -> dict:
        """Fine-tune on forget half A, edited and original, plus the white-box attacks, for the
        selected edit; kept in ``relearn`` with its settings (so configs and bundles carry them)."""
        from unlearnviz.evaluation.relearn import RelearnSettings, relearn_record

        lm, data = self.require_model(), self.require_data()
        plan = self.plan()
        if plan is None:
            raise UserError("run an edit first (Unlearn tab): the attack compares edited with original")
        if steps > self.limits.max_steps:
            raise UserError(f"steps={steps} is over this server's limit of {self.limits.max_steps}")
        settings = RelearnSettings(steps=int(steps), lr=float(lr), eval_every=int(eval_every), seed=int(seed))
        result = relearn_record(lm, data, plan, settings, progress=progress, should_stop=should_stop)
        self.relearn[self.current_index] = result
        return result

    # ---- configs and bundles --------------------------------------------------------------
    def _last(self, action: str) -> dict | None:
        return next((h for h in reversed(self.history) if h.get("action") == action), None)

    def to_config(self, base=None):
        """The Config that replays this session (``unlearnviz.session.replay.replay``): the current model
        and data, every edit of the stack with all its hyperparameters (and its own data where it
        was fitted on another set), the chats whose edit still exists. Sections a session does not
        hold (analysis, seed) come from ``base`` (the config it was replayed from) or defaults."""
        from unlearnviz.config import parse_config

        model, data = self._last("load_model") or {}, self._last("load_data") or {}
        raw = base.to_dict() if base is not None else {}
        raw["model"] = {"source": model.get("model") or (self.lm.source if self.lm else "default"),
                        "dtype": model.get("dtype", "auto"), "device": model.get("device", "auto")}
        raw["data"] = {"spec": data.get("data")}
        raw["edits"] = []
        for e in self.stack.edits:
            entry = {"method": e.method, "hparams": dict(e.hparams)}
            if (e.meta.get("preset") or {}).get("name"):  # a record: every value is in hparams already
                entry["preset"] = e.meta["preset"]["name"]
            if e.meta.get("data_spec") and e.meta["data_spec"] != data.get("data"):
                entry["data"] = e.meta["data_spec"]
            raw["edits"].append(entry)
        evaluation = dict(raw.get("evaluation") or {})
        if self.before is not None:
            evaluation["letter"] = "forget_mcq_acc" in self.before
        settings = (self.relearn.get(len(self.stack) - 1) or {}).get("settings")
        if settings:
            evaluation["relearn"] = {k: settings[k] for k in ("steps", "lr", "eval_every")}
        raw["evaluation"] = evaluation
        raw["chat"] = [{"prompt": c["prompt"], "max_new_tokens": c.get("max_new_tokens", 48),
                        "temperature": c.get("temperature", 0.0), "edit": c.get("edit_index")}
                       for c in self.chats  # a chat with no edit then, or with an edit since undone, cannot replay
                       if (c.get("edit_index") is None) == (not len(self.stack))
                       and (c.get("edit_index") or 0) < len(self.stack)]
        return parse_config(raw)

    def adopt(self, other: Session) -> None:
        """Take over another session's state in place (an imported bundle, a replayed config);
        the operator's limits stay."""
        for name in ("lm", "data", "stack", "selected", "before", "after", "relearn", "attacks", "chats", "conversation",
                     "history"):
            setattr(self, name, getattr(other, name))
