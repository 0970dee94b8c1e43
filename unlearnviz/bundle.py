"""Session bundles: a whole session (config, data, edits, metrics, relearning, robustness cards, chats) in one zip.

A bundle is a plain zip with a fixed set of member names::

    manifest.json            format + version, library versions, model fingerprint, data name and
                             content hash, the SHA-256 of every other member
    config.yaml              the config that replays the session (unlearnviz.config)
    data.jsonl               the data the metrics were measured on (loader format; uploads replay too),
                             when its rows fit DATA_BY_VALUE_BYTES; a larger set (a WMDP-sized
                             corpus) is carried by reference instead: its source spec and content
                             hash in the manifest, the source re-read and its hash checked on import
    edits/000/manifest.json  each edit of the stack, as save_edit writes it (its own checksums and
    edits/000/edit.safetensors  the model's fingerprint), in stack order
    undone/000/...           format 2 only: the undone edits a redo would put back (oldest first), as
                             the dashboard's autosave keeps them; an export without them stays format 1
    results.json             metrics before and after each edit, relearning results, robustness cards
                             (``unlearnviz.attacks.card``), the selected (and compared) edit, the chat
                             in progress, and in format 2 the undone edits' results
    chats.json, history.json the chat transcripts and the session's actions

Importing verifies everything before anything changes: the archive, its member names (only the
names above; nothing is ever extracted by its own name, so a ``../`` name cannot escape), sizes,
every checksum, the format, the model's fingerprint, the data's content hash (of the bundled
rows, or of the referenced source as read now: a source that is missing or changed is refused),
and each edit through ``load_edit``. Edits are loaded, never refitted. No pickle anywhere: JSON, YAML (safe
loader) and safetensors only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from unlearnviz.errors import UserError

BUNDLE_FORMAT = "unlearnviz-session-bundle"
BUNDLE_VERSION = 2  # the newest this reads and writes; 2 adds undone/ (written only when there are undone edits)
MANIFEST = "manifest.json"
MAX_BUNDLE_BYTES = 8 * 2**30  # uncompressed, all members together (a 7B model's RMU edits fit many times)
MAX_MEMBERS = 4096
MAX_META_BYTES = 64 * 2**20  # any one JSON/YAML member
# Data whose rows are larger is bundled by reference (its spec and content hash), not by value.
DATA_BY_VALUE_BYTES = MAX_META_BYTES
_MEMBER = re.compile(r"^(config\.yaml|data\.jsonl|results\.json|chats\.json|history\.json"
                     r"|(edits|undone)/\d{3,4}/(edit\.safetensors|manifest\.json))$")
_EDIT_FOLDERS = ("edits", "undone")


def _sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


# ---- data in the loader's own row format -------------------------------------------------------
def data_rows(data) -> list[dict]:
    """UnlearningData as loader rows (``rows_to_data`` reads them back with the same content hash)."""
    return list(iter_data_rows(data))


def data_blob(data, limit: int) -> bytes | None:
    """The data's rows as JSONL, or None as soon as they pass ``limit`` bytes (built row by row,
    so a corpus of any size costs at most ``limit`` to find out it is too large)."""
    parts, size = [], 0
    for row in iter_data_rows(data):
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        size += len(line)
        if size > limit:
            return None
        parts.append(line)
    return b"".join(parts)


def iter_data_rows(data):
    """The rows of :func:`data_rows`, one at a time."""
    def mcq(split: str, it, half: str | None) -> dict:
        row = {"split": split, "question": it.question, "choices": list(it.choices), "answer": it.answer,
               "blind_question": it.blind_question, "subject": it.subject, "relation": it.relation}
        return {**row, "half": half} if half else row

    for t, h in zip(data.forget_texts, data.forget_text_half):
        yield {"split": "forget", "text": t, "half": h}
    for it, h in zip(data.forget_mcq, data.forget_half):
        yield mcq("forget", it, h)
    for t in data.retain_texts:
        yield {"split": "retain", "text": t}
    for it in data.retain_mcq:
        yield mcq("retain", it, None)
    for split in ("forget", "retain"):  # the probe split (held-out phrasings), where the data has one
        for it, of in zip(getattr(data, f"{split}_probe"), getattr(data, f"{split}_probe_of")):
            yield {**mcq(f"{split}_probe", it, None), "probe_of": of}


def _data_from_rows(blob: bytes, info: dict):
    from unlearnviz.data.loaders import rows_to_data

    try:
        rows = [json.loads(line) for line in blob.decode("utf-8").splitlines() if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise UserError("data.jsonl in the bundle is not valid JSONL (damaged bundle)") from None
    if not all(isinstance(r, dict) for r in rows):
        raise UserError("data.jsonl in the bundle has rows that are not objects (damaged bundle)")
    data = rows_to_data(list(enumerate(rows, 1)), name=str(info.get("name") or "bundle data"),
                        provenance=str(info.get("provenance") or "session bundle"),
                        card=info.get("card") if isinstance(info.get("card"), dict) else None)
    return data


# ---- export ------------------------------------------------------------------------------------
def export_bundle(session, path: Path, base=None, max_data_bytes: int = DATA_BY_VALUE_BYTES,
                  include_undone: bool = False) -> Path:
    """Write ``session`` as one zip at ``path`` (atomically: a temporary file renamed into place).
    ``base``: the config the session was replayed from (keeps its seed and analysis settings).
    ``include_undone``: keep the undone edits a redo would put back (the dashboard's autosave: a
    restart loses nothing); a bundle made to share leaves them out and stays format 1.

    The data goes in by value (data.jsonl) when its rows fit ``max_data_bytes`` (every built-in
    set, visitors' uploads under the upload cap), else by reference: the spec it was loaded
    from and its content hash, so the importer must hold the same source (an operator's corpus
    on disk, a hub dataset); data with no spec to name is refused."""
    from unlearnviz.methods.edit import save_edit

    lm, data = session.require_model(), session.require_data()
    cfg = session.to_config(base=base)
    rows = data_blob(data, max_data_bytes)
    if rows is None and not cfg.data.spec:
        raise UserError(f"data {data.name!r} is over {max_data_bytes / 2**20:.0f} MB as rows and names no source "
                        "to bundle it by reference; load it from a file or dataset (Data tab, --data) first")
    undone = list(getattr(session, "undone", None) or []) if include_undone else []
    manifest, files = session_parts(session, cfg, rows, data.content_hash(), undone)
    with tempfile.TemporaryDirectory(prefix="uv-bundle-") as tmp:
        for where, edits in (("edits", session.stack.edits), ("undone", [u["edit"] for u in undone])):
            for i, edit in enumerate(edits):
                folder = save_edit(edit, Path(tmp) / where / f"{i:03d}", lm, stack_index=i)
                for name in ("edit.safetensors", "manifest.json"):
                    files[f"{where}/{i:03d}/{name}"] = (folder / name).read_bytes()
    manifest["files"] = {name: _sha256(blob) for name, blob in files.items()}
    write_bundle(Path(path), manifest, files)
    return Path(path)


def session_parts(session, cfg, rows: bytes | None, data_hash: str, undone: list) -> tuple[dict, dict[str, bytes]]:
    """A bundle's manifest (less its file list) and members other than the edits, from ``session``:
    ``cfg`` its config, ``rows`` its data as JSONL (None: by reference), ``data_hash`` the data's
    content hash, ``undone`` the redo entries to keep. Shared by ``export_bundle`` and the state
    folder's autosave (``unlearnviz.state_folder``), which keeps the edits and rows apart, once each."""
    from unlearnviz.methods.edit import versions

    lm, data = session.lm, session.data
    files: dict[str, bytes] = {"config.yaml": cfg.to_yaml().encode("utf-8")}
    if rows is not None:
        files["data.jsonl"] = rows
    results = {"before": session.before, "after": {str(k): v for k, v in session.after.items()},
               "relearn": {str(k): v for k, v in session.relearn.items()},
               "attacks": {str(k): v for k, v in session.attacks.items()}, "selected": session.selected,
               "compare": getattr(session, "compare", None), "conversation": getattr(session, "conversation", 0)}
    if undone:
        results["undone"] = [{k: u.get(k) for k in ("after", "relearn", "attacks")} for u in undone]
    files["results.json"] = json.dumps(results, indent=1, default=float).encode("utf-8")
    files["chats.json"] = json.dumps(session.chats, indent=1, ensure_ascii=False).encode("utf-8")
    files["history.json"] = json.dumps(session.history, indent=1, ensure_ascii=False, default=str).encode("utf-8")
    manifest = {
        "format": BUNDLE_FORMAT, "format_version": 2 if undone else 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "versions": versions(),
        "model": {"name": lm.name, "source": cfg.model.source, "fingerprint": lm.fingerprint(refresh=False),
                  "family": lm.adapter.family, "layers": lm.n_layers, "hidden_size": lm.hidden_size,
                  "dtype": str(lm.dtype).replace("torch.", "")},
        "data": {"name": data.name, "spec": cfg.data.spec, "content_hash": data_hash,
                 "provenance": data.provenance, "card": data.card,
                 "by": "value" if rows is not None else "reference", "file": "data.jsonl" if rows is not None else None},
        "edits": [{"method": e.method, "label": e.label()} for e in session.stack.edits],
    }
    return manifest, files


def write_bundle(path: Path, manifest: dict, files: dict[str, bytes | Path]) -> None:
    """The zip of ``manifest`` and ``files`` at ``path``, atomically (a temporary sibling, fsynced,
    renamed into place). A member given as a Path is streamed from that file, so a bundle of
    GBs of tensors never sits in memory; tensors barely compress and are stored, not deflated."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = unique_tmp(path)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST, json.dumps(manifest, indent=2, default=float))
            for name, blob in files.items():
                kind = zipfile.ZIP_STORED if name.endswith(".safetensors") else zipfile.ZIP_DEFLATED
                if isinstance(blob, Path):
                    zf.write(blob, name, compress_type=kind)
                else:
                    zf.writestr(name, blob, compress_type=kind)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---- verification ------------------------------------------------------------------------------
@dataclass
class BundleContents:
    """A bundle read fully into memory, every checksum verified."""

    manifest: dict
    files: dict[str, bytes]

    @property
    def n_edits(self) -> int:
        return self.count("edits")

    def count(self, folder: str) -> int:
        """How many edits the bundle holds under ``folder`` (edits: the stack; undone: the redo list)."""
        return len([n for n in self.files if n.startswith(f"{folder}/") and n.endswith("/edit.safetensors")])


def read_bundle(path: str | Path, max_bytes: int = MAX_BUNDLE_BYTES) -> BundleContents:
    """Open and verify a bundle's archive: a zip, our manifest and format, only our member names,
    within the size limits, every member present and matching its SHA-256. Nothing is written."""
    p = Path(path)
    what = p.name or str(p)
    if not p.is_file():
        raise UserError(f"{what}: no such bundle file")
    try:
        zf = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise UserError(f"{what}: not a zip archive (damaged, truncated, or not a session bundle)") from None
    with zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        if MANIFEST not in names:
            raise UserError(f"{what}: not an unlearnviz session bundle (no {MANIFEST})")
        if len(infos) > MAX_MEMBERS or len(set(names)) != len(names):
            raise UserError(f"{what}: {len(infos)} members, some repeated or too many (damaged or tampered bundle)")
        if sum(i.file_size for i in infos) > max_bytes:
            raise UserError(f"{what}: {sum(i.file_size for i in infos) / 2**20:.0f} MB uncompressed is over "
                            f"the {max_bytes / 2**20:.0f} MB limit")
        sizes = {i.filename: i.file_size for i in infos}

        def read(name: str, limit: int) -> bytes:
            if sizes[name] > limit:
                raise UserError(f"{what}: {name} is {sizes[name]} bytes, over its {limit} byte limit")
            try:
                with zf.open(name) as fh:
                    blob = fh.read(sizes[name] + 1)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as exc:
                raise UserError(f"{what}: {name} cannot be read ({str(exc)[:80]}; damaged or truncated bundle)") \
                    from None
            if len(blob) != sizes[name]:
                raise UserError(f"{what}: {name} is not the size its header says (damaged or tampered bundle)")
            return blob

        try:
            manifest = json.loads(read(MANIFEST, MAX_META_BYTES))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise UserError(f"{what}: {MANIFEST} is not valid JSON (damaged bundle, or not a session bundle)") \
                from None
        if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
            raise UserError(f"{what}: not an unlearnviz session bundle ({MANIFEST} does not say "
                            f"format {BUNDLE_FORMAT!r})")
        version = manifest.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise UserError(f"{what}: {MANIFEST} has no valid format_version (damaged bundle)")
        if version > BUNDLE_VERSION:
            raise UserError(f"{what}: bundle format {version} is newer than this unlearnviz reads "
                            f"({BUNDLE_VERSION}); upgrade unlearnviz")
        listed = manifest.get("files")
        if not isinstance(listed, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in listed.items()):
            raise UserError(f"{what}: {MANIFEST} has no valid file list (damaged bundle)")
        for name in [*names, *listed]:
            if name != MANIFEST and not _MEMBER.match(name):
                raise UserError(f"{what}: unexpected member name {name[:120]!r} (not written by unlearnviz; refused)")
        for name in listed:
            if name not in sizes:
                raise UserError(f"{what}: {name} is missing (damaged bundle)")
        for name in names:
            if name != MANIFEST and name not in listed:
                raise UserError(f"{what}: {name} is not in the manifest's file list (tampered bundle)")
        files = {}
        for name, digest in listed.items():
            blob = read(name, max_bytes if name.endswith(".safetensors") else MAX_META_BYTES)
            if _sha256(blob) != digest:
                raise UserError(f"{what}: checksum mismatch in {name} (damaged or tampered bundle)")
            files[name] = blob
    for key in ("model", "data"):
        if not isinstance(manifest.get(key), dict):
            raise UserError(f"{what}: {MANIFEST} has no {key} section (damaged bundle)")
    by = manifest["data"].get("by", "value")  # bundles before data by reference: by value
    if by not in ("value", "reference"):
        raise UserError(f"{what}: {MANIFEST} says the data is bundled {by!r}, not by value or reference (damaged bundle)")
    for need in ("config.yaml", *(["data.jsonl"] if by == "value" else []), "results.json"):
        if need not in files:
            raise UserError(f"{what}: {need} is missing (damaged bundle)")
    if by == "reference" and ("data.jsonl" in files or not manifest["data"].get("spec")):
        raise UserError(f"{what}: the data is by reference but the bundle has data.jsonl or no spec (damaged bundle)")
    for where in _EDIT_FOLDERS:
        n = len([k for k in files if k.startswith(f"{where}/") and k.endswith("/edit.safetensors")])
        if sorted(k for k in files if k.startswith(f"{where}/")) != sorted(
                f"{where}/{i:03d}/{f}" for i in range(n) for f in ("edit.safetensors", "manifest.json")):
            raise UserError(f"{what}: the {'edits' if where == 'edits' else 'undone edits'} are not numbered "
                            f"000..{n - 1:03d}, each with both files (damaged bundle)")
    if version < 2 and any(k.startswith("undone/") for k in files):
        raise UserError(f"{what}: format 1 holds no undone edits (damaged or tampered bundle)")
    return BundleContents(manifest=manifest, files=files)


def _json(contents: BundleContents, name: str, kind: type, default):
    if name not in contents.files:
        return default
    try:
        value = json.loads(contents.files[name].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise UserError(f"{name} in the bundle is not valid JSON (damaged bundle)") from None
    if not isinstance(value, kind):
        raise UserError(f"{name} in the bundle is not a {kind.__name__} (damaged bundle)")
    return value


def _indexed(mapping: dict, n: int, what: str) -> dict[int, dict]:
    out = {}
    for k, v in mapping.items():
        if not (isinstance(k, str) and k.isdigit() and int(k) < n and isinstance(v, dict)):
            raise UserError(f"results.json: {what} entry {k!r} does not name one of the {n} edits (damaged bundle)")
        out[int(k)] = v
    return out


def _cards(cards: dict[int, dict]) -> dict[int, dict]:
    """Robustness cards from results.json, each checked (``attacks.card.check_card``)."""
    from unlearnviz.attacks.card import check_card

    return {k: check_card(v, f"results.json: attacks entry {k} (damaged bundle)") for k, v in cards.items()}


# ---- import ------------------------------------------------------------------------------------
def import_bundle(path: str | Path, lm=None, *, allow_model: Callable[[str], str] | None = None, store=None,
                  limits=None, max_bytes: int = MAX_BUNDLE_BYTES, allow_data: Callable[[str], str] | None = None):
    """A new Session restored from a bundle, after verifying everything (see ``read_bundle``).

    ``lm``: the model to restore onto; it must be the bundle's model (same fingerprint). Without
    it, the model the bundle's config names is loaded (through ``allow_model``, which may refuse a
    source or rewrite it: the app confines it to the operator's folders) and its fingerprint
    checked. Data: built-in and synthetic sets are loaded by name, anything else (files, uploads,
    hub sets) from the bundle's own copy; either must match the recorded content hash. Data
    bundled by reference is re-read from its spec (through ``allow_data``, which may refuse a
    source: the app confines paths to the operator's folders) with the model's tokenizer, and
    refused with one line if the source cannot be read or its content hash differs. The
    caller's session is not touched: adopt the returned one when it should replace it.
    """
    contents = read_bundle(path, max_bytes=max_bytes)
    return session_from_contents(contents, lm, allow_model=allow_model, store=store, limits=limits,
                                 allow_data=allow_data, imported_from=Path(path).name)


def session_from_contents(contents: BundleContents, lm=None, *, allow_model: Callable[[str], str] | None = None,
                          store=None, limits=None, allow_data: Callable[[str], str] | None = None,
                          load_edits: Callable[[str, object], list] | None = None,
                          imported_from: str | None = None):
    """The Session of verified ``contents`` (``import_bundle`` after ``read_bundle``). The state
    folder's restore, whose edits live in folders of their own, reads them with
    ``load_edits(where, lm)`` (where: "edits" or "undone"); by default they come from
    ``contents``. ``imported_from``: the file the history's import entry names (None: no entry,
    a restore is not an import)."""
    import yaml

    from unlearnviz.config import parse_config
    from unlearnviz.data import load_data
    from unlearnviz.data.synthetic import resolve_model_source
    from unlearnviz.methods.edit import EditStack
    from unlearnviz.model.loading import LoadOptions
    from unlearnviz.session import STORE, Limits, Session

    manifest, files = contents.manifest, contents.files
    try:
        raw = yaml.safe_load(files["config.yaml"].decode("utf-8"))
        cfg = parse_config(raw)
    except (UnicodeDecodeError, yaml.YAMLError):
        raise UserError("config.yaml in the bundle is not valid YAML (damaged bundle)") from None
    except UserError as exc:
        raise UserError(f"config.yaml in the bundle: {exc}") from None
    want = manifest["model"].get("fingerprint")
    if lm is None:
        source = allow_model(cfg.model.source) if allow_model else cfg.model.source
        lm = (store or STORE).get(resolve_model_source(source), LoadOptions(dtype=cfg.model.dtype,
                                                                            device=cfg.model.device))
    have = lm.fingerprint(refresh=False)
    if have != want:
        raise UserError(f"this bundle was made for model {manifest['model'].get('name')!r} (fingerprint {want}), "
                        f"not {lm.name!r} ({have}); load that model first")
    info = manifest["data"]
    spec = cfg.data.spec or ""
    data = None
    if info.get("by") == "reference":
        data = _data_by_reference(allow_data(spec) if allow_data else spec, info, lm)
    elif spec.startswith("builtin:") or spec == "synthetic" or spec.startswith("synthetic:"):
        try:
            data = load_data(spec)
        except UserError:
            data = None
        if data is not None and data.content_hash() != info.get("content_hash"):
            data = None  # the built-in set changed since: the bundle's own copy is what was measured
    if data is None:
        data = _data_from_rows(files["data.jsonl"], info)
    if data.content_hash() != info.get("content_hash"):
        raise UserError(f"the bundle's data does not match its recorded hash {info.get('content_hash')} "
                        "(damaged or tampered bundle)")
    load = load_edits or (lambda where, model: _load_edits(contents, where, model))
    edits, undone_edits = load("edits", lm), load("undone", lm)
    n = len(edits)
    results = _json(contents, "results.json", dict, {})
    before = results.get("before")
    if before is not None and not isinstance(before, dict):
        raise UserError("results.json: 'before' is not a mapping (damaged bundle)")
    after = _indexed(results.get("after") or {}, n, "after")
    relearn = _indexed(results.get("relearn") or {}, n, "relearn")
    attacks = _cards(_indexed(results.get("attacks") or {}, n, "attacks"))
    selected, compare = results.get("selected"), results.get("compare")
    for what, index in (("selected", selected), ("compared", compare)):
        if index is not None and not (isinstance(index, int) and not isinstance(index, bool) and 0 <= index < n):
            raise UserError(f"results.json: {what} edit {index!r} is not one of the {n} edits (damaged bundle)")
    undone = _undone(results.get("undone") or [], undone_edits)
    chats = _json(contents, "chats.json", list, [])
    if not all(isinstance(c, dict) and isinstance(c.get("prompt"), str) for c in chats):
        raise UserError("chats.json: every chat needs a prompt (damaged bundle)")
    history = _json(contents, "history.json", list, [])
    session = Session(limits=limits or Limits())
    session.lm, session.data, session.stack, session.selected = lm, data, EditStack(edits), selected
    session.before, session.after, session.relearn, session.chats = before, after, relearn, chats
    session.attacks, session.compare, session.undone = attacks, compare, undone
    conversation = results.get("conversation")
    if not (isinstance(conversation, int) and not isinstance(conversation, bool) and conversation >= 0):
        conversation = max([0, *(c["conversation"] for c in chats if isinstance(c.get("conversation"), int))])
    session.conversation = conversation  # older bundles: the last conversation is the one in progress
    session.history = [h for h in history if isinstance(h, dict)] + ([
        {"action": "import_bundle", "file": imported_from, "created": manifest.get("created")}]
        if imported_from is not None else [])
    if not session._last("load_model"):
        session.history.insert(0, {"action": "load_model", "model": cfg.model.source, "dtype": cfg.model.dtype,
                                   "device": cfg.model.device})
    if not session._last("load_data"):
        session.history.insert(1, {"action": "load_data", "data": spec or data.name})
    return session


def _load_edits(contents: BundleContents, where: str, lm) -> list:
    """The edits under ``where`` (edits/ or undone/), each through ``load_edit`` (its checksums and
    the model's fingerprint), with a damaged one named by its place in the bundle."""
    from unlearnviz.methods.edit import load_edit

    out = []
    with tempfile.TemporaryDirectory(prefix="uv-import-") as tmp:
        for i in range(contents.count(where)):
            folder = Path(tmp) / f"{i:03d}"
            folder.mkdir()
            for name in ("edit.safetensors", "manifest.json"):
                (folder / name).write_bytes(contents.files[f"{where}/{i:03d}/{name}"])
            what = "edit" if where == "edits" else "undone edit"
            try:
                out.append(load_edit(folder, lm))
            except UserError as exc:
                raise UserError(f"{what} {i} in the bundle: {str(exc).replace(str(folder), f'{where}/{i:03d}')}") \
                    from None
            except (MemoryError, KeyboardInterrupt):
                raise
            except Exception:  # a manifest of the wrong shape, a tensor under a bad name, ...
                raise UserError(f"{what} {i} in the bundle is damaged (its manifest or tensors are not of the "
                                "shape an edit has)") from None
    return out


def _undone(rows: list, edits: list) -> list[dict]:
    """The redo list: each undone edit with the results it had (results.json's ``undone``)."""
    from unlearnviz.attacks.card import check_card

    if not isinstance(rows, list) or len(rows) != len(edits) or not all(isinstance(r, dict) for r in rows):
        raise UserError(f"results.json: 'undone' does not describe the {len(edits)} undone edit(s) (damaged bundle)")
    out = []
    for i, (edit, row) in enumerate(zip(edits, rows)):
        entry = {"edit": edit}
        for key in ("after", "relearn", "attacks"):
            value = row.get(key)
            if value is not None and not isinstance(value, dict):
                raise UserError(f"results.json: undone entry {i} {key} is not a mapping (damaged bundle)")
            entry[key] = value
        if entry["attacks"] is not None:
            entry["attacks"] = check_card(entry["attacks"], f"results.json: undone entry {i} attacks (damaged bundle)")
        out.append(entry)
    return out


def _data_by_reference(spec: str, info: dict, lm):
    """The data a bundle names by reference, read from its source now and checked against the
    recorded content hash."""
    from unlearnviz.data import load_data

    try:
        data = load_data(spec, tokenizer=lm.tokenizer)
    except UserError as exc:
        raise UserError(f"the bundle's data is a reference to {spec!r}, which cannot be read here ({exc}); "
                        "put that source where the bundle was made, then import again") from None
    have, want = data.content_hash(), info.get("content_hash")
    if have != want:
        raise UserError(f"the bundle's data source {spec!r} has changed since the bundle was made (content hash "
                        f"{str(have)[:12]}, the bundle's {str(want)[:12]}); restore that version to import it")
    return data


def bundle_summary(contents: BundleContents) -> dict:
    """What a bundle holds, from its verified manifest (for the CLI and the app)."""
    m = contents.manifest
    return {"format_version": m.get("format_version"), "created": m.get("created"),
            "model": {k: m["model"].get(k) for k in ("name", "source", "fingerprint", "family")},
            "data": {k: m["data"].get(k, "value" if k == "by" else None) for k in ("name", "spec", "content_hash", "by")},
            "edits": m.get("edits"), "undone": contents.count("undone"), "files": len(contents.files) + 1,
            "versions": m.get("versions")}


def unique_tmp(target: Path) -> Path:
    """A fresh sibling name for building ``target`` before it is renamed into place."""
    return target.with_name(f".{target.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
