package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// daemon is one long-running program of the node.
type daemon struct {
	name string
	bin  string
	args []string
	// ready returns nil once the daemon serves.
	ready func(ctx context.Context) error
}

// daemons are the node's programs, in start order.
func (c *Cluster) daemons() []daemon {
	p := c.path
	pki := func(f string) string { return p("pki", f) }
	kc := func(u string) string { return p("etc", u+".kubeconfig") }
	etcdURL := "http://127.0.0.1:2379"
	return []daemon{{
		name: "etcd",
		args: []string{"--name=node", "--data-dir=" + p("state", "etcd"),
			"--listen-client-urls=" + etcdURL, "--advertise-client-urls=" + etcdURL,
			"--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
			"--initial-cluster=node=http://127.0.0.1:2380", "--initial-cluster-state=new",
			"--unsafe-no-fsync=true", "--log-outputs=stderr"},
		ready: httpOK(etcdURL+"/health", nil),
	}, {
		name: "kube-apiserver",
		args: []string{"--etcd-servers=" + etcdURL,
			"--bind-address=0.0.0.0", "--advertise-address=" + NodeIP, "--secure-port=" + strconv.Itoa(APIPort),
			"--tls-cert-file=" + pki("apiserver.crt"), "--tls-private-key-file=" + pki("apiserver.key"),
			"--client-ca-file=" + pki("ca.crt"),
			"--kubelet-client-certificate=" + pki("apiserver-kubelet.crt"), "--kubelet-client-key=" + pki("apiserver-kubelet.key"),
			"--kubelet-certificate-authority=" + pki("ca.crt"),
			// kubectl logs and exec reach the kubelet at the node IP.
			"--kubelet-preferred-address-types=InternalIP",
			"--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
			"--service-account-issuer=https://kubernetes.default.svc." + ClusterDomain,
			"--service-account-key-file=" + pki("sa.pub"), "--service-account-signing-key-file=" + pki("sa.key"),
			"--service-cluster-ip-range=" + ServiceCIDR, "--allow-privileged=true", "--profiling=false",
			"--cert-dir=" + p("state", "apiserver")},
		ready: c.apiReady,
	}, {
		name: "kube-controller-manager",
		args: []string{"--kubeconfig=" + kc("kube-controller-manager"),
			"--authentication-kubeconfig=" + kc("kube-controller-manager"), "--authorization-kubeconfig=" + kc("kube-controller-manager"),
			"--bind-address=127.0.0.1", "--leader-elect=false", "--use-service-account-credentials=true",
			"--service-account-private-key-file=" + pki("sa.key"), "--root-ca-file=" + pki("ca.crt"),
			"--cluster-signing-cert-file=" + pki("ca.crt"), "--cluster-signing-key-file=" + pki("ca.key"),
			"--service-cluster-ip-range=" + ServiceCIDR, "--profiling=false"},
	}, {
		name: "kube-scheduler",
		args: []string{"--kubeconfig=" + kc("kube-scheduler"),
			"--authentication-kubeconfig=" + kc("kube-scheduler"), "--authorization-kubeconfig=" + kc("kube-scheduler"),
			"--bind-address=127.0.0.1", "--leader-elect=false", "--profiling=false"},
	}, {
		name: "registry",
		bin:  filepath.Join(c.Bin, "tether-image"),
		args: append([]string{"serve", "--addr", RegistryAddr, "--ready-file", p("state", "registry.ready")}, c.imageTars()...),
		ready: func(context.Context) error {
			_, err := os.Stat(p("state", "registry.ready"))
			return err
		},
	}, {
		name: "containerd",
		bin:  "containerd",
		args: []string{"--config", p("etc", "containerd.toml")},
		ready: func(context.Context) error {
			conn, err := net.Dial("unix", p("state", "containerd", "containerd.sock"))
			if err == nil {
				conn.Close()
			}
			return err
		},
	}, {
		name: "kubelet",
		args: []string{"--config=" + p("etc", "kubelet.yaml"), "--kubeconfig=" + kc("kubelet"),
			"--root-dir=" + p("state", "kubelet"), "--hostname-override=" + NodeName, "--node-ip=" + NodeIP},
		ready: c.nodeReady,
	}, {
		name:  "kube-proxy",
		args:  []string{"--config=" + p("etc", "kube-proxy.yaml")},
		ready: httpOK("http://127.0.0.1:10256/healthz", nil),
	}, {
		name:  "coredns",
		args:  []string{"-conf", p("etc", "Corefile")},
		ready: dnsAnswers(DNSServiceIP + ":53"),
	}}
}

// imageTars are the image tarballs the registry serves.
func (c *Cluster) imageTars() []string {
	tars, _ := filepath.Glob(filepath.Join(c.Images, "*.tar"))
	sort.Strings(tars)
	return tars
}

// startInside runs inside the node's namespaces: it sets them up, writes
// the PKI and configuration, and starts every daemon in order, each in a
// session of its own so that it outlives this process (and a CI timeout
// that kills this process's group).
func (c *Cluster) startInside() error {
	ctx, cancel := context.WithTimeout(context.Background(), c.Timeout)
	defer cancel()
	for _, d := range []string{"logs", "pids", "state"} {
		if err := os.MkdirAll(c.path(d), 0o755); err != nil {
			return err
		}
	}
	if err := c.setupInside(); err != nil {
		return err
	}
	if err := makeCgroupRoot(); err != nil {
		return err
	}
	if err := c.writePKI(); err != nil {
		return fmt.Errorf("writing the PKI: %w", err)
	}
	if err := c.writeConfigs(); err != nil {
		return fmt.Errorf("writing the configuration: %w", err)
	}
	begin := time.Now()
	for _, d := range c.daemons() {
		if d.bin == "" {
			d.bin = filepath.Join(c.Bin, d.name)
		}
		t0 := time.Now()
		proc, err := c.start(d)
		if err != nil {
			return err
		}
		if d.name == "kube-proxy" {
			// CoreDNS's Service must exist before kube-proxy is asked to
			// route to it; it can go in once the API server is up.
			if err := c.createDNSService(ctx); err != nil {
				return fmt.Errorf("creating the kube-dns Service: %w", err)
			}
		}
		if d.ready != nil {
			if err := waitFor(ctx, d, proc.Pid); err != nil {
				return fmt.Errorf("%s did not become ready: %w\n--- last lines of %s:\n%s", d.name, err,
					c.path("logs", d.name+".log"), tail(c.path("logs", d.name+".log"), 25))
			}
		}
		fmt.Printf("cluster: %-24s ready after %5.1fs (%.1fs in all)\n", d.name, time.Since(t0).Seconds(), time.Since(begin).Seconds())
	}
	return c.waitDefaultServiceAccount(ctx)
}

// start starts d in a session of its own, logging to c.Dir/logs/NAME.log,
// and records its PID in c.Dir/pids/NAME.pid.
func (c *Cluster) start(d daemon) (*os.Process, error) {
	logFile, err := os.OpenFile(c.path("logs", d.name+".log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	cmd := exec.Command(d.bin, d.args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Dir = c.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", d.name, err)
	}
	if err := os.WriteFile(c.path("pids", d.name+".pid"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		return nil, err
	}
	// Reap it if it exits while this process lives, so that waitFor sees
	// the exit; once this process is gone, init reaps it.
	go cmd.Wait()
	return cmd.Process, nil
}

// waitFor polls d.ready until it passes, the daemon (pid, unless 0)
// exits, or ctx ends.
func waitFor(ctx context.Context, d daemon, pid int) error {
	var last error
	for {
		if last = d.ready(ctx); last == nil {
			return nil
		}
		if pid != 0 && !alive(pid) {
			return fmt.Errorf("it exited (last check: %v)", last)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last check: %v)", ctx.Err(), last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// alive says whether pid runs (and is not a zombie).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] != 'Z'
}

// httpOK checks that GET url answers 200.
func httpOK(url string, tlsConfig *tls.Config) func(context.Context) error {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsConfig}}
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		return nil
	}
}

// dnsAnswers checks that the DNS server at addr answers the API server's
// Service name with its ClusterIP.
func dnsAnswers(addr string) func(context.Context) error {
	name := "kubernetes.default.svc." + ClusterDomain + "."
	return func(ctx context.Context) error {
		m := new(dns.Msg).SetQuestion(name, dns.TypeA)
		r, _, err := (&dns.Client{Timeout: 2 * time.Second}).ExchangeContext(ctx, m, addr)
		if err != nil {
			return err
		}
		for _, rr := range r.Answer {
			if a, ok := rr.(*dns.A); ok && a.A.String() == APIServiceIP {
				return nil
			}
		}
		return errors.New("no A record " + APIServiceIP + " for " + name + ": " + dns.RcodeToString[r.Rcode])
	}
}

// tail is the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
