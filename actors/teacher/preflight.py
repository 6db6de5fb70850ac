"""The preflight of an `openai` teacher: one HTTP call before a phase sends it anything.

GET /models through the openai client; when the server lists models, the configured one must be
among them (a model it does not list is tried with a one-token request, since some servers, like
llama.cpp without an alias, list a file name yet answer to any model name). A server without
/models gets the one-token request instead. Any answer other than 401/403/404 means the server is
there: a 429 or a 5xx is left to the retries of the phase itself.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from tutorloop.actors.teacher.health import (
    TeacherUnavailable,
    client_options,
    failure_cause,
    where,
)
from tutorloop.loop.core.teacher_config import TeacherEndpoint, TeacherSection

log = logging.getLogger("tutorloop.teacher")

MODELS_SHOWN = 8  # a longer model list is cut to this many names in the message


def check_teacher(endpoint: TeacherEndpoint, cfg: TeacherSection) -> None:
    """Raises TeacherUnavailable (one line: teacher, address, cause) unless `endpoint` can be asked."""
    if endpoint.backend != "openai":
        return
    import openai

    # Listing models is cheap: a server that takes longer than this to do it is not ready to teach.
    timeout_s = min(cfg.timeout_s, cfg.preflight_timeout_s)
    client = openai.OpenAI(**client_options(endpoint, timeout_s))
    try:
        try:
            offered = [model.id for model in client.models.list()]
        except (openai.APIConnectionError, openai.APIStatusError) as exc:
            _stop_on(exc, endpoint, timeout_s)
            offered = None  # no /models here (404) or a server busy with it: the one-token request decides
        except (openai.APIResponseValidationError, ValueError, TypeError):
            offered = None  # /models answered something that is not a model list
        if offered is None or endpoint.model not in offered:
            _one_token(client, endpoint, cfg, offered)
    finally:
        client.close()
    log.info("%s: preflight passed (model %s)", where(endpoint), endpoint.model)


def _one_token(client: Any, endpoint: TeacherEndpoint, cfg: TeacherSection, offered: list[str] | None) -> None:
    """A one-token request for the configured model; raises on what shows the model cannot be asked."""
    import openai

    try:
        if endpoint.api == "chat":
            client.chat.completions.create(
                model=endpoint.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=1, timeout=cfg.timeout_s
            )
        else:
            client.completions.create(model=endpoint.model, prompt="Hi", max_tokens=1, timeout=cfg.timeout_s)
    except (openai.APIConnectionError, openai.APIStatusError) as exc:
        _stop_on(exc, endpoint, cfg.timeout_s)
        if exc.status_code == 404:  # only an HTTP answer gets this far
            raise TeacherUnavailable(_unknown_model(endpoint, offered)) from None
        # any other answer (400, 429, 5xx): the server is there; the phase's own retries deal with it


def _stop_on(exc: Exception, endpoint: TeacherEndpoint, timeout_s: float) -> None:
    """TeacherUnavailable for a connection failure or a refused key; any other HTTP answer passes."""
    import openai

    if isinstance(exc, openai.APIConnectionError):  # timeouts included
        raise TeacherUnavailable(f"{where(endpoint)}: {failure_cause(exc, timeout_s)}") from None
    if isinstance(exc, openai.APIStatusError) and exc.status_code in (401, 403):
        raise TeacherUnavailable(_refused(endpoint, exc.status_code)) from None


def _refused(endpoint: TeacherEndpoint, status: int) -> str:
    """401/403 in one line; names the environment variable, never the key."""
    variable = endpoint.api_key_env
    if not os.environ.get(variable):
        return f"{where(endpoint)}: HTTP {status}, the server wants an API key and ${variable} is not set"
    verb = "refused" if status == 401 else "has no access with"
    return f"{where(endpoint)}: HTTP {status}, the server {verb} the API key in ${variable}"


def _unknown_model(endpoint: TeacherEndpoint, offered: list[str] | None) -> str:
    if offered is None:
        return (
            f"{where(endpoint)}: HTTP 404 for model '{endpoint.model}': unknown model, or base_url is not "
            f"the API's root (it usually ends in /v1)"
        )
    if not offered:
        return f"{where(endpoint)}: unknown model '{endpoint.model}'; the server lists no models"
    shown = ", ".join(offered[:MODELS_SHOWN]) + (
        f", ... ({len(offered)} in all)" if len(offered) > MODELS_SHOWN else ""
    )
    return f"{where(endpoint)}: unknown model '{endpoint.model}'; the server offers: {shown}"
