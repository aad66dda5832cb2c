"""Integrations with tools a team already runs: ``flyball.integrations.litellm`` (LiteLLM SDK
callback and proxy hook, the ``litellm`` extra)."""
