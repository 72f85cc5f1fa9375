"""Serving: interactive chat now; the OpenAI-compatible server arrives here."""
