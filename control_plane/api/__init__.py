"""HTTP routes, one module per audience: finance (spend, prices), sre (alerts, directives,
actions, policies), admin (keys). Each module has ``register(app, deps, auth)``."""
