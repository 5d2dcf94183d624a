"""The built-in OpenAI-compatible endpoint for the trained checkpoint (`python -m firellava.serve`, stage `serve`)."""
