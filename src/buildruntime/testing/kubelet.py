"""The kubelet of the one fake node: pod workers, image pulls, container starts, restarts
and kills, status updates and the Kubernetes events that go with them.

What it mimics, from ``pkg/kubelet`` (1.33):

- per container, in spec order: the image manager (:mod:`.imagepull`: ``Pulled`` "already present",
  ``Pulling``/``Pulled`` "Successfully pulled ... in ...", ``Failed`` with
  ``ErrImagePull`` then ``ImagePullBackOff`` under an exponential back-off,
  ``ErrImageNeverPull``, ``InvalidImageName``), then ``Created`` and ``Started``;
- a running container whose image is patched is killed ("Container x definition
  changed, will be restarted") and started again with the new image, whatever the
  restart policy; an exited container is only restarted when the restart policy says so
  (never under ``Never``, not even for a new image), with ``CrashLoopBackOff`` in
  between;
- deletion: ``Killing`` "Stopping container x" for each running container, SIGTERM then
  SIGKILL after the grace period, a final status with a terminal phase, then the pod's
  removal;
- every status change is its own write (its own resourceVersion); unchanged statuses are
  not written, as the status manager skips them.

Time is scaled down: back-offs start at 0.2 s and stop growing at 2 s (the real ones are
10 s and 5 min).
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
from anyio.abc import TaskGroup

from buildruntime.cluster.port import ApiError, NotFoundError
from buildruntime.images import normalize_image
from buildruntime.testing import objects
from buildruntime.testing.apiserver import DELETED, APIServer
from buildruntime.testing.environment import (
    ConfigError,
    SecretLookup,
    command_line,
    container_env,
    process_env,
)
from buildruntime.testing.events import WARNING, EventRecorder
from buildruntime.testing.imagepull import Backoff, ImageManager, go_duration
from buildruntime.testing.imagestore import ImageStore, registry_host
from buildruntime.testing.logs import ContainerLog
from buildruntime.testing.objects import JSON
from buildruntime.testing.podstatus import (
    TERMINAL_PHASES,
    ContainerRecord,
    conditions,
    container_status,
    phase,
)
from buildruntime.testing.process import Instance, parse_quantity
from buildruntime.testing.rootfs import NodeVolumes, PodRoot
from buildruntime.testing.tasks import Notifier, SystemTasks

SYNC_AFTER_FAILURE = 0.1
PERIODIC_SYNC = 1.0
HOST_IP = "10.89.0.2"


class Kubelet:
    """The node agent: one :class:`PodWorker` per pod bound to this node."""

    def __init__(
        self,
        server: APIServer,
        recorder: EventRecorder,
        tasks: SystemTasks,
        *,
        node_name: str,
        images: ImageStore,
        pull_delay: float,
    ) -> None:
        self.server = server
        self.recorder = recorder
        self.tasks = tasks
        self.node_name = node_name
        self.images = images
        self.pull_delay = pull_delay
        self.private_registries: dict[str, tuple[str, str]] = {}
        """Registry hosts that serve their images only with these credentials."""
        self.secret_data: SecretLookup | None = None
        """Reads the Secrets a container's env refers to (set by the cluster)."""
        self.volumes = NodeVolumes()
        """The node's directories for claims and hostPaths, kept across pods."""
        self.workers: dict[str, PodWorker] = {}
        self._next_ip = 0

    def is_pause(self, image: str) -> bool:
        return self.images.is_pause(image)

    def has_image(self, image: str) -> bool:
        # A private registry serves every image name (to the pods it lets in).
        return self.images.has(image) or registry_host(image) in self.private_registries

    def allocate_ip(self) -> str:
        self._next_ip += 1
        return f"10.244.{(self._next_ip // 250) % 256}.{self._next_ip % 250 + 2}"

    def observe(self, resource: str, type: str, obj: JSON, previous: JSON | None) -> None:
        if resource != "pods":
            return
        uid = obj["metadata"]["uid"]
        worker = self.workers.get(uid)
        if worker is not None:
            # Wake the pod worker for what it acts on (spec, deletion), not for the
            # status it writes itself.
            if (
                type == DELETED
                or previous is None
                or obj["spec"] != previous["spec"]
                or obj["metadata"].get("deletionTimestamp")
                != previous["metadata"].get("deletionTimestamp")
            ):
                worker.notifier.notify()
            return
        if (
            type != DELETED
            and obj["spec"].get("nodeName") == self.node_name
            and obj["status"].get("phase") not in TERMINAL_PHASES
        ):
            worker = PodWorker(self, obj)
            self.workers[uid] = worker
            self.tasks.spawn(worker.run, name=f"fake-kubelet-{obj['metadata']['name']}")

    def worker_for(self, namespace: str, name: str) -> PodWorker | None:
        pod = self.server.get("pods", namespace, name)
        if pod is None:
            return None
        return self.workers.get(pod["metadata"]["uid"])

    async def kill_container(
        self, namespace: str, pod: str, container: str, reason: str, exit_code: int
    ) -> None:
        if self.server.get("pods", namespace, pod) is None:
            raise NotFoundError(f'pods "{pod}" not found')
        worker = self.worker_for(namespace, pod)
        record = None if worker is None else worker.records.get(container)
        current = None if record is None else record.current
        if current is None or current.terminated:
            raise ValueError(f'container "{container}" in pod "{pod}" is not running')
        await current.force_kill(reason, exit_code)

    def log_for(self, namespace: str, pod_name: str, container: str) -> ContainerLog:
        """The log a request for ``container`` reads (``validateContainerLogStatus``)."""
        pod = self.server.get("pods", namespace, pod_name)
        if pod is None:
            raise NotFoundError(f'pods "{pod_name}" not found')
        names = [c["name"] for c in pod["spec"]["containers"]]
        if container not in names:
            raise ApiError(
                400, "BadRequest", f"container {container} is not valid for pod {pod_name}"
            )
        if not pod["spec"].get("nodeName"):
            empty = ContainerLog()
            empty.finish()
            return empty
        worker = self.workers.get(pod["metadata"]["uid"])
        record = None if worker is None else worker.records.get(container)
        if record is not None:
            current = record.current
            if current is not None and current.state != "created":
                return current.log
            if len(record.instances) > 1:
                return record.instances[-2].log
        reason = "ContainerCreating"
        if record is not None and record.waiting is not None:
            reason = record.waiting[0]
        if reason == "ErrImagePull":
            why = "image can't be pulled"
        elif reason == "ImagePullBackOff":
            why = "trying and failing to pull image"
        else:
            why = reason
        raise ApiError(
            400,
            "BadRequest",
            f'container "{container}" in pod "{pod_name}" is waiting to start: {why}',
        )


class PodWorker:
    """Runs one pod from binding to removal."""

    def __init__(self, kubelet: Kubelet, pod: JSON) -> None:
        self.kubelet = kubelet
        self.server = kubelet.server
        self.namespace: str = pod["metadata"]["namespace"]
        self.name: str = pod["metadata"]["name"]
        self.uid: str = pod["metadata"]["uid"]
        self.records = {c["name"]: ContainerRecord(c["name"]) for c in pod["spec"]["containers"]}
        self.images = ImageManager(
            has_image=kubelet.has_image,
            pull_delay=kubelet.pull_delay,
            post=self._event,
            refused=self._pull_refused,
        )
        self.crash_backoff: dict[str, Backoff] = {}
        self.notifier = Notifier()
        self.terminating = False
        self.ip = kubelet.allocate_ip()
        self.start_time = objects.api_time()
        self.grace_seconds = float(pod["spec"].get("terminationGracePeriodSeconds", 30))
        self._procs: TaskGroup | None = None
        self.root: PodRoot | None = None
        """The pod's stand-in for ``/``: made when the worker starts, removed with the pod."""
        self._status_fields: JSON | None = None
        self.failed: tuple[str, str] | None = None
        """The pod failed as a whole (reason, message): its active deadline passed."""

    # ------------------------------------------------------------- helpers
    def pod(self) -> JSON | None:
        """The stored pod, if it is still this pod (same uid)."""
        pod = self.server.get("pods", self.namespace, self.name)
        if pod is None or pod["metadata"]["uid"] != self.uid:
            return None
        return pod

    def _event(
        self, reason: str, message: str, *, container: str | None = None, warning: bool = False
    ) -> None:
        pod = self.pod()
        if pod is not None:
            self.kubelet.recorder.record(
                pod, reason, message, type=WARNING if warning else "Normal", container=container
            )

    def write_status(self, *, final: bool = False) -> None:
        """Generate the pod status and write it when it changed."""
        pod = self.pod()
        if pod is None:
            return
        spec = pod["spec"]
        policy = spec.get("restartPolicy", "Always")
        records = [self.records[c["name"]] for c in spec["containers"]]
        statuses = [
            container_status(r, c, policy) for r, c in zip(records, spec["containers"], strict=True)
        ]
        old: JSON = pod.get("status", {})
        new_phase = phase(statuses, records, policy, terminal=final)
        if final and new_phase not in TERMINAL_PHASES:
            new_phase = "Failed"
        if self.failed is not None:
            new_phase = "Failed"
        if old.get("phase") in TERMINAL_PHASES:
            new_phase = old["phase"]
        status: JSON = {
            "phase": new_phase,
            "conditions": conditions(
                old.get("conditions", []),
                statuses,
                new_phase,
                sandbox=not final and new_phase not in TERMINAL_PHASES,
            ),
            "hostIP": HOST_IP,
            "hostIPs": [{"ip": HOST_IP}],
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "startTime": self.start_time,
            "containerStatuses": statuses,
            "qosClass": old.get("qosClass", "BestEffort"),
        }
        if self.failed is not None:
            status["reason"], status["message"] = self.failed
        if status == old:
            return
        updated = objects.evolve(pod, status=status)
        if self._status_fields is None:
            self._status_fields = objects.fields_v1({"status": status})
        objects.record_manager(updated, "kubelet", {}, "status", fields=self._status_fields)
        self.server.write("pods", updated)

    def _instance_changed(self, instance: Instance) -> None:
        if instance.running:
            self._event("Started", f"Started container {instance.name}", container=instance.name)
        elif instance.terminated and instance.reason == "StartError":
            self._event(
                "Failed", f"Error: {instance.message}", container=instance.name, warning=True
            )
        if not self.terminating:
            self.write_status()
        self.notifier.notify()

    # ------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        self.root = PodRoot(self.namespace, self.name)
        pod = self.pod()
        if pod is not None:
            self._mount_volumes(pod)
        try:
            async with anyio.create_task_group() as procs:
                self._procs = procs
                await self._lifecycle()
        finally:
            self.kubelet.workers.pop(self.uid, None)
            self.root.remove()

    async def _lifecycle(self) -> None:
        if self.pod() is None:
            return
        self.write_status()
        async with anyio.create_task_group() as loops:
            loops.start_soon(self._sync, loops)
            deadline = (self.pod() or {}).get("spec", {}).get("activeDeadlineSeconds")
            if deadline is not None:
                loops.start_soon(self._active_deadline, float(deadline))
            await self._wait_for_deletion()
            loops.cancel_scope.cancel()
        await self._terminate()

    async def _active_deadline(self, seconds: float) -> None:
        """``activeDeadlineSeconds``, counted from the pod's start on the node: then the
        kubelet kills every container (with the grace period) and fails the pod as a
        whole, ``DeadlineExceeded``; the pod stays in the API until it is deleted."""
        await anyio.sleep(seconds)
        message = "Pod was active on the node longer than the specified deadline"
        self.failed = ("DeadlineExceeded", message)
        self._event("DeadlineExceeded", message, warning=True)
        pod = self.pod()
        grace = self._grace(pod) if pod is not None else self.grace_seconds
        live = [r.current for r in self.records.values() if r.current and not r.current.terminated]
        async with anyio.create_task_group() as stops:
            for instance in live:
                stops.start_soon(instance.stop, grace)
        self.write_status(final=True)
        self.notifier.notify()

    async def _wait_for_deletion(self) -> None:
        while True:
            pod = self.pod()
            if pod is None or pod["metadata"].get("deletionTimestamp"):
                return
            await self.notifier.wait()

    async def _sync(self, loops: TaskGroup) -> None:
        """The first SyncPod starts the containers one by one, in spec order; then each
        container has a loop of its own."""
        pod = self.pod()
        if pod is None:
            return
        for container in pod["spec"]["containers"]:
            record = self.records[container["name"]]
            if not await self._start(record):
                self._after_failed_start(record)
        for container in pod["spec"]["containers"]:
            loops.start_soon(self._container_loop, container["name"])
            if (container.get("readinessProbe") or {}).get("tcpSocket"):
                loops.start_soon(self._readiness_loop, container["name"])

    def _pull_refused(self, image: str) -> str | None:
        """A private registry's answer to this pod's pull, in containerd 2's words: no
        credentials for its host in the pod's ``imagePullSecrets`` (as the kubelet hands
        them to the container runtime) is "pull access denied", wrong ones a 401."""
        host = registry_host(image)
        wanted = self.kubelet.private_registries.get(host)
        if wanted is None:
            return None
        pod = self.pod() or {}
        offered: tuple[str, str] | None = None
        for ref in pod.get("spec", {}).get("imagePullSecrets") or []:
            data = (
                self.kubelet.secret_data(self.namespace, ref.get("name", ""))
                if (self.kubelet.secret_data)
                else None
            )
            config = json.loads((data or {}).get(".dockerconfigjson") or "{}")
            auth = (config.get("auths") or {}).get(host)
            if auth:
                offered = (auth.get("username"), auth.get("password"))
                if offered == wanted:
                    return None
        normalized = normalize_image(image)
        prefix = (
            f'rpc error: code = Unknown desc = failed to pull and unpack image "{normalized}": '
            "failed to resolve image: "
        )
        if offered is None:
            return (
                prefix + "pull access denied, repository does not exist or may require "
                "authorization: authorization failed: no basic auth credentials"
            )
        name = normalized.removeprefix(f"{host}/")
        repository, _, reference = name.partition("@") if "@" in name else name.rpartition(":")
        return (
            prefix + f"unexpected status from HEAD request to "
            f"https://{host}/v2/{repository}/manifests/{reference}: 401 Unauthorized"
        )

    async def _readiness_loop(self, name: str) -> None:
        """The prober's readiness worker for a ``tcpSocket`` probe: every period, while
        the container runs, connect to its port (the pod's network is the host's here);
        the result is the status's ``ready``, reset by a restart. A failure is an
        ``Unhealthy`` Warning event, as the kubelet posts one."""
        record = self.records[name]
        while True:
            pod = self.pod()
            if pod is None or pod["metadata"].get("deletionTimestamp"):
                return
            probe = self._spec_of(pod, name).get("readinessProbe") or {}
            port = int((probe.get("tcpSocket") or {}).get("port", 0))
            current = record.current
            if current is not None and current.running and port:
                if await _accepts_connections(port):
                    if record.ready_instance is not current:
                        record.ready_instance = current
                        self.write_status()
                else:
                    self._event(
                        "Unhealthy",
                        f"Readiness probe failed: dial tcp {self.ip}:{port}: connect: "
                        "connection refused",
                        container=name,
                        warning=True,
                    )
            await anyio.sleep(float(probe.get("periodSeconds", 10)))

    def _spec_of(self, pod: JSON, name: str) -> JSON:
        for container in pod["spec"]["containers"]:
            if container["name"] == name:
                spec: JSON = container
                return spec
        raise LookupError(name)

    def _after_failed_start(self, record: ContainerRecord) -> None:
        pod = self.pod()
        if pod is None:
            return
        if record.restarting:
            # Killed for a new image that then failed to start: under Never the kubelet
            # will not try again (the exited container is not restarted).
            record.restarting = False
        self.write_status()

    async def _container_loop(self, name: str) -> None:
        record = self.records[name]
        retry_at = anyio.current_time() + SYNC_AFTER_FAILURE
        pod = self.pod()
        failed_image = self._spec_of(pod, name)["image"] if pod is not None else ""
        while True:
            pod = self.pod()
            if pod is None or pod["metadata"].get("deletionTimestamp") or self.failed:
                return
            policy = pod["spec"].get("restartPolicy", "Always")
            spec = self._spec_of(pod, name)
            current = record.current
            now = anyio.current_time()
            if current is not None and current.running:
                if spec["image"] != current.image:
                    self._event(
                        "Killing",
                        f"Container {name} definition changed, will be restarted",
                        container=name,
                    )
                    record.restarting = True
                    await current.stop(self._grace(pod))
                    retry_at = now
                    continue
                await self.notifier.wait()
                continue
            if current is not None and current.state == "created":
                await self.notifier.wait()
                continue
            if not record.will_restart(policy):
                await self.notifier.wait()
                continue
            if record.waiting is not None and now < retry_at and spec["image"] == failed_image:
                # The last start failed: try again at the next sync (at once for a new
                # image: a pod update triggers a sync).
                await self.notifier.wait(retry_at - now)
                continue
            if current is not None and current.terminated and not record.restarting:
                # An exited container to restart: CrashLoopBackOff in between.
                backoff = self.crash_backoff.setdefault(name, Backoff())
                if backoff.active(now):
                    message = (
                        f"back-off {go_duration(backoff.duration)} restarting failed "
                        f"container={name} pod={self.name}_{self.namespace}({self.uid})"
                    )
                    if record.waiting != ("CrashLoopBackOff", message):
                        record.waiting = ("CrashLoopBackOff", message)
                        self._event(
                            "BackOff",
                            f"Back-off restarting failed container {name} in pod "
                            f"{self.name}_{self.namespace}({self.uid})",
                            container=name,
                            warning=True,
                        )
                        self.write_status()
                    await self.notifier.wait(backoff.until - now)
                    continue
                backoff.next(now)
            if await self._start(record):
                continue
            self._after_failed_start(record)
            retry_at = self._next_retry(record)
            failed_image = spec["image"]

    def _next_retry(self, record: ContainerRecord) -> float:
        now = anyio.current_time()
        reason = record.waiting[0] if record.waiting else ""
        if reason == "ErrImagePull":
            return now + SYNC_AFTER_FAILURE
        if reason == "ImagePullBackOff":
            pod = self.pod()
            image = self._spec_of(pod, record.name)["image"] if pod else ""
            until = self.images.backoff_until(image) or now
            return min(max(until, now + SYNC_AFTER_FAILURE), now + PERIODIC_SYNC)
        return now + PERIODIC_SYNC

    def _grace(self, pod: JSON) -> float:
        meta, spec = pod["metadata"], pod["spec"]
        if meta.get("deletionGracePeriodSeconds") is not None:
            return float(meta["deletionGracePeriodSeconds"])
        return float(spec.get("terminationGracePeriodSeconds", 30))

    # --------------------------------------------------------------- start
    async def _start(self, record: ContainerRecord) -> bool:
        """``startContainer``: pull, create, start. False when the image step failed."""
        pod = self.pod()
        if pod is None:
            return False
        spec = self._spec_of(pod, record.name)
        if not await self.images.ensure(record, spec):
            return False
        pod = self.pod()
        if pod is None or pod["metadata"].get("deletionTimestamp") or self._procs is None:
            return False
        image = spec["image"]
        instance = Instance(
            name=record.name,
            image=image,
            reported_image=self.kubelet.images.reported_name(image),
            image_id=self.kubelet.images.image_id(image),
            pause=self.kubelet.is_pause(image),
        )
        instance.on_change = self._instance_changed
        record.instances.append(instance)
        record.waiting = None
        record.restarting = False
        self._event("Created", f"Created container: {record.name}", container=record.name)
        if instance.pause:
            problem = self.kubelet.images.placeholder_start_problem(
                image, [str(word) for word in spec.get("command") or []]
            )
            if problem is not None:
                instance.start_failed(problem)
            else:
                instance.start_pause()
            return True
        root = self.root
        assert root is not None  # made before the first sync
        try:
            kubelet_env = container_env(pod, spec, self.kubelet.secret_data)
        except ConfigError as error:
            # As the kubelet: the container is not created; retried at the next sync.
            record.waiting = ("CreateContainerConfigError", str(error))
            self._event("Failed", f"Error: {error}", container=record.name, warning=True)
            return False
        env = process_env(pod, self._mapped_paths(spec, kubelet_env), home=str(root.home))
        argv = command_line(spec, self.kubelet.images.config(image), kubelet_env)
        working_dir = spec.get("workingDir")
        try:
            cwd = root.working_dir(working_dir)
        except OSError as error:
            # runc creates a missing working directory, and fails when it cannot.
            instance.start_failed(
                f'error during container init: chdir to cwd ("{working_dir or "/"}") set in '
                f"config.json failed: {error.strerror.lower() if error.strerror else error}"
            )
            return True
        limit = ((spec.get("resources") or {}).get("limits") or {}).get("memory")
        self._procs.start_soon(
            self._run_instance,
            instance,
            argv,
            env,
            str(cwd),
            None if limit is None else parse_quantity(limit),
        )
        await instance.wait_started()
        return True

    def _mapped_paths(self, spec: JSON, env: dict[str, str]) -> dict[str, str]:
        """``env`` with each value that is exactly a mount path or the working directory
        given as its host path (see :mod:`.rootfs`)."""
        root = self.root
        assert root is not None
        paths = {m.get("mountPath") for m in spec.get("volumeMounts") or []}
        paths.add(spec.get("workingDir"))
        mapped = dict(env)
        for name, value in env.items():
            if value in paths and value.startswith("/"):
                host = root.host_path(value)
                if host is not None:
                    mapped[name] = str(host)
        return mapped

    def _mount_volumes(self, pod: JSON) -> None:
        """Give each claim and hostPath volume's mount paths the node's directory."""
        root = self.root
        assert root is not None
        sources: dict[str, Path] = {}
        for volume in pod["spec"].get("volumes") or []:
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            host = (volume.get("hostPath") or {}).get("path")
            if claim:
                sources[volume["name"]] = self.kubelet.volumes.claim(self.namespace, claim)
            elif host:
                sources[volume["name"]] = self.kubelet.volumes.host_path(host)
        for container in pod["spec"]["containers"]:
            for mount in container.get("volumeMounts") or []:
                source = sources.get(mount.get("name", ""))
                if source is not None and mount.get("mountPath"):
                    root.mount(mount["mountPath"], source)

    async def _run_instance(
        self,
        instance: Instance,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        memory_limit: float | None,
    ) -> None:
        await instance.run(argv, env=env, cwd=cwd, memory_limit=memory_limit)

    # ----------------------------------------------------------- terminate
    async def _terminate(self) -> None:
        """Kill what runs (Killing events, SIGTERM, SIGKILL after the grace period),
        write the final status, remove the pod."""
        self.terminating = True
        pod = self.pod()
        grace = self._grace(pod) if pod is not None else self.grace_seconds
        live = [
            record.current
            for record in self.records.values()
            if record.current is not None and not record.current.terminated
        ]
        for instance in live:
            if instance.running:
                self._event(
                    "Killing", f"Stopping container {instance.name}", container=instance.name
                )
        async with anyio.create_task_group() as stops:
            for instance in live:
                stops.start_soon(instance.stop, grace)
        for record in self.records.values():
            record.restarting = False
        if self.root is not None:
            # Gone by the time the pod is, as the kubelet cleans up a pod's volumes.
            self.root.remove()
        if self.pod() is not None:
            self.write_status(final=True)
            self.server.remove("pods", self.namespace, self.name)


async def _accepts_connections(port: int) -> bool:
    """Whether something listens on ``port`` of this host (the simulated pod's network)."""
    try:
        with anyio.fail_after(1.0):
            stream = await anyio.connect_tcp("127.0.0.1", port)
    except (OSError, TimeoutError):
        return False
    await stream.aclose()
    return True
