//go:build linux

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/tether-mesh/tether/internal/kubetest"
	"github.com/tether-mesh/tether/internal/netns"
)

// This file is the test's stand-in for a node: a kubelet and container
// runtime that run a stored Pod's containers (podRuntime), the pod network
// (podNetwork), cluster DNS, kube-proxy (kubeProxy, and relay for the
// kubernetes Service), and the node's view of the pod network (nodeClient).

// The Dockerfile's runtime image: Debian's PATH, USER 65532:65532, and
// ENTRYPOINT tether.
const (
	imagePath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	imageUser = 65532
)

var imageEntrypoint = []string{"/usr/local/bin/tether"}

// podRuntime runs the containers of one stored Pod with their command,
// args, env, user, capabilities and volume mounts, in the pod's network
// namespace. Each container runs in a private mount namespace made by
// unshare(1): a fresh tmpfs on /run, a writable overlay on /etc, the test's
// binaries on /usr/local/bin, the kubelet-managed /etc/hosts and
// /etc/resolv.conf, and the volumes bind-mounted at their mount paths; with
// readOnlyRootFilesystem those are remounted read-only. setpriv(1) then
// takes the spec's UID, GID, capability bounding set and no_new_privs
// before exec. The seccomp profile is not applied, nor resource limits.
type podRuntime struct {
	t     *testing.T
	env   *kubetest.Env
	pod   *corev1.Pod
	net   *netns.NS
	ip    netip.Addr
	bin   string            // stands for the image's /usr/local/bin
	dir   string            // hosts and resolv.conf, volumes, overlay layers
	vols  map[string]string // volume name -> host directory
	mntNS string            // the test's own mount namespace
}

// cluster is what the pods' runtimes share.
type cluster struct {
	env        *kubetest.Env
	bin        string     // the freshly built binaries
	nameserver netip.Addr // cluster DNS, for every pod's resolv.conf
	node       *netns.NS  // the node's network namespace

	mu   sync.Mutex
	pods int // pod networks made so far
}

// podNetwork makes a network namespace for one pod, as a CNI plugin would:
// pod number n (from 1) gets 10.244.<n>.2/24 on a veth whose node end is
// 10.244.<n>.1/24, and a default route through it. The node forwards
// between pods (its ip_forward is set by startMesh).
func (c *cluster) podNetwork(t *testing.T, name string) (*netns.NS, netip.Addr) {
	t.Helper()
	c.mu.Lock()
	c.pods++
	n := c.pods
	c.mu.Unlock()
	if n > 254 {
		t.Fatal("more than 254 pods")
	}
	nodeEnd := netip.AddrFrom4([4]byte{10, 244, byte(n), 1})
	podEnd := netip.AddrFrom4([4]byte{10, 244, byte(n), 2})
	ns := netns.New(t, name)
	netns.Link(t, c.node, ns, netip.PrefixFrom(nodeEnd, 24), netip.PrefixFrom(podEnd, 24))
	ns.Run(t, "ip", "route", "add", "default", "via", nodeEnd.String())
	return ns, podEnd
}

// newPodRuntime prepares the pod's volumes (as the kubelet does before
// starting any container), its /etc/hosts and its /etc/resolv.conf (cluster
// DNS with the kubelet's search path for the pod's namespace).
func newPodRuntime(t *testing.T, cl *cluster, pod *corev1.Pod, ns *netns.NS, ip netip.Addr) *podRuntime {
	t.Helper()
	dir, err := os.MkdirTemp("", "tether-e2e-pod-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	mntNS, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		t.Fatal(err)
	}
	r := &podRuntime{t: t, env: cl.env, pod: pod, net: ns, ip: ip, bin: cl.bin, dir: dir, vols: map[string]string{}, mntNS: mntNS}
	files := map[string]string{
		"hosts": fmt.Sprintf("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n%s\t%s\n", ip, pod.Name),
		"resolv.conf": fmt.Sprintf("search %s.svc.cluster.local svc.cluster.local cluster.local\nnameserver %s\noptions ndots:5\n",
			pod.Namespace, cl.nameserver),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, v := range pod.Spec.Volumes {
		r.vols[v.Name] = r.volume(v)
	}
	return r
}

// volume writes a volume's content into a host directory and returns it.
func (r *podRuntime) volume(v corev1.Volume) string {
	t := r.t
	t.Helper()
	dir := filepath.Join(r.dir, "volumes", v.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	switch {
	case v.EmptyDir != nil:
		// The kubelet makes emptyDirs world-writable.
		if err := os.Chmod(dir, 0o777); err != nil {
			t.Fatal(err)
		}
	case v.ConfigMap != nil:
		r.configMap(dir, v.ConfigMap.Name, v.ConfigMap.Items, mode(v.ConfigMap.DefaultMode))
	case v.Projected != nil:
		m := mode(v.Projected.DefaultMode)
		for _, s := range v.Projected.Sources {
			switch {
			case s.ServiceAccountToken != nil:
				r.write(dir, s.ServiceAccountToken.Path, r.token(s.ServiceAccountToken), m)
			case s.ConfigMap != nil:
				r.configMap(dir, s.ConfigMap.Name, s.ConfigMap.Items, m)
			case s.DownwardAPI != nil:
				for _, item := range s.DownwardAPI.Items {
					if item.FieldRef == nil {
						t.Fatalf("volume %s: downward API item %s: only fieldRef is supported here", v.Name, item.Path)
					}
					r.write(dir, item.Path, r.field(item.FieldRef.FieldPath), itemMode(item.Mode, m))
				}
			default:
				t.Fatalf("volume %s: projected source %+v not supported here", v.Name, s)
			}
		}
	default:
		t.Fatalf("volume %s: only emptyDir, configMap and projected volumes are supported here", v.Name)
	}
	return dir
}

func mode(m *int32) os.FileMode {
	if m == nil {
		return 0o644 // the API server's default for configMap and projected volumes
	}
	return os.FileMode(*m)
}

func itemMode(m *int32, def os.FileMode) os.FileMode {
	if m == nil {
		return def
	}
	return os.FileMode(*m)
}

func (r *podRuntime) write(dir, name, content string, m os.FileMode) {
	r.t.Helper()
	p := filepath.Join(dir, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		r.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), m); err != nil {
		r.t.Fatal(err)
	}
	if err := os.Chmod(p, m); err != nil { // past the umask
		r.t.Fatal(err)
	}
}

// configMap writes a ConfigMap's keys (or the listed items), waiting for it
// to exist as the kubelet does.
func (r *podRuntime) configMap(dir, name string, items []corev1.KeyToPath, m os.FileMode) {
	r.t.Helper()
	var cm *corev1.ConfigMap
	poll(r.t, "ConfigMap "+r.pod.Namespace+"/"+name, 20*time.Second, func() (err error) {
		cm, err = r.env.Client.CoreV1().ConfigMaps(r.pod.Namespace).Get(context.Background(), name, metav1.GetOptions{})
		return err
	})
	if len(items) == 0 {
		for k := range cm.Data {
			items = append(items, corev1.KeyToPath{Key: k, Path: k})
		}
	}
	for _, it := range items {
		v, ok := cm.Data[it.Key]
		if !ok {
			r.t.Fatalf("ConfigMap %s has no key %s", name, it.Key)
		}
		r.write(dir, it.Path, v, itemMode(it.Mode, m))
	}
}

// token is what the kubelet writes for a projected ServiceAccount token: a
// TokenRequest for the pod's ServiceAccount, bound to the pod, with the
// projection's audience and lifetime.
func (r *podRuntime) token(p *corev1.ServiceAccountTokenProjection) string {
	r.t.Helper()
	spec := authenticationv1.TokenRequestSpec{
		ExpirationSeconds: p.ExpirationSeconds,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: r.pod.Name, UID: r.pod.UID},
	}
	if p.Audience != "" {
		spec.Audiences = []string{p.Audience}
	}
	tr, err := r.env.Client.CoreV1().ServiceAccounts(r.pod.Namespace).CreateToken(context.Background(),
		r.pod.Spec.ServiceAccountName, &authenticationv1.TokenRequest{Spec: spec}, metav1.CreateOptions{})
	if err != nil {
		r.t.Fatalf("token request for pod %s/%s: %v", r.pod.Namespace, r.pod.Name, err)
	}
	return tr.Status.Token
}

// field resolves a downward-API field path.
func (r *podRuntime) field(p string) string {
	switch p {
	case "metadata.name":
		return r.pod.Name
	case "metadata.namespace":
		return r.pod.Namespace
	case "metadata.uid":
		return string(r.pod.UID)
	case "spec.serviceAccountName":
		return r.pod.Spec.ServiceAccountName
	case "status.podIP":
		return r.ip.String()
	case "spec.nodeName":
		return "node" // the one node, startMesh's
	}
	r.t.Fatalf("field %s not supported here", p)
	return ""
}

// environment is the container's environment as the kubelet builds it:
// the image's, the Service links (the pod namespace's Services and the
// kubernetes Service), then the container's own env.
func (r *podRuntime) environment(c corev1.Container) []string {
	r.t.Helper()
	vars := map[string]string{"PATH": imagePath, "HOSTNAME": r.pod.Name, "HOME": "/"}
	var order []string
	set := func(k, v string) {
		if _, ok := vars[k]; !ok {
			order = append(order, k)
		}
		vars[k] = v
	}
	order = append(order, "PATH", "HOSTNAME", "HOME")
	var svcs []corev1.Service
	if r.pod.Spec.EnableServiceLinks == nil || *r.pod.Spec.EnableServiceLinks {
		list, err := r.env.Client.CoreV1().Services(r.pod.Namespace).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			r.t.Fatal(err)
		}
		svcs = list.Items
	}
	if r.pod.Namespace != "default" {
		k, err := r.env.Client.CoreV1().Services("default").Get(context.Background(), "kubernetes", metav1.GetOptions{})
		if err != nil {
			r.t.Fatal(err)
		}
		svcs = append(svcs, *k)
	}
	for _, svc := range svcs {
		ip := svc.Spec.ClusterIP
		if ip == "" || ip == corev1.ClusterIPNone || len(svc.Spec.Ports) == 0 {
			continue
		}
		name := envName(svc.Name)
		first := svc.Spec.Ports[0]
		set(name+"_SERVICE_HOST", ip)
		set(name+"_SERVICE_PORT", strconv.Itoa(int(first.Port)))
		for _, p := range svc.Spec.Ports {
			if p.Name != "" {
				set(name+"_SERVICE_PORT_"+envName(p.Name), strconv.Itoa(int(p.Port)))
			}
		}
		set(name+"_PORT", fmt.Sprintf("%s://%s", strings.ToLower(string(first.Protocol)), net.JoinHostPort(ip, strconv.Itoa(int(first.Port)))))
		for _, p := range svc.Spec.Ports {
			proto := strings.ToLower(string(p.Protocol))
			pfx := fmt.Sprintf("%s_PORT_%d_%s", name, p.Port, strings.ToUpper(proto))
			set(pfx, fmt.Sprintf("%s://%s", proto, net.JoinHostPort(ip, strconv.Itoa(int(p.Port)))))
			set(pfx+"_PROTO", proto)
			set(pfx+"_PORT", strconv.Itoa(int(p.Port)))
			set(pfx+"_ADDR", ip)
		}
	}
	if len(c.EnvFrom) > 0 {
		r.t.Fatalf("container %s: envFrom not supported here", c.Name)
	}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			set(e.Name, e.Value)
		case e.ValueFrom.FieldRef != nil:
			set(e.Name, r.field(e.ValueFrom.FieldRef.FieldPath))
		default:
			r.t.Fatalf("container %s: env %s: only values and fieldRefs are supported here", c.Name, e.Name)
		}
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+vars[k])
	}
	return out
}

func envName(s string) string { return strings.ToUpper(strings.ReplaceAll(s, "-", "_")) }

// getenv returns the value of variable name in container c's environment.
func (r *podRuntime) getenv(c corev1.Container, name string) string {
	r.t.Helper()
	for _, kv := range r.environment(c) {
		if v, ok := strings.CutPrefix(kv, name+"="); ok {
			return v
		}
	}
	return ""
}

// argv is the command line that runs container c: unshare, a shell script
// that mounts the container's filesystem, setpriv with its security
// context, and env -i with its environment, then its command and args.
func (r *podRuntime) argv(c corev1.Container) []string {
	t := r.t
	t.Helper()
	cmdline := append(slices.Clone(c.Command), c.Args...)
	if len(c.Command) == 0 {
		cmdline = append(slices.Clone(imageEntrypoint), c.Args...)
	}
	for _, a := range cmdline {
		if strings.Contains(a, "$(") {
			t.Fatalf("container %s: $(VAR) expansion in %q is not supported here", c.Name, a)
		}
	}

	// Security context: the container's, else the pod's, else the image's.
	uid, gid := int64(imageUser), int64(imageUser)
	var nonRoot *bool
	if psc := r.pod.Spec.SecurityContext; psc != nil {
		uid, gid, nonRoot = deref(psc.RunAsUser, uid), deref(psc.RunAsGroup, gid), psc.RunAsNonRoot
	}
	sc := c.SecurityContext
	if sc == nil {
		sc = &corev1.SecurityContext{}
	}
	uid, gid = deref(sc.RunAsUser, uid), deref(sc.RunAsGroup, gid)
	if sc.RunAsNonRoot != nil {
		nonRoot = sc.RunAsNonRoot
	}
	if nonRoot != nil && *nonRoot && uid == 0 {
		t.Fatalf("container %s: runAsNonRoot with UID 0: the kubelet would refuse to start it", c.Name)
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Fatalf("container %s: privileged containers are not supported here", c.Name)
	}
	bounding := "-all"
	if caps := sc.Capabilities; caps == nil || !slices.Contains(caps.Drop, "ALL") {
		t.Fatalf("container %s: only capabilities {drop: [ALL], add: [...]} are supported here", c.Name)
	} else {
		for _, a := range caps.Add {
			bounding += ",+" + strings.ToLower(strings.TrimPrefix(string(a), "CAP_"))
		}
	}
	setpriv := []string{"setpriv", fmt.Sprintf("--reuid=%d", uid), fmt.Sprintf("--regid=%d", gid), "--clear-groups",
		"--inh-caps=-all", "--bounding-set=" + bounding, "--pdeathsig=KILL"}
	if sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
		setpriv = append(setpriv, "--no-new-privs")
	}

	// The filesystem.
	layer := filepath.Join(r.dir, "layers", c.Name)
	if err := os.MkdirAll(layer, 0o700); err != nil {
		t.Fatal(err)
	}
	var s strings.Builder
	line := func(args ...string) {
		for i, a := range args {
			if i > 0 {
				s.WriteByte(' ')
			}
			s.WriteString(a)
		}
		s.WriteByte('\n')
	}
	line("set -eu")
	// Never mount anything in the test's own mount namespace.
	line(`[ "$(readlink /proc/self/ns/mnt)" != ` + shq(r.mntNS) + ` ] || { echo "not in a private mount namespace" >&2; exit 99; }`)
	line("mount -t tmpfs -o mode=0755 tmpfs /run")
	line("mount -t tmpfs -o mode=0700 tmpfs", shq(layer))
	line("mkdir", shq(layer+"/upper"), shq(layer+"/work"))
	line("mount -t overlay overlay -o", shq("lowerdir=/etc,upperdir="+layer+"/upper,workdir="+layer+"/work"), "/etc")
	line("mount --bind", shq(r.bin), "/usr/local/bin")
	line("mount -o remount,bind,ro /usr/local/bin")
	for _, f := range []string{"hosts", "resolv.conf"} {
		line("rm -f", "/etc/"+f)
		line("cp", shq(filepath.Join(r.dir, f)), "/etc/"+f)
	}
	for _, m := range c.VolumeMounts {
		src, ok := r.vols[m.Name]
		if !ok {
			t.Fatalf("container %s mounts unknown volume %s", c.Name, m.Name)
		}
		if m.SubPath != "" || m.SubPathExpr != "" {
			t.Fatalf("container %s: subPath mounts are not supported here", c.Name)
		}
		// Mount points are made on the fresh /run or the /etc overlay,
		// never on the host's filesystem.
		target := path.Clean(m.MountPath)
		if rest, ok := strings.CutPrefix(target, "/var/run/"); ok {
			if dst, err := filepath.EvalSymlinks("/var/run"); err != nil || dst != "/run" {
				t.Fatalf("container %s: mount path %s: /var/run is not a link to /run on this machine", c.Name, target)
			}
			target = "/run/" + rest
		}
		if !strings.HasPrefix(target, "/run/") && !strings.HasPrefix(target, "/etc/") {
			t.Fatalf("container %s: mount path %s: only paths under /run, /var/run and /etc are supported here", c.Name, target)
		}
		line("mkdir -p", shq(target))
		line("mount --bind", shq(src), shq(target))
		if m.ReadOnly {
			line("mount -o remount,bind,ro", shq(target))
		}
	}
	if sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem {
		for _, p := range []string{"/", "/etc", "/run"} {
			line("mount -o remount,bind,ro", p)
		}
	}
	wd := c.WorkingDir
	if wd == "" {
		wd = "/"
	}
	line("cd", shq(wd))
	line("exec", strings.Join(setpriv, " "), `-- env -i "$@"`)

	argv := []string{"unshare", "--mount", "--propagation", "private", "--", "sh", "-c", s.String(), "sh"}
	argv = append(argv, r.environment(c)...)
	return append(argv, cmdline...)
}

func deref[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// shq quotes s for sh.
func shq(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// run runs an init container to completion and returns its output.
func (r *podRuntime) run(ctx context.Context, c corev1.Container) string {
	r.t.Helper()
	out, err := r.net.Output(ctx, 0, r.argv(c)...)
	if err != nil {
		r.t.Fatalf("container %s: %v", c.Name, err)
	}
	return out
}

// exec runs cmd in container c, as kubectl exec does: with the container's
// environment, user and mounts.
func (r *podRuntime) exec(ctx context.Context, c corev1.Container, cmd ...string) (string, error) {
	r.t.Helper()
	c = *c.DeepCopy()
	c.Command, c.Args = cmd, nil
	return r.net.Output(ctx, 0, r.argv(c)...)
}

// start starts a long-running container; it is killed when the test ends.
func (r *podRuntime) start(c corev1.Container) *netns.Proc {
	r.t.Helper()
	return r.net.Start(r.t, 0, r.argv(c)...)
}

// port resolves a probe's or Service's port against the container's ports.
func (r *podRuntime) port(c corev1.Container, p intstr.IntOrString) int {
	r.t.Helper()
	if p.Type == intstr.Int {
		return p.IntValue()
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort)
		}
	}
	r.t.Fatalf("container %s has no port named %s", c.Name, p.StrVal)
	return 0
}

// probe runs an HTTP probe as the kubelet does, from the node to the pod
// IP, and returns the body.
func (r *podRuntime) probe(kubelet *http.Client, c corev1.Container, p *corev1.Probe) (string, error) {
	r.t.Helper()
	if p == nil || p.HTTPGet == nil || (p.HTTPGet.Scheme != "" && p.HTTPGet.Scheme != corev1.URISchemeHTTP) {
		r.t.Fatalf("container %s: only HTTP probes are supported here: %+v", c.Name, p)
	}
	host := p.HTTPGet.Host
	if host == "" {
		host = r.ip.String()
	}
	return get(kubelet, fmt.Sprintf("http://%s%s", net.JoinHostPort(host, strconv.Itoa(r.port(c, p.HTTPGet.Port))), p.HTTPGet.Path))
}

// waitProbe polls probe p of container c until it passes, failing the test
// if the container exits first or timeout passes. The kubelet would poll
// every periodSeconds; the test polls faster to finish sooner.
func (r *podRuntime) waitProbe(kubelet *http.Client, c corev1.Container, p *corev1.Probe, proc *netns.Proc, timeout time.Duration) {
	r.t.Helper()
	poll(r.t, "container "+c.Name+"'s probe "+p.HTTPGet.Path, timeout, func() error {
		select {
		case <-proc.Done():
			r.t.Fatalf("container %s exited: %v\n%s", c.Name, proc.Err(), proc.Output())
		default:
		}
		_, err := r.probe(kubelet, c, p)
		return err
	})
}

// hostPath maps a path inside container c to the host through its volume
// mounts.
func (r *podRuntime) hostPath(c corev1.Container, p string) string {
	r.t.Helper()
	for _, m := range c.VolumeMounts {
		if rel, ok := strings.CutPrefix(p, strings.TrimSuffix(m.MountPath, "/")+"/"); ok {
			return filepath.Join(r.vols[m.Name], filepath.FromSlash(rel))
		}
	}
	r.t.Fatalf("container %s: %s is on no volume", c.Name, p)
	return ""
}

// checkCreds checks that a container's process runs as uid (and gid = uid)
// with the capability bounding set capBnd and no_new_privs.
func checkCreds(t *testing.T, p *netns.Proc, uid int, capBnd string) {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	id := strconv.Itoa(uid)
	for _, want := range []string{
		"Uid:\t" + strings.Repeat(id+"\t", 3) + id + "\n",
		"Gid:\t" + strings.Repeat(id+"\t", 3) + id + "\n",
		"CapBnd:\t" + capBnd + "\n",
		"NoNewPrivs:\t1\n",
	} {
		if !strings.Contains(string(status), want) {
			t.Fatalf("process %d: no %q in its status:\n%s", p.Pid(), want, status)
		}
	}
}

// ----------------------------------------------------------------------------
// Network helpers

// serveClusterDNS stands for the cluster's DNS server on addr (UDP) inside
// ns until the test ends: A records of <service>.<namespace>.svc.cluster.local
// for the ClusterIPs of the Services the API server holds at the time of
// the query, NXDOMAIN for other names.
func serveClusterDNS(t *testing.T, ns *netns.NS, addr netip.AddrPort, env *kubetest.Env) {
	t.Helper()
	lookup := func(name string) (net.IP, bool) {
		labels := strings.Split(strings.TrimSuffix(strings.ToLower(name), "."), ".")
		if len(labels) != 5 || labels[2] != "svc" || labels[3] != "cluster" || labels[4] != "local" {
			return nil, false
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		svc, err := env.Client.CoreV1().Services(labels[1]).Get(ctx, labels[0], metav1.GetOptions{})
		if err != nil {
			return nil, false
		}
		ip := net.ParseIP(svc.Spec.ClusterIP)
		return ip, ip != nil
	}
	pc, err := ns.ListenPacket("udp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		m.Authoritative = true
		if len(req.Question) == 1 {
			q := req.Question[0]
			ip, ok := lookup(q.Name)
			switch {
			case !ok:
				m.Rcode = dns.RcodeNameError
			case q.Qtype == dns.TypeA && ip.To4() != nil:
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5}, A: ip})
			}
		}
		w.WriteMsg(m)
	})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ActivateAndServe()
	}()
	t.Cleanup(func() {
		srv.Shutdown()
		<-done
	})
}

// nodeClient is an HTTP client whose connections are made inside ns, as the
// kubelet's probes come from the node.
func nodeClient(ns *netns.NS) *http.Client {
	d := &net.Dialer{Timeout: 2 * time.Second}
	return &http.Client{
		Timeout: 3 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
				err = ns.Do(func() error {
					c, err = d.DialContext(ctx, network, addr)
					return err
				})
				return c, err
			},
		},
	}
}

// get returns the body of a 2xx or 3xx answer, else an error with it.
func get(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return string(body), fmt.Errorf("GET %s: %s: %s", url, resp.Status, bytes.TrimSpace(body))
	}
	return string(body), nil
}

// relay accepts TCP connections on listen inside ns and relays each to
// target in the test's own network namespace, until the test ends.
func relay(t *testing.T, ns *netns.NS, listen, target string) {
	t.Helper()
	l, err := ns.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
	)
	track := func(c net.Conn, add bool) {
		mu.Lock()
		defer mu.Unlock()
		if add {
			conns[c] = true
		} else {
			delete(conns, c)
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			out, err := net.DialTimeout("tcp", target, 5*time.Second)
			if err != nil {
				in.Close()
				continue
			}
			track(in, true)
			track(out, true)
			wg.Add(2)
			pipe := func(dst, src net.Conn) {
				defer wg.Done()
				io.Copy(dst, src)
				dst.(*net.TCPConn).CloseWrite()
			}
			go pipe(out, in)
			go func() {
				pipe(in, out)
				in.Close()
				out.Close()
				track(in, false)
				track(out, false)
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// kubeProxy stands for kube-proxy in iptables mode on the node: TCP to
// the Service's ClusterIP and port, from pods (routed through the node) or
// from the node itself, is DNATed to the endpoint. The rules go with the
// node's namespace.
func kubeProxy(t *testing.T, node *netns.NS, clusterIP string, port int, endpoint netip.AddrPort) {
	t.Helper()
	for _, chain := range []string{"PREROUTING", "OUTPUT"} {
		node.Run(t, "iptables", "-w", "-t", "nat", "-A", chain, "-d", clusterIP+"/32", "-p", "tcp", "--dport", strconv.Itoa(port),
			"-j", "DNAT", "--to-destination", endpoint.String())
	}
}

// serveApp serves an HTTP app named name on host and port inside ns (on
// all addresses if host is empty): 200 on every path, with a body naming
// the app and the path.
func serveApp(t *testing.T, ns *netns.NS, host string, port int, name string) {
	t.Helper()
	l, err := ns.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s: %s\n", name, r.URL.Path)
	}), ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(l)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
}
