"""Running the web app: decide the bind address and the secret key, then hand the app to
uvicorn. A server reachable from other machines needs the secret key from the
environment; on loopback a missing key is replaced by a random one for this run.
"""

from __future__ import annotations

import logging
import os
import secrets

from newsletter.config import Settings
from newsletter.errors import ConfigError
from newsletter.web.app import MIN_SECRET_LENGTH, create_app, editor_gate, secret_key
from newsletter.web.security import is_loopback

log = logging.getLogger("newsletter.web")


def bound_settings(settings: Settings, host: str | None, port: int | None) -> Settings:
    """``settings`` with ``--host`` / ``--port`` applied to ``web``."""
    web = settings.web.model_copy(update={k: v for k, v in (("host", host), ("port", port)) if v is not None})
    return settings.model_copy(update={"web": web})


def server_secret(settings: Settings) -> str:
    """The secret key; on loopback, an ephemeral one (with a warning) if none is set."""
    env = settings.web.secret_key_env
    if os.environ.get(env) or not is_loopback(settings.web.host):
        try:
            return secret_key(settings)
        except ConfigError as exc:
            if is_loopback(settings.web.host):
                raise
            raise ConfigError(
                f"refusing to serve on {settings.web.host}, reachable from other machines: {exc}"
            ) from None
    log.warning(
        "%s is not set: using a random secret key for this run (forms open before a restart "
        "will need a reload); set it for anything but local use",
        env,
    )
    return secrets.token_urlsafe(MIN_SECRET_LENGTH)


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Run the app on uvicorn until interrupted."""
    import uvicorn

    settings = bound_settings(settings, host, port)
    app = create_app(settings, secret=server_secret(settings))
    web = settings.web
    gate = editor_gate(settings)
    if not gate.configured:
        log.warning(
            "the editors' preview %s: neither %s nor a preview password is set",
            "is open to this machine only and needs them through a proxy" if gate.open_locally else "is disabled",
            web.preview.token_env or "a preview token",
        )
    log.info(
        "event=serving url=http://%s:%d public_url=%s",
        web.host if ":" not in web.host else f"[{web.host}]",
        web.port,
        settings.publication.public_url,
    )
    # access_log off: uvicorn's would print full paths, tokens included; RequestLog logs instead.
    # proxy_headers off: uvicorn would trust 127.0.0.1 (or $FORWARDED_ALLOW_IPS); the app
    # applies web.trusted_proxies itself, the same in tests as here.
    uvicorn.run(
        app,
        host=web.host,
        port=web.port,
        access_log=False,
        log_config=None,
        proxy_headers=False,
        server_header=False,
        lifespan="on",
        # open previews hold a long poll (web/preview.py): Ctrl-C does not wait them out
        timeout_graceful_shutdown=2,
    )
