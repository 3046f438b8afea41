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

# kube-controller-manager runs only what pods, ServiceAccounts, namespaces, RBAC
# aggregation and ResourceQuota need.
KCM_CONTROLLERS=persistentvolume-binder-controller,serviceaccount-controller,serviceaccount-token-controller,namespace-controller,garbage-collector-controller,root-ca-certificate-publisher-controller,node-lifecycle-controller,pod-garbage-collector-controller,clusterrole-aggregation-controller,resourcequota-controller
