"""The cir demo: a Gradio page for composed search over a gallery (see ``docs/demo.md``)."""
