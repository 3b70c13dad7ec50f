package main

import (
	"strings"
	"testing"
)

func TestParseFlags(t *testing.T) {
	c, err := parseFlags([]string{"--image", "r/tether:1", "--proxy-memory", "256Mi", "--extra-names", "127.0.0.1, injector.local", "--log-level", "warn"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Inject.Image != "r/tether:1" || c.Inject.ProxyMemory.String() != "256Mi" || len(c.Certs.ExtraNames) != 2 ||
		c.WebhookAddr != ":9443" || c.AdminAddr != ":15014" || c.Certs.SecretName != "tether-injector-tls" {
		t.Errorf("config %+v", c)
	}
	if c.Inject.RedirectMode != "init" {
		t.Errorf("redirect mode %q, want the default init", c.Inject.RedirectMode)
	}
	if c, err := parseFlags([]string{"--image", "x", "--redirect-mode", "cni"}); err != nil || c.Inject.RedirectMode != "cni" {
		t.Errorf("--redirect-mode cni: %q, %v", c.Inject.RedirectMode, err)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{nil, "--image is required"},
		{[]string{"--image", "x", "--proxy-cpu", "lots"}, "--proxy-cpu"},
		{[]string{"--image", "x", "--proxy-memory", "-"}, "--proxy-memory"},
		{[]string{"--image", "x", "--tls-cert-file", "c.pem"}, "--tls-key-file"},
		{[]string{"--image", "x", "--image-pull-policy", "Maybe"}, "--image-pull-policy"},
		{[]string{"--image", "x", "--trust-domain", "Bad Domain"}, "--trust-domain"},
		{[]string{"--image", "x", "--cert-ttl", "10m"}, "--cert-ttl"},
		{[]string{"--image", "x", "--log-format", "xml"}, "--log-format"},
		{[]string{"--image", "x", "--redirect-mode", "ebpf"}, "--redirect-mode"},
		{[]string{"--image", "x", "extra"}, "unexpected arguments"},
		{[]string{"--nope"}, "not defined"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			t.Setenv("TETHER_IMAGE", "")
			if _, err := parseFlags(tt.args); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err %v, want %q", err, tt.want)
			}
		})
	}
}
