"""The Flask admin API: an application factory with injectable configuration."""

from __future__ import annotations

import logging

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from app import console, directory, dkim, metrics, openapi, ping, queue, users
from app.errors import register_error_handlers
from app.services import Services
from tmail import config as tmail_config
from tmail.config import Config

MAX_BODY = 1024 * 1024


class JSONProvider(DefaultJSONProvider):
    """tmail's clients expect ``application/json; charset=UTF-8`` and keys in our order."""

    mimetype = "application/json; charset=UTF-8"
    sort_keys = False
    ensure_ascii = False
    compact = True


def create_app(config: Config | None = None) -> Flask:
    config = config or tmail_config.load()
    app = Flask(__name__)
    app.json_provider_class = JSONProvider
    app.json = JSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.extensions["tmail"] = Services.build(config)
    register_error_handlers(app)
    app.url_map.converters["login"] = users.LoginConverter
    for blueprint in (ping.bp, users.bp, queue.bp, metrics.bp, openapi.bp):
        app.register_blueprint(blueprint)
    directory.init_app(app, config)
    dkim.init_app(app, config)
    console.init_app(app, config)
    app.after_request(metrics.count_request)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return app
