"""CLI command ``sessions``: the dashboard's saved sessions in its state folder (``app.py --state-dir``).

    python -m unlearnviz sessions list --state-dir DIR             # id, owner, saved, model, data, edits, chats
    python -m unlearnviz sessions export ID OUT.zip --state-dir DIR  # a copy, checked: a session bundle
    python -m unlearnviz sessions delete ID --state-dir DIR         # its manifest, listing entry, and
                                                                    # the edits no other session names

An exported session is an ordinary session bundle (its edits and undone edits included, every
checksum checked first): ``bundle verify``/``bundle import`` and the dashboard's Export tab read it. A session deleted while a browser still has it open is saved again
at that visitor's next change; stop the server first to remove one for good.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from unlearnviz.errors import UserError


def _state_dir(args: argparse.Namespace) -> Path:
    from unlearnviz.state_folder import sessions_dir

    folder = Path(args.state_dir).expanduser()
    if not sessions_dir(folder).is_dir():
        raise UserError(f"--state-dir {args.state_dir}: no saved sessions there (not a folder the dashboard "
                        "wrote with --state-dir)")
    return folder


def _saved(args: argparse.Namespace) -> tuple[Path, dict]:
    from unlearnviz.state_folder import check_id, saved_info

    folder = _state_dir(args)
    info = saved_info(folder, check_id(args.id))
    if info is None:
        raise UserError(f"no saved session {args.id} in {args.state_dir} (`sessions list` shows the ids)")
    return folder, info


def cmd_list(args: argparse.Namespace) -> None:
    from unlearnviz.state_folder import list_saved

    rows = list_saved(_state_dir(args))
    print(json.dumps({"state_dir": str(args.state_dir), "sessions": rows}, indent=2, default=str))


def cmd_export(args: argparse.Namespace) -> None:
    from unlearnviz.state_folder import export_saved

    folder, info = _saved(args)
    out = Path(args.out)
    if out.suffix.lower() != ".zip":
        raise UserError(f"{out}: a session bundle is a .zip file")
    if out.exists():
        raise UserError(f"{out} exists; choose a new file name")
    if not out.parent.is_dir():
        raise UserError(f"{out.parent} is not a folder")
    export_saved(folder, args.id, out)  # every checksum: a damaged save is refused, not passed on
    print(json.dumps({"exported": str(out), "bytes": out.stat().st_size, **{k: info.get(k) for k in (
        "id", "model", "data", "edits", "chats")}}, indent=2, default=str))


def cmd_delete(args: argparse.Namespace) -> None:
    from unlearnviz.state_folder import delete_saved

    folder, info = _saved(args)
    delete_saved(folder, args.id)
    print(json.dumps({"deleted": args.id, "edits": info.get("edits"), "chats": info.get("chats")}, indent=2))


def register(sub) -> None:
    p = sub.add_parser("sessions", help="the dashboard's saved sessions (app.py --state-dir): list, export, delete")
    ssub = p.add_subparsers(dest="sessions_command", required=True)
    for name, fn, helptext in (("list", cmd_list, "every saved session, most recently saved first"),
                               ("export", cmd_export, "copy one saved session out as a session bundle (.zip)"),
                               ("delete", cmd_delete, "delete one saved session")):
        q = ssub.add_parser(name, help=helptext)
        if name != "list":
            q.add_argument("id", help="the session's id (from `sessions list`)")
        if name == "export":
            q.add_argument("out", help="the .zip file to write (must not exist)")
        q.add_argument("--state-dir", required=True, help="the dashboard's --state-dir")
        q.set_defaults(fn=fn)
