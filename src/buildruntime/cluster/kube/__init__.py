"""The :class:`~buildruntime.cluster.port.Cluster` port on the official ``kubernetes`` client.

What we take from the client, and what we do not:

- We use its ``ApiClient``: configuration (kubeconfig, in-cluster service account,
  exec/OIDC token refresh hooks), TLS, auth headers, URL building
  (``param_serialize``) and the urllib3 transport (``call_api``).
- We do not use its generated ``CoreV1Api`` methods nor its model objects. In client
  37 those methods validate every argument with pydantic and turn a ``body`` dict into
  a ``V1Pod`` model first: a manifest with a field the client's models do not know
  (newer than the client) is rejected with ``extra_forbidden``, and building models is
  the slow part of the client (about 1,700 watch events/s for an 11 KiB pod, against
  about 14,000/s for bare ``json.loads``). ``read_namespaced_pod_log`` also lacks
  ``sinceTime`` (the OpenAPI spec omits it: kubernetes #108498, client python #1351),
  which log resumption needs. So every request goes through ``param_serialize`` +
  ``call_api`` with the same paths, headers and auth the generated methods use, bodies
  unread by the client (``preload_content=False``), and we decode JSON ourselves.
- We do not use ``watch.Watch().stream()``: it builds model objects, can hang forever
  on a silent connection (kubernetes-client/python #1148, #1402), and retries a 410
  once by itself. Here watches are plain JSON lines with a read timeout, and a 410 in
  any form is one :class:`~buildruntime.cluster.port.ExpiredError` for the reflector.
- We turn urllib3's retries off: the informer's reflector and the runtime have their
  own backoff, and a hidden retry loop under them would multiply the delays and hide
  outages.

The modules, one idea each, from the port down to the socket:

- :mod:`.cluster`: :class:`KubeCluster`, the port's calls as HTTP requests, and their
  accounting.
- :mod:`.config`: a kubeconfig or the in-cluster service account into a private
  ``Configuration``, and the ``ApiClient`` on it (urllib3 retries off).
- :mod:`.request`: one request through ``param_serialize`` + ``call_api``; a unary
  call's JSON body.
- :mod:`.errors`: the client's, urllib3's and the socket's failures, and error
  responses, as the port's exceptions.
- :mod:`.threads`: the bounded thread pool the blocking client runs on.
- :mod:`.stream`: the life cycle a watch and a log stream share; :mod:`.watch` and
  :mod:`.log_stream`: what each yields.
- :mod:`.connection`: one streamed response, closed safely from the event loop;
  :mod:`.chunked`: its chunked body read in large blocks.

Decoding a watch line into an event is not here: both implementations of the port
share it (:mod:`buildruntime.cluster.watch_events`).
"""

from .cluster import KubeCluster

__all__ = ["KubeCluster"]
