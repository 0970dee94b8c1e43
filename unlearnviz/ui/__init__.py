"""The Gradio dashboard: one module per tab, no science here."""
