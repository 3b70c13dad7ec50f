package cni

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// PluginType is the "type" of tether-cni's entry in a conflist, and the
// name of its binary in the CNI bin dir.
const PluginType = "tether-cni"

// DefaultExcludeNamespaces are the namespaces whose pods the plugin never
// reads: the injector never injects them, and the API server or DNS may run
// there, so reading their pods could wait on the pods being created.
var DefaultExcludeNamespaces = []string{"kube-system", "tether-system"}

// NetConf is tether-cni's entry in the conflist, as the node agent writes it.
type NetConf struct {
	types.PluginConf
	// Kubeconfig is the path, on the node, of the kubeconfig the plugin
	// reads pods with (written by tether-cni-node).
	Kubeconfig string `json:"kubeconfig"`
	// ExcludeNamespaces are never read; nil means
	// DefaultExcludeNamespaces.
	ExcludeNamespaces []string `json:"excludeNamespaces,omitempty"`
	// NodeName is the Kubernetes name of the node, for error messages;
	// empty means the host name.
	NodeName string `json:"nodeName,omitempty"`
}

// parseConf decodes the plugin's stdin and its prevResult. A chained
// plugin must have one for ADD and CHECK (needPrev).
func parseConf(stdin []byte, needPrev bool) (*NetConf, error) {
	var c NetConf
	if err := json.Unmarshal(stdin, &c); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "tether-cni: cannot decode the network configuration", err.Error())
	}
	if err := version.ParsePrevResult(&c.PluginConf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure,
			"tether-cni: malformed prevResult from the previous plugin in the chain", err.Error())
	}
	if needPrev && c.PrevResult == nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig,
			"tether-cni: no prevResult: tether-cni is a chained plugin and must come after the plugin that creates the pod's interface (for example bridge or ptp) in a conflist",
			"")
	}
	if strings.TrimSpace(c.Kubeconfig) == "" {
		return nil, types.NewError(types.ErrInvalidNetworkConfig,
			`tether-cni: "kubeconfig" is not set in its conflist entry; tether-cni-node writes it, reinstall the entry`, "")
	}
	if c.ExcludeNamespaces == nil {
		c.ExcludeNamespaces = DefaultExcludeNamespaces
	}
	if c.NodeName == "" {
		c.NodeName, _ = os.Hostname()
	}
	return &c, nil
}

// k8sArgs are the CNI_ARGS the kubelet's runtime passes.
type k8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE types.UnmarshallableString //nolint:revive // the CNI_ARGS key
	K8S_POD_NAME      types.UnmarshallableString //nolint:revive // the CNI_ARGS key
	K8S_POD_UID       types.UnmarshallableString //nolint:revive // the CNI_ARGS key (containerd and CRI-O pass it)
}

// podRef reads the pod's namespace, name and (when the runtime passes it)
// UID from CNI_ARGS.
func podRef(args string) (ns, name, uid string, err error) {
	a := k8sArgs{CommonArgs: types.CommonArgs{IgnoreUnknown: true}}
	if err := types.LoadArgs(args, &a); err != nil {
		return "", "", "", types.NewError(types.ErrInvalidEnvironmentVariables, "tether-cni: malformed CNI_ARGS", err.Error())
	}
	ns, name = string(a.K8S_POD_NAMESPACE), string(a.K8S_POD_NAME)
	if ns == "" || name == "" {
		return "", "", "", types.NewError(types.ErrInvalidEnvironmentVariables,
			"tether-cni: CNI_ARGS has no K8S_POD_NAMESPACE and K8S_POD_NAME: tether-cni runs only for Kubernetes pods (the kubelet's runtime passes them)",
			fmt.Sprintf("CNI_ARGS=%q", args))
	}
	return ns, name, string(a.K8S_POD_UID), nil
}
