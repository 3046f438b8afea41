# shellcheck shell=bash
# shellcheck disable=SC2034
# Pinned versions and locations shared by up, down and build-k8s.
K8S_VERSION=v1.33.13
K8S_MINOR=33
K8S_STAGING_VERSION=v0.33.13
ETCD_VERSION=v3.5.21
K8S_COMPONENTS="kube-apiserver kube-scheduler kube-controller-manager kubelet kubectl"

CACHE_ROOT="${BUILDRUNTIME_CLUSTER_CACHE:-/var/cache/buildruntime-cluster}"
STATE_ROOT="${BUILDRUNTIME_CLUSTER_STATE:-/var/lib/buildruntime-cluster}"
RUN_ROOT="${BUILDRUNTIME_CLUSTER_RUN:-/run/buildruntime-cluster}"

BUILD_ROOT="$CACHE_ROOT/k8s-$K8S_VERSION"
K8S_BIN="$BUILD_ROOT/bin"
ETCD_BUILD="$CACHE_ROOT/etcd-$ETCD_VERSION/mod"
ETCD_BIN="$CACHE_ROOT/etcd-$ETCD_VERSION/bin"
NODE_NAME=buildruntime-node

PAUSE_IMAGE=localhost/pause:3.10
# A second tag of the same pause image (see `up`): statuses report the placeholder by it.
PAUSE_ALIAS=docker.io/kubernetes/pause:latest
# buildruntime's placeholder (deploy/placeholder), for placeholder_image.
PLACEHOLDER_IMAGE=localhost/buildruntime-placeholder:1
# busybox with ENTRYPOINT ["/bin/echo", "entrypoint-ran"] and CMD ["with-default-cmd"].
ENTRYPOINT_IMAGE=localhost/entrypoint-echo:1
BUSYBOX_IMAGES="localhost/busybox:latest docker.io/library/busybox:latest localhost/busybox:1.35 docker.io/library/busybox:1.35"
# images/build output lives in $CACHE_ROOT/images-<hash of its inputs> (set by `up`).
REGISTRY_ADDR=127.0.0.1:5055
# The same registry behind HTTP basic auth, named by its own address: images named
# 127.0.0.1:5056/... pull only with these credentials (an image pull Secret). `up`
# writes both to $STATE_ROOT/private-registry.json for the integration suite.
PRIVATE_REGISTRY_ADDR=127.0.0.1:5056
PRIVATE_REGISTRY_USER=ci
PRIVATE_REGISTRY_PASSWORD=pull-pass-2026

# kube-controller-manager runs only what pods, ServiceAccounts, namespaces, RBAC
# aggregation and ResourceQuota need.
KCM_CONTROLLERS=persistentvolume-binder-controller,serviceaccount-controller,serviceaccount-token-controller,namespace-controller,garbage-collector-controller,root-ca-certificate-publisher-controller,node-lifecycle-controller,pod-garbage-collector-controller,clusterrole-aggregation-controller,resourcequota-controller

# The node's container runtime, built from Go modules by build-node (Debian's containerd
# 1.6 / runc 1.1 cut a fast-exiting container's last output). Both still support this
# machine's cgroup v1 (deprecated: containerd until at least May 2029, runc since 1.4).
CONTAINERD_VERSION=v2.4.2
RUNC_VERSION=v1.5.3
# runc's seccomp support links libseccomp (cgo); libpathrs (a Rust library) is left out:
# runc then uses its pure-Go path resolution.
RUNC_BUILDTAGS="seccomp urfave_cli_no_docs"
NODE_BIN="$CACHE_ROOT/node-containerd-$CONTAINERD_VERSION-runc-$RUNC_VERSION/bin"
NODE_COMPONENTS="containerd containerd-shim-runc-v2 ctr runc"
