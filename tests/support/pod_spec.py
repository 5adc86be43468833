"""A Deployment's pod template as `docker run` arguments, and its probes as kubelet runs them.

kind and EKS cannot run here, but their containers can: this turns every field
of our pod specs that decides how a container runs (image, command/args, env,
user, read-only root, capabilities, emptyDir mounts, resource limits, grace
period) into the matching Docker option. A field it does not know is an error,
not a silent skip, so a new manifest field fails the test until it is handled.
Headless Services become network aliases, so `dns:///NAME.NS.svc.cluster.local`
resolves to the pod containers as cluster DNS would; ClusterIP Services (a
virtual IP and port mapping) are not emulated. A pod's later containers join its
first one's network namespace (`--network container:`), so they share 127.0.0.1
and the pod's address as in Kubernetes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from support.deploy_tools import memory_bytes

# Fields read below, or that do not change how one container runs here.
POD_KEYS = {"automountServiceAccountToken", "terminationGracePeriodSeconds", "securityContext",
            "containers", "volumes"}  # fmt: skip
CONTAINER_KEYS = {"name", "image", "imagePullPolicy", "command", "args", "env", "ports",
                  "resources", "startupProbe", "readinessProbe", "livenessProbe", "lifecycle",
                  "securityContext", "volumeMounts"}  # fmt: skip
POD_SECURITY_KEYS = {"runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "seccompProfile"}
CONTAINER_SECURITY_KEYS = {"allowPrivilegeEscalation", "readOnlyRootFilesystem", "capabilities"}
PROBE_KEYS = {"exec", "httpGet", "tcpSocket", "grpc", "initialDelaySeconds", "periodSeconds",
              "timeoutSeconds", "failureThreshold", "successThreshold"}  # fmt: skip


class PodSpecError(ValueError):
    """The pod spec uses something this translation does not implement."""


def _only(mapping: dict, allowed: set[str], where: str) -> None:
    unknown = set(mapping) - allowed
    if unknown:
        raise PodSpecError(f"{where}: fields not translated to Docker: {sorted(unknown)}")


def cpus(quantity: str) -> float:
    """A Kubernetes CPU quantity ("2", "500m") in CPUs."""
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def service_aliases(services: list[dict], labels: dict[str, str]) -> list[str]:
    """DNS names of the headless Services that select these pod labels."""
    aliases = []
    for service in services:
        spec, meta = service["spec"], service["metadata"]
        selector = spec.get("selector", {})
        if spec.get("clusterIP") != "None" or not selector:
            continue
        if all(labels.get(key) == value for key, value in selector.items()):
            name, ns = meta["name"], meta.get("namespace", "default")
            aliases += [name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"]
    return aliases


@dataclass
class PodContainer:
    """One container of one replica: how to start it and what to probe."""

    name: str
    run_args: list[str]
    image: str
    command_args: list[str]
    ports: dict[str, int]
    probes: dict[str, dict] = field(default_factory=dict)
    pre_stop: list[str] | None = None
    ip: str = ""  # on the pod network, once started
    pod: str = ""  # the container that holds the pod's network (its first)


def pod_containers(
    deployment: dict, services: list[dict], images: dict[str, str], network: str, replica: int
) -> list[PodContainer]:
    """The `docker run` form of each container in one replica of `deployment`."""
    name = deployment["metadata"]["name"]
    template = deployment["spec"]["template"]
    pod = template["spec"]
    _only(pod, POD_KEYS, f"{name}: pod spec")
    security = pod.get("securityContext", {})
    _only(security, POD_SECURITY_KEYS, f"{name}: pod securityContext")
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    aliases = service_aliases(services, template["metadata"].get("labels", {}))
    result = []
    first = f"{name}-{replica}-{pod['containers'][0]['name']}"
    for container in pod["containers"]:
        where = f"{name}/{container['name']}"
        _only(container, CONTAINER_KEYS, where)
        args = ["--name", f"{name}-{replica}-{container['name']}"]
        if not result:
            args += ["--network", network, "--hostname", f"{name}-{replica}"]
            for alias in aliases:
                args += ["--network-alias", alias]
        else:
            args += ["--network", f"container:{first}"]
        if "runAsUser" in security:
            args += ["--user", f"{security['runAsUser']}:{security.get('runAsGroup', 0)}"]
        if security.get("runAsNonRoot") and security.get("runAsUser", 0) == 0:
            raise PodSpecError(f"{where}: runAsNonRoot needs a non-zero runAsUser here")
        if "fsGroup" in security:
            args += ["--group-add", str(security["fsGroup"])]
        if security.get("seccompProfile", {}).get("type", "RuntimeDefault") != "RuntimeDefault":
            raise PodSpecError(
                f"{where}: only the RuntimeDefault seccomp profile (Docker's default)"
            )
        args += _container_security(container.get("securityContext", {}), where)
        if "terminationGracePeriodSeconds" in pod:
            args += ["--stop-timeout", str(pod["terminationGracePeriodSeconds"])]
        limits = container.get("resources", {}).get("limits", {})
        if "memory" in limits:
            args += ["--memory", str(memory_bytes(limits["memory"]))]
        if "cpu" in limits:
            args += ["--cpus", str(cpus(limits["cpu"]))]
        for variable in container.get("env", []):
            if set(variable) != {"name", "value"}:
                raise PodSpecError(f"{where}: env {variable.get('name')}: only plain values")
            args += ["--env", f"{variable['name']}={variable['value']}"]
        for mount in container.get("volumeMounts", []):
            args += _mount(volumes[mount["name"]], mount, security, where)
        command, command_args = container.get("command"), container.get("args")
        after_image: list[str] = []
        if command:  # Kubernetes: command replaces ENTRYPOINT and drops CMD
            args += ["--entrypoint", command[0]]
            after_image = [*command[1:], *(command_args or [])]
        elif command_args is not None:  # args replace CMD only
            after_image = list(command_args)
        repository = container["image"].rsplit(":", 1)[0]
        if repository not in images:
            raise PodSpecError(f"{where}: no local image for {container['image']}")
        probes = {}
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            if kind in container:
                _only(container[kind], PROBE_KEYS, f"{where}: {kind}")
                probes[kind] = container[kind]
        pre_stop = container.get("lifecycle", {}).get("preStop", {})
        if set(container.get("lifecycle", {})) - {"preStop"} or set(pre_stop) - {"exec"}:
            raise PodSpecError(f"{where}: lifecycle: only preStop exec is translated")
        result.append(
            PodContainer(
                name=f"{name}-{replica}-{container['name']}",
                run_args=args,
                image=images[repository],
                command_args=after_image,
                ports={port["name"]: port["containerPort"] for port in container.get("ports", [])},
                probes=probes,
                pre_stop=pre_stop.get("exec", {}).get("command"),
                pod=first,
            )
        )
    return result


def _container_security(context: dict, where: str) -> list[str]:
    _only(context, CONTAINER_SECURITY_KEYS, f"{where}: securityContext")
    args = []
    if context.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    if context.get("readOnlyRootFilesystem"):
        args += ["--read-only"]
    capabilities = context.get("capabilities", {})
    _only(capabilities, {"drop", "add"}, f"{where}: capabilities")
    args += [f"--cap-drop={cap}" for cap in capabilities.get("drop", [])]
    args += [f"--cap-add={cap}" for cap in capabilities.get("add", [])]
    return args


def _mount(volume: dict, mount: dict, security: dict, where: str) -> list[str]:
    _only(mount, {"name", "mountPath", "readOnly"}, f"{where}: volumeMount")
    if set(volume) != {"name", "emptyDir"}:
        raise PodSpecError(f"{where}: volume {volume['name']}: only emptyDir is translated")
    # An emptyDir is writable by the pod's fsGroup; a tmpfs owned by that group is the same.
    options = ["rw" if not mount.get("readOnly") else "ro", "mode=1777"]
    if "sizeLimit" in volume["emptyDir"]:
        options.append(f"size={memory_bytes(volume['emptyDir']['sizeLimit'])}")
    if "fsGroup" in security:
        options.append(f"gid={security['fsGroup']}")
    return ["--tmpfs", f"{mount['mountPath']}:{','.join(options)}"]
