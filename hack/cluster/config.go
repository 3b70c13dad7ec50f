package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/tether-mesh/tether/internal/kubepki"
)

// users are the control plane's client identities: the names Kubernetes'
// default RBAC bindings expect, and the node's (the Node authorizer's).
var users = map[string][]string{
	"admin":                   {"kubernetes-admin", "system:masters"},
	"kube-controller-manager": {"system:kube-controller-manager"},
	"kube-scheduler":          {"system:kube-scheduler"},
	"kube-proxy":              {"system:kube-proxy"},
	"kubelet":                 {"system:node:" + NodeName, "system:nodes"},
	"coredns":                 {"system:coredns"},
	"apiserver-kubelet":       {"kube-apiserver-kubelet-client", "system:masters"},
}

// writePKI writes the cluster CA, the serving certificates of the API
// server and the kubelet, a kubeconfig per user, and the service-account
// key, under c.Dir/pki and c.Dir/etc.
func (c *Cluster) writePKI() error {
	for _, d := range []string{"pki", "etc"} {
		if err := os.MkdirAll(c.path(d), 0o700); err != nil {
			return err
		}
	}
	ca, err := kubepki.NewCA("tether-cluster-ca", 30*24*time.Hour)
	if err != nil {
		return err
	}
	caKey, err := ca.KeyPEM()
	if err != nil {
		return err
	}
	files := map[string][]byte{"ca.crt": ca.CertPEM(), "ca.key": caKey}
	node := net.ParseIP(NodeIP)
	apiCert, apiKey, err := ca.Serving("kube-apiserver",
		[]net.IP{net.IPv4(127, 0, 0, 1), node, net.ParseIP(APIServiceIP)},
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc." + ClusterDomain})
	if err != nil {
		return err
	}
	files["apiserver.crt"], files["apiserver.key"] = apiCert, apiKey
	kubeletCert, kubeletKey, err := ca.Serving(NodeName, []net.IP{node}, []string{NodeName})
	if err != nil {
		return err
	}
	files["kubelet-serving.crt"], files["kubelet-serving.key"] = kubeletCert, kubeletKey
	_, saKey, saPub, err := kubepki.ServiceAccountKey()
	if err != nil {
		return err
	}
	files["sa.key"], files["sa.pub"] = saKey, saPub
	for name, u := range users {
		cert, key, err := ca.Client(u[0], u[1:]...)
		if err != nil {
			return err
		}
		files[name+".crt"], files[name+".key"] = cert, key
		server := fmt.Sprintf("https://%s:%d", NodeIP, APIPort)
		if name == "admin" {
			server = fmt.Sprintf("https://127.0.0.1:%d", APIPort)
		}
		if err := writeKubeconfig(c.path("etc", name+".kubeconfig"), server, ca.CertPEM(), cert, key); err != nil {
			return err
		}
	}
	for name, data := range files {
		if err := os.WriteFile(c.path("pki", name), data, 0o600); err != nil {
			return err
		}
	}
	// The admin kubeconfig, where users and tests look for it.
	admin, err := os.ReadFile(c.path("etc", "admin.kubeconfig"))
	if err != nil {
		return err
	}
	return os.WriteFile(c.path("kubeconfig"), admin, 0o600)
}

func writeKubeconfig(path, server string, caPEM, certPEM, keyPEM []byte) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["tether"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos["user"] = &clientcmdapi.AuthInfo{ClientCertificateData: certPEM, ClientKeyData: keyPEM}
	cfg.Contexts["tether"] = &clientcmdapi.Context{Cluster: "tether", AuthInfo: "user"}
	cfg.CurrentContext = "tether"
	return clientcmd.WriteToFile(*cfg, path)
}

// writeConfigs writes containerd's, the CNI's, the kubelet's, kube-proxy's
// and CoreDNS's configuration under c.Dir/etc.
func (c *Cluster) writeConfigs() error {
	p := c.path
	files := map[string]string{
		"containerd.toml": fmt.Sprintf(`version = 2
root = %q
state = %q
[grpc]
  address = %q
[ttrpc]
  address = %q
[plugins."io.containerd.internal.v1.opt"]
  path = %q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  # This machine lacks CAP_SYS_RESOURCE: without this every sandbox fails
  # with "nsexec: failed to update /proc/self/oom_score_adj".
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]
    endpoint = ["http://%s"]
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."registry.k8s.io"]
    endpoint = ["http://%s"]
`, p("state", "containerd", "root"), p("state", "containerd", "state"), p("state", "containerd", "containerd.sock"),
			p("state", "containerd", "ttrpc.sock"), p("state", "containerd", "opt"), SandboxImage,
			c.cniBinDir(), c.cniConfDir(), RegistryAddr, RegistryAddr),

		"cni/10-tether-node.conflist": fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "tether-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": %q}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": %q
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`, PodCIDR, p("state", "cni")),

		"kubelet.yaml": fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %q}
authorization: {mode: Webhook}
tlsCertFile: %q
tlsPrivateKeyFile: %q
containerRuntimeEndpoint: unix://%s
# cgroup v1 only on these machines; containerd 1.6 has no RuntimeConfig to
# tell the kubelet its driver, so both use cgroupfs.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /%s
failSwapOn: false
protectKernelDefaults: false
clusterDNS: [%q]
clusterDomain: %q
resolvConf: %q
podLogsDirectory: /var/log/pods
rotateCertificates: false
serializeImagePulls: false
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: "50Mi", nodefs.available: "1%%", imagefs.available: "1%%", nodefs.inodesFree: "1%%"}
maxPods: 60
`, p("pki", "ca.crt"), p("pki", "kubelet-serving.crt"), p("pki", "kubelet-serving.key"),
			p("state", "containerd", "containerd.sock"), CgroupRoot, DNSServiceIP, ClusterDomain, p("etc", "resolv.conf")),

		"resolv.conf": "nameserver " + NodeIP + "\n",

		"kube-proxy.yaml": fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: %q}
hostnameOverride: %q
mode: iptables
clusterCIDR: %q
bindAddress: %q
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the host's conntrack table size alone (it is not per namespace).
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
`, p("etc", "kube-proxy.kubeconfig"), NodeName, PodCIDR, NodeIP),

		"Corefile": fmt.Sprintf(`.:53 {
    bind %s
    errors
    ready 127.0.0.1:8181
    kubernetes %s in-addr.arpa ip6.arpa {
        kubeconfig %s tether
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
`, NodeIP, ClusterDomain, p("etc", "coredns.kubeconfig")),
	}
	if err := c.linkCNIPlugins(); err != nil {
		return err
	}
	for name, data := range files {
		path := p("etc", name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, []byte(strings.TrimLeft(data, "\n")), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// linkCNIPlugins fills the node's private CNI bin directory with links to
// the host's plugins, so that what the node installs there (tether-cni)
// never lands in the host's package directory.
func (c *Cluster) linkCNIPlugins() error {
	dir := c.cniBinDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, name := range cniPlugins {
		link := filepath.Join(dir, name)
		if err := os.Remove(link); err != nil && !os.IsNotExist(err) {
			return err
		}
		if err := os.Symlink(filepath.Join(HostCNIBinDir, name), link); err != nil {
			return fmt.Errorf("linking the CNI plugin %s into %s: %w", name, dir, err)
		}
	}
	return nil
}
