package cni

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/tether-mesh/tether/pkg/proxy/capture"
)

// Supported are the CNI spec versions tether-cni speaks.
var Supported = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// timeout bounds one invocation: the runtime waits for it.
const timeout = 30 * time.Second

// Plugin holds what an invocation needs besides its arguments.
type Plugin struct {
	// Log receives warnings (the runtime logs the plugin's stderr).
	Log io.Writer
}

// Funcs returns the plugin's commands for skel.PluginMainFuncs.
func (p Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check}
}

// decision is what ADD and CHECK learn about the pod: whether to capture,
// and how.
type decision struct {
	ns, name string
	capture  bool
	config   capture.Config
}

// decide reads the pod named in CNI_ARGS and works out its capture config.
func decide(ctx context.Context, conf *NetConf, args string) (decision, error) {
	podNS, podName, uid, err := podRef(args)
	if err != nil {
		return decision{}, err
	}
	d := decision{ns: podNS, name: podName}
	if slices.Contains(conf.ExcludeNamespaces, podNS) {
		return d, nil
	}
	kc, err := loadKubeconfig(conf.Kubeconfig)
	if err != nil {
		return d, err
	}
	kc.node = conf.NodeName
	p, err := kc.getPod(ctx, podNS, podName)
	if err != nil {
		return d, err
	}
	if uid != "" && p.Metadata.UID != uid {
		// Another pod of the same name: its annotations are not this
		// sandbox's. The runtime retries; the old pod's sandbox goes away.
		return d, types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("tether-cni: pod %s/%s at the API server has UID %s, the runtime asked for UID %s (the pod was replaced)", podNS, podName, p.Metadata.UID, uid), "")
	}
	if p.Spec.HostNetwork {
		return d, nil
	}
	if d.capture, err = meshed(p); err != nil || !d.capture {
		return d, err
	}
	d.config, err = captureConfig(p)
	return d, err
}

// Add passes the previous result through and, for a meshed pod, installs
// the capture rules in its network namespace. Running it again gives the
// same rules.
func (p Plugin) Add(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData, true)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	d, err := decide(ctx, conf, args.Args)
	if err != nil {
		return err
	}
	if d.capture {
		if err := ns.WithNetNSPath(args.Netns, func(ns.NetNS) error { return p.install(ctx, d.config) }); err != nil {
			return types.NewError(types.ErrInternal,
				fmt.Sprintf("tether-cni: install the capture rules of pod %s/%s in %s", d.ns, d.name, args.Netns), err.Error())
		}
	}
	return types.PrintResult(conf.PrevResult, conf.CNIVersion)
}

// install is what `tether-sidecar init` does in the pod: preflight, IPv6
// when the pod has it (required when it has an address other than
// link-local, best effort otherwise), Apply.
func (p Plugin) install(ctx context.Context, c capture.Config) error {
	addrs, err := capture.PodIPv6()
	if err != nil {
		return fmt.Errorf("list the pod's IPv6 addresses: %w", err)
	}
	required := len(addrs) > 0
	c.IPv6 = required || capture.IPv6Enabled()
	if err := capture.Check(c); err != nil {
		return err
	}
	err = apply(ctx, c)
	if err != nil && c.IPv6 && !required {
		fmt.Fprintf(p.Log, "tether-cni: warning: no IPv6 capture (the pod has no IPv6 address other than link-local): %v\n", err)
		c.IPv6 = false
		err = apply(ctx, c)
	}
	if err != nil && required {
		return fmt.Errorf("IPv6 capture is required (the pod has IPv6 address %s) but could not be set up: %w", addrs[0], err)
	}
	return err
}

func apply(ctx context.Context, c capture.Config) error {
	if c.IPv6 {
		if err := capture.AddDeliverySource6(); err != nil {
			return err
		}
	}
	return capture.Apply(ctx, c, nil)
}

// Del removes Tether's chains, and only those, from the pod's network
// namespace. A namespace that is already gone is not an error.
func (p Plugin) Del(args *skel.CmdArgs) error {
	if _, err := parseConf(args.StdinData, false); err != nil {
		return err
	}
	if args.Netns == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := ns.WithNetNSPath(args.Netns, func(ns.NetNS) error { return capture.Cleanup(ctx, nil) })
	var gone ns.NSPathNotExistErr
	if errors.As(err, &gone) || errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if errors.Is(err, capture.ErrIptablesNotFound) {
		// Without iptables no ADD of this node installed anything (it
		// fails): do not block the pod's teardown.
		fmt.Fprintf(p.Log, "tether-cni: DEL: %v: nothing of Tether's can be in %s\n", err, args.Netns)
		return nil
	}
	if err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("tether-cni: remove Tether's capture rules from %s", args.Netns), err.Error())
	}
	return nil
}

// Check verifies that a meshed pod's namespace holds exactly the rules ADD
// installs (IPv6 ones when the pod has an IPv6 address other than
// link-local).
func (p Plugin) Check(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData, true)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	d, err := decide(ctx, conf, args.Args)
	if err != nil || !d.capture {
		return err
	}
	err = ns.WithNetNSPath(args.Netns, func(ns.NetNS) error {
		addrs, err := capture.PodIPv6()
		if err != nil {
			return err
		}
		c := d.config
		c.IPv6 = len(addrs) > 0
		return capture.Verify(ctx, c, nil)
	})
	if err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("tether-cni: pod %s/%s: %v", d.ns, d.name, err), "")
	}
	return nil
}
