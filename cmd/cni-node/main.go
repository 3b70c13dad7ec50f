// Command tether-cni-node is the node agent of Tether's CNI mode: run by
// the DaemonSet tether-cni-node, it installs the tether-cni plugin, its
// chained entry and its kubeconfig on the node and keeps them in place
// (docs/cni.md). `tether-cni-node uninstall` removes them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/tether-mesh/tether/internal/cliflag"
	"github.com/tether-mesh/tether/internal/cninode"
	"github.com/tether-mesh/tether/internal/logging"
)

// saNamespaceFile holds the pod's namespace in every pod with a
// ServiceAccount token mounted.
const saNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// options are the parsed flags.
type options struct {
	cfg             cninode.Config
	kubeconfig      string
	listen          string
	uninstallOnExit bool
	uninstall       bool
	logLevel        string
}

func main() {
	if cliflag.PrintVersion(os.Args[1:], os.Stdout) {
		return
	}
	o, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "tether-cni-node: %v\nRun 'tether-cni-node --help' for usage.\n", err)
		os.Exit(2)
	}
	log := o.cfg.Logger
	if o.uninstall {
		if err := cninode.Uninstall(o.cfg.BinDir, o.cfg.ConfDir, log); err != nil {
			log.Error("uninstall failed", "error", err)
			os.Exit(1)
		}
		log.Info("tether-cni removed from the node")
		return
	}
	if err := run(o); err != nil {
		log.Error("tether-cni-node stopped", "error", err)
		os.Exit(1)
	}
}

func run(o options) error {
	if err := client(&o); err != nil {
		return err
	}
	a, err := cninode.New(o.cfg)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", o.listen, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	o.cfg.Logger.Info("tether-cni-node started", "conf_dir", o.cfg.ConfDir, "bin_dir", o.cfg.BinDir, "listen", l.Addr().String())
	return a.Run(ctx, l, o.uninstallOnExit)
}

// client fills in the API client, the server the plugin dials and its CA.
func client(o *options) error {
	var rc *rest.Config
	var err error
	if o.kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return fmt.Errorf("API client: %w", err)
	}
	if o.cfg.Client, err = kubernetes.NewForConfig(rc); err != nil {
		return fmt.Errorf("API client: %w", err)
	}
	if o.cfg.Server == "" {
		o.cfg.Server = rc.Host
	}
	o.cfg.CAData = rc.CAData
	if len(o.cfg.CAData) == 0 && rc.CAFile != "" {
		if o.cfg.CAData, err = os.ReadFile(rc.CAFile); err != nil {
			return fmt.Errorf("API server CA: %w", err)
		}
	}
	return nil
}

func parseFlags(args []string) (options, error) {
	var o options
	if len(args) > 0 && args[0] == "uninstall" {
		o.uninstall, args = true, args[1:]
	}
	c := &o.cfg
	fs := flag.NewFlagSet("tether-cni-node", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&c.BinDir, "cni-bin-dir", "/host/opt/cni/bin", "the node's CNI bin folder, as mounted in this pod")
	fs.StringVar(&c.ConfDir, "cni-conf-dir", "/host/etc/cni/net.d", "the node's CNI conf folder, as mounted in this pod")
	fs.StringVar(&c.HostConfDir, "host-cni-conf-dir", "/etc/cni/net.d", "the CNI conf folder as the node sees it (the entry's kubeconfig path)")
	fs.StringVar(&c.PluginBinary, "plugin-binary", "/usr/local/bin/tether-cni", "the tether-cni binary to copy into --cni-bin-dir")
	fs.StringVar(&c.Server, "kube-server", "", "API server URL written into the plugin's kubeconfig (default: the one this agent uses)")
	fs.StringVar(&o.kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "the agent's own kubeconfig; empty means in-cluster (env KUBECONFIG)")
	fs.StringVar(&c.Namespace, "namespace", podNamespace(), "namespace of the agent's ServiceAccount (env POD_NAMESPACE, else the mounted ServiceAccount's)")
	fs.StringVar(&c.ServiceAccount, "service-account", "tether-cni-node", "the agent's own ServiceAccount, whose tokens the plugin uses")
	fs.StringVar(&c.PodName, "pod-name", os.Getenv("POD_NAME"), "bind the plugin's tokens to this pod, the agent's own (env POD_NAME)")
	fs.StringVar(&c.DaemonSet, "daemonset", "", "the agent's own DaemonSet (in --namespace): on exit, --uninstall-on-exit removes only when it is deleted or being deleted, or cannot be read; empty: always")
	fs.StringVar(&c.NodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name, written into the entry for the plugin's error messages (env NODE_NAME)")
	fs.DurationVar(&c.TokenTTL, "token-ttl", time.Hour, "lifetime of the plugin's token (at least 10m); renewed after 80%")
	exclude := fs.String("exclude-namespaces", "kube-system,tether-system", "comma-separated namespaces whose pods the plugin never reads")
	fs.DurationVar(&c.RepairInterval, "repair-interval", 2*time.Second, "how often the conf folder is checked and repaired")
	fs.StringVar(&o.listen, "listen", ":15025", "address of /readyz and /metrics")
	fs.BoolVar(&o.uninstallOnExit, "uninstall-on-exit", false, "on SIGTERM, remove the entry, the binary and the kubeconfig before exiting, if uninstalling (see --daemonset)")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "text or json")
	fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(os.Stdout, "Usage of tether-cni-node [uninstall]:\n")
			cliflag.PrintFlags(os.Stdout, fs)
		}
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	c.ExcludeNamespaces = []string{}
	for _, n := range strings.Split(*exclude, ",") {
		if n = strings.TrimSpace(n); n != "" {
			c.ExcludeNamespaces = append(c.ExcludeNamespaces, n)
		}
	}
	var err error
	if c.Logger, err = logging.New(os.Stderr, o.logLevel, *logFormat); err != nil {
		return o, err
	}
	return o, nil
}

func podNamespace() string {
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns
	}
	if b, err := os.ReadFile(saNamespaceFile); err == nil {
		return strings.TrimSpace(string(b))
	}
	return "tether-system"
}
