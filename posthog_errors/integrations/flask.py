"""``report_flask_exceptions``: the exceptions Flask turns into 500 responses itself.

Put ``WSGIMiddleware`` around ``app.wsgi_app`` for the IDs and details of every event in a
request; this reports what Flask handles (its ``got_request_exception`` signal)."""

from __future__ import annotations

from typing import Any

from posthog_errors.integrations._requests import RequestReporter
from posthog_errors.integrations.wsgi import watch_flask, wsgi_properties

__all__ = ["report_flask_exceptions"]


def report_flask_exceptions(
    app: Any,
    *,
    client: Any = None,
    capture_ip: bool = False,
    environment: str | None = None,
    service: str | None = None,
) -> None:
    """Report the exceptions Flask turns into 500 responses, with the request's IDs.

    Connects to ``flask.got_request_exception``, which Flask sends while the request (and
    so the binding of a ``WSGIMiddleware`` around it) is still active. The report carries
    the request's details (``$ip`` only with ``capture_ip=True``) even without the
    middleware; the IDs and the details of other events come from the middleware.
    ``environment`` and ``service`` are sent with these reports (over ``install()``'s).
    """
    from flask import got_request_exception, request

    requests = RequestReporter(
        client,
        None,
        "flask.got_request_exception",
        capture_ip,
        environment=environment,
        service=service,
    )
    watch_flask()

    def posthog_errors_flask_exception(sender: Any, exception: BaseException, **extra: Any) -> None:
        properties = requests.details(wsgi_properties(request.environ, requests.capture_ip))
        requests.report(exception, properties)

    got_request_exception.connect(posthog_errors_flask_exception, app, weak=False)
