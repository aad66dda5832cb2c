"""Break it on purpose: fault scenarios over real processes (``make chaos``) and the soak
(``make soak``). See docs/RELIABILITY.md for what runs and what the last run measured."""
