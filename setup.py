"""Build step for the one compiled module; everything else is in pyproject.toml.

``stream_processors/detectors/_windows.c`` is the per-event half of ``BatchWindows.add``,
compiled (see its header). It is optional: where no C compiler is found, the build goes on
without it and the worker runs the Python method (the same results, more CPU per event).
``make test`` builds it, and tests/unit/test_windows_native.py fails if it is missing there.
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("flyball.stream_processors.detectors._windows", ["stream_processors/detectors/_windows.c"],
              optional=True, extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                                 "-Wno-missing-field-initializers", "-Wno-cast-function-type"]),
])
