"""Tiny models built from configs, sample galleries and a scripted LLM, for tests and docs.

Everything here goes through the same loading code users run (open_clip ``local-dir:``,
transformers ``from_pretrained``), so a test that passes on these exercises the real paths.
"""
