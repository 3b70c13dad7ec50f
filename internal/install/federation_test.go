package install

import (
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// federationOn turns on the bundle endpoint (https_web behind a Secret) and
// the OIDC listener (TLS from a Secret).
var federationOn = []string{
	"ca.bundleEndpoint.enabled=true,ca.bundleEndpoint.profile=https_web,ca.bundleEndpoint.webCertSecret=bundle-web,ca.bundleEndpoint.refreshHint=15s,ca.bundleEndpoint.serviceType=LoadBalancer",
	"ca.oidc.enabled=true,ca.oidc.issuer=https://oidc.example.com/cluster-a,ca.oidc.tlsSecret=oidc-tls,ca.oidc.port=9443",
}

// servicePorts returns a Service's ports as name:port->targetPort.
func servicePorts(t *testing.T, svc *unstructured.Unstructured) []string {
	t.Helper()
	ports, _, _ := unstructured.NestedSlice(svc.Object, "spec", "ports")
	var out []string
	for _, p := range ports {
		m := p.(map[string]any)
		out = append(out, m["name"].(string)+":"+jsonString(m["port"])+"->"+jsonString(m["targetPort"]))
	}
	return out
}

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return strings.Trim(string(b), `"`)
}

// TestRenderFederationListeners: the bundle endpoint and the OIDC listener
// are off by default (no flag, port or Service); turned on, tether-ca gets
// their flags, container ports, TLS Secrets mounted, and a Service each.
func TestRenderFederationListeners(t *testing.T) {
	objs := renderT(t, Options{})
	for _, a := range args(t, objs, "tether-ca") {
		if strings.HasPrefix(a, "--bundle-endpoint") || strings.HasPrefix(a, "--oidc") {
			t.Errorf("default tether-ca args carry %s", a)
		}
	}
	for _, n := range []string{"tether-ca-bundle-endpoint", "tether-ca-oidc"} {
		if find(objs, "Service", n) != nil {
			t.Errorf("default values render the Service %s", n)
		}
	}
	if ports, _ := json.Marshal(container(t, objs, "tether-ca")["ports"]); strings.Contains(string(ports), "bundle-endpoint") || strings.Contains(string(ports), "oidc") {
		t.Errorf("default tether-ca ports %s", ports)
	}

	objs = renderT(t, Options{Values: Values{Set: federationOn}})
	ca := args(t, objs, "tether-ca")
	for _, want := range []string{"--bundle-endpoint-listen=:8444", "--bundle-endpoint-profile=https_web", "--bundle-endpoint-refresh-hint=15s",
		"--bundle-endpoint-web-cert=/etc/tether-ca/bundle-endpoint/tls.crt", "--bundle-endpoint-web-key=/etc/tether-ca/bundle-endpoint/tls.key",
		"--oidc-listen=:9443", "--oidc-issuer=https://oidc.example.com/cluster-a", "--oidc-tls-cert=/etc/tether-ca/oidc/tls.crt", "--oidc-tls-key=/etc/tether-ca/oidc/tls.key"} {
		if !slices.Contains(ca, want) {
			t.Errorf("tether-ca args %v lack %s", ca, want)
		}
	}
	if slices.Contains(ca, "--oidc-plain-http") {
		t.Error("--oidc-plain-http with a TLS Secret")
	}
	c := container(t, objs, "tether-ca")
	ports, _ := json.Marshal(c["ports"])
	for _, want := range []string{`{"containerPort":8444,"name":"bundle-endpoint"}`, `{"containerPort":9443,"name":"oidc"}`} {
		if !strings.Contains(string(ports), want) {
			t.Errorf("tether-ca ports %s lack %s", ports, want)
		}
	}
	mounts, _ := json.Marshal(c["volumeMounts"])
	vols, _, _ := unstructured.NestedSlice(find(objs, "Deployment", "tether-ca").Object, "spec", "template", "spec", "volumes")
	volJSON, _ := json.Marshal(vols)
	for _, want := range []string{`"mountPath":"/etc/tether-ca/bundle-endpoint","name":"bundle-endpoint-web","readOnly":true`, `"mountPath":"/etc/tether-ca/oidc","name":"oidc-tls","readOnly":true`} {
		if !strings.Contains(string(mounts), want) {
			t.Errorf("tether-ca mounts %s lack %s", mounts, want)
		}
	}
	for _, want := range []string{`"name":"bundle-endpoint-web","secret":{"secretName":"bundle-web"}`, `"name":"oidc-tls","secret":{"secretName":"oidc-tls"}`} {
		if !strings.Contains(string(volJSON), want) {
			t.Errorf("tether-ca volumes %s lack %s", volJSON, want)
		}
	}
	be := find(objs, "Service", "tether-ca-bundle-endpoint")
	oidc := find(objs, "Service", "tether-ca-oidc")
	if be == nil || oidc == nil {
		t.Fatal("no Service for the bundle endpoint or the OIDC listener")
	}
	if p := servicePorts(t, be); !slices.Equal(p, []string{"https-bundle:8444->bundle-endpoint"}) {
		t.Errorf("bundle endpoint Service ports %v", p)
	}
	if typ, _, _ := unstructured.NestedString(be.Object, "spec", "type"); typ != "LoadBalancer" {
		t.Errorf("bundle endpoint Service type %q, want LoadBalancer", typ)
	}
	if p := servicePorts(t, oidc); !slices.Equal(p, []string{"https-oidc:9443->oidc"}) {
		t.Errorf("OIDC Service ports %v", p)
	}
	if p := servicePorts(t, find(objs, "Service", "tether-ca")); !slices.Equal(p, []string{"grpc-tls:8443->grpc-tls"}) {
		t.Errorf("the CA API Service carries %v: the federation listeners have Services of their own", p)
	}

	// https_spiffe needs no Secret; OIDC in plain HTTP behind an ingress.
	objs = renderT(t, Options{Values: Values{Set: []string{"ca.bundleEndpoint.enabled=true", "ca.oidc.enabled=true,ca.oidc.issuer=https://oidc.example.com,ca.oidc.plainHTTP=true,ca.oidc.jwksURI=https://keys.example.com/k.json"}}})
	ca = args(t, objs, "tether-ca")
	for _, want := range []string{"--bundle-endpoint-listen=:8444", "--bundle-endpoint-profile=https_spiffe", "--oidc-listen=:8081", "--oidc-plain-http", "--oidc-jwks-uri=https://keys.example.com/k.json"} {
		if !slices.Contains(ca, want) {
			t.Errorf("tether-ca args %v lack %s", ca, want)
		}
	}
	for _, a := range ca {
		if strings.HasPrefix(a, "--bundle-endpoint-web") || strings.HasPrefix(a, "--oidc-tls") || strings.HasPrefix(a, "--bundle-endpoint-refresh-hint") {
			t.Errorf("tether-ca args carry %s", a)
		}
	}
	if p := servicePorts(t, find(objs, "Service", "tether-ca-oidc")); !slices.Equal(p, []string{"http-oidc:8081->oidc"}) {
		t.Errorf("plain-HTTP OIDC Service ports %v", p)
	}
}

// TestFederationValuesRefused: values that would make tether-ca refuse to
// start (or serve something unintended) fail the render, naming the fix.
func TestFederationValuesRefused(t *testing.T) {
	for _, c := range []struct {
		name string
		set  string
		want []string
	}{
		{"https_web without Secret", "ca.bundleEndpoint.enabled=true,ca.bundleEndpoint.profile=https_web", []string{"needs ca.bundleEndpoint.webCertSecret"}},
		{"Secret with https_spiffe", "ca.bundleEndpoint.enabled=true,ca.bundleEndpoint.webCertSecret=web", []string{"webCertSecret is for ca.bundleEndpoint.profile=https_web"}},
		{"unknown profile", "ca.bundleEndpoint.profile=http", []string{"/ca/bundleEndpoint/profile"}},
		{"bad port", "ca.bundleEndpoint.port=70000", []string{"/ca/bundleEndpoint/port", "maximum"}},
		{"bad hint", "ca.bundleEndpoint.refreshHint=soon", []string{"/ca/bundleEndpoint/refreshHint"}},
		{"bad Service type", "ca.oidc.serviceType=ExternalName", []string{"/ca/oidc/serviceType"}},
		{"OIDC without issuer", "ca.oidc.enabled=true,ca.oidc.plainHTTP=true", []string{"needs ca.oidc.issuer"}},
		{"OIDC plaintext issuer", "ca.oidc.enabled=true,ca.oidc.plainHTTP=true,ca.oidc.issuer=http://oidc.example.com", []string{"/ca/oidc/issuer"}},
		{"OIDC without TLS or plain HTTP", "ca.oidc.enabled=true,ca.oidc.issuer=https://oidc.example.com", []string{"exactly one of ca.oidc.tlsSecret", "ca.oidc.plainHTTP=true"}},
		{"OIDC with both", "ca.oidc.enabled=true,ca.oidc.issuer=https://oidc.example.com,ca.oidc.tlsSecret=t,ca.oidc.plainHTTP=true", []string{"exactly one of ca.oidc.tlsSecret"}},
		{"bad Secret name", "ca.oidc.tlsSecret=Not_A_Name", []string{"/ca/oidc/tlsSecret"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Render(Options{Values: Values{Set: []string{c.set}}})
			if err == nil {
				t.Fatalf("--set %s rendered", c.set)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// TestHelmTemplateFederationValues: the real helm binary renders the
// federation listeners as tether install does, and refuses what it refuses.
func TestHelmTemplateFederationValues(t *testing.T) {
	bin := helmBinary(t)
	chartDir := filepath.Join(repoRoot, "charts/tether")
	args := []string{"template", "tether", chartDir, "--namespace", Namespace, "--include-crds", "--set", "namespace.create=true"}
	for _, s := range federationOn {
		args = append(args, "--set", s)
	}
	out, stderr, err := helm(t, bin, args...)
	if err != nil {
		t.Fatalf("helm %s: %v: %s", strings.Join(args, " "), err, stderr)
	}
	h, err := Decode([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if d := diff(canonical(t, h), canonical(t, installed(t, federationOn))); d != "" {
		t.Errorf("helm template (first) and tether install (second) differ with the federation listeners on:\n%s", d)
	}
	_, stderr, err = helm(t, bin, "template", "tether", chartDir, "--namespace", Namespace, "--set", "ca.oidc.enabled=true,ca.oidc.issuer=https://oidc.example.com")
	if err == nil || !strings.Contains(stderr, "exactly one of ca.oidc.tlsSecret") {
		t.Errorf("helm template with OIDC on but neither TLS nor plain HTTP: %v %s", err, stderr)
	}
}
