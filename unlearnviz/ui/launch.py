"""Parse launch flags, build the app, serve it on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="unlearnviz dashboard")
    p.add_argument("--model", default="default")
    p.add_argument("--data", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=int(os.environ.get("UNLEARNVIZ_PORT", 7860)))
    p.add_argument("--auth-file", default=None)
    p.add_argument("--share", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from unlearnviz.ui.app import build_app

    demo = build_app(model=args.model, data=args.data)
    demo.queue(default_concurrency_limit=4).launch(server_name=args.host, server_port=args.port,
                                                   share=args.share, show_error=True)
