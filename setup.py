"""The one compiled piece: meshctl_proxy.wire.http1, built from its own Python source.

Everything else about the package is in pyproject.toml.  Cython compiles
``src/meshctl_proxy/wire/http1.py`` with the types declared beside it in
``http1.pxd`` (an "augmenting .pxd"), so the HTTP/1 readers that llhttp calls
back for every header become extension types; the .py file stays plain
Python and is what runs wherever the extension was not built (the build is
optional: without a C compiler pip installs the pure-Python package).  Why and
how much: docs/performance.md, "meshctl-proxy data path".
"""

from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError:  # building without the declared build requirements (e.g. --no-build-isolation)
    extensions = []
else:
    extensions = cythonize(
        [Extension("meshctl_proxy.wire.http1", ["src/meshctl_proxy/wire/http1.py"], optional=True)],
        language_level=3,
        build_dir="build/cython",  # the generated C stays out of the package (and the wheel)
        compiler_directives={"binding": True},
    )

setup(ext_modules=extensions)
