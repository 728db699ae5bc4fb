"""A commented ServiceProfile skeleton (``meshctl profile --template``) explaining every field.

The uncommented part is a valid profile (tests check it against the model and
the CRD); the commented lines show the other fields with their meaning.
"""

from __future__ import annotations

from meshctl_proxy.policy.service_profile import API_VERSION, KIND

_TEMPLATE = """\
# ServiceProfile for {service}.{namespace}: per-route metrics, retries and timeouts.
# Apply with `kubectl apply -f -`; check with `meshctl profile --validate FILE`.
apiVersion: {api_version}
kind: {kind}
metadata:
  # The name is the service's fully qualified DNS name: the authority clients
  # use is how the proxy finds this profile.
  name: {name}
  namespace: {namespace}
spec:
  # Routes, in order.  A request belongs to the first route whose condition
  # matches; requests matching none are counted under the default route.
  # Each route gets its own metrics (the rt_route label).
  routes:
  - name: GET /api/items/{{id}}
    # Which requests belong to the route.  Every field set must hold.
    condition:
      # The request method, compared exactly (methods are case-sensitive).
      method: GET
      # A regular expression that must match the WHOLE path (no query string):
      # '/api/items/[^/]*' matches /api/items/7 but not /api/items/7/parts.
      pathRegex: /api/items/[^/]*
      # Conditions combine with all (every one), any (at least one) and
      # not (a single condition that must not hold):
      # all:
      # - method: GET
      # - pathRegex: /api/items/[^/]*
      # any:
      # - method: GET
      # - method: HEAD
      # not:
      #   pathRegex: /api/items/internal
    # How responses are classified as success or failure.  The first class
    # whose condition matches decides; with none matching, 5xx is a failure.
    responseClasses:
    - condition:
        # An inclusive range of status codes (100..599).  With only min or
        # only max, just that one code.
        status:
          min: 500
          max: 599
        # Response conditions combine with all, any and not too:
        # not:
        #   status:
        #     min: 503
      isFailure: true
    # Failed requests may be retried: say so only when repeating the request
    # is harmless (GET, PUT, DELETE by HTTP's definition; RFC 9110 9.2.2).
    # isRetryable: true
    # Give up on a request after this long (Go-style duration: 100ms, 10s,
    # 1m30s).  Without it the proxy's default of 10s applies.
    # timeout: 300ms
  # How many retries clients may add, across all routes of this service:
  # retryBudget:
  #   # At most this many retries per original request (0.2 = 20% more load).
  #   retryRatio: 0.2
  #   # Retries allowed per second in any case, so low traffic can retry too.
  #   minRetriesPerSecond: 10
  #   # The window over which requests and retries are counted.
  #   ttl: 10s
  # Send a share of the traffic to other services (traffic split); weights
  # are relative, as Kubernetes quantities (1, 500m):
  # dstOverrides:
  # - authority: {service}-v2.{namespace}.svc.{cluster_domain}:80
  #   weight: 100m
  # - authority: {service}.{namespace}.svc.{cluster_domain}:80
  #   weight: 900m
"""


def render_template(*, service: str, namespace: str, cluster_domain: str) -> str:
    """The skeleton for one service; callers validate the names first (meshctl.profiles.profile_name)."""
    name = f"{service}.{namespace}.svc.{cluster_domain}"
    return _TEMPLATE.format(service=service, namespace=namespace, cluster_domain=cluster_domain, name=name,
                            api_version=API_VERSION, kind=KIND)
