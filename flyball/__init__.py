"""flyball: telemetry and control plane for LLM calls.

The sub-packages live in the repository's top-level folders (``schemas/``, ``producers/``,
``stream_processors/``, ``control_plane/``) and are mapped under this namespace so that a
product service installing the shim gets no generic top-level module names.
"""

__version__ = "0.1.0"
