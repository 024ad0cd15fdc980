"""The e2e node's addresses, certificates, configuration files and command lines (tests/cluster/node.py runs them).

The node is one network namespace: the node address sits on a port-less bridge, pods on the CNI bridge
cni0, Services on kube-proxy's iptables rules; nothing in it is routed to the host or beyond.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clusterbuild
import clusterpki
import nodebuild
from clusterpki import Pki

REPO = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("BIGMODEL_E2E_STATE", REPO / ".e2e"))
LOGS = STATE / "logs"
KUBECONFIG = STATE / "kubeconfig"
STATE_FILE = STATE / "state.json"
NETNS = os.environ.get("BIGMODEL_E2E_NETNS", "bigmodel-e2e")
NODE = "bm-node"
NODE_BRIDGE = "bmnode0"
NODE_IP = "10.200.0.1"
POD_CIDR = "10.244.0.0/16"
POD_SUBNET = "10.244.0.0/24"
SERVICE_CIDR = "10.96.0.0/16"
DNS_IP = "10.96.0.10"
API_PORT = 6443
CONTAINERD_ROOT = clusterbuild.cache_root().parent / "containerd"
SOCKET = STATE / "run" / "containerd.sock"
CNI_BIN = Path("/usr/lib/cni")
# Stop order; start order is the reverse.
COMPONENTS = (
    "kube-proxy",
    "kubelet",
    "containerd",
    "kube-scheduler",
    "kube-controller-manager",
    "kube-apiserver",
    "etcd",
)
EXTRA_CERTS = {
    "kubelet": f"/O=system:nodes/CN=system:node:{NODE}",
    "kube-proxy": "/CN=system:kube-proxy",
    "apiserver-kubelet-client": "/O=system:masters/CN=kube-apiserver-kubelet-client",
}


# ---------------------------------------------------------------- configuration files


def write_pki() -> Pki:
    pki = Pki.create(STATE / "pki")
    usage = "keyUsage=critical,digitalSignature,keyEncipherment\n"
    names = [*clusterpki.SERVER_NAMES, f"IP:{NODE_IP}", "IP:10.96.0.1"]
    clusterpki._sign(
        pki.dir,
        "kube-apiserver",
        "/CN=kube-apiserver",
        usage + f"extendedKeyUsage=serverAuth\nsubjectAltName={','.join(names)}\n",
    )
    for name, subject in EXTRA_CERTS.items():
        clusterpki._sign(pki.dir, name, subject, usage + "extendedKeyUsage=clientAuth\n")
    server = f"https://{NODE_IP}:{API_PORT}"
    for client in ("kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"):
        (STATE / f"{client}.kubeconfig").write_text(pki.kubeconfig(client, server))
    KUBECONFIG.write_text(pki.kubeconfig("admin", server))
    KUBECONFIG.chmod(0o600)
    return pki


def write_configs() -> None:
    for sub in ("run", "containerd/state", "cni/net.d", "cni/ipam", "kubelet", "pv"):
        (STATE / sub).mkdir(parents=True, exist_ok=True)
    (STATE / "containerd" / "config.toml").write_text(f"""version = 2
root = "{CONTAINERD_ROOT / "root"}"
state = "{STATE / "containerd" / "state"}"
[grpc]
  address = "{SOCKET}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{STATE / "containerd" / "opt"}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{nodebuild.PAUSE_IMAGE}"
  # No CAP_SYS_RESOURCE here: lowering a container's oom_score_adj fails and runc dies without this.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{STATE / "cni" / "net.d"}"
""")
    bridge = {
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": True,
        "ipMasq": False,
        "hairpinMode": True,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": POD_SUBNET, "gateway": "10.244.0.1"}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": str(STATE / "cni" / "ipam"),
        },
    }
    conflist = {
        "cniVersion": "1.0.0",
        "name": "bigmodel-e2e",
        "plugins": [bridge, {"type": "portmap", "capabilities": {"portMappings": True}}],
    }
    (STATE / "cni" / "net.d" / "10-bridge.conflist").write_text(json.dumps(conflist, indent=2))
    # Pods with dnsPolicy Default (CoreDNS) get this; there is no upstream resolver to forward to.
    (STATE / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    pki = STATE / "pki"
    kubelet = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # The machine is a hybrid cgroup v1 host without systemd as init.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{SOCKET}",
        "address": NODE_IP,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "clusterDomain": "cluster.local",
        "clusterDNS": [DNS_IP],
        "resolvConf": str(STATE / "resolv.conf"),
        "failSwapOn": False,
        "hairpinMode": "hairpin-veth",
        # A shared development disk: never evict or garbage-collect the imported images.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "maxPods": 60,
    }
    (STATE / "kubelet.yaml").write_text(json.dumps(kubelet, indent=2))
    proxy = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(STATE / "kube-proxy.kubeconfig")},
        "hostnameOverride": NODE,
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        # Leave the (read-only here) conntrack sysctls alone.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }
    (STATE / "kube-proxy.yaml").write_text(json.dumps(proxy, indent=2))


def component_argv(name: str, bins: dict[str, str]) -> list[str]:
    pki = STATE / "pki"
    kubeconfig = str(STATE / f"{name}.kubeconfig")
    delegated = [f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}"]
    return {
        "etcd": [
            bins["etcd"],
            "--name=bigmodel-e2e",
            f"--data-dir={STATE / 'etcd'}",
            "--listen-client-urls=http://127.0.0.1:2379",
            "--advertise-client-urls=http://127.0.0.1:2379",
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=bigmodel-e2e=http://127.0.0.1:2380",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
        "kube-apiserver": [
            bins["kube-apiserver"],
            "--etcd-servers=http://127.0.0.1:2379",
            f"--advertise-address={NODE_IP}",
            f"--secure-port={API_PORT}",
            f"--tls-cert-file={pki / 'kube-apiserver.crt'}",
            f"--tls-private-key-file={pki / 'kube-apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            # The node's name resolves nowhere (no DNS outside the cluster); logs/exec dial its InternalIP.
            "--kubelet-preferred-address-types=InternalIP",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            *clusterpki.apiserver_identity_flags(pki, SERVICE_CIDR),
            "--allow-privileged=true",
            "--profiling=false",
        ],
        "kube-controller-manager": [
            bins["kube-controller-manager"],
            f"--kubeconfig={kubeconfig}",
            *delegated,
            "--bind-address=127.0.0.1",
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--flex-volume-plugin-dir={STATE / 'flexvolume'}",
            "--profiling=false",
        ],
        "kube-scheduler": [
            bins["kube-scheduler"],
            f"--kubeconfig={kubeconfig}",
            *delegated,
            "--bind-address=127.0.0.1",
            "--leader-elect=false",
            "--profiling=false",
        ],
        "containerd": ["containerd", f"--config={STATE / 'containerd' / 'config.toml'}", "--log-level=warn"],
        "kubelet": [
            bins["kubelet"],
            f"--config={STATE / 'kubelet.yaml'}",
            f"--kubeconfig={STATE / 'kubelet.kubeconfig'}",
            f"--hostname-override={NODE}",
            f"--node-ip={NODE_IP}",
            f"--root-dir={STATE / 'kubelet'}",
            f"--cert-dir={STATE / 'kubelet' / 'pki'}",
            f"--volume-plugin-dir={STATE / 'kubelet' / 'volume-plugins'}",
        ],
        "kube-proxy": [bins["kube-proxy"], f"--config={STATE / 'kube-proxy.yaml'}"],
    }[name]
