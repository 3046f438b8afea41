# shellcheck shell=bash
# Generates the cluster's certificates and keys with openssl. Sourced by `up`.
# gen_pki DIR: creates DIR/{ca,apiserver,admin,kubelet,kubelet-client,scheduler,
# controller-manager}.{crt,key} and DIR/sa.{key,pub}. Existing files are kept.

_cert() { # _cert DIR NAME SUBJECT EXT_FILE
  local d="$1" n="$2" subj="$3" ext="$4"
  [[ -f "$d/$n.crt" ]] && return 0
  openssl genrsa -out "$d/$n.key" 2048 2>/dev/null
  openssl req -new -key "$d/$n.key" -subj "$subj" -out "$d/$n.csr" 2>/dev/null
  openssl x509 -req -in "$d/$n.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$ext" -out "$d/$n.crt" 2>/dev/null
  rm -f "$d/$n.csr"
}

gen_pki() {
  local d="$1" node="$2"
  mkdir -p "$d"
  chmod 700 "$d"
  if [[ ! -f "$d/ca.crt" ]]; then
    openssl genrsa -out "$d/ca.key" 2048 2>/dev/null
    openssl req -x509 -new -nodes -key "$d/ca.key" -sha256 -days 3650 \
      -subj "/CN=buildruntime-cluster-ca" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
      -out "$d/ca.crt" 2>/dev/null
  fi
  cat > "$d/server.ext" <<EOF
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:$node,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
EOF
  cat > "$d/client.ext" <<EOF
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
EOF
  _cert "$d" apiserver "/CN=kube-apiserver" "$d/server.ext"
  _cert "$d" kubelet-serving "/CN=$node" "$d/server.ext"
  _cert "$d" admin "/O=system:masters/CN=buildruntime-admin" "$d/client.ext"
  _cert "$d" apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$d/client.ext"
  _cert "$d" kubelet "/O=system:nodes/CN=system:node:$node" "$d/client.ext"
  _cert "$d" scheduler "/CN=system:kube-scheduler" "$d/client.ext"
  _cert "$d" controller-manager "/CN=system:kube-controller-manager" "$d/client.ext"
  if [[ ! -f "$d/sa.key" ]]; then
    openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
    openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
  fi
  chmod 600 "$d"/*.key
}

# write_kubeconfig FILE SERVER CA CERT KEY USER: a kubeconfig with embedded credentials.
write_kubeconfig() {
  local f="$1" server="$2" ca="$3" cert="$4" key="$5" user="$6"
  umask 077
  cat > "$f" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: buildruntime
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 < "$ca")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 < "$cert")
    client-key-data: $(base64 -w0 < "$key")
contexts:
- name: buildruntime
  context:
    cluster: buildruntime
    user: $user
    namespace: default
current-context: buildruntime
EOF
  umask 022
}
