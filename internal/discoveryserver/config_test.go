package discoveryserver

import (
	"context"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/discovery/flows"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/discovery/xds"
	"github.com/tether-mesh/tether/pkg/identity"
)

// validToken has the form of a join token (ParseFlags checks only that).
const validToken = "tjt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"

func noEnv(string) string { return "" }

func TestParseFlagsDefaults(t *testing.T) {
	if _, err := os.Stat(ProjectedTokenPath); err == nil {
		t.Skip(ProjectedTokenPath + " exists on this machine; the defaults differ")
	}
	c, err := ParseFlags([]string{"--mesh-file", "mesh.yaml", "--join-token", validToken}, noEnv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		TrustDomain: "cluster.local", Registry: RegistryFile, MeshFile: "mesh.yaml", MeshFileInterval: DefaultMeshFileInterval,
		ClusterDomain: "cluster.local", ListenAddr: ":15010", AdminAddr: ":15014", MaxConcurrentSyncs: xds.DefaultMaxConcurrentSyncs,
		MaxStreamsPerIdentity: xds.DefaultMaxStreamsPerIdentity,
		FlowMaxEdges:          flows.DefaultMaxEdges, FlowMaxEdgesPerReporter: flows.DefaultMaxEdgesPerReporter, FlowRetention: flows.DefaultRetention,
		CAAddr: "tether-ca.tether-system.svc:8443", BundleFile: "/etc/tether/bundle/bundle.pem", JoinToken: validToken,
	}
	c.Logger = nil
	if c != want {
		t.Errorf("config = %+v\nwant     %+v", c, want)
	}

	env := map[string]string{
		"TETHER_TRUST_DOMAIN": "example.org", "TETHER_CA_ADDR": "ca:1", "TETHER_JOIN_TOKEN": validToken,
		"TETHER_CLUSTER_DOMAIN": "Corp.Example.", "KUBECONFIG": "/kc",
	}
	c, err = ParseFlags([]string{"--registry", "kube"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.TrustDomain != "example.org" || c.CAAddr != "ca:1" || c.JoinToken != validToken || c.Kubeconfig != "/kc" ||
		c.ClusterDomain != "corp.example" || c.Registry != RegistryKube || c.DefaultPolicy != "" {
		t.Errorf("from the environment: %+v", c)
	}
	if _, err := ParseFlags([]string{"-h"}, noEnv, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v, want flag.ErrHelp", err)
	}
}

func TestParseFlagsErrors(t *testing.T) {
	if _, err := os.Stat(ProjectedTokenPath); err == nil {
		t.Skip(ProjectedTokenPath + " exists on this machine; --token-file defaults to it")
	}
	base := []string{"--mesh-file", "mesh.yaml", "--join-token", validToken}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown flag", []string{"--mesh", "x"}, "flag provided but not defined: -mesh"},
		{"positional argument", []string{"serve"}, `unexpected arguments ["serve"]`},
		{"bad trust domain", []string{"--trust-domain", "Not A Domain!"}, `--trust-domain "Not A Domain!"`},
		{"SPIFFE ID as trust domain", []string{"--trust-domain", "spiffe://cluster.local"}, `give the bare trust domain name, e.g. "cluster.local"`},
		{"unknown registry", []string{"--registry", "etcd"}, `--registry "etcd": want file or kube`},
		{"file registry without file", []string{"--mesh-file", ""}, "--registry=file needs --mesh-file"},
		{"mesh file in kube mode", []string{"--registry", "kube"}, "--mesh-file is only read with --registry=file"},
		{"bad default policy", []string{"--default-policy", "open"}, `--default-policy: unknown default policy "open": use allow-mesh, same-namespace or deny`},
		{"bad default policy mode", []string{"--default-policy-mode", "Audit"}, `--default-policy-mode: unknown policy mode "Audit": use enforce or audit`},
		{"cluster domain with underscore", []string{"--cluster-domain", "my_cluster.local"}, `--cluster-domain "my_cluster.local": label "my_cluster" is not a DNS label`},
		{"cluster domain with empty label", []string{"--cluster-domain", "cluster..local"}, `label "" is not a DNS label`},
		{"cluster domain only a dot", []string{"--cluster-domain", "."}, "want a DNS name such as cluster.local"},
		{"negative interval", []string{"--mesh-file-interval", "-1s"}, "--mesh-file-interval -1s must be positive"},
		{"unparsable interval", []string{"--mesh-file-interval", "soon"}, `invalid value "soon" for flag -mesh-file-interval`},
		{"empty listen", []string{"--listen", ""}, "--listen is required"},
		{"negative max syncs", []string{"--max-concurrent-syncs", "-1"}, "--max-concurrent-syncs -1: want at least 1"},
		{"unparsable max syncs", []string{"--max-concurrent-syncs", "many"}, `invalid value "many" for flag -max-concurrent-syncs`},
		{"empty admin listen", []string{"--admin-listen", ""}, "--admin-listen is required"},
		{"empty CA", []string{"--ca", ""}, "--ca is required"},
		{"empty bundle", []string{"--bundle", ""}, "--bundle is required"},
		{"two credentials", []string{"--token-file", "/t"}, "give exactly one of --join-token"},
		{"no credential", []string{"--join-token", ""}, "give exactly one of --join-token"},
		{"malformed join token", []string{"--join-token", "hunter2"}, "--join-token: not a join token; create one with `tether ca token create`"},
		{"bad log level", []string{"--log-level", "loud"}, `--log-level "loud"`},
		{"bad log format", []string{"--log-format", "xml"}, `--log-format "xml"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if tt.name != "unknown flag" && tt.name != "positional argument" {
				args = append(append([]string{}, base...), tt.args...)
			}
			if tt.name == "mesh file in kube mode" {
				args = append(args, "--mesh-file", "mesh.yaml")
			}
			_, err := ParseFlags(args, noEnv, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ParseFlags(%q) = %v, want an error containing %q", args, err, tt.want)
			}
			t.Log(err)
		})
	}
}

// startFiles are a bundle file and a join token good enough for New (no
// CA is contacted before Run).
func startFiles(t *testing.T) (bundle, token string) {
	t.Helper()
	ca := testutil.NewCA(t, identity.RealClock, nil)
	bundle = filepath.Join(t.TempDir(), "bundle.pem")
	if err := identity.WriteBundlePEM(bundle, ca.Bundle().Bundle); err != nil {
		t.Fatal(err)
	}
	token, _, err := ca.CreateReservedJoinToken(context.Background(), discoveryID, time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	return bundle, token
}

// TestNewErrors checks the inputs New refuses before serving anything.
func TestNewErrors(t *testing.T) {
	bundle, token := startFiles(t)
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	otherTD := testutil.NewCA(t, identity.RealClock, func(c *identity.Config) {
		c.TrustDomain = spiffeid.RequireTrustDomainFromString("example.org")
	})
	otherBundle := filepath.Join(dir, "other-bundle.pem")
	if err := identity.WriteBundlePEM(otherBundle, otherTD.Bundle().Bundle); err != nil {
		t.Fatal(err)
	}
	good := file("good.yaml", meshYAML("127.0.0.2", true))
	tests := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"mesh file missing", func(c *Config) { c.MeshFile = filepath.Join(dir, "nope.yaml") },
			"nope.yaml does not exist; write one first"},
		{"mesh file is a directory", func(c *Config) { c.MeshFile = dir }, "is a directory"},
		{"mesh file empty", func(c *Config) { c.MeshFile = file("empty.yaml", "") }, "bad mesh file: file is empty"},
		{"mesh file broken YAML", func(c *Config) { c.MeshFile = file("broken.yaml", "services: [oops\n") }, "bad mesh file"},
		{"mesh file unknown field", func(c *Config) { c.MeshFile = file("unknown.yaml", "services:\n  - name: web\n    replicas: 3\n") },
			`line 3: unknown field "replicas"`},
		{"mesh file invalid service", func(c *Config) { c.MeshFile = file("invalid.yaml", "services:\n  - name: Web_Server\n") },
			`"Web_Server" is not a valid Service name`},
		{"mesh file of another trust domain", func(c *Config) { c.MeshFile = file("td.yaml", "trustDomain: example.org\n") },
			"trustDomain example.org differs from --trust-domain cluster.local"},
		{"mesh file default differs from the flag", func(c *Config) { c.DefaultPolicy = "allow-mesh" },
			"defaultPolicy deny differs from --default-policy allow-mesh"},
		{"mesh file default mode differs from the flag", func(c *Config) {
			c.MeshFile, c.DefaultPolicyMode = file("audit.yaml", "defaultPolicyMode: audit\n"+meshYAML("127.0.0.2", true)), "enforce"
		}, "defaultPolicyMode audit differs from --default-policy-mode enforce; drop one of them"},
		{"mesh file bad default mode", func(c *Config) { c.MeshFile = file("badmode.yaml", "defaultPolicyMode: dry-run\n") },
			`defaultPolicyMode: unknown policy mode "dry-run"`},
		{"bundle missing", func(c *Config) { c.BundleFile = filepath.Join(dir, "nope.pem") }, "--bundle: read bundle"},
		{"bundle without certificates", func(c *Config) { c.BundleFile = file("junk.pem", "not a bundle\n") }, "holds no PEM certificate"},
		{"bundle of another trust domain", func(c *Config) { c.BundleFile = otherBundle },
			"its roots are of trust domain example.org, but --trust-domain is cluster.local"},
		{"token file missing", func(c *Config) { c.JoinToken, c.TokenFile = "", filepath.Join(dir, "token") }, "--token-file: stat"},
		{"kubeconfig missing", func(c *Config) {
			c.Registry, c.MeshFile, c.Kubeconfig = RegistryKube, "", filepath.Join(dir, "kubeconfig")
		}, "--kubeconfig: stat"},
		{"kubeconfig not a kubeconfig", func(c *Config) {
			c.Registry, c.MeshFile, c.Kubeconfig = RegistryKube, "", file("kubeconfig.yaml", "apiVersion: v1\nkind: Config\n")
		}, "--kubeconfig: invalid configuration"},
		{"not in a cluster", func(c *Config) {
			t.Setenv("KUBERNETES_SERVICE_HOST", "")
			c.Registry, c.MeshFile = RegistryKube, ""
		}, "outside a cluster, pass --kubeconfig"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{TrustDomain: "cluster.local", MeshFile: good, ListenAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
				CAAddr: "127.0.0.1:1", BundleFile: bundle, JoinToken: token}
			tt.mod(&cfg)
			_, err := New(cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New = %v, want an error containing %q", err, tt.want)
			}
			t.Log(err)
		})
	}
}

// TestDefaultPolicyChoice: the flag, else the file, else allow-mesh.
func TestDefaultPolicyChoice(t *testing.T) {
	bundle, token := startFiles(t)
	dir := t.TempDir()
	withDefault := filepath.Join(dir, "deny.yaml")
	os.WriteFile(withDefault, []byte(meshYAML("127.0.0.2", true)), 0o644)
	without := filepath.Join(dir, "none.yaml")
	os.WriteFile(without, []byte(strings.TrimPrefix(meshYAML("127.0.0.2", true), "defaultPolicy: deny\n")), 0o644)
	tests := []struct {
		file, flag string
		want       policy.Default
	}{
		{withDefault, "", policy.Deny},
		{withDefault, "deny", policy.Deny},
		{without, "", policy.AllowMesh},
		{without, "same-namespace", policy.SameNamespace},
	}
	for _, tt := range tests {
		cfg := Config{TrustDomain: "cluster.local", MeshFile: tt.file, DefaultPolicy: tt.flag,
			ListenAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", CAAddr: "127.0.0.1:1", BundleFile: bundle, JoinToken: token}
		s, err := New(cfg)
		if err != nil {
			t.Fatalf("%s with --default-policy=%q: %v", filepath.Base(tt.file), tt.flag, err)
		}
		if got := s.Registry().MeshDefault(); got != tt.want {
			t.Errorf("%s with --default-policy=%q: mesh default %s, want %s", filepath.Base(tt.file), tt.flag, got, tt.want)
		}
	}
}

// TestDefaultPolicyModeChoice: the flag, else the file, else enforce.
func TestDefaultPolicyModeChoice(t *testing.T) {
	bundle, token := startFiles(t)
	dir := t.TempDir()
	audit := filepath.Join(dir, "audit.yaml")
	os.WriteFile(audit, []byte("defaultPolicyMode: audit\n"+meshYAML("127.0.0.2", true)), 0o644)
	plain := filepath.Join(dir, "plain.yaml")
	os.WriteFile(plain, []byte(meshYAML("127.0.0.2", true)), 0o644)
	for _, tt := range []struct {
		file, flag string
		want       policy.Mode
	}{
		{audit, "", policy.Audit},
		{audit, "audit", policy.Audit},
		{plain, "", policy.Enforce},
		{plain, "audit", policy.Audit},
	} {
		cfg := Config{TrustDomain: "cluster.local", MeshFile: tt.file, DefaultPolicyMode: tt.flag,
			ListenAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", CAAddr: "127.0.0.1:1", BundleFile: bundle, JoinToken: token}
		s, err := New(cfg)
		if err != nil {
			t.Fatalf("%s with --default-policy-mode=%q: %v", filepath.Base(tt.file), tt.flag, err)
		}
		if got := s.Registry().MeshDefaultMode(); got != tt.want {
			t.Errorf("%s with --default-policy-mode=%q: mode %q, want %q", filepath.Base(tt.file), tt.flag, got, tt.want)
		}
	}
}

// TestJoinTokenFile: discovery's join token comes from a file, not argv.
func TestJoinTokenFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "token")
	if err := os.WriteFile(good, []byte(validToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := ParseFlags([]string{"--mesh-file", "mesh.yaml", "--join-token-file", good}, noEnv, io.Discard)
	if err != nil || c.JoinToken != validToken {
		t.Fatalf("--join-token-file: token %q, %v", c.JoinToken, err)
	}
	if _, err := ParseFlags([]string{"--mesh-file", "mesh.yaml", "--join-token-file", good, "--join-token", validToken}, noEnv, io.Discard); err == nil || !strings.Contains(err.Error(), "not both") {
		t.Fatalf("both: %v", err)
	}
	if _, err := ParseFlags([]string{"--mesh-file", "mesh.yaml", "--join-token-file", filepath.Join(dir, "none")}, noEnv, io.Discard); err == nil || !strings.Contains(err.Error(), "join token file") {
		t.Fatalf("missing file: %v", err)
	}
}
