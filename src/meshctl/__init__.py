"""meshctl: a Python service mesh toolkit that mirrors the linkerd CLI.

Layers, arrows pointing one way (docs/architecture.md):

- ``meshctl.cli``: one module per command; parses flags, reads input, calls a
  core, renders.  Only this layer imports typer and rich.
- cores: ``meshctl.inject``, ``meshctl.profiles``, ``meshctl.install``,
  ``meshctl.healthcheck``, ``meshctl.viz``: pure functions over plain data.
- ``meshctl.k8s``: the one place that imports the ``kubernetes`` client.
- helpers: ``meshctl.yamlstream`` (multi-document YAML/JSON in, faithful text
  out), ``meshctl.errors``.

``meshctl`` may import ``meshctl_proxy.config`` (the proxy's configuration,
defined once) and the ServiceProfile model; the proxy never imports meshctl.
"""

__version__ = "0.1.0"
