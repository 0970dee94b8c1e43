"""Data tab: forget and retain sets, how big they are and how entangled."""

from __future__ import annotations

import gradio as gr

from unlearnviz.errors import UserError
from unlearnviz.session import catalogue, data_presets
from unlearnviz.ui.common import (
    AppConfig,
    UISession,
    check_upload,
    confine_data_spec,
    ensure_ready,
    md_table,
    readable,
)
from unlearnviz.ui.inputs import LoadData, LoadParts, public

INTRO = ("**Data.** The *forget* set is what the edit should remove, the *retain* set what it must keep. "
         "Overlap is the share of forget n-grams that also occur in the retain text: high overlap means the two "
         "are entangled and hard to separate.")

COMPOSE_HELP = ("Each part from its own source (`builtin:NAME`, `synthetic`, `hf:DATASET`, a file in this server's "
                "data folders, options after `?` such as `?max_rows=100`, which samples the base set's own part); "
                "a part left empty comes from the base set")


def summary_markdown(session: UISession) -> str:
    if session.data is None:
        return "_No data loaded yet._"
    s = session.data_summary()
    card = session.data.card.get("baseline", {})
    rows = [("name", s["name"]), ("provenance", s["provenance"]),
            ("forget / retain texts", f"{s['forget_texts']} / {s['retain_texts']}"),
            ("forget / retain MCQ items", f"{s['forget_mcq']} / {s['retain_mcq']} (half B: {s['forget_half_b']})"),
            ("overlap (unigram / bigram)", f"{s['unigram_overlap']:.1%} / {s['bigram_overlap']:.1%}"
             + (f" (on {s['overlap_sample']:,} texts per side)" if s.get("overlap_sample") else ""))]
    for part, v in (s.get("parts") or {}).items():  # composed data: where each part came from
        rows.append((part, f"{' + '.join(f'`{src}`' for src in v['sources'])} ({v['count']:,})"))
    if card:
        rows.append(("baseline cloze forget / retain (floor)",
                     f"{card.get('forget_cloze_acc', 0):.0%} / {card.get('retain_cloze_acc', 0):.0%} "
                     f"({card.get('forget_floor_acc', 0):.0%} / {card.get('retain_floor_acc', 0):.0%})"))
    return md_table(rows)


def preview_rows(session: UISession, n: int = 8) -> list[list[str]]:
    if session.data is None:
        return []
    d = session.data
    rows = [["forget", "text", t] for t in d.forget_texts[:n]]
    rows += [["forget", "MCQ", f"{it.question} … [{' | '.join(it.choices)}] → {it.gold}"] for it in d.forget_mcq[:n]]
    rows += [["retain", "text", t] for t in d.retain_texts[:n]]
    rows += [["retain", "MCQ", f"{it.question} … [{' | '.join(it.choices)}] → {it.gold}"] for it in d.retain_mcq[:n]]
    return rows


def build(state: gr.State, config: AppConfig) -> dict:
    gr.Markdown(INTRO)
    names = ([f"builtin:{n}" for n in catalogue.builtin_data_names()]
             + [f"synthetic:{e}" for e in ("0.0", "0.1", "0.2", "0.3")])
    if config.default_data not in names:
        names.insert(0, config.default_data)
    with gr.Row():
        builtin = gr.Dropdown(names, value=config.default_data if config.default_data in names else (names[0] if names else None),
                              label="Built-in set", scale=2, allow_custom_value=True,
                              info="real facts the default model knows, or the synthetic lab world (tiny model)")
        hf = gr.Textbox(label="or a Hugging Face dataset", placeholder="hf:cais/wmdp:wmdp-bio (needs a network)", scale=2)
        upload = gr.File(label="or upload JSONL / CSV / Parquet", file_types=[".jsonl", ".json", ".csv", ".parquet"],
                         type="filepath", scale=2)
    load = gr.Button("Load data", variant="primary")
    summary = gr.Markdown(summary_markdown(UISession()))
    preview = gr.Dataframe(headers=["split", "kind", "content"], value=[], wrap=True, label="Preview",
                           interactive=False)

    @readable(args=LoadData)
    def on_load(session: UISession, name: str | None, hf_id: str | None, file: str | None):
        ensure_ready(session, config, need_data=False)
        if file:
            spec = check_upload(file, config)
        elif hf_id and hf_id.strip():
            spec = hf_id.strip() if hf_id.strip().startswith("hf:") else f"hf:{hf_id.strip()}"
        elif name:
            spec = confine_data_spec(name, config)
        else:
            raise UserError("choose a built-in set, a dataset id or a file")
        session.load_data(spec, max_bytes=config.limits.max_upload_mb * 2**20 if file else None)  # visitors' cap
        return session, public(summary_markdown(session)), preview_rows(session), public(session.data_summary())

    with gr.Accordion("Compose from four sources", open=False):
        gr.Markdown(COMPOSE_HELP + "; presets: " + ", ".join(f"`preset:{n}@DIR` ({note})"
                                                             for n, note in data_presets().items()))
        with gr.Row():
            forget_corpus = gr.Textbox(label="forget_corpus", placeholder="papers.jsonl?text=abstract&chunk_tokens=512")
            retain_corpus = gr.Textbox(label="retain_corpus", placeholder="synthetic")
        with gr.Row():
            forget_mcq = gr.Textbox(label="forget_mcq", placeholder="builtin:demo?max_rows=100")
            retain_mcq = gr.Textbox(label="retain_mcq", placeholder="builtin:demo")
        base = gr.Textbox(label="base set (optional): the parts left empty come from it",
                          placeholder="builtin:demo, or preset:wmdp-bio@DIR")
        load_parts = gr.Button("Load composed data", variant="primary")

    @readable(args=LoadParts)
    def on_load_parts(session: UISession, fc: str | None, rc: str | None, fm: str | None, rm: str | None,
                      base_spec: str | None):
        ensure_ready(session, config, need_data=False)
        parts = {"forget_corpus": fc, "retain_corpus": rc, "forget_mcq": fm, "retain_mcq": rm}
        parts = {k: (v or "").strip() or None for k, v in parts.items()}
        base_spec = (base_spec or "").strip() or None

        def confine(path: str) -> str:
            """The --data-dir rule for every local path (files, preset folders); a refusal names its part."""
            try:
                return confine_data_spec(path, config)
            except UserError as exc:
                where = next((k for k, v in parts.items() if v and path in v), "base")
                raise UserError(f"{where}: {exc}") from None

        # Typed paths are confined to --data-dir (the operator's files, no upload cap, as the single load).
        session.load_parts(**parts, base=base_spec, confine=confine)
        return session, public(summary_markdown(session)), preview_rows(session), public(session.data_summary())

    api_out = gr.JSON(visible=False)
    load.click(on_load, [state, builtin, hf, upload], [state, summary, preview, api_out], api_name="load_data")
    load_parts.click(on_load_parts, [state, forget_corpus, retain_corpus, forget_mcq, retain_mcq, base],
                     [state, summary, preview, api_out], api_name="load_parts")
    return {"summary": summary, "preview": preview}
