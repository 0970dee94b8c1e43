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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="unlearnviz dashboard")
    p.add_argument("--model", default="default", help="model loaded on first use")
    p.add_argument("--data", default="builtin:demo", help="data loaded on first use")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=int(os.environ.get("UNLEARNVIZ_PORT", 7860)))
    p.add_argument("--auth-file", default=os.environ.get("UNLEARNVIZ_AUTH_FILE"),
                   help="file of 'user:password' lines; or set UNLEARNVIZ_AUTH=user:password")
    p.add_argument("--share", action="store_true", help="create a public share link (off by default)")
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--max-upload-mb", type=int, default=20)
    p.add_argument("--concurrency", type=int, default=4, help="events run at once (per event type)")
    p.add_argument("--preload", action="store_true", help="load the model before serving")
    return p.parse_args(argv)


def read_auth(path: str | None) -> list[tuple[str, str]] | None:
    pairs = []
    if os.environ.get("UNLEARNVIZ_AUTH"):
        pairs.append(tuple(os.environ["UNLEARNVIZ_AUTH"].split(":", 1)))
    if path:
        for line in Path(path).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                if ":" not in line:
                    raise SystemExit(f"error: {path}: each line must be user:password")
                pairs.append(tuple(line.strip().split(":", 1)))
    return pairs or None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from unlearnviz.session import STORE, Limits
    from unlearnviz.ui.app import build_app
    from unlearnviz.ui.common import AppConfig
    from unlearnviz.ui.tab_export import export_root

    try:
        auth = read_auth(args.auth_file)
    except OSError as exc:
        print(f"error: cannot read the auth file: {exc.strerror}", file=sys.stderr)
        raise SystemExit(2) from None
    limits = Limits(max_steps=args.max_steps, max_new_tokens=args.max_new_tokens, max_upload_mb=args.max_upload_mb)
    config = AppConfig(default_model=args.model, default_data=args.data, limits=limits)
    if args.preload:
        from unlearnviz.model.loading import LoadOptions

        STORE.get(args.model, LoadOptions())
    demo = build_app(config)
    demo.queue(default_concurrency_limit=args.concurrency, max_size=64)
    print(f"unlearnviz: serving on http://{args.host}:{args.port}", flush=True)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, auth=auth, show_error=True,
                max_file_size=f"{args.max_upload_mb}mb", allowed_paths=[str(export_root())],
                theme=demo.unlearnviz_theme, css=demo.unlearnviz_css, footer_links=["api"])
