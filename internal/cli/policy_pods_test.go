package cli_test

import (
	"strings"
	"testing"

	"github.com/tether-mesh/tether/internal/discoverytest"
)

// policy check answers what the pods' sidecars decide: through another
// Service, and straight to a pod's address.
func TestPolicyCheckSharedPods(t *testing.T) {
	mesh := meshFile(t, discoverytest.SharedPodsMesh)
	noPolicy := "no AccessPolicy allows spiffe://cluster.local/ns/default/sa/intruder to default/payments:80"
	for _, c := range []struct {
		name     string
		args     []string
		code     int
		stdout   string
		stderrIn string
	}{
		{"protected service", []string{"--from", "default/intruder", "--to", "default/payments"}, 1,
			"denied default/intruder -> default/payments:80: " + noPolicy + "\n", ""},
		{"other service, other pods", []string{"--from", "default/intruder", "--to", "default/status"}, 0,
			"allowed default/intruder -> default/status:80: mesh default allow-mesh\n" +
				"allowed default/intruder -> default/status:81: mesh default allow-mesh\n", ""},
		{"other service over a protected pod", []string{"--from", "default/intruder", "--to", "default/all:8080"}, 1,
			"denied default/intruder -> default/all:8080: mesh default allow-mesh allows it, but the sidecar of pod 10.0.1.1 (default/shared) " +
				"refuses it on port 8080: pod port 8080 is default/payments's port 80: " + noPolicy + "\n", ""},
		{"other service over a protected pod, allowed caller", []string{"--from", "default/frontend", "--to", "default/all:8080"}, 0,
			"allowed default/frontend -> default/all:8080: mesh default allow-mesh\n", ""},
		{"pod IP of a protected pod", []string{"--from", "default/intruder", "--to", "10.0.1.1:8080"}, 1,
			"denied default/intruder -> pod 10.0.1.1:8080 (default/all, default/payments): pod port 8080 is default/payments's port 80: " + noPolicy + "\n", "may not reach pod 10.0.1.1:8080"},
		{"pod IP, allowed caller", []string{"--from", "default/frontend", "--to", "10.0.1.1:8080"}, 0,
			"allowed default/frontend -> pod 10.0.1.1:8080 (default/all, default/payments): AccessPolicy default/payments-from-frontend\n", ""},
		{"pod IP, port no Service covers", []string{"--from", "default/intruder", "--to", "10.0.1.1:9999"}, 0,
			"allowed default/intruder -> pod 10.0.1.1:9999 (default/all, default/payments): no Service covers port 9999: mesh default allow-mesh\n", ""},
		{"pod IP of an open pod", []string{"--from", "default/intruder", "--to", "10.0.1.2:8080"}, 0,
			"allowed default/intruder -> pod 10.0.1.2:8080 (default/all, default/status): mesh default allow-mesh\n", ""},
		{"unknown pod", []string{"--from", "default/intruder", "--to", "10.0.9.9:8080"}, 1,
			"", "no mesh endpoint has address 10.0.9.9"},
		{"pod port 0", []string{"--from", "default/intruder", "--to", "10.0.1.1:0"}, 2,
			"", "a pod's port must be a number in 1-65535"},
		{"pod without a port", []string{"--from", "default/intruder", "--to", "10.0.1.1:x"}, 2,
			"", "want POD-IP:PORT"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, errOut, code := run(t, append([]string{"policy", "check", "--mesh", mesh}, c.args...)...)
			if code != c.code {
				t.Errorf("exit %d, want %d; stderr %s", code, c.code, errOut)
			}
			if out != c.stdout {
				t.Errorf("stdout\n%s\nwant\n%s", out, c.stdout)
			}
			if !strings.Contains(errOut, c.stderrIn) {
				t.Errorf("stderr %q does not contain %q", errOut, c.stderrIn)
			}
		})
	}
}
