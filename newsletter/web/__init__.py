"""The web app around the emails: one-click unsubscribe, double opt-in sign-up, the
archive, the SendGrid event webhook, and the editors' live preview. ``app.create_app``
builds it from the settings; ``server.serve`` runs it on uvicorn.
"""
