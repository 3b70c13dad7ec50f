package inject

import (
	"encoding/json"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// AppProbe is one original probe as the sidecar runs it, with its port
// resolved to a number (the sidecar cannot see the pod spec). The
// sidecar's admin port serves it at AppProbePath(container, kind); the
// values of AppProbesEnv are a JSON object of path → AppProbe.
type AppProbe struct {
	HTTPGet        *corev1.HTTPGetAction   `json:"httpGet,omitempty"`
	TCPSocket      *corev1.TCPSocketAction `json:"tcpSocket,omitempty"`
	GRPC           *corev1.GRPCAction      `json:"grpc,omitempty"`
	TimeoutSeconds int32                   `json:"timeoutSeconds,omitempty"`
}

// AppProbePath is where the sidecar's admin port serves a rewritten probe;
// kind is livez, readyz or startupz.
func AppProbePath(container, kind string) string {
	return "/app-health/" + container + "/" + kind
}

type rewrittenProbe struct {
	field string // livenessProbe, readinessProbe, startupProbe
	probe *corev1.Probe
}

type probeSet struct {
	byContainer map[string][]rewrittenProbe
	app         map[string]AppProbe
}

// env is the value of AppProbesEnv ("" when nothing was rewritten).
func (s probeSet) env() string {
	if len(s.app) == 0 {
		return ""
	}
	b, _ := json.Marshal(s.app) // map keys are sorted: deterministic
	return string(b)
}

// rewriteProbes points the HTTP, TCP and gRPC probes of the app containers
// at the sidecar's admin port, which runs the original probe against the
// app from inside the pod, so probes pass in strict mode. Exec probes and
// probes of another host are left alone. It returns the rewritten probes,
// the originals as JSON for AnnotationOriginalProbes ("" when none) and
// warnings for probes it could not rewrite.
func rewriteProbes(pod *corev1.Pod) (probeSet, string, []string) {
	s := probeSet{byContainer: map[string][]rewrittenProbe{}, app: map[string]AppProbe{}}
	originals := map[string]map[string]*corev1.Probe{}
	var warnings []string
	for _, ct := range pod.Spec.Containers {
		for _, k := range []struct {
			field, kind string
			probe       *corev1.Probe
		}{
			{"livenessProbe", "livez", ct.LivenessProbe},
			{"readinessProbe", "readyz", ct.ReadinessProbe},
			{"startupProbe", "startupz", ct.StartupProbe},
		} {
			if k.probe == nil {
				continue
			}
			app, ok, err := appProbe(ct, k.probe)
			if err != nil {
				warnings = append(warnings, fmt.Sprintf("tether: %s of container %s is not rewritten and may fail in strict mode: %v", k.field, ct.Name, err))
				continue
			}
			if !ok {
				continue
			}
			path := AppProbePath(ct.Name, k.kind)
			s.app[path] = app
			rw := k.probe.DeepCopy()
			rw.ProbeHandler = corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: path, Port: intstr.FromInt32(AdminPort), Scheme: corev1.URISchemeHTTP,
			}}
			s.byContainer[ct.Name] = append(s.byContainer[ct.Name], rewrittenProbe{k.field, rw})
			if originals[ct.Name] == nil {
				originals[ct.Name] = map[string]*corev1.Probe{}
			}
			originals[ct.Name][k.field] = k.probe
		}
	}
	if len(originals) == 0 {
		return s, "", warnings
	}
	b, _ := json.Marshal(originals)
	return s, string(b), warnings
}

// appProbe turns a probe into what the sidecar runs; ok is false for
// probes that need no rewrite (exec, another host).
func appProbe(ct corev1.Container, p *corev1.Probe) (AppProbe, bool, error) {
	a := AppProbe{TimeoutSeconds: p.TimeoutSeconds}
	switch {
	case p.HTTPGet != nil:
		if p.HTTPGet.Host != "" {
			return a, false, nil
		}
		port, err := resolvePort(ct, p.HTTPGet.Port)
		if err != nil {
			return a, false, err
		}
		h := p.HTTPGet.DeepCopy()
		h.Port = intstr.FromInt32(port)
		a.HTTPGet = h
	case p.TCPSocket != nil:
		if p.TCPSocket.Host != "" {
			return a, false, nil
		}
		port, err := resolvePort(ct, p.TCPSocket.Port)
		if err != nil {
			return a, false, err
		}
		a.TCPSocket = &corev1.TCPSocketAction{Port: intstr.FromInt32(port)}
	case p.GRPC != nil:
		if p.GRPC.Port < 1 || p.GRPC.Port > 65535 {
			return a, false, fmt.Errorf("gRPC port %d out of range", p.GRPC.Port)
		}
		a.GRPC = p.GRPC.DeepCopy()
	default:
		return a, false, nil
	}
	return a, true, nil
}

// resolvePort returns a probe's port as a number, looking a named port up
// in the container's ports as the kubelet does.
func resolvePort(ct corev1.Container, p intstr.IntOrString) (int32, error) {
	if p.Type == intstr.Int {
		if p.IntVal < 1 || p.IntVal > 65535 {
			return 0, fmt.Errorf("port %d out of range", p.IntVal)
		}
		return p.IntVal, nil
	}
	for _, cp := range ct.Ports {
		if cp.Name == p.StrVal {
			return cp.ContainerPort, nil
		}
	}
	return 0, fmt.Errorf("named port %q is not a port of the container", p.StrVal)
}
