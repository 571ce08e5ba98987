"""The inference process: serves an agent's trained policies over the OpenAI protocol (manage.py serve_policies).

Its own process role, like qcluster: the web process never imports this package's modules (they load torch).
"""
