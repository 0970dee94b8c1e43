"""One user's state, UI-free: model choice, data, the edit timeline, results, chats.

Models are loaded once per process and shared read-only (``ModelStore``); everything a user
changes lives in their Session, so two users never see each other's edits. Every action
validates its input and raises UserError with a readable message.
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from unlearnviz.config import MIN_TEMPERATURE
from unlearnviz.data import load_data
from unlearnviz.data.schema import UnlearningData
from unlearnviz.errors import UserError
from unlearnviz.methods.base import choose_preset, get_method, make_hparams
from unlearnviz.methods.edit import Edit, EditStack
from unlearnviz.model.loading import LoadedModel, LoadOptions, load_model, model_key
from unlearnviz.model.routing import RoutingPlan
from unlearnviz.session.budget import BUDGETS, DEFAULT_CACHE_MB_PER_SESSION, resident_bytes


@dataclass
class Limits:
    """Operator-configurable caps on what one request may cost."""

    max_prompt_chars: int = 4000  # chat prompt, in characters
    max_new_tokens: int = 256  # chat answer length
    max_steps: int = 1000  # training steps of one edit or one relearning attack
    max_points: int = 120  # texts (points) in the Geometry tab's PCA/UMAP views
    max_upload_mb: int = 20  # one uploaded data file
    max_sweep_points: int = 6  # edits fitted by one small sweep (Evaluate tab)
    max_edits: int = 32  # edits one session holds (its stack; undone edits kept for redo count too)
    max_cache_mb: int = DEFAULT_CACHE_MB_PER_SESSION  # analysis passes and scores one session keeps cached

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
    """Process-wide cache of loaded models, keyed by what a model is (``model.loading.model_key``:
    the weights' folder however named, the resolved device and dtype, device map, quantization),
    so ``cpu`` and ``auto`` on a CPU machine, or ``default`` and its folder, share one copy.

    Loading holds only that model's own lock: a visitor loading a 7B model (minutes) never blocks
    another's load of a different one, or any lookup of a loaded one; two asking for the same one
    wait for one load. A failed load leaves nothing behind (the next asks again). ``load``: the
    loader (``model.loading.load_model``; a test gates it to hold a load in progress)."""

    def __init__(self, load=load_model, budgets=None) -> None:
        from unlearnviz.session.budget import BUDGETS

        self._load = load
        self._budgets = budgets if budgets is not None else BUDGETS
        self._models: dict[tuple, LoadedModel] = {}
        self._holders: dict[tuple, dict[int, weakref.ref]] = {}  # the sessions that got each model (weakly)
        self._loading: dict[tuple, threading.Lock] = {}
        self._lock = threading.Lock()  # guards the dicts only, never held during a load

    def get(self, source: str, opts: LoadOptions, holder=None) -> LoadedModel:
        """The model, loaded once. Under an operator's ``--max-memory-gb`` (``session.budget``) it
        is accounted on its device while ``holder`` (a session, held weakly) or any other session
        that got it still has it as its model; idle, it is the first thing evicted when a load or a
        fit needs room, and a load that cannot fit is refused with the figures."""
        key = model_key(source, opts)
        with self._lock:
            if key in self._models:
                return self._got(key, holder)
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if key in self._models:  # loaded by the caller this one waited for
                    return self._got(key, holder)
            try:
                if self._budgets.active and not opts.device_map:  # one device: the files' size is what loading
                    # needs, checked before reading a byte (a spread model is charged per device once loaded)
                    self._budgets.of(key[1]).require(_weights_on_disk(source), f"loading {Path(source).name}")
                lm = self._load(source, opts)
                self._account(key, lm, Path(source).name)
                with self._lock:
                    self._models[key] = lm
                    return self._got(key, holder)
            finally:
                with self._lock:
                    self._loading.pop(key, None)

    def _got(self, key: tuple, holder) -> LoadedModel:
        if holder is not None:
            self._holders.setdefault(key, {})[id(holder)] = weakref.ref(holder)
        lm = self._models[key]
        for budget in self._budgets.all():  # a no-op where the model holds nothing
            budget.touch(("model", key))
        return lm

    def _account(self, key: tuple, lm: LoadedModel, name: str) -> None:
        """Hold the model's bytes on every device it occupies (a ``device_map`` model spread over
        GPUs and the CPU is charged where each part lives; disk-offloaded weights are not resident)."""
        from unlearnviz.session.budget import MODEL

        def in_use() -> bool:
            model = self._models.get(key)
            holders = [ref() for ref in list(self._holders.get(key, {}).values())]
            return any(getattr(h, "lm", None) is model for h in holders if h is not None)

        held = []
        try:
            for device, nbytes in resident_bytes(lm.model).items():
                self._budgets.of(device).hold(("model", key), MODEL, nbytes, f"model {name}",
                                              evict=lambda: self.drop(key), in_use=in_use)
                held.append(device)
        except UserError:
            for device in held:  # all or nothing
                self._budgets.of(device).release(("model", key))
            raise

    def key_of(self, lm: LoadedModel) -> tuple | None:
        with self._lock:
            return next((k for k, m in self._models.items() if m is lm), None)

    def drop(self, key: tuple) -> None:
        """Forget a loaded model (the budget evicting an idle one); a session still holding it keeps it."""
        with self._lock:
            lm = self._models.pop(key, None)
            self._holders.pop(key, None)
        if lm is not None:
            for budget in self._budgets.all():
                budget.release(("model", key))

    def loaded(self) -> list[tuple]:
        """The keys of the models in memory (for tests and the operator's view)."""
        with self._lock:
            return list(self._models)

    def preload(self, source: str) -> LoadedModel:
        """Load ``source`` (a name such as 'default' or 'synthetic', a folder, a hub id) with the
        default options before anyone asks, so the first user does not wait for it."""
        from unlearnviz.data.synthetic import resolve_model_source

        return self.get(resolve_model_source(source), LoadOptions())


STORE = ModelStore()


def _weights_on_disk(source: str) -> int:
    """Bytes of a local model's weight files (what loading it will take, near enough); 0 for a
    name that is not a local path (the loaded model's own figure is checked after the load)."""
    path = Path(source).expanduser()
    try:
        if path.is_file():
            return path.stat().st_size
        if path.is_dir():
            return sum(f.stat().st_size for f in path.iterdir()
                       if f.suffix in (".safetensors", ".bin", ".gguf", ".pt") and f.is_file())
    except (OSError, ValueError):
        pass
    return 0


def _per_budget(by_device: dict[str, int]) -> dict[str, int]:
    """Bytes per device summed per budget (``cuda`` and ``cuda:0`` are one device)."""
    out: dict[str, int] = {}
    for device, nbytes in by_device.items():
        name = BUDGETS.of(device).device
        out[name] = out.get(name, 0) + nbytes
    return out


def check_lab_model(source: str) -> None:
    """A visitor's ``synthetic:E[:SEED]`` model: one of the documented lab models (entanglement in
    ``KNOB_VALUES``, seed in ``LAB_SEEDS``), or one already trained into the cache. Any other would
    train a new model on request (half a minute of CPU, files in the cache, memory for good):
    that is the operator's to do, e.g. ``python -m unlearnviz info --model synthetic:0.1:7`` (which
    trains and caches it) or ``app.py --model synthetic:0.1:7``. Refused with one line otherwise."""
    from unlearnviz.config import SEED_MAX
    from unlearnviz.data.synthetic import KNOB_VALUES, LAB_SEEDS, model_dir, parse_spec

    e, seed = parse_spec(source)
    if (e in KNOB_VALUES and seed in LAB_SEEDS) or (0 <= seed <= SEED_MAX and model_dir(e, seed).is_dir()):
        return
    raise UserError(f"lab model {source.strip()[:40]!r} is not offered here: visitors load synthetic:E with E one of "
                    f"{', '.join(map(str, KNOB_VALUES))} (seed {', '.join(map(str, LAB_SEEDS))}); training another "
                    "is for the operator (python -m unlearnviz info --model synthetic:E:SEED trains and caches it)")


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
    compare: int | None = None  # a second stack index shown beside the selected one (Evaluate, Chat, Geometry)
    before: dict | None = None  # metrics of the original model on the current data
    after: dict[int, dict] = field(default_factory=dict)  # metrics per stack index
    relearn: dict[int, dict] = field(default_factory=dict)
    attacks: dict[int, dict] = field(default_factory=dict)  # robustness cards per stack index (session.attacks)
    chats: list[dict] = field(default_factory=list)  # every turn asked, with its conversation's number
    conversation: int = 0  # the chat in progress: the turns in ``chats`` with this number
    history: list[dict] = field(default_factory=list)  # the actions, for the reproducing config
    undone: list[dict] = field(default_factory=list)  # undone edits with their results, newest last (redo)
    limits: Limits = field(default_factory=Limits)
    shown: dict = field(default_factory=dict)  # view → the timeline entries it shows (session.shown)

    # ---- model and data -------------------------------------------------------------------
    def load_model(self, source: str = "default", dtype: str = "auto", device: str = "auto",
                   store: ModelStore = STORE) -> dict:
        from unlearnviz.data.synthetic import resolve_model_source

        lm = store.get(resolve_model_source(source.strip() or "default"), LoadOptions(dtype=dtype, device=device),
                       holder=self)
        if self.lm is not lm:
            self.stack, self.after, self.relearn, self.before, self.selected = EditStack(), {}, {}, None, None
            self.compare = None
            self.attacks = {}
            self.undone = []  # edits of another model cannot come back
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
        for u in self.undone:  # an undone edit can still come back, its results (on the old data) cannot
            u.update(after=None, relearn=None, attacks=None)
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
                 preset: str | None = None, tracker=None) -> dict:
        """Fit one edit on top of the stack. ``data_spec``: fit it on another data set (continual
        unlearning on a new forget set, as a config's ``edits[i].data``); the session's data stays.
        ``preset``: the method's preset of that name under ``overrides`` (``none``: the defaults;
        None: the one matching the model, if no overrides are given: ``methods.base.choose_preset``);
        the edit's meta records it and ``out["preset_note"]`` says what was chosen.
        A fit whose planned peak memory is over what the device has (or ``budget_bytes``) is refused
        before it starts (``session.planning``). ``tracker``: a ``session.progress.Tracker`` (its
        plan from ``progress.edit_tracker``) moved through preparing, training and the evaluations;
        ``progress`` still gets every training event (the live loss curve)."""
        from unlearnviz.session.progress import PREPARING, edit_tracker, size_edit

        tracker = tracker if tracker is not None else edit_tracker(str(method))
        tracker.begin(PREPARING)
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

        self._check_room_for_an_edit()
        budget = BUDGETS.of(lm.device)
        if budget_bytes is None and budget.limit is not None:  # the operator's --max-memory-gb
            budget_bytes = budget.room_for(protect=self._budget_keys())
        plan = check_fit(lm, data, spec.name, hparams, self.stack, budget_bytes)
        from unlearnviz.session.planning import fit_bytes_by_device

        for device, nbytes in _per_budget(fit_bytes_by_device(lm, plan)).items():  # each device its deltas land on
            if BUDGETS.of(device).limit is not None:  # evict idle models and cache entries for what it will use
                BUDGETS.of(device).require(nbytes, f"this {spec.name} fit", protect=self._budget_keys())
        size_edit(tracker, getattr(hparams, "steps", None), len(data.forget_mcq) + len(data.retain_mcq),
                  (self.before or {}).get("wall_s") if data is self.data else None)
        fp = lm.fingerprint(refresh=False)
        prior = self.stack.plan()
        t0 = time.perf_counter()
        edit = spec.fit(lm, data, hparams, progress=tracker.on_training(progress), should_stop=should_stop,
                        prior=prior)
        edit.meta.update({"label": f"{len(self.stack) + 1}. {method}", "data": data.name,
                          "data_hash": data.content_hash(), "fit_s": time.perf_counter() - t0,
                          "data_spec": data_spec or (self._last("load_data") or {}).get("data")})
        if choice.record:
            edit.meta["preset"] = choice.record
        self.stack.push(edit)
        self.selected = None
        self.undone = []  # a new edit ends the redo list, as in any editor
        self._account_edits(pushed=True)
        self.history.append({"action": "run_edit", "method": method, "hparams": overrides or {},
                             **({"data": data_spec} if data_spec else {}), **({"preset": preset} if preset else {})})
        out = {"index": len(self.stack) - 1, "method": method, "fit_s": edit.meta["fit_s"],
               "steps": edit.meta.get("steps"), "preset": (choice.record or {}).get("name"),
               "preset_note": choice.message}
        if evaluate:
            out["metrics"] = self.evaluate(should_stop=should_stop, tracker=tracker)
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
        self._check_room_for_an_edit()
        source = str(source or "").strip()
        if not source:
            raise UserError("name the unlearned checkpoint (a folder, a .gguf file or a hub id) or LoRA adapter")
        fp = lm.fingerprint(refresh=False)
        t0 = time.perf_counter()
        edit = import_unlearned(lm, source, allow_pickle=allow_pickle, progress=progress)
        edit.meta.update({"label": f"{len(self.stack) + 1}. {edit.label()}", "fit_s": time.perf_counter() - t0})
        self.stack.push(edit)
        self.selected = None
        self.undone = []  # a new edit ends the redo list, as in any editor
        self._account_edits(pushed=True)
        self.history.append({"action": "import_unlearned", "source": edit.hparams.get("source", source)})
        out = {"index": len(self.stack) - 1, "method": edit.method, "label": edit.label(),
               "import": edit.meta.get("import", {}), "import_s": edit.meta["fit_s"]}
        if evaluate and self.data is not None:
            out["metrics"] = self.evaluate(should_stop=should_stop)
        if lm.fingerprint(refresh=False) != fp:
            raise AssertionError("base weights changed")  # never expected: edits act through hooks
        return out

    def undo(self) -> dict:
        """Take the last edit off the stack. It is kept, with its metrics, relearning result and
        robustness card, for ``redo`` (an edit can take minutes to fit) until a new edit is made."""
        edit = self.stack.undo()
        i = len(self.stack)
        self.undone.append({"edit": edit, "after": self.after.pop(i, None), "relearn": self.relearn.pop(i, None),
                            "attacks": self.attacks.pop(i, None)})
        self.selected = None
        if self.compare is not None and self.compare >= len(self.stack):
            self.compare = None
        self.history.append({"action": "undo"})
        self._account_edits()
        return {"undone": edit.label(), "remaining": len(self.stack), "redo": len(self.undone)}

    # ---- memory (the operator's --max-memory-gb, ``session.budget``) --------------------------
    def _budget_keys(self) -> tuple:
        """This session's own holdings: its model and its edits (an action's plan counts them)."""
        return (("model", STORE.key_of(self.lm)) if self.lm is not None else None, ("edits", id(self)))

    def _check_room_for_an_edit(self) -> None:
        held = len(self.stack) + len(self.undone)
        if held >= self.limits.max_edits:
            raise UserError(f"this session holds {held} edits (undone ones kept for redo included), this server's "
                            f"limit is {self.limits.max_edits}: undo, or start a new session")

    def _account_edits(self, pushed: bool = False) -> None:
        """Hold the bytes of this session's edits (the stack and the redo list) on every device they
        occupy (``planning.edits_bytes_by_device``: a spread model's deltas where each block is);
        ``pushed``: a new edit is on top, taken back off if it does not fit (all devices or none)."""
        from types import SimpleNamespace

        from unlearnviz.session.budget import EDITS
        from unlearnviz.session.planning import edits_bytes_by_device

        if self.lm is None:
            return
        key = ("edits", id(self))
        held = SimpleNamespace(edits=[*self.stack.edits, *(u["edit"] for u in self.undone)])
        wanted = _per_budget(edits_bytes_by_device(self.lm, held)) or {BUDGETS.of(self.lm.device).device: 0}
        before = {b.device: b.held_of(key) for b in BUDGETS.all() if key in b}
        done = []
        try:
            for device in dict.fromkeys([*wanted, *before]):
                budget = BUDGETS.of(device)
                if key not in budget:
                    weakref.finalize(self, budget.release, key)
                budget.hold(key, EDITS, wanted.get(device, 0), "this session's edits", in_use=lambda: True)
                done.append(budget)
        except UserError:
            for budget in done:  # as before on every device
                if budget.device in before:
                    budget.hold(key, EDITS, before[budget.device], "this session's edits", in_use=lambda: True)
                else:
                    budget.release(key)
            if pushed:
                self.stack.undo()
            raise

    def redo(self) -> dict:
        """Put the most recently undone edit back on top of the stack, with the results it had
        (nothing is refitted or re-measured); the stack is what it was before that undo."""
        if not self.undone:
            raise UserError("there is no undone edit to redo")
        entry = self.undone.pop()
        self.stack.push(entry["edit"])
        i = len(self.stack) - 1
        for name in ("after", "relearn", "attacks"):
            if entry.get(name) is not None:
                getattr(self, name)[i] = entry[name]
        self.selected = None
        self.history.append({"action": "redo"})
        self._account_edits()
        return {"redone": entry["edit"].label(), "index": i, "redo": len(self.undone)}

    def select(self, index: int | None) -> None:
        """Choose the stack index every view compares with the original (None: the last edit)."""
        self._check_index(index)
        self.selected = index

    def select_compare(self, index: int | None) -> None:
        """Choose a second stack index that Evaluate, Chat and Geometry show beside the selected
        one (None: none)."""
        self._check_index(index)
        self.compare = index

    def _check_index(self, index: int | None) -> None:
        if index is not None and not 0 <= index < len(self.stack):  # the page numbers edits from 1
            have = f"the timeline has #1..#{len(self.stack)}" if len(self.stack) else "the timeline is empty"
            raise UserError(f"there is no edit #{index + 1}; {have}")

    @property
    def current_index(self) -> int | None:
        if not len(self.stack):
            return None
        return self.selected if self.selected is not None else len(self.stack) - 1

    def plan(self, rows=None) -> RoutingPlan | None:
        """The selected edit together with everything stacked before it."""
        return self.plan_at(self.current_index, rows)

    def plan_at(self, index: int | None, rows=None) -> RoutingPlan | None:
        """Stack entry ``index`` (an edit with everything stacked before it); None: the original."""
        return None if index is None else self.stack.plan(upto=index, rows=rows)

    def current_edit(self) -> Edit | None:
        idx = self.current_index
        return None if idx is None else self.stack.edits[idx]

    # ---- evaluation -----------------------------------------------------------------------
    def evaluate(self, letter: bool = False, progress=None, should_stop=None, compare: bool = False,
                 tracker=None) -> dict:
        """The original's metrics and the selected edit's (``after``), each measured once and
        kept; ``compare``: also the compared entry's (``compare``), when one is chosen.
        ``tracker``: a ``session.progress.Tracker`` whose plan has "evaluating before" and
        "evaluating after" (and "evaluating the compared edit": the compared entry's, else it is
        scored in "evaluating after"), moved by questions scored (a stage whose metrics are kept
        is dropped)."""
        from unlearnviz.evaluation.mcq import evaluate
        from unlearnviz.session.progress import EVAL_AFTER, EVAL_BEFORE, EVAL_COMPARE, Tracker

        lm, data = self.require_model(), self.require_data()
        check_fits_context(lm, data, letter)
        tracker = tracker if tracker is not None else Tracker([EVAL_BEFORE, EVAL_AFTER])
        score = tracker.on_scoring(progress)
        if self.before is None:
            tracker.begin(EVAL_BEFORE, unit="question")
            self.before = evaluate(lm, data, letter=letter, progress=score, should_stop=should_stop)
            for stage in (EVAL_AFTER, EVAL_COMPARE):  # the same questions, one set of hooks more
                tracker.expect(stage, self.before["wall_s"])
        result = {"before": self.before}
        wanted = [("after", self.current_index)] + ([("compare", self.compare)] if compare else [])
        for key, idx in wanted:
            if idx is None:
                continue
            if idx not in self.after:
                tracker.begin(EVAL_COMPARE if key == "compare" and tracker.has(EVAL_COMPARE) else EVAL_AFTER,
                              unit="question")
                self.after[idx] = evaluate(lm, data, plan=self.plan_at(idx), letter=letter, progress=score,
                                           should_stop=should_stop)
            result[key] = self.after[idx]
        tracker.skip(EVAL_BEFORE)  # kept from an earlier run: nothing to wait for
        tracker.skip(EVAL_AFTER)
        tracker.skip(EVAL_COMPARE)
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
        if 0 < temperature < MIN_TEMPERATURE:  # the logits divided by it overflow float range
            raise UserError(f"temperature {temperature:g} is too small to sample with: use 0 (greedy) or at least "
                            f"{MIN_TEMPERATURE}")
        from unlearnviz.session import shown

        turns = self.conversation_turns()
        first, second = shown.wanted(self, "chat")  # a chat is with one timeline entry (and the compared one)
        key = (first.hash, second.hash if second is not None else None)
        if turns and (not follow_up or (turns[-1].get("edit_hash"), turns[-1].get("compare_hash")) != key):
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
                               "turn": len(turns), "edit_hash": key[0], "compare_hash": key[1],
                               "compare_index": second.index if second is not None else None,
                               "compare_edit": second.label if second is not None else None})

    def compare_stream(self, should_stop=None):
        """The compared entry's answer (``Session.compare``) to the last turn, streamed: it continues
        its own side of the conversation, as each side does; kept in that turn as ``compared``.
        Yields the growing answer (nothing when no entry is compared)."""
        from unlearnviz.generation import GenSettings, stream_side_by_side

        turns = self.conversation_turns()
        if not turns or turns[-1].get("compare_index") is None:
            return
        last, earlier = turns[-1], turns[:-1]
        settings = GenSettings(max_new_tokens=last["max_new_tokens"], temperature=last["temperature"],
                               cross_probs=False)  # only its own answer is wanted
        state = None
        for state in stream_side_by_side(self.lm, last["prompt"], self.plan_at(last["compare_index"]), settings,
                                         should_stop=should_stop,
                                         history_original=[(t["prompt"], t["original"]) for t in earlier],
                                         history_edited=[(t["prompt"], t.get("compared") or "") for t in earlier]):
            yield state.texts(self.lm.tokenizer)[1]
        if state is not None:
            last["compared"] = state.texts(self.lm.tokenizer)[1]

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
                    progress=None, should_stop=None, tracker=None) -> dict:
        """Fine-tune on forget half A, edited and original, plus the white-box attacks, for the
        selected edit; kept in ``relearn`` with its settings (so configs and bundles carry them).
        ``tracker``: a ``session.progress.Tracker`` (``progress.relearn_tracker``) moved through
        both fine-tunes and the white-box attacks; ``progress`` still gets every step's event."""
        from unlearnviz.evaluation.relearn import RelearnSettings, relearn_record
        from unlearnviz.session import progress as P

        tracker = tracker if tracker is not None else P.relearn_tracker(int(steps))
        tracker.begin(P.PREPARING)
        on_step = tracker.on_training(progress, stages=(P.RELEARN_EDITED, P.RELEARN_ORIGINAL))

        def tick(event: dict) -> None:
            on_step(event)
            if tracker.snapshot().stage == P.RELEARN_ORIGINAL and event.get("step") == event.get("total"):
                tracker.begin(P.WHITEBOX)  # the original's last step: the white-box attacks come next

        lm, data = self.require_model(), self.require_data()
        plan = self.plan()
        if plan is None:
            raise UserError("run an edit first (Unlearn tab): the attack compares edited with original")
        if steps > self.limits.max_steps:
            raise UserError(f"steps={steps} is over this server's limit of {self.limits.max_steps}")
        settings = RelearnSettings(steps=int(steps), lr=float(lr), eval_every=int(eval_every), seed=int(seed))
        result = relearn_record(lm, data, plan, settings, progress=tick, should_stop=should_stop)
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
        for name in ("lm", "data", "stack", "selected", "compare", "before", "after", "relearn", "attacks", "chats", "conversation",
                     "history", "undone"):
            setattr(self, name, getattr(other, name))
