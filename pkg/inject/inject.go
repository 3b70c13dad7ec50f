// Package inject is the mutation logic of tether-injector: it turns a Pod
// into the JSONPatch that adds Tether's init step (tether-init, or in CNI
// mode the unprivileged tether-validate) and native sidecar, and
// serves it as a Kubernetes mutating admission webhook (admission.k8s.io/v1).
//
// Mutate is a pure function of the Pod and the Config: no clock, no API
// calls, so the same Pod always gives the same patch, a Pod that already
// carries the sidecar gives none (reinvocation is safe), and dry-run
// requests need no special care.
package inject

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// Names from the Kubernetes contract (docs/architecture.md,
// "Kubernetes contract").
const (
	// InjectLabel on a namespace (enabled) turns injection on; on a pod
	// (disabled) it opts the pod out. A namespace labelled required
	// (RequiredValue) is injected and refuses pods that opt out.
	InjectLabel   = "tether.dev/inject"
	RequiredValue = "required"

	AnnotationExcludeInboundPorts  = "tether.dev/exclude-inbound-ports"
	AnnotationExcludeOutboundPorts = "tether.dev/exclude-outbound-ports"
	AnnotationExcludeOutboundCIDRs = "tether.dev/exclude-outbound-cidrs"
	AnnotationInboundMode          = "tether.dev/inbound-mode"
	AnnotationOutboundMode         = "tether.dev/outbound-mode"
	AnnotationProxyCPU             = "tether.dev/proxy-cpu"
	AnnotationProxyMemory          = "tether.dev/proxy-memory"
	// AnnotationLocalhostInboundPorts lists the app ports that inbound mesh
	// traffic may be delivered to on 127.0.0.1 when the app does not listen
	// on the pod IP. Other ports are reached at the pod IP only.
	AnnotationLocalhostInboundPorts = "tether.dev/localhost-inbound-ports"
	// AnnotationOriginalProbes is written by the injector: the app
	// containers' probes as they were before the rewrite, as JSON
	// {"<container>": {"livenessProbe": {...}, ...}}.
	AnnotationOriginalProbes = "tether.dev/original-probes"

	InitContainerName    = "tether-init"
	SidecarContainerName = "tether-sidecar"
	// ValidateContainerName is the init container that, in RedirectCNI
	// mode, checks without privileges that the CNI plugin redirected the
	// pod's traffic, and fails the pod when it did not.
	ValidateContainerName = "tether-validate"

	TokenVolume  = "tether-token"
	BundleVolume = "tether-bundle"
	SocketVolume = "tether-socket"

	TokenDir     = "/var/run/secrets/tether"
	TokenFile    = "token"
	TokenPath    = TokenDir + "/" + TokenFile
	TokenAud     = "tether-ca"
	TokenSeconds = 3600
	BundleDir    = "/etc/tether/bundle"
	BundleConfig = "tether-trust-bundle"
	SocketDir    = "/run/tether"
	SocketPath   = SocketDir + "/workload.sock"
	SocketEnv    = "SPIFFE_ENDPOINT_SOCKET"

	// AppProbesEnv carries the rewritten probes' originals to the sidecar,
	// which serves them under /app-health/<container>/<kind> (see
	// internal/sidecar/probes.go).
	AppProbesEnv = "TETHER_APP_PROBES"
	// PodIPEnv gives the sidecar the pod's IP (downward API status.podIP),
	// where it runs the app probes, as the kubelet would.
	PodIPEnv = "TETHER_POD_IP"

	ProxyUID  = 1337
	AdminPort = 15020
	// ValidatorUID runs tether-validate: any UID but the sidecar's, whose
	// traffic the capture rules exempt.
	ValidatorUID = 1338
	// NodeNameEnv gives tether-validate the node's name (downward API
	// spec.nodeName) for its message.
	NodeNameEnv = "TETHER_NODE_NAME"
)

// The control-plane namespaces are never injected, whatever their labels.
var neverInjected = map[string]bool{"tether-system": true, "kube-system": true}

// ErrInvalidAnnotation is wrapped by every error about a pod annotation; the
// message names the annotation and its value.
var ErrInvalidAnnotation = errors.New("invalid annotation")

// ErrProxyIdentity is wrapped by the error about a container that runs as
// the sidecar's UID or GID; the pod must then be refused.
var ErrProxyIdentity = errors.New("runs as the sidecar's user or group")

// Config is what the injector puts into every pod besides what the pod's
// own annotations say.
type Config struct {
	// Image holds tether-sidecar (the one Tether image).
	Image string
	// ImagePullPolicy of the injected containers (default IfNotPresent).
	ImagePullPolicy corev1.PullPolicy
	// CAAddr is tether-ca's address as the sidecar dials it.
	CAAddr string
	// DiscoveryAddr is tether-discovery's address as the sidecar dials it;
	// DiscoveryOff leaves discovery out (the sidecar then passes every
	// outbound connection through and allows every mesh peer inbound).
	DiscoveryAddr string
	TrustDomain   string
	// ProxyCPU and ProxyMemory are the sidecar's default requests; memory
	// is also its limit. Pods override them with annotations.
	ProxyCPU    resource.Quantity
	ProxyMemory resource.Quantity
	// LogLevel of the injected sidecar.
	LogLevel string
	// RedirectMode says who sets up the pod's traffic redirection:
	// RedirectInit (default), the privileged tether-init container, or
	// RedirectCNI, the Tether CNI plugin on the node; the pod then carries
	// AnnotationRedirect and the unprivileged tether-validate instead, and
	// complies with Pod Security "restricted".
	RedirectMode string
}

// DiscoveryOff as Config.DiscoveryAddr injects sidecars without discovery.
const DiscoveryOff = "off"

// RedirectInit as Config.RedirectMode (the default) has the tether-init
// container redirect the pod's traffic; RedirectCNI has the CNI plugin do it.
const RedirectInit = "init"

// DefaultConfig is the Config with every default filled in, for image.
func DefaultConfig(image string) Config {
	return Config{
		Image:           image,
		ImagePullPolicy: corev1.PullIfNotPresent,
		CAAddr:          "tether-ca.tether-system.svc:8443",
		DiscoveryAddr:   "tether-discovery.tether-system.svc:15010",
		TrustDomain:     "cluster.local",
		ProxyCPU:        resource.MustParse("50m"),
		ProxyMemory:     resource.MustParse("128Mi"),
		LogLevel:        "info",
		RedirectMode:    RedirectInit,
	}
}

// Validate checks the Config and fills in defaults for empty fields.
func (c *Config) Validate() error {
	d := DefaultConfig(c.Image)
	if c.Image == "" {
		return errors.New("--image is required (the Tether image the sidecar runs from)")
	}
	if c.ImagePullPolicy == "" {
		c.ImagePullPolicy = d.ImagePullPolicy
	}
	switch c.ImagePullPolicy {
	case corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		return fmt.Errorf("--image-pull-policy %q: want Always, IfNotPresent or Never", c.ImagePullPolicy)
	}
	if c.CAAddr == "" {
		c.CAAddr = d.CAAddr
	}
	if c.DiscoveryAddr == "" {
		c.DiscoveryAddr = d.DiscoveryAddr
	}
	if c.DiscoveryAddr != DiscoveryOff {
		if _, _, err := net.SplitHostPort(c.DiscoveryAddr); err != nil {
			return fmt.Errorf("--discovery %q: want HOST:PORT or %q: %v", c.DiscoveryAddr, DiscoveryOff, err)
		}
	}
	if c.TrustDomain == "" {
		c.TrustDomain = d.TrustDomain
	}
	if td, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil || td.Name() != c.TrustDomain {
		return fmt.Errorf("--trust-domain %q: want a bare trust domain name such as cluster.local", c.TrustDomain)
	}
	if c.ProxyCPU.IsZero() {
		c.ProxyCPU = d.ProxyCPU
	}
	if c.ProxyMemory.IsZero() {
		c.ProxyMemory = d.ProxyMemory
	}
	if c.ProxyCPU.Sign() < 0 || c.ProxyMemory.Sign() < 0 {
		return errors.New("proxy CPU and memory must be positive")
	}
	if c.LogLevel == "" {
		c.LogLevel = d.LogLevel
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("--sidecar-log-level %q: want debug, info, warn or error", c.LogLevel)
	}
	if c.RedirectMode == "" {
		c.RedirectMode = d.RedirectMode
	}
	if c.RedirectMode != RedirectInit && c.RedirectMode != RedirectCNI {
		return fmt.Errorf("--redirect-mode %q: want %s (the tether-init container, which needs NET_ADMIN) or %s (the Tether CNI plugin; needs the tether-cni-node DaemonSet)",
			c.RedirectMode, RedirectInit, RedirectCNI)
	}
	return nil
}

// Result is the outcome of Mutate.
type Result struct {
	// Patch is the JSONPatch; empty when the pod is left as it is.
	Patch Patch
	// Skipped says why the pod is left as it is ("" when it is injected).
	Skipped string
	// Warnings are returned to the client (kubectl prints them).
	Warnings []string
}

// Mutate returns the patch that injects Tether into pod, created in
// namespace ns (the admission request's namespace: a pod created with
// generateName may not carry it yet). A bad annotation is an error wrapping
// ErrInvalidAnnotation; the pod must then be refused.
//
// A pod that already carries tether-init, tether-validate or tether-sidecar
// is left as it is only if they are exactly what this injector adds for it
// (reinvocation, or a stored injected spec created again); otherwise it
// is refused with an error wrapping ErrNotOurInjection.
func (c *Config) Mutate(pod *corev1.Pod, ns string) (Result, error) {
	return c.mutate(pod, ns, false)
}

// MutateRequired is Mutate for a namespace labelled
// tether.dev/inject=required (RequiredValue): a pod that opts out or
// cannot be injected (hostNetwork) is refused with an error wrapping
// ErrInjectionRequired, so no pod of the namespace runs without a
// sidecar.
func (c *Config) MutateRequired(pod *corev1.Pod, ns string) (Result, error) {
	return c.mutate(pod, ns, true)
}

func (c *Config) mutate(pod *corev1.Pod, ns string, required bool) (Result, error) {
	if ns == "" {
		ns = pod.Namespace
	}
	if neverInjected[ns] {
		return Result{Skipped: "namespace " + ns + " is never injected"}, nil
	}
	if required {
		switch {
		case pod.Labels[InjectLabel] == "disabled":
			return Result{}, fmt.Errorf("%w: namespace %s is labelled %s=%s, so the pod's opt-out label %s=disabled is refused",
				ErrInjectionRequired, ns, InjectLabel, RequiredValue, InjectLabel)
		case pod.Spec.HostNetwork:
			return Result{}, fmt.Errorf("%w: namespace %s is labelled %s=%s and a hostNetwork pod cannot be injected (capture rules would apply to the node's network)",
				ErrInjectionRequired, ns, InjectLabel, RequiredValue)
		}
	}
	switch {
	case hasContainer(pod, SidecarContainerName) || hasContainer(pod, InitContainerName) || hasContainer(pod, ValidateContainerName):
		// Checked before the opt-out: a pod that opts out must not also
		// pass for an injected one.
		opts, err := parseAnnotations(pod.Annotations)
		if err != nil {
			return Result{}, err
		}
		if err := c.verifyInjected(pod, opts); err != nil {
			return Result{}, err
		}
		return Result{Skipped: "already injected (verified)"}, nil
	case pod.Labels[InjectLabel] == "disabled":
		return Result{Skipped: "opted out with label " + InjectLabel + "=disabled"}, nil
	case pod.Spec.HostNetwork:
		return Result{
			Skipped:  "hostNetwork",
			Warnings: []string{"tether: pod uses hostNetwork and is not injected (capture rules would apply to the node's network)"},
		}, nil
	}
	opts, err := parseAnnotations(pod.Annotations)
	if err != nil {
		return Result{}, err
	}
	if err := checkProxyIdentity(pod); err != nil {
		return Result{}, err
	}
	var res Result
	res.Warnings = opts.warnings

	probes, originals, warnings := rewriteProbes(pod)
	res.Warnings = append(res.Warnings, warnings...)

	p := &res.Patch
	// Volumes.
	vols := []corev1.Volume{c.tokenVolume(), bundleVolume(), socketVolume()}
	addAll(p, "/spec/volumes", len(pod.Spec.Volumes) == 0, vols)
	// Init step and sidecar go first, so the app's own init containers
	// already run behind the capture rules and the sidecar.
	initC := c.firstContainer(opts)
	side, err := c.sidecarContainer(opts, probes.env())
	if err != nil {
		return Result{}, err
	}
	if len(pod.Spec.InitContainers) == 0 {
		p.add("/spec/initContainers", []corev1.Container{initC, side})
	} else {
		p.add("/spec/initContainers/0", initC)
		p.add("/spec/initContainers/1", side)
	}
	for i := range pod.Spec.Containers {
		ct := &pod.Spec.Containers[i]
		base := fmt.Sprintf("/spec/containers/%d", i)
		if !hasEnv(ct.Env, SocketEnv) {
			addAll(p, base+"/env", len(ct.Env) == 0, []corev1.EnvVar{{Name: SocketEnv, Value: "unix://" + SocketPath}})
		}
		if !hasMountPath(ct.VolumeMounts, SocketDir) {
			addAll(p, base+"/volumeMounts", len(ct.VolumeMounts) == 0, []corev1.VolumeMount{{Name: SocketVolume, MountPath: SocketDir, ReadOnly: true}})
		}
		for _, r := range probes.byContainer[ct.Name] {
			p.replace(base+"/"+r.field, r.probe)
		}
	}
	c.addAnnotations(p, pod, originals)
	return res, nil
}

// addAnnotations adds the original probes (if any) and, in RedirectCNI
// mode, the marker the CNI plugin keys on.
func (c *Config) addAnnotations(p *Patch, pod *corev1.Pod, originals string) {
	add := map[string]string{}
	if originals != "" {
		add[AnnotationOriginalProbes] = originals
	}
	if c.RedirectMode == RedirectCNI {
		add[AnnotationRedirect] = RedirectCNI
	}
	if len(add) == 0 {
		return
	}
	if len(pod.Annotations) == 0 {
		p.add("/metadata/annotations", add)
		return
	}
	for _, k := range []string{AnnotationOriginalProbes, AnnotationRedirect} {
		if v, ok := add[k]; ok {
			p.add("/metadata/annotations/"+escapePointer(k), v)
		}
	}
}

// checkProxyIdentity refuses a pod with a container that runs as the
// sidecar's UID or GID: the capture rules exempt that owner, so such a
// container's traffic would skip the sidecar (inbound policy on its
// connections to its own pod, registry-only egress, UDP rules). Istio
// refuses these pods too. The image's own USER cannot be seen here.
func checkProxyIdentity(pod *corev1.Pod) error {
	var podUID, podGID *int64
	if sc := pod.Spec.SecurityContext; sc != nil {
		podUID, podGID = sc.RunAsUser, sc.RunAsGroup
	}
	check := func(kind, name string, sc *corev1.SecurityContext) error {
		for _, id := range []struct {
			what, field  string
			own, inherit *int64
		}{
			{"UID", "runAsUser", nil, podUID},
			{"GID", "runAsGroup", nil, podGID},
		} {
			if sc != nil {
				if id.field == "runAsUser" {
					id.own = sc.RunAsUser
				} else {
					id.own = sc.RunAsGroup
				}
			}
			where, v := "securityContext."+id.field, id.own
			if v == nil {
				where, v = "the pod's securityContext."+id.field, id.inherit
			}
			if v != nil && *v == ProxyUID {
				return fmt.Errorf("%w: %s %q runs as %s %d (%s), the sidecar's: the capture rules exempt that %s, so its traffic would skip the sidecar and its policy; run it as another %s",
					ErrProxyIdentity, kind, name, id.what, ProxyUID, where, id.what, id.what)
			}
		}
		return nil
	}
	for _, c := range pod.Spec.InitContainers {
		if err := check("init container", c.Name, c.SecurityContext); err != nil {
			return err
		}
	}
	for _, c := range pod.Spec.Containers {
		if err := check("container", c.Name, c.SecurityContext); err != nil {
			return err
		}
	}
	for _, c := range pod.Spec.EphemeralContainers {
		if err := check("ephemeral container", c.Name, c.SecurityContext); err != nil {
			return err
		}
	}
	return nil
}

// Injected reports whether pod carries a container named tether-sidecar
// (for readers of stored pods; admission decides with Mutate, which
// verifies the containers themselves).
func Injected(pod *corev1.Pod) bool { return hasContainer(pod, SidecarContainerName) }

func hasContainer(pod *corev1.Pod, name string) bool {
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range list {
			if c.Name == name {
				return true
			}
		}
	}
	return false
}

func hasEnv(env []corev1.EnvVar, name string) bool {
	for _, e := range env {
		if e.Name == name {
			return true
		}
	}
	return false
}

func hasMountPath(mounts []corev1.VolumeMount, path string) bool {
	for _, m := range mounts {
		if strings.TrimRight(m.MountPath, "/") == path {
			return true
		}
	}
	return false
}
