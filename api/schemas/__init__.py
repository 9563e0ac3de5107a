"""Pydantic request and response shapes (OpenAI's, plus a `lorasp` extension object where useful)."""
