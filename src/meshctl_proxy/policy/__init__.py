"""What to do with a request: routers, route policy, balancing, retries, authorization.

``router`` defines the router seam and the direct routers, ``traffic_router``
the outbound router over the destination service; ``route_policy`` compiles a
ServiceProfile (``service_profile``, the model the CLI shares) into route
matching and classification; ``balance`` picks endpoints, ``retry_budget``
bounds retries, ``authorization`` decides who may talk to this pod and ``authorizing_router``
applies that decision around the inbound router.
"""
