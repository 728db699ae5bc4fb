"""The destination service as the proxy sees it.

``resolution`` is the wire model shared with the control plane (standard
library only, imported by the CLI too); ``client`` keeps one watch per
authority.
"""
