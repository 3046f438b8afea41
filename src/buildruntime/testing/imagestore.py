"""The node's image store, as containerd's CRI image service presents it to the kubelet.

In the simulation an image is a name plus, optionally, the two fields of its config a
container runtime reads to build a command line (:class:`ImageConfig`). What it models:

- presence: a set of images, or every valid reference (``images=None``) but those of a
  registry under ``.invalid``, a name that never resolves (RFC 6761), so that a real
  node could never pull them either; the pause image, each image with a config and each
  tag of an aliased image are always present;
- identity: an image has one digest whatever tag names it, so ``imageID`` (a repo digest,
  ``<repository>@sha256:<64 hex>``) is the same for an image and its aliases;
- the name a container status reports: containerd answers ``ContainerStatus`` with the
  image's first repo tag, so on a node where ``localhost/pause:3.10`` is also tagged
  ``docker.io/kubernetes/pause:latest``, a container started from either name is
  reported under the alias. ``image_aliases`` maps the tag a pod names to the one
  reported; images without an alias are reported in normal form;
- placeholders: the pause image is one binary that runs as itself only, so a container
  on it with a ``command`` cannot start; buildruntime's placeholder image (deploy/
  placeholder) has that binary at every path of
  :data:`~buildruntime.launch.PLACEHOLDER_PATHS` too, so it starts as any of them. Both
  run nothing: they sleep until stopped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from buildruntime.images import image_problem, normalize_image
from buildruntime.launch import PLACEHOLDER_PATHS
from buildruntime.testing import objects


def _words(field: str, value: Sequence[str]) -> tuple[str, ...]:
    # A bare string is a list of characters to Python, never what the caller meant.
    if isinstance(value, str) or not all(isinstance(word, str) for word in value):
        raise TypeError(f"ImageConfig.{field} must be a list of strings, not {value!r}")
    return tuple(value)


@dataclass(frozen=True, slots=True, init=False)
class ImageConfig:
    """The part of an image's config (``ENTRYPOINT`` and ``CMD``) that decides what a
    container of the image runs; an image with no known config has both empty."""

    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]

    def __init__(self, entrypoint: Sequence[str] = (), cmd: Sequence[str] = ()) -> None:
        object.__setattr__(self, "entrypoint", _words("entrypoint", entrypoint))
        object.__setattr__(self, "cmd", _words("cmd", cmd))


NO_CONFIG = ImageConfig()


def _checked(reference: str, what: str) -> str:
    problem = image_problem(reference)
    if problem is not None:
        raise ValueError(f"{what} {reference!r}: {problem}")
    return normalize_image(reference)


def registry_host(image: str) -> str:
    """The host name of the registry an image is pulled from."""
    return normalize_image(image).split("/", 1)[0].rsplit(":", 1)[0].lower()


def unresolvable_registry(image: str) -> bool:
    """Whether the image's registry is under ``.invalid``, which never resolves."""
    host = registry_host(image)
    return host == "invalid" or host.endswith(".invalid")


def pull_error(image: str) -> str:
    """What containerd answers when the image cannot be pulled."""
    normalized = normalize_image(image)
    failed = f'failed to pull and unpack image "{normalized}": failed to resolve reference '
    if unresolvable_registry(image):
        host = registry_host(image)
        path = normalized.split("/", 1)[1]
        name, _, tag = path.partition(":")
        return (
            f'rpc error: code = Unknown desc = {failed}"{normalized}": failed to do request: '
            f'Head "https://{host}/v2/{name}/manifests/{tag.split("@")[0] or "latest"}": '
            f"dial tcp: lookup {host}: no such host"
        )
    return f'rpc error: code = NotFound desc = {failed}"{normalized}": {normalized}: not found'


class ImageStore:
    """What images the node has, what they run and how they are reported."""

    def __init__(
        self,
        images: Iterable[str] | None,
        *,
        pause_image: str,
        placeholder_image: str | None = None,
        configs: Mapping[str, ImageConfig] | None = None,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        self._alias_of: dict[str, str] = {}
        self._canonical: dict[str, str] = {}
        for image, alias in (aliases or {}).items():
            source = _checked(image, "image_aliases: image")
            target = _checked(alias, "image_aliases: alias")
            self._alias_of[source] = target
            self._canonical[target] = source
        chained = set(self._alias_of) & set(self._canonical)
        if chained:
            raise ValueError(f"image_aliases: {sorted(chained)[0]!r} is both an image and an alias")
        self._configs: dict[str, ImageConfig] = {}
        for image, config in (configs or {}).items():
            if not isinstance(config, ImageConfig):
                raise TypeError(f"image_configs[{image!r}] must be an ImageConfig")
            self._configs[self.canonical(_checked(image, "image_configs:"))] = config
        self.pause_image = self.canonical(normalize_image(pause_image))
        self.placeholder_image = (
            None
            if placeholder_image is None
            else self.canonical(_checked(placeholder_image, "placeholder_image"))
        )
        self._present: set[str] | None = None
        if images is not None:
            if isinstance(images, str):
                images = (images,)
            self._present = {self.canonical(normalize_image(i)) for i in images}
            self._present.update(self._configs, self._alias_of, [self.pause_image])
            if self.placeholder_image is not None:
                self._present.add(self.placeholder_image)

    def canonical(self, image: str) -> str:
        """The normal form of the image's first name (an alias maps to its image)."""
        normalized = normalize_image(image)
        return self._canonical.get(normalized, normalized)

    def has(self, image: str) -> bool:
        if self._present is None:
            return image_problem(image) is None and not unresolvable_registry(image)
        return self.canonical(image) in self._present

    def is_pause(self, image: str) -> bool:
        """Whether ``image`` is a placeholder: its containers run nothing."""
        return self.canonical(image) in (self.pause_image, self.placeholder_image)

    def placeholder_start_problem(self, image: str, command: Sequence[str]) -> str | None:
        """Why a container of placeholder ``image`` with ``command`` cannot start (runc's
        exec of a path the image does not have), or None."""
        if not command:
            return None
        if self.canonical(image) == self.placeholder_image and command[0] in PLACEHOLDER_PATHS:
            return None
        path = command[0]
        return f'exec: "{path}": stat {path}: no such file or directory'

    def config(self, image: str) -> ImageConfig:
        return self._configs.get(self.canonical(image), NO_CONFIG)

    def reported_name(self, image: str) -> str:
        """The ``image`` a container status gives for a container of ``image``."""
        canonical = self.canonical(image)
        return self._alias_of.get(canonical, canonical)

    def image_id(self, image: str) -> str:
        """The ``imageID`` of a container of ``image``: one digest per image."""
        return objects.image_id(self.canonical(image))
