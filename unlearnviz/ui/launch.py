"""Parse launch flags, build the app, serve it on 127.0.0.1 unless told otherwise.

Operator-only switches live here (never in the browser): the host, a share link, a login file,
limits, the upload size. ``--trust-remote-code`` and ``--allow-pickle`` are not offered for the
UI at all: models that need them are for the CLI, where the operator types the flag.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


# The data-part flags, as the CLI's (``python -m unlearnviz run --forget-corpus ...``).
PART_FLAGS = {"forget_corpus": "--forget-corpus", "retain_corpus": "--retain-corpus", "forget_mcq": "--forget-mcq",
              "retain_mcq": "--retain-mcq"}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _dirs_from_env(name: str) -> list[str]:
    return [d for d in os.environ.get(name, "").split(os.pathsep) if d]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="unlearnviz dashboard")
    p.add_argument("--model", default="default", help="model loaded on first use")
    p.add_argument("--data", default="builtin:demo", help="data loaded on first use (the part flags override its parts)")
    what = {"forget_corpus": "the forget corpus", "retain_corpus": "the retain corpus",
            "forget_mcq": "the forget multiple-choice set", "retain_mcq": "the retain multiple-choice set"}
    for part, flag in PART_FLAGS.items():
        p.add_argument(flag, dest=part, action="append", default=None, metavar="SOURCE",
                       help=f"{what[part]} from its own source (as the CLI's): builtin:NAME, a file or folder, "
                            "hf:DATASET[:CONFIG[:SPLIT]], with ?KEY=VALUE options; repeat to give several; the "
                            "operator's own paths, not confined to --data-dir")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=int(os.environ.get("UNLEARNVIZ_PORT", 7860)))
    p.add_argument("--auth-file", default=os.environ.get("UNLEARNVIZ_AUTH_FILE"),
                   help="file of 'user:password' lines; or set UNLEARNVIZ_AUTH=user:password")
    p.add_argument("--share", action="store_true", help="create a public share link (off by default)")
    p.add_argument("--model-dir", action="append", default=_dirs_from_env("UNLEARNVIZ_MODEL_DIRS"),
                   help="a folder whose models visitors may load by path (repeatable; env UNLEARNVIZ_MODEL_DIRS, "
                        "os.pathsep-separated); without it, visitors load only the named and hub models")
    p.add_argument("--data-dir", action="append", default=_dirs_from_env("UNLEARNVIZ_DATA_DIRS"),
                   help="a folder whose data files visitors may load by path (repeatable; env UNLEARNVIZ_DATA_DIRS)")
    p.add_argument("--max-steps", type=_positive_int, default=1000, help="training steps per edit or attack")
    p.add_argument("--max-new-tokens", type=_positive_int, default=256, help="chat answer length")
    p.add_argument("--max-prompt-chars", type=_positive_int, default=4000, help="chat prompt length")
    p.add_argument("--max-points", type=_positive_int, default=120, help="texts shown in the Geometry views")
    p.add_argument("--max-edits", type=_positive_int, default=32, help="edits one session holds (undone ones included)")
    p.add_argument("--max-cache-mb-per-session", type=_positive_int, default=512, metavar="MB",
                   help="analysis passes and scores one session keeps cached; past it that session's own oldest "
                        "entries make room, never another's")
    p.add_argument("--max-upload-mb", type=_positive_int, default=20, help="size of one uploaded data file")
    p.add_argument("--concurrency", type=_positive_int, default=4, help="events run at once (per event type)")
    p.add_argument("--queue-size", type=_positive_int, default=64, help="requests waiting before new ones are refused")
    p.add_argument("--max-memory-gb", default=os.environ.get("UNLEARNVIZ_MAX_MEMORY_GB"), metavar="GB|DEV=GB,...",
                   help="the memory the dashboard may hold (models, edits, caches), one number for every device or "
                        "per device (cuda:0=70,cpu=100): idle models and cache entries are evicted least recently "
                        "used first, and a load or fit that still cannot fit is refused with the figures")
    p.add_argument("--preload", action="store_true", help="load the model before serving")
    p.add_argument("--config", default=None, help="a run config (YAML/JSON, as `run --config`): replayed once "
                   "at launch (model, data, every edit, chats); each new browser session starts from a copy")
    p.add_argument("--state-dir", default=os.environ.get("UNLEARNVIZ_STATE_DIR"),
                   help="a folder where every visitor's session (edits, metrics, chats) is autosaved as a session "
                        "bundle after each change, so it survives a server restart; without it sessions live in "
                        "memory only (env UNLEARNVIZ_STATE_DIR; `python -m unlearnviz sessions` lists them)")
    p.add_argument("--max-live-sessions", type=_positive_int, default=8,
                   help="sessions held in memory; the least recently used beyond that leave memory (saved first)")
    p.add_argument("--max-saved-sessions", type=_positive_int, default=500,
                   help="sessions kept in --state-dir; past it the least recently saved are deleted")
    return p.parse_args(argv)


def _pair(line: str, where: str) -> tuple[str, str]:
    user, sep, password = line.strip().partition(":")
    if not sep or not user.strip() or not password:
        raise SystemExit(f"error: {where}: each login must be user:password with both parts non-empty")
    return user.strip(), password


def read_auth(path: str | None) -> list[tuple[str, str]] | None:
    """Logins from ``UNLEARNVIZ_AUTH=user:password`` and/or a file of such lines (``#`` comments)."""
    pairs = []
    if os.environ.get("UNLEARNVIZ_AUTH"):
        pairs.append(_pair(os.environ["UNLEARNVIZ_AUTH"], "UNLEARNVIZ_AUTH"))
    if path:
        for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
            if line.strip() and not line.lstrip().startswith("#"):
                pairs.append(_pair(line, f"{path} line {n}"))
        if not pairs:
            raise SystemExit(f"error: {path}: no user:password lines (an empty auth file would leave the app open)")
    return pairs or None


def _existing_path(path: str) -> str:
    """A part's local path, absolute (the server may be asked from any folder); a missing one is
    refused at launch rather than on a visitor's first click."""
    from unlearnviz.errors import UserError

    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{path}: no such file or folder")
    return str(p.resolve())


def launch_data_spec(args: argparse.Namespace, base: str | None = None) -> str:
    """The data spec the dashboard starts on: ``--data`` (or ``base``, a ``--config``'s) with the
    part flags over its parts, composed as ``run`` composes them; each part's source checked
    (syntax, column map, a local path's existence). A bad part raises UserError naming it."""
    from unlearnviz.errors import UserError
    from unlearnviz.session import compose_data_spec

    parts = {part: getattr(args, part, None) for part in PART_FLAGS}
    spec = base or args.data
    if not any(parts.values()):
        return spec

    def confine(path: str) -> str:
        try:
            return _existing_path(path)
        except UserError as exc:
            where = next((PART_FLAGS[k] for k, v in parts.items() if v and any(path in x for x in v)), "--data")
            raise UserError(f"{where}: {exc}") from None

    return compose_data_spec(spec, parts, confine=confine)


def apply_run_config(config, path: str, args: argparse.Namespace | None = None) -> None:
    """``--config``: validate, replay once (the operator's own file: its model and data paths are not
    confined to --model-dir/--data-dir), and make it every new session's starting state and the
    default model and data."""
    import time

    from unlearnviz.config import load_config, read_config_file
    from unlearnviz.session.replay import replay
    from unlearnviz.ui.common import UISession

    cfg = load_config(path)
    raw = read_config_file(path)
    if not isinstance(raw, dict) or "model" not in raw:  # the config names no model: the --model flag's
        cfg.model.source = config.default_model
    if cfg.data.spec is None:
        cfg.data.spec = config.default_data
    elif args is not None and any(getattr(args, part, None) for part in PART_FLAGS):
        cfg.data.spec = launch_data_spec(args, base=cfg.data.spec)  # the part flags over the config's data
    t0 = time.perf_counter()
    template = replay(cfg, UISession(limits=config.limits),
                      log=lambda m: print(f"unlearnviz: --config: {m}", flush=True))
    config.run_config, config.template = cfg, template
    config.default_model, config.default_data = cfg.model.source, cfg.data.spec
    print(f"unlearnviz: --config {Path(path).name}: {len(template.stack)} edit(s), {len(template.chats)} chat(s) "
          f"replayed in {time.perf_counter() - t0:.1f} s; every new session starts from them", flush=True)


def session_settings(args: argparse.Namespace):
    """The registry's settings from the flags; ``--state-dir`` is created (owner-only) if missing
    and must be a writable folder, checked now rather than at a visitor's first save."""
    from unlearnviz.errors import UserError
    from unlearnviz.registry import RegistrySettings
    from unlearnviz.state_folder import sessions_dir

    settings = RegistrySettings(state_dir=Path(args.state_dir) if args.state_dir else None,
                                max_live=args.max_live_sessions, max_saved=args.max_saved_sessions)
    if settings.state_dir is not None:
        if settings.state_dir.exists() and not settings.state_dir.is_dir():
            raise UserError(f"{args.state_dir} is not a folder")
        settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        sessions_dir(settings.state_dir).mkdir(mode=0o700, exist_ok=True)
        if not os.access(sessions_dir(settings.state_dir), os.W_OK):
            raise UserError(f"{args.state_dir} is not writable")
    return settings


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from unlearnviz.errors import UserError
    from unlearnviz.session import STORE, Limits
    from unlearnviz.ui.app import build_app
    from unlearnviz.ui.common import AppConfig
    from unlearnviz.ui.tab_export import export_root

    try:
        auth = read_auth(args.auth_file)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"error: cannot read the auth file: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        raise SystemExit(2) from None
    for folder in [*args.model_dir, *args.data_dir]:
        if not Path(folder).is_dir():
            print(f"error: {folder} is not a folder", file=sys.stderr)
            raise SystemExit(2)
    try:
        from unlearnviz.session import budget

        budget.configure(args.max_memory_gb)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        sessions = session_settings(args)
    except (UserError, OSError) as exc:
        print(f"error: --state-dir: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        limits = Limits(max_steps=args.max_steps, max_new_tokens=args.max_new_tokens,
                        max_prompt_chars=args.max_prompt_chars, max_points=args.max_points,
                        max_upload_mb=args.max_upload_mb, max_edits=args.max_edits,
                        max_cache_mb=args.max_cache_mb_per_session)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        data_spec = launch_data_spec(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    config = AppConfig(default_model=args.model, default_data=data_spec, limits=limits,
                       model_dirs=tuple(Path(d).resolve() for d in args.model_dir),
                       data_dirs=tuple(Path(d).resolve() for d in args.data_dir), sessions=sessions)
    if args.config:
        try:
            apply_run_config(config, args.config, args)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    elif args.preload:
        STORE.preload(args.model)
    demo = build_app(config)
    # Each event type (load, edit, chat, ...) runs at most --concurrency calls at once; the rest wait
    # in one queue of at most --queue-size. Sessions never share edits (routing is per call), so
    # concurrency only trades latency for memory and CPU.
    demo.queue(default_concurrency_limit=args.concurrency, max_size=args.queue_size)
    if sessions.state_dir is not None:
        from unlearnviz.state_folder import list_saved

        print(f"unlearnviz: sessions autosaved in {sessions.state_dir} ({len(list_saved(sessions.state_dir))} saved)",
              flush=True)
    print(f"unlearnviz: serving on http://{args.host}:{args.port}"
          + (" (login required)" if auth else "") + (" with a public share link" if args.share else ""), flush=True)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, auth=auth, show_error=True,
                max_file_size=f"{args.max_upload_mb}mb", allowed_paths=[str(export_root())],
                theme=demo.unlearnviz_theme, css=demo.unlearnviz_css, js=demo.unlearnviz_js,
                footer_links=["api"])
