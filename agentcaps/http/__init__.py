"""The agentcaps service: the HTTP API, forward-auth for gateways, ASGI middleware for apps.

A thin shell over the library (DESIGN.md, layer 4): `app.create_app` builds
the Starlette app; `middleware.AgentcapsMiddleware` protects another app with
the same decisions. Nothing in the core imports this package.
"""
