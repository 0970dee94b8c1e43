"""The operator's state folder: where the dashboard's sessions are saved, and how.

A save must cost what changed, not what the session holds: an imported 7B fine-tune's edit is
GBs of deltas, and a chat turn changes none of it. So the folder keeps each edit's tensors once,
content-addressed, and a session's own file is a small manifest that names them::

    DIR/sessions/ID.state.json  the session: the bundle manifest's model and data sections, its
                                config, results, chats and history (``bundle.session_parts``), and
                                the keys of its edits, undone edits and data rows (renamed into place)
    DIR/sessions/ID.json        what a listing shows without opening that: owner, saved time,
                                model, data, edits, chats (also renamed into place)
    DIR/edits/KEY/              one edit as ``save_edit`` writes it (edit.safetensors, manifest.json
                                with its checksum); KEY is the SHA-256 of the manifest's method,
                                hparams, meta, model fingerprint and tensors' checksum, so sessions
                                holding the same edit share one folder (written once, renamed into place)
    DIR/data/KEY.jsonl          the data's rows (``bundle.data_blob``), KEY their SHA-256; data too
                                large to keep by value is kept by reference, as a bundle does
    DIR/sessions/ID.zip         a session saved by an older unlearnviz: a whole session bundle, still
                                restored, replaced by the new layout at its next save

An edit's key is worked out once per edit object (memoised on it, keyed by its tensors' identity
and version counters, as ``routing.plan_content_hash`` is), so a chat turn writes the manifest
and the sidecar only: kilobytes. Restoring checks every key against what it names and every
edit's checksum (``load_edit``), and goes through the bundle importer's own steps
(``bundle.session_from_contents``). Deleting or pruning a session removes the edits and rows no
other saved session names (``collect``); ``sessions export`` writes an ordinary bundle.

An id is 32 random letters and digits (``secrets``): it is the key to the session, so it is never
guessable, and it is checked against ``SESSION_ID`` before it names a file, so it cannot name one
outside ``DIR/sessions``; a key is checked against ``KEY`` (64 hex digits) before it names one.
"""


from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import string
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from unlearnviz.errors import UserError

log = logging.getLogger("unlearnviz.state_folder")
SESSION_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_-]{15,63}\Z")  # never a leading "-" (a CLI flag); \Z, as "$" would pass a trailing newline
ID_ALPHABET = string.ascii_letters + string.digits
SESSIONS_FOLDER = "sessions"
EDITS_FOLDER = "edits"
DATA_FOLDER = "data"
STATE_SUFFIX = ".state.json"
STATE_FORMAT = "unlearnviz-saved-session"
STATE_VERSION = 1
KEY = re.compile(r"\A[0-9a-f]{64}\Z")
MAX_STATE_BYTES = 256 * 2**20  # one session's manifest (its chats and history dominate)
STALE_TMP_S = 3600  # a temporary edit folder older than this is a crash's leftover
_MEMBERS = ("config.yaml", "results.json", "chats.json", "history.json")  # the bundle members a manifest carries




def new_id() -> str:
    """32 random letters and digits (190 bits): the session's key, so never guessable."""
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(32))


def check_id(sid) -> str:
    """``sid`` if it is a session id; a refusal naming no path otherwise."""
    if not isinstance(sid, str) or not SESSION_ID.match(sid):
        shown = sid[:20] + "…" if isinstance(sid, str) and len(sid) > 20 else sid
        raise UserError(f"{shown!r} is not a session id (16 to 64 letters, digits, '-' or '_', starting with a "
                        "letter or digit)")
    return sid


# ---- the state folder (also what the CLI's `sessions` command reads) --------------------------------
def sessions_dir(state_dir: Path) -> Path:
    return Path(state_dir) / SESSIONS_FOLDER


def state_path(state_dir: Path, sid: str) -> Path:
    """The session's manifest (``ID.state.json``)."""
    return sessions_dir(state_dir) / f"{check_id(sid)}{STATE_SUFFIX}"


def bundle_path(state_dir: Path, sid: str) -> Path:
    """Where an older unlearnviz saved the session: a whole bundle (``ID.zip``), read, never written."""
    return sessions_dir(state_dir) / f"{check_id(sid)}.zip"


def _sidecar(state_dir: Path, sid: str) -> Path:
    return sessions_dir(state_dir) / f"{check_id(sid)}.json"


def _checked_key(key) -> str:
    if not isinstance(key, str) or not KEY.match(key):
        raise UserError(f"{str(key)[:80]!r} is not a stored edit or data key (damaged saved session)")
    return key


def edit_folder(state_dir: Path, key: str) -> Path:
    return Path(state_dir) / EDITS_FOLDER / _checked_key(key)


def data_file(state_dir: Path, key: str) -> Path:
    return Path(state_dir) / DATA_FOLDER / f"{_checked_key(key)}.jsonl"


def saved_file(state_dir: Path, sid: str) -> Path | None:
    """The file a saved session is restored from: its manifest, else an older save's bundle; None
    if there is neither."""
    for path in (state_path(state_dir, sid), bundle_path(state_dir, sid)):
        if path.is_file():
            return path
    return None


def _saved_ids(state_dir: Path) -> dict[str, Path]:
    """Every saved session's id and file (a manifest wins over an older save's bundle)."""
    folder = sessions_dir(state_dir)
    if not folder.is_dir():
        return {}
    out: dict[str, Path] = {}
    for path in folder.glob("*.zip"):
        if SESSION_ID.match(path.stem):
            out[path.stem] = path
    for path in folder.glob(f"*{STATE_SUFFIX}"):
        sid = path.name[: -len(STATE_SUFFIX)]
        if SESSION_ID.match(sid):
            out[sid] = path
    return out


def saved_info(state_dir: Path, sid: str) -> dict | None:
    """What ``list_saved`` shows of one saved session; None if there is no such session. A missing
    or damaged sidecar (a kill between the two renames) falls back to the session's manifest.
    ``bytes``: its manifest and every edit and data file it names (shared ones counted in each)."""
    path = saved_file(state_dir, sid)
    if path is None:
        return None
    info: dict = {}
    try:
        info = json.loads(_sidecar(state_dir, sid).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or info.get("id") != sid:
        info = {"id": sid, **_manifest_summary(path)}
    stat = path.stat()
    size = stat.st_size + sum(_stored_bytes(state_dir, ref) for ref in (_refs(path) or ()))
    info.update(bytes=size, saved=info.get("saved") or _iso(stat.st_mtime))
    return info


def _stored_bytes(state_dir: Path, ref: tuple[str, str]) -> int:
    kind, key = ref
    paths = ([edit_folder(state_dir, key) / n for n in ("edit.safetensors", "manifest.json")] if kind == EDITS_FOLDER
             else [data_file(state_dir, key)])
    return sum(p.stat().st_size for p in paths if p.is_file())


def _manifest_summary(path: Path) -> dict:
    """Model, data and edits from a session's manifest (or an older save's bundle manifest) alone:
    no checksum work, a listing."""
    import zipfile

    try:
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as zf:
                m = json.loads(zf.read("manifest.json"))
        else:
            m = _read_state(path)["bundle"]
        return {"model": (m.get("model") or {}).get("name"), "data": (m.get("data") or {}).get("name"),
                "edits": [e.get("label") for e in m.get("edits") or []], "owner": None}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, AttributeError, UserError):
        return {"model": None, "data": None, "edits": [], "owner": None, "damaged": True}


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def by_age(state_dir: Path) -> list[tuple[str, Path]]:
    """Saved sessions, least recently saved first."""
    def mtime(item: tuple[str, Path]) -> int:
        try:
            return item[1].stat().st_mtime_ns
        except OSError:  # deleted meanwhile
            return 0

    return sorted(_saved_ids(state_dir).items(), key=mtime)


def list_saved(state_dir: Path) -> list[dict]:
    """Every saved session in the state folder, most recently saved first."""
    out = []
    for sid, _ in reversed(by_age(state_dir)):
        info = saved_info(state_dir, sid)
        if info is not None:
            out.append(info)
    return out


def delete_saved(state_dir: Path, sid: str) -> bool:
    """Remove a saved session (manifest, sidecar, an older save's bundle) and the edits and data
    no other saved session names; False if there was none."""
    found = saved_file(state_dir, sid) is not None
    state = state_path(state_dir, sid)
    named = _refs(state) if state.is_file() else frozenset()
    for path in (state, bundle_path(state_dir, sid), _sidecar(state_dir, sid)):
        path.unlink(missing_ok=True)
    collect(state_dir, candidates=named)  # None (a damaged manifest): what it named is unknown, kept
    return found


# ---- what a manifest names, and the garbage collection of what none names ---------------------------
_LOCK = threading.Lock()  # collect's scan and deletion against saves in flight (``_PENDING``)
_PENDING: Counter = Counter()  # (state folder, (kind, key)) a save in flight is writing or naming
_REFS: dict[str, tuple[tuple, frozenset | None]] = {}  # manifest path -> (its stat, what it names)


def _stat_key(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _names(manifest: dict) -> frozenset:
    refs = {(EDITS_FOLDER, k) for k in [*manifest["edits"], *manifest["undone"]]}
    if manifest.get("data") is not None:
        refs.add((DATA_FOLDER, manifest["data"]))
    return frozenset(refs)


def _refs(path: Path) -> frozenset | None:
    """The edits and data a manifest names (an older save's bundle: none), read once per version
    of the file; None if it cannot be read (what it names is unknown, so nothing is collected)."""
    if path.suffix == ".zip":
        return frozenset()
    stat = _stat_key(path)
    if stat is None:
        return frozenset()  # gone
    cached = _REFS.get(str(path))
    if cached is not None and cached[0] == stat:
        return cached[1]
    try:
        refs = _names(_read_state(path))
    except (OSError, UserError):
        refs = None
    _REFS[str(path)] = (stat, refs)
    return refs


@contextlib.contextmanager
def _holding(state_dir: Path) -> Iterator[Callable[[tuple[str, str]], None]]:
    """For one save: ``hold(ref)`` keeps ``collect`` off ``ref`` until the save's manifest is in
    place (hold before checking that a stored file exists, so it cannot go in between)."""
    held: list = []
    folder = os.path.abspath(state_dir)

    def hold(ref: tuple[str, str]) -> None:
        with _LOCK:
            _PENDING[(folder, ref)] += 1
        held.append((folder, ref))

    try:
        yield hold
    finally:
        with _LOCK:
            for item in held:
                _PENDING[item] -= 1
                if _PENDING[item] <= 0:
                    del _PENDING[item]


def collect(state_dir: Path, candidates: frozenset | None = frozenset()) -> int:
    """Remove those of ``candidates`` (``(kind, key)`` pairs: what a deleted session named, or
    what a save stopped naming) that no saved session's manifest names and no save in flight
    holds; returns how many. Only the manifests are read, never the edits. Nothing (None, empty)
    collects nothing, and so does a manifest that cannot be read: it may name any of them."""
    if not candidates:
        return 0
    state_dir = Path(state_dir)
    with _LOCK:
        named: set = {ref for (folder, ref) in _PENDING if folder == os.path.abspath(state_dir)}
        for _, path in _saved_ids(state_dir).items():
            refs = _refs(path)
            if refs is None:
                log.warning("%s cannot be read: keeping every stored edit until it is repaired or deleted", path)
                return 0
            named |= refs
        removed = 0
        for kind, key in set(candidates) - named:
            target = edit_folder(state_dir, key) if kind == EDITS_FOLDER else data_file(state_dir, key)
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
            removed += 1
        return removed


def collect_all(state_dir: Path) -> int:
    """``collect`` over everything stored, and a crash's leftover temporary folders (the
    registry runs it once when it opens the folder)."""
    state_dir = Path(state_dir)
    stored = set()
    for kind, folder in ((EDITS_FOLDER, Path(state_dir) / EDITS_FOLDER), (DATA_FOLDER, Path(state_dir) / DATA_FOLDER)):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            name = entry.name.removesuffix(".jsonl") if kind == DATA_FOLDER else entry.name
            if KEY.match(name):
                stored.add((kind, name))
            elif entry.name.startswith("."):
                with contextlib.suppress(OSError):
                    if time.time() - entry.stat().st_mtime > STALE_TMP_S:
                        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink()
    return collect(state_dir, candidates=frozenset(stored))


# ---- saving -----------------------------------------------------------------------------------------
def edit_key(manifest: dict) -> str:
    """An edit's content address from its saved manifest: what ``load_edit`` rebuilds it from
    (method, hparams, meta, the model's fingerprint) and its tensors' checksum."""
    identity = {"method": manifest.get("method"), "hparams": manifest.get("hparams", {}),
                "meta": manifest.get("meta", {}), "fingerprint": (manifest.get("model") or {}).get("fingerprint"),
                "tensors": (manifest.get("files") or {}).get("edit.safetensors")}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()


def _edit_identity(edit, fingerprint: str) -> tuple:
    """What an edit's key depends on, read without touching tensor data: its small fields as JSON
    and each tensor's place and version counter (the tensors themselves are compared by identity)."""
    from unlearnviz.model.routing import plan_identity

    ident = plan_identity(edit.plan())
    small = json.dumps([edit.method, edit.hparams, edit.meta, fingerprint], default=float)
    return small, ident


def _memo_key(edit, fingerprint: str) -> str | None:
    memo = edit.__dict__.get("_state_key")
    if memo is None:
        return None
    small, ident = _edit_identity(edit, fingerprint)
    m_small, m_ident, m_refs, key = memo
    if small != m_small or (ident is None) != (m_ident is None):
        return None
    if ident is not None and (ident[0] != m_ident or len(ident[1]) != len(m_refs)
                              or not all(r() is t for r, t in zip(m_refs, ident[1]))):
        return None
    return key


def _remember_key(edit, fingerprint: str, key: str) -> None:
    small, ident = _edit_identity(edit, fingerprint)
    edit.__dict__["_state_key"] = (small, None if ident is None else ident[0],
                                   [] if ident is None else [weakref.ref(t) for t in ident[1]], key)


def _store_edit(state_dir: Path, edit, lm, hold) -> str:
    """The key of ``edit`` in the state folder, written there (once) if it is not: an edit met
    before costs a lookup, a new one a ``save_edit`` into a temporary folder renamed to its key
    (or dropped, when another session stored the same edit first)."""
    from unlearnviz.methods.edit import save_edit

    fingerprint = lm.fingerprint(refresh=False)
    key = _memo_key(edit, fingerprint)
    if key is not None:
        hold((EDITS_FOLDER, key))
        if (edit_folder(state_dir, key) / "manifest.json").is_file():
            return key
    root = Path(state_dir) / EDITS_FOLDER
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{os.getpid()}-{secrets.token_hex(8)}"
    try:
        save_edit(edit, tmp, lm)
        key = edit_key(json.loads((tmp / "manifest.json").read_text(encoding="utf-8")))
        hold((EDITS_FOLDER, key))
        final = edit_folder(state_dir, key)
        if not (final / "manifest.json").is_file():
            shutil.rmtree(final, ignore_errors=True)  # a half-removed folder: replaced whole
            try:
                tmp.rename(final)
            except OSError:  # another save renamed the same edit into place first
                if not (final / "manifest.json").is_file():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _remember_key(edit, fingerprint, key)
    return key


def _store_data(state_dir: Path, data, spec: str | None, hold) -> tuple[str | None, str]:
    """(the key of the data's rows in the state folder, or None when they are kept by reference;
    the data's content hash), the rows written once. Memoised on the data object, by its split
    sizes: its rows are not rebuilt, nor its hash recomputed, at each save."""
    from unlearnviz.bundle import DATA_BY_VALUE_BYTES, data_blob
    from unlearnviz.io import atomic_write_bytes

    sig = tuple(len(getattr(data, name)) for name in ("forget_texts", "retain_texts", "forget_mcq", "retain_mcq",
                                                       "forget_probe", "retain_probe"))
    memo = data._memo.get("state-rows")
    if memo is not None and memo[0] == sig:
        _, key, content_hash = memo
        if key is None:
            return None, content_hash
        hold((DATA_FOLDER, key))
        if data_file(state_dir, key).is_file():
            return key, content_hash
    rows = data_blob(data, DATA_BY_VALUE_BYTES)
    content_hash = data.content_hash()
    key = None
    if rows is not None:
        key = hashlib.sha256(rows).hexdigest()
        hold((DATA_FOLDER, key))
        if not data_file(state_dir, key).is_file():
            atomic_write_bytes(data_file(state_dir, key), rows)
    elif not spec:
        raise UserError(f"data {data.name!r} is over {DATA_BY_VALUE_BYTES / 2**20:.0f} MB as rows and names no "
                        "source to keep it by reference; load it from a file or dataset (Data tab, --data) first")
    data._memo["state-rows"] = (sig, key, content_hash)
    return key, content_hash


def save(session, state_dir: Path, sid: str, owner: str | None = None) -> dict:
    """Write ``session`` (with its undone edits) as ``DIR/sessions/ID.state.json`` and its sidecar,
    each atomically, storing the edits and data rows the folder does not hold yet; returns the
    sidecar. An edit stored before is not written again: a chat turn writes kilobytes."""
    from unlearnviz.bundle import session_parts
    from unlearnviz.io import atomic_write_text

    lm, data = session.require_model(), session.require_data()
    path = state_path(state_dir, sid)
    before = _refs(path) if path.is_file() else frozenset()
    cfg = session.to_config()
    undone = list(session.undone)
    with _holding(state_dir) as hold:
        data_key, content_hash = _store_data(state_dir, data, cfg.data.spec, hold)
        edits = [_store_edit(state_dir, e, lm, hold) for e in session.stack.edits]
        undone_keys = [_store_edit(state_dir, u["edit"], lm, hold) for u in undone]
        # b"": by value, the rows already stored under data_key (not rebuilt for the manifest)
        bundle, files = session_parts(session, cfg, b"" if data_key else None, content_hash, undone)
        files.pop("data.jsonl", None)
        manifest = {"format": STATE_FORMAT, "format_version": STATE_VERSION, "bundle": bundle,
                    "members": {name: blob.decode("utf-8") for name, blob in files.items()},
                    "data": data_key, "edits": edits, "undone": undone_keys}
        atomic_write_text(path, json.dumps(manifest, ensure_ascii=False, default=float))
        _REFS[str(path)] = (_stat_key(path), _names(manifest))
    info = {"id": sid, "owner": owner, "saved": _iso(time.time()), "model": lm.name,
            "data": data.name, "edits": [e.label() for e in session.stack.edits],
            "undone": len(session.undone), "chats": len(session.chats)}
    atomic_write_text(_sidecar(state_dir, sid), json.dumps(info, indent=1))
    bundle_path(state_dir, sid).unlink(missing_ok=True)  # an older save's bundle: replaced
    if before:  # what this session no longer names (a cleared redo list), unless another session does
        collect(state_dir, candidates=before - _names(manifest))
    return info


# ---- restoring and exporting ------------------------------------------------------------------------
def _read_state(path: Path) -> dict:
    """A session's manifest, its shape checked (nothing else read)."""
    what = path.name
    try:
        if path.stat().st_size > MAX_STATE_BYTES:
            raise UserError(f"{what} is over {MAX_STATE_BYTES // 2**20} MB (not a saved session)")
        m = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise UserError(f"{what} is not valid JSON (damaged saved session)") from None
    if not isinstance(m, dict) or m.get("format") != STATE_FORMAT:
        raise UserError(f"{what} is not an unlearnviz saved session (no format {STATE_FORMAT!r})")
    version = m.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= STATE_VERSION:
        raise UserError(f"{what}: saved-session format {version!r} is not one this unlearnviz reads "
                        f"(1..{STATE_VERSION}); upgrade unlearnviz")
    bundle, members = m.get("bundle"), m.get("members")
    if not isinstance(bundle, dict) or not all(isinstance(bundle.get(k), dict) for k in ("model", "data")):
        raise UserError(f"{what} has no model and data sections (damaged saved session)")
    if not isinstance(members, dict) or not all(k in _MEMBERS and isinstance(v, str) for k, v in members.items()) \
            or not {"config.yaml", "results.json"} <= set(members):
        raise UserError(f"{what} does not hold the session's config and results (damaged saved session)")
    for name in ("edits", "undone"):
        if not isinstance(m.get(name), list):
            raise UserError(f"{what} has no list of {name} (damaged saved session)")
        for key in m[name]:
            _checked_key(key)
    if m.get("data") is not None:
        _checked_key(m["data"])
    by = bundle["data"].get("by")
    if (by == "value") != (m.get("data") is not None) or by not in ("value", "reference"):
        raise UserError(f"{what}: its data is neither stored by value nor named by reference (damaged saved session)")
    return m


def _stored_edit_folder(state_dir: Path, key: str, what: str) -> tuple[Path, dict]:
    """A stored edit's folder and manifest, the manifest checked against the key that names it."""
    folder = edit_folder(state_dir, key)
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what} (edits/{key[:12]}…) is missing from the state folder") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise UserError(f"{what} (edits/{key[:12]}…) has a damaged manifest") from None
    if not isinstance(manifest, dict) or edit_key(manifest) != key:
        raise UserError(f"{what} (edits/{key[:12]}…) is not the edit its key names (damaged or tampered)")
    return folder, manifest


def _load_stored(state_dir: Path, keys: list[str], lm, what: str) -> list:
    """The edits of ``keys``, each key checked and each through ``load_edit`` (its checksum and the
    model's fingerprint); a damaged one named by its place and short key, never by a path."""
    from unlearnviz.methods.edit import load_edit

    out = []
    for i, key in enumerate(keys):
        name = f"{what} {i}"
        folder, _ = _stored_edit_folder(state_dir, key, name)
        try:
            edit = load_edit(folder, lm)
        except UserError as exc:
            raise UserError(f"{name}: {str(exc).replace(str(folder), f'edits/{key[:12]}…')}") from None
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception:  # a tensor under a bad name, a manifest of the wrong shape, ...
            raise UserError(f"{name} (edits/{key[:12]}…) is damaged (its tensors are not of the shape an "
                            "edit has)") from None
        _remember_key(edit, lm.fingerprint(refresh=False), key)
        out.append(edit)
    return out


def _contents(path: Path):
    """A saved session as the bundle importer's ``BundleContents`` (its members, its data rows
    checked against their key), the edits left where they are; and the manifest."""
    from unlearnviz.bundle import BundleContents

    state_dir = path.parent.parent
    m = _read_state(path)
    files = {name: text.encode("utf-8") for name, text in m["members"].items()}
    if m["data"] is not None:
        try:
            blob = data_file(state_dir, m["data"]).read_bytes()
        except OSError:
            raise UserError(f"its data rows (data/{m['data'][:12]}…) are missing from the state folder") from None
        if hashlib.sha256(blob).hexdigest() != m["data"]:
            raise UserError(f"its data rows (data/{m['data'][:12]}…) fail their checksum (damaged or tampered)")
        files["data.jsonl"] = blob
    return BundleContents(manifest=m["bundle"], files=files), m


def restore_state(path: Path, lm=None, **options):
    """A Session from a saved session's manifest (``DIR/sessions/ID.state.json``), through the
    bundle importer's checks (``bundle.session_from_contents``; ``options`` as ``import_bundle``
    takes them, less ``max_bytes``), its edits read from the folders their keys name."""
    from unlearnviz.bundle import session_from_contents

    path = Path(path)
    contents, m = _contents(path)
    state_dir = path.parent.parent

    def load(where: str, model) -> list:
        return _load_stored(state_dir, m[where], model, "edit" if where == "edits" else "undone edit")

    return session_from_contents(contents, lm, load_edits=load, **options)


def load_saved(path: Path, lm=None, **options):
    """A Session from what ``saved_file`` names: a manifest (``restore_state``) or an older save's
    bundle (``import_bundle``). The registry's ``restore`` calls this, with the app's options."""
    from unlearnviz.bundle import import_bundle

    path = Path(path)
    if path.suffix == ".zip":
        return import_bundle(path, lm, **options)
    return restore_state(path, lm, **options)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(2**22), b""):
            h.update(chunk)
    return h.hexdigest()


def export_saved(state_dir: Path, sid: str, out: Path) -> Path:
    """A saved session as an ordinary session bundle at ``out`` (with its undone edits, format 2
    when it has some), every key and checksum checked first: a damaged save is refused, not passed
    on. The tensors are streamed from their files, never held in memory whole."""
    from unlearnviz.bundle import BUNDLE_FORMAT, read_bundle, write_bundle

    path = saved_file(state_dir, sid)
    if path is None:
        raise UserError(f"no saved session {sid}")
    if path.suffix == ".zip":  # an older save: already a bundle, verified and copied
        read_bundle(path)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            shutil.copyfile(path, tmp)
            tmp.replace(out)
        finally:
            tmp.unlink(missing_ok=True)
        return out
    contents, m = _contents(path)
    files: dict[str, bytes | Path] = dict(contents.files)
    digests: dict[str, str] = {}
    for where in ("edits", "undone"):
        for i, key in enumerate(m[where]):
            what = f"{'edit' if where == 'edits' else 'undone edit'} {i}"
            folder, manifest = _stored_edit_folder(Path(state_dir), key, what)
            blob, digest = folder / "edit.safetensors", manifest["files"]["edit.safetensors"]
            if not blob.is_file() or _file_sha256(blob) != digest:
                raise UserError(f"{what} (edits/{key[:12]}…) fails its checksum (damaged or tampered)")
            files[f"{where}/{i:03d}/edit.safetensors"], digests[f"{where}/{i:03d}/edit.safetensors"] = blob, digest
            files[f"{where}/{i:03d}/manifest.json"] = (folder / "manifest.json").read_bytes()
    digests.update({name: hashlib.sha256(b).hexdigest() for name, b in files.items() if not isinstance(b, Path)})
    manifest = {**m["bundle"], "format": BUNDLE_FORMAT, "format_version": 2 if m["undone"] else 1, "files": digests}
    write_bundle(Path(out), manifest, files)
    return Path(out)


def describe(info: dict) -> str:
    """One saved session in a few words: its short id, edits, chats, when saved."""
    edits = info.get("edits") or []
    n = len(edits) if isinstance(edits, list) else edits
    chats = info.get("chats") or 0
    when = (info.get("saved") or "").replace("T", " ").rstrip("Z")
    return (f"{info.get('id', '')[:8]}… ({n} edit{'s' if n != 1 else ''}, {chats} chat turn{'s' if chats != 1 else ''}"
            + (f", saved {when} UTC" if when else ", not saved yet") + ")")
