"""Configs and run folders into Sessions: ``replay`` fits a config (``run``, ``app.py --config``);
``session_from_run`` restores what a run folder holds without refitting (``bundle export``)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from unlearnviz.errors import UserError
from unlearnviz.session import STORE, Session

if TYPE_CHECKING:
    from unlearnviz.config import Config, EditSection
    from unlearnviz.data.schema import UnlearningData
    from unlearnviz.model.loading import LoadedModel
    from unlearnviz.runs import RunRecords


def seed_everything(seed: int) -> None:
    """Seeds of the global generators (methods, attacks and sampling also take explicit seeds)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _FixedStore:
    """A ModelStore that hands out one already loaded model (the CLI's, with its operator flags)."""

    def __init__(self, lm):
        self.lm = lm

    def get(self, source, opts, holder=None):
        return self.lm


def edit_hparams(edit: EditSection, seed: int) -> dict:
    """The overrides an edit is fitted with: the config's seed where the edit sets none."""
    from unlearnviz.methods.base import get_method
    from unlearnviz.methods.imports import IMPORTED

    if edit.method == IMPORTED:
        return {}  # nothing is fitted: the edit is the diff of its source
    hp = dict(edit.hparams)
    if "seed" not in hp and "seed" in {f.name for f in dataclasses.fields(get_method(edit.method).hparams_cls)}:
        hp["seed"] = seed
    return hp


def replay(cfg: Config, session: Session | None = None, *, lm=None, store=None, prior=None, progress=None,
           should_stop=None, log: Callable[[str], None] | None = None, chats: bool = True,
           allow_pickle: bool = False) -> Session:
    """Fit a config into a Session: load model and data, evaluate the original, fit every edit in
    order on top of the ones before (and of ``prior``, an EditStack), evaluate each, run the
    relearning attack and the chats. An imported edit is imported again from its source
    (``allow_pickle``: the operator's opt-in for .bin sources). ``lm``: an already loaded model to
    use (the CLI's); else the config's model is loaded through ``store``. Returns the session."""
    from unlearnviz.methods.edit import EditStack
    from unlearnviz.methods.imports import IMPORTED

    log = log or (lambda _m: None)
    session = session if session is not None else Session()
    if not cfg.data.spec:
        raise UserError("data.spec: the config names no data (data: builtin:NAME, a file, ...)")
    seed_everything(cfg.seed)
    session.load_model(cfg.model.source, cfg.model.dtype, cfg.model.device,
                       store=_FixedStore(lm) if lm is not None else (store or STORE))
    session.load_data(cfg.data.spec)
    if prior is not None and len(prior):
        session.stack = EditStack(list(prior.edits))
    letter = cfg.evaluation.letter
    log("evaluating the original model")
    session.evaluate(letter=letter, should_stop=should_stop)  # before (and the prior stack): fails fast
    first = len(session.stack)
    for i, edit in enumerate(cfg.edits):
        if edit.method == IMPORTED:
            log(f"importing edit {i + 1}/{len(cfg.edits)}: {edit.source}")
            session.import_unlearned(edit.source, evaluate=False, allow_pickle=allow_pickle, progress=progress)
            continue
        log(f"fitting edit {i + 1}/{len(cfg.edits)}: {edit.method}")
        session.run_edit(edit.method, edit_hparams(edit, cfg.seed), progress=progress, should_stop=should_stop,
                         evaluate=False, data_spec=edit.data if edit.data and edit.data != cfg.data.spec else None,
                         preset=edit.preset)
    for i in range(first, len(session.stack)):
        log(f"evaluating edit {i + 1}/{len(session.stack)}")
        session.select(i)
        session.evaluate(letter=letter, should_stop=should_stop)
    session.select(None)
    if cfg.evaluation.relearn is not None and len(session.stack):
        r = cfg.evaluation.relearn
        log(f"relearning attack ({r.steps} steps)")
        session.run_relearn(steps=r.steps, lr=r.lr, eval_every=r.eval_every, seed=cfg.seed, should_stop=should_stop)
    if chats:
        for c in cfg.chat:
            session.select(None if c.edit is None else first + c.edit)
            try:
                session.chat(c.prompt, c.max_new_tokens, c.temperature)
            finally:
                session.select(None)
        if cfg.chat:
            session.new_conversation()  # the replayed questions are one-shot: a chat typed next starts afresh
    return session


def session_from_run(run: RunRecords, lm: LoadedModel, data: UnlearningData, history: list[dict]) -> Session:
    """A Session holding a run folder's edit stack, metrics, chats and relearning results, on
    ``lm`` and ``data`` (the run's own: the caller resolves them); ``history``: how they were loaded."""
    from unlearnviz.runs import load_stack

    stack = load_stack(lm, run.path)
    session = Session()
    session.lm, session.data, session.stack = lm, data, stack
    session.history = list(history)
    metrics = run.metrics
    if metrics.get("data") in (None, data.name):  # metrics measured on other data would mislabel the session
        first = stack.edits[0].meta.get("metrics") or {}
        session.before = metrics.get("original") or first.get("before")
        for i, edit in enumerate(stack.edits):
            after = (edit.meta.get("metrics") or {}).get("after")
            if after:
                session.after[i] = after
    session.chats = list(run.chats)
    session.relearn = {k: v for k, v in run.relearn.items() if k < len(stack)}
    from unlearnviz.attacks.card import card_matches, read_card

    card = read_card(run.path)  # the run's attacks.json, when it was measured on this stack
    if card is not None and card_matches(card, stack.plan()):
        session.attacks[len(stack) - 1] = card
    return session
