"""Configuration: the official client's ``Configuration`` and the ``ApiClient`` built on it.

Kubernetes client behaviour handled here:

- ``kubernetes.config.load_kube_config`` and ``load_incluster_config`` write into the
  client's process-wide default ``Configuration`` unless handed one; we always hand them a
  private one, so two clusters (or a program's own use of the client) never share
  credentials or a host.
- ``load_kube_config`` writes refreshed credentials (exec plugins, OIDC) back to the
  kubeconfig file unless told not to (``persist_config``); we never write to it.
- The in-cluster loader reads the service account's token, CA and
  ``KUBERNETES_SERVICE_HOST``/``PORT``, and re-reads the token as it rotates.
- urllib3 retries connection errors on its own (3 times by default), and recent clients
  add optional client-go-style retries for GETs (``client_go_retries``): both are off,
  because the reflector and the runtime have their own backoff, and a hidden retry loop
  under them would multiply the delays and hide outages.
"""

from __future__ import annotations

import os
from typing import Any

import kubernetes.client
import kubernetes.config

_config_loaders: Any = kubernetes.config
"""The client's (untyped) kubeconfig and in-cluster loaders."""


def load_kubeconfig(path: str | None, context: str | None) -> Any:
    """An ApiClient for a kubeconfig's context, on a private ``Configuration``.

    ``path=None`` means ``$KUBECONFIG`` (read now, and possibly a list of files) or
    ``~/.kube/config``; ``context=None`` its current context.
    """
    if path is None:
        path = os.environ.get("KUBECONFIG") or "~/.kube/config"
    configuration = kubernetes.client.Configuration()
    _config_loaders.load_kube_config(
        config_file=path,
        context=context,
        client_configuration=configuration,
        persist_config=False,
    )
    return _new_api_client(configuration)


def load_in_cluster() -> Any:
    """An ApiClient for the pod's service account, on a private ``Configuration``."""
    configuration = kubernetes.client.Configuration()
    _config_loaders.load_incluster_config(client_configuration=configuration)
    return _new_api_client(configuration)


def _new_api_client(configuration: kubernetes.client.Configuration) -> Any:
    # Set before the ApiClient builds its pool manager from the configuration, so the
    # pools are born without retries (disable_urllib3_retries then finds nothing to do).
    configuration.retries = False
    return kubernetes.client.ApiClient(configuration)


def disable_urllib3_retries(api_client: Any) -> None:
    """Make urllib3 raise at the first failure instead of retrying on its own.

    For an ApiClient built elsewhere: the pool manager was built from the configuration
    when the ApiClient was made, so it is updated too; its existing pools (and their
    idle connections) are dropped so new ones pick the setting up.
    """
    configuration = api_client.configuration
    configuration.retries = False
    if hasattr(configuration, "client_go_retries"):
        configuration.client_go_retries = False
    pool_manager = getattr(getattr(api_client, "rest_client", None), "pool_manager", None)
    pool_kw = getattr(pool_manager, "connection_pool_kw", None)
    if (
        pool_manager is not None
        and isinstance(pool_kw, dict)
        and pool_kw.get("retries", None) is not False
    ):
        pool_kw["retries"] = False
        pool_manager.clear()


def server_url(api_client: Any) -> str:
    """The API server URL the ApiClient's configuration points at (``https://host:port``)."""
    host: str = api_client.configuration.host
    return host
