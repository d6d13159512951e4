"""Talking to the Kubernetes API: connecting, and the only calls lbcore ever makes.

lbcore needs exactly what kube-proxy's ``system:node-proxier`` ClusterRole grants:
``list``/``watch`` on services, endpointslices (discovery.k8s.io) and nodes, and
``create`` on events. Every request goes through ``KubeAPI``, which uses the official
``kubernetes`` client's typed calls but reads the raw JSON (``_preload_content=False``):
lbcore validates and converts the objects itself, with Kubernetes' own field names.

Connecting (``connect``), in this order:

1. ``source.kubeconfig`` (and ``source.context``) if given;
2. in-cluster: the pod's service account (``KUBERNETES_SERVICE_HOST`` and the token
   mounted under ``/var/run/secrets/kubernetes.io/serviceaccount``);
3. the default kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``), with ``source.context``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import SourceError

CONNECT_TIMEOUT = 10.0  # seconds to open a connection to the API server
LIST_TIMEOUT = 60.0  # seconds to wait for one page of a list
WATCH_READ_SLACK = 30.0  # read timeout of a watch = its server-side timeout + this
EVENT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Resource:
    """One watched collection, as the API names it."""

    plural: str
    api_version: str  # of the objects ("v1", "discovery.k8s.io/v1")
    kind: str
    namespaced: bool

    @property
    def path(self) -> str:
        group, _, version = self.api_version.rpartition("/")
        base = f"/apis/{group}/{version}" if group else f"/api/{version}"
        return f"{base}/{self.plural}"


SERVICES = Resource("services", "v1", "Service", True)
ENDPOINTSLICES = Resource("endpointslices", "discovery.k8s.io/v1", "EndpointSlice", True)
NODES = Resource("nodes", "v1", "Node", False)
RESOURCES = (SERVICES, ENDPOINTSLICES, NODES)


class ApiError(Exception):
    """A failed API call; ``status`` is the HTTP status (0: no response at all)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status

    @property
    def gone(self) -> bool:
        """410 Gone: the resourceVersion (or continue token) is too old: relist."""
        return self.status == 410


def connect(kubeconfig: str | None = None, context: str | None = None,
            environ: Mapping[str, str] | None = None) -> Any:
    """A configured ``kubernetes.client.ApiClient``. Raises SourceError."""
    from kubernetes import client, config  # lazy: heavy, and only this source needs it
    from kubernetes.config.config_exception import ConfigException

    environ = os.environ if environ is None else environ
    configuration = client.Configuration()
    try:
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig, context=context,
                                    client_configuration=configuration, persist_config=False)
        elif environ.get("KUBERNETES_SERVICE_HOST") and not context:
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(context=context, client_configuration=configuration,
                                    persist_config=False)
    except (ConfigException, OSError, ValueError, TypeError) as exc:
        where = kubeconfig or ("in-cluster service account"
                               if environ.get("KUBERNETES_SERVICE_HOST") and not context
                               else "default kubeconfig")
        raise SourceError(f"kubernetes: cannot configure the API client from {where}: "
                          f"{exc}") from None
    return client.ApiClient(configuration)


class WatchStream:
    """The events of one watch request, one JSON object per line, until it ends.

    ``close()`` may be called from another thread to end a blocked read at once.
    """

    def __init__(self, response: Any) -> None:
        self._response = response

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from urllib3.exceptions import HTTPError

        buffer = b""
        try:
            for chunk in self._response.stream(65536, decode_content=True):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield _event(line)
        except (HTTPError, OSError, ValueError) as exc:
            raise ApiError(f"watch stream broken: {type(exc).__name__}: {exc}") from None
        if buffer.strip():
            yield _event(buffer)

    def close(self) -> None:
        try:
            shutdown = getattr(self._response, "shutdown", None)
            if shutdown is not None:
                shutdown()
            self._response.close()
            self._response.release_conn()
        except Exception:
            pass


def _event(line: bytes) -> dict[str, Any]:
    try:
        event = json.loads(line)
    except ValueError as exc:
        raise ApiError(f"watch stream: not JSON: {exc}: {line[:200]!r}") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise ApiError(f"watch stream: not a watch event: {line[:200]!r}")
    return event


class KubeAPI:
    """The calls lbcore makes, on an ``ApiClient``. Thread-safe (urllib3's pool is)."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self.api_client = api_client
        self._core = client.CoreV1Api(api_client)
        self._discovery = client.DiscoveryV1Api(api_client)
        self._calls: dict[str, Callable[..., Any]] = {
            SERVICES.plural: self._core.list_service_for_all_namespaces,
            ENDPOINTSLICES.plural: self._discovery.list_endpoint_slice_for_all_namespaces,
            NODES.plural: self._core.list_node,
        }

    @property
    def host(self) -> str:
        return str(self.api_client.configuration.host)

    def list(self, resource: Resource, *, label_selector: str | None, limit: int,
             continue_token: str | None = None) -> dict[str, Any]:
        """One page of a consistent list (``resourceVersion`` unset: from etcd)."""
        kwargs: dict[str, Any] = {"limit": limit}
        if label_selector:
            kwargs["label_selector"] = label_selector
        if continue_token:
            kwargs["_continue"] = continue_token
        response = self._call(resource, kwargs, (CONNECT_TIMEOUT, LIST_TIMEOUT))
        try:
            data = json.loads(response.data)
        except ValueError as exc:
            raise ApiError(f"list {resource.plural}: response is not JSON: {exc}") from None
        finally:
            response.release_conn()
        if not isinstance(data, dict) or not isinstance(data.get("items", []), list):
            raise ApiError(f"list {resource.plural}: not a {resource.kind}List")
        return data

    def watch(self, resource: Resource, *, resource_version: str, label_selector: str | None,
              timeout_seconds: int) -> WatchStream:
        kwargs: dict[str, Any] = {
            "watch": True, "allow_watch_bookmarks": True,
            "resource_version": resource_version, "timeout_seconds": timeout_seconds,
        }
        if label_selector:
            kwargs["label_selector"] = label_selector
        response = self._call(resource, kwargs,
                              (CONNECT_TIMEOUT, timeout_seconds + WATCH_READ_SLACK))
        return WatchStream(response)

    def create_event(self, namespace: str, event: dict[str, Any]) -> None:
        from kubernetes import client
        from kubernetes.client.rest import ApiException
        from urllib3.exceptions import HTTPError

        # Clients generated with pydantic (v35+) want the model; older ones take the dict.
        from_dict = getattr(client.CoreV1Event, "from_dict", None)
        body = from_dict(event) if from_dict is not None else event
        try:
            self._core.create_namespaced_event(namespace, body,
                                               _request_timeout=(CONNECT_TIMEOUT, EVENT_TIMEOUT))
        except ApiException as exc:
            raise ApiError(f"create event: {exc.status} {exc.reason}", exc.status) from None
        except (HTTPError, OSError) as exc:
            raise ApiError(f"create event: {type(exc).__name__}: {exc}") from None

    def _call(self, resource: Resource, kwargs: dict[str, Any],
              timeout: tuple[float, float]) -> Any:
        from kubernetes.client.rest import ApiException
        from urllib3.exceptions import HTTPError

        verb = "watch" if kwargs.get("watch") else "list"
        try:
            return self._calls[resource.plural](
                **kwargs, _preload_content=False, _request_timeout=timeout)
        except ApiException as exc:
            raise ApiError(f"{verb} {resource.plural}: {exc.status} {exc.reason}: "
                           f"{_status_message(exc.body)}", exc.status or 0) from None
        except (HTTPError, OSError) as exc:
            raise ApiError(f"{verb} {resource.plural}: {type(exc).__name__}: {exc}") from None


def _status_message(body: Any) -> str:
    """The ``message`` of a ``Status`` response body, else the body itself (shortened)."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        status = json.loads(body) if isinstance(body, str) else None
    except ValueError:
        status = None
    if isinstance(status, dict) and isinstance(status.get("message"), str):
        return status["message"]
    return str(body or "")[:200]
