package cni

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"sigs.k8s.io/yaml"
)

// kubeconfig is the part of a kubeconfig file the plugin uses: the current
// context's cluster (server, CA) and user (bearer token).
type kubeconfig struct {
	CurrentContext string `json:"current-context"`
	Clusters       []struct {
		Name    string `json:"name"`
		Cluster struct {
			Server                   string `json:"server"`
			CertificateAuthorityData []byte `json:"certificate-authority-data"`
			CertificateAuthority     string `json:"certificate-authority"`
		} `json:"cluster"`
	} `json:"clusters"`
	Users []struct {
		Name string `json:"name"`
		User struct {
			Token     string `json:"token"`
			TokenFile string `json:"tokenFile"`
		} `json:"user"`
	} `json:"users"`
	Contexts []struct {
		Name    string `json:"name"`
		Context struct {
			Cluster string `json:"cluster"`
			User    string `json:"user"`
		} `json:"context"`
	} `json:"contexts"`
}

// kubeClient reads pods with one bearer token.
type kubeClient struct {
	server string
	token  string
	http   *http.Client
	node   string // the node's name, for error messages
}

// loadKubeconfig reads the kubeconfig at path (JSON or YAML) and returns a
// client for its current context. Only token authentication is supported:
// tether-cni-node writes a ServiceAccount token.
func loadKubeconfig(path string) (*kubeClient, error) {
	fail := func(format string, a ...any) error {
		return types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("tether-cni: kubeconfig %s: %s; is tether-cni-node running on this node?", path, fmt.Sprintf(format, a...)), "")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fail("cannot read it: %v", err)
	}
	var kc kubeconfig
	if err := yaml.Unmarshal(b, &kc); err != nil {
		return nil, fail("not a kubeconfig: %v", err)
	}
	var cluster, user string
	for _, c := range kc.Contexts {
		if c.Name == kc.CurrentContext {
			cluster, user = c.Context.Cluster, c.Context.User
		}
	}
	if cluster == "" {
		return nil, fail("current-context %q names no context", kc.CurrentContext)
	}
	kcl := &kubeClient{}
	var caPEM []byte
	for _, c := range kc.Clusters {
		if c.Name != cluster {
			continue
		}
		kcl.server, caPEM = strings.TrimSuffix(c.Cluster.Server, "/"), c.Cluster.CertificateAuthorityData
		if len(caPEM) == 0 && c.Cluster.CertificateAuthority != "" {
			if caPEM, err = os.ReadFile(c.Cluster.CertificateAuthority); err != nil {
				return nil, fail("certificate-authority: %v", err)
			}
		}
	}
	for _, u := range kc.Users {
		if u.Name != user {
			continue
		}
		kcl.token = u.User.Token
		if kcl.token == "" && u.User.TokenFile != "" {
			t, err := os.ReadFile(u.User.TokenFile)
			if err != nil {
				return nil, fail("tokenFile: %v", err)
			}
			kcl.token = strings.TrimSpace(string(t))
		}
	}
	if u, err := url.Parse(kcl.server); err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fail("cluster %q has no https server URL (server %q)", cluster, kcl.server)
	}
	if kcl.token == "" {
		return nil, fail("user %q has no token", user)
	}
	pool := x509.NewCertPool()
	if len(caPEM) == 0 || !pool.AppendCertsFromPEM(caPEM) {
		return nil, fail("cluster %q has no PEM certificate-authority(-data): the API server's certificate could not be verified", cluster)
	}
	kcl.http = &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
	}
	return kcl, nil
}

// pod is the part of a Pod the plugin reads.
type pod struct {
	Metadata struct {
		UID         string            `json:"uid"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec struct {
		HostNetwork    bool        `json:"hostNetwork"`
		InitContainers []container `json:"initContainers"`
		Containers     []container `json:"containers"`
	} `json:"spec"`
}

type container struct {
	Name string   `json:"name"`
	Args []string `json:"args"`
}

// errNotFound is wrapped when the API server has no such pod.
var errNotFound = errors.New("not found")

// getPod reads pod ns/name. Errors say what failed and what to do; an
// unreachable API server is "try again later" for the runtime.
func (k *kubeClient) getPod(ctx context.Context, ns, name string) (*pod, error) {
	u := k.server + "/api/v1/namespaces/" + url.PathEscape(ns) + "/pods/" + url.PathEscape(name)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("tether-cni: read pod %s/%s: %w", ns, name, err)
	}
	req.Header.Set("Authorization", "Bearer "+k.token)
	req.Header.Set("Accept", "application/json")
	resp, err := k.http.Do(req)
	if err != nil {
		return nil, types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("tether-cni: cannot read pod %s/%s from the API server, so its capture rules cannot be decided (the kubelet retries)", ns, name), err.Error())
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, types.NewError(types.ErrTryAgainLater, fmt.Sprintf("tether-cni: read pod %s/%s", ns, name), err.Error())
	}
	if err := statusError(resp.StatusCode, ns, name, k.node, body); err != nil {
		return nil, err
	}
	var p pod
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("tether-cni: pod %s/%s: cannot decode the API server's answer", ns, name), err.Error())
	}
	return &p, nil
}

// statusError is the CNI error for the API server's answer to the get of
// pod ns/name on node, nil for 200. Each message is one line: the runtime
// shows it in the pod's FailedCreatePodSandBox event.
func statusError(code int, ns, name, node string, body []byte) error {
	why := apiMessage(code, body)
	switch {
	case code == http.StatusOK:
		return nil
	case code == http.StatusUnauthorized:
		// The token is bound to the node agent's pod and expires: refused
		// once that pod is gone or the agent stopped renewing it. The
		// kubelet retries the sandbox; a new agent writes a fresh token.
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("tether-cni: cannot read pod %s/%s: the API server refused the node agent's token (HTTP 401): tether-cni-node on node %s is not running or has not renewed its token; the pod waits and starts once tether-cni-node runs on the node again", ns, name, node),
			why)
	case code == http.StatusForbidden:
		return types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("tether-cni: cannot read pod %s/%s: the API server forbids it to tether-cni-node's ServiceAccount (HTTP 403): its RBAC (get pods, ClusterRole tether-cni-node) is missing; reinstall Tether's CNI mode, or run `tether-cni-node uninstall` on node %s to take tether-cni out of its CNI chain", ns, name, node),
			why)
	case code == http.StatusNotFound:
		return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("tether-cni: pod %s/%s %v at the API server", ns, name, errNotFound), why)
	case code == http.StatusTooManyRequests || code >= 500:
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("tether-cni: cannot read pod %s/%s: the API server answered HTTP %d; the kubelet retries", ns, name, code), why)
	default:
		return types.NewError(types.ErrInternal,
			fmt.Sprintf("tether-cni: cannot read pod %s/%s: the API server answered HTTP %d, which tether-cni does not expect for a get of a pod", ns, name, code), why)
	}
}

// apiMessage is the message of a Kubernetes Status in body, else the
// start of body, on one line.
func apiMessage(code int, body []byte) string {
	var st struct {
		Message string `json:"message"`
	}
	msg := string(body)
	if json.Unmarshal(body, &st) == nil && st.Message != "" {
		msg = st.Message
	}
	msg = strings.Join(strings.Fields(msg), " ")
	if len(msg) > 300 {
		msg = msg[:300] + "..."
	}
	return fmt.Sprintf("HTTP %d: %s", code, msg)
}

// Kubeconfig renders the kubeconfig tether-cni-node writes for the plugin
// (JSON, which kubectl reads too): one cluster (server, CA in PEM), one
// user (a bearer token), one current context.
func Kubeconfig(server string, caPEM []byte, token string) ([]byte, error) {
	type named struct {
		Name    string         `json:"name"`
		Cluster map[string]any `json:"cluster,omitempty"`
		User    map[string]any `json:"user,omitempty"`
		Context map[string]any `json:"context,omitempty"`
	}
	b, err := json.MarshalIndent(map[string]any{
		"apiVersion":      "v1",
		"kind":            "Config",
		"current-context": PluginType,
		"clusters":        []named{{Name: PluginType, Cluster: map[string]any{"server": server, "certificate-authority-data": caPEM}}},
		"users":           []named{{Name: PluginType, User: map[string]any{"token": token}}},
		"contexts":        []named{{Name: PluginType, Context: map[string]any{"cluster": PluginType, "user": PluginType}}},
	}, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("render kubeconfig: %w", err)
	}
	return append(b, '\n'), nil
}
